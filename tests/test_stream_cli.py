"""`umx stream` end to end: files and raw PCM in, files and raw PCM out, against the one-call
causal separation, and its refusals of bad input."""

import contextlib
import io
import logging
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from processes import read_only_folder
from umx.audio import resample
from umx.cli import CLOSED_PIPE_STATUS, main
from umx.errors import UmxError
from umx.filtering import CausalWiener
from umx.model import OpenUnmix
from umx.modeldir import save_separator
from umx.separator import Separator
from umx.stream import io as io_module
from umx.stream.engine import separate_causal
from umx.stream.io import STREAM_MODEL
from umx.zoo import MODELS, load_separator

RATE = 16000
TARGETS = ("vocals", "drums", "bass", "other")
KARAOKE = '{"karaoke": ["drums", "bass", "other"]}'


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory):
    """A small 4-target stereo model of unidirectional LSTMs (n_fft 512, hidden 16, 16 kHz)."""
    torch.manual_seed(0)
    models = {}
    for target in TARGETS:
        model = OpenUnmix(257, 2, 16, unidirectional=True, max_bin=200)
        with torch.no_grad():
            model.output_mean.uniform_(0.2, 0.8)
        models[target] = model.freeze()
    separator = Separator(models, sample_rate=RATE, n_fft=512, n_hop=128, nb_channels=2)
    return save_separator(separator, tmp_path_factory.mktemp("models") / "causal")


@pytest.fixture(scope="module")
def bidirectional_dir(tmp_path_factory, small_music_separator):
    return save_separator(small_music_separator, tmp_path_factory.mktemp("models") / "bi")


def music(seconds, rate=RATE, seed=1):
    """Stereo music-like noise, `(2, nb_timesteps)` float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    right = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(t.size)
    return np.stack([left, right]).astype(np.float32)


@pytest.fixture
def song(tmp_path):
    path = tmp_path / "song.wav"
    sf.write(path, music(1.5).T, RATE, subtype="FLOAT")
    return path


def offline(model_dir, audio, **options):
    """The stems of `separate_causal` on `audio` (2, nb_timesteps), by name."""
    separator = load_separator(model_dir, **options)
    stems = separate_causal(separator, torch.from_numpy(audio))
    return dict(zip(separator.targets, stems.numpy(), strict=True))


def read(path):
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    return data.T, rate


def run(*args):
    return main(["stream", *(str(a) for a in args)])


def command(*args):
    return [sys.executable, "-m", "umx.cli", "stream", *(str(a) for a in args)]


@pytest.mark.parametrize("block", [1024, 1000, 1])
def test_file_to_stems_equals_separate_causal(causal_dir, song, tmp_path, block):
    outdir = tmp_path / "out"
    args = ["--subtype", "FLOAT", "--clip", "none", "--block", block]
    assert run(song, "--model", causal_dir, "--outdir", outdir, *args) == 0
    audio, _ = read(song)
    expected = offline(causal_dir, audio)
    for target in TARGETS:
        stem, rate = read(outdir / "song" / f"{target}.wav")
        assert rate == RATE and stem.shape == audio.shape
        np.testing.assert_allclose(stem, expected[target], atol=1e-5, rtol=0)


def test_karaoke_and_resampled_input(causal_dir, tmp_path):
    """A 22.05 kHz file is resampled to the model's rate; the group is the sum of its targets."""
    audio = music(1.0, rate=22050)
    path = tmp_path / "fast.wav"
    sf.write(path, audio.T, 22050, subtype="FLOAT")
    outdir = tmp_path / "out"
    options = ["--aggregate", KARAOKE, "--subtype", "FLOAT", "--clip", "none"]
    assert run(path, "--model", causal_dir, "--outdir", outdir, *options) == 0
    mix = resample(torch.from_numpy(audio), 22050, RATE).numpy()
    expected = offline(causal_dir, mix)
    stem, rate = read(outdir / "fast" / "karaoke.wav")
    assert rate == RATE and stem.shape == mix.shape
    karaoke = expected["drums"] + expected["bass"] + expected["other"]
    np.testing.assert_allclose(stem, karaoke, atol=1e-5, rtol=0)
    assert [p.name for p in (outdir / "fast").iterdir()] == ["karaoke.wav"]


