"""umx.modeldir and umx.zoo: checkpoint format, model directories, download / verify / cache,
bad input.

Downloads go to a real HTTP server on 127.0.0.1 serving a temporary folder; nothing reaches the
network.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import json
import logging
import math
import os
import pickle
import re
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from processes import read_only_folder
from umx import modeldir, zoo
from umx.errors import UmxError
from umx.files import torch_save_atomic, write_json_atomic
from umx.model import OpenUnmix
from umx.modeldir import export_model, save_separator, save_target_model
from umx.separator import Separator
from umx.weights import TargetArchitecture, infer_architecture, load_target_model
from umx.zoo import (
    DEFAULT_MODEL,
    FALLBACK_MODEL,
    MODELS,
    ZooEntry,
    cache_dir,
    download,
    download_models,
    list_models,
    load_separator,
    registry,
    resolve_model,
)

N_FFT = 128
N_HOP = 32
NB_BINS = N_FFT // 2 + 1
HIDDEN = 16
MAX_BIN = 40
RATE = 8000.0
TARGETS = ("vocals", "drums")
NB_TIMESTEPS = 3000

# The umxhq table of the shared checkpoint-format doc, verbatim.
UMXHQ_SHAPES = {
    "input_mean": (1487,),
    "input_scale": (1487,),
    "output_scale": (2049,),
    "output_mean": (2049,),
    "fc1.weight": (512, 2974),
    **{f"bn1.{name}": (512,) for name in ("weight", "bias", "running_mean", "running_var")},
    "bn1.num_batches_tracked": (),
    **{
        f"lstm.{name}_l{k}{direction}": shape
        for k in range(3)
        for direction in ("", "_reverse")
        for name, shape in (
            ("weight_ih", (1024, 512)),
            ("weight_hh", (1024, 256)),
            ("bias_ih", (1024,)),
            ("bias_hh", (1024,)),
        )
    },
    "fc2.weight": (512, 1024),
    **{f"bn2.{name}": (512,) for name in ("weight", "bias", "running_mean", "running_var")},
    "bn2.num_batches_tracked": (),
    "fc3.weight": (4098, 512),
    **{f"bn3.{name}": (4098,) for name in ("weight", "bias", "running_mean", "running_var")},
    "bn3.num_batches_tracked": (),
}


def reference_shapes(nb_bins, nb_channels, hidden, max_bin, nb_layers=3, unidirectional=False):
    """The shapes the doc's formulas give for any size."""
    lstm_hidden = hidden if unidirectional else hidden // 2
    bn = ("weight", "bias", "running_mean", "running_var")
    shapes = {
        "input_mean": (max_bin,),
        "input_scale": (max_bin,),
        "output_scale": (nb_bins,),
        "output_mean": (nb_bins,),
        "fc1.weight": (hidden, max_bin * nb_channels),
        "fc2.weight": (hidden, 2 * hidden),
        "fc3.weight": (nb_bins * nb_channels, hidden),
    }
    for layer, width in (("bn1", hidden), ("bn2", hidden), ("bn3", nb_bins * nb_channels)):
        shapes.update({f"{layer}.{name}": (width,) for name in bn})
        shapes[f"{layer}.num_batches_tracked"] = ()
    for k in range(nb_layers):
        for direction in ("",) if unidirectional else ("", "_reverse"):
            shapes[f"lstm.weight_ih_l{k}{direction}"] = (4 * lstm_hidden, hidden)
            shapes[f"lstm.weight_hh_l{k}{direction}"] = (4 * lstm_hidden, lstm_hidden)
            shapes[f"lstm.bias_ih_l{k}{direction}"] = (4 * lstm_hidden,)
            shapes[f"lstm.bias_hh_l{k}{direction}"] = (4 * lstm_hidden,)
    return shapes


def shapes_of(state_dict):
    return {key: tuple(value.shape) for key, value in state_dict.items()}


def random_model(nb_channels=2, nb_layers=2, unidirectional=False, seed=0):
    """A small model with random weights and batch-norm statistics, frozen."""
    generator = torch.Generator().manual_seed(seed)
    model = OpenUnmix(NB_BINS, nb_channels, HIDDEN, nb_layers, unidirectional, max_bin=MAX_BIN)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
    return model.freeze()


def small_separator(targets=TARGETS, nb_channels=2):
    models = {target: random_model(nb_channels, seed=i) for i, target in enumerate(targets)}
    return Separator(
        models, sample_rate=RATE, n_fft=N_FFT, n_hop=N_HOP, nb_channels=nb_channels
    ).eval()


def mixture(nb_channels=2):
    return torch.randn(1, nb_channels, NB_TIMESTEPS, generator=torch.Generator().manual_seed(1))


def sha8(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]


def no_network(monkeypatch):
    """Make opening any URL fail, and record the attempts (a probe thread cannot fail a test)."""
    opened = []

    def refuse(request, *args, **kwargs):
        opened.append(getattr(request, "full_url", request))
        raise OSError("network used in a test")

    monkeypatch.setattr("urllib.request.urlopen", refuse)
    return opened


@pytest.fixture
def zoo_log(caplog):
    """The records of `umx.zoo`, even when the CLI has cut the `umx` logger from the root."""
    logger = logging.getLogger("umx.zoo")  # its modules' loggers are its children
    level, propagate = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # else the root's capture records each message a second time
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture
def saved(tmp_path):
    """A small two-target separator and its model directory."""
    separator = small_separator()
    return separator, save_separator(separator, tmp_path / "model")


# --- the checkpoint format -----------------------------------------------------------------------


def test_umxhq_size_state_dict_matches_the_published_table():
    state = OpenUnmix(2049, 2, 512, max_bin=1487).state_dict()
    assert shapes_of(state) == UMXHQ_SHAPES
    assert len(state) == 46
    assert sum(value.numel() for value in state.values()) == 8_903_595
    assert reference_shapes(2049, 2, 512, 1487) == UMXHQ_SHAPES
    arch = infer_architecture(state)
    assert (arch.nb_bins, arch.nb_channels, arch.hidden_size, arch.max_bin) == (2049, 2, 512, 1487)
    assert (arch.nb_layers, arch.unidirectional) == (3, False)


@pytest.mark.parametrize(
    ("nb_bins", "nb_channels", "hidden", "max_bin"),
    [(2049, 2, 1024, 1487), (513, 1, 256, 513)],
    ids=["umxl", "umxse"],
)
def test_published_sizes_have_the_reference_layout(nb_bins, nb_channels, hidden, max_bin):
    state = OpenUnmix(nb_bins, nb_channels, hidden, max_bin=max_bin).state_dict()
    assert shapes_of(state) == reference_shapes(nb_bins, nb_channels, hidden, max_bin)
    arch = infer_architecture(state)
    assert (arch.nb_bins, arch.nb_channels, arch.hidden_size, arch.max_bin) == (
        nb_bins,
        nb_channels,
        hidden,
        max_bin,
    )


@pytest.mark.parametrize(
    ("nb_layers", "unidirectional", "nb_channels"),
    [(3, False, 2), (2, False, 2), (1, True, 1), (3, True, 2)],
)
def test_architecture_is_inferred(nb_layers, unidirectional, nb_channels):
    model = OpenUnmix(NB_BINS, nb_channels, HIDDEN, nb_layers, unidirectional, max_bin=MAX_BIN)
    state = model.state_dict()
    assert shapes_of(state) == reference_shapes(
        NB_BINS, nb_channels, HIDDEN, MAX_BIN, nb_layers, unidirectional
    )
    arch = infer_architecture(state)
    assert arch == TargetArchitecture.of(model)
    assert (arch.nb_layers, arch.unidirectional, arch.nb_channels) == (
        nb_layers,
        unidirectional,
        nb_channels,
    )


def test_reference_file_with_float16_and_extra_keys_loads(tmp_path):
    """As published: half precision, plus the STFT buffers of old reference models."""
    model = OpenUnmix(2049, 2, 512, max_bin=1487)
    state = {key: value.half() if value.is_floating_point() else value for key, value in
             model.state_dict().items()}  # fmt: skip
    state |= {
        "sample_rate": torch.tensor(44100.0),
        "stft.window": torch.hann_window(4096),
        "istft.window": torch.hann_window(4096),
        "transform.0.window": torch.hann_window(4096),
    }
    path = tmp_path / "vocals-00000000.pth"
    torch.save(state, path)
    loaded = load_target_model(path, {"nfft": 4096, "nb_channels": 2, "hidden_size": 512})
    assert not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    assert loaded.fc1.weight.dtype == torch.float32
    assert torch.equal(loaded.fc1.weight, state["fc1.weight"].float())


