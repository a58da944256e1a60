"""One target on every surface: the Wiener EM filters it with the rest of the mixture, kept
hidden, and only the asked stems come out; `--residual` and `--two-stems` write the rest."""

import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

import umx
from umx.cli import main
from umx.filtering import CausalWiener, wiener
from umx.model import OpenUnmix
from umx.modeldir import save_separator
from umx.separator import Separator
from umx.stream.engine import StreamingSeparator, separate_causal
from umx.zoo import load_separator

RATE = 16000


def random_problem(nb_channels, nb_frames=40, nb_bins=9, seed=0):
    """Magnitudes of one target `(nb_frames, nb_bins, nb_channels, 1)` and a complex mixture
    `(nb_frames, nb_bins, nb_channels)`, float64."""
    generator = torch.Generator().manual_seed(seed)
    shape = (nb_frames, nb_bins, nb_channels)
    mix = torch.complex(
        torch.randn(shape, generator=generator, dtype=torch.float64),
        torch.randn(shape, generator=generator, dtype=torch.float64),
    )
    magnitudes = mix.abs()[..., None] * torch.rand(
        (*shape, 1), generator=generator, dtype=torch.float64
    )
    return magnitudes, mix


@pytest.mark.parametrize("nb_channels", [1, 2])
@pytest.mark.parametrize("niter", [1, 3])
@pytest.mark.parametrize("softmask", [False, True])
def test_wiener_filters_one_target_with_the_rest_of_the_mixture(nb_channels, niter, softmask):
    magnitudes, mix = random_problem(nb_channels)
    one = wiener(magnitudes, mix, niter=niter, softmask=softmask, batch_size=7)
    both = wiener(magnitudes, mix, niter=niter, softmask=softmask, residual=True, batch_size=7)
    assert one.shape == (*mix.shape, 1)
    torch.testing.assert_close(one, both[..., :1], rtol=0, atol=0)
    torch.testing.assert_close(both.sum(dim=-1), mix, rtol=0, atol=1e-3 * mix.abs().max())
    out = torch.zeros_like(one)
    assert wiener(magnitudes, mix, niter=niter, softmask=softmask, batch_size=7, out=out) is out
    torch.testing.assert_close(out, one, rtol=0, atol=0)
    if not softmask:  # EM moved the estimate: neither the initial one nor the whole mixture
        initial = wiener(magnitudes, mix, niter=0)
        assert (one - initial).abs().max() > 0.05 * mix.abs().max()
        assert (one[..., 0] - mix).abs().max() > 0.05 * mix.abs().max()


@pytest.mark.parametrize("nb_channels", [1, 2])
def test_causal_wiener_filters_one_target_with_the_rest_in_pieces(nb_channels):
    magnitudes, mix = random_problem(nb_channels, nb_frames=60)
    one, both = CausalWiener(niter=2, memory=20), CausalWiener(niter=2, residual=True, memory=20)
    pieces = [one(magnitudes[t], mix[t]) for t in (slice(0, 17), slice(17, 18), slice(18, 60))]
    assert [piece.shape[-1] for piece in pieces] == [1, 1, 1]
    expected = both(magnitudes, mix)
    torch.testing.assert_close(torch.cat(pieces), expected[..., :1], rtol=0, atol=1e-12)
    torch.testing.assert_close(expected.sum(dim=-1), mix, rtol=0, atol=1e-3 * mix.abs().max())


def small_models(unidirectional=False, seed=0):
    torch.manual_seed(seed)
    models = {}
    for target in ("vocals", "drums", "bass", "other"):
        model = OpenUnmix(257, 2, 16, unidirectional=unidirectional, max_bin=200)
        with torch.no_grad():
            model.output_mean.uniform_(0.2, 0.8)
        models[target] = model.freeze()
    return models


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A bidirectional (offline) and a unidirectional (stream) 4-target model directory."""
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for name, unidirectional in (("offline", False), ("causal", True)):
        separator = Separator(
            small_models(unidirectional), sample_rate=RATE, n_fft=512, n_hop=128, nb_channels=2
        )
        dirs[name] = save_separator(separator, root / name)
    return dirs


def music(seconds=1.5, seed=1):
    """Stereo test audio `(2, nb_timesteps)` float32: two tones and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tones = 0.3 * np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)])
    return (tones + 0.05 * rng.standard_normal(tones.shape)).astype(np.float32)


@pytest.fixture
def song(tmp_path):
    path = tmp_path / "in" / "song.wav"
    path.parent.mkdir()
    sf.write(path, music().T, RATE, subtype="FLOAT")
    return path


def read(path):
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    return data.T


def written(outdir):
    return sorted(path.relative_to(outdir).as_posix() for path in outdir.rglob("*.wav"))


