"""`umx batch` on this machine: inputs, the job directory and its manifest, resuming, and
faults (a corrupt input, a worker killed mid-file, the driver killed, Ctrl-C), with the bundled
umxsynth on a few seconds of audio."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from processes import BOUND_S, children, read_only_folder, running, wait_for
from umx.api import separate_file
from umx.batch import BatchInput, BatchOptions, Job, collect_inputs, read_list, run_batch_job
from umx.batch.job import MANIFEST_FILE, SETTINGS_FILE
from umx.batch.plan import plan_tasks
from umx.cli import main
from umx.devices import threads_per_worker
from umx.errors import UmxError
from umx.files import sha256_file
from umx.jobs import (
    TaskOptions,
    describe_input,
    describe_output,
    read_records,
    verify_outputs,
)
from umx.model_hash import model_sha256
from umx.options import OutputOptions, SeparationOptions
from umx.zoo import load_separator

RATE = 44100
MODEL = "umxsynth"
TARGETS = ("vocals", "drums", "bass", "other")


def write_song(path, seconds=2.0, seed=0):
    """A few seconds of stereo noise shaped by a chord, as 16-bit WAV."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = sum(np.sin(2 * np.pi * f * t) for f in (220.0 * (seed + 1), 330.0, 440.0)) / 6
    audio = tone[:, None] + 0.05 * rng.standard_normal((t.size, 2))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio.astype(np.float32), RATE, subtype="PCM_16")
    return Path(path)


def latest(job_dir):
    return {r["input"]: r for r in read_records(Path(job_dir) / MANIFEST_FILE)}


def stems(folder):
    """The finished stems in `folder` and below (not the temporary files being written)."""
    return sorted(p for p in folder.rglob("*.wav") if not p.name.startswith("."))


def hidden_files(folder):
    return sorted(p for p in Path(folder).rglob(".*") if p.is_file() and ".umx-job" not in str(p))


def assert_complete(outdir, inputs, job_dir=None):
    """Every input done once, its four stems there and matching their recorded SHA-256, and
    nothing else in the output folder (no temporary, partial or duplicate file)."""
    job_dir = job_dir or Path(outdir) / ".umx-job"
    records = latest(job_dir)
    expected = set()
    for path in inputs:
        record = records[str(Path(path).absolute())]
        assert record["status"] == "done", record
        assert sorted(record["outputs"]) == sorted(TARGETS)
        for output in record["outputs"].values():
            assert sha256_file(output["path"]) == output["sha256"]
            expected.add(Path(output["path"]))
    written = {p for p in Path(outdir).rglob("*") if p.is_file() and ".umx-job" not in p.parts}
    assert written == expected
    done = [r for r in read_records(Path(job_dir) / MANIFEST_FILE) if r["status"] == "done"]
    assert len({r["input"] for r in done}) == len(inputs)  # one done record each


# --- inputs ---------------------------------------------------------------------------------


def test_inputs_from_folders_patterns_and_lists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    music = tmp_path / "music"
    for name in ("b.wav", "a/x.FLAC", "a/.hidden.wav", ".cache/y.wav", "notes.txt", "out/s.wav"):
        (music / name).parent.mkdir(parents=True, exist_ok=True)
        (music / name).write_bytes(b"")
    found = collect_inputs([str(music)], exclude=[music / "out"])
    assert [Path(i.path).relative_to(music).as_posix() for i in found] == ["a/x.FLAC", "b.wav"]
    assert all(Path(i.path).is_absolute() for i in found)
    pattern = collect_inputs([str(music / "**" / "*.wav")], exclude=[music / "out"])
    assert [Path(i.path).name for i in pattern] == ["b.wav"]
    # given twice (absolute and relative), kept once; a missing argument is refused
    assert collect_inputs([str(music / "b.wav"), "music/b.wav"]) == [
        BatchInput(str(music / "b.wav"))
    ]
    with pytest.raises(UmxError, match=r"the input music/gone\.wav does not exist"):
        collect_inputs([str(music / "b.wav"), "music/gone.wav"])
    (tmp_path / "list.txt").write_text("# songs\nmusic/b.wav\n\n/abs/c.mp3\n")
    assert [i.path for i in read_list(tmp_path / "list.txt")] == [
        str(music / "b.wav"),
        "/abs/c.mp3",
    ]
    (tmp_path / "list.csv").write_text("path,start,duration\nmusic/b.wav,1.5,\nx.wav,,2\n")
    assert read_list(tmp_path / "list.csv") == [
        BatchInput(str(music / "b.wav"), 1.5, None),
        BatchInput(str(tmp_path / "x.wav"), 0.0, 2.0),
    ]
    (tmp_path / "list.jsonl").write_text('{"path": "x.wav", "duration": 3}\n\n')
    (item,) = read_list(tmp_path / "list.jsonl")
    assert item == BatchInput(str(tmp_path / "x.wav"), 0.0, 3.0)
    assert item.key == f"{tmp_path / 'x.wav'}#start=0,duration=3"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("l.csv", "file\nx.wav\n", "needs a header row with a path column"),
        ("l.csv", "path,gain\nx.wav,2\n", "unknown columns 'gain'"),
        ("l.csv", "path,start\nx.wav,soon\n", "line 2: start must be a number, not 'soon'"),
        ("l.csv", "path,duration\nx.wav,-1\n", "duration must be greater than 0"),
        ("l.jsonl", '{"path": "x.wav", "start": NaN}\n', "start must be a finite number"),
        ("l.jsonl", '["x.wav"]\n', "line 1 must be a JSON object"),
        ("l.jsonl", "{\n", "line 1 is not JSON"),
        ("l.jsonl", '{"start": 1}\n', "line 1 needs a path"),
    ],
)
def test_bad_list_files_are_refused_in_one_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(UmxError, match=message) as error:
        read_list(tmp_path / name)
    assert "\n" not in str(error.value)


