"""umx's BSSEval v4 against museval itself: every metric of every window within 1e-3 dB, NaN and
infinite where museval's are, on generated signals, a rendered synthetic track and through
`score_track` and `umx evaluate`."""

import argparse
import json
import os
import shutil
import warnings

import museval
import numpy as np
import pytest
import soundfile as sf

from umx.cli import main
from umx.errors import UmxError
from umx.evaluate import (
    BaselineMethod,
    add_evaluate_arguments,
    evaluate,
    load_tracks,
    run_evaluate,
)
from umx.evaluate import bsseval as bsseval_module
from umx.evaluate.bsseval import bss_eval, nb_windows
from umx.evaluate.scoring import score_track
from umx.evaluate.tracks import _audio_in_memory

TOLERANCE = 1e-3  # dB
needs_ffprobe = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="musdb needs ffprobe")
needs_fluidsynth = pytest.mark.skipif(
    not shutil.which("fluidsynth") and not os.environ.get("CI"),
    reason="rendering needs the Debian package fluidsynth",
)


def museval_scores(references, estimates, window, hop):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # museval's log10(0) and empty means
        return museval.evaluate(references, estimates, win=window, hop=hop)


def assert_same_as_museval(references, estimates, window, hop):
    """Our scores, checked against museval's: same shape, NaN and ±inf in the same windows, the
    rest within TOLERANCE."""
    ours = bss_eval(references, estimates, window=window, hop=hop)
    theirs = museval_scores(references, estimates, window, hop)
    for name, mine, reference in zip(("SDR", "ISR", "SIR", "SAR"), ours, theirs, strict=True):
        assert mine.shape == reference.shape == (len(references), mine.shape[1]), name
        np.testing.assert_allclose(mine, reference, rtol=0, atol=TOLERANCE, err_msg=name)
    return ours


def generated(rng, nb_sources, nb_timesteps, nb_channels):
    """Distinct sources (a filtered noise, a chirp and decaying noise bursts in turn), and
    estimates that mix each with some of the next source and some noise."""
    t = np.arange(nb_timesteps) / 8000
    sources = []
    for index in range(nb_sources):
        kind = index % 3
        if kind == 0:
            source = np.convolve(rng.standard_normal(nb_timesteps), rng.standard_normal(5), "same")
        elif kind == 1:
            source = np.sin(2 * np.pi * (200 + 150 * index) * t * (1 + 0.3 * t))
        else:
            source = rng.standard_normal(nb_timesteps) * np.exp(
                -(np.arange(nb_timesteps) % 900) / 150
            )
        gains = rng.uniform(0.3, 1.0, nb_channels)
        sources.append(
            source[:, None] * gains + 0.05 * rng.standard_normal((nb_timesteps, nb_channels))
        )
    references = np.stack(sources)
    leak = rng.uniform(0.05, 0.3, (nb_sources, 1, 1))
    estimates = references + leak * np.roll(references, 1, axis=0)
    estimates += 0.1 * rng.standard_normal(references.shape)
    return references, estimates


@pytest.mark.parametrize(
    ("nb_sources", "nb_channels", "nb_timesteps", "window", "hop"),
    [
        (2, 1, 26000, 8000, 8000),  # a partial last window, which museval drops
        (2, 2, 30000, 10000, 4000),  # overlapping windows
        (5, 1, 21000, 4000, 6000),  # hops longer than the window
        (2, 2, 6000, 8000, 8000),  # a track shorter than the window: one window
    ],
)
def test_generated_signals_score_as_museval(nb_sources, nb_channels, nb_timesteps, window, hop):
    rng = np.random.default_rng(nb_sources * 10 + nb_channels)
    references, estimates = generated(rng, nb_sources, nb_timesteps, nb_channels)
    scores = assert_same_as_museval(references, estimates, window, hop)
    assert scores.sdr.shape[1] == nb_windows(nb_timesteps, window, hop)
    assert np.isfinite(scores.sdr).all()


def test_track_shorter_than_the_filters():
    """Filters longer than the track fit the estimates exactly: the SAR is rounding noise,
    hundreds of dB, in museval as here; the other ratios are museval's."""
    references, estimates = generated(np.random.default_rng(2), 3, 300, 1)
    ours = bss_eval(references, estimates, window=8000, hop=8000)
    theirs = museval_scores(references, estimates, 8000, 8000)
    for mine, reference in zip(ours[:3], theirs[:3], strict=True):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=TOLERANCE)
    assert (ours.sar > 150).all() and (theirs[3] > 150).all()