def test_api_one_target_is_the_target_of_a_run_with_the_residual(model_dirs):
    audio = music()
    one = umx.separate(
        audio, RATE, model_dirs["offline"], targets=["vocals"], segment=0.5, overlap=0.1
    )
    both = umx.separate(
        audio,
        RATE,
        model_dirs["offline"],
        targets=["vocals"],
        residual="rest",
        segment=0.5,
        overlap=0.1,
    )
    assert list(one) == ["vocals"] and list(both) == ["vocals", "rest"]
    torch.testing.assert_close(one["vocals"], both["vocals"], rtol=0, atol=1e-6)
    torch.testing.assert_close(
        both["vocals"] + both["rest"], torch.from_numpy(audio), atol=1e-3, rtol=0
    )


def test_separate_two_stems_writes_the_target_and_the_rest(model_dirs, song, tmp_path):
    outdir = tmp_path / "out"
    options = ["--model", str(model_dirs["offline"]), "--outdir", str(outdir), "--quiet"]
    assert main([str(song), "--two-stems", "drums", *options, "--subtype", "FLOAT"]) == 0
    assert written(outdir) == ["song/drums.wav", "song/no_drums.wav"]
    expected = umx.separate(
        music(), RATE, model_dirs["offline"], targets=["drums"], residual="no_drums"
    )
    for name in ("drums", "no_drums"):
        np.testing.assert_allclose(
            read(outdir / "song" / f"{name}.wav"), expected[name].numpy(), rtol=0, atol=1e-6
        )
    total = read(outdir / "song" / "drums.wav") + read(outdir / "song" / "no_drums.wav")
    np.testing.assert_allclose(total, music(), rtol=0, atol=1e-3)


def test_stream_engine_with_one_target_equals_separate_causal(model_dirs):
    audio = torch.from_numpy(music())
    one = load_separator(model_dirs["causal"], targets=["vocals"], niter=2)
    both = load_separator(model_dirs["causal"], targets=["vocals"], niter=2, residual="rest")
    stream = StreamingSeparator(one)
    blocks = [stream.process(block) for block in audio.split(1000, dim=-1)]
    streamed = torch.cat([*blocks, stream.flush()], dim=-1)
    offline = separate_causal(one, audio)
    assert streamed.shape == offline.shape == (1, *audio.shape)
    torch.testing.assert_close(streamed, offline, rtol=0, atol=1e-5)
    with_rest = separate_causal(both, audio)
    torch.testing.assert_close(offline, with_rest[:1], rtol=0, atol=1e-6)
    # The causal filter scales the powers as norbert's does (by the loudest frame so far), so
    # the regulariser weighs more on loud frames: the stems sum to the mixture within 1e-3.
    torch.testing.assert_close(with_rest.sum(dim=0), audio, rtol=0, atol=1e-3)


def test_stream_stdout_with_one_target(model_dirs, song):
    """Once "Wiener EM needs at least two sources": one target is the one stem --stdout needs."""
    command = [sys.executable, "-m", "umx.cli", "stream", str(song), "--stdout", "--quiet"]
    command += ["--model", str(model_dirs["causal"]), "--targets", "vocals", "--niter", "2"]
    result = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode()
    pcm = np.frombuffer(result.stdout, dtype="<f4").reshape(-1, 2).T
    separator = load_separator(model_dirs["causal"], targets=["vocals"], niter=2)
    expected = separate_causal(separator, torch.from_numpy(music()))[0].numpy()
    np.testing.assert_allclose(pcm, expected, rtol=0, atol=1e-5)


def test_batch_with_one_target(model_dirs, song, tmp_path):
    outdir = tmp_path / "out"
    arguments = ["batch", str(song.parent), "--outdir", str(outdir), "--jobs", "1", "--quiet"]
    arguments += ["--model", str(model_dirs["offline"]), "--targets", "bass", "--subtype", "FLOAT"]
    assert main(arguments) == 0
    assert written(outdir) == ["song/bass.wav"]
    expected = umx.separate(music(), RATE, model_dirs["offline"], targets=["bass"])
    np.testing.assert_allclose(
        read(outdir / "song" / "bass.wav"), expected["bass"].numpy(), rtol=0, atol=1e-6
    )


def test_serve_with_a_one_target_model(model_dirs, tmp_path):
    """A model directory of one target, served: its job separates that stem."""
    pytest.importorskip("starlette")
    from umx.jobs import DONE, FAILED
    from umx.web.jobs import JobStore

    single = load_separator(model_dirs["offline"], targets=["vocals"])
    model = str(save_separator(single, tmp_path / "vocals-only"))
    store = JobStore(tmp_path / "data", models=[model], max_queue=2, max_cache_bytes=1 << 30)
    store.start(1)
    try:
        upload = store.new_upload("song.wav", 10 << 20)
        path = tmp_path / "song.wav"
        sf.write(path, music().T, RATE, subtype="FLOAT")
        upload.write(path.read_bytes())
        job, _ = store.add(upload, store.options(model, "all"))
        deadline = time.monotonic() + 60
        while store.job(job["id"])["state"] not in (DONE, FAILED) and time.monotonic() < deadline:
            time.sleep(0.05)
        done = store.job(job["id"])
    finally:
        store.stop()
    assert done["state"] == DONE, done
    assert done["targets"] == ["vocals"]
