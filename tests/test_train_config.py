"""`TrainConfig`: a training run's options, with the dataset's defaults filled in and checked
when built; `resolve_options` merges the defaults, a resumed checkpoint's and those given."""

import dataclasses
import math
import re
from pathlib import Path

import pytest

from umx.defaults import MUSDB_SAMPLES_PER_TRACK
from umx.errors import UmxError
from umx.train import DEFAULTS, TrainConfig, resolve_options


def test_the_dataset_fills_in_its_own_defaults():
    musdb = TrainConfig(root=Path("musdb"))
    assert musdb.samples_per_track == MUSDB_SAMPLES_PER_TRACK
    assert musdb.random_track_mix is True
    assert musdb.target == "vocals"
    aligned = TrainConfig(
        dataset="aligned", root=Path("data"), input_file="mix.wav", output_file="speech.wav"
    )
    assert (aligned.samples_per_track, aligned.random_track_mix) == (1, False)
    assert aligned.target == "speech"
    given = TrainConfig(root=Path("musdb"), target="drums", samples_per_track=3)
    assert (given.target, given.samples_per_track) == ("drums", 3)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({}, "the musdb dataset needs --root"),
        ({"root": "d", "dataset": "aligned", "input_file": "a.wav"}, "needs --output-file"),
        ({"root": "d", "dataset": "wav"}, "--dataset must be one of"),
        ({"root": "d", "lr": math.nan}, "--lr must be a finite number"),
        ({"root": "d", "epochs": 0}, "--epochs must be at least 1"),
        ({"root": "d", "nb_channels": 3}, "--nb-channels must be 1 or 2"),
        ({"root": "d", "nfft": 1024, "nhop": 2048}, "--nfft 1024 and --nhop 2048"),
        ({"root": "d", "nfft": 10**8}, "n_fft must be from 2 to 65536, not 100000000"),
        ({"root": "d", "nb_workers": 10**8}, "--nb-workers must be at most [0-9]+, 4 per core"),
        ({"root": "d", "batch_size": 10**24}, "--batch-size must be at most 2147483647, not 1"),
        ({"root": "d", "hidden_size": 2**63}, "--hidden-size must be at most 2147483647"),
        ({"root": "d", "samples_per_track": 2**31}, "--samples-per-track must be at most"),
        ({"root": "d", "nb_train_samples": 2**31}, "--nb-train-samples must be at most"),
        ({"root": "d", "epochs": 10**24}, "--epochs must be at most 2147483647"),
        ({"root": "d", "nb_workers": 10**24}, "--nb-workers must be at most [0-9]+, 4 per core"),
        ({"root": "d", "nfft": 10**24}, "n_fft must be from 2 to 65536"),
        ({"root": "d", "target": "../up"}, "--target"),
        ({"root": "d", "target": "xumx"}, "--target has the target name 'xumx', which a model "),
        ({"root": "d", "target": "Separator"}, "keeps for its settings \\(separator.json\\)"),
        (
            {"root": "d", "dataset": "aligned", "input_file": "n.wav", "output_file": "xumx.wav"},
            "--output-file xumx.wav has the target name 'xumx'.*: give the target another name "
            "with --target",
        ),
        (
            {"root": "d", "dataset": "aligned", "input_file": "n.wav", "output_file": "a.b.wav"},
            "--output-file a.b.wav has a target name with a dot",
        ),
        (
            {
                "root": "d",
                "dataset": "sourcefolder",
                "target_dir": "separator",
                "interferer_dirs": ["noise"],
            },
            "--target-dir separator has the target name 'separator'",
        ),
        ({"root": "d", "is_wav": "yes"}, "--is-wav cannot be 'yes'"),
    ],
)
def test_options_that_make_no_sense_are_refused_when_built(fields, message):
    with pytest.raises(UmxError, match=message):
        TrainConfig(**fields)


def test_a_config_is_frozen_and_its_fields_are_the_defaults():
    config = TrainConfig(root=Path("musdb"))
    assert [field.name for field in dataclasses.fields(config)] == list(DEFAULTS)
    assert config.epochs == DEFAULTS["epochs"] == 1000
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 2