# --- model directories ---------------------------------------------------------------------------


def test_round_trip_gives_identical_outputs(saved):
    separator, directory = saved
    loaded = load_separator(directory)
    assert loaded.targets == list(TARGETS)
    assert (loaded.sample_rate, loaded.n_fft, loaded.n_hop, loaded.nb_channels) == (
        RATE,
        N_FFT,
        N_HOP,
        2,
    )
    assert not loaded.training
    assert all(not model.training for model in loaded.target_models.values())
    audio = mixture()
    with torch.inference_mode():
        assert torch.equal(loaded(audio), separator(audio))


def test_saved_files_follow_the_official_layout(tmp_path):
    separator = small_separator()
    metadata = {"vocals": {"best_loss": 0.5, "args": {"lr": 0.001, "hidden_size": 999}}}
    directory = save_separator(separator, tmp_path / "model", metadata=metadata)
    assert sorted(path.name for path in directory.iterdir()) == [
        "drums.json",
        "drums.pth",
        "separator.json",
        "vocals.json",
        "vocals.pth",
    ]
    config = json.loads((directory / "separator.json").read_text())
    assert config == {
        "sample_rate": RATE,
        "nfft": N_FFT,
        "nhop": N_HOP,
        "nb_channels": 2,
        "targets": list(TARGETS),
    }
    vocals = json.loads((directory / "vocals.json").read_text())
    assert vocals["best_loss"] == 0.5
    args = vocals["args"]
    assert args["lr"] == 0.001
    assert args["hidden_size"] == HIDDEN  # the model's architecture wins over metadata
    expected = {
        "sample_rate": RATE,
        "nfft": N_FFT,
        "nhop": N_HOP,
        "nb_channels": 2,
        "nb_layers": 2,
        "unidirectional": False,
        "max_bin": MAX_BIN,
    }
    assert {key: args[key] for key in expected} == expected
    assert args["bandwidth"] == pytest.approx((MAX_BIN - 1) * RATE / N_FFT)
    state = torch.load(directory / "vocals.pth", weights_only=True)
    assert set(state) == set(random_model().state_dict())


def test_reference_style_directory_loads(saved):
    """`<target>-<hash>.pth` names, no target json, no `targets` key, extra reference keys."""
    separator, directory = saved
    (directory / "separator.json").write_text(
        json.dumps({"sample_rate": RATE, "nfft": N_FFT, "nhop": N_HOP, "nb_channels": 2})
    )
    for target in TARGETS:
        (directory / f"{target}.json").unlink()
        path = directory / f"{target}.pth"
        state = torch.load(path, weights_only=True)
        state |= {"sample_rate": torch.tensor(RATE), "stft.window": torch.hann_window(N_FFT)}
        torch.save(state, path)
        path.rename(directory / f"{target}-{sha8(path)}.pth")
    loaded = load_separator(directory)
    assert loaded.targets == sorted(TARGETS)  # without a list, targets come in name order
    audio = mixture()
    with torch.inference_mode():
        # the same up to rounding: the Wiener filter sums over the sources in their order
        torch.testing.assert_close(loaded(audio), separator(audio).flip(1))


def test_targets_pick_a_subset_in_the_order_given(saved):
    _, directory = saved
    loaded = load_separator(directory, targets=["drums"], niter=0)
    assert loaded.targets == ["drums"]
    assert load_separator(directory, targets=["drums", "vocals"]).targets == ["drums", "vocals"]


def test_save_refuses_to_overwrite_unless_forced(saved):
    separator, directory = saved
    with pytest.raises(UmxError, match="already holds a model"):
        save_separator(separator, directory)
    stale = directory / "vocals-0123abcd.pth"
    stale.write_bytes(b"old")
    save_separator(separator, directory, force=True)
    assert not stale.exists()
    load_separator(directory)


def test_save_target_model_is_reusable(tmp_path):
    model = random_model(nb_channels=1, nb_layers=1, unidirectional=True)
    path = save_target_model(
        model,
        tmp_path / "train",
        "speech",
        sample_rate=RATE,
        n_fft=N_FFT,
        n_hop=N_HOP,
        args={"seq_dur": 6.0},
        metadata={"epochs_trained": 3},
    )
    assert path == tmp_path / "train" / "speech.pth"
    saved_json = json.loads((tmp_path / "train" / "speech.json").read_text())
    assert saved_json["epochs_trained"] == 3
    assert saved_json["args"]["seq_dur"] == 6.0
    loaded = load_target_model(path, saved_json["args"])
    assert loaded.unidirectional and loaded.nb_layers == 1 and not loaded.training


def test_atomic_writes_leave_the_old_file_on_failure(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    path = tmp_path / "weights.pth"
    torch_save_atomic({"x": torch.ones(2)}, path)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        torch_save_atomic({"x": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))
    write_json_atomic(tmp_path / "a.json", {"path": tmp_path})
    assert json.loads((tmp_path / "a.json").read_text()) == {"path": str(tmp_path)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "weights.pth"]


# --- bad input -----------------------------------------------------------------------------------


def test_unknown_model_name_lists_the_known_ones(tmp_path):
    with pytest.raises(UmxError, match="umxl, umxhq, umx, umxse"):
        load_separator(str(tmp_path / "no-such-model"))


def test_missing_separator_json(saved):
    _, directory = saved
    (directory / "separator.json").unlink()
    with pytest.raises(UmxError, match=re.escape(f"{directory / 'separator.json'} is missing")):
        load_separator(directory)


def test_missing_target_weights(saved):
    _, directory = saved
    (directory / "vocals.pth").unlink()
    with pytest.raises(UmxError, match=re.escape(f"{directory / 'vocals.pth'} is missing")):
        load_separator(directory)


def test_unknown_target_lists_the_available_ones(saved):
    _, directory = saved
    with pytest.raises(UmxError, match="no target 'piano'; its targets are vocals, drums"):
        load_separator(directory, targets=["vocals", "piano"])


@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_corrupt_weights(saved, damage):
    _, directory = saved
    path = directory / "vocals.pth"
    data = path.read_bytes()
    damaged = {
        "random": os.urandom(len(data)),
        "truncated": data[: len(data) // 2],
        "empty": b"",
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(UmxError, match=re.escape(f"{path} is not a readable torch file")):
        load_separator(directory)


def test_weights_of_another_size_than_the_json_says(saved):
    _, directory = saved
    json_path = directory / "vocals.json"
    data = json.loads(json_path.read_text())
    data["args"]["hidden_size"] = 2 * HIDDEN
    json_path.write_text(json.dumps(data))
    message = (
        "vocals.pth does not match its json: its args say hidden_size 32 but the weights have 16"
    )
    with pytest.raises(UmxError, match=re.escape(message)):
        load_separator(directory)


def test_weights_of_another_stft_than_separator_json_says(saved):
    _, directory = saved
    path = directory / "separator.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps(config | {"nfft": 2 * N_FFT}))
    for target in TARGETS:
        (directory / f"{target}.json").unlink()
    with pytest.raises(UmxError, match=r"separator\.json says 2 channels and nfft 256"):
        load_separator(directory)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("fc2.weight"), "lacks fc2.weight"),
        (lambda s: s.pop("output_mean"), "has no 'output_mean' entry"),
        (lambda s: s.update({"fc3.weight": torch.zeros(3, HIDDEN)}), "fc3.weight has shape"),
        (lambda s: s.update({"extra.weight": torch.zeros(1)}), "unexpected entries extra"),
    ],
    ids=["missing", "missing-needed", "wrong-shape", "unexpected"],
)
def test_inconsistent_state_dicts(tmp_path, change, message):
    state = random_model().state_dict()
    change(state)
    path = tmp_path / "vocals.pth"
    torch.save(state, path)
    with pytest.raises(UmxError, match=message):
        load_target_model(path)


def test_file_without_a_state_dict(tmp_path):
    path = tmp_path / "vocals.pth"
    torch.save([torch.ones(1)], path)
    with pytest.raises(UmxError, match="does not hold a state dict"):
        load_target_model(path)


# --- model directories are untrusted input -------------------------------------------------------

DELETE = object()


def edit_json(name, **changes):
    """Change fields of separator.json, or of the `args` of another json."""

    def edit(directory):
        path = directory / name
        data = json.loads(path.read_text())
        fields = data if name == "separator.json" else data["args"]
        for key, value in changes.items():
            if value is DELETE:
                fields.pop(key, None)
            else:
                fields[key] = value
        path.write_text(json.dumps(data))

    return edit


def write_raw(name, data):
    def edit(directory):
        (directory / name).write_bytes(data if isinstance(data, bytes) else data.encode())

    return edit


