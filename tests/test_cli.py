"""The `umx` command end to end on small generated audio and small models."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from processes import read_only_folder
from umx import __version__
from umx.cli import COMMANDS, build_parser, main
from umx.cli_options import EMPTY_PATH, path_argument, path_text
from umx.modeldir import save_separator

RATE = 16000
TARGETS = ("vocals", "drums", "bass", "other")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, small_music_separator):
    """A small 4-target stereo model in the official layout (n_fft 512, 16 kHz)."""
    assert small_music_separator.sample_rate == RATE
    directory = tmp_path_factory.mktemp("models") / "small"
    save_separator(small_music_separator, directory)
    return directory


@pytest.fixture
def song(tmp_path):
    """Two seconds of stereo music-like noise at 16 kHz."""
    rng = np.random.default_rng(1)
    t = np.arange(2 * RATE) / RATE
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    right = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(t.size)
    path = tmp_path / "song.wav"
    sf.write(path, np.stack([left, right], axis=1), RATE, subtype="FLOAT")
    return path


def run(*args):
    return main([str(a) for a in args])


def read(path):
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    return data.T, rate


def test_separates_into_four_stems(model_dir, song, tmp_path, capsys):
    outdir = tmp_path / "out"
    assert run(song, "--model", model_dir, "--outdir", outdir, "--subtype", "FLOAT") == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4  # one line per written stem
    mix, _ = read(song)
    stems = []
    for target in TARGETS:
        path = outdir / "song" / f"{target}.wav"
        assert str(path) in printed
        stem, rate = read(path)
        assert rate == RATE
        assert stem.shape == mix.shape
        assert np.abs(stem).max() > 1e-3
        stems.append(stem)
    # with Wiener EM the four stems add up to the mixture
    assert np.abs(sum(stems) - mix).max() < 1e-3
    assert sorted(p.name for p in (outdir / "song").iterdir()) == sorted(
        f"{t}.wav" for t in TARGETS
    )


def test_residual_targets_and_template(model_dir, song, tmp_path):
    outdir = tmp_path / "out"
    code = run(
        song, "--model", model_dir, "--outdir", outdir, "--targets", "vocals",
        "--residual", "accompaniment", "--niter", "0", "--subtype", "FLOAT",
        "--filename", "{track}-{target}.{ext}", "--ext", "flac",
    )  # fmt: skip
    assert code == 1  # FLOAT is not a FLAC sample format
    code = run(
        song, "--model", model_dir, "--outdir", outdir, "--targets", "vocals",
        "--residual", "accompaniment", "--niter", "0", "--subtype", "FLOAT",
        "--filename", "{track}-{target}.{ext}",
    )  # fmt: skip
    assert code == 0
    mix, _ = read(song)
    vocals, _ = read(outdir / "song-vocals.wav")
    accompaniment, _ = read(outdir / "song-accompaniment.wav")
    np.testing.assert_allclose(vocals + accompaniment, mix, atol=1e-5)


def test_the_format_a_template_sets_rules_its_subtype_and_a_given_ext(
    model_dir, song, tmp_path, capsys
):
    """`--filename '{track}/{target}.mp3' --ext wav` wrote mp3 files, exit 0, and the subtype
    was checked against --ext (wav) rather than mp3, after the separation."""
    outdir = tmp_path / "out"
    given = [song, "--model", model_dir, "--outdir", outdir, "--filename", "{target}.flac"]
    for extra, message in [
        (["--ext", "wav"], "--filename '{target}.flac' gives .flac files, but --ext is wav: "),
        (["--subtype", "FLOAT"], "--subtype 'FLOAT' is not one of flac's, the format --filename"),
    ]:
        assert run(*given, *extra) == 1
        assert message in capsys.readouterr().err
    assert not outdir.exists()  # refused before any work
    assert run(*given, "--subtype", "PCM_24", "--ext", "flac", "-q") == 0
    assert sf.info(outdir / "vocals.flac").subtype == "PCM_24"


def test_aggregate(model_dir, song, tmp_path):
    outdir = tmp_path / "out"
    groups = {"vocals": ["vocals"], "accompaniment": ["drums", "bass", "other"]}
    assert (
        run(song, "--model", model_dir, "--outdir", outdir, "--aggregate", json.dumps(groups)) == 0
    )
    assert sorted(p.name for p in (outdir / "song").iterdir()) == [
        "accompaniment.wav",
        "vocals.wav",
    ]


@pytest.mark.parametrize("name", ["a\x00b", "", "../x"])
def test_an_unsafe_aggregate_name_is_refused_as_such(name, model_dir, song, tmp_path, capsys):
    """Before the stems' paths are made of it: a NUL byte crashed with a traceback there, and
    '' or '../x' were blamed on a --filename that was not given."""
    groups = json.dumps({name: ["vocals"]})
    assert run(song, "--model", model_dir, "--outdir", tmp_path / "o", "--aggregate", groups) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"umx: error: --aggregate has an unsafe target name {name!r}: ")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("clip", ["rescale", "clamp"])
def test_a_stem_beyond_full_scale_is_said_with_what_was_done(model_dir, tmp_path, capsys, clip):
    loud = tmp_path / "loud.wav"
    t = np.arange(RATE) / RATE
    sf.write(loud, np.stack([1.6 * np.sin(2 * np.pi * 220 * t)] * 2, axis=1), RATE, "FLOAT")
    whole = json.dumps({"all": list(TARGETS)})  # the stems add up to the mixture: peak 1.6
    outdir = tmp_path / "out"
    assert (
        run(loud, "--model", model_dir, "--outdir", outdir, "--aggregate", whole, "--clip", clip)
        == 0
    )
    (line,) = capsys.readouterr().out.splitlines()
    written, _ = read(outdir / "loud" / "all.wav")
    assert np.abs(written).max() <= 1.0
    if clip == "rescale":
        gain = float(line.removeprefix(f"{outdir / 'loud' / 'all.wav'} (rescaled by ").rstrip(")"))
        assert gain == pytest.approx(1 / 1.6, abs=0.01)
    else:  # clamping has no gain to say: the peak it cut
        assert line == f"{outdir / 'loud' / 'all.wav'} (clamped: it peaked at 1.60)"


@pytest.mark.parametrize("fmt", ["flac", "mp3", "m4a"])
def test_compressed_inputs(model_dir, song, tmp_path, fmt):
    if fmt == "m4a":
        ffmpeg = pytest.importorskip("shutil").which("ffmpeg")
        if ffmpeg is None:
            pytest.skip("ffmpeg is not installed")
        path = tmp_path / "song.m4a"
        subprocess.run([ffmpeg, "-loglevel", "error", "-i", song, path], check=True)
    else:
        path = tmp_path / f"song.{fmt}"
        data, _ = sf.read(song)
        sf.write(path, data, RATE)
    outdir = tmp_path / "out"
    assert run(path, "--model", model_dir, "--outdir", outdir, "--ext", "flac") == 0
    vocals, rate = read(outdir / "song" / "vocals.flac")
    assert rate == RATE
    assert abs(vocals.shape[1] - 2 * RATE) < 2048  # compressed formats may pad a little


def test_excerpt_and_whole_track(model_dir, song, tmp_path):
    outdir = tmp_path / "out"
    args = ["--model", model_dir, "--subtype", "FLOAT", "--start", "0.5", "--duration", "1"]
    assert run(song, *args, "--outdir", outdir / "a", "--whole-track") == 0
    assert run(song, *args, "--outdir", outdir / "b", "--segment", "0.5", "--overlap", "0.1") == 0
    whole, _ = read(outdir / "a" / "song" / "drums.wav")
    chunked, _ = read(outdir / "b" / "song" / "drums.wav")
    assert whole.shape == (2, RATE)
    assert np.linalg.norm(whole - chunked) / np.linalg.norm(whole) < 0.1


def test_a_short_segment_alone_takes_half_of_it_as_the_overlap(model_dir, song, tmp_path, capsys):
    """`--segment 3` alone was refused: the default --overlap 2 is over half of it. Given alone,
    a chunk shorter than 4 s cross-fades over half its length; given both, they are checked."""
    args = ["--model", model_dir, "--subtype", "FLOAT", "--targets", "drums"]
    assert run(song, *args, "--outdir", tmp_path / "a", "--segment", "0.5") == 0
    assert (
        run(song, *args, "--outdir", tmp_path / "b", "--segment", "0.5", "--overlap", "0.25") == 0
    )
    alone, _ = read(tmp_path / "a" / "song" / "drums.wav")
    np.testing.assert_array_equal(alone, read(tmp_path / "b" / "song" / "drums.wav")[0])
    capsys.readouterr()
    assert run(song, *args, "--outdir", tmp_path / "c", "--segment", "0.5", "--overlap", "2") == 1
    assert capsys.readouterr().err == (
        "umx: error: --overlap (2 s) must be at most half of --segment (0.5 s), or every sample "
        "is separated many times over: give --overlap 0.25 or less\n"
    )


def test_existing_output_needs_force(model_dir, song, tmp_path, capsys):
    outdir = tmp_path / "out"
    assert (
        run(song, "--model", model_dir, "--outdir", outdir, "--targets", "vocals", "--niter", "0")
        == 0
    )
    target = outdir / "song" / "vocals.wav"
    target.write_bytes(b"keep me")
    capsys.readouterr()
    assert (
        run(song, "--model", model_dir, "--outdir", outdir, "--targets", "vocals", "--niter", "0")
        == 1
    )
    assert "already exists" in capsys.readouterr().err
    assert target.read_bytes() == b"keep me"
    assert (
        run(
            song,
            "--model",
            model_dir,
            "--outdir",
            outdir,
            "--targets",
            "vocals",
            "--niter",
            "0",
            "--force",
        )
        == 0
    )
    assert read(target)[0].shape == (2, 2 * RATE)


def test_one_bad_input_does_not_stop_the_others(model_dir, song, tmp_path, capsys):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    outdir = tmp_path / "out"
    assert run(bad, song, "--model", model_dir, "--outdir", outdir) == 1
    err = capsys.readouterr().err
    assert str(bad) in err
    assert "1 of 2 inputs failed" in err
    assert len(list((outdir / "song").iterdir())) == 4
    assert not (outdir / "notes").exists() or not list((outdir / "notes").iterdir())


def bad_inputs(tmp_path):
    nan = tmp_path / "nan.wav"
    data = np.zeros((RATE, 2), dtype=np.float32)
    data[100, 0] = np.nan
    sf.write(nan, data, RATE, subtype="FLOAT")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 2)), RATE)
    six = tmp_path / "six.wav"
    sf.write(six, np.zeros((RATE, 6)), RATE)
    truncated = tmp_path / "truncated.flac"
    sf.write(truncated, np.random.default_rng(0).standard_normal((RATE, 2)) * 0.1, RATE)
    truncated.write_bytes(truncated.read_bytes()[:200])
    return {
        "missing": tmp_path / "missing.wav",
        "nan": nan,
        "empty": empty,
        "six": six,
        "truncated": truncated,
        "directory": tmp_path,
    }


def test_each_bad_input_gives_one_line(model_dir, tmp_path, capsys):
    outdir = tmp_path / "out"
    for name, path in bad_inputs(tmp_path).items():
        capsys.readouterr()
        assert run(path, "--model", model_dir, "--outdir", outdir) == 1, name
        err = capsys.readouterr().err.strip().splitlines()
        assert err[0].startswith("umx: error:") and str(path) in err[0], (name, err)
        assert "Traceback" not in "\n".join(err)
    assert not outdir.exists() or not any(p.is_file() for p in outdir.rglob("*"))


def test_bad_models(model_dir, song, tmp_path, capsys):
    assert run(song, "--model", "nosuchmodel", "--outdir", tmp_path) == 1
    err = capsys.readouterr().err
    assert "nosuchmodel" in err and "umxhq" in err

    empty = tmp_path / "empty_model"
    empty.mkdir()
    assert run(song, "--model", empty, "--outdir", tmp_path) == 1
    assert "separator.json" in capsys.readouterr().err

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "drums.pth").write_bytes(b"\x00" * 100)
    assert run(song, "--model", broken, "--outdir", tmp_path) == 1
    assert "drums.pth" in capsys.readouterr().err


def test_unwritable_outdir(model_dir, song, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run(song, "--model", model_dir, "--outdir", blocker / "out") == 1
    assert str(blocker) in capsys.readouterr().err


def test_a_read_only_outdir_is_refused_with_what_to_do(
    model_dir, song, tmp_path, monkeypatch, capsys
):
    """It said "cannot create output directory ro/x/song: Read-only file system"."""
    (tmp_path / "ro").mkdir()
    read_only_folder(monkeypatch, tmp_path / "ro")
    assert run(song, "--model", model_dir, "--outdir", tmp_path / "ro" / "x", "-q") == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        f"umx: error: cannot create output directory {tmp_path / 'ro' / 'x' / 'song'}: "
        "Read-only file system; write elsewhere"
    )


def test_a_file_where_the_track_folder_goes_is_named(model_dir, song, tmp_path, capsys):
    """It said "cannot create output directory out/song: File exists"."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "song").write_text("x")
    assert run(song, "--model", model_dir, "--outdir", tmp_path / "out", "-q") == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        f"umx: error: cannot create output directory {tmp_path / 'out' / 'song'}: it is a file; "
        "move it away, or write elsewhere"
    )
    assert run(song, "--model", model_dir, "--outdir", tmp_path / "out" / "song" / "x", "-q") == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        f"umx: error: cannot create output directory {tmp_path / 'out' / 'song' / 'x' / 'song'}: "
        f"{tmp_path / 'out' / 'song'} is a file; move it away, or write elsewhere"
    )


