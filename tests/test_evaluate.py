"""BSSEval v4 evaluation on small generated MUSDB18-HQ-layout sets (mono, 16 kHz, 3 s tracks)."""

import argparse
import copy
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import museval
import numpy as np
import pytest
import soundfile as sf
import torch
from torch.nn import functional as F

import umx.audio.writing
from processes import BOUND_S, children, file_size_limit, in_session, running, wait_for
from umx import api
from umx.errors import UmxError
from umx.evaluate import (
    METRICS,
    SOURCES,
    BaselineMethod,
    EstimatesMethod,
    EvaluateOptions,
    ModelMethod,
    add_evaluate_arguments,
    evaluate,
    json_path,
    load_scores,
    load_tracks,
    method_scores,
    oracle,
    run_evaluate,
    run_evaluation,
    score_limits,
    score_table,
    score_track,
    scoring,
    side_by_side,
    to_markdown,
)
from umx.evaluate.methods import model_sha256
from umx.evaluate.tracks import _audio_in_memory
from umx.files import sha256_file
from umx.model import OpenUnmix
from umx.modeldir import save_separator
from umx.separator import Separator
from umx.transforms import Spectrogram
from umx.zoo import DEFAULT_MODEL, FALLBACK_MODEL

pytestmark = [
    pytest.mark.skipif(shutil.which("ffprobe") is None, reason="musdb needs ffprobe"),
    # torch on one thread in this process: the models are tiny, and on a busy machine a second
    # thread makes every LSTM step wait for it
    pytest.mark.usefixtures("one_thread"),
]

RATE = 16000
SECONDS = 3.0
N_FFT, N_HOP = 512, 128
NAMES = ("Artist A - Song One", "Artist B - Song Two")
# Vocals and accompaniment: museval scores two sources about eight times faster than four.
VOC_ACC = {"vocals": ["vocals"], "accompaniment": ["drums", "bass", "other"]}