def test_small_blocks_and_chunks_score_as_museval(monkeypatch):
    """Correlations over many blocks, and one block or window at a time, change nothing."""
    references, estimates = generated(np.random.default_rng(3), 2, 20000, 2)
    monkeypatch.setattr(bsseval_module, "BLOCK_FFT", 2048)
    monkeypatch.setattr(bsseval_module, "MEMORY", 1)
    assert_same_as_museval(references, estimates, 6000, 5000)


def test_silent_windows_are_nan_for_every_source():
    references, estimates = generated(np.random.default_rng(4), 2, 40000, 2)
    references[1, 8000:16000] = 0  # a silent reference in window 1
    estimates[0, 16000:24000] = 0  # a silent estimate in window 2
    references[0, 24000:32000, 1] = -references[0, 24000:32000, 0]  # channels summing to zero
    references[1, 32000:40000, 0] = 0  # one silent channel: scored
    scores = assert_same_as_museval(references, estimates, 8000, 8000)
    for metric in scores:
        assert np.isnan(metric[:, 1:4]).all()
        assert np.isfinite(metric[:, [0, 4]]).all()


@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_mono_source_stored_in_stereo_scores_as_museval(gain):
    """A channel that is a copy of another (gain 1: umx leaves it out of the systems) or an exact
    multiple of it (gain 2: LU meets a zero pivot and umx raises the ridge) makes the Gram matrix
    singular; the projections, and so the scores, are museval's."""
    references, estimates = generated(np.random.default_rng(5), 2, 16000, 2)
    references[0, :, 1] = gain * references[0, :, 0]
    estimates[0, :, 1] = gain * estimates[0, :, 0]
    assert_same_as_museval(references, estimates, 8000, 8000)


def test_float32_input_and_a_perfect_estimate():
    references, estimates = generated(np.random.default_rng(6), 2, 16000, 1)
    references, estimates = references.astype(np.float32), estimates.astype(np.float32)
    estimates[0] = references[0]
    ours = bss_eval(references, estimates, window=8000, hop=8000)
    theirs = museval_scores(references, estimates, 8000, 8000)
    assert np.isposinf(ours.sdr[0]).all() and np.isposinf(theirs[0][0]).all()
    # The other ratios of a perfect estimate are rounding noise, hundreds of dB, in both.
    for mine, reference in zip(ours[1:], theirs[1:], strict=True):
        assert (mine[0] > 150).all() and (reference[0] > 150).all()
    for mine, reference in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(mine[1], reference[1], rtol=0, atol=TOLERANCE)


def cancelling(sources, index):
    """The source's second channel made the negative of its first: silent to museval."""
    sources = sources.copy()
    sources[index, :, 1] = -sources[index, :, 0]
    return sources


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r, e: (r, e[:, :-1]), "must have one shape"),
        (lambda r, e: (r[None], e[None]), "must have one shape"),
        (lambda r, e: (r[0], e[0]), "3000 sources, more than 100"),
        (lambda r, e: (r[:, :0], e[:, :0]), "no sources, samples or channels"),
        (lambda r, e: (r * [[[0]], [[1]]], e), "the reference of source 0 is silent"),
        (lambda r, e: (r, cancelling(e, 1)), "the estimate of source 1 is silent"),
        (lambda r, e: (r, np.where(e > 2, np.nan, e)), "estimates hold NaN or infinite"),
        (lambda r, e: (r * np.inf, e), "references hold NaN or infinite"),
    ],
)
def test_bad_input_is_refused(change, message):
    references, estimates = change(*generated(np.random.default_rng(7), 2, 3000, 2))
    with pytest.raises(ValueError, match=message):
        bss_eval(references, estimates, window=1000, hop=1000)


@pytest.mark.parametrize("name", ["window", "hop"])
def test_window_and_hop_below_one_sample_are_refused(name):
    references, estimates = generated(np.random.default_rng(7), 2, 3000, 1)
    settings = {"window": 1000, "hop": 1000, name: 0}
    with pytest.raises(ValueError, match=f"{name} must be a whole number"):
        bss_eval(references, estimates, **settings)


# --- synthetic tracks, score_track and umx evaluate -----------------------------------------------


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "db"
    argv = ["synth", "--root", root, "--procedural", "1", "--duration", "3", "--jobs", "1", "-q"]
    assert main([str(arg) for arg in argv]) == 0
    return root