def test_a_track_folder_name_too_long_says_to_shorten_the_template(model_dir, tmp_path, capsys):
    """It said "cannot create output directory out/ccc…: File name too long", and left `out`
    behind; with `out` there, the same line without "cannot create output directory"."""
    song = tmp_path / ("c" * 150 + ".wav")
    sf.write(song, np.zeros((RATE, 2)), RATE)
    outdir = tmp_path / "out"
    template = "{track}-{track}/{target}.{ext}"
    for existing in (False, True):
        if existing:
            outdir.mkdir()
        assert run(song, "--model", model_dir, "--outdir", outdir, "--filename", template) == 1
        assert capsys.readouterr().err.splitlines()[0] == (
            f"umx: error: cannot create output directory {outdir / ('c' * 150 + '-' + 'c' * 150)}"
            ": File name too long; shorten --filename"
        )
        assert outdir.exists() == existing


def test_a_read_only_track_folder_is_refused_with_what_to_do(
    model_dir, song, tmp_path, monkeypatch, capsys
):
    """It said "cannot write ro/song/vocals.wav: directory ro/song is missing or unwritable"."""
    (tmp_path / "ro" / "song").mkdir(parents=True)
    read_only_folder(monkeypatch, tmp_path / "ro")
    assert run(song, "--model", model_dir, "--outdir", tmp_path / "ro", "-q") == 1
    track = tmp_path / "ro" / "song"
    assert capsys.readouterr().err.splitlines()[0] == (
        f"umx: error: cannot write {track / 'vocals.wav'}: its folder {track} is not writable "
        "(Read-only file system; write elsewhere)"
    )