def test_songs_in_the_output_folder_and_linked_folders_are_said(tmp_path, caplog):
    music, elsewhere = tmp_path / "music", tmp_path / "elsewhere"
    for path in (music / "a.wav", elsewhere / "b.wav"):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
    for outdir in (music, tmp_path):  # the songs' folder, or one holding it
        with pytest.raises(UmxError, match=r"^the folder .*music is where the job writes its"):
            collect_inputs([str(music)], exclude=[outdir])
        with pytest.raises(UmxError, match=r"matches only files where the job writes its stems"):
            collect_inputs([str(music / "*.wav")], exclude=[outdir])
    job = {tmp_path / "out": "--outdir", music / "job": "--job"}
    (music / "job").mkdir()
    (music / "job" / "c.wav").write_bytes(b"")
    with pytest.raises(UmxError, match=r"music/job is the job directory \(--job\), or inside it"):
        collect_inputs([str(music / "job")], exclude=job)
    with pytest.raises(UmxError, match=r"matches only files in the job directory \(--job\)"):
        collect_inputs([str(music / "job" / "*.wav")], exclude=job)
    assert collect_inputs([str(music / "a.wav")], exclude=[music]) == [  # named: taken
        BatchInput(str(music / "a.wav"))
    ]
    (music / "job" / "c.wav").unlink()
    (music / "job").rmdir()
    (music / "more").symlink_to(elsewhere)  # not followed, but said
    with caplog.at_level(logging.WARNING, logger="umx"):
        assert collect_inputs([str(music)]) == [BatchInput(str(music / "a.wav"))]
    assert caplog.messages == [
        f"skipping {music / 'more'}, a link to a folder: name it as an input to separate its songs"
    ]


def test_folders_give_the_containers_separate_reads_through_ffmpeg(tmp_path):
    names = ["a.webm", "b.MP4", "c.mkv", "d.mka", "e.mov", "f.wav", "notes.txt"]
    for name in names:
        (tmp_path / name).touch()
    found = [Path(item.path).name for item in collect_inputs([str(tmp_path)])]
    assert found == names[:-1]


def test_a_folder_without_songs_says_what_was_looked_for_and_what_it_holds(tmp_path):
    for name in ("a.txt", "b.txt", "cover.jpg", "README"):
        (tmp_path / name).touch()
    with pytest.raises(UmxError) as error:
        collect_inputs([str(tmp_path)], extensions=["wav", ".MP3"])
    assert str(error.value) == (
        f"the folder {tmp_path} holds no .wav .mp3 file (--extensions); it holds .txt .jpg "
        "files and others"
    )
    with pytest.raises(UmxError, match=r"\.flac .* \.webm .* \(--extensions\); it holds \.txt"):
        collect_inputs([str(tmp_path)])


def test_empty_folders_and_patterns_are_refused(tmp_path):
    with pytest.raises(UmxError, match=r"holds no \.wav .*; it holds no files$"):
        collect_inputs([str(tmp_path)])
    with pytest.raises(UmxError, match="matches no file"):
        collect_inputs([str(tmp_path / "*.wav")])
    with pytest.raises(UmxError, match="no inputs given"):
        collect_inputs([])


def test_threads_per_worker_share_the_cores():
    assert [threads_per_worker(jobs, cores=8) for jobs in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]


# --- the job directory ------------------------------------------------------------------------


def test_manifest_survives_a_line_cut_short(tmp_path):
    job_dir = tmp_path / "job"
    inputs = [BatchInput(str(tmp_path / "a.wav")), BatchInput(str(tmp_path / "b.wav"))]
    with Job(job_dir, {"model": "m"}, inputs) as job:
        job.append({"input": inputs[0].key, "status": "running"})
        job.append({"input": inputs[0].key, "status": "failed", "error": "x"})
    manifest = job_dir / MANIFEST_FILE
    with open(manifest, "ab") as file:  # a crash in the middle of a record
        file.write(b'{"input": "' + inputs[1].key.encode() + b'", "status": "do')
    assert [r["status"] for r in read_records(manifest)] == ["running", "failed"]
    with Job(job_dir, {"model": "m"}, inputs) as job:
        assert job.latest[inputs[0].key]["status"] == "failed"
        job.append({"input": inputs[1].key, "status": "running"})
    lines = manifest.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4  # the cut line is gone, the new one whole
    assert [r["status"] for r in read_records(manifest)] == ["running", "failed", "running"]


