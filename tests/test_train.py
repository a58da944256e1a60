"""The trainer on a tiny generated task: low tones (the target) under high-pass noise.

One module-scoped run trains a 16-unit model for a few seconds; the tests check that it learns
(loss down, SDR up on held-out mixtures), what it writes, that `umx separate` uses the result,
that a run killed with SIGKILL and resumed ends exactly like an uninterrupted one, and that a
2-process gloo run under torchrun trains and writes one set of outputs.
"""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from umx import cli
from umx.data.datasets import FixedSourcesTrackFolderDataset
from umx.devices import resolve_device
from umx.errors import UmxError
from umx.separator import Separator
from umx.train import (
    Distributed,
    EarlyStopping,
    compute_statistics,
    main,
    validate,
)
from umx.transforms import Spectrogram
from umx.zoo import infer_architecture, load_separator

RATE = 8000
SECONDS = 2.0
NOTE = RATE // 4  # a new tone every quarter second
OUTPUTS = ["separator.json", "vocals.chkpnt", "vocals.json", "vocals.pth", "vocals_loss.png"]
TASK = [
    "--dataset", "trackfolder_fix", "--target-file", "vocals.wav", "--interferer-files",
    "noise.wav", "--nfft", "256", "--nhop", "64", "--hidden-size", "16", "--seq-dur", "0.5",
    "--batch-size", "8", "--lr", "0.01", "--quiet",
]  # fmt: skip


def tones(rng: np.random.Generator, nb_timesteps: int) -> np.ndarray:
    """Stereo sine tones between 80 and 600 Hz, `(2, nb_timesteps)`."""
    t = np.arange(nb_timesteps) / RATE
    audio = np.zeros(nb_timesteps)
    for start in range(0, nb_timesteps, NOTE):
        piece = slice(start, start + NOTE)
        frequency, amplitude = rng.uniform(80, 600), rng.uniform(0.1, 0.4)
        audio[piece] = amplitude * np.sin(2 * np.pi * frequency * t[piece])
    return np.stack([audio, audio]).astype(np.float32)


def noise(rng: np.random.Generator, nb_timesteps: int) -> np.ndarray:
    """Stereo white noise above 1500 Hz with an RMS of 0.2, `(2, nb_timesteps)`."""
    spectrum = np.fft.rfft(rng.standard_normal((2, nb_timesteps)), axis=1)
    spectrum[:, np.fft.rfftfreq(nb_timesteps, 1 / RATE) < 1500] = 0
    audio = np.fft.irfft(spectrum, nb_timesteps, axis=1)
    return (0.2 * audio / audio.std()).astype(np.float32)


def make_task(root: Path, nb_train: int = 8, nb_valid: int = 2, seed: int = 0) -> Path:
    """`<root>/{train,valid}/<track>/{vocals,noise}.wav` at 8 kHz."""
    rng = np.random.default_rng(seed)
    nb_timesteps = int(SECONDS * RATE)
    for split, count in (("train", nb_train), ("valid", nb_valid)):
        for index in range(count):
            folder = root / split / f"track{index}"
            folder.mkdir(parents=True)
            for name, audio in (
                ("vocals", tones(rng, nb_timesteps)),
                ("noise", noise(rng, nb_timesteps)),
            ):
                soundfile.write(folder / f"{name}.wav", audio.T, RATE, subtype="FLOAT")
    return root


def sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    return float(10 * np.log10((reference**2).sum() / ((reference - estimate) ** 2).sum()))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train fastest on one thread, and a busy machine makes more threads crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    return make_task(tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="module")
def trained(task, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("trained") / "model"
    options = ["--root", str(task), "--output", str(output), "--epochs", "8"]
    assert main([*TASK, *options, "--samples-per-track", "8"]) == 0
    return output


# --- a short run ------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_learns_to_separate(trained):
    info = read_json(trained / "vocals.json")
    train_loss, valid_loss = info["train_loss_history"], info["valid_loss_history"]
    assert len(train_loss) == len(valid_loss) == info["epochs_trained"] == 8
    assert train_loss[-1] < 0.5 * train_loss[0]
    assert info["best_loss"] == min(valid_loss) < 0.5 * valid_loss[0]

    separator = load_separator(trained, niter=0)
    state = separator.target_models["vocals"].state_dict()
    torch.manual_seed(0)
    untrained = Separator(
        {"vocals": infer_architecture(state).build().freeze()},
        sample_rate=RATE,
        n_fft=256,
        n_hop=64,
        nb_channels=2,
        niter=0,
    )
    rng = np.random.default_rng(123)  # held-out mixtures
    scores = {"trained": [], "untrained": [], "mixture": []}
    for _ in range(4):
        target = tones(rng, int(SECONDS * RATE))
        mixture = target + noise(rng, target.shape[1])
        batch = torch.from_numpy(mixture)[None]
        scores["trained"].append(sdr(target, separator.separate(batch)[0, 0].numpy()))
        scores["untrained"].append(sdr(target, untrained.separate(batch)[0, 0].numpy()))
        scores["mixture"].append(sdr(target, mixture))
    means = {name: np.mean(values) for name, values in scores.items()}
    assert means["mixture"] < 3
    assert means["trained"] > means["untrained"] + 6, means


def test_outputs_are_a_model_directory_with_history_and_checkpoint(trained):
    assert sorted(path.name for path in trained.iterdir()) == OUTPUTS
    assert read_json(trained / "separator.json") == {
        "sample_rate": RATE,
        "nfft": 256,
        "nhop": 64,
        "nb_channels": 2,
    }
    info = read_json(trained / "vocals.json")
    assert info["args"]["hidden_size"] == 16 and info["args"]["target"] == "vocals"
    assert info["versions"]["torch"] == torch.__version__
    assert 1 <= info["best_epoch"] <= 8
    assert (trained / "vocals_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoint = torch.load(trained / "vocals.chkpnt", weights_only=True)
    assert checkpoint["epoch"] == 8
    assert checkpoint["history"]["valid_loss"] == info["valid_loss_history"]
    best = torch.load(trained / "vocals.pth", weights_only=True)
    assert all(torch.equal(best[key], checkpoint["best_model"][key]) for key in best)


def test_umx_separate_uses_the_trained_directory(trained, tmp_path):
    rng = np.random.default_rng(5)
    target = tones(rng, RATE)
    soundfile.write(tmp_path / "song.wav", (target + noise(rng, RATE)).T, RATE)
    argv = ["separate", str(tmp_path / "song.wav"), "--model", str(trained), "--quiet"]
    argv += ["--residual", "noise", "--outdir", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    vocals, rate = soundfile.read(tmp_path / "out" / "song" / "vocals.wav")
    assert rate == RATE and vocals.shape == (RATE, 2)
    assert sdr(target.T, vocals) > 6


def test_an_output_directory_of_another_run_is_refused_unless_forced(
    trained, task, tmp_path, caplog
):
    output = tmp_path / "copy"
    shutil.copytree(trained, output)
    before = (output / "vocals.pth").read_bytes()
    options = ["--root", str(task), "--output", str(output), "--epochs", "1"]
    with caplog.at_level(logging.ERROR):
        assert main([*TASK, *options]) == 1
    assert f"{output} already holds a vocals model of another run" in caplog.text
    assert (output / "vocals.pth").read_bytes() == before
    assert main([*TASK, *options, "--force"]) == 0
    assert read_json(output / "vocals.json")["epochs_trained"] == 1


def test_targets_trained_into_one_directory_form_one_separator(trained, task, tmp_path, caplog):
    output = tmp_path / "both"
    shutil.copytree(trained, output)
    swapped = {"vocals.wav": "noise.wav", "noise.wav": "vocals.wav"}
    noise_task = [swapped.get(option, option) for option in TASK]
    options = ["--root", str(task), "--output", str(output), "--epochs", "2"]
    with caplog.at_level(logging.ERROR):
        assert main([*noise_task, *options, "--nfft", "512"]) == 1
    assert f"{output / 'separator.json'} says nfft 256 but this run has 512" in caplog.text
    assert main([*noise_task, *options]) == 0
    assert load_separator(output).targets == ["noise", "vocals"]

    rng = np.random.default_rng(7)
    soundfile.write(tmp_path / "song.wav", (tones(rng, RATE) + noise(rng, RATE)).T, RATE)
    argv = ["separate", str(tmp_path / "song.wav"), "--model", str(output), "--quiet"]
    assert cli.main([*argv, "--outdir", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "song").iterdir()) == [
        "noise.wav",
        "vocals.wav",
    ]


def test_fine_tuning_starts_from_the_trained_model(trained, task, tmp_path, caplog):
    output = tmp_path / "tuned"
    options = ["--root", str(task), "--output", str(output), "--epochs", "1", "--model"]
    with caplog.at_level(logging.ERROR):
        assert main([*TASK, *options, str(trained), "--hidden-size", "32"]) == 1
    assert "--hidden-size 32 differs" in caplog.text
    tuned_args = [a for a in TASK if a not in ("--hidden-size", "16")]  # taken from the model
    assert main([*tuned_args, *options, str(trained)]) == 0
    tuned = read_json(output / "vocals.json")
    scratch = read_json(trained / "vocals.json")
    assert tuned["args"]["hidden_size"] == 16 and tuned["args"]["model"] == str(trained)
    assert tuned["train_loss_history"][0] < 0.5 * scratch["train_loss_history"][0]


# --- bad options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--root", "{task}/missing"], "{task}/missing does not exist"),
        (["--root", "{task}", "--target-dir", "x"], "--target-dir applies to the sourcefolder"),
        (["--root", "{task}", "--source-augmentations", "reverb"], "unknown augmentation"),
        ([], "needs --root"),
        (["--root", "{task}", "--seq-dur", "0"], "--seq-dur must be positive"),
    ],
)
def test_bad_options_are_one_line_errors(task, tmp_path, caplog, options, message):
    options = [option.format(task=task) for option in options]
    with caplog.at_level(logging.ERROR):
        assert main([*TASK, *options, "--output", str(tmp_path / "out")]) == 1
    assert message.format(task=task) in caplog.text
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_of_another_architecture_or_target_is_refused(trained, caplog):
    with caplog.at_level(logging.ERROR):
        assert main(["--checkpoint", str(trained), "--hidden-size", "32"]) == 1
        assert main(["--checkpoint", str(trained), "--target", "drums"]) == 1
    assert "--hidden-size 32 differs from the checkpoint's 16" in caplog.text
    assert f"{trained / 'drums.chkpnt'} does not exist" in caplog.text


# --- resuming ---------------------------------------------------------------------------------


def test_a_run_killed_mid_epoch_and_resumed_equals_an_uninterrupted_run(task, tmp_path):
    options = [*TASK, "--root", str(task), "--epochs", "3", "--samples-per-track", "32"]
    assert main([*options, "--output", str(tmp_path / "whole")]) == 0

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "umx.train", *options, "--output", str(killed)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as this process: the same arithmetic
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    checkpoint = killed / "vocals.chkpnt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # into the second epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert torch.load(checkpoint, weights_only=True)["epoch"] < 3  # it was interrupted

    assert main(["--checkpoint", str(killed), "--quiet"]) == 0
    whole = torch.load(tmp_path / "whole" / "vocals.chkpnt", weights_only=True)
    resumed = torch.load(checkpoint, weights_only=True)
    assert resumed["epoch"] == whole["epoch"] == 3
    for key in ("train_loss", "valid_loss", "lr", "best_epoch"):
        assert resumed["history"][key] == whole["history"][key]
    for key in ("model", "best_model"):
        assert all(torch.equal(resumed[key][k], whole[key][k]) for k in whole[key])
    assert resumed["optimizer"]["state"][0]["step"] == whole["optimizer"]["state"][0]["step"]


# --- distributed ------------------------------------------------------------------------------


def test_two_gloo_processes_under_torchrun_train_and_write_one_set_of_outputs(task, tmp_path):
    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", "-m", "umx.train", *TASK, "--root", str(task)]
    command += ["--output", str(output), "--epochs", "3", "--samples-per-track", "8"]
    command.remove("--quiet")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(re.findall(r"training on 2 processes \(gloo\)", result.stderr)) == 1
    assert sorted(path.name for path in output.iterdir()) == OUTPUTS
    info = read_json(output / "vocals.json")
    assert info["epochs_trained"] == 3
    assert info["train_loss_history"][-1] < info["train_loss_history"][0]
    assert load_separator(output, niter=0).targets == ["vocals"]


def _statistics_process(rank: int, store: str, root: str, result: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=store, rank=rank, world_size=2)
    statistics = compute_statistics(
        train_set(Path(root)), 256, 64, distributed=Distributed(rank, 2, rank), progress=False
    )
    if rank == 0:
        torch.save(statistics, result)
    torch.distributed.destroy_process_group()


def test_statistics_of_two_processes_equal_those_of_one(task, tmp_path):
    result = tmp_path / "statistics.pt"
    store = f"file://{tmp_path / 'store'}"
    torch.multiprocessing.spawn(_statistics_process, args=(store, str(task), str(result)), nprocs=2)
    mean, std = torch.load(result, weights_only=True)
    expected_mean, expected_std = compute_statistics(train_set(task), 256, 64, progress=False)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(std, expected_std, rtol=1e-12, atol=0)


# --- pieces -----------------------------------------------------------------------------------


def train_set(root: Path) -> FixedSourcesTrackFolderDataset:
    return FixedSourcesTrackFolderDataset(
        root,
        "train",
        target_file="vocals.wav",
        interferer_files=["noise.wav"],
        seq_duration=0.5,
        nb_channels=2,
    )


def test_statistics_equal_a_direct_computation(task):
    dataset = train_set(task)
    mean, std = compute_statistics(dataset, 256, 64, progress=False)
    spectrogram = Spectrogram(256, 64, mono=True)
    frames = torch.cat(
        [spectrogram(mixture[None].double())[0, 0] for mixture, _ in dataset.eval_view()], dim=1
    )
    assert frames.shape[1] == 8 * (int(SECONDS * RATE) // 64 + 1)  # every frame of every track
    torch.testing.assert_close(mean, frames.mean(1), rtol=1e-12, atol=0)
    torch.testing.assert_close(std, frames.std(1, correction=0), rtol=1e-9, atol=0)


def test_statistics_of_pure_tones_are_known_and_the_deviation_floored(tmp_path):
    """A 250 Hz cosine lies on bin 8 of a 256-point STFT at 8 kHz, and 8001 samples make its
    reflect padding seamless: its Hann magnitudes are 64 a on bin 8, 32 a on bins 7 and 9 and
    (numerically) zero elsewhere. Tracks of amplitude 1 and 0.5 give mean 48, std 16 on bin 8."""
    n = np.arange(8001)
    for index, amplitude in enumerate((1.0, 0.5)):
        folder = tmp_path / "train" / f"t{index}"
        folder.mkdir(parents=True)
        tone = amplitude * np.cos(2 * np.pi * 250 * n / RATE)
        soundfile.write(folder / "vocals.wav", tone, RATE, subtype="DOUBLE")
        soundfile.write(folder / "noise.wav", np.zeros_like(tone), RATE, subtype="DOUBLE")
    mean, std = compute_statistics(train_set(tmp_path), 256, 64, progress=False)
    expected = torch.tensor([24.0, 48.0, 24.0], dtype=torch.float64)
    torch.testing.assert_close(mean[7:10], expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(std[7:10], expected / 3, rtol=1e-6, atol=0)
    assert mean[20:].abs().max() < 1e-4
    assert torch.all(std[20:] == 1e-4 * std.max())


def test_validation_covers_whole_tracks_segment_by_segment():
    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    torch.manual_seed(0)
    pairs = [(torch.randn(2, n), torch.randn(2, n)) for n in (3000, 4100)]
    spectrogram = Spectrogram(256, 64)

    def expected(pieces):
        squared, count = 0.0, 0
        for (mixture, target), bounds in zip(pairs, pieces, strict=True):
            for start, stop in bounds:
                error = spectrogram(mixture[None, :, start:stop]) - spectrogram(
                    target[None, :, start:stop]
                )
                squared += float(error.double().square().sum())
                count += error.numel()
        return squared / count

    cpu = torch.device("cpu")
    whole = validate(Identity(), pairs, spectrogram, cpu, segment=10**6)
    assert whole == pytest.approx(expected([[(0, 3000)], [(0, 4100)]]), rel=1e-12)
    chunked = validate(Identity(), pairs, spectrogram, cpu, segment=2000)
    # 4100 = 2000 + 2000 + 100: the 100-sample tail, shorter than the STFT, joins its neighbour.
    pieces = [[(0, 2000), (2000, 3000)], [(0, 2000), (2000, 4100)]]
    assert chunked == pytest.approx(expected(pieces), rel=1e-12)
    assert abs(chunked - whole) > 1e-3 * whole  # the pieces' edge frames differ


def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopping(patience=2)
    improved = [stopper.step(loss) for loss in (3.0, 2.0, 2.5, 1.0, 1.5, 1.2)]
    assert improved == [True, True, False, True, False, False]
    assert stopper.best == 1.0 and stopper.num_bad_epochs == 2 and stopper.should_stop


def test_unknown_device_is_an_error():
    with pytest.raises(UmxError, match="unknown device"):
        resolve_device("tpu9")