@pytest.mark.parametrize("fmt", ["f32le", "s16le"])
def test_stdin_pcm_to_stdout_pcm_in_a_pipeline(causal_dir, fmt):
    audio = music(1.0)
    if fmt == "f32le":
        raw, dtype, scale = audio.T.astype("<f4").tobytes(), "<f4", 1.0
    else:
        pcm = np.round(audio * 32768).astype("<i2")
        raw, dtype, scale = pcm.T.tobytes(), "<i2", 32768.0
        audio = pcm.astype(np.float32) / 32768
    options = ["--rate", RATE, "--format", fmt, "--aggregate", KARAOKE, "--stdout"]
    result = subprocess.run(
        command("-", "--model", causal_dir, *options, "--block", 700),
        input=raw,
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert "latency" in result.stderr.decode()
    out = np.frombuffer(result.stdout, dtype).reshape(-1, 2).T.astype(np.float32) / scale
    expected = offline(causal_dir, audio)
    assert out.shape == audio.shape
    expected = expected["drums"] + expected["bass"] + expected["other"]
    np.testing.assert_allclose(out, expected, atol=1e-5 if fmt == "f32le" else 1.01 / 32768)


def test_partial_last_frame_is_reported(causal_dir, monkeypatch, capsys, tmp_path):
    audio = music(0.5)
    raw = audio.T.astype("<f4").tobytes() + b"\x01\x02\x03"  # 3 bytes of an 8-byte frame
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    outdir = tmp_path / "out"
    options = ["--rate", RATE, "--outdir", outdir, "--subtype", "FLOAT", "--clip", "none"]
    assert run("-", "--model", causal_dir, *options, "--targets", "vocals", "--niter", 0) == 0
    assert "ended in the middle of a frame: its last 3 bytes" in capsys.readouterr().err
    stem, _ = read(outdir / "stdin" / "vocals.wav")
    assert stem.shape == audio.shape  # the whole frames, all of them
    expected = offline(causal_dir, audio, targets=["vocals"], niter=0)["vocals"]
    np.testing.assert_allclose(stem, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "standard input contains no audio"),
        (
            b"abc",
            "standard input contains no audio: its 3 bytes are less than one frame "
            "(8 bytes: 2 channels of f32le)",
        ),
    ],
)
@pytest.mark.parametrize("output", [[], ["--stdout", "--targets", "vocals"]])
def test_standard_input_without_audio_is_an_error_and_writes_nothing(
    causal_dir, tmp_path, monkeypatch, capsysbinary, raw, message, output
):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    outdir = tmp_path / "out"
    where = output or ["--outdir", outdir]  # --stdout refuses --outdir
    assert run("-", "--model", causal_dir, "--rate", RATE, *where) == 1
    captured = capsysbinary.readouterr()
    assert captured.out == b""
    assert captured.err.decode().splitlines() == [f"umx: error: {message}"]
    assert not outdir.exists()


def test_closed_output_pipe_exits_quietly(causal_dir, tmp_path):
    raw = tmp_path / "in.raw"
    raw.write_bytes(music(20.0).T.astype("<f4").tobytes())
    pipeline = (
        f"{' '.join(command('-', '--model', causal_dir, '--rate', RATE, '--stdout'))} "
        "--targets vocals --niter 0 -q < " + str(raw) + " | head -c 100 > /dev/null; "
        'echo "status ${PIPESTATUS[0]}" >&2'
    )
    result = subprocess.run(["bash", "-c", pipeline], capture_output=True, text=True)
    assert result.stderr.strip() == f"status {CLOSED_PIPE_STATUS}"


def test_a_full_disk_behind_stdout_is_named(causal_dir, song):
    with open("/dev/full", "wb") as full:  # every write: No space left on device
        result = subprocess.run(
            [*command(song, "--model", causal_dir, "--stdout", "--targets", "vocals", "-q")],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "umx: error: cannot write to standard output (No space left on device; free some "
        "space, or write elsewhere)"
    ]


def test_realtime_paces_and_counts_missed_deadlines(causal_dir, song, tmp_path, capsys):
    outdir = tmp_path / "out"
    assert run(song, "--model", causal_dir, "--outdir", outdir, "--realtime", "--block", 4000) == 0
    err = capsys.readouterr().err
    assert "of 6 blocks missed their deadline" in err


