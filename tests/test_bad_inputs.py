"""Bad inputs and options, as a table: each gives a clear error and changes no file.

Every case runs against the same folder, holding the input song, a small model directory and an
earlier result; after the case, every file in it is byte-identical and no file was added.
"""

import copy
import hashlib
import json
import math
import os
import pickle
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import umx
from umx.cli import main
from umx.model import OpenUnmix
from umx.modeldir import save_separator
from umx.separator import Separator
from umx.stream.engine import separate_causal

RATE = 16000


def snapshot(root):
    """Every file under root, with the hash of its bytes."""
    return {
        path.relative_to(root): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, small_music_separator):
    """A song, a model directory, a finished earlier result, and bad files of several kinds."""
    root = tmp_path_factory.mktemp("bad-inputs")
    rng = np.random.default_rng(0)
    sf.write(root / "song.wav", 0.3 * rng.standard_normal((RATE, 2)), RATE, subtype="FLOAT")
    (root / "a").mkdir()
    (root / "b").mkdir()
    for folder in ("a", "b"):
        sf.write(root / folder / "song.wav", 0.1 * rng.standard_normal((RATE, 2)), RATE)
    save_separator(small_music_separator, root / "model")
    (root / "out" / "song").mkdir(parents=True)
    (root / "out" / "song" / "vocals.wav").write_bytes(b"an earlier result")
    (root / "noise.mp3").write_bytes(rng.bytes(4000))
    (root / "noise.wav").write_bytes(rng.bytes(4000))
    (root / "empty.wav").write_bytes(b"")
    (root / "...wav").write_bytes((root / "song.wav").read_bytes())
    nan_audio = np.zeros((RATE, 2), dtype=np.float32)
    nan_audio[100] = np.nan
    sf.write(root / "nan.wav", nan_audio, RATE, subtype="FLOAT")
    sf.write(root / "int-scale.wav", 0.3 * 32768 * rng.standard_normal((RATE, 2)), RATE, "FLOAT")
    # a WAV whose header declares 1 s but which holds 0.5 s
    with wave.open(str(root / "truncated.wav"), "wb") as file:
        file.setnchannels(2)
        file.setsampwidth(2)
        file.setframerate(RATE)
        file.writeframes(np.zeros((RATE, 2), dtype=np.int16).tobytes())
    data = (root / "truncated.wav").read_bytes()
    (root / "truncated.wav").write_bytes(data[: 44 + RATE * 2])
    # a WAV whose header declares about 2 GiB of frames: reading must not allocate them
    header = bytearray(data[:44])
    header[40:44] = (2**31 - 8).to_bytes(4, "little")
    (root / "huge.wav").write_bytes(bytes(header) + data[44:1044])
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    bad_models = {
        "model-nan-rate": {"sample_rate": math.nan},
        "model-zero-rate": {"sample_rate": 0},
        "model-hop-as-window": {"nhop": 512},
        "model-escaping-target": {"targets": ["../escape"]},
        "model-dotted-target": {"targets": ["vo.cals"]},  # torch module names hold no dots
        "model-no-targets": {"targets": []},
        "model-tiny-hop": {"nhop": 1},
        "model-other-rate": {"sample_rate": 22050.0},
    }
    save_separator(silent_separator(small_music_separator), root / "model-silent")
    for name, change in bad_models.items():
        directory = root / name
        save_separator(small_music_separator, directory)
        config = json.loads((directory / "separator.json").read_text())
        config.update(change)
        (directory / "separator.json").write_text(json.dumps(config))
    for name, edit in BAD_WEIGHTS.items():
        save_separator(small_music_separator, root / name)
        (root / name / "vocals.json").unlink()  # the weights alone say what the model is
        edit(root / name / "vocals.pth")
    return root


def edit_state(change):
    """An edit of a weights file: `change` applied to its state dict."""

    def edit(path):
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)

    return edit