def make_sources(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Four distinct mono sources `(nb_timesteps,)`: a vibrato voice, noise bursts, a low sine
    and a high chord, with random pitches and tempo."""
    t = np.arange(int(SECONDS * RATE)) / RATE
    pitch = rng.uniform(300, 500) * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    vocals = 0.2 * sum(np.sin(k * phase) / k for k in (1, 2, 3))
    period = int(RATE * rng.uniform(0.2, 0.3))
    drums = 0.3 * rng.standard_normal(t.size) * np.exp(-(np.arange(t.size) % period) / 400)
    bass = 0.3 * np.sin(2 * np.pi * rng.uniform(50, 90) * t)
    other = 0.1 * sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(1500, 3000, 3))
    return {"vocals": vocals, "drums": drums, "bass": bass, "other": other}


def write_track(folder, sources):
    folder.mkdir(parents=True)
    for name, audio in sources.items():
        sf.write(folder / f"{name}.wav", audio, RATE)
    sf.write(folder / "mixture.wav", sum(sources.values()), RATE)


def write_set(root, names, seed):
    rng = np.random.default_rng(seed)
    for name in names:
        write_track(root / "test" / name, make_sources(rng))
    return root


def train_separator(seed: int = 1, steps: int = 20, nb_frames: int = 32) -> Separator:
    """Four tiny Open-Unmix models fitted for a few steps on other generated tracks."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    examples = [make_sources(rng) for _ in range(3)]
    spectrogram = Spectrogram(N_FFT, N_HOP)

    def magnitudes(signals):  # excerpts (nb_samples, 1, nb_bins, nb_frames): short LSTM runs
        spec = spectrogram(torch.tensor(np.stack(signals), dtype=torch.float32)[:, None])
        return torch.cat(spec[..., : spec.shape[-1] // nb_frames * nb_frames].split(nb_frames, -1))

    mixture = magnitudes([sum(example.values()) for example in examples])
    models = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # for models this small, threads cost more than they give
    try:
        for target in SOURCES:
            wanted = magnitudes([example[target] for example in examples])
            model = OpenUnmix(N_FFT // 2 + 1, 1, hidden_size=16, nb_layers=1)
            optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
            for _ in range(steps):
                optimizer.zero_grad()
                F.mse_loss(model(mixture), wanted).backward()
                optimizer.step()
            models[target] = model.freeze()
    finally:
        torch.set_num_threads(threads)
    return Separator(models, sample_rate=RATE, n_fft=N_FFT, n_hop=N_HOP, nb_channels=1)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_set(tmp_path_factory.mktemp("musdb"), NAMES, seed=0)


@pytest.fixture(scope="module")
def tracks(root):
    return load_tracks(root, is_wav=True)


@pytest.fixture(scope="module")
def separator():
    return train_separator()


@pytest.fixture(scope="module")
def evaldirs(tmp_path_factory, tracks, separator):
    """Vocals/accompaniment scores of the baselines and of the trained model, run serially."""
    base = tmp_path_factory.mktemp("evals")
    methods = {
        "mix": BaselineMethod("mix", VOC_ACC),
        "irm": BaselineMethod("irm", VOC_ACC),
        "model": ModelMethod(separator, VOC_ACC, segment=1.0, overlap=0.25),
    }
    for name, method in methods.items():
        summary = evaluate(tracks, method, base / name, progress=False)
        assert summary.evaluated == list(NAMES) and not summary.failed
    return {name: base / name for name in methods}


def table_of(evaldir, name="method"):
    return score_table(method_scores({name: load_scores(evaldir)})).loc[name]


def options(*argv):
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return parser.parse_args([str(arg) for arg in argv])


# --- oracle masks -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["irm", "ibm"])
def test_oracle_estimates_add_up_to_the_mixture(kind):
    sources = {
        name: torch.tensor(s[None], dtype=torch.float32)
        for name, s in make_sources(np.random.default_rng(3)).items()
    }
    mixture = sum(sources.values())
    estimates = oracle(kind, mixture, sources, n_fft=N_FFT, n_hop=N_HOP)
    assert list(estimates) == list(SOURCES)
    assert all(e.shape == mixture.shape for e in estimates.values())
    assert torch.allclose(sum(estimates.values()), mixture, atol=1e-5)


@pytest.mark.parametrize("kind", ["irm", "ibm"])
def test_oracle_recovers_sources_in_separate_bands(kind):
    t = torch.arange(int(SECONDS * RATE)) / RATE
    sources = {
        "low": 0.5 * torch.sin(2 * torch.pi * 200 * t)[None],
        "high": 0.3 * torch.sin(2 * torch.pi * 3000 * t)[None],
    }
    estimates = oracle(kind, sum(sources.values()), sources, n_fft=N_FFT, n_hop=N_HOP)
    for name, source in sources.items():
        error = (estimates[name] - source).norm() / source.norm()
        assert error < 1e-2, (name, error)  # -40 dB: only window leakage is misassigned


def test_oracle_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown oracle"):
        oracle("mix", torch.zeros(1, 1000), {"a": torch.zeros(1, 1000)})
    with pytest.raises(UmxError, match="unknown baseline 'wiener'"):
        BaselineMethod("wiener")


# --- scores ---------------------------------------------------------------------------------------


def test_perfect_estimates_score_far_above_the_mixture(root, tracks, evaldirs, tmp_path):
    rng = np.random.default_rng(4)
    for track in tracks:
        folder = tmp_path / "perfect" / "test" / track.name
        folder.mkdir(parents=True)
        for name, group in VOC_ACC.items():
            reference = sum(sf.read(root / "test" / track.name / f"{s}.wav")[0] for s in group)
            noise = 1e-4 * rng.standard_normal(reference.shape)  # a perfect estimate has no score
            sf.write(folder / f"{name}.wav", reference + noise, RATE, subtype="FLOAT")
    summary = evaluate(
        tracks, EstimatesMethod(tmp_path / "perfect"), tmp_path / "ev", progress=False
    )
    assert summary.evaluated == list(NAMES)
    perfect, mix = table_of(tmp_path / "ev"), table_of(evaldirs["mix"])
    assert (perfect["SDR"] > 40).all()
    assert (mix["SDR"] < 5).all()
    assert (perfect["SDR"] - mix["SDR"] > 35).all()


def test_oracle_beats_trained_model_beats_mixture(evaldirs):
    irm, model, mix = (table_of(evaldirs[name]) for name in ("irm", "model", "mix"))
    assert (irm["SDR"] > model["SDR"] + 5).all()  # measured: 24/27 dB vs 7/11 dB
    assert (model["SDR"] > mix["SDR"] + 3).all()  # vs -4/4 dB


def test_four_targets_in_museval_json_format(tracks, tmp_path):
    summary = evaluate(tracks[:1], BaselineMethod("ibm"), tmp_path / "ibm", progress=False)
    assert summary.evaluated == [NAMES[0]]
    assert json_path(tmp_path / "ibm", tracks[0]) == tmp_path / "ibm" / "test" / f"{NAMES[0]}.json"
    store = museval.EvalStore()
    store.add_eval_dir(tmp_path / "ibm")
    assert set(store.df["track"]) == {NAMES[0]}
    assert set(store.df["target"]) == set(SOURCES)
    assert set(store.df["metric"]) == set(METRICS)
    assert len(store.df) == len(SOURCES) * len(METRICS) * 3  # 1 s windows over 3 s
    assert np.isfinite(store.df["score"].astype(float)).all()
    methods = museval.MethodStore()
    methods.add_eval_dir(tmp_path / "ibm")
    ours = table_of(tmp_path / "ibm")
    theirs = methods.agg_frames_tracks_scores().loc["ibm"].unstack("metric")
    assert np.allclose(ours.to_numpy(), theirs.loc[list(SOURCES), list(METRICS)].to_numpy())
    assert (ours["SDR"] > 10).all()


def test_aggregate_is_median_over_frames_then_tracks(evaldirs):
    table = table_of(evaldirs["model"])
    for target in VOC_ACC:
        for metric in METRICS:
            per_track = []
            for name in NAMES:
                data = json.loads((evaldirs["model"] / "test" / f"{name}.json").read_text())
                (frames,) = [t["frames"] for t in data["targets"] if t["name"] == target]
                per_track.append(np.median([frame["metrics"][metric] for frame in frames]))
            assert table.loc[target, metric] == pytest.approx(np.median(per_track), abs=1e-9)


def test_parallel_run_gives_the_same_scores(tracks, separator, evaldirs, tmp_path):
    method = ModelMethod(separator, VOC_ACC, segment=1.0, overlap=0.25)
    summary = evaluate(tracks, method, tmp_path / "parallel", jobs=2, progress=False)
    assert summary.evaluated == list(NAMES) and not summary.failed
    for name in NAMES:
        parallel = (tmp_path / "parallel" / "test" / f"{name}.json").read_text()
        assert parallel == (evaldirs["model"] / "test" / f"{name}.json").read_text()


def test_resumed_run_skips_done_tracks(tracks, tmp_path):
    method, evaldir = BaselineMethod("irm", VOC_ACC), tmp_path / "irm"
    assert evaluate(tracks, method, evaldir, progress=False).evaluated == list(NAMES)
    kept, removed = (evaldir / "test" / f"{name}.json" for name in NAMES)
    first = removed.read_text()
    removed.unlink()
    stamp = kept.stat().st_mtime_ns
    summary = evaluate(tracks, method, evaldir, progress=False)
    assert summary.skipped == [NAMES[0]] and summary.evaluated == [NAMES[1]]
    assert kept.stat().st_mtime_ns == stamp
    assert removed.read_text() == first
    assert not list(evaldir.rglob(".*.tmp"))
    summary = evaluate(tracks[:1], method, evaldir, force=True, progress=False)
    assert summary.evaluated == [NAMES[0]] and not summary.skipped
    assert kept.stat().st_mtime_ns != stamp


def test_resume_refuses_scores_made_by_another_method_or_settings(tracks, tmp_path):
    """Scores are reused only when made the same way: another method, model, model option
    or BSSEval setting is refused before any track is scored, and the scores are kept."""
    evaldir, done = tmp_path / "ev", json_path(tmp_path / "ev", tracks[0])
    assert evaluate(tracks[:1], BaselineMethod("mix", VOC_ACC), evaldir, progress=False).evaluated
    kept = done.read_text()
    for method, settings, differs in [
        (BaselineMethod("irm", VOC_ACC), {}, "method mix, now irm"),
        (BaselineMethod("mix"), {}, "aggregate"),
        (BaselineMethod("mix", VOC_ACC), {"win": 2.0}, "win 1.0, now 2.0"),
        (BaselineMethod("mix", VOC_ACC), {"hop": 0.5}, "hop 1.0, now 0.5"),
        (BaselineMethod("mix", VOC_ACC), {"metrics": "museval"}, "metrics fast, now museval"),
    ]:
        with pytest.raises(UmxError) as error:
            evaluate(tracks, method, evaldir, progress=False, **settings)
        message = str(error.value)
        assert message.startswith(f"{evaldir} already holds scores of 1 track made ")
        assert differs in message and "--evaldir" in message and "--force" in message
        assert "\n" not in message
        assert done.read_text() == kept and not json_path(evaldir, tracks[1]).exists()
    # the same method and settings resume, --force scores again
    assert evaluate(tracks, BaselineMethod("mix", VOC_ACC), evaldir, progress=False).skipped
    irm = BaselineMethod("irm", VOC_ACC)
    summary = evaluate(tracks[:1], irm, evaldir, force=True, progress=False)
    assert summary.evaluated == [NAMES[0]] and json.loads(done.read_text())["method"] == "irm"


def test_resume_tells_models_apart_by_their_weights_and_options(tracks, separator, tmp_path):
    evaldir, done = tmp_path / "ev", json_path(tmp_path / "ev", tracks[0])
    separator.model_name = "small"
    try:
        method = ModelMethod(separator, VOC_ACC, segment=1.0, overlap=0.25)
        assert evaluate(tracks[:1], method, evaldir, progress=False).evaluated
        kept = done.read_text()
        same = copy.deepcopy(separator)  # the same weights, loaded again
        again = ModelMethod(same, VOC_ACC, 1.0, 0.25)
        assert evaluate(tracks[:1], again, evaldir, progress=False).skipped == [NAMES[0]]
        other = copy.deepcopy(separator)  # another model of the same name
        with torch.no_grad():
            next(other.target_models["drums"].parameters()).add_(1e-3)
        for changed, differs in [
            (
                ModelMethod(other, VOC_ACC, 1.0, 0.25),
                f"model sha256 {model_sha256(separator)[:12]}…, now {model_sha256(other)[:12]}…)",
            ),
            (ModelMethod(separator, VOC_ACC, None, 0.25), "segment 1.0, now none"),
            (ModelMethod(separator, VOC_ACC, 1.0, 0.5), "overlap 0.25, now 0.5"),
        ]:
            with pytest.raises(UmxError, match=re.escape(differs)):
                evaluate(tracks[:1], changed, evaldir, progress=False)
        same.niter = 2
        with pytest.raises(UmxError, match="niter 1, now 2"):
            evaluate(tracks[:1], ModelMethod(same, VOC_ACC, 1.0, 0.25), evaldir, progress=False)
        assert done.read_text() == kept
    finally:
        separator.model_name = None


def test_resume_refuses_scores_that_do_not_record_how_they_were_made(tracks, tmp_path):
    """Scores written before umx recorded their settings cannot be checked: refused too."""
    evaldir, done = tmp_path / "ev", json_path(tmp_path / "ev", tracks[0])
    method = BaselineMethod("mix", VOC_ACC)
    assert evaluate(tracks[:1], method, evaldir, progress=False).evaluated
    old = json.loads(done.read_text())
    old.pop("settings", None)
    done.write_text(json.dumps(old))
    with pytest.raises(UmxError) as error:
        evaluate(tracks, method, evaldir, progress=False)
    assert str(error.value).startswith(f"{evaldir} already holds scores of 1 track that do not ")
    assert json.loads(done.read_text()) == old and not json_path(evaldir, tracks[1]).exists()
    assert evaluate(tracks[:1], method, evaldir, force=True, progress=False).evaluated


def test_partly_silent_reference_gives_unscored_frames(tmp_path, caplog):
    sources = make_sources(np.random.default_rng(5))
    sources["vocals"][: RATE + RATE // 2] = 0.0  # silent over the whole first window
    write_track(tmp_path / "db" / "test" / "quiet", sources)
    caplog.set_level(logging.INFO, logger="umx.evaluate")
    tracks = load_tracks(tmp_path / "db", is_wav=True)
    summary = evaluate(tracks, BaselineMethod("irm", VOC_ACC), tmp_path / "ev", progress=False)
    assert summary.evaluated == ["quiet"]
    data = json.loads((tmp_path / "ev" / "test" / "quiet.json").read_text())
    for target in data["targets"]:  # museval leaves a window unscored for every target
        sdr = [frame["metrics"]["SDR"] for frame in target["frames"]]
        assert np.isnan(sdr[0]) and np.isfinite(sdr[1:]).all()
    assert "quiet: 1 of 3 frames of vocals have no score" in caplog.text
    assert np.isfinite(table_of(tmp_path / "ev").to_numpy()).all()


# --- bad input ------------------------------------------------------------------------------------


def test_root_without_tracks(tmp_path):
    with pytest.raises(UmxError, match="does not exist"):
        load_tracks(tmp_path / "nowhere", is_wav=True)
    (tmp_path / "test").mkdir()
    with pytest.raises(UmxError, match=f"{tmp_path / 'test'} holds no MUSDB18 tracks"):
        load_tracks(tmp_path, is_wav=True)


def test_selected_tracks(root):
    assert [track.name for track in load_tracks(root, is_wav=True, names=NAMES[1:])] == list(
        NAMES[1:]
    )
    with pytest.raises(UmxError) as error:
        load_tracks(root, is_wav=True, names=["nope"])
    assert str(error.value) == (
        f"{root / 'test'} has no track named 'nope'; its tracks: 'Artist A - Song One', "
        "'Artist B - Song Two'"
    )


def test_an_unknown_track_of_many_lists_some(tmp_path):
    """Of 50 tracks the first five are named, or those closest to the name given first."""
    from umx.evaluate import tracks as tracks_module

    names = [f"Band {i:02d} - Tune" for i in range(50)]
    assert tracks_module._some_names("Zzz", names) == (
        "first 5 of its 50: " + ", ".join(repr(name) for name in names[:5])
    )
    assert tracks_module._some_names("Band 42 - Tun", names).startswith(
        "5 of its 50, closest first: 'Band 42 - Tune', "
    )


def test_missing_extra_is_named(tmp_path, monkeypatch):
    (tmp_path / "test").mkdir()
    monkeypatch.setitem(sys.modules, "musdb", None)  # as if not installed
    with pytest.raises(UmxError) as error:
        load_tracks(tmp_path)
    assert str(error.value) == "umx evaluate needs musdb: pip install 'umx[evaluate]'"


def one_track_set(tmp_path, change=None):
    sources = make_sources(np.random.default_rng(6))
    if change is not None:
        change(sources)
    write_track(tmp_path / "db" / "test" / "song", sources)
    return load_tracks(tmp_path / "db", is_wav=True)


def test_failing_track_is_reported_and_the_others_go_on(root, tmp_path, caplog, capsys):
    shutil.copytree(root, tmp_path / "db")
    (tmp_path / "db" / "test" / NAMES[1] / "bass.wav").unlink()
    args = options(
        "--root", tmp_path / "db", "--is-wav", "--method", "mix",
        "--aggregate", json.dumps(VOC_ACC), "--evaldir", tmp_path / "mix",
    )  # fmt: skip
    assert run_evaluate(args) == 1
    missing = tmp_path / "db" / "test" / NAMES[1] / "bass.wav"
    assert f"{missing} is missing: no bass reference" in caplog.text
    assert (tmp_path / "mix" / "test" / f"{NAMES[0]}.json").is_file()
    assert not (tmp_path / "mix" / "test" / f"{NAMES[1]}.json").exists()
    printed = capsys.readouterr().out
    assert "| mix | vocals |" in printed and "| mix | accompaniment |" in printed
    assert (tmp_path / "mix" / "scores.md").read_text() == printed


def test_scores_the_file_system_refuses_to_write_are_those_tracks_failures(tracks, tmp_path):
    """A full disk (here a file size limit) fails each track in one line naming the file, and
    leaves no file."""
    with file_size_limit(1024):
        summary = evaluate(tracks, BaselineMethod("mix"), tmp_path / "mix", progress=False)
    assert summary.evaluated == []
    assert summary.failed == {
        track.name: f"{track.name}: {json_path(tmp_path / 'mix', track)}: File too large"
        for track in tracks
    }
    assert [path for path in (tmp_path / "mix").rglob("*") if path.is_file()] == []


def test_silent_reference_is_reported(tmp_path):
    tracks = one_track_set(tmp_path, lambda sources: sources["bass"].fill(0.0))
    summary = evaluate(tracks, BaselineMethod("mix"), tmp_path / "ev", progress=False)
    message = summary.failed["song"]
    assert str(tmp_path / "db" / "test" / "song" / "bass.wav") in message
    assert "reference is silent" in message
    assert not (tmp_path / "ev" / "test" / "song.json").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda audio, rate: (audio[:-100], rate), "has 47900 samples, the track 48000"),
        (lambda audio, rate: (np.stack([audio] * 2, 1), rate), "has 2 channels, the track 1: "),
        (  # not read_audio's advice: umx evaluate has no --downmix
            lambda audio, rate: (np.stack([audio] * 3, 1), rate),
            "has 3 channels, the track 1: an estimate has the channels of its track",
        ),
        (lambda audio, rate: (audio, 22050), "is at 22050 Hz but the track at 16000 Hz"),
    ],
    ids=["length", "channels", "three-channels", "rate"],
)
def test_bad_estimates_are_refused(tmp_path, change, message):
    tracks = one_track_set(tmp_path)
    folder = tmp_path / "est" / "test" / "song"
    folder.mkdir(parents=True)
    for name in SOURCES:
        audio, rate = sf.read(tmp_path / "db" / "test" / "song" / f"{name}.wav")
        if name == "drums":
            audio, rate = change(audio, rate)
        sf.write(folder / f"{name}.wav", audio, rate)
    summary = evaluate(tracks, EstimatesMethod(tmp_path / "est"), tmp_path / "ev", progress=False)
    assert summary.failed["song"].startswith(f"{folder / 'drums.wav'} {message}")


def write_estimates(root, folder, targets=SOURCES):
    """Estimates of each track of `root`: its references of `targets` plus a little noise."""
    rng = np.random.default_rng(7)
    for name in NAMES:
        (folder / "test" / name).mkdir(parents=True)
        for target in targets:
            reference, rate = sf.read(root / "test" / name / f"{target}.wav")
            noise = 0.01 * rng.standard_normal(reference.shape)
            sf.write(folder / "test" / name / f"{target}.wav", reference + noise, rate)


def to_flac(path):
    sf.write(path.with_suffix(".flac"), *sf.read(path))
    path.unlink()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda folder: (folder / "bass.wav").unlink(),
            "{folder}/bass.wav is missing, but {other}/bass.wav exists: every track is scored "
            "on the same targets (estimate bass for this track too, or move the other tracks' "
            "bass estimates away)",
        ),
        (
            lambda folder: to_flac(folder / "vocals.wav"),
            "{folder}/vocals.flac is not read: estimates are read as wav files, so this track "
            "has no vocals estimate (save it as vocals.wav)",
        ),
    ],
    ids=["missing", "flac"],
)
def test_a_track_without_an_estimate_other_tracks_have_fails(
    root, tracks, tmp_path, change, message
):
    """Not scored as a smaller problem (a higher SIR, its medians mixed with the others')."""
    write_estimates(root, tmp_path / "est")
    folder, other = (tmp_path / "est" / "test" / name for name in (NAMES[1], NAMES[0]))
    change(folder)
    summary = evaluate(tracks, EstimatesMethod(tmp_path / "est"), tmp_path / "ev", progress=False)
    assert summary.evaluated == [NAMES[0]]
    assert summary.failed == {NAMES[1]: message.format(folder=folder, other=other)}
    assert not (tmp_path / "ev" / "test" / f"{NAMES[1]}.json").exists()


