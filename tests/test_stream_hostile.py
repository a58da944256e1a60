"""`umx stream` given hostile input, as a table: each case gives one clear line, a non-zero
exit and no traceback, and changes no file.

Every case runs in the same folder, holding a song, a small causal model directory, an earlier
result and bad files; after the case every file in it is byte-identical and none was added.
"""

import hashlib
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from umx.cli import main
from umx.errors import UmxError
from umx.model import OpenUnmix
from umx.modeldir import save_separator
from umx.separator import Separator

RATE = 16000


def snapshot(root):
    """Every file and folder under root, with the hash of each file's bytes."""
    return {
        path.relative_to(root): hashlib.sha256(path.read_bytes()).hexdigest()
        if path.is_file()
        else "folder"
        for path in sorted(root.rglob("*"))
    }


def music(seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    return np.stack([tone, tone[::-1]]) + 0.05 * rng.standard_normal((2, t.size))


def f32(audio):
    return np.asarray(audio, "<f4").T.tobytes()


def s16(audio):
    return np.round(np.asarray(audio) * 32767).astype("<i2").T.tobytes()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A song, a small causal model, an earlier result, a file in the way and bad audio."""
    root = tmp_path_factory.mktemp("stream-hostile")
    torch.manual_seed(0)
    models = {
        target: OpenUnmix(257, 2, 16, unidirectional=True, max_bin=200).freeze()
        for target in ("vocals", "drums")
    }
    separator = Separator(models, sample_rate=RATE, n_fft=512, n_hop=128, nb_channels=2)
    save_separator(separator, root / "model")
    sf.write(root / "song.wav", music(1.0).T, RATE, subtype="FLOAT")
    absurd = music(1.0)
    absurd[1, RATE // 2 :] = 1e30
    sf.write(root / "absurd.wav", absurd.T, RATE, subtype="FLOAT")
    sf.write(root / "tiny.wav", np.full((1, 2), 0.1, "f4"), 4 * RATE)  # 1/4 sample at RATE
    (root / "out" / "song").mkdir(parents=True)
    (root / "out" / "song" / "vocals.wav").write_bytes(b"an earlier result")
    (root / "a-file").write_bytes(b"not a folder")
    return root


def with_sample(value, at=0.25):
    audio = music(0.5)
    audio[0, int(at * RATE)] = value
    return f32(audio)


def encoded(fmt, subtype):
    buffer = io.BytesIO()
    sf.write(buffer, music(0.5).T, RATE, format=fmt, subtype=subtype)
    return buffer.getvalue()


def compressed(*options):
    """The music as ffmpeg writes it to a pipe with ``options`` (its format and codec)."""
    wav = encoded("WAV", "PCM_16")
    command = ["ffmpeg", "-v", "error", "-f", "wav", "-i", "-", "-ac", "2", *options, "-"]
    return subprocess.run(command, input=wav, capture_output=True, check=True).stdout


M4A = ["-c:a", "aac", "-f", "mp4", "-movflags", "frag_keyframe+empty_moov"]
BARE_MP3 = ["-ar", "22050", "-f", "mp3", "-id3v2_version", "0", "-write_xing", "0"]
STDIN = ["-", "--rate", RATE]
# (id, raw PCM on standard input or None, arguments after `umx stream`, message)
CASES = [
    ("rate-nan", b"", ["-", "--rate", "nan"], "--rate must be a finite number"),
    ("rate-inf", b"", ["-", "--rate", "inf"], "--rate must be a finite number"),
    ("rate-zero", b"", ["-", "--rate", "0"], "--rate must be at least 1000"),
    ("rate-negative", b"", ["-", "--rate", "-44100"], "--rate must be at least 1000"),
    ("rate-huge", b"", ["-", "--rate", "1e9"], "--rate must be at most"),
    # taken (exit 0) before, though a fractional --rate was documented as refused
    ("rate-fraction", f32(music(0.2)), ["-", "--rate", "44100.5"], "not 44100.5: e.g. --rate"),
    ("rate-missing", b"", ["-"], "give --rate"),
    ("rate-for-a-file", None, ["song.wav", "--rate", RATE], "--rate and --channels describe"),
    ("channels-zero", b"", [*STDIN, "--channels", "0"], "--channels must be greater than 0"),
    ("channels-negative", b"", [*STDIN, "--channels", "-2"], "--channels must be greater"),
    ("channels-three", b"", [*STDIN, "--channels", "3"], "--channels 3: umx separates mono"),
    ("block-zero", b"", [*STDIN, "--block", "0"], "--block must be greater than 0"),
    ("block-nan", b"", [*STDIN, "--block", "nan"], "--block must be a whole number"),
    ("block-fraction", b"", [*STDIN, "--block", "10.5"], "--block must be a whole number"),
    ("block-huge", b"", [*STDIN, "--block", "1e12"], "--block must be at most"),
    ("niter-negative", b"", [*STDIN, "--niter", "-1"], "--niter"),
    ("nan-sample", with_sample(np.nan), STDIN, "standard input: a NaN sample at 0.250 s"),
    ("inf-sample", with_sample(-np.inf), STDIN, "an infinite sample at 0.250 s"),
    ("absurd-sample", with_sample(1e30), STDIN, "the sample 1e+30 at 0.250 s is not audio"),
    ("beyond-the-bound", with_sample(2e4), STDIN, "the sample 2e+04 at 0.250 s"),
    ("s16-as-f32", s16(music(0.5)), STDIN, "if it is 16-bit PCM, give --format s16le"),
    ("absurd-file", None, ["absurd.wav"], "absurd.wav: the sample 1e+30 at 0.500 s"),
    ("missing-file", None, ["nope.wav"], "nope.wav"),
    ("under-a-sample", None, ["tiny.wav"], "tiny.wav is too short: 1 frame at 64000 Hz is less"),
    ("outdir-is-a-file", f32(music(0.2)), [*STDIN, "--outdir", "a-file"], "a-file"),
    ("existing-output", None, ["song.wav", "--outdir", "out"], "already exists (use --force"),
    ("stdout-two-stems", f32(music(0.2)), [*STDIN, "--stdout"], "--stdout writes one stem"),
    ("stdout-ext", f32(music(0.2)), [*STDIN, "--stdout", "--ext", "flac"], "--ext describes"),
    (
        "stdout-file-options",
        f32(music(0.2)),
        [*STDIN, "--stdout", "--filename", "x.wav", "--subtype", "FLOAT", "--clip", "clamp"],
        "--filename, --subtype, --clip describe stem files, but --stdout writes raw PCM",
    ),
    (
        "stdout-outdir-force",
        f32(music(0.2)),
        [*STDIN, "--stdout", "--targets", "vocals", "--outdir", "myfiles", "--force"],
        "--outdir, --force describe stem files, but --stdout writes raw PCM",
    ),
    # Given at their default values, they were taken (exit 0) though README refuses all six.
    (
        "stdout-file-options-at-their-defaults",
        f32(music(0.2)),
        [
            *STDIN,
            "--stdout",
            "--targets",
            "vocals",
            "--outdir",
            "separated",
            "--ext",
            "wav",
            "--filename",
            "{track}/{target}.{ext}",
            "--clip",
            "rescale",
        ],
        "--outdir, --filename, --ext, --clip describe stem files, but --stdout writes raw PCM",
    ),
    (
        "stdout-clip-at-its-default",
        f32(music(0.2)),
        [*STDIN, "--stdout", "--targets", "vocals", "--clip", "rescale"],
        "umx: error: --clip describes stem files, but --stdout writes raw PCM",
    ),
    ("unknown-target", f32(music(0.2)), [*STDIN, "--targets", "guitar"], "guitar"),
    ("escaping-name", None, ["song.wav", "--filename", "../{target}.wav"], "inside --outdir"),
    ("empty-stdin", b"", [*STDIN, "--outdir", "new"], "standard input contains no audio"),
    # Read as raw 16-bit PCM, a WAV header shifts every frame: the stereo channels swapped.
    ("wav-as-pcm", encoded("WAV", "PCM_16"), [*STDIN, "--format", "s16le"], "is a WAV file"),
    ("flac-as-pcm", encoded("FLAC", "PCM_16"), STDIN, "standard input is a FLAC file, not raw"),
    # Compressed files were separated as noise (exit 0) once --format s16le was given, as the
    # hint for samples that are not audio said.
    ("m4a-as-pcm", compressed(*M4A), [*STDIN, "--format", "s16le"], "is an MP4 or M4A file"),
    ("webm-as-pcm", compressed("-f", "webm"), STDIN, "is a WebM or Matroska file, not raw"),
    ("bare-mp3-as-pcm", compressed(*BARE_MP3), [*STDIN, "--format", "s16le"], "is an MP3 file"),
    ("aac-as-pcm", compressed("-c:a", "aac", "-f", "adts"), STDIN, "standard input is an AAC"),
    ("stdin-under-a-frame", b"abc", [*STDIN, "--outdir", "new"], "its 3 bytes are less than"),
    ("empty-stdin-to-stdout", b"", [*STDIN, "--stdout", "--targets", "vocals"], "no audio"),
    (
        "residual-is-a-target",
        None,
        ["song.wav", "--targets", "vocals", "--residual", "drums"],
        "is already a target",
    ),
]


@pytest.mark.parametrize(
    ("stdin", "arguments", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_stream_refuses_hostile_input_and_changes_nothing(
    workspace, monkeypatch, capsysbinary, stdin, arguments, message
):
    monkeypatch.chdir(workspace)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin or b"")))
    before = snapshot(workspace)
    arguments = ["stream", *(str(a) for a in arguments), "--model", "model", "-q"]
    assert main(arguments) == 1
    captured = capsysbinary.readouterr()
    err = captured.err.decode()
    assert err.count("\n") == 1 and err.startswith("umx: error: "), err
    assert message in err, err
    assert "Traceback" not in err
    assert not captured.out
    assert snapshot(workspace) == before


def test_an_empty_model_name_is_refused_not_taken_for_the_default(monkeypatch, capsys):
    """`--model ''` (an unset shell variable) is an error, as in `umx separate`."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert main(["stream", *map(str, STDIN), "--model", "", "-q"]) == 1
    assert capsys.readouterr().err == "umx: error: a model is a name or a directory, not ''\n"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"outdir": "out", "force": "false"}, "^--force must be True or False, not 'false'$"),
        ({"outdir": "new", "realtime": "no"}, "^--realtime must be True or False, not 'no'$"),
        ({"outdir": "new", "downmix": 1}, "^--downmix must be True or False, not 1$"),
        ({}, r"^--outdir must be a path \(or give stdout for raw PCM\), not None$"),
    ],
)
def test_the_library_checks_its_options_as_the_command_line_does(
    workspace, monkeypatch, options, message
):
    from umx.stream.io import separate_stream
    from umx.zoo import load_separator

    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    with pytest.raises(UmxError, match=message):
        separate_stream("song.wav", load_separator(workspace / "model"), **options)
    assert snapshot(workspace) == before


