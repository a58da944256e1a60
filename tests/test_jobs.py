"""umx.jobs: `run_task` records what happened to one input (stems with their hashes, or one
line of error), and the manifest keeps every complete record through damage."""

import json

import pytest
import soundfile as sf

from test_batch import write_song
from umx.api import separate_file
from umx.files import sha256_file
from umx.jobs import DONE, FAILED, Manifest, read_records, run_task, verify_outputs
from umx.zoo import load_separator

MODEL = "umxsynth"


@pytest.fixture(scope="module")
def separator():
    return load_separator(MODEL)


def test_run_task_records_every_stem_with_its_hash(tmp_path, separator):
    song = write_song(tmp_path / "song.wav", 1.5)
    seen = []
    record = run_task(
        song, separator, {"outdir": tmp_path / "out"}, lambda done, total: seen.append(total)
    )
    assert record["status"] == DONE and "error" not in record
    assert list(record["outputs"]) == separator.targets
    for name, output in record["outputs"].items():
        path = tmp_path / "out" / "song" / f"{name}.wav"
        assert output["path"] == str(path)
        assert output["sha256"] == sha256_file(path)
        assert output["bytes"] == path.stat().st_size
    assert record["input_bytes"] == song.stat().st_size
    assert record["audio_seconds"] == pytest.approx(1.5, abs=1e-3) == seen[-1]
    assert verify_outputs(record, full=True) is None
    # the stems are those of separate_file itself
    reference = separate_file(song, separator, outdir=tmp_path / "reference")
    for report in reference:
        written = record["outputs"][report.path.stem]["path"]
        assert sf.read(written)[0].tolist() == sf.read(report.path)[0].tolist()
    (tmp_path / "out" / "song" / "bass.wav").write_bytes(b"RIFF")
    changed = verify_outputs(record)
    assert changed == f"its output {tmp_path}/out/song/bass.wav changed since it was written"


def test_run_task_records_a_bad_input_in_one_line(tmp_path, separator):
    text = tmp_path / "notes.wav"
    text.write_text("not audio\n")
    record = run_task(text, separator, {"outdir": tmp_path / "out"})
    assert record["status"] == FAILED and "outputs" not in record
    assert str(text) in record["error"] and "\n" not in record["error"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.wav"))


def test_run_task_records_an_unexpected_error_and_leaves_no_stem(tmp_path, separator):
    song = write_song(tmp_path / "song.wav", 1.0)

    def broken(done, total):
        raise RuntimeError("a bug\nsecond line")

    record = run_task(song, separator, {"outdir": tmp_path / "out"}, broken)
    assert record["error"] == "the separation failed unexpectedly: RuntimeError: a bug"
    assert record["status"] == FAILED
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_run_task_lets_a_cancellation_through(tmp_path, separator):
    class Cancelled(BaseException):
        pass

    def cancel(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        run_task(write_song(tmp_path / "song.wav", 1.0), separator, {"outdir": tmp_path}, cancel)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["song.wav"]


def test_manifest_keeps_complete_records_and_cuts_damage(tmp_path):
    path = tmp_path / "manifest.jsonl"
    good = {"input": "a", "status": "running", "attempt": 1}
    failed = {"input": "a", "status": "failed", "error": "no"}
    path.write_bytes(json.dumps(good).encode() + b'\n{"input": "b", "sta' + b"\0" * 8)
    manifest = Manifest(path)
    manifest.append(failed)
    manifest.close()
    assert manifest.records == [good]
    assert read_records(path) == [good, failed]
    (copy,) = tmp_path.glob("manifest.jsonl.cut-*")
    assert copy.read_bytes() == b'{"input": "b", "sta' + b"\0" * 8