class RunsCode:
    """Pickled, runs a shell command when unpickled: what `weights_only` refuses."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


BAD_WEIGHTS = {
    "model-int-weights": edit_state(lambda s: s.update({"fc1.weight": s["fc1.weight"].long()})),
    "model-complex-weights": edit_state(
        lambda s: s.update({"fc1.weight": s["fc1.weight"].to(torch.complex64)})
    ),
    "model-odd-hidden": lambda path: torch.save(
        OpenUnmix(257, 2, 15, max_bin=200).state_dict(), path
    ),
    "model-code": lambda path: path.write_bytes(pickle.dumps(RunsCode(), protocol=4)),
}


def silent_separator(separator: Separator, bias: float = -100.0, **options) -> Separator:
    """`separator` with every target's masks zero (the output bias far below zero): a model
    whose weights give nothing; or, with a large `bias`, masks that large."""
    models = {}
    for name, model in separator.target_models.items():
        silent = copy.deepcopy(model)
        with torch.no_grad():
            silent.output_mean.fill_(bias)
        models[name] = silent
    sizes = {
        "sample_rate": separator.sample_rate,
        "n_fft": separator.n_fft,
        "n_hop": separator.n_hop,
    }
    return Separator(models, **sizes, **options)


SONG = "song.wav"
MODEL = ("--model", "model")

# (id, arguments, message fragment); every case exits with 1
CLI_CASES = [
    ("niter-negative", [SONG, *MODEL, "--niter", "-1"], "--niter must be at least 0"),
    ("niter-huge", [SONG, *MODEL, "--niter", "99999999"], "--niter must be at most 100"),
    ("wiener-negative", [SONG, *MODEL, "--wiener-win-len", "-1"], "--wiener-win-len must be"),
    ("segment-nan", [SONG, *MODEL, "--segment", "nan"], "--segment must be a finite number"),
    ("segment-inf", [SONG, *MODEL, "--segment", "inf"], "--segment must be a finite number"),
    ("segment-zero", [SONG, *MODEL, "--segment", "0"], "--segment must be greater than 0"),
    ("segment-negative", [SONG, *MODEL, "--segment", "-3"], "--segment must be greater than 0"),
    ("segment-short", [SONG, *MODEL, "--segment", "0.05", "--overlap", "0"], "--segment 0.05 s is"),
    ("overlap-negative", [SONG, *MODEL, "--overlap", "-1"], "--overlap must be at least 0"),
    ("overlap-nan", [SONG, *MODEL, "--overlap", "nan"], "--overlap must be a finite number"),
    ("overlap-too-long", [SONG, *MODEL, "--overlap", "15.1"], "must be at most half of --segment"),
    ("start-negative", [SONG, *MODEL, "--start", "-1"], "--start must be at least 0"),
    ("start-nan", [SONG, *MODEL, "--start", "nan"], "--start must be a finite number"),
    ("start-inf", [SONG, *MODEL, "--start", "inf"], "--start must be a finite number"),
    ("start-huge", [SONG, *MODEL, "--start", "1e308"], "at most 1000000000, not 1e+308"),
    ("duration-huge", [SONG, *MODEL, "--duration", "1e308"], "--duration must be at most"),
    ("duration-zero", [SONG, *MODEL, "--duration", "0"], "--duration must be greater than 0"),
    ("duration-negative", [SONG, *MODEL, "--duration", "-2"], "--duration must be greater"),
    ("duration-nan", [SONG, *MODEL, "--duration", "nan"], "--duration must be a finite number"),
    # it said "song.wav has no audio from 5.0 s", neither how long the file is nor what to do
    ("start-past-end", [SONG, *MODEL, "--start", "5"], "song.wav is 1.0 s long: give a --start"),
    ("start-past-end-excerpt", [SONG, *MODEL, "--start", "1", "--duration", "2"], "is 1.0 s long"),
    ("filename-parent", [SONG, *MODEL, "--filename", "../x/{target}.{ext}"], "inside --outdir"),
    ("filename-absolute", [SONG, *MODEL, "--filename", "/tmp/{target}.wav"], "inside --outdir"),
    ("filename-field", [SONG, *MODEL, "--filename", "{track}/{foo}.wav"], "unknown fields foo"),
    ("filename-same", [SONG, *MODEL, "--filename", "{track}.wav"], "the same path"),
    ("filename-broken", [SONG, *MODEL, "--filename", "{track"], "not a valid template"),
    ("filename-no-ext", [SONG, *MODEL, "--filename", "{target}/{track}"], "end the template"),
    ("filename-ogg", [SONG, *MODEL, "--filename", "{target}.ogg"], "written as .wav, .flac"),
    (
        "aggregate-escape",
        [SONG, *MODEL, "--aggregate", '{"../../e": ["vocals"]}'],
        "--aggregate has an unsafe target name '../../e'",
    ),
    ("aggregate-unknown", [SONG, *MODEL, "--aggregate", '{"x": ["guitar"]}'], "unknown targets"),
    (  # it was called unknown
        "aggregate-left-out-by-targets",
        [SONG, *MODEL, "--aggregate", '{"x": ["vocals"]}', "--targets", "drums"],
        "--aggregate sums vocals, which --targets leaves out: add it to --targets, or leave "
        "--targets out",
    ),
    (  # separated, then not written, exit 0
        "aggregate-without-the-residual",
        [SONG, *MODEL, "--aggregate", '{"x": ["vocals"]}', "--residual", "rest"],
        "--residual rest is in no --aggregate group, so it would not be written: add it to a "
        "group, or leave --residual out",
    ),
    ("aggregate-not-json", [SONG, *MODEL, "--aggregate", "{not json"], "neither valid JSON"),
    ("aggregate-empty-group", [SONG, *MODEL, "--aggregate", '{"x": []}'], "non-empty lists"),
    ("aggregate-twice", [SONG, *MODEL, "--aggregate", '{"x": ["bass", "bass"]}'], "bass twice"),
    ("aggregate-list", [SONG, *MODEL, "--aggregate", '[["bass"]]'], "must map names to non-empty"),
    ("aggregate-deep", [SONG, *MODEL, "--aggregate", "deep.json"], "neither valid JSON"),
    ("aggregate-no-file", [SONG, *MODEL, "--aggregate", "missing.json"], "not a regular file"),
    ("aggregate-empty", [SONG, *MODEL, "--aggregate", ""], "--aggregate is empty: give JSON"),
    ("input-missing", ["missing.wav", *MODEL], "missing.wav does not exist"),
    ("input-directory", ["a", *MODEL], "is a directory"),
    ("input-random-mp3", ["noise.mp3", *MODEL], "noise.mp3 is not decodable audio"),
    ("input-random-wav", ["noise.wav", *MODEL], "noise.wav is not decodable audio"),
    ("input-empty", ["empty.wav", *MODEL], "empty.wav"),
    ("input-nan", ["nan.wav", *MODEL], "nan.wav: a NaN sample at 0.006 s is not audio"),
    ("input-int-scale", ["int-scale.wav", *MODEL], "int-scale.wav: the sample "),
    ("input-truncated", ["truncated.wav", *MODEL], "truncated.wav is truncated"),
    ("input-huge-header", ["huge.wav", *MODEL], "huge.wav is truncated"),
    ("track-dotdot", ["...wav", *MODEL], "inside --outdir"),
    (
        "stem-over-input",
        [
            SONG,
            *MODEL,
            "--targets",
            "vocals",
            "--niter",
            "0",
            "--outdir",
            ".",
            "--filename",
            "{track}.wav",
            "--force",
        ],
        "would replace the input",
    ),
    ("same-name-two-folders", ["a/song.wav", "b/song.wav", *MODEL, "--force"], "{parent}"),
    ("same-input-twice", [SONG, SONG, *MODEL], "given twice"),
    ("targets-swallow-input", [*MODEL, "--targets", "vocals", SONG], "--targets took 'song.wav'"),
    ("model-missing", [SONG, "--model", "no-such-model"], "unknown model"),
    ("model-nan-rate", [SONG, "--model", "model-nan-rate"], "sample_rate"),
    ("model-zero-rate", [SONG, "--model", "model-zero-rate"], "sample_rate"),
    ("model-hop-as-window", [SONG, "--model", "model-hop-as-window"], "cannot be inverted"),
    ("model-escaping-target", [SONG, "--model", "model-escaping-target"], "../escape"),
    ("model-dotted-target", [SONG, "--model", "model-dotted-target"], "with a dot, 'vo.cals'"),
    ("model-no-targets", [SONG, "--model", "model-no-targets"], "target"),
    ("model-tiny-hop", [SONG, "--model", "model-tiny-hop"], "hop of 1 with n_fft 512 is too"),
    ("model-other-rate", [SONG, "--model", "model-other-rate"], "says sample_rate 16000.0 but"),
    ("model-int-weights", [SONG, "--model", "model-int-weights"], "fc1.weight holds int64"),
    ("model-complex-weights", [SONG, "--model", "model-complex-weights"], "complex64 values"),
    ("model-odd-hidden", [SONG, "--model", "model-odd-hidden"], "is 15, odd"),
    ("model-code", [SONG, "--model", "model-code"], "not a readable torch file"),
    ("device-unknown", [SONG, *MODEL, "--device", "tpu"], "unknown device"),
    ("clip-none-pcm", [SONG, *MODEL, "--clip", "none"], "none only with the FLOAT subtype"),
    ("residual-is-target", [SONG, *MODEL, "--residual", "vocals"], "already a target"),
    (
        "residual-is-unselected-target",
        [SONG, *MODEL, "--targets", "vocals", "--residual", "drums"],
        "--residual drums is already a target of the model: name the rest of the mix otherwise",
    ),
    (
        "residual-named-as-the-instrumental",  # it held what the four targets leave
        [SONG, *MODEL, "--residual", "instrumental"],
        "--residual instrumental beside vocals, drums, bass, other would hold only what they "
        "leave of the mix, not an instrumental: give --two-stems vocals, or another --residual",
    ),
    ("unknown-target", [SONG, *MODEL, "--targets", "guitar"], "no target 'guitar'"),
    ("two-stems-unknown", [SONG, *MODEL, "--two-stems", "guitar"], "no target 'guitar'"),
    ("two-stems-targets", [SONG, *MODEL, "--two-stems", "bass", "--targets", "bass"], "--targets"),
    ("two-stems-residual", [SONG, *MODEL, "--two-stems", "bass", "--residual", "x"], "--residual"),
    ("two-stems-aggregate", [SONG, *MODEL, "--two-stems", "bass", "--aggregate", "{}"], "leave"),
    ("two-stems-slash", [SONG, *MODEL, "--two-stems", "a/b"], "--two-stems"),
    ("existing-output", [SONG, *MODEL, "--outdir", "out"], "already exists (use --force"),
    ("model-silent", [SONG, "--model", "model-silent"], "every stem came out silent from audible"),
]


@pytest.mark.parametrize(
    ("arguments", "message"), [case[1:] for case in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_cli_refuses_bad_input_and_changes_nothing(
    workspace, arguments, message, capsys, monkeypatch
):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("UMX_OFFLINE", "1")
    before = snapshot(workspace)
    assert main(["--quiet", *arguments]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert all(line.startswith("umx: ") for line in err.splitlines()), err
    assert snapshot(workspace) == before


def test_a_separation_that_gives_nan_is_refused_before_a_stem_is_written(
    workspace, tmp_path, monkeypatch, capsys
):
    """Said as the separation's failure, with what to try (it was the writer's "cannot write
    .../vocals.wav: the audio holds NaN or infinite samples")."""
    import umx.separator

    def unstable(*args, out=None, **kwargs):
        return out.fill_(complex(math.nan, 0.0))

    monkeypatch.chdir(workspace)
    monkeypatch.setattr(umx.separator, "wiener", unstable)
    outdir = tmp_path / "stems"
    assert main([SONG, "--model", "model", "--outdir", str(outdir), "--quiet"]) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        f"umx: error: {SONG}: the stems came out with NaN or infinite samples: the model model "
        "or its options give no usable result (broken weights, or a Wiener filter unstable on "
        "this input: try a smaller --niter)"
    )
    assert not outdir.exists()