def test_a_run_compacts_the_manifest_when_it_ends(tmp_path):
    job_dir = tmp_path / "job"
    inputs = [BatchInput(str(tmp_path / "a.wav")), BatchInput(str(tmp_path / "b.wav"))]
    history = [
        {"input": inputs[0].key, "status": "running", "attempt": 1},
        {"input": inputs[0].key, "status": "failed", "error": "x", "attempt": 1},
        {"input": inputs[1].key, "status": "running", "attempt": 1},
    ]
    with Job(job_dir, {"model": "m"}, inputs) as job:  # planning only: nothing ran
        job.append(history[0])
        job.append(history[1])
    assert read_records(job_dir / MANIFEST_FILE) == history[:2]
    with Job(job_dir, {"model": "m"}, inputs) as job:
        job.start_run(mode="local", workers=1)
        job.append(history[2])
    assert read_records(job_dir / MANIFEST_FILE) == history[1:]


def test_a_job_is_locked_and_keeps_its_settings(tmp_path):
    inputs = [BatchInput(str(tmp_path / "a.wav"))]
    with (
        Job(tmp_path / "job", {"model": "m", "ext": "wav"}, inputs),
        pytest.raises(UmxError, match="is being run by another umx batch"),
    ):
        Job(tmp_path / "job", {"model": "m", "ext": "wav"}, inputs)
    with pytest.raises(UmxError, match="other settings \\(--ext was wav, now flac\\)"):
        Job(tmp_path / "job", {"model": "m", "ext": "flac"}, inputs)
    Job(tmp_path / "job", {"model": "m", "ext": "wav"}, inputs).close()


def test_a_job_directory_that_cannot_be_made_says_why_and_what_to_do(tmp_path, monkeypatch):
    """It said "cannot create the job directory jf (File exists)", and "... (Read-only file
    system)" without what to do."""
    inputs = [BatchInput(str(tmp_path / "a.wav"))]
    (tmp_path / "jf").write_text("x")
    with pytest.raises(UmxError) as error:
        Job(tmp_path / "jf", {"model": "m"}, inputs)
    assert str(error.value) == (
        f"cannot create the job directory {tmp_path / 'jf'}: it is a file; move it away, or "
        "write elsewhere"
    )
    (tmp_path / "ro").mkdir()
    read_only_folder(monkeypatch, tmp_path / "ro")
    with pytest.raises(UmxError) as error:
        Job(tmp_path / "ro" / "job", {"model": "m"}, inputs)
    assert str(error.value) == (
        f"cannot create the job directory {tmp_path / 'ro' / 'job'}: Read-only file system; "
        "write elsewhere"
    )


def test_verification_trusts_size_and_time_and_hashes_otherwise(tmp_path):
    path = tmp_path / "s.wav"
    path.write_bytes(b"abcd")
    stat = path.stat()
    record = {
        "outputs": {
            "s": {
                "path": str(path),
                "sha256": sha256_file(path),
                "bytes": 4,
                "mtime_ns": stat.st_mtime_ns,
            }
        }
    }
    assert verify_outputs(record) is None and verify_outputs(record, full=True) is None
    path.write_bytes(b"abce")  # same size, time put back: only a full check sees it
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert verify_outputs(record) is None
    assert "changed since it was written" in verify_outputs(record, full=True)
    path.write_bytes(b"abcd")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes
    assert verify_outputs(record) is None
    path.write_bytes(b"abcde")
    assert "changed since it was written" in verify_outputs(record)
    path.unlink()
    assert "is missing" in verify_outputs(record)


def test_model_hash_follows_the_weights():
    one = load_separator(MODEL)
    assert model_sha256(one) == model_sha256(load_separator(MODEL))
    assert model_sha256(one) != model_sha256(load_separator(MODEL, targets=["vocals", "bass"]))
    next(iter(one.target_models.values())).fc1.weight.data[0, 0] += 1e-3
    assert model_sha256(one) != model_sha256(load_separator(MODEL))


def test_existing_outputs_of_new_inputs_fail_until_moved_away_or_forced(tmp_path):
    """The advice of the failure works as given: the next run checks again, so moving the file
    away or --force is enough (no --retry-failed); while it stays, no record is added."""
    song = write_song(tmp_path / "a.wav")
    stem = tmp_path / "out" / "a" / "vocals.wav"
    stem.parent.mkdir(parents=True)
    stem.write_bytes(b"mine")
    plan = [{t: tmp_path / "out" / "a" / f"{t}.wav" for t in TARGETS}]
    inputs = [BatchInput(str(song))]
    with Job(tmp_path / "job", {}, inputs) as job:
        tasks, counts = plan_tasks(job, inputs, plan)
        assert tasks == [] and counts["failed"] == 1
        assert job.latest[str(song)]["error"] == (
            f"{stem} already exists and this job has no record of writing it (move it away, "
            "or use --force to overwrite; the next run checks again)"
        )
        records = read_records(tmp_path / "job" / MANIFEST_FILE)
        assert plan_tasks(job, inputs, plan) == ([], counts)
        assert read_records(tmp_path / "job" / MANIFEST_FILE) == records  # nothing added
        (task,), _ = plan_tasks(job, inputs, plan, force=True)
        assert task.force and task.attempt == 2
        stem.rename(tmp_path / "moved.wav")
        (task,), _ = plan_tasks(job, inputs, plan)
        assert not task.force and task.attempt == 2
    assert (tmp_path / "moved.wav").read_bytes() == b"mine"