def test_version_and_list_models(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("umx ")
    assert main(["--list-models"]) == 0
    listed = capsys.readouterr().out
    for name in ("umxl", "umxhq", "umx", "umxse"):
        assert name in listed


def test_entry_point_has_no_traceback(tmp_path):
    """The installed command: user errors end with one line and exit code 1."""
    result = subprocess.run(
        [sys.executable, "-m", "umx.cli", str(tmp_path / "missing.wav"), "--model", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_other_commands_report_bad_roots_in_one_line(command, tmp_path, capsys):
    missing = tmp_path / "no-such-dataset"
    args = [command, "--root", missing]
    args += ["--output", tmp_path / "out"] if command == "train" else ["--evaldir", tmp_path / "ev"]
    assert run(*args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0], err


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_stop_signals_leave_no_temporary_files(model_dir, tmp_path, signame):
    """Stopped while stems are being written, umx removes its hidden temporary files."""
    import signal
    import time

    song = tmp_path / "long.wav"
    rng = np.random.default_rng(0)
    sf.write(song, 0.1 * rng.standard_normal((RATE * 600, 2)).astype(np.float32), RATE)
    outdir = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "umx.cli", song, "--model", model_dir, "--outdir", outdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(outdir.rglob(".*tmp*")) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.01)
    assert list(outdir.rglob(".*tmp*")), "no temporary file appeared"
    process.send_signal(getattr(signal, signame))
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + getattr(signal, signame)
    assert f"stopped by {signame}" in err.decode()
    assert [path for path in outdir.rglob("*") if path.is_file()] == []


def test_match_input_writes_at_the_inputs_rate_and_channels(model_dir, tmp_path, capsys):
    """A mono 24 kHz input: by default stereo stems at the model's 16 kHz; with --match-input
    mono stems at 24 kHz that still add up to the mixture."""
    t = np.arange(24000 * 2) / 24000
    mono = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1500 * t)).astype("f4")
    song = tmp_path / "mono24k.wav"
    sf.write(song, mono, 24000, subtype="FLOAT")
    args = ["--model", model_dir, "--subtype", "FLOAT", "--targets", "vocals", "--residual", "rest"]
    assert run(song, *args, "--outdir", tmp_path / "model-rate") == 0
    stem, rate = read(tmp_path / "model-rate" / "mono24k" / "vocals.wav")
    assert rate == RATE and stem.shape == (2, RATE * 2)
    assert run(song, *args, "--outdir", tmp_path / "input-rate", "--match-input") == 0
    stems = [read(tmp_path / "input-rate" / "mono24k" / f"{n}.wav") for n in ("vocals", "rest")]
    assert all(rate == 24000 and stem.shape == (1, mono.size) for stem, rate in stems)
    total = stems[0][0] + stems[1][0]
    assert np.abs(total[0] - mono)[1000:-1000].max() < 0.01
    assert "separated with " in capsys.readouterr().err