def test_a_failed_separation_leaves_no_folder(workspace, tmp_path, monkeypatch):
    """The folders made for an input's stems go again when its separation fails."""
    monkeypatch.chdir(workspace)
    outdir = tmp_path / "new" / "stems"
    assert main([SONG, "--model", "model-silent", "--outdir", str(outdir), "--quiet"]) == 1
    assert list(tmp_path.iterdir()) == []


def test_one_target_with_em_writes_that_stem_only(workspace, tmp_path, monkeypatch):
    """Once refused ("Wiener EM needs at least two sources"): one target is filtered with the
    rest of the mixture, and only its stem is written."""
    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    outdir = tmp_path / "stems"
    arguments = [SONG, *MODEL, "--targets", "vocals", "--outdir", str(outdir), "--quiet"]
    assert main(arguments) == 0
    assert sorted(p.relative_to(outdir).as_posix() for p in outdir.rglob("*.*")) == [
        "song/vocals.wav"
    ]
    vocals, rate = sf.read(outdir / "song" / "vocals.wav", dtype="float32", always_2d=True)
    song, _ = sf.read(SONG, dtype="float32", always_2d=True)
    expected = umx.separate(song.T, rate, "model", targets=["vocals"], residual="rest")
    np.testing.assert_allclose(vocals.T, expected["vocals"].numpy(), rtol=0, atol=1.5 / 32768)
    assert snapshot(workspace) == before