def edit_weights(change):
    def edit(directory):
        state = torch.load(directory / "vocals.pth", weights_only=True)
        change(state)
        torch.save(state, directory / "vocals.pth")

    return edit


def only_weights(directory):
    """No target json and no `targets`: the targets come from the file names."""
    edit_json("separator.json", targets=DELETE)(directory)
    for target in TARGETS:
        (directory / f"{target}.json").unlink()


def unsafe_weights_name(directory):
    only_weights(directory)
    (directory / "vocals.pth").rename(directory / "voc\x01als.pth")


def no_targets(directory):
    only_weights(directory)
    for target in TARGETS:
        (directory / f"{target}.pth").unlink()


def set_value(key, value):
    return lambda state: state[key].view(-1).__setitem__(0, value)


def set_tensor(key, change):
    """vocals.pth with `change` applied to one of its tensors."""
    return edit_weights(lambda state: state.update({key: change(state[key])}))


def without_json(edit):
    """`edit`, in a directory without target jsons: only the weights say what the model is."""

    def both(directory):
        only_weights(directory)
        edit(directory)

    return both


def replace_weights(**sizes):
    """vocals.pth holding the state dict of a one-layer model of other `sizes`, without target
    jsons."""

    def edit(directory):
        model = OpenUnmix(
            NB_BINS, 2, **{"hidden_size": HIDDEN, "nb_layers": 1, "max_bin": MAX_BIN, **sizes}
        )
        torch.save(model.state_dict(), directory / "vocals.pth")

    return without_json(edit)


class RunsCode:
    """Pickled, runs a shell command when unpickled: what `weights_only` refuses."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


SEP, VOCALS, WEIGHTS, DIRECTORY = "separator.json", "vocals.json", "vocals.pth", ""
DEEP = "[" * 100_000 + "]" * 100_000
BAD_DIRECTORIES = {
    "rate-nan": (edit_json(SEP, sample_rate=math.nan), SEP, "'sample_rate': nan is not a finite"),
    "rate-inf": (edit_json(SEP, sample_rate=math.inf), SEP, "'sample_rate': inf is not a finite"),
    "rate-zero": (edit_json(SEP, sample_rate=0), SEP, "'sample_rate': 0 is not in [1000, 768000]"),
    "rate-negative": (edit_json(SEP, sample_rate=-8000.0), SEP, "-8000.0 is not in [1000"),
    "rate-huge": (edit_json(SEP, sample_rate=1e9), SEP, "1000000000.0 is not in [1000, 768000]"),
    "rate-string": (edit_json(SEP, sample_rate="8000"), SEP, "'8000' is not a finite number"),
    "rate-bool": (edit_json(SEP, sample_rate=True), SEP, "True is not a finite number"),
    "rate-missing": (edit_json(SEP, sample_rate=DELETE), SEP, "lacks 'sample_rate'"),
    "nfft-float": (edit_json(SEP, nfft=128.0), SEP, "'nfft': 128.0 is not a whole number"),
    "nfft-zero": (edit_json(SEP, nfft=0), SEP, "'nfft': 0 is not in [2, 65536]"),
    "nfft-huge": (edit_json(SEP, nfft=1 << 20), SEP, "'nfft': 1048576 is not in [2, 65536]"),
    "nfft-bool": (edit_json(SEP, nfft=True), SEP, "'nfft': True is not a whole number"),
    "nhop-is-nfft": (edit_json(SEP, nhop=N_FFT), SEP, "hop of 128 with n_fft 128 cannot be"),
    "nhop-zero": (edit_json(SEP, nhop=0), SEP, "'nhop': 0 is not in [1, 65536]"),
    "nhop-null": (edit_json(SEP, nhop=None), SEP, "lacks 'nhop'"),
    "channels-3": (edit_json(SEP, nb_channels=3), SEP, "'nb_channels': 3 is not in [1, 2]"),
    "traversal": (edit_json(SEP, targets=["../../x"]), SEP, "unsafe target name '../../x'"),
    "backslash": (edit_json(SEP, targets=["..\\x"]), SEP, "unsafe target name"),
    "nul": (edit_json(SEP, targets=["voc\x00als"]), SEP, "unsafe target name"),
    "dot": (edit_json(SEP, targets=[".vocals"]), SEP, "unsafe target name '.vocals'"),
    "dotdot": (edit_json(SEP, targets=[".."]), SEP, "unsafe target name '..'"),
    "space": (edit_json(SEP, targets=[" vocals"]), SEP, "unsafe target name"),
    "long": (edit_json(SEP, targets=["v" * 65]), SEP, "unsafe target name"),
    "empty-name": (edit_json(SEP, targets=[""]), SEP, "unsafe target name ''"),
    "not-a-name": (edit_json(SEP, targets=[1]), SEP, "target name that is not a string: 1"),
    "no-list": (edit_json(SEP, targets="vocals"), SEP, "must be a non-empty list"),
    "empty-list": (edit_json(SEP, targets=[]), SEP, "must be a non-empty list"),
    "twice": (edit_json(SEP, targets=["vocals", "vocals"]), SEP, "names a target twice"),
    "array": (write_raw(SEP, "[1]"), SEP, "does not hold a JSON object"),
    "deep": (write_raw(SEP, DEEP), SEP, "nested too deeply"),
    "huge": (write_raw(SEP, "{" + " " * (1 << 20) + "}"), SEP, "too large"),
    "invalid": (write_raw(SEP, "{"), SEP, "is not valid JSON"),
    "binary": (write_raw(SEP, b"\xff\xfe\x00"), SEP, "is not valid JSON"),
    "args-nfft-nan": (edit_json(VOCALS, nfft=math.nan), VOCALS, "'nfft': nan is not a whole"),
    "args-rate": (edit_json(VOCALS, sample_rate=-1), VOCALS, "'sample_rate': -1 is not in"),
    "args-hidden": (edit_json(VOCALS, hidden_size="16"), VOCALS, "'16' is not a whole number"),
    "args-layers": (edit_json(VOCALS, nb_layers=0), VOCALS, "'nb_layers': 0 is not in"),
    "args-unidirectional": (edit_json(VOCALS, unidirectional="no"), VOCALS, "true or false"),
    "args-nhop": (edit_json(VOCALS, nhop=N_FFT), VOCALS, "cannot be inverted"),
    "args-list": (write_raw(VOCALS, '{"args": [1]}'), VOCALS, "bad 'args'"),
    "args-deep": (write_raw(VOCALS, DEEP), VOCALS, "nested too deeply"),
    "weights-nan": (edit_weights(set_value("fc1.weight", math.nan)), WEIGHTS, "NaN or infinite"),
    "weights-inf": (edit_weights(set_value("output_mean", math.inf)), WEIGHTS, "NaN or infinite"),
    "variance": (edit_weights(set_value("bn1.running_var", -1.0)), WEIGHTS, "negative variances"),
    "weights-int": (set_tensor("fc1.weight", torch.Tensor.long), WEIGHTS, "int64 values where"),
    "weights-bool": (set_tensor("bn1.weight", torch.Tensor.bool), WEIGHTS, "holds bool values"),
    "weights-complex": (
        set_tensor("fc1.weight", lambda value: value.to(torch.complex64)),
        WEIGHTS,
        "'fc1.weight' holds complex64 values, not real numbers",
    ),
    "variance-complex": (
        set_tensor("bn1.running_var", lambda value: value.to(torch.complex64)),
        WEIGHTS,
        "complex64",
    ),
    "weights-sparse": (set_tensor("fc2.weight", torch.Tensor.to_sparse), WEIGHTS, "sparse_coo"),
    "weights-meta": (
        set_tensor("fc2.weight", lambda value: value.to("meta")),
        WEIGHTS,
        "'fc2.weight' is a meta tensor, without values",
    ),
    "weights-code": (write_raw(WEIGHTS, pickle.dumps(RunsCode(), 4)), WEIGHTS, "not a readable"),
    "hidden-odd": (replace_weights(hidden_size=7), WEIGHTS, "hidden size (fc1's outputs) is 7"),
    "hidden-one": (without_json(set_tensor("fc1.weight", lambda v: v[:1])), WEIGHTS, "1, odd"),
    "hidden-zero": (without_json(set_tensor("fc1.weight", lambda v: v[:0])), WEIGHTS, "no outputs"),
    "fc1-flat": (set_tensor("fc1.weight", torch.Tensor.flatten), WEIGHTS, "not 2-D"),
    "input-bins": (replace_weights(max_bin=NB_BINS + 10), WEIGHTS, "75 input bins, more than its"),
    "stft-rate": (edit_json(SEP, sample_rate=2 * RATE), VOCALS, "says sample_rate 8000.0 but"),
    "stft-nfft": (edit_json(SEP, nfft=N_FFT + 1), VOCALS, "says nfft 128 but"),
    "stft-nhop": (edit_json(VOCALS, nhop=2 * N_HOP), VOCALS, "says nhop 64 but"),
    "nhop-tiny": (edit_json(SEP, nhop=1), SEP, "hop of 1 with n_fft 128 is too short"),
    "args-nhop-tiny": (edit_json(VOCALS, nhop=N_FFT // 32), VOCALS, "hop of 4 with n_fft 128"),
    "unsafe-file": (unsafe_weights_name, DIRECTORY, "unsafe target name 'voc\\x01als'"),
    "no-targets": (no_targets, DIRECTORY, "holds no target models"),
}


@pytest.mark.parametrize(
    ("edit", "file", "fragment"), BAD_DIRECTORIES.values(), ids=BAD_DIRECTORIES
)
def test_bad_model_directories_are_refused_in_one_line(saved, edit, file, fragment):
    _, directory = saved
    edit(directory)
    with pytest.raises(UmxError) as error:
        load_separator(directory, niter=0)
    message = str(error.value)
    assert fragment in message
    assert str(directory / file) in message and "\n" not in message and len(message) < 600


def test_a_target_json_of_another_stft_names_both_files(saved):
    """Loaded with another hop than it was trained with, a model quietly gives other audio."""
    _, directory = saved
    edit_json(VOCALS, nhop=2 * N_HOP)(directory)
    with pytest.raises(UmxError) as error:
        load_separator(directory)
    assert str(error.value) == (
        f"{directory / VOCALS} says nhop 64 but {directory / SEP} says 32: a model only works "
        "with the STFT it was trained with"
    )


def test_a_pickle_of_code_is_refused_without_warnings(tmp_path):
    """torch warns before refusing it ("Detected pickle protocol 4..."): the CLI printed that
    above its one-line error."""
    path = tmp_path / "vocals.pth"
    path.write_bytes(pickle.dumps(RunsCode(), 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UmxError, match="is not a readable torch file"):
            load_target_model(path)
    assert [str(warning.message) for warning in caught] == []


def test_a_nan_sample_rate_is_refused_at_load_not_at_resampling(saved):
    """It once made the resampler spin forever: refused before any audio is read."""
    _, directory = saved
    edit_json(SEP, sample_rate=math.nan)(directory)
    with pytest.raises(UmxError, match="not a finite number"):
        load_separator(directory)


def test_empty_directory(tmp_path):
    with pytest.raises(UmxError, match=re.escape(f"{tmp_path / 'separator.json'} is missing")):
        load_separator(tmp_path)


def test_hidden_files_are_not_targets(saved):
    """macOS leaves `._vocals.pth` beside copied files: they are not targets."""
    _, directory = saved
    only_weights(directory)
    (directory / "._vocals.pth").write_bytes(b"\x00\x05")
    assert load_separator(directory).targets == ["drums", "vocals"]


def test_save_refuses_an_unsafe_target_name(tmp_path):
    with pytest.raises(UmxError, match=re.escape("unsafe target name '../evil'")):
        save_target_model(
            random_model(), tmp_path / "m", "../evil", sample_rate=RATE, n_fft=N_FFT, n_hop=N_HOP
        )
    assert not (tmp_path / "evil.pth").exists() and not (tmp_path / "evil.json").exists()


@pytest.mark.parametrize("target", ["xumx", "separator"])
def test_save_refuses_a_target_named_as_a_model_directorys_own_file(tmp_path, target):
    """`xumx.pth` makes a folder an X-UMX model; `separator.json` is the folder's settings."""
    with pytest.raises(UmxError, match=f"the model to save has the target name '{target}'"):
        save_target_model(
            random_model(), tmp_path / "m", target, sample_rate=RATE, n_fft=N_FFT, n_hop=N_HOP
        )
    assert not (tmp_path / "m").exists()