def test_every_track_may_have_the_same_few_targets(root, tracks, tmp_path):
    write_estimates(root, tmp_path / "est", targets=["vocals"])
    for name in NAMES:  # beside the wav file, a file in another format is left alone
        sf.write(tmp_path / "est" / "test" / name / "vocals.flac", np.zeros(16), RATE)
    summary = evaluate(tracks, EstimatesMethod(tmp_path / "est"), tmp_path / "ev", progress=False)
    assert summary.evaluated == list(NAMES)
    assert set(load_scores(tmp_path / "ev").df["target"]) == {"vocals"}


def test_only_the_tracks_evaluated_say_which_targets_are_scored(root, tracks, tmp_path):
    write_estimates(root, tmp_path / "est", targets=["vocals", "bass"])
    shutil.copy(root / "test" / NAMES[1] / "drums.wav", tmp_path / "est" / "test" / NAMES[1])
    method = EstimatesMethod(tmp_path / "est", (NAMES[0],))
    assert evaluate(tracks[:1], method, tmp_path / "ev", progress=False).evaluated == [NAMES[0]]
    assert set(load_scores(tmp_path / "ev").df["target"]) == {"vocals", "bass"}


def test_resume_refuses_a_scored_track_without_an_estimate_other_tracks_have(
    root, tracks, tmp_path
):
    """Its scores, made when no track had drums, would mix in the medians with the others'."""
    write_estimates(root, tmp_path / "est", targets=["vocals", "bass"])
    method = EstimatesMethod(tmp_path / "est")
    assert evaluate(tracks[:1], method, tmp_path / "ev", progress=False).evaluated == [NAMES[0]]
    drums = tmp_path / "est" / "test" / NAMES[1] / "drums.wav"
    shutil.copy(root / "test" / NAMES[1] / "drums.wav", drums)
    with pytest.raises(UmxError) as error:
        evaluate(tracks, method, tmp_path / "ev", progress=False)
    assert str(error.value).startswith(
        f"{tmp_path / 'est' / 'test' / NAMES[0] / 'drums.wav'} is missing, but {drums} exists"
    )