def test_cli_cases_cover_the_issue():
    assert len(CLI_CASES) + len(API_CASES) >= 40
    assert len({case[0] for case in CLI_CASES}) == len(CLI_CASES)


def run_umx_subprocess(arguments, cwd, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "umx.cli", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "UMX_OFFLINE": "1"},
        stdin=subprocess.DEVNULL,
    )


def test_a_pickle_of_code_as_weights_is_one_line(workspace):
    """torch warned ("Detected pickle protocol 4...") above the refusal: three lines."""
    result = run_umx_subprocess([SONG, "--model", "model-code", "--quiet"], workspace)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "model-code/vocals.pth is not a readable torch file" in result.stderr
    assert "pwned" not in result.stdout + result.stderr


@pytest.mark.parametrize("where", ["input", "aggregate"])
def test_named_pipes_are_refused_without_blocking(workspace, tmp_path, where):
    """A pipe nobody writes to would block a reader forever: it is refused without opening."""
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    arguments = [str(fifo)] if where == "input" else [SONG, "--aggregate", str(fifo)]
    before = snapshot(workspace)
    result = run_umx_subprocess([*arguments, "--model", "model", "--quiet"], workspace)
    assert result.returncode == 1
    assert "not a regular file" in result.stderr or "named pipe" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(workspace) == before