def test_missed_deadlines_are_all_counted_and_logged_at_most_once_a_second(monkeypatch, caplog):
    clock = iter([10.0, 10.1, 10.5, 10.9, 11.05, 11.06, 11.2])
    monkeypatch.setattr(io_module.time, "monotonic", lambda: next(clock))
    deadlines = io_module.MissedDeadlines()
    with caplog.at_level(logging.WARNING, logger=io_module.logger.name):
        # due: late, late, on time, late, late, late, on time
        for block, due in enumerate([9.99, 10.0, 10.6, 10.8, 11.0, 11.0, 11.3], start=1):
            deadlines.check(due, block, block * 0.1)
    assert deadlines.missed == 5
    assert [record.getMessage() for record in caplog.records] == [
        "block 1 (0.100 s into the stream) missed its deadline by 10.0 ms",
        "block 5 (0.500 s into the stream) missed its deadline by 50.0 ms, as did 2 more since "
        "the last such line",
    ]


BAD_OPTIONS = [
    (["--block", "0"], "--block must be greater than 0"),
    (["--block", "-5"], "--block must be greater than 0"),
    (["--block", "nan"], "--block must be a whole number, not nan"),
    (["--block", "1.5"], "--block must be a whole number"),
    (["--threads", "0"], "--threads must be greater than 0"),
    (["--threads", "99999999"], "--threads must be at most "),
    (["--niter", "99999999"], "--niter must be at most 100, not 99999999"),
    (["--niter", "-1"], "niter"),
    (["--rate", "16000"], "--rate and --channels describe raw PCM"),
    (["--format", "s16le"], "--format describes raw PCM, on standard input (-) or --stdout"),
    (["--stdout", "--targets", "vocals", "drums"], "--stdout writes one stem or group, but 2"),
    (["--stdout", "--residual", "acc", "--targets", "vocals"], "but 2 are chosen"),
    (["--aggregate", '{"k": ["piano"]}'], "unknown targets piano"),
    (["--targets", "vocals", "--residual", "drums"], "--residual drums is already a target"),
    (["--filename", "../{target}.wav"], "must stay inside --outdir"),
    (["--filename", "{target}"], "end the template with .{ext}"),
    ([], "bidirectional LSTM"),
]


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_bad_options_give_one_line_and_no_files(
    causal_dir, bidirectional_dir, song, tmp_path, capsys, monkeypatch, options, message
):
    outdir = tmp_path / "out"
    model = ["--model", bidirectional_dir if message.startswith("bidirectional") else causal_dir]
    where = [] if "--stdout" in options else ["--outdir", outdir]  # --stdout refuses --outdir
    assert run(song, *model, *where, *options) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not outdir.exists() or not [p for p in outdir.rglob("*") if p.is_file()]


@pytest.mark.parametrize("model", ["umxsynth", "umxl", "umxse"])
def test_a_named_bidirectional_model_is_refused_before_it_is_loaded(
    song, tmp_path, capsys, monkeypatch, model
):
    """Not downloaded only to be refused (umxl is hundreds of megabytes), nor reported as
    missing offline: the message names the causal model to use."""
    import umx.api

    def never(*args, **kwargs):
        raise AssertionError("loaded")

    monkeypatch.setattr(umx.api, "load_separator", never)
    assert run(song, "--model", model, "--outdir", tmp_path / "out") == 1
    assert capsys.readouterr().err == (
        f"umx: error: {model} has bidirectional LSTMs, which need the whole future of the "
        "signal and cannot separate a stream: use a causal model (umxsynth-rt, the default: "
        "leave out --model) or train one with `umx train --unidirectional`\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_folder_with_some_bidirectional_targets_names_the_causal_ones(
    causal_dir, song, tmp_path, capsys
):
    """It named the bidirectional target only, as if the folder could not stream at all."""
    folder = tmp_path / "mixed"
    shutil.copytree(causal_dir, folder)
    with torch.no_grad():
        drums = OpenUnmix(257, 2, 16, unidirectional=False, max_bin=200).freeze()
    torch.save(drums.state_dict(), folder / "drums.pth")
    (folder / "drums.json").unlink()
    assert run(song, "--model", folder, "--outdir", tmp_path / "out") == 1
    assert capsys.readouterr().err == (
        f"umx: error: the drums model of {folder} is bidirectional and cannot stream; its "
        "causal vocals, bass, other can: give --targets vocals bass other, or train drums "
        "with --unidirectional\n"
    )
    assert not (tmp_path / "out").exists()
    assert run(song, "--model", folder, "--outdir", tmp_path / "out", "--targets", "vocals") == 0
    assert [path.name for path in (tmp_path / "out" / "song").iterdir()] == ["vocals.wav"]