def test_mono_model_keeps_stereo_input_stereo(small_music_separator, tmp_path):
    import torch

    from umx.model import OpenUnmix
    from umx.separator import Separator

    torch.manual_seed(0)
    models = {t: OpenUnmix(257, 1, 8, max_bin=200).freeze() for t in ("speech", "noise")}
    directory = tmp_path / "mono-model"
    save_separator(
        Separator(models, sample_rate=RATE, n_fft=512, n_hop=128, nb_channels=1), directory
    )
    t = np.arange(RATE) / RATE
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)], 1) * 0.3
    sf.write(tmp_path / "lr.wav", stereo, RATE, subtype="FLOAT")
    out = tmp_path / "out"
    assert (
        run(tmp_path / "lr.wav", "--model", directory, "--outdir", out, "--subtype", "FLOAT") == 0
    )
    speech, _ = read(out / "lr" / "speech.wav")
    noise, _ = read(out / "lr" / "noise.wav")
    assert speech.shape == noise.shape == (2, RATE)
    assert np.abs(speech[0] - speech[1]).max() > 0.05  # each channel keeps its own content
    assert np.abs(speech + noise - stereo.T)[:, 600:-600].max() < 0.01


def test_targets_before_inputs_is_explained(model_dir, song, capsys):
    assert run("--model", model_dir, "--targets", "vocals", song) == 1
    assert "--targets took" in capsys.readouterr().err
    outdir = song.parent / "o"
    assert (
        run(
            "--model",
            model_dir,
            "--outdir",
            outdir,
            "--niter",
            "0",
            "--targets",
            "vocals",
            "--",
            song,
        )
        == 0
    )
    assert (outdir / "song" / "vocals.wav").is_file()


@pytest.mark.parametrize("command", ["separate", "stream", "batch"])
@pytest.mark.parametrize("taken", ["b.wav", "later.flac"])  # an existing file, an audio name
def test_an_input_taken_by_targets_is_explained_when_inputs_remain(
    command, taken, model_dir, song, monkeypatch, capsys
):
    """`umx song.wav --targets vocals b.wav`: b.wav is no target of the model, but an input
    --targets took (before, the model said it had no target 'b.wav')."""
    monkeypatch.chdir(song.parent)
    (song.parent / "b.wav").write_bytes(song.read_bytes())
    argv = [command, "song.wav", "--model", model_dir, "--targets", "vocals", taken]
    assert run(*argv, "--outdir", "out") == 1
    assert capsys.readouterr().err.splitlines() == [
        f"umx: error: --targets took {taken!r} as a target name (it takes every word up to the "
        "next option): write the inputs before --targets, or end the target list with -- "
        f"(--targets vocals -- {taken})"
    ]
    assert not (song.parent / "out").exists()


@pytest.mark.parametrize(
    ("option", "word"), [("--two-stems", "karaoke"), ("--targets", "accompaniment")]
)
def test_the_rest_of_the_mixture_asked_as_a_target_is_told_how_to_ask(
    option, word, model_dir, song, tmp_path, capsys
):
    assert run(song, "--model", model_dir, option, word, "--outdir", tmp_path / "out") == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(
        f"has no target {word!r}; its targets are vocals, drums, bass, other ({word}, the rest "
        f"of the mixture, is written by --two-stems vocals, or --targets vocals --residual {word})"
    )
    assert not (tmp_path / "out").exists()


def test_options_after_the_double_dash_are_said_to_go_before_it(song, monkeypatch, capsys):
    """Every word after -- is an input: an option there is not a missing file among others."""
    monkeypatch.chdir(song.parent)
    argv = ["separate", "--targets", "vocals", "--", "song.wav", "--model", "umxsynth"]
    assert run(*argv, "--outdir", "out") == 1
    assert capsys.readouterr().err.splitlines() == [
        "umx: error: --model is read as an input file, as every word after -- is, and there is "
        "no such file: write the options before -- (umx separate [OPTIONS] -- INPUT...)"
    ]
    for argv, prog, unknown, usage in [
        (
            ["song.wav", "--outdir", "out", "--", "b.wav", "--model", "x"],
            "umx separate",
            "",
            "INPUT...",
        ),
        (
            ["stream", "song.wav", "--targets", "vocals", "--", "--outdir", "out"],
            "umx stream",
            "",
            "INPUT",
        ),
        (["export", "umxsynth", "--", "out", "-q"], "umx export", "-q", "MODEL OUTDIR"),
    ]:  # inputs on both sides of --, or options after it with the input before
        with pytest.raises(SystemExit) as exited:
            run(*argv)
        assert exited.value.code == 2
        unknown = unknown or " ".join(argv[argv.index("--") :])
        assert capsys.readouterr().err.splitlines() == [
            f"{prog}: error: unrecognized arguments: {unknown}; write the options first, then -- "
            f"and the arguments ({prog} [OPTIONS] -- {usage}) (see {prog} --help)"
        ]
    assert sorted(p.name for p in song.parent.iterdir()) == ["song.wav"]