def batch_with_spike() -> torch.Tensor:
    """A batch of three stereo signals, the last of which holds a 16-bit value at 10 ms."""
    audio = torch.zeros(3, 2, RATE // 10)
    audio[2, 1, RATE // 100] = -3e4
    return audio


# (id, audio, rate, options, exception, message)
API_CASES = [
    ("nan-sample", torch.tensor([[0.0, math.nan] * 100] * 2), RATE, {}, umx.UmxError, "NaN"),
    ("inf-sample", torch.tensor([[0.0, math.inf] * 100] * 2), RATE, {}, umx.UmxError, "infinite"),
    ("beyond-sample", batch_with_spike(), RATE, {}, umx.UmxError, r"sample -3e\+04 at 0.010 s"),
    ("complex", torch.zeros(2, 100, dtype=torch.complex64), RATE, {}, TypeError, "complex"),
    ("string", "song.wav", RATE, {}, TypeError, "not str"),
    ("list", [[0.0] * 10] * 2, RATE, {}, TypeError, "not list"),
    ("int16", np.zeros((2, 100), dtype=np.int16), RATE, {}, TypeError, "int16"),
    ("time-major", np.zeros((RATE, 2), dtype=np.float32), RATE, {}, umx.UmxError, "time-major"),
    ("no-channel", torch.zeros(0, 100), RATE, {}, umx.UmxError, "1 or 2 channels"),
    ("three-channels", torch.zeros(3, 1000), RATE, {}, umx.UmxError, "1 or 2 channels"),
    ("no-samples", torch.zeros(2, 0), RATE, {}, umx.UmxError, "no samples"),
    ("one-dimension", torch.zeros(100), RATE, {}, umx.UmxError, "nb_channels"),
    ("rate-zero", torch.zeros(2, 100), 0, {}, umx.UmxError, "rate must be at least"),
    ("rate-nan", torch.zeros(2, 100), math.nan, {}, umx.UmxError, "rate must be a finite"),
    ("rate-negative", torch.zeros(2, 100), -44100, {}, umx.UmxError, "rate must be at least"),
    ("rate-string", torch.zeros(2, 100), "44100", {}, umx.UmxError, "rate must be a number"),
    ("rate-huge", torch.zeros(2, 100), 1e12, {}, umx.UmxError, "rate must be at most"),
    ("segment-nan", torch.zeros(2, 100), RATE, {"segment": math.nan}, umx.UmxError, "--segment"),
    (
        "segment-short",
        torch.zeros(2, 100),
        RATE,
        {"segment": 0.05, "overlap": 0.0},
        umx.UmxError,
        "too short for this model",
    ),
    ("overlap-inf", torch.zeros(2, 100), RATE, {"overlap": math.inf}, umx.UmxError, "--overlap"),
    ("aggregate", torch.zeros(2, 100), RATE, {"aggregate": {"x": ["y"]}}, umx.UmxError, "y"),
    (
        "too-short",
        torch.full((2, 1), 0.1),
        768000,
        {},
        umx.UmxError,
        "^audio is too short: 1 frame",
    ),
    # as --aggregate: a target summed twice is 6 dB too loud; no group gives no stem
    *[
        (f"aggregate-{name}", torch.zeros(2, 100), RATE, {"aggregate": groups}, umx.UmxError, text)
        for name, groups, text in [
            (
                "twice",
                {"x": ["bass", "bass"]},
                "^--aggregate lists bass twice in the group x: list it once$",
            ),
            ("empty-group", {"x": []}, "^--aggregate must map names to non-empty lists"),
            ("text-group", {"x": "bass"}, "^--aggregate must map names to non-empty lists"),
            ("no-group", {}, "^--aggregate needs at least one group$"),
            ("list", [["bass"]], "^--aggregate must map names to non-empty lists"),
        ]
    ],
]


@pytest.mark.parametrize(
    ("audio", "rate", "options", "exception", "message"),
    [case[1:] for case in API_CASES],
    ids=[c[0] for c in API_CASES],
)
def test_api_refuses_bad_input_with_its_own_checks(
    small_music_separator, audio, rate, options, exception, message
):
    with pytest.raises(exception, match=message):
        umx.separate(audio, rate, model=small_music_separator, **options)


def test_api_refuses_stems_far_louder_than_their_mixture(small_music_separator):
    """Masks of 50 (a broken model, or a diverged Wiener filter) made stems 34 dB above the
    mixture, which the writers then rescaled or clamped into a result."""
    mix = 0.1 * torch.randn(2, RATE, generator=torch.Generator().manual_seed(0))
    loud = silent_separator(small_music_separator, bias=50.0, niter=0)
    with pytest.raises(umx.UmxError, match=r"^audio: the stems came out 3\d dB above the input: "):
        umx.separate(mix, RATE, loud)
    sane = silent_separator(small_music_separator, bias=1.0, niter=0)  # 2 to 3 times: kept
    peaks = [float(stem.abs().max()) for stem in umx.separate(mix, RATE, sane).values()]
    assert 1 < max(peaks) / float(mix.abs().max()) < 10


def test_api_refuses_stems_all_silent_from_audible_input_where_they_should_add_up_to_it(
    small_music_separator,
):
    mix = 0.1 * torch.randn(2, RATE, generator=torch.Generator().manual_seed(0))
    silent = silent_separator(small_music_separator)
    with pytest.raises(umx.UmxError) as error:
        umx.separate(mix, RATE, silent)
    assert str(error.value) == (
        "audio: every stem came out silent from audible input: the model gives nothing (are "
        "its weights broken?)"
    )
    stems = umx.separate(mix, RATE, small_music_separator)
    assert max(float(stem.abs().max()) for stem in stems.values()) > 0.01
    quiet = umx.separate(mix * 1e-5, RATE, silent)  # -120 dBFS is not audible: no error
    assert all(float(stem.abs().max()) == 0 for stem in quiet.values())
    # one target alone may rightly be silent (no vocals in an instrumental)
    vocals = next(iter(small_music_separator.target_models.items()))
    one = silent_separator(Separator(dict([vocals]), sample_rate=RATE, n_fft=512, n_hop=128))
    assert float(umx.separate(mix, RATE, one)["vocals"].abs().max()) == 0
    raw = silent_separator(small_music_separator, niter=0)  # estimates need not add up
    assert all(float(stem.abs().max()) == 0 for stem in umx.separate(mix, RATE, raw).values())
    # targets beside a residual may rightly be silent too: the residual takes the mixture
    rest = silent_separator(small_music_separator, residual="rest")
    assert not rest.covers_mixture and silent.covers_mixture
    stems = umx.separate(mix, RATE, rest)
    assert all(float(stems[name].abs().max()) == 0 for name in small_music_separator.targets)
    assert torch.allclose(stems["rest"], mix, atol=1e-4)


@pytest.mark.parametrize("niter", [0, 1])
@pytest.mark.parametrize("causal", [False, True], ids=["separate", "separate_causal"])
def test_api_refuses_stems_with_nan(niter, causal):
    """Weights that make NaN (a model object given to the API is not checked as a loaded
    one is) give an error, not NaN stems, offline and through the causal path alike."""
    torch.manual_seed(0)
    models = {}
    for name in ("vocals", "drums"):
        models[name] = OpenUnmix(257, 2, 16, max_bin=200, unidirectional=causal).eval()
        with torch.no_grad():
            models[name].fc3.weight[0, 0] = math.nan
    separator = Separator(models, sample_rate=RATE, n_fft=512, n_hop=128, niter=niter)
    mix = 0.1 * torch.randn(2, RATE, generator=torch.Generator().manual_seed(0))
    with pytest.raises(umx.UmxError) as error:
        separate_causal(separator, mix) if causal else umx.separate(mix, RATE, separator)
    assert str(error.value) == (
        "audio: the stems came out with NaN or infinite samples: the model or its options give "
        "no usable result (broken weights, or a Wiener filter unstable on this input: try a "
        "smaller --niter)"
    )


def test_api_bad_niter_is_refused_before_loading():
    with pytest.raises(umx.UmxError, match="--niter must be at least 0"):
        umx.separate(torch.zeros(2, 100), RATE, model=Path("does-not-matter"), niter=-1)
