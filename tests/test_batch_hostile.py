"""`umx batch` against hostile inputs and damaged job directories, as a table.

Every case starts from the same finished job (three short songs, a small model directory, the
job's stems and records), damages or adds something, runs the command and checks: the exit
status, one readable line per message (no traceback, nothing echoed whole), and that every file
of the folder is byte-identical afterwards except those the case is meant to change, whose
change is checked exactly (complete records kept, a copy of what was cut off).
"""

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from umx.batch.job import MANIFEST_FILE
from umx.cli import main
from umx.files import sha256_file
from umx.jobs import read_records
from umx.modeldir import save_separator

RATE = 16000
SONGS = ("a", "b", "c")
RUN = ["batch", "songs", "--outdir", "out", "--model", "model", "-q"]
JOB = Path("out/.umx-job")
MANIFEST = JOB / MANIFEST_FILE
LONGEST_LINE = 400
"""No message line is longer (the case folder's paths are about 80 characters)."""


def write_song(path, seed):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.2 * rng.standard_normal((RATE // 2, 2)), RATE, subtype="PCM_16")


def snapshot(root):
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_music_separator):
    """A folder holding songs, a model, lists and a finished job; returns the folder and a
    pristine copy of it, to restore before each case (the records hold absolute paths)."""
    root = tmp_path_factory.mktemp("hostile")
    work = root / "work"
    for n, name in enumerate(SONGS):
        write_song(work / "songs" / f"{name}.wav", n)
    save_separator(small_music_separator, work / "model")
    (work / "lists").mkdir()
    (work / "lists" / "notes.txt").write_text("no audio here\n")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        assert main(RUN) == 0
    finally:
        os.chdir(cwd)
    shutil.copytree(work, root / "pristine", symlinks=True)
    return work, root / "pristine"


@pytest.fixture
def workspace(finished, monkeypatch):
    work, pristine = finished
    shutil.rmtree(work)
    shutil.copytree(pristine, work, symlinks=True)  # keeps modification times: stems verify
    monkeypatch.chdir(work)
    return work


def manifest_lines():
    return MANIFEST.read_bytes().splitlines(keepends=True)


def append(path, data):
    with open(path, "ab") as file:
        file.write(data)


def insert_line(index, data, replace=False):
    lines = manifest_lines()
    MANIFEST.write_bytes(b"".join(lines[:index]) + data + b"".join(lines[index + replace :]))


def key(name):
    return str(Path.cwd() / "songs" / f"{name}.wav")


def edit_job_json(change):
    settings = json.loads((JOB / "job.json").read_text())
    change(settings)
    (JOB / "job.json").write_text(json.dumps(settings))


def pristine_lines(pristine):
    return (pristine / MANIFEST).read_bytes().splitlines(keepends=True)


def cut(expected):
    """The change of a manifest repair: the manifest as it was before the damage, and the
    damaged lines (`expected(pristine)`) in one copy beside it."""

    def check(pristine):
        assert MANIFEST.read_bytes() == (pristine / MANIFEST).read_bytes()
        (copy,) = JOB.glob("manifest.jsonl.cut-*")
        assert copy.read_bytes() == expected(pristine)

    return check


def runs_reset(pristine):
    settings = json.loads((JOB / "job.json").read_text())
    assert settings == {**json.loads((pristine / JOB / "job.json").read_text()), "runs": []}
    (copy,) = JOB.glob("job.json.damaged-*")
    assert json.loads(copy.read_text())["runs"] is None


def one_failed_record(name, stem, content):
    """The change when planning finds an input failed: one record added, its file kept."""

    def check(pristine):
        assert MANIFEST.read_bytes().startswith((pristine / MANIFEST).read_bytes())
        added = read_records(MANIFEST)[len(read_records(pristine / MANIFEST)) :]
        assert [(r["input"], r["status"]) for r in added] == [(key(name), "failed")]
        assert Path(stem).read_bytes() == content

    return check


def new_song_failed(pristine):
    one_failed_record("new\nline", "out/new\nline/drums.wav", b"mine")(pristine)
    names = [Path(i["path"]).name for i in json.loads((JOB / "inputs.json").read_text())]
    assert names == ["a.wav", "b.wav", "c.wav", "new\nline.wav"]


GARBAGE = b"x" * (2 << 20)  # 2 MiB without a newline: a disk that filled
NULS = b"\0" * 65536  # a crash: blocks allocated, never written
JUNK = [np.random.default_rng(1).bytes(1000).replace(b"\n", b"") for _ in range(3)]
HUGE = b'{"input": "' + b"y" * (2 << 20)  # a record that never ended, 2 MiB long
REPAIRED = {MANIFEST.as_posix(), f"{JOB}/manifest.jsonl.cut-*"}


def bad_record(text):
    return lambda: append(MANIFEST, text.replace("KEY", key("a")).encode() + b"\n")


# (id, setup, arguments, exit status, message, files allowed to change, check of the change)
CASES = [
    (
        "manifest-garbage-tail",
        lambda: append(MANIFEST, GARBAGE),
        RUN,
        0,
        "removed 1 damaged line (2,097,152 bytes; line 4: not JSON) and kept the 3 complete",
        REPAIRED,
        cut(lambda _: GARBAGE),
    ),
    (
        "manifest-nul-tail",
        lambda: append(MANIFEST, NULS),
        RUN,
        0,
        "line 4: NUL bytes",
        REPAIRED,
        cut(lambda _: NULS),
    ),
    (
        "manifest-partial-last-line",
        lambda: append(MANIFEST, manifest_lines()[1][:40]),
        RUN,
        0,
        "removed 1 damaged line (40 bytes; line 4: not JSON)",
        REPAIRED,
        cut(lambda pristine: pristine_lines(pristine)[1][:40]),
    ),
    (
        "manifest-garbage-middle",
        lambda: insert_line(2, b"<<garbage>>\n"),
        RUN,
        0,
        "line 3: not JSON",
        REPAIRED,
        cut(lambda _: b"<<garbage>>"),
    ),
    (
        "manifest-nul-run-around-a-record",
        lambda: insert_line(2, NULS + manifest_lines()[2][:-1] + b"\0\n", replace=True),
        RUN,
        0,
        "line 3: NUL bytes",
        REPAIRED,
        cut(lambda pristine: NULS + pristine_lines(pristine)[2][:-1] + b"\0"),
    ),
    (
        "manifest-binary-junk",
        lambda: append(MANIFEST, b"\n".join(JUNK)),
        RUN,
        0,
        "removed 3 damaged lines",
        REPAIRED,
        cut(lambda _: b"\n".join(JUNK)),
    ),
    (
        "manifest-huge-line-middle",
        lambda: insert_line(1, HUGE + b"\n"),
        RUN,
        0,
        "line 2: not JSON",
        REPAIRED,
        cut(lambda _: HUGE),
    ),
    (
        "record-outputs-a-number",
        bad_record('{"input": "KEY", "status": "done", "outputs": 5}'),
        RUN,
        0,
        "line 4: outputs is not a map of stems",
        REPAIRED,
        cut(lambda _: b'{"input": "%s", "status": "done", "outputs": 5}' % key("a").encode()),
    ),
    (
        "record-status-a-number",
        bad_record('{"input": "KEY", "status": 7}'),
        RUN,
        0,
        "line 4: status 7, not queued, running, done, failed or deleted",
        REPAIRED,
        cut(lambda _: b'{"input": "%s", "status": 7}' % key("a").encode()),
    ),
    (
        "record-attempt-a-string",
        bad_record('{"input": "KEY", "status": "running", "attempt": "2"}'),
        RUN,
        0,
        'line 4: attempt is "2"',
        REPAIRED,
        cut(lambda _: b'{"input": "%s", "status": "running", "attempt": "2"}' % key("a").encode()),
    ),
    (
        "record-without-input",
        bad_record('{"status": "failed", "error": "x"}'),
        RUN,
        0,
        "line 4: no input",
        REPAIRED,
        cut(lambda _: b'{"status": "failed", "error": "x"}'),
    ),
    (
        "record-a-list",
        lambda: insert_line(0, b"[1, 2]\n"),
        RUN,
        0,
        "line 1: a JSON list, not a record",
        REPAIRED,
        cut(lambda _: b"[1, 2]"),
    ),
    (
        "status-reads-a-damaged-manifest",
        lambda: append(MANIFEST, GARBAGE),
        ["batch", "--status", "out"],
        0,
        "1 damaged line skipped (line 4: not JSON)",
        set(),
        None,
    ),
    (
        "status-of-a-folder-that-does-not-exist",
        lambda: None,
        ["batch", "--status", "/nonexistent/stems"],
        1,
        "umx: error: /nonexistent/stems does not exist: give a job directory, or the output "
        "folder holding it",
        set(),
        None,
    ),
    (
        "status-says-1-worker",
        lambda: None,
        ["batch", "--status", "out"],
        0,
        "UTC, 1 local worker; 3 files (",
        set(),
        None,
    ),
    (
        "job-runs-null",
        lambda: edit_job_json(lambda s: s.update(runs=None)),
        RUN,
        0,
        "its runs are null, not a list; the run history starts again",
        {f"{JOB}/job.json", f"{JOB}/job.json.damaged-*"},
        runs_reset,
    ),
    (
        "job-runs-of-wrong-types",
        lambda: edit_job_json(lambda s: s.update(runs=[5, "x", {"started": "soon"}])),
        ["batch", "--status", "out"],
        0,
        "3 runs of its history not readable (the next run repairs it)",
        set(),
        None,
    ),
    (
        "job-json-garbage",
        lambda: (JOB / "job.json").write_bytes(b"\0\0\xff garbage"),
        RUN,
        1,
        "job.json is not a umx batch job's settings",
        set(),
        None,
    ),
    (
        "job-json-missing",  # its stems' settings unknown: this run's are not taken for them
        lambda: (JOB / "job.json").unlink(),
        [*RUN, "--targets", "vocals"],
        1,
        "out/.umx-job has records (manifest.jsonl) but no job.json, so the settings of its "
        "stems are unknown: restore the job's job.json, or give a new --job",
        set(),
        None,
    ),
    (
        "job-identity-a-number",
        lambda: edit_job_json(lambda s: s.update(identity=5)),
        RUN,
        1,
        "job.json is not a umx batch job's settings (no identity)",
        set(),
        None,
    ),
    (
        "inputs-json-damaged",
        lambda: (JOB / "inputs.json").write_text('[{"path": 5}]'),
        ["batch", "--status", "out"],
        0,
        "inputs.json is damaged: counting the inputs the manifest names",
        set(),
        None,
    ),
    (
        "list-nul-text",
        lambda: Path("l.txt").write_bytes(b"songs/a.wav\nsongs/\0b.wav\n"),
        [*RUN, "--list", "l.txt"],
        1,
        "the list l.txt holds a NUL byte on line 2",
        set(),
        None,
    ),
    (
        "list-nul-csv",
        lambda: Path("l.csv").write_bytes(b"path\nsongs/a\0.wav\n"),
        [*RUN, "--list", "l.csv"],
        1,
        "the list l.csv holds a NUL byte on line 2",
        set(),
        None,
    ),
    (
        "list-nul-jsonl",
        lambda: Path("l.jsonl").write_bytes(b'{"path": "songs/a.wav\0"}\n'),
        [*RUN, "--list", "l.jsonl"],
        1,
        "the list l.jsonl holds a NUL byte on line 1",
        set(),
        None,
    ),
    (
        "list-escaped-nul-jsonl",
        lambda: Path("l.jsonl").write_bytes(b'{"path": "songs/a\\u0000.wav"}\n'),
        [*RUN, "--list", "l.jsonl"],
        1,
        "l.jsonl line 1: the path songs/a\\x00.wav holds a NUL character",
        set(),
        None,
    ),
    (
        "list-100kB-path",
        lambda: Path("l.txt").write_text("z" * 100_000 + "\n"),
        [*RUN, "--list", "l.txt"],
        1,
        "zzz... (100000 characters) is longer than any path can be",
        set(),
        None,
    ),
    (
        "list-100kB-number",
        lambda: Path("l.csv").write_text("path,start\nsongs/a.wav," + "9x" * 50_000 + "\n"),
        [*RUN, "--list", "l.csv"],
        1,
        "start must be a number, not '9x9x",
        set(),
        None,
    ),
    (
        "list-100kB-field-name",
        lambda: Path("l.jsonl").write_text(json.dumps({"path": "a.wav", "k" * 100_000: 1})),
        [*RUN, "--list", "l.jsonl"],
        1,
        "has unknown fields 'kkkk",
        set(),
        None,
    ),
    (
        "list-binary",
        lambda: Path("l.txt").write_bytes(b"\xff\xfe" + JUNK[0]),
        [*RUN, "--list", "l.txt"],
        1,
        "cannot read the list l.txt",
        set(),
        None,
    ),
    (
        "resume-other-niter",
        lambda: None,
        [*RUN, "--niter", "2"],
        1,
        "was started with other settings (--niter was 1, now 2): run it with the same options",
        set(),
        None,
    ),
    (
        "job-json-niter-a-string",  # as a hand edit leaves it: the two are told apart
        lambda: edit_job_json(lambda s: s["identity"]["separation"].update(niter="1")),
        RUN,
        1,
        'was started with other settings (--niter was "1", now 1): run it with the same options',
        set(),
        None,
    ),
    (
        "resume-other-ext-and-targets",
        lambda: None,
        [*RUN, "--ext", "flac", "--targets", "vocals", "drums"],
        1,
        "(--ext was wav, now flac; --targets was not set, now vocals drums)",
        set(),
        None,
    ),
    (
        "stem-edited-after-the-job",
        lambda: Path("out/a/vocals.wav").write_bytes(b"RIFF edited by hand"),
        RUN,
        1,
        "/out/a/vocals.wav changed since it was written; left as it is: --retry-failed "
        "separates the input again and replaces it",
        {MANIFEST.as_posix(), "out/a/vocals.wav"},
        one_failed_record("a", "out/a/vocals.wav", b"RIFF edited by hand"),
    ),
    (
        "stem-there-before-the-job",
        lambda: (
            write_song(Path("songs/new\nline.wav"), 7),
            Path("out/new\nline").mkdir(),
            Path("out/new\nline/drums.wav").write_bytes(b"mine"),
        ),
        RUN,
        1,
        "out/new\\nline/drums.wav already exists and this job has no record of writing it (move "
        "it away, or use --force to overwrite; the next run checks again)",
        {MANIFEST.as_posix(), f"{JOB}/inputs.json", "songs/new\nline.wav", "out/new\nline/*"},
        new_song_failed,
    ),
    (
        "failure-of-an-earlier-run-named",
        bad_record('{"input": "KEY", "path": "KEY", "status": "failed", "error": "KEY is odd"}'),
        RUN,
        1,
        "1 of 3 inputs failed (in an earlier run: ",
        set(),
        None,
    ),
    (
        "missing-folder",
        lambda: None,
        ["batch", "/nonexistent/nomusic", "--outdir", "x", "--model", "model", "-q"],
        1,
        "the input /nonexistent/nomusic does not exist",
        set(),
        None,
    ),
    (
        "mistyped-folder",
        lambda: None,
        ["batch", "sngs", "--outdir", "x", "--model", "model", "-q"],
        1,
        "the input sngs does not exist",
        set(),
        None,
    ),
    (
        "pattern-matching-nothing",
        lambda: None,
        ["batch", "songs/*.mp3", "--outdir", "x", "--model", "model", "-q"],
        1,
        "the pattern songs/*.mp3 matches no file",
        set(),
        None,
    ),
    (
        "output-folder-is-the-songs-folder",
        lambda: None,
        ["batch", "songs", "--outdir", "songs", "--model", "model", "-q"],
        1,
        "the folder songs is where the job writes its stems (--outdir), or inside it",
        set(),
        None,
    ),
    (
        "job-directory-is-the-songs-folder",
        lambda: None,
        ["batch", "songs", "--outdir", "x", "--job", "songs", "--model", "model", "-q"],
        1,
        "the folder songs is the job directory (--job), or inside it: give a --job outside the "
        "songs",
        set(),
        None,
    ),
    (
        "file-name-without-audio-extension",
        lambda: None,
        [*RUN[:3], "x", "--model", "model", "-q", "--filename", "{target}/{track}"],
        1,
        "but stems are written as .wav, .flac, .mp3: end the template with .{ext}",
        set(),
        None,
    ),
    (
        "folder-without-audio",
        lambda: None,
        ["batch", "lists", "--outdir", "x", "--model", "model", "-q"],
        1,
        "the folder lists holds no .wav .flac .mp3 .ogg .opus",
        set(),
        None,
    ),
]


@pytest.mark.parametrize(
    ("setup", "arguments", "status", "message", "changing", "check"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_batch_refuses_or_repairs_and_loses_nothing(
    workspace, finished, setup, arguments, status, message, changing, check, capsys
):
    setup()
    before = snapshot(workspace)
    capsys.readouterr()
    assert main(arguments) == status
    captured = capsys.readouterr()
    err = captured.err + captured.out
    assert message in err, err[:2000]
    assert "Traceback" not in err
    lines = captured.err.splitlines()
    assert all(line.startswith("umx: ") for line in lines), lines
    assert max(map(len, err.splitlines()), default=0) <= LONGEST_LINE
    after = snapshot(workspace)
    changed = {path for path in set(before) | set(after) if before.get(path) != after.get(path)}
    unexpected = {
        p for p in changed if not any(fnmatch.fnmatch(p, pattern) for pattern in changing)
    }
    assert unexpected == set()
    assert not (workspace / "x").exists()  # refused before any job was made
    if check is not None:
        check(finished[1])
    else:
        assert changed == set()


def test_the_table_covers_the_issue():
    assert len(CASES) >= 15
    assert len({case[0] for case in CASES}) == len(CASES)


STRESS_ROUNDS = 10
BOUND_S = 120  # no wait in the stress test lasts longer


def test_two_runs_started_together_never_share_a_job(tmp_path, small_music_separator):
    """Two `umx batch` on one folder, started together 10 times, each time with a new song to
    separate: the lock refuses one of them every time, in one line, and nothing is lost."""
    save_separator(small_music_separator, tmp_path / "model")
    command = [sys.executable, "-m", "umx.cli", *RUN, "--jobs", "1"]
    env = {**os.environ, "UMX_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for round_ in range(STRESS_ROUNDS):
        write_song(tmp_path / "songs" / f"{round_:02d}.wav", round_)
        runs = [
            subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        errors = [run.communicate(timeout=BOUND_S)[1] for run in runs]
        assert sorted(run.returncode for run in runs) == [0, 1], errors
        refused = errors[[run.returncode for run in runs].index(1)]
        assert refused.count("\n") == 1 and "is being run by another umx batch" in refused
        assert "Traceback" not in "".join(errors)
    records = read_records(tmp_path / MANIFEST)
    done = [record for record in records if record["status"] == "done"]
    assert sorted(Path(record["input"]).name for record in done) == [
        f"{n:02d}.wav" for n in range(STRESS_ROUNDS)
    ]  # each song done once, by one of the two runs
    for record in done:
        for output in record["outputs"].values():
            assert sha256_file(output["path"]) == output["sha256"]
    assert not [p for p in (tmp_path / "out").rglob(".*") if p.is_file()]  # no temporary file