def test_a_changed_input_is_separated_again(tmp_path, monkeypatch, capsys):
    """A done input whose file changed since (other length, or same length and time put back
    with --verify) gets new stems; a touched or copied input whose bytes are the same does not,
    and a record of a version that kept only the size is compared by size."""
    monkeypatch.chdir(tmp_path)
    a, b = (
        write_song(tmp_path / "songs" / "a.wav", 2.0),
        write_song(tmp_path / "songs" / "b.wav", 1.0),
    )
    args = ["batch", "songs", "--outdir", "out", "--model", MODEL, "--niter", "0"]
    assert main(args) == 0
    b_stems = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "b").iterdir()}
    write_song(a, 1.0, seed=5)  # another song under the same name
    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 10**9))  # touched
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "a.wav: the input changed since it was separated (352,844 bytes, now 176,444)" in err
    assert "1 to separate (1 changed input separated again)" in err
    assert sf.info(tmp_path / "out" / "a" / "vocals.wav").duration == 1.0
    assert_complete(tmp_path / "out", [a, b])
    assert {p: p.stat().st_mtime_ns for p in b_stems} == b_stems  # b was not separated again
    record = latest(tmp_path / "out" / ".umx-job")[str(b)]
    assert record["input_mtime_ns"] == b.stat().st_mtime_ns  # so it is not hashed again
    assert main(args) == 0 and "nothing to do (2 done, 0 failed)" in capsys.readouterr().err
    a.write_bytes(b"RIFF\x00\x00 cut short")  # changed, and its separation fails
    assert main(args) == 1
    record = latest(tmp_path / "out" / ".umx-job")[str(a)]
    assert record["status"] == "failed" and record["owns_outputs"]  # its stems are the job's
    write_song(a, 1.0, seed=5)  # repaired: --retry-failed replaces the old stems
    assert main([*args, "--retry-failed"]) == 0
    assert_complete(tmp_path / "out", [a, b])

    stat = a.stat()  # the same length, the time put back: only --verify hashes it
    write_song(a, 1.0, seed=6)
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    settings = json.loads((tmp_path / "out" / ".umx-job" / SETTINGS_FILE).read_text())
    plan = [{t: tmp_path / "out" / "a" / f"{t}.wav" for t in TARGETS}]
    with Job(tmp_path / "out" / ".umx-job", settings["identity"], [BatchInput(str(a))]) as job:
        assert plan_tasks(job, [BatchInput(str(a))], plan)[1]["done"] == 1
        (task,), counts = plan_tasks(job, [BatchInput(str(a))], plan, verify=True)
        assert counts["changed"] == 1 and task.force
        old = {k: v for k, v in job.latest[str(a)].items() if k not in ("input_sha256",)}
        job.latest[str(a)] = old  # as an older version recorded it: the size alone
        assert plan_tasks(job, [BatchInput(str(a))], plan, verify=True)[1]["done"] == 1
        job.latest[str(a)] = {**old, "input_bytes": 5}
        assert plan_tasks(job, [BatchInput(str(a))], plan)[1]["changed"] == 1


def test_done_records_of_other_weights_or_stems_are_separated_again(tmp_path, caplog):
    """A done record that is not of the job's weights or stems (a manifest from elsewhere) does
    not count as done: the input is separated again, replacing the stems it recorded only."""
    song = write_song(tmp_path / "a.wav", 0.5)
    out = tmp_path / "out" / "a"
    out.mkdir(parents=True)
    (out / "vocals.wav").write_bytes(b"v")
    record = {
        "input": str(song),
        "path": str(song),
        "status": "done",
        "model_sha256": "a" * 64,
        **describe_input(song),
        "outputs": {"vocals": describe_output(out / "vocals.wav")},
    }
    four = [{t: out / f"{t}.wav" for t in TARGETS}]
    with Job(tmp_path / "job", {"model_sha256": "b" * 64}, [BatchInput(str(song))]) as job:
        job.append(record)
        (task,), counts = plan_tasks(job, [BatchInput(str(song))], [{"vocals": out / "vocals.wav"}])
        assert counts["changed"] == 1 and task.force
        assert "separated with other weights (SHA-256 aaaaaaaaaaaa..., now bbbbbbbbbbbb...)" in (
            caplog.text
        )
        job.append({**record, "model_sha256": "b" * 64})
        (task,), counts = plan_tasks(job, [BatchInput(str(song))], four)
        assert counts["changed"] == 1 and task.force
        assert "a.wav: its stems were vocals, now vocals drums bass other" in caplog.text
        (out / "drums.wav").write_bytes(b"mine")  # not the job's: not replaced
        assert plan_tasks(job, [BatchInput(str(song))], four) == (
            [],
            {**counts, "changed": 0, "failed": 1},
        )
        assert (out / "drums.wav").read_bytes() == b"mine"