def test_model_name_says_what_was_loaded(saved):
    _, directory = saved
    assert load_separator(directory).model_name == str(directory)


# --- registry, cache and download ----------------------------------------------------------------


def test_registry_lists_the_published_models(monkeypatch, tmp_path):
    monkeypatch.delenv("UMX_ZOO_URL", raising=False)
    monkeypatch.setenv("UMX_CACHE", str(tmp_path))
    assert {"umxl", "umxhq", "umx", "umxse"} <= set(MODELS)
    assert (DEFAULT_MODEL, FALLBACK_MODEL) == ("umxl", "umxsynth")
    assert MODELS[DEFAULT_MODEL].targets == ("vocals", "drums", "bass", "other")
    assert MODELS[FALLBACK_MODEL].bundled and not MODELS[DEFAULT_MODEL].bundled
    assert MODELS["umxhq"].url("vocals") == (
        "https://zenodo.org/records/3370489/files/vocals-b62c91ce.pth"
    )
    assert MODELS["umxse"].url("speech").endswith("/records/3786908/files/speech_f5e0d9f9.pth")
    assert MODELS["umxse"].nb_channels == 1 and MODELS["umxse"].sample_rate == 16000.0
    infos = list_models()
    assert [(info.name, info.default, info.fallback) for info in infos[:2]] == [
        ("umxl", True, False),
        ("umxsynth", False, True),
    ]
    assert not any(info.cached for info in infos)
    assert [info.name for info in infos if info.bundled] == ["umxsynth", "umxsynth-rt"]
    assert {info.name: info.status for info in infos} == {
        "umxl": "not downloaded",
        "umxsynth": "bundled",
        "umxsynth-rt": "bundled",
        "umxhq": "not downloaded",
        "umx": "not downloaded",
        "umxse": "not downloaded",
    }
    assert infos[0].missing == tuple(MODELS["umxl"].weights.values())


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("UMX_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "umx"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "umx"
    monkeypatch.setenv("UMX_CACHE", str(tmp_path / "umx"))
    assert cache_dir() == tmp_path / "umx"
    assert registry.model_cache_dir("umxhq") == tmp_path / "umx" / "umxhq"


@pytest.mark.parametrize("variable", ["UMX_CACHE", "XDG_CACHE_HOME"])
def test_a_cache_of_an_unknown_user_is_refused_in_one_line(monkeypatch, capsys, variable):
    from umx.cli import main

    monkeypatch.delenv("UMX_CACHE", raising=False)
    monkeypatch.setenv(variable, "~umx-no-such-user/cache")
    with pytest.raises(UmxError) as error:
        cache_dir()
    assert str(error.value) == (
        f"{variable} is '~umx-no-such-user/cache', but that user has no home directory here: "
        "set it to a full path"
    )
    assert main(["--list-models"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and variable in err and "Traceback" not in err


@dataclass
class Server:
    url: str
    root: Path
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving `root`, counting the requests it gets."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "served"
    (root / "files").mkdir(parents=True)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield Server(f"http://127.0.0.1:{httpd.server_address[1]}/files", root, requests)
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@dataclass
class Tiny:
    """A registered fake model `tiny` whose files the server holds."""

    separator: Separator
    entry: ZooEntry
    cache: Path


def register(monkeypatch, name, weights, record="1"):
    entry = ZooEntry(
        name=name,
        description="a tiny test model",
        license="MIT",
        weights=weights,
        sample_rate=RATE,
        n_fft=N_FFT,
        n_hop=N_HOP,
        nb_channels=1,
        record=record,
    )
    monkeypatch.setitem(MODELS, name, entry)
    return entry


@pytest.fixture
def tiny(server, tmp_path, monkeypatch):
    separator = small_separator(("speech", "noise"), nb_channels=1)
    weights = {}
    for target, joiner in (("speech", "-"), ("noise", "_")):
        path = server.root / "files" / f"{target}.pth"
        torch.save(separator.target_models[target].state_dict(), path)
        weights[target] = f"{target}{joiner}{sha8(path)}.pth"
        path.rename(path.with_name(weights[target]))
    monkeypatch.setenv("UMX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("UMX_ZOO_URL", server.url + "/")
    monkeypatch.delenv("UMX_OFFLINE", raising=False)
    return Tiny(separator, register(monkeypatch, "tiny", weights), tmp_path / "cache" / "tiny")


def test_download_verifies_caches_and_separates(tiny, server):
    loaded = load_separator("tiny", progress=False)
    assert sorted(server.requests) == sorted(
        f"/files/{name}" for name in tiny.entry.weights.values()
    )
    assert loaded.targets == ["speech", "noise"]
    assert (loaded.sample_rate, loaded.nb_channels) == (RATE, 1)
    audio = mixture(nb_channels=1)
    with torch.inference_mode():
        stems = loaded(audio)
        assert stems.shape == (1, 2, 1, NB_TIMESTEPS)
        assert torch.equal(stems, tiny.separator(audio))
    assert next(info for info in list_models() if info.name == "tiny").cached
    assert not list(tiny.cache.glob("*.tmp"))

    load_separator("tiny", targets=["noise", "speech"])
    assert len(server.requests) == 2  # the second load used the cache


def test_the_targets_of_a_named_model_are_selected_once_per_load(tiny, monkeypatch):
    owners = []
    select = modeldir.select_targets

    def counted(available, wanted, owner):
        owners.append(owner)
        return select(available, wanted, owner)

    monkeypatch.setattr(modeldir, "select_targets", counted)
    assert load_separator("tiny", targets=["noise"], progress=False).targets == ["noise"]
    assert owners == ["model 'tiny'"]


def test_hand_placed_files_are_verified_and_used(tiny, server, monkeypatch):
    tiny.cache.mkdir(parents=True)
    for name in tiny.entry.weights.values():
        (tiny.cache / name).write_bytes((server.root / "files" / name).read_bytes())
    monkeypatch.setenv("UMX_ZOO_URL", "http://127.0.0.1:9/unused")
    load_separator("tiny")
    assert server.requests == []
    assert sorted(path.name for path in tiny.cache.iterdir()) == sorted(tiny.entry.weights.values())


def test_changed_cache_file_is_detected_and_fetched_again(tiny, server):
    load_separator("tiny")
    cached = tiny.cache / tiny.entry.weights["speech"]
    good = cached.read_bytes()
    with cached.open("ab") as file:
        file.write(b"tampered")
    load_separator("tiny")
    assert len(server.requests) == 3
    assert server.requests[-1] == f"/files/{cached.name}"
    assert cached.read_bytes() == good


def test_corrupt_cache_file_offline_says_where_to_get_a_good_copy(tiny, server):
    load_separator("tiny")
    cached = tiny.cache / tiny.entry.weights["speech"]
    with cached.open("ab") as file:
        file.write(b"tampered")
    with pytest.raises(UmxError) as error:
        load_separator("tiny", offline=True)
    message = str(error.value)
    assert message.startswith(f"{cached} is corrupt and has been deleted")
    assert f"download {server.url}/{cached.name} and save it as {cached}" in message
    assert "offline" in message and "\n" not in message
    assert not cached.exists() and len(server.requests) == 2


def test_corrupt_cache_file_whose_download_fails_says_where_to_get_it(tiny, server, monkeypatch):
    load_separator("tiny")
    cached = tiny.cache / tiny.entry.weights["speech"]
    with cached.open("ab") as file:
        file.write(b"tampered")
    (server.root / "files" / cached.name).unlink()
    with pytest.raises(UmxError) as error:
        load_separator("tiny")
    message = str(error.value)
    assert message.startswith(f"{cached.name} in the cache was corrupt and has been deleted")
    assert "HTTP 404" in message
    assert f"save {server.url}/{cached.name} as {cached}" in message


def test_corrupt_cache_file_that_cannot_be_deleted_is_said_to_be_corrupt(tiny, server, monkeypatch):
    load_separator("tiny")
    cached = tiny.cache / tiny.entry.weights["speech"]
    with cached.open("ab") as file:
        file.write(b"tampered")
    unlink = Path.unlink

    def read_only(path, *args, **kwargs):
        if path == cached:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", read_only)
    for offline in (False, True):
        with pytest.raises(UmxError) as error:
            load_separator("tiny", offline=offline)
        message = str(error.value)
        assert message.startswith(f"{cached} is corrupt (its SHA-256 is ")
        assert (
            f"and could not be deleted (Read-only file system): replace it with "
            f"{server.url}/{cached.name}, or set UMX_CACHE to a writable folder"
        ) in message
        assert "\n" not in message
    assert cached.exists() and len(server.requests) == 2


def test_download_with_a_wrong_hash_is_deleted(tiny, server, monkeypatch):
    good = tiny.entry.weights["speech"]
    bad = "speech-00000000.pth"
    (server.root / "files" / good).rename(server.root / "files" / bad)
    register(monkeypatch, "tiny", {"speech": bad, "noise": tiny.entry.weights["noise"]})
    actual = sha8(server.root / "files" / bad)
    with pytest.raises(
        UmxError, match=f"{bad} is corrupt.*SHA-256 is {actual}.*start with 00000000"
    ):
        load_separator("tiny", targets=["speech"], niter=0)
    assert not tiny.cache.exists() or not any(tiny.cache.iterdir())


def test_missing_file_on_the_server(tiny, server, monkeypatch):
    register(monkeypatch, "tiny", {"speech": "speech-0123abcd.pth"})
    url = f"{server.url}/speech-0123abcd.pth"
    place = tiny.cache / "speech-0123abcd.pth"
    with pytest.raises(UmxError) as error:
        load_separator("tiny", niter=0)
    assert str(error.value) == (
        f"could not download {url} (HTTP 404 File not found); to install tiny by hand, save "
        f"{url} as {place}"
    )
    assert not tiny.cache.exists()  # nothing is left, not even the folder made for it


def test_server_down(tiny, monkeypatch):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("UMX_ZOO_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(UmxError, match="could not download") as error:
        load_separator("tiny")
    message = str(error.value)
    # every missing file, with its address and its place, not only the first
    names = ", ".join(tiny.entry.weights.values())
    assert f"save {names} from http://127.0.0.1:{port}/ into {tiny.cache}/" in message
    assert "\n" not in message


def test_unknown_target_of_a_named_model(tiny, server):
    with pytest.raises(UmxError, match=r"model 'tiny' has no target 'vocals'; .* speech, noise"):
        load_separator("tiny", targets=["vocals"])
    assert server.requests == []


def test_bundled_model_needs_no_download(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "PRETRAINED_DIR", tmp_path / "pretrained")
    monkeypatch.setenv("UMX_ZOO_URL", "http://127.0.0.1:9/unused")
    separator = small_separator()
    save_separator(separator, tmp_path / "pretrained" / "bundy")
    weights = {target: f"{target}.pth" for target in TARGETS}
    register(monkeypatch, "bundy", weights, record=None)
    loaded = load_separator("bundy")
    audio = mixture()
    with torch.inference_mode():
        assert torch.equal(loaded(audio), separator(audio))
    assert next(info for info in list_models() if info.name == "bundy").bundled


def test_unwritable_cache(tiny, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("UMX_CACHE", str(blocker))
    with pytest.raises(UmxError, match=re.escape(f"could not save {blocker / 'tiny'}")) as error:
        load_separator("tiny")
    assert str(error.value).endswith(
        f": {blocker} is a file; move it away, or set UMX_CACHE to another folder"
    )


def test_a_read_only_cache_is_refused_saying_what_to_do(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("UMX_CACHE", str(tmp_path / "ro"))
    read_only_folder(monkeypatch, tmp_path / "ro")
    with pytest.raises(UmxError) as error:
        load_separator("tiny")
    assert str(error.value).startswith(f"could not save {tmp_path / 'ro' / 'tiny'}")
    assert str(error.value).endswith("(Read-only file system): set UMX_CACHE to a writable folder")


@pytest.mark.parametrize("blocker", ["file", "link loop"])
def test_a_file_where_the_model_folder_goes_is_named(tiny, blocker):
    tiny.cache.parent.mkdir(parents=True)
    if blocker == "file":
        tiny.cache.write_text("x")
    else:
        tiny.cache.symlink_to(tiny.cache)
    kind = "a file" if blocker == "file" else "a dangling link"
    with pytest.raises(UmxError) as error:
        load_separator("tiny")
    assert re.fullmatch(
        re.escape(f"could not save {tiny.cache}{os.sep}")
        + r"\S+"
        + re.escape(f": {tiny.cache} is {kind}; move it away, or set UMX_CACHE to ")
        + "another folder",
        str(error.value),
    )


# --- misbehaving servers and bad settings --------------------------------------------------------

TRICKLE_S = 0.02  # the pause of the trickling server between two bytes
TRICKLE_BYTES = 500  # and the most it sends: the test ends even if umx never gives up


@pytest.fixture
def hostile(server, monkeypatch):
    """A server on 127.0.0.1 that sends the files of `server` badly, by the first part of the
    path: `/badlen/NAME` and `/neglen/NAME` with a Content-Length of "abc" or "-5", `/truncate/`
    half the file it declares, `/trickle/` a byte every `TRICKLE_S` seconds, `/loop/` a redirect
    to itself. `hostile(mode)` points `$UMX_ZOO_URL` at one of them and returns its address."""
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            _, mode, name = self.path.split("/", 2)
            path = server.root / "files" / name
            data = path.read_bytes() if path.is_file() else b""
            self.close_connection = True
            if mode == "loop":
                self.send_response(302)
                self.send_header("Location", self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            length = {"badlen": "abc", "neglen": "-5"}.get(mode, str(len(data)))
            self.send_header("Content-Length", length)
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                if mode == "trickle":
                    for i in range(min(len(data), TRICKLE_BYTES)):
                        if stop.wait(TRICKLE_S):
                            break
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                else:
                    self.wfile.write(data[: len(data) // 2] if mode == "truncate" else data)
            except (BrokenPipeError, ConnectionResetError):  # umx gave up: fine
                pass

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    def use(mode):
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{mode}"
        monkeypatch.setenv("UMX_ZOO_URL", url)
        return url

    yield use
    stop.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.mark.parametrize("mode", ["badlen", "neglen"])
def test_a_malformed_content_length_is_taken_as_unknown(tiny, hostile, mode):
    hostile(mode)
    loaded = load_separator("tiny", progress=False)
    assert loaded.targets == ["speech", "noise"]
    assert sorted(p.name for p in tiny.cache.iterdir()) == sorted(tiny.entry.weights.values())


def test_a_download_cut_off_says_so_not_that_the_file_is_corrupt(tiny, server, hostile):
    url = hostile("truncate")
    name = tiny.entry.weights["speech"]
    size = (server.root / "files" / name).stat().st_size
    with pytest.raises(UmxError) as error:
        load_separator("tiny", targets=["speech"], progress=False)
    assert str(error.value) == (
        f"could not download {url}/{name} (cut off after {size // 2} of {size} bytes); run "
        f"again, or to install tiny by hand, save {url}/{name} as {tiny.cache / name}"
    )
    assert not tiny.cache.exists()


def test_a_server_that_trickles_is_given_up_on(defaults, hostile, monkeypatch, zoo_log):
    """A byte every `TRICKLE_S` keeps the socket timeout from firing: the rate is watched."""
    monkeypatch.setattr(download, "STALL_WINDOW_S", 0.3)
    monkeypatch.setattr(download, "STALL_MIN_BYTES", 100)  # 0.3 s of a trickle is about 15
    url = hostile("trickle")
    name = defaults.umxl.weights["speech"]
    start = time.monotonic()
    with pytest.raises(UmxError) as error:
        load_separator("umxl", targets=["speech"], progress=False)
    assert time.monotonic() - start < 2.0
    assert re.fullmatch(
        re.escape(f"could not download {url}/{name} (the server is too slow: ")
        + r"\d+ bytes in 0\.\d s\); "
        + re.escape("try again later, or set UMX_ZOO_URL to a faster mirror; to install umxl "),
        str(error.value).split("by hand")[0],
    )
    assert not defaults.cache.exists()
    start = time.monotonic()  # and the default model falls back
    assert load_separator(progress=False).model_name == FALLBACK_MODEL
    assert time.monotonic() - start < 2.0
    assert "the server is too slow" in fallback_warning(zoo_log, "its download failed")


def test_a_redirect_loop_is_reported_in_one_line(tiny, hostile):
    url = hostile("loop")
    name = tiny.entry.weights["speech"]
    with pytest.raises(UmxError) as error:
        load_separator("tiny", targets=["speech"], progress=False)
    message = str(error.value)
    assert message.startswith(
        f"could not download {url}/{name} (HTTP 302 The HTTP server returned a redirect error "
        "that would lead to an infinite loop. The last 30x error message was: Found); "
    )
    assert "\n" not in message


@pytest.mark.parametrize("value", ["zenodo.org/x", "http://[::1/files", "ftp://127.0.0.1/x"])
def test_a_mirror_address_that_is_not_one_is_refused_in_one_line(
    defaults, monkeypatch, capsys, value
):
    """Named or default, the model is not had: the setting is to be corrected, not ignored."""
    from umx.cli import main

    monkeypatch.setenv("UMX_ZOO_URL", value)
    for load in (lambda: download_models(["umxl"], progress=False), load_separator):
        with pytest.raises(UmxError) as error:
            load()
        assert str(error.value).startswith(
            "UMX_ZOO_URL must be the http://, https:// or file:// address of a folder holding "
        )
        assert repr(value) in str(error.value)
    assert main(["download"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "UMX_ZOO_URL" in err and "Traceback" not in err
    crashed = []  # the probe's thread reports a bad address, not a traceback
    monkeypatch.setattr(threading, "excepthook", crashed.append)
    assert download.probe(value) is not None and crashed == []


def test_a_file_address_is_a_mirror(tiny, server, monkeypatch):
    monkeypatch.setenv("UMX_ZOO_URL", (server.root / "files").as_uri())
    assert download_models(["tiny"], progress=False) == [tiny.cache]
    assert server.requests == []


# --- the default model and its fallback ----------------------------------------------------------


@dataclass
class Defaults:
    """`umxl` is the tiny served model, `umxsynth` a small bundled one."""

    umxl: ZooEntry
    cache: Path
    fallback: Separator


@pytest.fixture
def defaults(tiny, tmp_path, monkeypatch):
    umxl = register(monkeypatch, "umxl", dict(tiny.entry.weights))
    fallback = small_separator()
    monkeypatch.setattr(registry, "PRETRAINED_DIR", tmp_path / "pretrained")
    save_separator(fallback, tmp_path / "pretrained" / "umxsynth")
    register(monkeypatch, "umxsynth", {target: f"{target}.pth" for target in TARGETS}, None)
    return Defaults(umxl, tmp_path / "cache" / "umxl", fallback)


def closed_port():
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def warnings_in(log):
    return [record for record in log.records if record.levelno >= logging.WARNING]


def fallback_warning(log, why):
    """The one warning of a fallback: a short line that says why, names the model that
    separates and how to get umxl, and leaves addresses and paths to `umx download`; the
    details go to the debug log, returned."""
    (warning,) = warnings_in(log)
    message = warning.getMessage()
    command = "UMX_OFFLINE=0 umx download" if why == "offline mode is on" else "umx download"
    assert message == (
        f"umxl is not available ({why}), so the bundled demo model umxsynth separates instead: "
        f"run `{command} umxl` to get it"
    )
    assert len(f"umx: {message}") <= 160 and warning.exc_info is None
    return " ".join(r.getMessage() for r in log.records if r.levelno == logging.DEBUG)


def place_by_hand(defaults, server):
    defaults.cache.mkdir(parents=True, exist_ok=True)
    for name in defaults.umxl.weights.values():
        (defaults.cache / name).write_bytes((server.root / "files" / name).read_bytes())


def test_default_downloads_umxl_when_it_can(defaults, tiny, server, zoo_log):
    separator = load_separator(progress=False)
    assert separator.model_name == "umxl"
    assert separator.targets == ["speech", "noise"]
    assert sorted(server.requests) == sorted(f"/files/{n}" for n in defaults.umxl.weights.values())
    audio = mixture(nb_channels=1)
    with torch.inference_mode():
        assert torch.equal(separator(audio), tiny.separator(audio))
    assert warnings_in(zoo_log) == []
    assert load_separator().model_name == "umxl" and len(server.requests) == 2  # cached


def test_default_falls_back_at_once_when_the_host_refuses(defaults, monkeypatch, zoo_log):
    base = f"http://127.0.0.1:{closed_port()}/files"
    monkeypatch.setenv("UMX_ZOO_URL", base)
    start = time.monotonic()
    separator = load_separator()
    assert time.monotonic() - start < 2.0
    assert separator.model_name == FALLBACK_MODEL
    audio = mixture()
    with torch.inference_mode():
        assert torch.equal(separator(audio), defaults.fallback(audio))
    details = fallback_warning(zoo_log, "its download host cannot be reached")
    assert f"{base}/" in details and "Connection refused" in details


@pytest.mark.parametrize("where", ["empty-folder", "no-folder", "a-file"])
def test_default_falls_back_saying_a_file_address_lacks_the_weights(
    defaults, tmp_path, monkeypatch, zoo_log, where
):
    """A file:// $UMX_ZOO_URL is a folder, not a host: the warning said "its download host
    cannot be reached" of a folder that was there but did not hold the weights."""
    folder = tmp_path / where
    if where == "empty-folder":
        folder.mkdir()
    elif where == "a-file":
        folder.write_bytes(b"not a folder")
    monkeypatch.setenv("UMX_ZOO_URL", folder.as_uri())
    assert load_separator().model_name == FALLBACK_MODEL
    details = fallback_warning(zoo_log, "its weights are missing from UMX_ZOO_URL")
    assert f"{folder.as_uri()}/" in details


def test_default_falls_back_within_the_probe_timeout_when_dns_hangs(defaults, monkeypatch, zoo_log):
    monkeypatch.setattr(download, "PROBE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: time.sleep(3))
    monkeypatch.setenv("UMX_ZOO_URL", "http://umx-mirror.invalid/files")
    start = time.monotonic()
    assert load_separator().model_name == FALLBACK_MODEL
    assert time.monotonic() - start < 1.5
    details = fallback_warning(zoo_log, "its download host cannot be reached")
    assert "no answer from umx-mirror.invalid within 0.3 s" in details


def test_default_falls_back_within_the_probe_timeout_when_the_host_is_silent(
    defaults, monkeypatch, zoo_log
):
    monkeypatch.setattr(download, "PROBE_TIMEOUT_S", 0.3)
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setenv("UMX_ZOO_URL", f"http://127.0.0.1:{silent.getsockname()[1]}/files")
        start = time.monotonic()
        assert load_separator().model_name == FALLBACK_MODEL
        assert time.monotonic() - start < 1.5
    fallback_warning(zoo_log, "its download host cannot be reached")


def test_default_falls_back_when_the_download_fails_midway(defaults, server, zoo_log):
    speech, noise = defaults.umxl.weights.values()
    (server.root / "files" / noise).unlink()
    assert load_separator(progress=False).model_name == FALLBACK_MODEL
    details = fallback_warning(zoo_log, "its download failed").split("downloading umxl failed")[1]
    assert f"could not download {server.url}/{noise} (HTTP 404 File not found)" in details
    assert f"save {server.url}/{noise} as {defaults.cache / noise}" in details
    assert speech not in details  # downloaded: only the missing file is to be placed
    info = next(info for info in list_models() if info.name == "umxl")
    assert (info.status, info.missing, info.cached, info.default) == (
        "partial",
        (noise,),
        False,
        True,
    )


def test_offline_default_uses_the_cache_or_falls_back_without_the_network(
    defaults, server, monkeypatch, zoo_log
):
    opened = no_network(monkeypatch)
    monkeypatch.setenv("UMX_OFFLINE", "1")
    assert resolve_model() == FALLBACK_MODEL
    assert load_separator().model_name == FALLBACK_MODEL
    fallback_warning(zoo_log, "offline mode is on")
    place_by_hand(defaults, server)
    assert resolve_model() == "umxl"
    assert load_separator().model_name == "umxl"
    assert opened == [] and server.requests == []
    assert load_separator(offline=False).model_name == "umxl"  # cached: no probe either
    assert opened == []


def test_a_named_model_never_falls_back(defaults, monkeypatch):
    base = f"http://127.0.0.1:{closed_port()}/files"
    monkeypatch.setenv("UMX_ZOO_URL", base)
    with pytest.raises(UmxError, match="could not download"):
        load_separator("umxl")
    opened = no_network(monkeypatch)
    with pytest.raises(UmxError) as error:
        load_separator("umxl", offline=True)
    assert str(error.value) == (  # offline by argument: umx download downloads it (and this
        # umxl's targets are not umxsynth's)
        "offline mode is on and model umxl is not in the cache: run `umx download umxl`"
    )
    assert opened == []


def test_offline_a_model_not_in_the_cache_is_one_short_line_with_what_works(capsys):
    """It was 290 characters of URLs and paths (`umx download --list` says where files go)."""
    from umx.cli import main

    lines = {
        "umxl": "offline mode is on and model umxl is not in the cache: run `UMX_OFFLINE=0 umx "
        "download umxl`, or use the bundled umxsynth, which works offline",
        "umxse": "offline mode is on and model umxse is not in the cache: run `UMX_OFFLINE=0 umx "
        "download umxse`",  # speech: umxsynth separates music
    }
    for name, line in lines.items():
        assert main(["download", name]) == 1
        (error,) = capsys.readouterr().err.splitlines()
        assert error == f"umx: error: {line}" and len(error) <= 160


@pytest.mark.parametrize(
    ("model", "targets", "line"),
    [
        (  # its targets are umxsynth's
            "umxl",
            "piano",
            "model 'umxl' has no target 'piano'; its targets are vocals, drums, bass, other (and "
            "offline, umxl is not cached: --model umxsynth works offline)",
        ),
        (  # umxsynth has the target asked for
            "umxse",
            "vocals",
            "model 'umxse' has no target 'vocals'; its targets are speech, noise (and offline, "
            "umxse is not cached: --model umxsynth works offline)",
        ),
        (  # nothing here has it
            "umxse",
            "piano",
            "model 'umxse' has no target 'piano'; its targets are speech, noise (and offline, "
            "umxse is not cached)",
        ),
        (  # the default, offline and not cached: umxsynth would separate, and is named
            None,
            "piano",
            "model 'umxsynth' has no target 'piano'; its targets are vocals, drums, bass, other",
        ),
    ],
)
def test_offline_unknown_targets_of_a_model_not_in_the_cache_say_what_works(
    model, targets, line, tmp_path, capsys
):
    from umx.cli import main

    song = tmp_path / "song.wav"
    sf.write(song, np.zeros((4410, 2)), 44100)
    given = ["--model", model] if model else []
    assert main([str(song), *given, "--targets", targets, "--outdir", str(tmp_path / "o")]) == 1
    (error,) = capsys.readouterr().err.splitlines()
    assert error == f"umx: error: {line}" and len(error) <= 160


def test_unknown_targets_of_the_default_are_an_error_not_a_fallback(defaults, server):
    with pytest.raises(UmxError, match="model 'umxl' has no target 'piano'"):
        load_separator(targets=["piano"])
    assert server.requests == []


def test_resolve_model_does_not_download(defaults, server, saved, monkeypatch):
    assert resolve_model() == "umxl"  # the host answers
    assert server.requests == []  # a HEAD probe only
    assert resolve_model(saved[1]) == str(saved[1])
    assert resolve_model("umxhq") == "umxhq"
    monkeypatch.setenv("UMX_ZOO_URL", f"http://127.0.0.1:{closed_port()}/files")
    assert resolve_model() == FALLBACK_MODEL
    with pytest.raises(UmxError, match="unknown model 'nope'"):
        resolve_model("nope")
    with pytest.raises(UmxError, match="a model is a name or a directory, not ''"):
        load_separator("")  # not the current directory


@pytest.mark.parametrize(
    ("value", "offline"), [("1", True), ("yes", True), ("0", False), ("", False), ("off", False)]
)
def test_offline_environment_values(monkeypatch, value, offline):
    monkeypatch.setenv("UMX_OFFLINE", value)
    assert zoo.is_offline() is offline
    assert zoo.is_offline(not offline) is not offline  # the argument wins


def test_a_bad_offline_environment_value_is_an_error(monkeypatch):
    monkeypatch.setenv("UMX_OFFLINE", "maybe")
    with pytest.raises(UmxError, match=r"UMX_OFFLINE must be 1 .* not 'maybe'"):
        load_separator(FALLBACK_MODEL)


def test_download_models_fetches_and_every_use_hashes(defaults, server):
    with pytest.raises(UmxError, match="unknown model 'nope'"):
        download_models(["umxl", "nope"], progress=False)
    assert server.requests == []  # names are checked before anything is downloaded
    assert download_models(None, progress=False) == [defaults.cache]
    assert len(server.requests) == 2
    info = next(info for info in list_models() if info.name == "umxl")
    assert (info.status, info.cached, info.missing) == ("cached", True, ())
    # a change in place that keeps the size and time is found: every use hashes the file
    cached = defaults.cache / defaults.umxl.weights["speech"]
    good, stat = cached.read_bytes(), cached.stat()
    cached.write_bytes(bytes(len(good)))
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(UmxError, match=r"is corrupt and has been deleted"):
        zoo.download_model("umxl", progress=False, offline=True)
    assert not cached.exists() and len(server.requests) == 2
    assert download_models(["umxl", FALLBACK_MODEL], progress=False) == [
        defaults.cache,
        registry.PRETRAINED_DIR / FALLBACK_MODEL,
    ]
    assert server.requests[2:] == [f"/files/{cached.name}"]
    assert cached.read_bytes() == good


def test_export_model_halves_the_weights_and_keeps_the_outputs(tmp_path):
    separator = small_separator()
    save_separator(separator, tmp_path / "trained")
    (tmp_path / "trained" / "vocals.chkpnt").write_bytes(b"resume state")
    export_model(tmp_path / "trained", tmp_path / "lean", metadata={"data": {"hours": 1.5}})
    assert sorted(p.name for p in (tmp_path / "lean").iterdir()) == sorted(
        ["separator.json"] + [f"{t}.{ext}" for t in TARGETS for ext in ("json", "pth")]
    )
    state = torch.load(tmp_path / "lean" / "vocals.pth", weights_only=True)
    assert state["fc1.weight"].dtype == torch.float16
    assert state["input_mean"].dtype == torch.float32
    trained = torch.load(tmp_path / "trained" / "vocals.pth", weights_only=True)
    nbytes = lambda state: sum(t.numel() * t.element_size() for t in state.values())  # noqa: E731
    assert nbytes(state) < 0.6 * nbytes(trained)
    info = json.loads((tmp_path / "lean" / "vocals.json").read_text())
    assert info["data"] == {"hours": 1.5} and info["args"]["hidden_size"] == HIDDEN
    audio = torch.randn(1, 2, NB_TIMESTEPS)
    expected = separator.separate(audio, segment=None)
    got = load_separator(tmp_path / "lean").separate(audio, segment=None)
    assert (got - expected).abs().max() < 1e-2 * expected.abs().max()
    with pytest.raises(UmxError, match="already exists"):
        export_model(tmp_path / "trained", tmp_path / "lean")


def test_export_model_refuses_weights_that_are_not_a_state_dict_of_real_numbers(tmp_path):
    save_separator(small_separator(), tmp_path / "trained")
    set_tensor("fc1.weight", torch.Tensor.to_sparse)(tmp_path / "trained")
    with pytest.raises(
        UmxError, match=re.escape("'fc1.weight' is a sparse_coo tensor, not a dense one")
    ):
        export_model(tmp_path / "trained", tmp_path / "lean")


def test_bundled_fallback_model_is_small_and_never_touches_the_network(monkeypatch):
    opened = no_network(monkeypatch)
    monkeypatch.setenv("UMX_OFFLINE", "0")
    entry = MODELS[FALLBACK_MODEL]
    assert entry.bundled
    files = list(entry.directory.iterdir())
    assert sum(f.stat().st_size for f in files if f.suffix == ".pth") <= 20_000_000
    separator = load_separator(FALLBACK_MODEL, offline=False)
    assert separator.model_name == FALLBACK_MODEL
    assert separator.targets == ["vocals", "drums", "bass", "other"]
    assert separator.sample_rate == 44100 and separator.nb_channels == 2
    assert download_models([FALLBACK_MODEL], offline=False) == [entry.directory]
    assert resolve_model(FALLBACK_MODEL, offline=False) == FALLBACK_MODEL
    assert opened == []
    info = json.loads((entry.directory / "vocals.json").read_text())
    assert info["training_data"]["hours"] > 0 and info["epochs_trained"] > 0


def test_bundled_causal_model_is_small_unidirectional_and_offline(monkeypatch):
    """`umxsynth-rt`, the model for `umx stream`, ships with the package and is causal."""
    from umx.stream.engine import StreamingSeparator

    opened = no_network(monkeypatch)
    monkeypatch.setenv("UMX_OFFLINE", "0")
    entry = MODELS["umxsynth-rt"]
    assert entry.bundled
    assert sum(f.stat().st_size for f in entry.directory.glob("*.pth")) <= 20_000_000
    separator = load_separator("umxsynth-rt", offline=False)
    assert separator.model_name == "umxsynth-rt"
    assert separator.targets == ["vocals", "drums", "bass", "other"]
    assert separator.sample_rate == 44100 and separator.nb_channels == 2
    assert all(model.unidirectional for model in separator.target_models.values())
    StreamingSeparator(separator)  # refuses bidirectional models
    assert opened == []
    info = json.loads((entry.directory / "vocals.json").read_text())
    assert info["args"]["unidirectional"] is True and info["epochs_trained"] > 0


def test_umx_download_and_list_models_commands(defaults, server, capsys):
    """`umx download` fetches and verifies the default model; `--list-models` then says it is
    cached, and `umx song` separates with it and says so."""
    from umx.cli import main

    assert main(["--list-models"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert any(line.startswith("umxl (default)") and "not downloaded" in line for line in listed)
    assert any(line.startswith("umxsynth (offline)") and "bundled" in line for line in listed)
    # where the fallback warning's details went: the cache, and each file's address and path
    assert f"cache: {defaults.cache.parent} (set UMX_CACHE to move it)" in listed
    (placement,) = [line for line in listed if line.startswith("to get umxl: ")]
    names = ", ".join(defaults.umxl.weights.values())
    assert f"save {names} from {server.url}/ into {defaults.cache}/" in placement
    assert len(placement) < 300  # one readable line, not every address and path in full
    assert main(["download", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(defaults.cache)
    assert len(server.requests) == 2
    assert main(["--list-models"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert any(line.startswith("umxl (default)") and " cached " in line for line in listed)
    assert not any(line.startswith("to get umxl") for line in listed)
    assert main(["download", "no-such-model"]) == 1
    assert capsys.readouterr().err == (
        f"umx: error: unknown model 'no-such-model'; the known models are {', '.join(MODELS)}\n"
    )
    assert main(["download", "umxq"]) == 1  # a typo: the name meant, as for a command
    assert capsys.readouterr().err == "umx: error: unknown model 'umxq'; did you mean umxhq?\n"


def test_umx_without_network_falls_back_in_one_line(defaults, monkeypatch, tmp_path, capsys):
    from umx.cli import main

    monkeypatch.setenv("UMX_ZOO_URL", f"http://127.0.0.1:{closed_port()}/files")
    song = tmp_path / "song.wav"
    sf.write(song, 0.1 * np.random.default_rng(0).standard_normal((int(RATE), 2)), int(RATE))
    assert main([str(song), "--outdir", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err.splitlines()
    fallback = [line for line in err if "umxsynth separates instead" in line]
    assert len(fallback) == 1 and "umx download umxl" in fallback[0]
    assert len(fallback[0]) <= 160 and "http" not in fallback[0]
    assert any(line.endswith("separated with umxsynth") for line in err)
    assert "Traceback" not in "\n".join(err)
    # -q keeps this one line: the stems come from another model than the one asked for
    assert main([str(song), "--outdir", str(tmp_path / "out"), "--force", "-q"]) == 0
    assert capsys.readouterr().err.splitlines() == fallback


def test_umx_download_list_gives_a_line_per_model_with_its_size_here(capsys):
    """`umx download --list` (what `umx download --help` offers) lists the models as `umx
    --list-models` does: name, whether here, size here (bundled or cached), targets, what it is."""
    from umx.cli import main

    assert main(["download", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in MODELS:
        (line,) = [line for line in lines if line.split()[0] == name]
        if MODELS[name].bundled:
            size = sum(
                (MODELS[name].directory / file).stat().st_size
                for file in MODELS[name].weights.values()
            )
            assert " bundled " in line and f" {size / 1e6:.1f} MB " in line
        else:  # the conftest's empty cache
            assert " not downloaded " in line and " - " in line
        assert line.endswith(MODELS[name].description)
    assert main(["download", "--list", "umxl"]) == 1
    assert capsys.readouterr().err == "umx: error: --list lists every model: leave out umxl\n"


def test_model_names_are_taken_in_any_case(tmp_path, monkeypatch, capsys):
    from umx.cli import main
    from umx.zoo.download import download_models

    assert registry.find_model("UMXHQ").name == "umxhq"
    assert zoo.resolve_model("UmxSynth") == "umxsynth"
    assert zoo.load_separator("UMXSYNTH-RT").model_name == "umxsynth-rt"
    assert main(["download", "UMXSYNTH", "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(MODELS["umxsynth"].directory)
    song = tmp_path / "song.wav"
    sf.write(song, np.zeros((4410, 2)), 44100)
    assert main(["stream", str(song), "--model", "UMXL", "--outdir", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.startswith("umx: error: UMXL has bidirectional LSTMs")
    (tmp_path / "UMXHQ").mkdir()  # a folder of that name is the folder
    monkeypatch.chdir(tmp_path)
    assert zoo.resolve_model("UMXHQ") == "UMXHQ"
    asked = []
    monkeypatch.setattr(
        "umx.zoo.download.download_model", lambda name, **kwargs: asked.append(name)
    )
    download_models(["all"], progress=False)  # every published model, once each
    assert asked == [entry.name for entry in MODELS.values() if not entry.bundled]


@pytest.mark.parametrize("name", ["umxsynth", "umxsynth-rt"])
def test_a_bundled_models_unknown_target_names_the_model_not_its_folder(name):
    """It said "model directory /…/src/umx/pretrained/umxsynth has no target 'foo'"."""
    with pytest.raises(UmxError) as error:
        load_separator(name, targets=["foo"], progress=False)
    assert str(error.value) == (
        f"model {name!r} has no target 'foo'; its targets are vocals, drums, bass, other"
    )
