"""The trainer on a tiny generated task: low tones (the target) under high-pass noise.

One module-scoped run trains a 16-unit model for a few seconds; the tests check that it learns
(loss down, SDR up on held-out mixtures), what it writes, that `umx separate` uses the result,
that a run killed with SIGKILL and resumed ends exactly like an uninterrupted one, and that a
2-process gloo run under torchrun trains and writes one set of outputs.
"""

import argparse
import contextlib
import json
import logging
import math
import os
import re
import shlex
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

import umx.train.loop
from processes import file_size_limit, read_only_folder
from umx import cli
from umx.data.datasets import FixedSourcesTrackFolderDataset
from umx.devices import resolve_device
from umx.errors import UmxError
from umx.separator import Separator
from umx.train import (
    Distributed,
    EarlyStopping,
    History,
    add_train_arguments,
    compute_statistics,
    loss_figure,
    loss_ticks,
    main,
    validate,
)
from umx.train.loop import Trainer
from umx.train.progress import outlook
from umx.transforms import Spectrogram
from umx.weights import infer_architecture
from umx.zoo import load_separator

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


pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_without_the_train_extra_it_is_refused_naming_it(task, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with caplog.at_level(logging.ERROR):
        assert main([*TASK, "--root", str(task), "--output", str(tmp_path / "out")]) == 1
    assert caplog.messages == [
        "error: umx train draws its loss curve with matplotlib, which is not installed: "
        "pip install 'umx[train]'"
    ]
    assert not any(tmp_path.iterdir())


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
    before = {path.name: path.read_bytes() for path in output.iterdir()}
    with caplog.at_level(logging.ERROR):
        assert main([*noise_task, *options, "--nfft", "512"]) == 1
        # --force replaces the noise target's files, not the STFT the vocals model needs
        assert main([*noise_task, *options, "--nfft", "512", "--force"]) == 1
    said = f"{output / 'separator.json'} says nfft 256 for its vocals model, but this run has 512"
    assert caplog.messages == [f"error: {said}: train into another --output"] * 2
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before
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


def test_open_unmix_and_x_umx_are_not_trained_into_one_folder(trained, task, tmp_path, caplog):
    output = tmp_path / "mixed"
    shutil.copytree(trained, output)
    before = {path.name: path.read_bytes() for path in output.iterdir()}
    options = ["--root", str(task), "--output", str(output), "--epochs", "1"]
    with caplog.at_level(logging.ERROR):
        assert main([*TASK, *options, "--architecture", "xumx", "--force"]) == 1
    assert caplog.messages == [
        f"error: {output} holds the Open-Unmix vocals model (vocals.pth or .chkpnt), and a "
        "folder holds one architecture: train an X-UMX model into another --output"
    ]
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before
    for name in before:
        (output / name).unlink()
    (output / "xumx.pth").write_bytes(b"an X-UMX run's model")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main([*TASK, *options, "--force"]) == 1
    assert caplog.messages == [
        f"error: {output} holds an X-UMX model (xumx.pth or .chkpnt), and a folder holds one "
        "architecture: train an Open-Unmix vocals model into another --output"
    ]
    assert [path.name for path in output.iterdir()] == ["xumx.pth"]


def test_causal_and_bidirectional_targets_are_not_trained_into_one_folder(
    trained, task, tmp_path, caplog
):
    """A bidirectional target went silently into a folder of causal ones (and the reverse),
    which `umx stream` then refused whole; it is refused, whatever --force says."""
    swapped = {"vocals.wav": "noise.wav", "noise.wav": "vocals.wav"}
    noise_task = [swapped.get(option, option) for option in TASK]
    options = ["--root", str(task), "--epochs", "1"]
    causal = tmp_path / "causal"
    assert main([*TASK, *options, "--output", str(causal), "--unidirectional"]) == 0
    bidirectional = tmp_path / "bidirectional"
    shutil.copytree(trained, bidirectional)
    (bidirectional / "vocals.json").unlink()  # its weights say it too
    before = {path.name: path.read_bytes() for path in causal.iterdir()}
    with caplog.at_level(logging.ERROR):
        assert main([*noise_task, *options, "--output", str(causal), "--force"]) == 1
        assert (
            main([*noise_task, *options, "--output", str(bidirectional), "--unidirectional"]) == 1
        )
    assert caplog.messages == [
        f"error: {causal} holds the causal vocals model, and a folder's models are all causal "
        "or none: add --unidirectional, or train into another --output",
        f"error: {bidirectional} holds the bidirectional vocals model, and a folder's models "
        "are all causal or none: leave out --unidirectional, or train into another --output",
    ]
    assert {path.name: path.read_bytes() for path in causal.iterdir()} == before
    assert not (bidirectional / "noise.pth").exists()
    assert main([*noise_task, *options, "--output", str(causal), "--unidirectional"]) == 0
    assert load_separator(causal).targets == ["noise", "vocals"]


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


def test_fine_tuning_reads_the_data_with_the_models_channels_stft_and_rate(task, tmp_path, caplog):
    """A one-channel model is fine-tuned on the data made mono, with its STFT, though neither
    is given (the data was read as stereo and the model's first layer failed on it); a
    contradicting --nb-channels, and data at another rate, are one line saying what to do."""
    mono = tmp_path / "mono"
    options = ["--root", str(task), "--epochs", "1"]
    assert main([*TASK, *options, "--output", str(mono), "--nb-channels", "1"]) == 0
    model_args = ("--nfft", "256", "--nhop", "64", "--hidden-size", "16")
    tuned_args = [a for a in TASK if a not in model_args]  # taken from the model
    tuned = tmp_path / "tuned"
    assert main([*tuned_args, *options, "--output", str(tuned), "--model", str(mono)]) == 0
    assert read_json(tuned / "separator.json")["nb_channels"] == 1
    args = read_json(tuned / "vocals.json")["args"]
    assert (args["nb_channels"], args["nfft"], args["nhop"]) == (1, 256, 64)
    assert load_separator(tuned).nb_channels == 1

    refused = tmp_path / "refused"
    shifted = tmp_path / "at16k"  # the same samples, said to be at 16 kHz
    for path in task.rglob("*.wav"):
        audio, _ = soundfile.read(path, dtype="float32")
        (shifted / path.relative_to(task)).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(shifted / path.relative_to(task), audio, 2 * RATE, subtype="FLOAT")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        stereo = [*tuned_args, *options, "--nb-channels", "2"]
        assert main([*stereo, "--output", str(refused), "--model", str(mono)]) == 1
        at16k = [*tuned_args, "--root", str(shifted), "--epochs", "1"]
        assert main([*at16k, "--output", str(refused), "--model", str(mono)]) == 1
    assert caplog.messages == [
        f"error: --nb-channels 2 differs from {mono}'s 1: fine-tuning keeps the model's, so "
        "leave --nb-channels out",
        f"error: {mono} works at 8000 Hz, but the data of {shifted} is at 16000 Hz: fine-tune "
        "it on data at 8000 Hz, or leave out --model to train a new model at 16000 Hz",
    ]
    assert not refused.exists()


# --- bad options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--root", "{task}/missing"],
            "--root {task}/missing does not exist or is not a folder: give the folder of the "
            "training set",
        ),
        (
            ["--checkpoint", "{task}/missing"],
            "--checkpoint {task}/missing does not exist or is not a folder: give the --output "
            "folder of the run to resume",
        ),
        (["--root", "{task}", "--target-dir", "x"], "--target-dir applies to the sourcefolder"),
        (["--root", "{task}", "--source-augmentations", "reverb"], "unknown augmentation"),
        ([], "needs --root"),
        (["--seq-dur", "0"], "--seq-dur must be positive, not 0.0"),
        (["--seq-dur", "nan"], "--seq-dur must be a finite number, not nan"),
        (["--seq-dur", "inf"], "--seq-dur must be a finite number, not inf"),
        (["--seq-dur", "0.01"], "--seq-dur 0.01 is 80 samples at 8000 Hz, shorter than one STFT"),
        (["--lr", "nan"], "--lr must be a finite number, not nan"),
        (["--lr", "inf"], "--lr must be a finite number, not inf"),
        (["--lr", "0"], "--lr must be positive, not 0.0"),
        (["--lr", "-1"], "--lr must be positive, not -1.0"),
        (["--weight-decay", "nan"], "--weight-decay must be a finite number, not nan"),
        (["--weight-decay=-1e-5"], "--weight-decay must be zero or positive"),
        (["--lr", "1e39"], "--lr must be at most 1 (the default is 0.001), not 1e+39"),
        (["--weight-decay", "1e300"], "--weight-decay must be at most 1 (the default is 1e-05)"),
        (["--lr-decay-gamma", "1"], "--lr-decay-gamma multiplies the learning rate"),
        (["--lr-decay-gamma", "0"], "must lie between 0 and 1 (exclusive), not 0.0"),
        (["--lr-decay-gamma=-inf"], "--lr-decay-gamma must be a finite number, not -inf"),
        (["--lr-decay-patience", "-1"], "--lr-decay-patience must be at least 0, not -1"),
        (["--epochs", "0"], "--epochs must be at least 1, not 0"),
        (["--batch-size", "-8"], "--batch-size must be at least 1, not -8"),
        (["--patience", "0"], "--patience must be at least 1, not 0"),
        (["--hidden-size", "0"], "--hidden-size must be at least 1, not 0"),
        (["--hidden-size", "7"], "--hidden-size must be even for a bidirectional LSTM, not 7"),
        (["--seed", "-1"], "--seed must be from 0 to 4294967295, not -1"),
        (["--nb-workers", "-1"], "--nb-workers must be at least 0, not -1"),
        (["--samples-per-track", "0"], "--samples-per-track must be at least 1, not 0"),
        (
            ["--samples-per-track", "2147483647"],
            "--samples-per-track 2147483647 with 8 training tracks makes 17179869176 excerpts "
            "per epoch, more than 2147483647: give at most 268435455",
        ),
        (["--bandwidth", "nan"], "--bandwidth must be a finite number, not nan"),
        (["--bandwidth", "0"], "--bandwidth must be positive, not 0.0"),
        (["--nfft", "0"], "--nfft must be at least 1, not 0"),
        (["--nfft", "1", "--nhop", "1"], "--nfft 1 and --nhop 1: the STFT size n_fft must be"),
        (["--nhop", "256"], "--nfft 256 and --nhop 256: an STFT hop of 256 with n_fft 256 cannot"),
        (["--nhop", "300"], "--nfft 256 and --nhop 300: an STFT hop of 300"),
        (["--target", "../escape"], "--target has an unsafe target name '../escape'"),
        (["--target", "xumx"], "--target has the target name 'xumx', which a model directory"),
        (["--target", "separator"], "keeps for its settings (separator.json): give the target"),
        (["--seq-dur", "1e12"], "--seq-dur must be at most 86400 seconds"),
        (["--target-file", "{task}/train/track0/vocals.wav"], "--target-file takes the name of"),
        (["--interferer-files", "vocals.wav"], "vocals.wav is also the --target-file"),
        (["--device", "meta"], "unknown device 'meta'"),
        (["--hidden-size", "1000000000"], "cpu ran out of memory: lower --batch-size"),
    ],
)
def test_bad_options_are_one_line_errors(task, tmp_path, caplog, options, message):
    options = [option.format(task=task) for option in options]
    if "--root" not in options and options:
        options += ["--root", str(task)]
    with caplog.at_level(logging.ERROR):
        assert main([*TASK, "--epochs", "1", *options, "--output", str(tmp_path / "out")]) == 1
    (record,) = caplog.records
    assert message.format(task=task) in record.getMessage()
    assert "\n" not in record.getMessage()
    assert not (tmp_path / "out").exists()