def test_score_track_needs_musdb_targets(tracks):
    silence = np.zeros((int(SECONDS * RATE), 1))
    with pytest.raises(UmxError, match="no reference for speech"):
        score_track(tracks[0], {"vocals": silence, "speech": silence})
    with pytest.raises(UmxError, match="no estimate"):
        score_track(tracks[0], {})


@pytest.mark.parametrize("metrics", ["fast", "museval"])
def test_one_estimate_is_scored_with_the_rest_of_the_mixture(tracks, metrics):
    """museval leaves a single estimate unscored; here it is scored as vocals is with the
    accompaniment: against the mixture minus its reference."""
    track = tracks[0]
    mixture, vocals = track.audio, track.targets["vocals"].audio
    rng = np.random.default_rng(0)
    estimate = vocals + 0.05 * rng.standard_normal(vocals.shape)
    alone = score_track(track, {"vocals": estimate}, metrics=metrics)
    paired = museval.eval_mus_track(
        track, {"vocals": estimate, "accompaniment": mixture - estimate}
    )
    assert [target["name"] for target in alone.scores["targets"]] == ["vocals"]
    for metric in METRICS:
        got = [float(frame["metrics"][metric]) for frame in alone.scores["targets"][0]["frames"]]
        expected = [
            float(frame["metrics"][metric]) for frame in paired.scores["targets"][0]["frames"]
        ]
        # the files hold 16-bit samples: the mixture minus the vocals is the accompaniment
        # to 1/32768 per sample, a few hundredths of a dB
        np.testing.assert_allclose(got, expected, rtol=0, atol=0.05)
    sdr = [float(frame["metrics"]["SDR"]) for frame in alone.scores["targets"][0]["frames"]]
    assert np.median(sdr) > 10  # the small noise scores well, not as the mixture would


def test_model_options_need_a_model(tmp_path):
    args = options(
        "--root", tmp_path / "db", "--method", "irm", "--niter", "2", "--evaldir", tmp_path / "ev"
    )
    with pytest.raises(UmxError, match="--niter applies to --model only"):
        run_evaluate(args)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"jobs": 0}, "--jobs must be at least 1"),
        ({"hop": 0.0}, "--hop must be a positive number of seconds, got 0.0"),
        ({"win": float("nan")}, "--win must be a positive number of seconds, got nan"),
        ({"hop": float("inf")}, "--hop must be a positive number of seconds, got inf"),
        ({"win": -1.0}, "--win must be a positive number of seconds, got -1.0"),
    ],
)
def test_bad_settings_are_refused(tracks, tmp_path, settings, message):
    with pytest.raises(UmxError, match=message):
        evaluate(tracks, BaselineMethod("mix"), tmp_path, progress=False, **settings)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "mix", "--evaldir", "{tmp}/file"], "--evaldir {tmp}/file is a file"),
        (["--method", "mix", "--outdir", "{tmp}/file"], "--outdir {tmp}/file is a file"),
        (["--method", "mix", "--compare", "{tmp}/none"], "--compare {tmp}/none: {tmp}/none/test"),
        (["--model", "{tmp}", "--device", "meta"], "unknown device 'meta'"),
        (["--method", "mix", "--win", "nan"], "--win must be a positive number of seconds"),
    ],
)
def test_bad_command_lines_are_refused_before_any_work(root, tmp_path, argv, message):
    (tmp_path / "file").touch()
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    if "--evaldir" not in argv:
        argv += ["--evaldir", str(tmp_path / "ev")]
    with pytest.raises(UmxError, match=re.escape(message.format(tmp=tmp_path))):
        run_evaluate(options("--root", root, "--is-wav", "-q", *argv))
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"root": None}, "no test set: give --root (or set MUSDB_PATH), or --compare DIR..."),
        ({"evaldir": None}, "--evaldir must be a folder, not None"),
        ({"subset": "dev"}, "--subset must be one of train, test, not 'dev'"),
        ({"method": "wiener"}, "--method must be one of "),
        ({"method": "mix", "estimates": "est"}, "--estimates and --method are two methods"),
        ({"estimates": "est", "aggregate": VOC_ACC}, "--aggregate does not apply to --estimates"),
        ({"is_wav": "yes"}, "--is-wav must be True or False, not 'yes'"),
        ({"force": 1}, "--force must be True or False, not 1"),
        ({"win": 0}, "--win must be a positive number of seconds"),
        ({"jobs": 0}, "--jobs must be at least 1"),
        ({"separation": "umxl"}, "separation must be SeparationOptions, not 'umxl'"),
    ],
)
def test_evaluate_options_refuse_what_the_command_refuses(tmp_path, changes, message):
    arguments = {"evaldir": tmp_path / "ev", "root": tmp_path, "method": "mix", **changes}
    if "estimates" in changes:
        arguments["method"] = changes.get("method")
    with pytest.raises(UmxError, match="^" + re.escape(message)):
        EvaluateOptions(**arguments)
    assert not (tmp_path / "ev").exists()


