"""`umx evaluate` against hostile test sets and options, as a table: each case exits with its
status and one-line messages, no traceback, and leaves every file of the case folder as it was,
but for the scores it is meant to write.

The folder holds a small MUSDB18-HQ-layout set (mono, 16 kHz, 1 s tracks) whose broken tracks
are each chosen by `--tracks`, estimates on disk (one with NaN samples), earlier scores and a
plain file.
"""

import hashlib
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from processes import file_size_limit, read_only
from umx.cli import main
from umx.errors import UmxError
from umx.folders import check_folder_option

pytest.importorskip("museval")
pytestmark = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="musdb needs ffprobe")

RATE = 16000
LENGTH = RATE
SOURCES = ("vocals", "drums", "bass", "other")
NEWLINE_TRACK = "Two\nLines"


def snapshot(root):
    """Every file under root, with the hash of its bytes."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def sources(rng):
    """Four distinct mono sources `(LENGTH,)`: a tone and its overtone, noise, a low and a
    high sine."""
    t = np.arange(LENGTH) / RATE
    pitch = rng.uniform(300, 500)
    return {
        "vocals": 0.2 * np.sin(2 * np.pi * pitch * t) + 0.1 * np.sin(4 * np.pi * pitch * t),
        "drums": 0.2 * rng.standard_normal(LENGTH) * (np.sin(2 * np.pi * 3 * t) > 0.5),
        "bass": 0.3 * np.sin(2 * np.pi * rng.uniform(50, 90) * t),
        "other": 0.1 * np.sin(2 * np.pi * rng.uniform(1500, 3000) * t),
    }


def write_track(folder, audio, changes=None):
    """A track folder; `changes` maps a source to what is written instead: None (no file),
    or `(samples, rate)`."""
    folder.mkdir(parents=True)
    sf.write(folder / "mixture.wav", sum(audio.values()), RATE)
    for name, samples in audio.items():
        change = (changes or {}).get(name, (samples, RATE))
        if change is not None:
            sf.write(folder / f"{name}.wav", *change)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate-hostile")
    rng = np.random.default_rng(0)
    test = root / "db" / "test"
    good = sources(rng)
    write_track(test / "Good", good)
    broken = {
        "Short": {"vocals": (good["vocals"][:-44], RATE)},
        "Slow": {"drums": (good["drums"][::2], RATE // 2)},
        "Stereo": {"bass": (np.stack([good["bass"]] * 2, axis=1), RATE)},
        "Surround": {"vocals": (np.stack([good["vocals"]] * 3, axis=1), RATE)},
        "NoBass": {"bass": None},
        "SilentBass": {"bass": (np.zeros(LENGTH), RATE)},
        NEWLINE_TRACK: {"other": (good["other"][:-10], RATE)},
    }
    for name, changes in broken.items():
        write_track(test / name, good, changes)
    for folder, nan in (("estimates", False), ("nan-estimates", True)):
        track = root / folder / "test" / "Good"
        track.mkdir(parents=True)
        for name, samples in good.items():
            samples = samples + 0.01 * rng.standard_normal(LENGTH)
            if nan and name == "vocals":
                samples[100] = np.nan
            sf.write(track / f"{name}.wav", samples, RATE, subtype="FLOAT")
    # Estimates that lack a target another track has, or hold one in another format.
    shutil.copytree(root / "estimates", root / "partial-estimates")
    shutil.copytree(root / "estimates/test/Good", root / "partial-estimates/test/Short")
    (root / "partial-estimates/test/Good/bass.wav").unlink()
    shutil.copytree(root / "estimates", root / "flac-estimates")
    vocals = root / "flac-estimates/test/Good/vocals.wav"
    sf.write(vocals.with_suffix(".flac"), sf.read(vocals)[0], RATE)
    vocals.unlink()
    assert main(["evaluate", "--root", str(root / "db"), "--is-wav", "--tracks", "Good",
                 "--method", "mix", "--evaldir", str(root / "earlier"), "-q"]) == 0  # fmt: skip
    (root / "old" / "test").mkdir(parents=True)  # scores of an umx that did not record settings
    old = json.loads((root / "earlier" / "test" / "Good.json").read_text())
    old.pop("settings", None)
    (root / "old" / "test" / "Good.json").write_text(json.dumps(old))
    (root / "a-file").write_text("not a folder")
    for folder, scores in (("bad", {"targets": 5}), ("bad2", {"targets": [5]})):
        (root / folder / "test").mkdir(parents=True)  # JSON that museval and pandas choke on
        (root / folder / "test" / "x.json").write_text(json.dumps(scores))
    return root


ROOT = ("--root", "db", "--is-wav")
MIX = ("--method", "mix", "--evaldir", "ev")
SCORES = [f"ev/{name}" for name in ("scores.md", "scores.csv")]
PLOTS = [f"ev/scores_{metric}.png" for metric in ("SDR", "SIR", "ISR", "SAR")]
GOOD_SCORES = ["ev/test/Good.json", *SCORES, *PLOTS]

# (id, arguments, exit status, message fragment, files added under the case folder)
CASES = [
    (
        "length-mismatch",
        [*ROOT, "--tracks", "Short", *MIX],
        1,
        "db/test/Short/vocals.wav has 15956 samples, its mixture 16000",
        [],
    ),
    (
        "rate-mismatch",
        [*ROOT, "--tracks", "Slow", *MIX],
        1,
        "db/test/Slow/drums.wav is at 8000 Hz, its mixture at 16000 Hz",
        [],
    ),
    (
        "channel-mismatch",
        [*ROOT, "--tracks", "Stereo", *MIX],
        1,
        "db/test/Stereo/bass.wav has 2 channels, its mixture 1",
        [],
    ),
    (
        "three-channel-stem",  # not read_audio's advice: umx evaluate has no --downmix
        [*ROOT, "--tracks", "Surround", *MIX],
        1,
        "db/test/Surround/vocals.wav: 3 channels; umx evaluates mono or stereo tracks (convert "
        "the track's files to stereo, as MUSDB18's are)\n",
        [],
    ),
    ("missing-stem", [*ROOT, "--tracks", "NoBass", *MIX], 1, "bass.wav is missing", []),
    (
        "silent-reference",
        [*ROOT, "--tracks", "SilentBass", *MIX],
        1,
        "the bass reference is silent",
        [],
    ),
    (
        "bad-track-others-go-on",
        [*ROOT, "--tracks", "Good", "Short", *MIX],
        1,
        "1 of 2 tracks failed: Short",
        GOOD_SCORES,
    ),
    (
        "track-name-with-newline",
        [*ROOT, "--tracks", NEWLINE_TRACK, *MIX],
        1,
        "Two\\nLines/other.wav has 15990 samples",
        [],
    ),
    (
        "nan-estimate",
        [*ROOT, "--tracks", "Good", "--estimates", "nan-estimates", "--evaldir", "ev"],
        1,
        "nan-estimates/test/Good/vocals.wav: a NaN sample at ",
        [],
    ),
    (
        "estimate-missing-a-target",
        [*ROOT, "--tracks", "Good", "Short", "--estimates", "partial-estimates", *MIX[2:]],
        1,
        "partial-estimates/test/Good/bass.wav is missing, but "
        "partial-estimates/test/Short/bass.wav exists: every track is scored on the same targets",
        [],
    ),
    (
        "estimates-of-the-tracks-named",  # Short's bass estimate is not asked for Good
        [*ROOT, "--tracks", "Good", "--estimates", "partial-estimates", *MIX[2:]],
        0,
        "",
        GOOD_SCORES,
    ),
    (
        "estimate-not-wav",
        [*ROOT, "--tracks", "Good", "--estimates", "flac-estimates", "--evaldir", "ev"],
        1,
        "flac-estimates/test/Good/vocals.flac is not read: estimates are read as wav files",
        [],
    ),
    (
        "estimates-missing",
        [*ROOT, "--estimates", "nowhere", "--evaldir", "ev"],
        1,
        "nowhere is not a directory of estimates",
        [],
    ),
    ("win-nan", [*ROOT, *MIX, "--win", "nan"], 1, "--win must be a positive number", []),
    ("win-inf", [*ROOT, *MIX, "--win", "inf"], 1, "--win must be a positive number", []),
    ("win-zero", [*ROOT, *MIX, "--win", "0"], 1, "--win must be a positive number", []),
    ("hop-negative", [*ROOT, *MIX, "--hop", "-1"], 1, "--hop must be a positive number", []),
    ("hop-nan", [*ROOT, *MIX, "--hop", "nan"], 1, "--hop must be a positive number", []),
    ("jobs-zero", [*ROOT, *MIX, "--jobs", "0"], 1, "--jobs must be at least 1", []),
    ("jobs-above-cores", [*ROOT, *MIX, "--jobs", "99999999"], 1, "--jobs must be at most ", []),
    (
        "compare-a-file",
        ["--compare", "a-file", "--evaldir", "ev"],
        1,
        "--compare a-file: a-file/test does not exist",
        [],
    ),
    (
        "compare-missing",
        ["--compare", "earlier", "nowhere", "--evaldir", "ev"],
        1,
        "--compare nowhere: nowhere/test does not exist",
        [],
    ),
    (
        "compare-not-museval",
        ["--compare", "earlier", "bad", "--evaldir", "ev"],
        1,
        "umx: error: bad/test/x.json is not a museval JSON file (",
        [],
    ),
    (
        "compare-not-museval-targets",
        ["--compare", "earlier", "bad2", "--evaldir", "ev"],
        1,
        "umx: error: bad2/test/x.json is not a museval JSON file (",
        [],
    ),
    (
        "resume-another-method",
        [*ROOT, "--tracks", "Good", "--method", "irm", "--evaldir", "earlier"],
        1,
        "earlier already holds scores of 1 track made with other settings (method mix, now irm)",
        [],
    ),
    (
        "resume-another-model",
        [*ROOT, "--tracks", "Good", "--model", "umxsynth", "--evaldir", "earlier"],
        1,
        "earlier already holds scores of 1 track made with other settings (method mix, now "
        "umxsynth",
        [],
    ),
    (
        "resume-another-window",
        [*ROOT, "--tracks", "Good", "--method", "mix", "--evaldir", "earlier", "--win", "0.5"],
        1,
        "(win 1.0, now 0.5): choose another --evaldir, or --force",
        [],
    ),
    (
        "resume-unrecorded-settings",
        [*ROOT, "--tracks", "Good", "--method", "mix", "--evaldir", "old"],
        1,
        "old already holds scores of 1 track that do not record",
        [],
    ),
    ("evaldir-is-a-file", [*ROOT, "--method", "mix", "--evaldir", "a-file"], 1, "is a file", []),
    (
        "evaldir-in-a-file",  # found after every track was separated and scored
        [*ROOT, "--method", "mix", "--evaldir", "a-file/ev"],
        1,
        "--evaldir a-file/ev cannot be made: a-file is a file",
        [],
    ),
    (
        "outdir-is-the-root",  # the estimates would overwrite the references
        [*ROOT, *MIX, "--outdir", "db"],
        1,
        "--outdir db and --root db overlap: put the outdir outside the test set",
        [],
    ),
    (
        "evaldir-in-the-test-set",  # it would read as a track of the test set
        [*ROOT, "--method", "mix", "--evaldir", "db/test/ev"],
        1,
        "--evaldir db/test/ev and --root db overlap",
        [],
    ),
    ("outdir-holds-the-root", [*ROOT, *MIX, "--outdir", "."], 1, "--outdir . and --root db", []),
    (
        "outdir-is-the-estimates",  # with --force, the estimates were rewritten in place
        [*ROOT, "--estimates", "estimates", "--outdir", "estimates", "--force", "--evaldir", "ev"],
        1,
        "--outdir estimates is in --estimates estimates: put the outdir elsewhere",
        [],
    ),
    (
        "evaldir-in-the-estimates",  # it would read as a track of the estimates
        [*ROOT, "--estimates", "estimates", "--evaldir", "estimates/test/ev"],
        1,
        "--evaldir estimates/test/ev is in --estimates estimates",
        [],
    ),
    ("root-missing", ["--root", "nowhere", "--is-wav", *MIX], 1, "nowhere/test does not exist", []),
    ("unknown-track", [*ROOT, "--tracks", "Nope", *MIX], 1, "no track named 'Nope'", []),
    (
        "aggregate-estimates",
        [*ROOT, "--estimates", "estimates", "--aggregate", '{"a": ["vocals"]}', "--evaldir", "ev"],
        1,
        "--aggregate does not apply to --estimates",
        [],
    ),
]


@pytest.mark.parametrize(
    ("arguments", "status", "message", "added"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_evaluate_refuses_hostile_input_and_changes_nothing_else(
    workspace, arguments, status, message, added, capsys, monkeypatch
):
    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    try:
        assert main(["evaluate", *arguments, "-q"]) == status
        err = capsys.readouterr().err
        assert message in err, err
        assert "Traceback" not in err
        assert all(line.startswith("umx: ") for line in err.splitlines()), err
        after = snapshot(workspace)
        assert {path: after[path] for path in before} == before
        assert sorted(set(after) - set(before)) == sorted(added)
    finally:
        shutil.rmtree(workspace / "ev", ignore_errors=True)


def test_an_evaldir_that_cannot_be_written_is_refused_before_any_work(
    workspace, tmp_path, capsys, monkeypatch
):
    """Found before the tracks are separated and scored, not after (each track's scores were
    thrown away, one error per track)."""
    monkeypatch.chdir(workspace)
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        assert main(["evaluate", *ROOT, "--method", "mix", "--evaldir", str(locked / "ev")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"umx: error: --evaldir {locked / 'ev'} cannot be written (Permission denied; check its "
        "permissions, or write elsewhere)"
    )
    assert not any(locked.iterdir())


def test_estimates_the_disk_refuses_leave_no_track_folder(workspace, tmp_path, monkeypatch, capsys):
    """A full disk left `OUTDIR/test/<track>/` holding only its hidden record."""
    monkeypatch.chdir(workspace)
    outdir = tmp_path / "est"
    with file_size_limit(4096):  # the record fits, a stem does not
        code = main(["evaluate", *ROOT, "--tracks", "Good", *MIX, "--outdir", str(outdir), "-q"])
    assert code == 1
    assert f"{outdir / 'test' / 'Good' / 'vocals.wav'}" in capsys.readouterr().err
    assert [path.name for path in outdir.rglob("*")] == ["test"]
    shutil.rmtree(workspace / "ev", ignore_errors=True)


def test_scores_may_go_beside_the_estimates(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(workspace)
    shutil.copytree(workspace / "estimates", tmp_path / "results" / "estimates")
    arguments = ["--estimates", str(tmp_path / "results" / "estimates")]
    evaldir = ["--evaldir", str(tmp_path / "results")]
    assert main(["evaluate", *ROOT, "--tracks", "Good", *arguments, *evaldir, "-q"]) == 0
    assert (tmp_path / "results" / "test" / "Good.json").is_file()


def test_the_table_covers_the_issue():
    assert len(CASES) >= 10
    assert len({case[0] for case in CASES}) == len(CASES)


def test_a_dangling_link_where_a_folder_goes_is_called_one(tmp_path):
    """A folder option that is, or lies in, a link to nothing is named as such (it is no file)."""
    link = tmp_path / "ev"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(UmxError, match=f"^--evaldir {link} is a dangling link, not a directory$"):
        check_folder_option("--evaldir", link)
    expected = f"^--evaldir {link / 'x'} cannot be made: {link} is a dangling link$"
    with pytest.raises(UmxError, match=expected):
        check_folder_option("--evaldir", link / "x")
    assert not (tmp_path / "gone").exists()
