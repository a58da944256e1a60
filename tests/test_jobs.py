"""umx.jobs: `run_task` records what happened to one input (stems with their hashes, or one
line of error) with a separator loaded once per process, and the manifest keeps every complete
record through damage and compacts itself to the latest records."""

import json
import os

import pytest
import soundfile as sf

from test_batch import write_song
from umx import jobs
from umx.api import separate_file
from umx.files import sha256_file
from umx.jobs import (
    COMPACT_MIN_SUPERSEDED,
    DELETED,
    DONE,
    FAILED,
    MAX_LOADED_SEPARATORS,
    Manifest,
    TaskOptions,
    latest_records,
    loaded_separator,
    read_records,
    run_task,
    verify_outputs,
)
from umx.options import OutputOptions, SeparationOptions
from umx.zoo import load_separator

MODEL = "umxsynth"


def task(outdir, **options):
    return TaskOptions(SeparationOptions(model=MODEL), OutputOptions(outdir=outdir), **options)


def test_run_task_records_every_stem_with_its_hash(tmp_path):
    song = write_song(tmp_path / "song.wav", 1.5)
    seen = []
    record = run_task(song, task(tmp_path / "out"), lambda done, total: seen.append(total))
    separator = load_separator(MODEL)
    assert record["status"] == DONE and "error" not in record
    assert list(record["outputs"]) == separator.targets
    for name, output in record["outputs"].items():
        path = tmp_path / "out" / "song" / f"{name}.wav"
        assert output["path"] == str(path)
        assert output["sha256"] == sha256_file(path)
        assert output["bytes"] == path.stat().st_size
    assert record["input_bytes"] == song.stat().st_size
    assert record["input_sha256"] == sha256_file(song)
    assert record["input_mtime_ns"] == song.stat().st_mtime_ns
    assert record["audio_seconds"] == pytest.approx(1.5, abs=1e-3) == seen[-1]
    assert verify_outputs(record, full=True) is None
    # the stems are those of separate_file itself, with a separator loaded here
    reference = separate_file(song, separator, outdir=tmp_path / "reference")
    for report in reference:
        written = record["outputs"][report.path.stem]["path"]
        assert sf.read(written)[0].tolist() == sf.read(report.path)[0].tolist()
    (tmp_path / "out" / "song" / "bass.wav").write_bytes(b"RIFF")
    changed = verify_outputs(record)
    assert changed == f"its output {tmp_path}/out/song/bass.wav changed since it was written"


def test_run_task_passes_the_file_options_on(tmp_path):
    song = write_song(tmp_path / "song.wav", 1.5)
    options = task(tmp_path / "out", aggregate={"band": ["bass", "drums"]}, start=0.5, duration=0.5)
    record = run_task(song, options)
    assert list(record["outputs"]) == ["band"] and record["audio_seconds"] == 0.5
    reference = separate_file(
        song,
        load_separator(MODEL),
        outdir=tmp_path / "reference",
        aggregate={"band": ["bass", "drums"]},
        start=0.5,
        duration=0.5,
    )
    written = sf.read(record["outputs"]["band"]["path"])[0]
    assert written.tolist() == sf.read(reference[0].path)[0].tolist()


def test_the_separator_is_loaded_once_per_model_options(monkeypatch):
    loads = []
    real = jobs.separator_for

    def counted(options, progress):
        loads.append(options.niter)
        return real(options, progress=progress)

    monkeypatch.setattr(jobs, "_separators", type(jobs._separators)())
    monkeypatch.setattr(jobs, "separator_for", counted)
    first = loaded_separator(SeparationOptions(model=MODEL))
    chunks = loaded_separator(SeparationOptions(model=MODEL, segment=5.0, overlap=1.0))
    assert chunks is first and loads == [1]  # the chunks do not change the separator
    other = [loaded_separator(SeparationOptions(model=MODEL, niter=n)) for n in (2, 3)]
    assert other[0] is not first and other[0].niter == 2 and loads == [1, 2, 3]
    assert len(jobs._separators) == MAX_LOADED_SEPARATORS
    assert loaded_separator(SeparationOptions(model=MODEL, niter=3)) is other[1]
    assert loaded_separator(SeparationOptions(model=MODEL)) is not first  # dropped, loaded again
    assert loads == [1, 2, 3, 1]


def test_run_task_records_a_model_that_cannot_load(tmp_path):
    song = write_song(tmp_path / "song.wav", 0.5)
    options = TaskOptions(
        SeparationOptions(model=str(tmp_path / "nomodel")), OutputOptions(outdir=tmp_path)
    )
    record = run_task(song, options)
    assert record["status"] == FAILED and record["error"].startswith("unknown model '")
    assert "nomodel': not a directory" in record["error"] and "\n" not in record["error"]


