"""`umx train --architecture xumx` on a tiny generated task: three sources, one X-UMX model.

The sources are low tones ("vocals"), high-pass noise ("noise") and clicks ("clicks"), at 8 kHz;
the tests check that a short run learns to separate all three, writes asteroid's format that
`umx` separates with, and that a resumed run ends exactly like an uninterrupted one.
"""

import contextlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from umx.data.datasets import FixedSourcesTrackFolderDataset, SourcesDataset
from umx.model import CrossUnmix
from umx.train import Distributed, main
from umx.train.progress import resume_hint
from umx.train.xumx import XumxTrainer
from umx.xumx_checkpoints import load_xumx, save_xumx
from umx.zoo import load_separator

RATE = 8000
NB_TIMESTEPS = 2 * RATE
SOURCES = ["vocals", "noise", "clicks"]
TASK = [
    "--architecture", "xumx", "--dataset", "trackfolder_fix", "--target-file", "vocals.wav",
    "--interferer-files", "noise.wav", "clicks.wav", "--nfft", "256", "--nhop", "64",
    "--hidden-size", "16", "--seq-dur", "0.5", "--batch-size", "8", "--lr", "0.01", "--quiet",
]  # fmt: skip


def _sources(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One track's three stereo sources, `(nb_timesteps, 2)` each."""
    t = np.arange(NB_TIMESTEPS) / RATE
    tones = np.zeros(NB_TIMESTEPS)
    for start in range(0, NB_TIMESTEPS, RATE // 4):
        piece = slice(start, start + RATE // 4)
        tones[piece] = rng.uniform(0.1, 0.4) * np.sin(2 * np.pi * rng.uniform(80, 600) * t[piece])
    spectrum = np.fft.rfft(rng.standard_normal(NB_TIMESTEPS))
    spectrum[np.fft.rfftfreq(NB_TIMESTEPS, 1 / RATE) < 1500] = 0
    noise = np.fft.irfft(spectrum, NB_TIMESTEPS)
    noise *= 0.15 / noise.std()
    clicks = np.zeros(NB_TIMESTEPS)
    for start in rng.integers(0, NB_TIMESTEPS - 200, 12):
        clicks[start : start + 200] += 0.6 * np.exp(-np.arange(200) / 30.0)
    return {
        name: np.stack([audio, audio], axis=1).astype(np.float32)
        for name, audio in zip(SOURCES, (tones, noise, clicks), strict=True)
    }


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("xumx-task")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("valid", 2)):
        for index in range(count):
            folder = root / split / f"track{index}"
            folder.mkdir(parents=True)
            for name, audio in _sources(rng).items():
                soundfile.write(folder / f"{name}.wav", audio, RATE, subtype="FLOAT")
    return root


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(task, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("xumx-trained") / "model"
    options = ["--root", str(task), "--output", str(output), "--epochs", "10"]
    assert main([*TASK, *options, "--samples-per-track", "8"]) == 0
    return output


def _sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    return float(10 * np.log10((reference**2).sum() / ((reference - estimate) ** 2).sum()))


def test_training_learns_to_separate_every_source(trained):
    names = {path.name for path in trained.iterdir()}
    assert names == {"xumx.chkpnt", "xumx.pth", "xumx.json", "xumx_loss.png"}
    checkpoint = load_xumx(trained)
    assert checkpoint.net.targets == SOURCES and checkpoint.sample_rate == RATE
    history = torch.load(trained / "xumx.chkpnt", weights_only=True)["history"]
    assert history["train_loss"][-1] < 0.7 * history["train_loss"][0]
    assert min(history["valid_loss"]) < history["valid_loss"][0]

    sources = _sources(np.random.default_rng(99))  # a track never seen
    mixture = torch.from_numpy(sum(sources.values()).T.copy())[None]
    separator = load_separator(trained)
    assert separator.targets == SOURCES
    stems = separator.separate(mixture, segment=None)[0].numpy()
    for index, name in enumerate(SOURCES):
        reference = sources[name].T
        gain = _sdr(reference, stems[index]) - _sdr(reference, mixture[0].numpy())
        assert gain > 3.0, (name, gain)


def test_a_resumed_run_equals_an_uninterrupted_run(task, tmp_path):
    options = [*TASK, "--root", str(task), "--samples-per-track", "4"]
    assert main([*options, "--epochs", "3", "--output", str(tmp_path / "whole")]) == 0
    assert main([*options, "--epochs", "2", "--output", str(tmp_path / "resumed")]) == 0
    assert main(["--checkpoint", str(tmp_path / "resumed"), "--epochs", "3", "--quiet"]) == 0
    whole, resumed = (
        torch.load(tmp_path / run / "xumx.chkpnt", weights_only=True)
        for run in ("whole", "resumed")
    )
    assert resumed["epoch"] == whole["epoch"] == 3
    assert resumed["history"]["train_loss"] == whole["history"]["train_loss"]
    for key in ("model", "best_model"):
        assert all(torch.equal(resumed[key][k], whole[key][k]) for k in whole[key])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--target", "vocals"], "--target does not apply to --architecture xumx"),
        (["--model", "umxsynth"], "--architecture xumx trains a new model"),
    ],
)
def test_options_xumx_cannot_use_are_one_line_errors(task, tmp_path, caplog, options, message):
    with caplog.at_level(logging.ERROR):
        code = main([*TASK, "--root", str(task), "--output", str(tmp_path / "m"), *options])
    assert code == 1 and message in caplog.text and "Traceback" not in caplog.text


def test_an_xumx_model_to_fine_tune_is_refused_before_training(task, tmp_path, caplog):
    """`--model` fine-tunes an Open-Unmix target: an X-UMX model trained a whole epoch, then
    crashed writing it, and left a checkpoint that blocked the rerun."""
    net = CrossUnmix(SOURCES, nb_bins=129, hidden_size=16).freeze()
    (tmp_path / "x").mkdir()
    save_xumx(net, tmp_path / "x" / "xumx.pth", sample_rate=RATE, n_fft=256, n_hop=64)
    options = [*TASK[2:], "--root", str(task), "--output", str(tmp_path / "out")]
    with caplog.at_level(logging.ERROR):
        assert main([*options, "--model", str(tmp_path / "x"), "--epochs", "1"]) == 1
    assert caplog.messages == [
        f"error: --model {tmp_path / 'x'} is an X-UMX model: --model fine-tunes an Open-Unmix "
        "target; give an Open-Unmix model, or train X-UMX anew with --architecture xumx"
    ]
    assert not (tmp_path / "out").exists()


def test_sources_may_have_the_names_an_open_unmix_target_cannot(task, tmp_path):
    """X-UMX's sources are inside xumx.pth: `xumx` and `separator` name no file of its folder."""
    for track in task.glob("*/*"):
        folder = tmp_path / track.relative_to(task)
        shutil.copytree(track, folder)
        (folder / "vocals.wav").rename(folder / "separator.wav")
        (folder / "clicks.wav").rename(folder / "xumx.wav")
    given = {
        "architecture": "xumx", "dataset": "trackfolder_fix", "root": tmp_path,
        "target_file": "separator.wav", "interferer_files": ["noise.wav", "xumx.wav"],
        "nfft": 256, "nhop": 64, "hidden_size": 16, "output": tmp_path / "out", "debug": True,
    }  # fmt: skip
    with contextlib.ExitStack() as held:
        trainer = XumxTrainer(given, Distributed(), torch.device("cpu"), held)
    assert trainer.names == ["separator", "noise", "xumx"]


def test_datasets_without_fixed_sources_are_refused(task, tmp_path, caplog):
    options = ["--architecture", "xumx", "--dataset", "aligned", "--input-file", "a.wav"]
    options += ["--output-file", "b.wav", "--root", str(task), "--quiet"]
    with caplog.at_level(logging.ERROR):
        assert main([*options, "--output", str(tmp_path / "m")]) == 1
    assert "needs tracks with every source: the musdb or trackfolder_fix dataset" in caplog.text


@pytest.mark.parametrize("random_track_mix", [False, True])
def test_items_with_every_source_draw_as_the_target_items(task, random_track_mix):
    tracks = FixedSourcesTrackFolderDataset(
        task,
        "train",
        target_file="vocals.wav",
        interferer_files=["noise.wav", "clicks.wav"],
        seq_duration=0.5,
        nb_channels=2,
        samples_per_track=2,
        random_track_mix=random_track_mix,
    )
    sources = SourcesDataset(tracks, SOURCES)
    assert len(sources) == len(tracks) == 16
    torch.manual_seed(1)
    mixture, target = tracks[5]
    torch.manual_seed(1)
    all_mixture, all_sources = sources[5]
    assert all_sources.shape == (3, 2, 4000)
    torch.testing.assert_close(all_sources[0], target, rtol=0, atol=0)
    torch.testing.assert_close(all_mixture, mixture, rtol=0, atol=0)
    torch.testing.assert_close(all_sources.sum(0), all_mixture)
    assert all(float(source.abs().max()) > 0 for source in all_sources)
    whole_mixture, whole_sources = sources.eval_view()[0]
    assert whole_sources.shape == (3, 2, NB_TIMESTEPS)
    torch.testing.assert_close(whole_sources.sum(0), whole_mixture)


def test_the_resume_command_of_an_xumx_run_names_no_target(tmp_path):
    """An X-UMX run trains every source: its resume command is `--checkpoint DIR` alone (the
    options refuse --target with X-UMX)."""
    (tmp_path / "xumx.chkpnt").write_bytes(b"")
    hint = resume_hint(tmp_path, "xumx")
    assert hint.endswith(f"umx train --checkpoint {tmp_path}")
    (tmp_path / "vocals.chkpnt").write_bytes(b"")
    assert resume_hint(tmp_path, "vocals").endswith(f"--checkpoint {tmp_path} --target vocals")