def test_run_evaluation_scores_and_returns_the_tables_the_command_prints(
    root, evaldirs, tmp_path, capsys
):
    """The library run of `umx evaluate` writes the scores the command writes and returns
    the tables it prints, comparison included."""
    typed = EvaluateOptions(
        tmp_path / "lib",
        root=root,
        is_wav=True,
        method="irm",
        aggregate=VOC_ACC,
        compare=[evaldirs["mix"]],
    )
    evaluation = run_evaluation(typed, progress=False)
    assert evaluation.summary.evaluated == list(NAMES) and not evaluation.summary.failed
    assert len(evaluation.tables) == 2
    argv = ["--root", root, "--is-wav", "-q", "--method", "irm", "--aggregate", json.dumps(VOC_ACC)]
    argv += ["--compare", evaldirs["mix"], "--evaldir", tmp_path / "cli"]
    capsys.readouterr()
    assert run_evaluate(options(*argv)) == 0
    assert capsys.readouterr().out == "".join(evaluation.tables)
    assert table_of(tmp_path / "lib").equals(table_of(tmp_path / "cli"))
    assert table_of(tmp_path / "lib").equals(table_of(evaldirs["irm"]))


def test_every_option_has_help():
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    assert all(action.help for action in parser._actions)


# --- command line ---------------------------------------------------------------------------------


def test_cli_model_outdir_estimates_and_compare(root, separator, evaldirs, tmp_path, capsys):
    save_separator(separator, tmp_path / "small")
    common = ("--root", root, "--is-wav", "-q")
    model = options(
        *common, "--model", tmp_path / "small", "--aggregate", json.dumps(VOC_ACC),
        "--segment", "1", "--overlap", "0.25", "--device", "cpu", "--outdir", tmp_path / "stems",
        "--evaldir", tmp_path / "umx",
    )  # fmt: skip
    assert run_evaluate(model) == 0
    for name in NAMES:
        assert sorted(p.name for p in (tmp_path / "stems" / "test" / name).iterdir()) == [
            ".umx-evaluate.json",  # what wrote them, for a resumed run
            "accompaniment.wav",
            "vocals.wav",
        ]
    # the CLI loads the saved model and scores exactly as the same separator in memory; the
    # JSON names the model loaded (a separator built by hand has no name) and records the same
    # settings, the SHA-256 of the model's weights included
    for name in NAMES:
        scores = json.loads((tmp_path / "umx" / "test" / f"{name}.json").read_text())
        in_memory = json.loads((evaldirs["model"] / "test" / f"{name}.json").read_text())
        assert scores.pop("method") == "small" and "method" not in in_memory
        assert scores["settings"]["model sha256"] == model_sha256(separator)
        assert scores == in_memory
    # the written stems, evaluated from disk, score exactly the same
    again = options(*common, "--estimates", tmp_path / "stems", "--evaldir", tmp_path / "disk")
    assert run_evaluate(again) == 0
    for name in NAMES:
        scores = json.loads((tmp_path / "disk" / "test" / f"{name}.json").read_text())
        assert scores.pop("method") == "stems"
        assert (
            scores["targets"]
            == json.loads((tmp_path / "umx" / "test" / f"{name}.json").read_text())["targets"]
        )
    assert "| small | vocals |" in (tmp_path / "umx" / "scores.md").read_text()
    table = table_of(tmp_path / "umx")
    assert list(table.index) == ["vocals", "accompaniment"]
    assert list(table.columns) == list(METRICS)
    capsys.readouterr()

    compare = options(
        "--compare",
        tmp_path / "umx",
        evaldirs["irm"],
        evaldirs["mix"],
        "--evaldir",
        tmp_path / "cmp",
    )
    assert run_evaluate(compare) == 0
    lines = capsys.readouterr().out.splitlines()
    # the methods side by side: a row per target and metric, a column per method
    assert lines[0] == "| target | metric | small | irm | mix |"
    rows = [line.strip("| ").split(" | ") for line in lines[2:]]
    assert [row[:2] for row in rows] == [[t, m] for t in VOC_ACC for m in METRICS]
    alone = {"small": table, "irm": table_of(evaldirs["irm"]), "mix": table_of(evaldirs["mix"])}
    for target, metric, *values in rows:
        expected = [f"{alone[m].loc[target, metric]:.2f}" for m in ("small", "irm", "mix")]
        assert values == expected
    assert (tmp_path / "cmp" / "compare.md").read_text().splitlines() == lines
    csv = (tmp_path / "cmp" / "compare.csv").read_text().splitlines()
    assert csv[0] == "target,metric,small,irm,mix" and csv[1].startswith("vocals,SDR,")
    for metric in METRICS:
        with open(tmp_path / "cmp" / f"compare_{metric}.png", "rb") as png:
            assert png.read(8) == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / "umx" / f"scores_{metric}.png").is_file()


def test_cli_model_with_one_target(root, separator, tracks, tmp_path):
    """One target: the Wiener EM filters it with the rest of the mixture, and BSSEval scores
    it with the rest of the mixture as the second source (once two refusals)."""
    save_separator(separator, tmp_path / "small")
    args = options(
        "--root", root, "--is-wav", "-q", "--model", tmp_path / "small", "--targets", "vocals",
        "--outdir", tmp_path / "stems", "--evaldir", tmp_path / "ev",
    )  # fmt: skip
    assert run_evaluate(args) == 0
    for track in tracks:
        assert [p.name for p in (tmp_path / "stems" / "test" / track.name).glob("*.wav")] == [
            "vocals.wav"
        ]
        estimate, _ = sf.read(tmp_path / "stems" / "test" / track.name / "vocals.wav")
        with _audio_in_memory(track):  # as evaluate reads it: (nb_timesteps, nb_channels)
            expected = json.loads(score_track(track, {"vocals": estimate[:, None]}).json)
        scores = json.loads((tmp_path / "ev" / "test" / f"{track.name}.json").read_text())
        assert scores["targets"] == expected["targets"]
    assert list(table_of(tmp_path / "ev").index) == ["vocals"]


def test_without_model_the_default_is_loaded_and_named_after_the_model_used(
    root, separator, tmp_path, monkeypatch, capsys
):
    asked = []

    def load(options, progress):  # as umx.zoo does offline: the default falls back to umxsynth
        asked.append(options.model)
        separator.model_name = FALLBACK_MODEL
        return separator

    monkeypatch.setattr(api, "separator_for", load)
    try:
        args = options(
            "--root", root, "--is-wav", "-q", "--tracks", NAMES[0], "--evaldir", tmp_path / "ev",
            "--aggregate", json.dumps(VOC_ACC), "--segment", "1", "--overlap", "0.25",
        )  # fmt: skip
        assert run_evaluate(args) == 0
    finally:
        separator.model_name = None
    assert asked == [None]  # as `umx separate` without --model
    scores = json.loads((tmp_path / "ev" / "test" / f"{NAMES[0]}.json").read_text())
    assert scores["method"] == FALLBACK_MODEL
    assert f"| {FALLBACK_MODEL} | vocals |" in capsys.readouterr().out