def test_a_job_that_lost_its_settings_is_refused(tmp_path):
    inputs = [BatchInput(str(tmp_path / "a.wav"))]
    with Job(tmp_path / "job", {"outputs": ["vocals"]}, inputs) as job:
        job.append({"input": inputs[0].key, "status": "failed", "error": "x"})
    (tmp_path / "job" / SETTINGS_FILE).unlink()
    with pytest.raises(UmxError, match=r"has records \(manifest.jsonl\) but no job\.json"):
        Job(tmp_path / "job", {"outputs": TARGETS}, inputs)
    assert not (tmp_path / "job" / SETTINGS_FILE).exists()


# --- runs ---------------------------------------------------------------------------------------


def test_a_folder_with_a_corrupt_file_then_resume_and_retry(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    songs = [write_song(tmp_path / "songs" / f"{n}.wav", 1.5, seed=n) for n in range(3)]
    (tmp_path / "songs" / "broken.wav").write_bytes(b"RIFF\x00\x00not audio at all")
    args = ["batch", "songs", "--outdir", "out", "--model", MODEL, "--jobs", "2", "-q"]
    assert main(args) == 1  # the broken file failed; the rest went on
    err = capsys.readouterr().err
    assert err.count("broken.wav is not") == 1 and "1 of 4 inputs failed" in err
    assert_complete(tmp_path / "out", songs)
    records = latest(tmp_path / "out" / ".umx-job")
    broken = records[str(tmp_path / "songs" / "broken.wav")]
    assert broken["status"] == "failed" and "\n" not in broken["error"]
    assert {r["model"] for r in records.values()} == {MODEL}
    # the stems are those umx.api.separate_file writes with the same model
    separate_file(songs[0], load_separator(MODEL), outdir=tmp_path / "api")
    for target in TARGETS:
        ours, _ = sf.read(tmp_path / "out" / "0" / f"{target}.wav")
        theirs, _ = sf.read(tmp_path / "api" / "0" / f"{target}.wav")
        np.testing.assert_allclose(ours, theirs, atol=2 / 32768)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.wav")}
    size = (tmp_path / "out" / ".umx-job" / MANIFEST_FILE).stat().st_size

    # the same command again: nothing to do, no file touched, no record added
    assert main(args[:-1]) == 1  # without -q
    assert "nothing to do (3 done, 1 failed)" in capsys.readouterr().err
    assert (tmp_path / "out" / ".umx-job" / MANIFEST_FILE).stat().st_size == size
    assert main(["batch", "--status", "out"]) == 0
    status = capsys.readouterr().out
    assert "inputs: 4: 3 done, 1 failed, 0 interrupted, 0 pending" in status
    assert "files/hour" in status and "broken.wav is not decodable audio" in status

    # a stem deleted by hand: recorded, and separated again with --retry-failed only
    (tmp_path / "out" / "1" / "bass.wav").unlink()
    assert main(args) == 1
    record = latest(tmp_path / "out" / ".umx-job")[str(songs[1])]
    assert record["status"] == "failed" and "1/bass.wav is missing" in record["error"]
    assert not (tmp_path / "out" / "1" / "bass.wav").exists()
    (tmp_path / "songs" / "broken.wav").unlink()
    write_song(tmp_path / "songs" / "broken.wav", 1.0, seed=9)  # repaired
    assert main([*args, "--retry-failed", "--jobs", "1"]) == 0
    assert_complete(tmp_path / "out", [*songs, tmp_path / "songs" / "broken.wav"])
    for path, mtime in mtimes.items():  # finished files were never rewritten
        if path.parent.name != "1":
            assert path.stat().st_mtime_ns == mtime
    capsys.readouterr()
    # other settings on the same job are refused before any work
    assert main([*args, "--ext", "flac"]) == 1
    assert "was started with other settings" in capsys.readouterr().err


def test_status_counts_every_file_the_last_run_finished(tmp_path, monkeypatch, capsys):
    """The last run's throughput counts the files it finished, done or failed, and keeps them
    once a later record supersedes one (a done input whose stem was deleted, found by a run
    with nothing to do, is recorded as failed)."""
    monkeypatch.chdir(tmp_path)
    for n in range(2):
        write_song(tmp_path / "songs" / f"{n}.wav", 0.5, seed=n)
    (tmp_path / "songs" / "broken.wav").write_bytes(b"RIFF\x00\x00not audio at all")
    args = ["batch", "songs", "--outdir", "out", "--model", MODEL, "-q"]
    assert main(args) == 1

    def status():
        capsys.readouterr()
        assert main(["batch", "--status", "out"]) == 0
        return capsys.readouterr().out.splitlines()

    before = status()
    assert "inputs: 3: 2 done, 1 failed, 0 interrupted, 0 pending" in before
    (last_run,) = [line for line in before if line.startswith("last run: ")]
    assert "; 3 files (" in last_run, last_run
    (tmp_path / "out" / "1" / "bass.wav").unlink()
    time.sleep(1.1)  # the failed record comes a second after the run's last
    assert main(args) == 1  # nothing to do: no run starts
    after = status()
    assert "inputs: 3: 1 done, 2 failed, 0 interrupted, 0 pending" in after
    assert last_run in after  # the same files, over the same time


def test_inputs_and_the_job_are_named_as_given(tmp_path, monkeypatch, capsys):
    """Relative arguments stay relative in what a run says (the job records absolute paths):
    the failed input, the job directory, an earlier run's failure (named only: --status says
    why, and the line stays short) and the refusal of other settings."""
    monkeypatch.chdir(tmp_path)
    write_song(tmp_path / "songs" / "a.wav", 0.5)
    (tmp_path / "songs" / "b.wav").write_bytes(b"garbage")
    args = ["batch", "songs/*.wav", "--outdir", "out", "--model", MODEL]
    assert main(args) == 1
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("umx: out/.umx-job: 2 inputs, 0 done before") for line in lines)
    assert lines[-2:] == [
        "umx: failed: songs/b.wav is not decodable audio (neither libsndfile nor ffmpeg knows its "
        "format)",
        "umx: 1 of 2 inputs failed; see umx batch --status out/.umx-job",
    ]
    assert main(["batch", "songs", "--outdir", "out", "--model", MODEL, "-q"]) == 1
    assert capsys.readouterr().err == (
        "umx: 1 of 2 inputs failed (in an earlier run: songs/b.wav); see umx batch --status "
        "out/.umx-job\n"
    )
    assert main([*args, "--niter", "2"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "umx: error: the job out/.umx-job was started with other settings (--niter was 1, now "
        "2): run it with the same options, or give a new --job"
    )
    assert latest(tmp_path / "out" / ".umx-job")[str(tmp_path / "songs" / "b.wav")]


def test_two_excerpts_of_one_file_are_said_to_need_a_run_each(tmp_path, capsys):
    """It said only "a.wav is given twice", with nothing to do about it."""
    write_song(tmp_path / "a.wav", 0.5)
    (tmp_path / "two.csv").write_text("path,start,duration\na.wav,0,0.2\na.wav,0.2,0.2\n")
    command = ["batch", "--list", str(tmp_path / "two.csv"), "--model", MODEL, "-q"]
    assert main([*command, "--outdir", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.endswith(
        "a.wav is given twice: its stems have one name, so give it once (two excerpts of it: "
        "one run each, with its own --outdir)\n"
    )
    assert not (tmp_path / "o").exists()


def test_bad_options_are_refused_before_any_work(tmp_path, capsys):
    song = write_song(tmp_path / "a.wav", 0.5)
    for options, message in [
        (["--jobs", "0"], "--jobs must be greater than 0"),
        (["--threads", "-1"], "--threads must be greater than 0"),
        (["--jobs", "99999999"], "--jobs must be at most "),  # 4 per core: a process each
        (["--threads", "99999999"], "--threads must be at most "),
        (["--gpus-per-worker", "1"], "--gpus-per-worker is for --ray"),
        (["--ray", "--gpus-per-worker", "nan"], "--gpus-per-worker must be a finite number"),
        (["--ray", "--gpus-per-worker", "1e-300"], "--gpus-per-worker must be 0 or at least"),
        (["--list", str(tmp_path / "none.txt")], "cannot read the list"),
        (["--ray", str(tmp_path)], "--ray took the input"),
        (["--ray", ""], "--ray '' is not a cluster's address: give HOST:PORT of its head, auto"),
        (["--ray", "nan"], "--ray 'nan' is not a cluster's address"),
        (["--ray", "head:99999"], "--ray 'head:99999' is not a cluster's address"),
        (["--ray", "ray://:6379"], "--ray 'ray://:6379' is not a cluster's address"),
        (["--device", "nan"], "unknown device 'nan' (use auto, cpu, cuda or gpu, cuda:N or mps)"),
        # a template's own format decides the subtype: refused before any job, not per file
        (["--filename", "{track}/{target}.mp3", "--subtype", "PCM_24"], "not one of mp3's"),
        (["--filename", "{track}/{target}.mp3", "--ext", "wav"], "but --ext is wav"),
    ]:
        assert main(["batch", str(song), "--outdir", str(tmp_path / "o"), *options]) == 1
        (error,) = capsys.readouterr().err.splitlines()  # before the model: no other line
        assert message in error
    assert not (tmp_path / "o").exists()


def test_chunks_too_short_for_the_model_are_refused_before_the_job_folder(tmp_path, capsys):
    song = write_song(tmp_path / "a.wav", 0.5)
    command = ["batch", str(song), "--model", MODEL, "--outdir", str(tmp_path / "o"), "--quiet"]
    command += ["--overlap", "0"]
    assert main([*command, "--segment", "0.05"]) == 1
    (error,) = capsys.readouterr().err.splitlines()
    assert "--segment 0.05 s is too short for this model" in error
    assert not (tmp_path / "o").exists()  # so that the advice given can be followed:
    assert main([*command, "--segment", "0.5"]) == 0
    assert [path.name for path in stems(tmp_path / "o" / "a")] == sorted(
        f"{target}.wav" for target in TARGETS
    )


def test_a_worker_that_cannot_load_the_model_ignores_the_stop_it_causes(monkeypatch):
    """The driver sends SIGINT to its workers when one reports an error; the one that did is
    exiting, and must not print a KeyboardInterrupt traceback from its exit handlers."""
    from multiprocessing import Pipe

    from umx.batch import local

    def refuse(spec):
        raise UmxError("its weights differ from the job's")

    monkeypatch.setattr(local, "stop_with_driver", lambda driver: None)
    monkeypatch.setattr(local, "load_worker", refuse)
    driver, worker = Pipe()
    handler = signal.getsignal(signal.SIGINT)
    try:
        local._worker(worker, None, os.getpid())
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, handler)
    assert driver.recv() == ("error", "its weights differ from the job's")


def test_typed_options_run_the_job_the_command_line_runs(tmp_path, monkeypatch):
    """`run_batch_job` on `BatchOptions` (what `umx distill` uses): bad values are refused as
    the options are built, and a job the command line started is the same job from Python."""
    monkeypatch.chdir(tmp_path)
    write_song(tmp_path / "songs" / "a.wav", 1.0)
    separation = SeparationOptions(model=MODEL, niter=0)
    task = TaskOptions(separation, OutputOptions(outdir=Path("out"), ext="flac"))
    for bad, message in [
        ({"jobs": 0}, "--jobs must be greater than 0"),
        ({"threads": 1.5}, "--threads must be a whole number, not 1.5"),
        ({"gpus_per_worker": 1}, "--gpus-per-worker is for --ray"),
        ({"ray": "songs"}, "--ray took the input 'songs'"),
    ]:
        with pytest.raises(UmxError, match=message):
            BatchOptions(["songs"], task, **bad)
    one = BatchOptions(Path("songs"), task, lists="a.txt", extensions="wav")  # not characters
    assert (one.inputs, one.lists, one.extensions) == (("songs",), ("a.txt",), ("wav",))
    args = ["batch", "songs", "--outdir", "out", "--model", MODEL, "--niter", "0", "--ext", "flac"]
    assert main([*args, "-q"]) == 0
    manifest = tmp_path / "out" / ".umx-job" / MANIFEST_FILE
    size = manifest.stat().st_size
    assert run_batch_job(BatchOptions(["songs"], task, quiet=True)) == 0  # nothing left to do
    assert manifest.stat().st_size == size
    (record,) = latest(tmp_path / "out" / ".umx-job").values()
    assert record["status"] == "done" and sorted(record["outputs"]) == sorted(TARGETS)
    other = replace(task, separation=replace(separation, niter=1))
    with pytest.raises(UmxError, match=r"started with other settings \(--niter was 0, now 1"):
        run_batch_job(BatchOptions(["songs"], other, quiet=True))


def test_a_job_recorded_with_wiener_win_len_0_resumes(tmp_path, monkeypatch):
    """Jobs started before the typed options recorded `--wiener-win-len 0` (the whole segment)
    as 0, which is None now: they resume, and a real change is still refused."""
    monkeypatch.chdir(tmp_path)
    write_song(tmp_path / "songs" / "a.wav", 1.0)
    args = ["batch", "songs", "--outdir", "out", "--model", MODEL, "--niter", "0", "-q"]
    assert main([*args, "--wiener-win-len", "0"]) == 0
    settings_path = tmp_path / "out" / ".umx-job" / SETTINGS_FILE
    settings = json.loads(settings_path.read_text())
    assert settings["identity"]["separation"]["wiener_win_len"] is None
    settings["identity"]["separation"]["wiener_win_len"] = 0  # as the older version wrote it
    settings_path.write_text(json.dumps(settings))
    manifest = tmp_path / "out" / ".umx-job" / MANIFEST_FILE
    size = manifest.stat().st_size
    assert main([*args, "--wiener-win-len", "0"]) == 0
    assert manifest.stat().st_size == size  # nothing redone
    assert main([*args, "--wiener-win-len", "100"]) == 1
    assert json.loads(settings_path.read_text())["identity"]["separation"]["wiener_win_len"] == 0


# --- faults, with the driver in its own process ---------------------------------------------


def start_driver(tmp_path, *options):
    env = {**os.environ, "UMX_OFFLINE": "1"}
    command = [sys.executable, "-m", "umx.cli", "batch", "songs", "--outdir", "out"]
    return subprocess.Popen(
        [*command, "--model", MODEL, "-q", *options],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def songs(tmp_path):
    return [write_song(tmp_path / "songs" / f"{n}.wav", 3.0, seed=n) for n in range(4)]


def test_a_worker_killed_mid_file_is_replaced_and_its_file_redone(tmp_path, songs):
    driver = start_driver(tmp_path, "--jobs", "1")
    try:
        wait_for(lambda: hidden_files(tmp_path / "out"), "a stem being written")
        (worker,) = wait_for(lambda: children(driver.pid, b"spawn_main"), "the worker")
        os.kill(worker, signal.SIGKILL)
        _, err = driver.communicate(timeout=BOUND_S)
    finally:
        driver.kill()
    assert driver.returncode == 0, err.decode()
    assert err.count(b"died (killed by SIGKILL)") == 1  # a warning, shown even with -q
    assert_complete(tmp_path / "out", songs)
    # the run compacted the manifest: one record per input, the killed worker's file retried
    records = read_records(tmp_path / "out" / ".umx-job" / MANIFEST_FILE)
    assert sorted(r["input"] for r in records) == sorted(str(song.absolute()) for song in songs)
    (done,) = [r for r in records if r["attempt"] == 2]
    assert done["status"] == "done" and not done["worker"].endswith(f":{worker}")


def output_paths(record):
    return [output["path"] for output in record["outputs"].values()]


def test_ctrl_c_stops_cleanly_and_the_job_resumes(tmp_path, songs):
    driver = start_driver(tmp_path, "--jobs", "1")
    try:
        wait_for(lambda: hidden_files(tmp_path / "out"), "a stem being written")
        # a terminal's Ctrl-C reaches the driver and its workers
        for pid in [driver.pid, *children(driver.pid, b"spawn_main")]:
            os.kill(pid, signal.SIGINT)
        _, err = driver.communicate(timeout=BOUND_S)
    finally:
        driver.kill()
    assert driver.returncode == 130, err.decode()
    assert hidden_files(tmp_path / "out") == []  # no temporary file left behind
    records = latest(tmp_path / "out" / ".umx-job")
    assert any(r["status"] == "running" for r in records.values())
    resumed = start_driver(tmp_path, "--jobs", "1")
    _, err = resumed.communicate(timeout=BOUND_S)
    assert resumed.returncode == 0, err.decode()
    assert_complete(tmp_path / "out", songs)


def test_workers_stop_when_the_driver_is_killed(tmp_path, songs):
    """SIGKILL or the out-of-memory killer leaves the driver no time to stop its workers: they
    stop themselves (the kernel tells them), removing their temporary files, instead of
    separating on unseen."""
    driver = start_driver(tmp_path, "--jobs", "1")
    try:
        wait_for(lambda: hidden_files(tmp_path / "out"), "a stem being written")
        (worker,) = wait_for(lambda: children(driver.pid, b"spawn_main"), "the worker")
        driver.kill()
        driver.wait(timeout=BOUND_S)
        written = stems(tmp_path / "out")
        wait_for(lambda: not running(worker), "the worker to stop")
    finally:
        driver.kill()
    assert hidden_files(tmp_path / "out") == []
    assert stems(tmp_path / "out") == written  # the file begun not finished
    assert len(written) < 4 * len(songs)


def test_sigterm_leaves_no_empty_folder(tmp_path, songs):
    driver = start_driver(tmp_path, "--jobs", "1")
    try:
        wait_for(lambda: hidden_files(tmp_path / "out"), "a stem being written")
        driver.send_signal(signal.SIGTERM)  # the driver only: it stops its workers itself
        _, err = driver.communicate(timeout=BOUND_S)
    finally:
        driver.kill()
    assert driver.returncode == 143, err.decode()
    assert err.decode().splitlines()[-2:] == [  # the hint was said on Ctrl-C only
        "umx: stopped; the same command resumes the job",
        "umx: stopped by SIGTERM",
    ]
    assert hidden_files(tmp_path / "out") == []
    folders = [p for p in (tmp_path / "out").rglob("*") if p.is_dir() and ".umx-job" not in p.parts]
    assert [f for f in folders if not any(f.iterdir())] == []  # the stopped song's is gone
    assert (tmp_path / "out" / ".umx-job" / MANIFEST_FILE).is_file()  # the records stay


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_to_the_driver_and_its_workers_leaves_no_temporary_file(
    tmp_path, songs, signum
):
    """`timeout`, `kill -- -PGID` and a closed terminal signal the whole process group: the
    workers stop as on Ctrl-C, removing their temporary files, rather than dying of it."""
    driver = start_driver(tmp_path, "--jobs", "1")
    try:
        wait_for(lambda: hidden_files(tmp_path / "out"), "a stem being written")
        (worker,) = wait_for(lambda: children(driver.pid, b"spawn_main"), "the worker")
        for pid in (worker, driver.pid):
            os.kill(pid, signum)
        _, err = driver.communicate(timeout=BOUND_S)
        wait_for(lambda: not running(worker), "the worker to stop")
    finally:
        driver.kill()
    assert driver.returncode == 128 + signum, err.decode()
    assert err.decode().splitlines()[-1] == f"umx: stopped by {signal.Signals(signum).name}"
    assert "Traceback" not in err.decode()
    assert hidden_files(tmp_path / "out") == []


def test_the_documented_commands_parse():
    """Every `umx batch` line of docs/batch.md and of the README names options that exist."""
    from umx.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "batch.md").read_text() + (root / "README.md").read_text()
    lines = [line.split("#")[0] for line in text.splitlines() if line.startswith("umx batch")]
    assert len(lines) >= 10
    for line in lines:
        args = build_parser().parse_args(line.split()[1:])
        assert args.run.__name__ == "run_batch"