def test_a_list_option_that_took_a_positional_argument_is_named(capsys):
    """`--targets` takes every word up to the next option: the OUTDIR after it too."""
    with pytest.raises(SystemExit) as exited:
        run("export", "umxsynth", "--targets", "vocals", "out")
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "umx export: error: the following arguments are required: OUTDIR; --targets took every "
        "word after it: give its list last, or end it with -- before what follows (see umx "
        "export --help)"
    ]
    with pytest.raises(SystemExit):  # a missing option is not the list's doing
        run("evaluate", "--tracks", "a", "b")
    assert capsys.readouterr().err.splitlines() == [
        "umx evaluate: error: the following arguments are required: --evaldir (see umx evaluate "
        "--help)"
    ]


def test_compare_without_evaldir_says_what_to_add(capsys):
    """The tables of `umx evaluate --compare A B` go into --evaldir, which has no default."""
    for compared, folder in (
        (["evals/umxl", "evals/irm"], "evals/compared"),
        (["a", "/b"], "compared"),
    ):
        with pytest.raises(SystemExit):
            run("evaluate", "--compare", *compared, "-q")
        assert capsys.readouterr().err.splitlines() == [
            "umx evaluate: error: the following arguments are required: --evaldir; --compare "
            f"writes its tables and plots into it: add --evaldir {folder}, or another (see umx "
            "evaluate --help)"
        ]


def test_a_double_dash_with_nothing_after_it_is_no_argument(model_dir, song, monkeypatch):
    monkeypatch.chdir(song.parent)
    argv = ["--model", model_dir, "--outdir", "out", "--niter", "0", "--targets", "vocals", "--"]
    assert run("separate", song.name, *argv) == 0
    assert sorted(p.name for p in (song.parent / "out" / "song").iterdir()) == ["vocals.wav"]


@pytest.mark.parametrize("command", [[], ["stream"]])
def test_a_folder_or_a_mistyped_name_is_told_what_to_give(command, song, monkeypatch, capsys):
    """A folder of songs is told `umx batch` (one without songs, nothing it would refuse); a
    missing name, the one file next to it that is close."""
    monkeypatch.chdir(song.parent)
    song.rename("my song.flac")
    (song.parent / "album").mkdir()
    (song.parent / "album" / "clip.webm").touch()  # umx batch album takes it
    (song.parent / "notes").mkdir()
    (song.parent / "notes" / "lyrics.txt").touch()
    for argv, line in [
        (["album"], "album is a directory, not a regular audio file; to separate every song in "
         "it: umx batch album"),
        (["notes"], "notes is a directory, not a regular audio file, and holds no audio file"),
        (["my song.fla"], "my song.fla does not exist; did you mean my song.flac?"),
        (["../album/song.flac"], "../album/song.flac does not exist"),  # nothing close: no hint
    ]:  # fmt: skip
        assert run(*command, *argv, "--model", "no-such-model", "--outdir", "out") == 1
        assert capsys.readouterr().err.splitlines() == [f"umx: error: {line}"]
    (song.parent / "my song.flax").write_bytes(b"")  # two files as close: which one is not clear
    assert run(*command, "my song.fla", "--model", "no-such-model", "--outdir", "out") == 1
    assert capsys.readouterr().err.splitlines() == ["umx: error: my song.fla does not exist"]
    assert sorted(p.name for p in song.parent.iterdir()) == [
        "album",
        "my song.flac",
        "my song.flax",
        "notes",
    ]


def test_train_on_a_folder_of_songs_is_told_umx_distill(song, tmp_path, capsys):
    pytest.importorskip("musdb")
    assert run("train", "--root", song.parent, "--output", tmp_path / "model") == 1
    assert capsys.readouterr().err.splitlines() == [
        f"umx: error: {song.parent / 'train'} does not exist: MUSDB18 holds "
        "<root>/train/<track>.stem.mp4 (use --is-wav for wav folders); to train on songs "
        "without stems: umx distill (docs/distillation.md)"
    ]


def test_a_forked_worker_dies_of_a_stop_signal_quietly():
    """Pools terminate their workers with SIGTERM: a worker forked under the handler must die
    of it, not raise `Stopped` with a traceback."""
    import os
    import signal

    from umx.cli_run import stop_on_signals

    with stop_on_signals():
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: wait to be terminated
            os.close(read)
            os.write(write, b"ready")
            signal.pause()
            os._exit(0)
        os.close(write)
        assert os.read(read, 5) == b"ready"
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


OPTIONAL = ("scipy", "musdb", "museval", "matplotlib", "pandas", "ray", "starlette", "uvicorn")
OPTIONAL += ("onnx", "onnxruntime")