def test_the_help_and_the_docs_agree_on_the_defaults():
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    helps = {option: action.help for action in parser._actions for option in action.option_strings}
    assert f"(default: {DEFAULT_MODEL}," in helps["--model"]
    assert f"the bundled {FALLBACK_MODEL} when {DEFAULT_MODEL}" in helps["--model"]
    docs = (Path(__file__).parents[1] / "docs" / "evaluation.md").read_text()
    docs = docs.split("\n## Options\n")[1].split("\n## ")[0]
    cell = r"(?:[^|]|\\\|)*"  # a Markdown table cell: | written \|
    rows = re.findall(rf"^\| `(--[\w-]+){cell}\| ({cell}) \|", docs, flags=re.MULTILINE)
    documented = {option: default.strip() for option, default in rows}
    assert documented["--model"] == f"`{DEFAULT_MODEL}` (offline: `{FALLBACK_MODEL}`)"
    for option in ("--subset", "--win", "--hop", "--jobs", "--root"):
        shown = re.search(r"\(default: ([^)]*)\)", helps[option]).group(1)
        assert documented[option] == f"`{shown}`", option


def test_compared_methods_of_one_name_are_told_apart_by_folder(evaldirs, tmp_path, capsys):
    shutil.copytree(evaldirs["mix"], tmp_path / "mix-again")
    args = options("--compare", evaldirs["mix"], tmp_path / "mix-again", "--evaldir", tmp_path)
    assert run_evaluate(args) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header == "| target | metric | mix | mix (mix-again) |"


def test_a_compared_folder_of_the_other_subset_names_the_subset_to_give(evaldirs, tmp_path, capsys):
    from umx.cli import main

    shutil.copytree(evaldirs["mix"] / "test", tmp_path / "ev7" / "train")
    args = ["evaluate", "--compare", str(tmp_path / "ev7"), "--evaldir", str(tmp_path / "out")]
    assert main(args) == 1
    assert capsys.readouterr().err == (
        f"umx: error: --compare {tmp_path / 'ev7'}: {tmp_path / 'ev7' / 'test'} does not exist "
        "(no scores of the test subset); it holds the train subset's: give --subset train\n"
    )
    assert main([*args, "--subset", "train"]) == 0  # the advice followed


def test_methods_compared_on_different_tracks_are_said_to_lack_one_even_with_q(
    evaldirs, tmp_path, capsys
):
    """-q keeps warnings, as every command's does (its help says so); the warning names a track
    that a method lacks, without a `warning:` of its own after `umx:`."""
    from umx.cli import main

    shutil.copytree(evaldirs["mix"], tmp_path / "mix")
    (tmp_path / "mix" / "test" / f"{NAMES[1]}.json").unlink()
    compared = [str(tmp_path / "mix"), str(evaldirs["irm"])]
    assert main(["evaluate", "--compare", *compared, "--evaldir", str(tmp_path), "-q"]) == 0
    assert capsys.readouterr().err == (
        f"umx: the compared methods were evaluated on different tracks (mix lacks '{NAMES[1]}'): "
        "evaluate each on the same ones to compare like with like\n"
    )
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "-q, --quiet no progress bar or messages, only warnings and errors" in help_text
    assert "separate only these targets (default: all of the model's) --niter" in help_text


def test_a_track_with_scores_already_is_said_in_the_singular(root, tmp_path, capsys):
    from umx.cli import main

    args = ["evaluate", "--root", str(root), "--is-wav", "--method", "mix", "--tracks", NAMES[0]]
    args += ["--evaldir", str(tmp_path / "ev")]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0
    assert (
        f"umx: 1 track already had scores in {tmp_path / 'ev'} and was skipped (--force "
        "evaluates them again)"
    ) in capsys.readouterr().err.splitlines()


def test_a_log_file_gets_one_line_per_track_and_no_bar(tracks, tmp_path, monkeypatch, caplog):
    stderr = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", stderr)
    caplog.set_level(logging.INFO, logger="umx.evaluate")
    summary = evaluate(tracks, BaselineMethod("mix", VOC_ACC), tmp_path, progress=True)
    assert summary.evaluated == list(NAMES)
    lines = [r.getMessage() for r in caplog.records if "tracks done" in r.getMessage()]
    assert lines == [f"1 of 2 tracks done: {NAMES[0]}", f"2 of 2 tracks done: {NAMES[1]}"]
    assert "\r" not in stderr.getvalue() and "track/s" not in stderr.getvalue()  # no bar


# --- plots ----------------------------------------------------------------------------------------


def test_the_mixtures_huge_sar_is_left_off_the_shared_axis():
    rng = np.random.default_rng(0)
    model = [rng.uniform(0, 8, 50) for _ in range(4)]
    irm = [rng.uniform(5, 16, 50) for _ in range(4)]
    mix = [rng.uniform(150, 190, 50) for _ in range(4)]
    low, high = score_limits([*model, *irm, *mix], first=4)
    assert -2 < low <= 0 and 16 <= high < 20  # every box of the model and the oracle, readable
    assert all((values > high).all() for values in mix)  # marked off scale by the plot


@pytest.mark.parametrize("spread", [[(-10, 5), (14, 33), (-14, 0)], [(0, 2), (21, 24)]])
def test_boxes_within_a_few_tens_of_db_share_the_axis(spread):
    rng = np.random.default_rng(1)
    boxes = [rng.uniform(a, b, 30) for a, b in spread]
    low, high = score_limits(boxes)
    values = np.concatenate(boxes)
    assert low < values.min() and values.max() < high
    assert high - low < 1.2 * (values.max() - values.min()) + 1


def test_a_far_outlier_does_not_stretch_the_axis_but_a_near_one_does():
    rng = np.random.default_rng(2)
    scores = rng.uniform(0, 10, 40)
    low, high = score_limits([np.append(scores, [-80.0, 14.0])])
    assert -80 < low < 0 and 14 < high < 16


def test_a_tie_goes_to_the_first_method_and_no_scores_give_no_limits():
    first, second = np.array([0.0, 1.0, 2.0]), np.array([100.0, 101.0, 102.0])
    assert score_limits([second, first], first=0)[1] < 10  # no first method: the lower group
    low, high = score_limits([second, first], first=1)
    assert low > 90 and high < 110
    assert score_limits([np.empty(0)]) is None


def test_a_single_methods_box_plot_is_a_readable_panel_not_a_strip(evaldirs, tmp_path):
    from umx.evaluate import plot_scores

    (path, *_) = plot_scores(method_scores({"irm": load_scores(evaldirs["irm"])}), tmp_path, "s")
    header = path.read_bytes()[16:24]  # PNG IHDR: width, height
    width, height = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")
    assert height >= 400 and width / height < 2