def test_the_table_covers_the_issue():
    assert len(CASES) >= 15
    assert len({case[0] for case in CASES}) == len(CASES)


def run_stream(arguments, cwd, **options):
    return subprocess.Popen(
        [sys.executable, "-m", "umx.cli", "stream", *(str(a) for a in arguments)],
        cwd=cwd,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "UMX_OFFLINE": "1"},
        **options,
    )


def test_a_named_pipe_as_input_file_is_refused_without_blocking(workspace, tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    before = snapshot(workspace)
    process = run_stream([fifo, "--model", "model", "-q"], workspace, stdin=subprocess.DEVNULL)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert err.decode().count("\n") == 1 and "pipe.wav" in err.decode()
    assert snapshot(workspace) == before


def test_ctrl_c_leaves_no_empty_folder(workspace, tmp_path):
    """Interrupted while it waits for standard input, after it made the stems' folder: the
    folder it made goes, and the exit status is a shell's for SIGINT."""
    outdir = tmp_path / "stems"
    arguments = ["-", "--rate", RATE, "--model", workspace / "model", "--outdir", outdir, "-q"]
    process = run_stream(arguments, tmp_path, stdin=subprocess.PIPE)
    process.stdin.write(f32(music(0.3)))
    process.stdin.flush()
    for _ in range(600):  # up to a minute for the folder to appear
        if (outdir / "stdin").is_dir() or process.poll() is not None:
            break
        subprocess.run(["sleep", "0.1"], check=True)
    assert (outdir / "stdin").is_dir()
    process.send_signal(2)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err.decode()
    assert not outdir.exists()