def test_the_core_install_separates_without_any_extra(tmp_path):
    """`pip install umx` has none of the extras' packages: the command must still start, show
    every command's help, and separate (an import of any of them fails here)."""
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "procedural-42.flac"
    script = (
        "import sys\n"
        f"for name in {OPTIONAL!r}: sys.modules[name] = None\n"
        "from contextlib import suppress\n"
        "from umx.cli import COMMANDS, build_parser\n"
        "for command in COMMANDS:\n"
        "    with suppress(SystemExit): build_parser().parse_args([command, '--help'])\n"
    )
    separate = (
        "import sys\n"
        f"for name in {OPTIONAL!r}: sys.modules[name] = None\n"
        "from umx.cli import main\n"
        f"sys.exit(main([{str(example)!r}, '--duration', '2', '--outdir', {str(tmp_path)!r}, "
        "'-q']))\n"
    )
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("usage: umx") == len(COMMANDS)
    done = subprocess.run([sys.executable, "-c", separate], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    stems = sorted(p.name for p in (tmp_path / "procedural-42").iterdir())
    assert stems == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    assert sf.info(tmp_path / "procedural-42" / "vocals.wav").duration == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("word", "suggestion"), [("seperate", "separate"), ("srve", "serve"), ("trian", "train")]
)
def test_a_mistyped_command_is_refused_before_any_work(word, suggestion, song, monkeypatch, capsys):
    """`umx seperate song.wav` must not separate song.wav and then complain about 'seperate'."""
    monkeypatch.chdir(song.parent)
    assert run(word, song.name) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"umx: error: {word!r} is not a command or a file; did you mean {suggestion}?"
    ]
    assert sorted(p.name for p in song.parent.iterdir()) == ["song.wav"]  # no separated/


@pytest.mark.parametrize(
    ("arguments", "unknown", "meant"),
    [
        (["song.wav", "--output", "out"], "--output out", "; did you mean --outdir out?"),
        (
            ["separate", "song.wav", "--taregts", "vocals"],
            "--taregts vocals",
            "; did you mean --targets?",
        ),
        (["batch", "music", "--output=out"], "--output=out", "; did you mean --outdir out?"),
        (["serve", "--prot", "8000"], "--prot 8000", "; did you mean --port?"),
        (["song.wav", "-o", "out"], "-o out", "; did you mean --outdir out?"),  # demucs's options
        (["song.wav", "--mp3"], "--mp3", "; did you mean --ext mp3?"),
        (["stream", "song.wav", "-n", "x"], "-n x", "; did you mean --model x?"),
        (["serve", "--mp3"], "--mp3", ""),  # umx serve has no --ext
        (["song.wav", "--zzz"], "--zzz", ""),  # nothing close: nothing said
        (["--verison"], "--verison", "; did you mean umx --version?"),  # not --duration
        (["batch", "music", "--verison"], "--verison", "; did you mean umx --version?"),
        (["song.wav", "--cpu"], "--cpu", "; did you mean --device cpu?"),  # not --clip
        (["stream", "song.wav", "--cpu"], "--cpu", "; did you mean --device cpu?"),
        (["song.wav", "--gpu"], "--gpu", "; did you mean --device cuda?"),
        (["song.wav", "--shifts", "2"], "--shifts 2", ""),  # demucs's; not --softmask
        (["serve", "--bogus"], "--bogus", ""),  # not --jobs
        (["batch", "music", "--bogus"], "--bogus", ""),
        (["batch", "--list-models"], "--list-models", "; did you mean umx --list-models?"),
        (["train", "--list-models"], "--list-models", "; did you mean umx --list-models?"),
        (["serve", "--list-models"], "--list-models", "; did you mean umx --list-models?"),
        (["song.wav", "--modle", "x"], "--modle x", "; did you mean --model?"),
    ],
)
def test_a_mistyped_option_is_told_the_one_meant(
    song, monkeypatch, capsys, arguments, unknown, meant
):
    monkeypatch.chdir(song.parent)
    with pytest.raises(SystemExit) as exit:
        run(*arguments)
    assert exit.value.code == 2
    command = arguments[0] if arguments[0] in COMMANDS else "separate"
    assert capsys.readouterr().err.splitlines() == [
        f"umx {command}: error: unrecognized arguments: {unknown}{meant} (see umx {command} --help)"
    ]
    assert sorted(p.name for p in song.parent.iterdir()) == ["song.wav"]  # nothing done


def test_a_first_word_is_a_file_when_one_exists_by_that_name(model_dir, song, monkeypatch):
    """A file named like a mistyped command is an input; a word that is neither a file nor
    close to a command lists the commands."""
    monkeypatch.chdir(song.parent)
    song.rename("seperate")
    assert run("seperate", "--model", model_dir, "--outdir", "out", "--niter", "0") == 0
    assert len(list((song.parent / "out" / "seperate").iterdir())) == 4


def test_an_unknown_word_lists_the_commands_and_a_file_name_is_an_input(tmp_path, capsys):
    assert run("xyzzy") == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "umx: error: 'xyzzy' is not a command or a file; the commands are " + ", ".join(COMMANDS)
    )
    missing = tmp_path / "serve.wav"  # close to a command, but a file name
    assert run(missing, "--model", tmp_path / "no-such-model") == 1
    assert capsys.readouterr().err.splitlines() == [f"umx: error: {missing} does not exist"]


def test_help_and_version_as_words_show_what_the_options_show(capsys):
    with pytest.raises(SystemExit) as exited:
        run("help", "separate")
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: umx separate ") and "--two-stems" in help_text
    with pytest.raises(SystemExit):
        run("help")
    assert capsys.readouterr().out.startswith("usage: umx [-h] [--version]")
    with pytest.raises(SystemExit):
        run("version")
    assert capsys.readouterr().out == f"umx {__version__}\n"
    for word in ("models", "list"):
        assert run(word) == 2
        assert capsys.readouterr().err == (
            f"umx: error: {word!r} is not a command or a file; to list the models: "
            "umx --list-models\n"
        )


def test_a_file_named_help_is_separated_as_any_input(model_dir, song, monkeypatch):
    monkeypatch.chdir(song.parent)
    song.rename("help")
    assert run("help", "--model", model_dir, "--outdir", "out", "--niter", "0") == 0
    assert len(list((song.parent / "out" / "help").iterdir())) == 4