def test_a_resumed_run_takes_the_checkpoints_options_but_those_of_the_invocation():
    saved = {**DEFAULTS, "root": "musdb", "target": "bass", "epochs": 7, "hidden_size": 64}
    saved.update(quiet=True, device="cuda", output="elsewhere")
    given = {"checkpoint": Path("run"), "epochs": 9, "quiet": None}
    config = resolve_options(given, {"args": saved})
    assert (config.target, config.hidden_size, config.epochs) == ("bass", 64, 9)
    assert (config.quiet, config.device, config.output) == (False, "auto", Path("run"))
    with pytest.raises(UmxError, match="--hidden-size 32 differs from the checkpoint's 64"):
        resolve_options({**given, "hidden_size": 32}, {"args": saved})
    with pytest.raises(UmxError, match="--model and --checkpoint exclude each other"):
        resolve_options({**given, "model": "umxl"}, {"args": saved})


def test_an_option_of_another_dataset_is_refused():
    with pytest.raises(UmxError, match="--target-dir applies to the sourcefolder dataset"):
        resolve_options({"root": Path("musdb"), "target_dir": "speech"})


def test_an_xumx_config_trains_every_source_and_refuses_what_it_cannot_use():
    xumx = TrainConfig(root=Path("musdb"), architecture="xumx")
    assert (xumx.target, xumx.architecture) == ("xumx", "xumx")
    with pytest.raises(UmxError, match="--target does not apply to --architecture xumx"):
        TrainConfig(root=Path("musdb"), architecture="xumx", target="vocals")
    with pytest.raises(UmxError, match="--architecture xumx trains a new model"):
        TrainConfig(root=Path("musdb"), architecture="xumx", model="umxl")
    with pytest.raises(UmxError, match="the musdb or trackfolder_fix dataset, not aligned"):
        TrainConfig(
            dataset="aligned", root=Path("d"), input_file="a.wav", output_file="b.wav",
            architecture="xumx",
        )  # fmt: skip
    with pytest.raises(UmxError, match="--architecture must be one of umx, xumx"):
        TrainConfig(root=Path("musdb"), architecture="tasnet")


def test_a_resumed_xumx_run_keeps_its_architecture():
    saved = {**DEFAULTS, "root": "musdb", "architecture": "xumx", "target": "xumx"}
    config = resolve_options({"checkpoint": Path("run")}, {"args": saved})
    assert (config.architecture, config.target) == ("xumx", "xumx")
    with pytest.raises(UmxError, match="--architecture umx differs from the checkpoint's xumx"):
        resolve_options({"checkpoint": Path("run"), "architecture": "umx"}, {"args": saved})


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"dataset": "aligned", "input_file": "mix.wav", "output_file": "/data/t0/clean.wav"},
            "--output-file takes the name of a file inside each track folder, not '/data/t0/",
        ),
        (
            {"dataset": "aligned", "input_file": "mix.wav", "output_file": "../t1/clean.wav"},
            "--output-file takes the name of a file inside each track folder, not '../t1/",
        ),
        ({"dataset": "aligned", "input_file": "..", "output_file": "a.wav"}, "not '..'"),
        ({"dataset": "aligned", "input_file": "", "output_file": "a.wav"}, "not ''"),
        ({"dataset": "aligned", "input_file": "t\\a.wav", "output_file": "a.wav"}, "--input-file"),
        (
            {"dataset": "trackfolder_var", "target_file": "./vocals.wav"},
            "--target-file takes the name of a file",
        ),
        (
            {"dataset": "sourcefolder", "target_dir": "/speech", "interferer_dirs": ["noise"]},
            "--target-dir takes the name of a folder inside train/ and valid/, not '/speech'",
        ),
        (
            {"dataset": "sourcefolder", "target_dir": "speech", "interferer_dirs": ["../n"]},
            "--interferer-dirs takes the name of a folder",
        ),
    ],
)
def test_file_and_folder_options_are_plain_names(fields, message):
    with pytest.raises(UmxError, match=re.escape(message)):
        TrainConfig(root=Path("d"), **fields)