@pytest.fixture(scope="module")
def mixed_dir(causal_dir, tmp_path_factory):
    """`causal_dir` with a bidirectional drums model."""
    folder = tmp_path_factory.mktemp("models") / "mixed"
    shutil.copytree(causal_dir, folder)
    with torch.no_grad():
        drums = OpenUnmix(257, 2, 16, unidirectional=False, max_bin=200).freeze()
    torch.save(drums.state_dict(), folder / "drums.pth")
    (folder / "drums.json").unlink()
    return folder


@pytest.mark.parametrize(
    ("output", "groups", "advice"),
    [
        (  # the documented karaoke: the rest of the mix without the causal vocals
            "--outdir",
            KARAOKE,
            "for karaoke, the mix without vocals, give --targets vocals --residual karaoke "
            '--aggregate \'{"karaoke": ["karaoke"]}\'',
        ),
        (
            "--stdout",
            KARAOKE,
            "for karaoke, the mix without vocals, give --targets vocals --residual karaoke "
            '--aggregate \'{"karaoke": ["karaoke"]}\'',
        ),
        (
            "--outdir",
            '{"vocals": ["vocals"], "rhythm": ["bass", "other"]}',
            "--aggregate sums only its causal vocals, bass, other: give --targets vocals bass "
            "other",
        ),
        (
            "--outdir",
            '{"vocals": ["vocals"], "low": ["drums", "bass"], "high": ["drums", "other"]}',
            "--aggregate's low, high sum drums; for the other groups, give --targets vocals bass "
            'other --aggregate \'{"vocals": ["vocals"]}\'',
        ),
        (
            "--outdir",
            '{"low": ["drums", "bass"], "high": ["drums", "other"]}',
            "its causal vocals, bass, other can: give --targets vocals bass other without "
            "--aggregate",
        ),
    ],
    ids=["karaoke-files", "karaoke-stdout", "causal-groups", "some-groups", "no-group"],
)
def test_the_advice_for_some_bidirectional_targets_keeps_the_groups_asked_for(
    mixed_dir, song, tmp_path, capsysbinary, output, groups, advice
):
    """It said to give --targets of the causal ones, which --aggregate then refused (it sums
    the bidirectional drums): the advice is a command that streams, the groups it can."""
    where = [output] if output == "--stdout" else [output, tmp_path / "out"]
    assert run(song, "--model", mixed_dir, *where, "--aggregate", groups) == 1
    assert capsysbinary.readouterr().err.decode() == (
        f"umx: error: the drums model of {mixed_dir} is bidirectional and cannot stream; "
        f"{advice}, or train drums with --unidirectional\n"
    )
    given = shlex.split(advice.split("give ")[1].removesuffix(" without --aggregate"))
    if "--aggregate" not in advice:  # the groups as they were
        given += ["--aggregate", groups]
    assert run(song, "--model", mixed_dir, *where, *given) == 0, capsysbinary.readouterr().err


BAD_PCM = [
    (["--rate", "nan"], "--rate must be a finite number"),
    (["--rate", "0"], "--rate must be at least"),
    (["--rate", "-44100"], "--rate must be at least"),
    ([], "give --rate"),
    (["--rate", "16000", "--channels", "3"], "--channels 3"),
    (["--rate", "16000", "--channels", "0"], "--channels must be greater than 0"),
]


@pytest.mark.parametrize(("options", "message"), BAD_PCM)
def test_bad_pcm_options(causal_dir, tmp_path, monkeypatch, capsys, options, message):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\0" * 800)))
    outdir = tmp_path / "out"
    assert run("-", "--model", causal_dir, "--outdir", outdir, *options) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not outdir.exists() or not [p for p in outdir.rglob("*") if p.is_file()]