@pytest.mark.parametrize(
    ("word", "option"), [("vocals", "--targets vocals"), ("karaoke", "--two-stems vocals")]
)
def test_a_stem_word_after_the_song_says_which_option_asks_for_it(
    word, option, song, monkeypatch, capsys
):
    monkeypatch.chdir(song.parent)
    assert run(song.name, word, "--model", "no-such-model") == 1
    assert capsys.readouterr().err.splitlines() == [
        f"umx: error: {word} does not exist; to ask for stems, write the option: "
        f"umx song.wav {option}"
    ]
    assert sorted(p.name for p in song.parent.iterdir()) == ["song.wav"]


def test_standard_input_to_umx_separate_is_sent_to_umx_stream(song, monkeypatch, capsys):
    monkeypatch.chdir(song.parent)
    assert run("-", "--model", "no-such-model") == 1
    assert capsys.readouterr().err.splitlines() == [
        "umx: error: - does not exist: umx separate reads files; umx stream - reads standard input"
    ]


def test_a_file_whose_name_begins_with_a_dash_is_told_how_to_give(
    model_dir, song, monkeypatch, capsys
):
    """argparse takes `-song.wav` for an option; the error says how to give the file."""
    monkeypatch.chdir(song.parent)
    song.rename("-song.wav")
    for argv, error in [
        (["-song.wav"], "umx separate: error: unrecognized arguments: -song.wav"),
        (["batch", "-song.wav"], "umx batch: error: unrecognized arguments: -song.wav"),
        (["stream", "-song.wav"], "umx stream: error: the following arguments are required: INPUT"),
    ]:
        with pytest.raises(SystemExit) as exited:
            run(*argv)
        assert exited.value.code == 2
        prog = error.split(":")[0]
        hint = "-song.wav is a file: write ./-song.wav, or -- before it"
        assert capsys.readouterr().err == f"{error}; {hint} (see {prog} --help)\n"
    odd = "-a\nb\x1b.wav"  # a line break and an escape, shown escaped: the error stays one line
    (song.parent / odd).write_bytes(b"")
    with pytest.raises(SystemExit):
        run(odd)
    assert capsys.readouterr().err == (
        "umx separate: error: unrecognized arguments: -a\\nb\\x1b.wav; -a\\nb\\x1b.wav is a file: "
        "write ./-a\\nb\\x1b.wav, or -- before it (see umx separate --help)\n"
    )
    with pytest.raises(SystemExit):
        run("-other.wav")  # not a file: no hint
    assert capsys.readouterr().err == (
        "umx separate: error: unrecognized arguments: -other.wav (see umx separate --help)\n"
    )
    options = ["--model", model_dir, "--outdir", "out", "--niter", "0", "--force"]
    for argv in (["./-song.wav", *options], [*options, "--", "-song.wav"]):  # as the hint says
        assert run(*argv) == 0
    assert len(list((song.parent / "out" / "-song").iterdir())) == 4


def test_missing_inputs_are_refused_before_the_model_loads(song, tmp_path, capsys):
    """Inputs are checked first: with an invalid model as well, the error is the input's."""
    missing, folder = tmp_path / "missing.wav", tmp_path / "folder.wav"
    folder.mkdir()
    not_a_model = tmp_path / "no-such-model-dir"
    assert run(song, missing, "--model", not_a_model, "--outdir", tmp_path / "out") == 1
    assert capsys.readouterr().err.splitlines() == [f"umx: error: {missing} does not exist"]
    assert run(missing, folder, song, "--model", not_a_model, "--outdir", tmp_path / "o") == 1
    assert capsys.readouterr().err.splitlines() == [
        f"umx: error: {missing} does not exist (and 1 more input cannot be read)"
    ]
    assert run(folder, "--model", not_a_model, "--outdir", tmp_path / "o") == 1
    assert capsys.readouterr().err.splitlines() == [
        f"umx: error: {folder} is a directory, not a regular audio file, and holds no audio file"
    ]
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()
    taken = tmp_path / "notes.txt"  # an --outdir that is a file: said before the (bad) model
    taken.write_text("mine")
    assert run(song, "--model", not_a_model, "--outdir", taken) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"umx: error: --outdir {taken} is a file: give a folder for the stems"
    ]
    assert taken.read_text() == "mine"


PARSED = {  # each command with options that parse (nothing runs)
    "separate": ["separate", "song.wav", "--targets", "vocals", "--ext", "flac", "-q"],
    "stream": ["stream", "-", "--rate", "44100", "--format", "s16le"],
    "batch": ["batch", "music", "--jobs", "2"],
    "train": ["train", "--root", "data", "--target", "vocals", "--epochs", "3"],
    "evaluate": ["evaluate", "--evaldir", "scores", "--method", "irm"],
    "download": ["download", "umxhq"],
    "serve": ["serve", "--port", "0"],
    "synth": ["synth", "--root", "data", "--procedural", "2"],
    "export": ["export", "umxhq", "onnx-out", "--quantize", "int8"],
    "distill": ["distill", "music", "--teacher", "umxl", "--output", "rt", "--unidirectional"],
}