def _set(mapping: dict, key: str, value) -> None:
    *parents, last = key.split("/")
    for parent in parents:
        mapping = mapping[parent]
    if value is KeyError:
        del mapping[last]
    else:
        mapping[last] = value


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("args/lr", float("nan"), "--lr must be a finite number, not nan"),
        ("args/dataset", "nope", "--dataset must be one of musdb, aligned"),
        ("args/root", 5, "--root cannot be 5"),
        ("args/nb_channels", True, "--nb-channels cannot be True"),
        ("args", "x", "is not a umx training checkpoint"),
        ("sample_rate", KeyError, "is not a umx training checkpoint"),
        ("optimizer", {}, "vocals.chkpnt is a damaged checkpoint"),
        ("history/unknown", [], "vocals.chkpnt is a damaged checkpoint"),
        ("history/valid_loss", [1.0], "vocals.chkpnt is a damaged checkpoint"),
        ("best_model/fc1.weight", torch.zeros(3, 3), "vocals.chkpnt is a damaged checkpoint"),
        ("early_stopping", {"patience": "x", "best": None}, "is a damaged checkpoint"),
    ],
)
def test_a_damaged_or_edited_checkpoint_is_a_one_line_error(
    trained, tmp_path, caplog, key, value, message
):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    checkpoint = torch.load(copy / "vocals.chkpnt", weights_only=True)
    _set(checkpoint, key, value)
    torch.save(checkpoint, copy / "vocals.chkpnt")
    with caplog.at_level(logging.ERROR):
        assert main(["--checkpoint", str(copy), "--target", "vocals", "--epochs", "9", "-q"]) == 1
    (record,) = caplog.records
    assert message in record.getMessage() and "\n" not in record.getMessage()