def test_error_mid_stream_leaves_no_files(causal_dir, tmp_path, monkeypatch, capsys):
    """NaN samples a second into the stream: refused in one line naming the input, the time
    and the likely cause, and no stem file or folder left behind."""
    audio = music(2.0)
    audio[1, RATE + 8] = np.nan
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(audio.T.tobytes())))
    outdir = tmp_path / "out"
    assert run("-", "--model", causal_dir, "--rate", RATE, "--outdir", outdir) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "umx: error: standard input: a NaN sample at 1.000 s is not audio (samples must be "
        "finite and within ±10000, full scale being ±1); if it is 16-bit PCM, give --format s16le"
    ]
    assert not outdir.exists()


def test_a_file_is_decoded_as_it_streams_and_a_late_nan_leaves_no_files(
    causal_dir, tmp_path, capsys
):
    """A file is read block by block as the stream goes (what is held of it is a few blocks,
    however long it is): its blocks are the file's samples, and a NaN nine seconds in (past
    the first blocks decoded) is found when the stream reaches it, refused in one line with no
    stem left."""
    audio = music(10.0)
    path = tmp_path / "song.wav"
    sf.write(path, audio.T, RATE, subtype="FLOAT")
    with contextlib.ExitStack() as stack:
        source = io_module.file_source(stack, path, 1000)
        blocks = list(source.blocks)
    assert [block.shape[-1] for block in blocks] == [1000] * 160
    assert torch.equal(torch.cat(blocks, dim=-1), torch.from_numpy(audio))

    audio[0, 9 * RATE] = np.nan
    sf.write(path, audio.T, RATE, subtype="FLOAT")
    with contextlib.ExitStack() as stack:
        source = io_module.file_source(stack, path, 1000)
        assert torch.equal(next(source.blocks), torch.from_numpy(audio[:, :1000]))
    outdir = tmp_path / "out"
    assert run(path, "--model", causal_dir, "--outdir", outdir) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "song.wav: a NaN sample at 9.000 s is not audio" in err[0], err
    assert not outdir.exists() or not [p for p in outdir.rglob("*") if p.is_file()]


def test_a_read_only_outdir_is_refused_with_what_to_do(
    causal_dir, song, tmp_path, monkeypatch, capsys
):
    """It said "cannot create output directory ro/x/mixture: Read-only file system"."""
    (tmp_path / "ro").mkdir()
    read_only_folder(monkeypatch, tmp_path / "ro")
    assert run(song, "--model", causal_dir, "--outdir", tmp_path / "ro" / "x") == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"umx: error: cannot create output directory {tmp_path / 'ro' / 'x' / 'song'}: "
        "Read-only file system; write elsewhere"
    ]


def test_existing_outputs_and_the_input_are_not_overwritten(causal_dir, song, capsys):
    base = ["--model", causal_dir, "--outdir", song.parent, "--aggregate", KARAOKE]
    assert run(song, *base, "--filename", "{track}.wav") == 1
    assert "would replace the input" in capsys.readouterr().err
    kept = song.parent / "song" / "karaoke.wav"
    kept.parent.mkdir()
    kept.write_bytes(b"keep")
    assert run(song, *base) == 1
    assert "already exists (use --force" in capsys.readouterr().err
    assert kept.read_bytes() == b"keep"
    assert run(song, *base, "--force") == 0
    assert read(kept)[0].shape == read(song)[0].shape


def test_mono_pcm_for_a_stereo_model(causal_dir, monkeypatch, capsysbinary):
    """Mono raw PCM is duplicated for the stereo model: stereo stems out, as offline."""
    mono = music(0.5)[:1]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(mono.T.tobytes())))
    options = ["--rate", RATE, "--channels", 1, "--stdout", "--aggregate", KARAOKE, "-q"]
    assert run("-", "--model", causal_dir, *options) == 0
    out = np.frombuffer(capsysbinary.readouterr().out, "<f4").reshape(-1, 2).T
    expected = offline(causal_dir, np.repeat(mono, 2, axis=0))
    karaoke = expected["drums"] + expected["bass"] + expected["other"]
    np.testing.assert_allclose(out, karaoke, atol=1e-5, rtol=0)


def test_default_model_is_the_bundled_causal_one(tmp_path, capsys):
    """Without --model, `umx stream` separates with the bundled umxsynth-rt, offline."""
    t = np.arange(44100) / 44100
    song = tmp_path / "tone.wav"
    sf.write(song, 0.3 * np.stack([np.sin(2 * np.pi * 220 * t)] * 2, axis=1), 44100)
    assert run(song, "--outdir", tmp_path / "out", "--quiet") == 0
    for target in ("vocals", "drums", "bass", "other"):
        stem, rate = sf.read(tmp_path / "out" / "tone" / f"{target}.wav")
        assert rate == 44100 and stem.shape == (44100, 2)
    assert STREAM_MODEL in MODELS