def test_help_parsing_and_list_models_import_no_torch():
    """`umx --help`, `umx CMD --help`, parsing every command's options and `umx --list-models`
    import neither torch nor numpy and soundfile, which take seconds to load on a small machine
    (benchmarks/cli_help.py times them)."""
    assert set(PARSED) == set(COMMANDS)
    steps = [["--help"], ["--list-models"]]
    for command, argv in PARSED.items():
        steps += [[command, "--help"], argv]
    script = (
        "import sys\n"
        "from contextlib import redirect_stdout, suppress\n"
        "from io import StringIO\n"
        "from umx.cli import build_parser, main\n"
        f"for argv in {steps!r}:\n"
        "    with redirect_stdout(StringIO()), suppress(SystemExit):\n"
        "        if argv[0] == '--list-models': main(argv)\n"
        "        else: build_parser({argv[0]}).parse_args(argv)\n"
        "    heavy = [m for m in ('torch', 'numpy', 'soundfile') if m in sys.modules]\n"
        "    print(' '.join(argv[:2]), '|', *heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    loaded = dict(line.split(" |") for line in result.stdout.splitlines())
    assert len(loaded) == len(steps)
    assert {step: heavy for step, heavy in loaded.items() if heavy} == {}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_says_each_default_once(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text and "(default: False)" not in text
    assert text.count("(default: umxl;") <= 1


def test_every_command_takes_quiet(capsys):
    """`-q`/`--quiet` exists for every command (what each keeps is tested with the command)."""
    for command in COMMANDS:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "-q, --quiet" in capsys.readouterr().out, command


def test_quiet_separation_prints_only_the_stems(model_dir, song, tmp_path, capsys):
    assert run(song, "--model", model_dir, "--outdir", tmp_path / "o", "--niter", "0", "-q") == 0
    out, err = capsys.readouterr()
    assert err == "" and len(out.splitlines()) == 4


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["separate", "--segment", "abc", "x.wav"],
            "umx separate: error: argument --segment: invalid float value: 'abc' "
            "(see umx separate --help)",
        ),
        (
            ["train", "--epochs", "1.5"],
            "umx train: error: argument --epochs: invalid int value: '1.5' (see umx train --help)",
        ),
        (
            ["serve", "--port"],
            "umx serve: error: argument --port: expected one argument (see umx serve --help)",
        ),
        (
            ["--bogus"],
            "umx separate: error: unrecognized arguments: --bogus (see umx separate --help)",
        ),
        *(
            (
                [command, *before, "--zzz"],
                f"umx {command}: error: unrecognized arguments: --zzz (see umx {command} --help)",
            )
            for command, before in (
                ("separate", ["song.flac"]),
                ("train", []),
                ("stream", ["song.flac"]),
                ("evaluate", ["--evaldir", "scores"]),
                ("batch", ["music"]),
                ("serve", []),
            )
        ),
    ],
    ids=[
        "bad-float",
        "bad-int",
        "missing-value",
        "unknown-option",
        *(
            f"unknown-{command}-option"
            for command in ("separate", "train", "stream", "evaluate", "batch", "serve")
        ),
    ],
)
def test_an_option_argparse_refuses_is_one_line(argv, line, tmp_path, monkeypatch, capsys):
    """Not argparse's whole usage (15 lines for `umx separate`) before the error."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [line]
    assert list(tmp_path.iterdir()) == []


def command_actions(command: str) -> list[argparse.Action]:
    """The options and positional arguments of `umx COMMAND`."""
    (commands,) = [
        action
        for action in build_parser({command})._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    return commands.choices[command]._actions


def test_an_empty_path_is_refused_by_every_path_argument(tmp_path, monkeypatch, capsys):
    """'' (most often an unset shell variable) is refused in one line wherever a file or
    folder is given, where `Path('')` would be this folder: `umx synth --root "$DIR"` would
    write here, `--midi ''` search here."""
    monkeypatch.chdir(tmp_path)
    checked = []
    for command in COMMANDS:
        before = []  # the positional arguments before this one
        for action in command_actions(command):
            assert action.type is not Path, f"umx {command} {action.dest}: type=path_argument"
            name = action.option_strings[-1] if action.option_strings else action.metavar
            if action.type in (path_argument, path_text):
                argv = [command, *before, *action.option_strings[-1:], ""]
                with pytest.raises(SystemExit) as exit_info:
                    main(argv)
                assert exit_info.value.code == 2
                assert capsys.readouterr().err.splitlines() == [
                    f"umx {command}: error: argument {name}: {EMPTY_PATH} "
                    f"(see umx {command} --help)"
                ]
                checked.append(f"{command} {name}")
            if not action.option_strings:
                before.append("x")
    assert {
        "synth --root",
        "synth --midi",
        "separate INPUT",
        "batch --list",
        "train --root",
    } <= set(checked)
    assert len(checked) == 32
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["separate", "batch"])
def test_the_model_help_names_the_command_that_lists_the_models(command, capsys):
    """Only `umx [separate]` has --list-models: --model's help says `umx --list-models`."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "model name (see umx --list-models) or model directory" in text
    assert "(see --list-models)" not in text


def test_no_input_points_to_the_commands_help(tmp_path, monkeypatch, capsys):
    """`umx --help` lists only the commands: `umx separate` alone names its own help."""
    monkeypatch.chdir(tmp_path)
    for argv in (["separate"], ["separate", "-q"]):
        assert main(argv) == 1
        assert capsys.readouterr().err.splitlines() == [
            "umx: error: no input files given: name the songs, e.g. umx song.mp3 "
            "(see umx separate --help)"
        ]
    assert list(tmp_path.iterdir()) == []


def test_a_stop_while_the_command_imports_is_one_line(monkeypatch, capsys):
    """Ctrl-C in the tenth of a second the command line takes to import ends the command as
    Ctrl-C does later: one line, status 130 (it was a traceback from inside an import)."""
    import builtins

    from umx import command

    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "umx.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert command.main() == 130
    assert capsys.readouterr().err == "umx: interrupted\n"


MATPLOTLIB_HOMES = ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")


def test_matplotlibs_advice_about_an_unwritable_home_is_not_shown(tmp_path):
    """`umx train` and `umx evaluate` draw with matplotlib, which printed two long lines about
    `~/.config/matplotlib` when HOME could not hold it."""
    (tmp_path / "home").write_text("a file, as HOME: nothing can be made in it")
    draw = "from matplotlib.figure import Figure; Figure(); return 0"
    code = f"from umx.cli_run import run_command\ndef run():\n    {draw}\nrun_command(run)"
    env = {key: value for key, value in os.environ.items() if key not in MATPLOTLIB_HOMES}
    env["HOME"] = str(tmp_path / "home")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")