def test_run_task_records_a_bad_input_in_one_line(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("not audio\n")
    record = run_task(text, task(tmp_path / "out"))
    assert record["status"] == FAILED and "outputs" not in record
    assert str(text) in record["error"] and "\n" not in record["error"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.wav"))


def test_run_task_records_an_unexpected_error_and_leaves_no_stem(tmp_path):
    song = write_song(tmp_path / "song.wav", 1.0)

    def broken(done, total):
        raise RuntimeError("a bug\nsecond line")

    record = run_task(song, task(tmp_path / "out"), broken)
    assert record["error"] == "the separation failed unexpectedly: RuntimeError: a bug"
    assert record["status"] == FAILED
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_run_task_lets_a_cancellation_through(tmp_path):
    class Cancelled(BaseException):
        pass

    def cancel(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        run_task(write_song(tmp_path / "song.wav", 1.0), task(tmp_path), cancel)
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


def history(manifest, nb_inputs):
    """Three records of each input (running, failed, running), then done or deleted."""
    for attempt in (1, 2):
        for n in range(nb_inputs):
            status = "running" if attempt == 2 else "failed"
            manifest.append({"input": f"k{n}", "status": status, "error": "x", "attempt": attempt})
    for n in range(nb_inputs):
        if n % 3 == 0:
            manifest.append({"input": f"k{n}", "status": DELETED})
        else:
            outputs = {"vocals": {"path": f"/o/{n}", "sha256": "0" * 64, "bytes": n, "mtime_ns": 1}}
            manifest.append({"input": f"k{n}", "status": DONE, "outputs": outputs})


def test_compaction_keeps_the_latest_record_of_each_input(tmp_path):
    path = tmp_path / "manifest.jsonl"
    manifest = Manifest(path)
    history(manifest, 6)
    before, size = latest_records(read_records(path)), path.stat().st_size
    manifest.compact()
    compacted = path.read_bytes()
    manifest.append({"input": "k9", "status": "running"})
    manifest.close()
    records = read_records(path)
    kept = {key: record for key, record in before.items() if record["status"] != DELETED}
    assert latest_records(records[:-1]) == kept and len(records) == 5
    assert [r["input"] for r in records] == ["k1", "k2", "k4", "k5", "k9"]
    lines = [json.dumps(record, separators=(",", ":")).encode() + b"\n" for record in records]
    assert compacted == b"".join(lines[:-1]) and len(compacted) < size / 2
    assert Manifest(path).latest == {**kept, "k9": records[-1]}


def test_a_crash_during_compaction_leaves_the_old_manifest(tmp_path, monkeypatch):
    path = tmp_path / "manifest.jsonl"
    manifest = Manifest(path)
    history(manifest, 3)
    old = path.read_bytes()

    def crash(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        manifest.compact()
    monkeypatch.undo()
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["manifest.jsonl"]
    manifest.append({"input": "k9", "status": "running"})  # still appends to the old file
    assert path.read_bytes() == old + b'{"input":"k9","status":"running"}\n'
    # a compaction killed before its rename leaves a hidden file, removed at the next opening
    (tmp_path / ".manifest.jsonl.0a1b2c3d.tmp").write_bytes(old[:10])
    Manifest(path).close()
    assert os.listdir(tmp_path) == ["manifest.jsonl"]


def test_a_growing_manifest_compacts_itself(tmp_path):
    path = tmp_path / "manifest.jsonl"
    manifest = Manifest(path)
    lines = []
    for n in range(3 * COMPACT_MIN_SUPERSEDED):
        manifest.append({"input": f"k{n % 10}", "status": "running", "attempt": n})
        lines.append(len(read_records(path)))
    manifest.close()
    # ten live inputs: the file is rewritten once its superseded records pass the minimum
    assert max(lines) == COMPACT_MIN_SUPERSEDED + 10 and lines.count(10) >= 2
    assert latest_records(read_records(path)) == {
        f"k{n}": {"input": f"k{n}", "status": "running", "attempt": 290 + n} for n in range(10)
    }


def test_a_record_that_cannot_be_written_leaves_no_half_line(tmp_path, monkeypatch):
    path = tmp_path / "manifest.jsonl"
    manifest = Manifest(path)
    manifest.append({"input": "a", "status": "running"})
    real_write = os.write

    def half(fd, data):
        real_write(fd, data[:7])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half)
    with pytest.raises(OSError):
        manifest.append({"input": "b", "status": "running"})
    monkeypatch.undo()
    manifest.append({"input": "c", "status": "running"})
    assert [r["input"] for r in read_records(path)] == ["a", "c"]
    assert read_records(path) == [json.loads(line) for line in path.read_text().splitlines()]