def test_the_default_model_s_notice_gives_advice_that_works_for_a_stream(
    tmp_path, capsys, monkeypatch
):
    """The notice of the demo model points to what separates real music better: umxl for
    files (umx stream refuses it: bidirectional) and a causal model of one's own for streams,
    not umxl or umxhq for `umx stream`."""
    from umx.zoo import loading

    monkeypatch.setattr(loading, "_NOTICED", set())  # as in a new process
    t = np.arange(4410) / 44100
    song = tmp_path / "tone.wav"
    sf.write(song, 0.3 * np.stack([np.sin(2 * np.pi * 220 * t)] * 2, axis=1), 44100)
    assert run(song, "--outdir", tmp_path / "out") == 0
    notice = (
        "umx: umxsynth-rt is a causal demo model trained on synthetic music; for real music, "
        "separate files with umxl or stream a model of your own (`umx distill --unidirectional`)"
    )
    assert notice in capsys.readouterr().err.splitlines()
    assert run(song, "--outdir", tmp_path / "out2", "--model", "umxl") == 1  # refused, so
    assert "cannot separate a stream" in capsys.readouterr().err  # the advice names another


def signal(kind, seconds=1.0, rate=44100):
    """Loud, clipped and silent stereo test signals at full scale, `(2, nb_timesteps)`."""
    rng = np.random.default_rng(3)
    t = np.arange(int(seconds * rate)) / rate
    signals = {
        "noise": lambda: np.clip(rng.standard_normal((2, t.size)), -1, 1),
        "clipped": lambda: np.clip(4 * rng.standard_normal((2, t.size)), -1, 1),
        "sine": lambda: np.stack([np.sin(2 * np.pi * 440 * t), np.cos(2 * np.pi * 440 * t)]),
        "square": lambda: np.sign(np.sin(2 * np.pi * np.array([[110.0], [220.0]]) * t)),
        "dc": lambda: np.ones((2, t.size)),
        "silence": lambda: np.zeros((2, t.size)),
    }
    return signals[kind]().astype(np.float32)


SELECTIONS = {
    "all": ([], None),
    "karaoke": (["--aggregate", KARAOKE], {"karaoke": ["drums", "bass", "other"]}),
    "residual": (["--targets", "vocals", "--residual", "rest"], None),
}
LOUD = [
    ("noise", 0, "f32le", "stdout", "karaoke"),
    ("noise", 1, "f32le", "stdout", "karaoke"),
    ("noise", 2, "file", "stems", "all"),
    ("clipped", 1, "s16le", "stems", "residual"),
    ("sine", 1, "s16le", "stdout", "karaoke"),
    ("sine", 2, "f32le", "stems", "residual"),
    ("square", 0, "file", "stems", "karaoke"),
    ("square", 2, "s16le", "stdout", "karaoke"),
    ("dc", 1, "f32le", "stdout", "karaoke"),
    ("dc", 2, "file", "stems", "residual"),
    ("silence", 1, "s16le", "stdout", "karaoke"),
    ("silence", 2, "file", "stems", "all"),
]