def test_box_plots_state_how_many_tracks_they_summarise():
    from umx.evaluate.plots import _box_figure

    rng = np.random.default_rng(3)
    boxes = {
        ("umx", "vocals"): rng.uniform(0, 9, 5),
        ("umx", "drums"): rng.uniform(0, 9, 4),  # a track without a finite score
        ("irm", "vocals"): rng.uniform(5, 15, 5),
        ("irm", "drums"): rng.uniform(5, 15, 5),
    }
    figure = _box_figure(boxes, ["umx", "irm"], ["vocals", "drums"], "SDR", [5, 5])
    assert figure._suptitle.get_text() == "SDR per track, n = 5 tracks"
    labels = [[t.get_text() for t in ax.get_xticklabels()] for ax in figure.axes]
    assert labels == [["umx\nn = 5", "irm\nn = 5"], ["umx\nn = 4", "irm\nn = 5"]]
    single = _box_figure(boxes, ["umx"], ["vocals", "drums"], "SIR", [5])
    assert single.axes[0].get_title() == "umx: SIR per track, n = 5 tracks"
    uneven = _box_figure(boxes, ["umx", "irm"], ["vocals"], "SDR", [1, 5])
    assert uneven._suptitle.get_text() == "SDR per track, n = 1 to 5 tracks"


def test_side_by_side_marks_a_score_a_method_lacks(evaldirs, tmp_path):
    """A method that scored fewer targets leaves a `-` in the others' rows."""
    vocals_only = tmp_path / "vocals-only" / "test"
    vocals_only.mkdir(parents=True)
    for path in (evaldirs["irm"] / "test").glob("*.json"):
        data = json.loads(path.read_text())
        data["targets"] = [t for t in data["targets"] if t["name"] == "vocals"]
        (vocals_only / path.name).write_text(json.dumps(data))
    stores = {"irm": load_scores(evaldirs["irm"]), "voc": load_scores(tmp_path / "vocals-only")}
    table = side_by_side(score_table(method_scores(stores)))
    markdown = to_markdown(table).splitlines()
    assert markdown[2].startswith("| vocals | SDR | ") and not markdown[2].endswith("| - |")
    assert all(line.endswith(" | - |") for line in markdown[6:])
    assert len(markdown) == 2 + 2 * len(METRICS)


class SlowJob:
    """A track job for `_run_jobs` that marks each track it starts and finishes in a folder."""

    def __init__(self, folder: Path, seconds: float) -> None:
        self.folder, self.seconds = folder, seconds

    def run(self, track):
        import time

        (self.folder / f"{track.name}.started").touch()
        time.sleep(self.seconds)
        (self.folder / f"{track.name}.done").touch()
        return scoring._Outcome(track.name, None)


def test_stopped_parallel_run_drops_queued_tracks_and_interrupts_running_ones(tmp_path):
    tracks = [argparse.Namespace(name=f"track-{i:02d}") for i in range(12)]
    outcomes = scoring._run_jobs(SlowJob(tmp_path, 2.0), tracks, jobs=2)
    first = next(outcomes)  # what Ctrl-C or SIGTERM raise in the waiting main thread
    with pytest.raises(KeyboardInterrupt):
        outcomes.throw(KeyboardInterrupt)
    started = sorted(p.stem for p in tmp_path.glob("*.started"))
    done = sorted(p.stem for p in tmp_path.glob("*.done"))
    assert first.track in done
    # the running tracks were interrupted, the queued ones skipped: none ran after the stop
    assert len(started) <= 4 and len(done) <= 2, (started, done)


STOPPED_DRIVER = """
import argparse, os, sys, time
from pathlib import Path

from processes import children
from umx.cli_run import Stopped, stop_on_signals
from umx.evaluate import scoring


class Job:  # a track job whose tracks last far longer than the test
    def __init__(self, folder):
        self.folder = folder

    def run(self, track):
        temporary = self.folder / f".{track.name}.tmp"  # as a writer's, removed when stopped
        temporary.touch()
        try:
            (self.folder / f"{track.name}.{os.getpid()}.started").touch()
            time.sleep(600)
            (self.folder / f"{track.name}.done").touch()
        finally:
            temporary.unlink()


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    tracks = [argparse.Namespace(name=f"track-{i}") for i in range(6)]
    try:
        with stop_on_signals():
            for outcome in scoring._run_jobs(Job(folder), tracks, jobs=2):
                pass
    except KeyboardInterrupt:
        code = 130
    except Stopped as stopped:
        code = 128 + stopped.signum
    # The pool is gone, as when umx logs the stop. A driver may take a while to exit: give a
    # fork server it left that time to do what it would.
    deadline = time.monotonic() + 10
    while children(os.getpid(), b"forkserver") and time.monotonic() < deadline:
        time.sleep(0.01)
    sys.exit(code)
"""