def test_the_documented_defaults_are_those_of_the_help():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    helps = {
        option: re.search(r"\(default: ([^)]*)\)$", action.help or "")
        for action in parser._actions
        for option in action.option_strings
    }
    table = (Path(__file__).parents[1] / "docs" / "training.md").read_text()
    checked = []
    for options, cell in re.findall(r"^\| (`-[^|]*) \| ([^|]*) \|", table, flags=re.MULTILINE):
        options = re.findall(r"`(--[\w-]+)", options)
        defaults = [d.strip().strip("`") for d in cell.split(",")] if cell.strip() else []
        if cell.strip() in ("required", "see above") or "/" in cell:
            continue  # explained in words, in the table and in the help
        if not defaults:
            assert all(helps[option] is None for option in options), options
            checked += options
        elif len(defaults) == len(options):
            for option, default in zip(options, defaults, strict=True):
                assert helps[option] is not None, option
                assert helps[option].group(1) == default, (option, default)
            checked += options
    assert len(checked) >= 20 and "--nb-workers" in checked and "--weight-decay" in checked


def test_a_checkpoint_of_another_architecture_or_target_is_refused(trained, caplog):
    with caplog.at_level(logging.ERROR):
        assert main(["--checkpoint", str(trained), "--hidden-size", "32"]) == 1
        assert main(["--checkpoint", str(trained), "--target", "drums"]) == 1
    assert "--hidden-size 32 differs from the checkpoint's 16" in caplog.text
    assert f"{trained / 'drums.chkpnt'} does not exist" in caplog.text