@needs_fluidsynth
def test_rendered_synthetic_track_scores_as_museval(synth_root):
    (folder,) = (synth_root / "train").iterdir()
    references = np.stack(
        [
            sf.read(folder / f"{name}.wav", always_2d=True)[0]
            for name in ("vocals", "drums", "bass", "other")
        ]
    )
    rng = np.random.default_rng(8)
    estimates = references + 0.2 * np.roll(references, 1, axis=0)
    estimates += 0.01 * rng.standard_normal(references.shape)
    assert_same_as_museval(references, estimates, 44100, 44100)


def write_track(folder, rng, rate=16000, seconds=3.0):
    references, _ = generated(rng, 4, int(rate * seconds), 1)
    folder.mkdir(parents=True)
    for name, audio in zip(("vocals", "drums", "bass", "other"), references, strict=True):
        sf.write(folder / f"{name}.wav", audio, rate, subtype="FLOAT")
    sf.write(folder / "mixture.wav", references.sum(axis=0), rate, subtype="FLOAT")


@needs_ffprobe
def test_score_track_fast_is_museval_in_museval_json(tmp_path):
    """Four targets: three scored together (vocals' scores from the pair), then the vocals and
    accompaniment pair, in museval's order and JSON."""
    write_track(tmp_path / "db" / "test" / "song", np.random.default_rng(9), seconds=2.0)
    (track,) = load_tracks(tmp_path / "db", is_wav=True)
    rng = np.random.default_rng(10)
    with _audio_in_memory(track):  # as umx evaluate reads a track: once
        estimates = {}
        for name in ("vocals", "drums", "bass", "accompaniment"):
            reference = track.targets[name].audio
            estimates[name] = reference + 0.1 * rng.standard_normal(reference.shape)
        estimates["vocals"] += 0.2 * track.targets["drums"].audio
        fast = score_track(track, estimates, win=0.5, hop=0.5)
        reference = score_track(track, estimates, win=0.5, hop=0.5, metrics="museval")
    fast_json, museval_json = json.loads(fast.json), json.loads(reference.json)
    order = [target["name"] for target in fast_json["targets"]]
    assert order == ["drums", "bass", "vocals", "accompaniment"]
    assert_same_json(fast_json, museval_json)


def assert_same_json(fast, reference):
    assert fast.keys() == reference.keys()
    assert [t["name"] for t in fast["targets"]] == [t["name"] for t in reference["targets"]]
    for ours, theirs in zip(fast["targets"], reference["targets"], strict=True):
        assert len(ours["frames"]) == len(theirs["frames"]) > 0
        for mine, frame in zip(ours["frames"], theirs["frames"], strict=True):
            assert mine["time"] == frame["time"] and mine["duration"] == frame["duration"]
            for metric, value in frame["metrics"].items():
                assert mine["metrics"][metric] == pytest.approx(value, abs=TOLERANCE, nan_ok=True)


def evaluate_options(*argv):
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return parser.parse_args([str(arg) for arg in argv])


@needs_ffprobe
def test_umx_evaluate_fast_and_museval_write_the_same_scores(tmp_path, capsys):
    rng = np.random.default_rng(11)
    for name in ("one", "two"):
        write_track(tmp_path / "db" / "test" / name, rng, seconds=2.0)
    common = ("--root", tmp_path / "db", "--is-wav", "--method", "irm", "-q", "--aggregate")
    pair = json.dumps({"vocals": ["vocals"], "accompaniment": ["drums", "bass", "other"]})
    assert run_evaluate(evaluate_options(*common, pair, "--evaldir", tmp_path / "fast")) == 0
    fast_table = capsys.readouterr().out
    argv = (*common, pair, "--evaldir", tmp_path / "museval", "--metrics", "museval")
    assert run_evaluate(evaluate_options(*argv)) == 0
    assert capsys.readouterr().out == fast_table
    for name in ("one", "two"):
        fast, reference = (
            json.loads((tmp_path / folder / "test" / f"{name}.json").read_text())
            for folder in ("fast", "museval")
        )
        assert_same_json(fast, reference)
    assert (tmp_path / "fast" / "scores.md").read_text().count("| irm |") == 2


def test_unknown_implementation_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        evaluate_options("--evaldir", tmp_path, "--metrics", "mir_eval")
    with pytest.raises(UmxError, match="--metrics must be one of fast, museval"):
        evaluate([], BaselineMethod("mix"), tmp_path, metrics="mir_eval")