@pytest.mark.parametrize(("kind", "niter", "source", "output", "selection"), LOUD)
def test_loud_clipped_and_silent_input_gives_the_one_call_stems(
    tmp_path, monkeypatch, capsysbinary, kind, niter, source, output, selection
):
    """Full-scale input through the bundled model (its 4096-point STFT gives bins of |x| ~ 1e3):
    finite stems, equal to `separate_causal`'s to 1e-5 without EM, within 30 dB of them with EM
    (20 dB for DC, whose identical channels make every covariance of rank one)."""
    audio = signal(kind)
    options, aggregate = SELECTIONS[selection]
    options = [*options, "--niter", niter, "-q"]
    if source == "file":
        path = tmp_path / "loud.wav"
        sf.write(path, audio.T, 44100, subtype="FLOAT")
        args = [path]
    else:
        if source == "s16le":
            pcm = np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2")
            audio = pcm.astype(np.float32) / 32768
        raw = (pcm if source == "s16le" else audio).T.tobytes()
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
        args = ["-", "--rate", 44100, "--format", source]
    if output == "stdout":
        assert run(*args, *options, "--stdout") == 0
        dtype = "<i2" if source == "s16le" else "<f4"
        out = np.frombuffer(capsysbinary.readouterr().out, dtype).reshape(-1, 2).T
        stems = {selection: out.astype(np.float32) / (32768 if source == "s16le" else 1)}
    else:
        outdir = tmp_path / "out"
        assert run(*args, *options, "--outdir", outdir, "--subtype", "FLOAT", "--clip", "none") == 0
        folder = outdir / ("stdin" if source != "file" else "loud")
        stems = {p.stem: read(p)[0] for p in folder.iterdir()}
    residual = "rest" if selection == "residual" else None
    targets = ["vocals"] if selection == "residual" else None
    separator = load_separator(STREAM_MODEL, niter=niter, residual=residual, targets=targets)
    expected = separate_causal(separator, torch.from_numpy(audio))
    expected = separator.to_dict(expected[None], aggregate)
    assert sorted(stems) == sorted(expected)
    for name, stem in stems.items():
        want = expected[name][0].numpy()
        if output == "stdout" and source == "s16le":
            want = np.clip(want, -1, 32767 / 32768)
        assert np.isfinite(stem).all() and stem.shape == want.shape
        atol = 1.01 / 32768 if output == "stdout" and source == "s16le" else 1e-5
        if niter == 0 or kind == "silence":
            np.testing.assert_allclose(stem, want, atol=atol, rtol=0)
        else:
            # The float32 EM amplifies the rounding of block-wise against one-call arithmetic
            # in loud bins, most where the channels are identical (DC): docs/streaming.md.
            error = ((stem - want) ** 2).sum()
            sdr = 10 * np.log10((want**2).sum() / error) if error else np.inf
            assert sdr > (20 if kind == "dc" else 30), (name, sdr)
        if kind == "silence":
            assert not stem.any()
        else:
            assert np.abs(stem).max() > 0.01


def test_stdout_with_one_target_writes_that_stem(causal_dir, monkeypatch, capsysbinary):
    """--targets vocals --stdout: the one stem asked for, equal to the one-call separation's."""
    audio = music(0.5)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(audio.T.tobytes())))
    options = ["--rate", RATE, "--stdout", "--targets", "vocals", "--niter", 0, "-q"]
    assert run("-", "--model", causal_dir, *options) == 0
    out = np.frombuffer(capsysbinary.readouterr().out, "<f4").reshape(-1, 2).T
    expected = offline(causal_dir, audio, targets=["vocals"], niter=0)
    np.testing.assert_allclose(out, expected["vocals"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("output", ["stdout", "stems"])
def test_nan_from_the_separation_is_never_written(
    causal_dir, tmp_path, monkeypatch, capsysbinary, output
):
    """A filter that gives NaN half a second in: one line naming the time, exit 1, and no NaN
    written (raw PCM stops before it; stem files are not left)."""
    audio = music(1.0)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(audio.T.tobytes())))
    real = CausalWiener.__call__
    frames = []

    def poisoned(self, magnitudes, mix):
        stems = real(self, magnitudes, mix)
        frames.append(stems.shape[0])
        if sum(frames) * 128 > RATE // 2:
            stems = stems * np.nan
        return stems

    monkeypatch.setattr(CausalWiener, "__call__", poisoned)
    where = ["--stdout", "--targets", "vocals"] if output == "stdout" else ["--outdir", tmp_path]
    assert run("-", "--model", causal_dir, "--rate", RATE, "--niter", 0, "-q", *where) == 1
    captured = capsysbinary.readouterr()
    assert re.fullmatch(
        r"umx: error: the separation gave NaN or infinite samples at 0\.[45]\d\d s of the "
        r"stream; none were returned \(with --niter above 2, try a smaller one; else please "
        r"report this with the input\)\n",
        captured.err.decode(),
    )
    out = np.frombuffer(captured.out, "<f4")
    assert np.isfinite(out).all() and out.size < audio.size
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_filter_that_diverges_in_the_first_frame_is_an_error_not_a_click(tmp_path, capsys):
    """Clipped full-scale noise through the bundled causal model at --niter 6: the first
    frame's stems came out 28 dB above the input, and --clip rescale then wrote stems of a
    click and audio 30 dB down, exit 0. At --niter 4 the stems stay near the input."""
    rng = np.random.default_rng(0)
    noise = np.clip(rng.standard_normal((44100, 2)) * 3, -1, 1)
    sf.write(tmp_path / "noise.wav", noise, 44100, subtype="FLOAT")
    given = [tmp_path / "noise.wav", "--outdir", tmp_path / "out", "-q", "--subtype", "FLOAT"]
    assert run(*given, "--niter", 6) == 1
    assert re.fullmatch(
        r"umx: error: the separation gave stems 2\d dB above the input after 0\.000 s of the "
        r"stream; none of them were returned \(with --niter above 2, try a smaller one\)",
        capsys.readouterr().err.splitlines()[0],
    )
    assert not (tmp_path / "out").exists()
    assert run(*given, "--niter", 4, "--clip", "none") == 0
    peaks = [np.abs(read(path)[0]).max() for path in (tmp_path / "out" / "noise").iterdir()]
    assert 1 < max(peaks) < 10