def test_a_seq_dur_longer_than_every_track_is_cut_to_the_longest(task, tmp_path, caplog):
    """Past the longest track an excerpt is padding only: a day of it ran out of memory."""
    given = {
        "dataset": "trackfolder_fix", "root": task, "target_file": "vocals.wav",
        "interferer_files": ["noise.wav"], "nfft": 256, "nhop": 64, "hidden_size": 16,
        "seq_dur": 86400.0, "output": tmp_path / "out", "debug": True,
    }  # fmt: skip
    with caplog.at_level(logging.INFO, logger="umx"), contextlib.ExitStack() as held:
        trainer = Trainer(given, Distributed(), torch.device("cpu"), held)
    assert trainer.train_set.seq_len == SECONDS * RATE
    assert trainer.train_set[0][0].shape == (2, SECONDS * RATE)
    assert trainer.config.seq_dur == 86400  # as asked, so a resumed run asks the same
    assert "--seq-dur 86400 is longer than the longest training track: excerpts of 2 s" in (
        caplog.text
    )


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda c: c["best_model"]["fc1.weight"].view(-1)[0].fill_(math.nan), "best_model.fc1"),
        (lambda c: c["model"]["bn1.running_var"].fill_(-1.0), "model.bn1.running_var"),
        (lambda c: c["optimizer"]["state"][0]["exp_avg_sq"].fill_(-1.0), "exp_avg_sq"),
        (lambda c: c.update(sample_rate="x"), "its sample rate is 'x'"),
        # numbers beside the tensors: no epoch improves on a NaN best loss, an infinite
        # learning rate trains to NaN, a decay factor above 1 raises the learning rate
        (lambda c: c["early_stopping"].update(best=math.nan), "early_stopping.best is nan, not"),
        (
            lambda c: c["optimizer"]["param_groups"][0].update(lr=math.inf),
            "its optimizer.param_groups.0.lr is inf, not a learning rate from 0 to 1",
        ),
        (lambda c: c["optimizer"]["param_groups"][0].pop("eps"), "param_groups.0.eps is missing"),
        (lambda c: c["scheduler"].update(factor=5.0), "scheduler.factor is 5.0, not a factor"),
        (lambda c: c["scheduler"].update(mode="max"), "its scheduler.mode is 'max', not 'min'"),
        (lambda c: c["history"]["epoch_time"].__setitem__(0, -1.0), "epoch_time.0 is -1.0, not"),
    ],
)
def test_a_damaged_checkpoint_is_refused_before_training(trained, tmp_path, caplog, damage, said):
    damaged = tmp_path / "damaged"
    shutil.copytree(trained, damaged)
    checkpoint = torch.load(damaged / "vocals.chkpnt", weights_only=True)
    damage(checkpoint)
    torch.save(checkpoint, damaged / "vocals.chkpnt")
    before = {path.name: path.read_bytes() for path in damaged.iterdir()}
    with caplog.at_level(logging.ERROR):
        assert main(["--checkpoint", str(damaged), "--epochs", "9"]) == 1
    (message,) = caplog.messages
    assert message.startswith(f"error: {damaged / 'vocals.chkpnt'} is a damaged checkpoint (")
    assert said in message
    assert {path.name: path.read_bytes() for path in damaged.iterdir()} == before


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