def start_driver(tmp_path):
    """`STOPPED_DRIVER` in its own process group, as a terminal's command is, with stderr to
    `tmp_path / "stderr"`."""
    (tmp_path / "driver.py").write_text(STOPPED_DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    with open(tmp_path / "stderr", "wb") as err:
        return subprocess.Popen(
            [sys.executable, "driver.py", str(tmp_path)], cwd=tmp_path, env=env, stderr=err,
            start_new_session=True,
        )  # fmt: skip


@pytest.mark.parametrize("stop", ["SIGKILL", "Ctrl-C"])
def test_workers_stop_quietly_with_the_driver(tmp_path, stop):
    """SIGKILL or the out-of-memory killer leaves the driver no time to stop its workers: they
    watch it, and stop instead of scoring on unseen. Ctrl-C reaches the workers and the
    driver, which then stops them too: they stop once, with no traceback."""
    driver = start_driver(tmp_path)
    try:
        wait_for(lambda: len(list(tmp_path.glob("*.started"))) == 2, "two tracks started")
        workers = [int(path.suffixes[0][1:]) for path in tmp_path.glob("*.started")]
        if stop == "SIGKILL":
            driver.kill()
        else:
            os.killpg(driver.pid, signal.SIGINT)
        assert driver.wait(timeout=BOUND_S) == (-9 if stop == "SIGKILL" else 130)
        wait_for(lambda: not any(map(running, workers)), "the workers to stop", 30)
    finally:
        driver.kill()
    assert len(list(tmp_path.glob("*.started"))) == 2 and not list(tmp_path.glob("*.done"))
    err = (tmp_path / "stderr").read_text()
    # SIGKILL leaves the driver's semaphores to Python's resource tracker, which says so
    assert "Traceback" not in err and (stop == "SIGKILL" or err == ""), err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signalled_to_the_process_group_stops_the_workers_as_ctrl_c_does(tmp_path, signum):
    """`timeout`, `kill -- -PGID` and a closed terminal signal the driver, its workers, their
    fork server and multiprocessing's resource tracker alike: the workers stop their track as
    on Ctrl-C (they died of SIGTERM with their temporary files left), and the fork server and
    the tracker outlive the signal until the pool has gone (the tracker died of SIGHUP, and the
    driver wrote a warning and a traceback per semaphore)."""
    driver = start_driver(tmp_path)
    try:
        wait_for(lambda: len(list(tmp_path.glob("*.started"))) == 2, "two tracks started")
        workers = [int(path.suffixes[0][1:]) for path in tmp_path.glob("*.started")]
        servers = children(driver.pid, b"forkserver")
        os.killpg(driver.pid, signum)
        assert driver.wait(timeout=BOUND_S) == 128 + signum
        wait_for(lambda: not any(map(running, workers + servers)), "the workers to stop", 30)
    finally:
        driver.kill()
    assert list(tmp_path.glob(".*.tmp")) == [] and not list(tmp_path.glob("*.done"))
    assert (tmp_path / "stderr").read_text() == ""


def test_umx_evaluate_jobs_stopped_through_its_process_group_says_so_and_leaves_nothing(
    tmp_path,
):
    """The real command, in a session of its own as a terminal runs it, stopped by a closed
    terminal (SIGHUP to the process group) once a track is scored: one line and the shell's
    status, no temporary file of scores or estimates, and no process of it left (the resource
    tracker died of it, and the driver wrote a warning and tracebacks as it stopped)."""
    signum = signal.SIGHUP
    rng = np.random.default_rng(3)
    for index in range(4):  # 20 s tracks: a second of work each, the run lasts a few
        sources = {name: np.tile(audio, 7) for name, audio in make_sources(rng).items()}
        write_track(tmp_path / "set" / "test" / f"track-{index}", sources)
    command = [sys.executable, "-m", "umx.cli", "evaluate", "--root", "set", "--is-wav", "-q"]
    command += ["--method", "irm", "--evaldir", "ev", "--outdir", "stems", "--jobs", "2"]
    with open(tmp_path / "stderr", "wb") as err:
        driver = subprocess.Popen(command, cwd=tmp_path, stderr=err, start_new_session=True)
    try:
        wait_for(lambda: list(tmp_path.glob("ev/test/*.json")), "a track scored")
        os.killpg(driver.pid, signum)
        assert driver.wait(timeout=BOUND_S) == 128 + signum
        wait_for(lambda: not in_session(driver.pid), "the run's processes to end", 30)
    finally:
        driver.kill()
    stderr = (tmp_path / "stderr").read_text()
    assert stderr == f"umx: stopped by {signal.Signals(signum).name}\n"
    assert [path for path in tmp_path.rglob(".*") if path.name != ".umx-evaluate.json"] == []


@pytest.mark.parametrize("stop", ["SIGTERM"])
def test_a_run_stopped_while_its_fork_server_starts_stops_quietly(tmp_path, stop):
    """The fork server imports umx, musdb and museval first (seconds): a stopped driver would
    leave it to fork a worker that cannot start once the driver has gone, which writes a
    traceback. It ends with the driver instead."""
    driver = start_driver(tmp_path)
    try:
        servers = wait_for(lambda: children(driver.pid, b"forkserver"), "the fork server")
        if stop == "SIGTERM":
            driver.terminate()
        else:
            os.killpg(driver.pid, signal.SIGINT)
        assert driver.wait(timeout=BOUND_S) == (143 if stop == "SIGTERM" else 130)
        wait_for(lambda: not any(map(running, servers)), "the fork server to end", 30)
    finally:
        driver.kill()
    assert not list(tmp_path.glob("*.started"))
    assert (tmp_path / "stderr").read_text() == ""


def test_the_fork_server_ignores_ctrl_c_from_its_start(tmp_path):
    """Ctrl-C reaches the fork server too, at first while it imports umx, musdb and museval
    (CPython's ignores SIGINT only after them): it goes on, and serves the workers."""
    driver = start_driver(tmp_path)
    try:
        servers = wait_for(lambda: children(driver.pid, b"forkserver"), "the fork server")
        os.kill(servers[0], signal.SIGINT)  # the driver's own Ctrl-C: see the tests above
        started = lambda: len(list(tmp_path.glob("*.started"))) == 2  # noqa: E731
        wait_for(lambda: started() or driver.poll() is not None, "two tracks started")
        assert started(), (tmp_path / "stderr").read_text()
        os.killpg(driver.pid, signal.SIGINT)
        assert driver.wait(timeout=BOUND_S) == 130
        wait_for(lambda: not any(map(running, servers)), "the fork server to end", 30)
    finally:
        driver.kill()
    assert (tmp_path / "stderr").read_text() == ""


def test_estimates_are_written_over_only_when_this_evaluation_wrote_them(tracks, tmp_path):
    """`outdir` estimates a stopped evaluation wrote are written again when it resumes, but
    those of another method, or files of the user's, are refused before any track unless
    `force`."""
    irm, stems = BaselineMethod("irm", VOC_ACC), tmp_path / "stems"
    assert evaluate(tracks, irm, tmp_path / "ev", outdir=stems, progress=False).evaluated
    vocals = [stems / "test" / name / "vocals.wav" for name in NAMES]
    json_path(tmp_path / "ev", tracks[1]).unlink()  # stopped after the first track's scores
    summary = evaluate(tracks, irm, tmp_path / "ev", outdir=stems, progress=False)
    assert summary.skipped == [NAMES[0]] and summary.evaluated == [NAMES[1]]
    written = {path: path.read_bytes() for path in vocals}
    with pytest.raises(UmxError) as error:  # another method into the same estimates folder
        evaluate(tracks, BaselineMethod("mix", VOC_ACC), tmp_path / "mix", outdir=stems)
    first = vocals[0].parent / "accompaniment.wav"
    assert str(error.value) == f"{first} already exists (use --force to overwrite)"
    assert {path: path.read_bytes() for path in vocals} == written
    assert not (tmp_path / "mix").exists()
    mine = tmp_path / "mine" / "test" / NAMES[1] / "vocals.wav"  # no record: the user's
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own take")
    with pytest.raises(UmxError, match=re.escape(f"{mine} already exists")):
        evaluate(tracks, irm, tmp_path / "ev2", outdir=tmp_path / "mine", progress=False)
    assert mine.read_bytes() == b"my own take"
    mix = BaselineMethod("mix", VOC_ACC)
    assert evaluate(tracks, mix, tmp_path / "mix", outdir=stems, force=True, progress=False)
    assert all(path.read_bytes() != written[path] for path in vocals)


def test_a_stop_while_estimates_replace_others_never_leaves_a_mixed_set(
    tracks, tmp_path, monkeypatch
):
    """`--outdir --force` stopped between two stems' renames left one method's vocals beside
    another's accompaniment, which `--estimates` then scored with exit 0."""
    stems = tmp_path / "stems"
    evaluate(tracks[:1], BaselineMethod("irm", VOC_ACC), tmp_path / "irm", outdir=stems)
    folder = stems / "test" / NAMES[0]
    irm = {name: (folder / f"{name}.wav").read_bytes() for name in VOC_ACC}
    replace = os.replace

    def replace_then_stop(source, target):
        replace(source, target)
        if str(target).endswith(".wav"):  # a stem put in place, not the record
            os.kill(os.getpid(), signal.SIGINT)  # Python's handler: KeyboardInterrupt

    monkeypatch.setattr(umx.audio.writing.os, "replace", replace_then_stop)
    mix = BaselineMethod("mix", VOC_ACC)
    with pytest.raises(KeyboardInterrupt):
        evaluate(tracks[:1], mix, tmp_path / "mix", outdir=stems, force=True, progress=False)
    assert all((folder / f"{name}.wav").read_bytes() != irm[name] for name in VOC_ACC)


def test_resume_refuses_scores_of_estimates_that_changed_since(tracks, tmp_path):
    """`--estimates`: each track's scores record its files' SHA-256, so a resumed run reuses
    them only while the files are those scored."""
    stems, evaldir = tmp_path / "stems", tmp_path / "ev"
    evaluate(tracks[:1], BaselineMethod("irm", VOC_ACC), tmp_path / "irm", outdir=stems)
    method = EstimatesMethod(stems)
    assert evaluate(tracks[:1], method, evaldir, progress=False).evaluated == [NAMES[0]]
    assert evaluate(tracks[:1], method, evaldir, progress=False).skipped == [NAMES[0]]
    vocals = stems / "test" / NAMES[0] / "vocals.wav"
    before = sha256_file(vocals)
    audio, rate = sf.read(vocals)
    sf.write(vocals, 0.5 * audio, rate, subtype="FLOAT")  # another take, same size
    with pytest.raises(UmxError) as error:
        evaluate(tracks[:1], method, evaldir, progress=False)
    assert f"(vocals.wav sha256 {before[:12]}…, now {sha256_file(vocals)[:12]}…)" in str(
        error.value
    )
    assert evaluate(tracks[:1], method, evaldir, force=True, progress=False).evaluated
    assert evaluate(tracks[:1], method, evaldir, progress=False).skipped == [NAMES[0]]