def test_stems_all_silent_from_audible_input_are_an_error_and_not_kept(
    causal_dir, tmp_path, capsys
):
    """A model whose weights give nothing: the stream ends with one line saying so, exit 1, and
    no stem files (raw PCM on standard output has gone, and the exit status says it failed)."""
    silent = tmp_path / "silent"
    shutil.copytree(causal_dir, silent)
    for target in TARGETS:
        state = torch.load(silent / f"{target}.pth", weights_only=True)
        state["output_mean"] = torch.full_like(state["output_mean"], -100.0)
        torch.save(state, silent / f"{target}.pth")
    song = tmp_path / "song.wav"
    sf.write(song, music(1.0).T, RATE, subtype="FLOAT")
    outdir = tmp_path / "out"
    assert run(song, "--model", silent, "--outdir", outdir, "-q") == 1
    assert capsys.readouterr().err == (
        f"umx: error: {song}: every stem came out silent from audible input: the model "
        f"{silent} gives nothing (are its weights broken?)\n"
    )
    assert not [path for path in outdir.rglob("*") if path.is_file()]


def test_typed_options_stream_what_the_command_line_streams(causal_dir, song, tmp_path):
    from umx.options import OutputOptions, SeparationOptions
    from umx.stream.run import StreamOptions, run_stream

    assert run(song, "--model", causal_dir, "--outdir", tmp_path / "cli", "--niter", 1, "-q") == 0
    options = StreamOptions(
        song,
        SeparationOptions(model=str(causal_dir), niter=1),
        OutputOptions(tmp_path / "api"),
    )
    report, files = run_stream(options, progress=False)
    assert report.nb_samples == music(1.5).shape[1]
    assert sorted(f.path.name for f in files) == sorted(f"{target}.wav" for target in TARGETS)
    for report in files:
        expected, _ = read(tmp_path / "cli" / "song" / report.path.name)
        np.testing.assert_array_equal(read(report.path)[0], expected)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"stdout": True, "output": {"outdir": "elsewhere"}}, "^--outdir describes stem files"),
        ({"stdout": True, "output": {"force": True, "ext": "flac"}}, "^--force, --ext describe"),
        ({"realtime": "no"}, "^--realtime must be True or False, not 'no'$"),
        ({"block": 0}, "^--block must be greater than 0"),
        ({"pcm_format": "s16le"}, "^--format describes raw PCM"),
        ({"input": "-"}, "^raw PCM on standard input needs its sample rate: give --rate$"),
        (
            {"input": "-", "rate": 44100.5},
            "^--rate must be a whole number of samples per second, not 44100.5: e.g. --rate 44100$",
        ),
        ({"input": None}, "^INPUT must be a file, or - for standard input, not None$"),
    ],
)
def test_typed_options_are_checked_when_built(song, fields, message):
    from umx.options import OutputOptions
    from umx.stream.run import StreamOptions

    fields = {"input": song, **fields}
    if "output" in fields:
        fields["output"] = OutputOptions(**fields["output"])
    with pytest.raises(UmxError, match=message):
        StreamOptions(**fields)
    assert StreamOptions(song).separation.model == "umxsynth-rt"  # the stream's default