class Killed(BaseException):
    """The process dying at this point (nothing catches it, as nothing survives SIGKILL)."""


@pytest.fixture(scope="module")
def two_epochs(task, tmp_path_factory) -> tuple[list[str], Path]:
    """The options of a 2-epoch run and its outputs, run uninterrupted."""
    options = [*TASK, "--root", str(task), "--epochs", "2"]
    output = tmp_path_factory.mktemp("two_epochs") / "model"
    assert main([*options, "--output", str(output)]) == 0
    return options, output


@pytest.mark.parametrize("renames", range(10))
def test_a_run_killed_between_any_two_file_writes_resumes_as_its_message_says(
    two_epochs, tmp_path, caplog, monkeypatch, renames
):
    """Each epoch puts 5 files in place by renaming; the run dies before rename `renames + 1`.
    Running the same command again either works or names the command that does, which then
    ends exactly as the uninterrupted run."""
    options, whole = two_epochs
    output = tmp_path / "model"
    command = [*options, "--output", str(output)]
    replace, done = os.replace, []

    def dying_replace(source, destination):
        if len(done) == renames:
            raise Killed
        replace(source, destination)
        done.append(Path(destination).name)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(Killed):
        main(command)
    monkeypatch.setattr(os, "replace", replace)
    assert done[:1] in ([], ["vocals.chkpnt"])  # the checkpoint goes first
    if "vocals.pth" in done:
        assert (output / "vocals.chkpnt").exists()

    with caplog.at_level(logging.ERROR):
        status = main(command)
    if status != 0:
        suggested = re.search(r"use (--checkpoint \S+) to resume it", caplog.text)
        assert suggested, caplog.text
        assert main([*suggested.group(1).split(), "--quiet"]) == 0
    assert sorted(path.name for path in output.iterdir()) == OUTPUTS
    expected, resumed = (
        torch.load(d / "vocals.chkpnt", weights_only=True) for d in (whole, output)
    )
    assert resumed["epoch"] == expected["epoch"] == 2
    assert resumed["history"]["valid_loss"] == expected["history"]["valid_loss"]
    for key in ("model", "best_model"):
        assert all(torch.equal(resumed[key][k], expected[key][k]) for k in expected[key])
    best = torch.load(output / "vocals.pth", weights_only=True)
    assert all(torch.equal(best[k], expected["best_model"][k]) for k in best)
    info, expected_info = (read_json(d / "vocals.json") for d in (output, whole))
    assert info["valid_loss_history"] == expected_info["valid_loss_history"]
    assert info["epochs_trained"] == 2


def test_options_given_when_resuming_hold_over_the_checkpoints(trained, tmp_path):
    """--lr, --weight-decay, --lr-decay-gamma and --lr-decay-patience given with --checkpoint
    are the resumed run's, as the other options are (the restored optimizer and scheduler had
    kept the checkpoint's); without --lr the rate goes on from where the scheduler left it."""
    for name, given in (("again", []), ("changed", ["--lr", "0.002", "--weight-decay", "0.001"])):
        output = tmp_path / name
        shutil.copytree(trained, output)
        before = torch.load(output / "vocals.chkpnt", weights_only=True)
        decay = ["--lr-decay-gamma", "0.5", "--lr-decay-patience", "50"]
        assert main(["--checkpoint", str(output), "--epochs", "9", *decay, *given, "--quiet"]) == 0
        after = torch.load(output / "vocals.chkpnt", weights_only=True)
        assert after["epoch"] == 9
        assert (after["scheduler"]["factor"], after["scheduler"]["patience"]) == (0.5, 50)
        group, old = after["optimizer"]["param_groups"][0], before["optimizer"]["param_groups"][0]
        if given:
            assert (group["lr"], group["weight_decay"]) == (0.002, 0.001)
        else:
            assert (group["lr"], group["weight_decay"]) == (old["lr"], old["weight_decay"])


def test_a_model_without_checkpoint_is_not_offered_for_resuming(two_epochs, tmp_path, caplog):
    options, whole = two_epochs
    output = tmp_path / "model"
    shutil.copytree(whole, output)
    (output / "vocals.chkpnt").unlink()  # e.g. a copied or exported model
    with caplog.at_level(logging.ERROR):
        assert main([*options, "--output", str(output)]) == 1
        assert main(["--checkpoint", str(output), "--quiet"]) == 1
        assert main(["--checkpoint", str(output), "--target", "vocals", "--quiet"]) == 1
    first, second, third = (record.getMessage() for record in caplog.records)
    assert "has no checkpoint to resume: use --force to overwrite it" in first
    assert "--checkpoint" not in first
    assert f"{output} holds no checkpoint to resume: its vocals model has none" in second
    assert f"the vocals model in {output} has no checkpoint to resume" in third
    assert main([*options, "--output", str(output), "--force"]) == 0


# --- logs -------------------------------------------------------------------------------------


def test_a_log_file_gets_one_line_per_epoch_and_no_progress_bars(task, tmp_path):
    command = [sys.executable, "-m", "umx.train", *TASK, "--root", str(task), "--epochs", "3"]
    command += ["--output", str(tmp_path / "out")]
    command.remove("--quiet")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\r" not in result.stderr and "|" not in result.stderr  # no bars
    epochs = re.findall(
        r"^umx: epoch (\d)/3: train loss [\d.e-]+, valid loss [\d.e-]+( \(best\))?, [\d.]+ s"
        r"(; next epoch ~[\d.]+ s, last epoch 3 in ~[\d.]+ s)?$",
        result.stderr,
        flags=re.MULTILINE,
    )
    assert [(epoch, bool(outlook)) for epoch, _, outlook in epochs] == [
        ("1", True),
        ("2", True),
        ("3", False),  # nothing left to foresee
    ]
    model = load_separator(tmp_path / "out", niter=0).target_models["vocals"]
    nb_parameters = sum(parameter.numel() for parameter in model.parameters())
    assert (
        f"umx: training vocals on cpu into {tmp_path / 'out'}: 8 tracks (16 s), 2 (4.0 s) to "
        f"validate; {nb_parameters / 1000:.3g} k parameters; 1 batch (8 samples) an epoch; at "
        "most 3 epochs, patience 140\n" in result.stderr
    )
    assert len(result.stderr.splitlines()) <= 6, result.stderr  # statistics, summary, epochs, end


def test_one_training_track_is_said_in_the_singular(tmp_path, capsys):
    from umx import cli

    root = make_task(tmp_path / "task", nb_train=1, nb_valid=1)
    argv = [a for a in TASK if a != "--quiet"] + ["--root", str(root), "--epochs", "1"]
    assert cli.main(["train", *argv, "--output", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert "umx: computing the input statistics over 1 training item" in lines
    assert any(line.startswith("umx: training vocals on cpu into ") for line in lines)
    assert any(": 1 track (" in line and "; 1 batch (1 sample) an epoch;" in line for line in lines)


def test_the_outlook_foresees_the_next_epoch_and_the_end_of_the_patience_window():
    """Not the end of --epochs 1000: the epoch when early stopping would stop, unless sooner."""
    stopper, times = EarlyStopping(patience=140, num_bad_epochs=10), [30.0, 12.0, 10.0, 11.0]
    assert outlook(3, 1000, stopper, times) == (
        "next epoch ~16 s, early stop after epoch 133 in ~34 min unless the validation loss "
        "improves"
    )  # 130 epochs of the mean of the last ones, 15.75 s
    assert outlook(3, 20, stopper, times) == "next epoch ~16 s, last epoch 20 in ~4 min"
    assert outlook(20, 20, stopper, times) == ""
    assert outlook(3, 1000, EarlyStopping(patience=10, num_bad_epochs=10), times) == ""
    assert outlook(7, 10_000, EarlyStopping(patience=1000), [7200.0]) == (
        "next epoch ~2.0 h, early stop after epoch 1007 in ~2000.0 h unless the validation "
        "loss improves"
    )


@pytest.mark.parametrize(
    ("program", "signame", "status"),
    [
        (["umx.cli", "train"], "SIGINT", 130),
        (["umx.cli", "train"], "SIGTERM", 143),
        (["umx.train"], "SIGTERM", 143),  # as torchrun stops it; it used to die without a word
    ],
)
def test_an_interrupted_run_says_the_command_that_resumes_it(
    task, tmp_path, program, signame, status
):
    """Ctrl-C or SIGTERM after an epoch: the last line but one is the command that resumes,
    which then completes the run; the run's lock is gone."""
    output = tmp_path / "model dir"  # a path the shell must quote
    options = [*TASK, "--root", str(task), "--epochs", "4", "--samples-per-track", "32"]
    command = [sys.executable, "-m", *program, *options, "--output", str(output)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # Ctrl-C as in a terminal, even when pytest itself runs where SIGINT is ignored (a
        # background job), which the child would inherit
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    checkpoint = output / "vocals.chkpnt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(getattr(signal, signame))
    _, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    hint, stopped = err.splitlines()  # -q (in TASK) keeps only these: a warning and an error
    assert (
        hint == f"umx: to resume from the last epoch completed: umx train --checkpoint "
        f"'{output}' --target vocals"
    )
    assert stopped in ("umx: interrupted", "umx: stopped by SIGTERM")
    assert not [path.name for path in output.iterdir() if path.name.startswith(".")]
    assert torch.load(checkpoint, weights_only=True)["epoch"] < 4
    resume = shlex.split(hint.split(": ", 2)[2])
    assert cli.main([*resume[1:], "--quiet"]) == 0
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 4


def test_a_second_run_into_an_output_being_trained_is_refused(task, tmp_path, capsys):
    """Nothing stopped a run writing the target another run was training in the same --output
    (one's result was lost, both said "model in ..."): the folder is held per target for the
    whole run. Another target trains there meanwhile, and a run that ends leaves no lock."""
    output = tmp_path / "model"
    options = [*TASK, "--root", str(task), "--samples-per-track", "8", "--output", str(output)]
    command = [sys.executable, "-m", "umx.cli", "train", *options, "--epochs", "1000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (output / "vocals.chkpnt").exists() and time.monotonic() < deadline:
            assert process.poll() is None
            time.sleep(0.02)
        assert cli.main(["train", *options, "--epochs", "1", "--force"]) == 1
        assert capsys.readouterr().err.splitlines() == [
            f"umx: error: another umx train is writing the vocals model in {output}; wait for "
            "it to end, or train into another --output"
        ]
        noise = ["--target-file", "noise.wav", "--interferer-files", "vocals.wav"]
        assert cli.main(["train", *options, *noise, "--epochs", "1"]) == 0
        assert process.poll() is None  # still training: it was held all along
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert not [path.name for path in output.iterdir() if path.name.startswith(".")]
    assert (output / "noise.pth").exists() and (output / "vocals.chkpnt").exists()


def test_a_read_only_output_is_refused_before_any_epoch(task, tmp_path, monkeypatch, capsys):
    """It was found out after the first epoch, writing the checkpoint."""
    (tmp_path / "ro").mkdir()
    read_only_folder(monkeypatch, tmp_path / "ro")
    monkeypatch.setattr(umx.train.loop, "train_epoch", lambda *args, **kwargs: pytest.fail())
    output = tmp_path / "ro" / "model"
    options = [*TASK, "--root", str(task), "--epochs", "1", "--output", str(output)]
    assert cli.main(["train", *options]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"umx: error: --output {output} cannot be written (Read-only file system; write elsewhere)"
    ]
    assert not any((tmp_path / "ro").iterdir())


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_nothing(task, tmp_path, capsys):
    """torch.save hides why a write failed (`unexpected pos 704 vs 598`, a traceback): the file
    and the reason are one line, and nothing half-written is left."""
    output = tmp_path / "model"
    options = [*TASK, "--root", str(task), "--epochs", "1", "--samples-per-track", "8"]
    with file_size_limit(16384):
        assert cli.main(["train", *options, "--output", str(output)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"umx: error: {output / 'vocals.chkpnt'}: File too large"
    ]
    assert not output.exists()  # made by the run, and left empty


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_data_error_in_a_dataloader_worker_is_one_line(tmp_path, caplog, workers):
    """--debug skips the statistics pass, which would meet the NaN first: the DataLoader does,
    in a worker process with --nb-workers 1, whose traceback torch made the message."""
    root = make_task(tmp_path / "data", nb_train=1, nb_valid=1)
    noise_file = root / "train" / "track0" / "noise.wav"
    audio, _ = soundfile.read(noise_file, dtype="float32")
    audio[::100] = np.nan  # in every excerpt
    soundfile.write(noise_file, audio, RATE, subtype="FLOAT")
    options = ["--root", str(root), "--output", str(tmp_path / "out"), "--epochs", "1"]
    with caplog.at_level(logging.ERROR):
        assert main([*TASK, *options, "--debug", "--nb-workers", workers]) == 1
    (record,) = caplog.records
    assert record.getMessage().startswith(f"error: {noise_file}: a NaN sample at ")
    assert "\n" not in record.getMessage()


def test_a_validation_loss_that_is_not_finite_stops_the_run(task, tmp_path, capsys, monkeypatch):
    """As a training loss that is not finite does: the epochs before keep their best model, and
    a run whose first validation is not finite writes no model (not its starting weights)."""
    losses = iter([0.5, math.nan])
    monkeypatch.setattr(Trainer, "_validate", lambda self, dataset, segment: next(losses))
    options = ["train", *TASK, "--root", str(task), "--epochs", "3", "--samples-per-track", "4"]
    assert cli.main([*options, "--output", str(tmp_path / "two")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "umx: error: the validation loss is nan in epoch 2; try a lower --lr"
    ]
    assert read_json(tmp_path / "two" / "vocals.json")["best_epoch"] == 1
    checkpoint = torch.load(tmp_path / "two" / "vocals.chkpnt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["history"]["valid_loss"] == [0.5]
    losses = iter([math.nan])
    assert cli.main([*options, "--output", str(tmp_path / "one")]) == 1
    assert "the validation loss is nan in epoch 1" in capsys.readouterr().err
    assert not list((tmp_path / "one").glob("*.pth")) and not list(
        (tmp_path / "one").glob("*.chkpnt")
    )
    # a checkpoint of an older version, finished without a finite validation loss
    checkpoint["early_stopping"]["best"], checkpoint["history"]["valid_loss"] = math.inf, [math.nan]
    torch.save(checkpoint, tmp_path / "two" / "vocals.chkpnt")
    assert main(["--checkpoint", str(tmp_path / "two"), "--epochs", "1", "--quiet"]) == 1
    assert "had a finite validation loss, so there is no model to write" in capsys.readouterr().err


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


def test_every_torchrun_process_refuses_an_output_folder_of_another_run(task, tmp_path):
    """Rank 0 checks the folder; rank 1 went on into the statistics' all_gather and died there
    with a 35-line traceback of a connection closed by its peer."""
    output = tmp_path / "taken"
    output.mkdir()
    (output / "vocals.pth").write_bytes(b"another run's")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", "-m", "umx.train", *TASK, "--root", str(task)]
    command += ["--output", str(output), "--epochs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode != 0
    refusal = f"umx: error: {output} already holds a vocals model of another run (vocals.pth)"
    assert result.stderr.count(refusal) == 2, result.stderr[-3000:]  # one line from each rank
    assert "[rank1]" not in result.stderr and "all_gather" not in result.stderr
    assert (output / "vocals.pth").read_bytes() == b"another run's"


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


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.0417, 4.5, [0.05, 0.1, 0.2, 0.5, 1.0, 2.0]),
        (0.0031, 2.2, [0.01, 0.1, 1.0]),
        (0.82, 4.5, [1.0, 2.0, 3.0, 4.0]),
        (0.2, 0.25, None),  # too narrow for a log axis
        (1e-9, 1e9, [1e-9, 1e-7, 1e-5, 1e-3, 1e-1, 1e1, 1e3, 1e5, 1e7, 1e9]),
    ],
)
def test_loss_ticks_are_round_numbers_in_the_range(low, high, expected):
    assert loss_ticks(low, high) == expected


def test_the_loss_curve_has_whole_epochs_and_plain_loss_labels():
    for nb_epochs, train_loss in ((3, [4.5, 2.7, 1.3]), (12, list(np.geomspace(4.5, 0.04, 12)))):
        history = History(train_loss, [x / 2 for x in train_loss], best_epoch=nb_epochs)
        figure = loss_figure(history, "vocals")
        figure.draw_without_rendering()
        (axes,) = figure.axes
        low, high = axes.get_xlim()
        epochs = [tick for tick in axes.get_xticks() if low <= tick <= high]
        assert epochs and all(tick == int(tick) for tick in epochs)
        assert axes.get_yscale() == "log"
        labels = [label.get_text() for label in axes.get_yticklabels() if label.get_text()]
        assert len(labels) >= 3
        assert all(float(label) > 0 and "$" not in label for label in labels)


def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopping(patience=2)
    improved = [stopper.step(loss) for loss in (3.0, 2.0, 2.5, 1.0, 1.5, 1.2)]
    assert improved == [True, True, False, True, False, False]
    assert stopper.best == 1.0 and stopper.num_bad_epochs == 2 and stopper.should_stop


def test_unknown_device_is_an_error():
    with pytest.raises(UmxError, match="unknown device"):
        resolve_device("tpu9")


def test_python_m_umx_train_refuses_an_unknown_option_in_one_line(capsys):
    """Its parser printed the whole usage first, 27 lines, as `umx train`'s does not."""
    with pytest.raises(SystemExit) as exit:
        main(["--bogus"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "python -m umx.train: error: unrecognized arguments: --bogus (see python -m umx.train "
        "--help)"
    ]
