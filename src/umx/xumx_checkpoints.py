"""X-UMX checkpoints in asteroid's format: reading, checking, writing, and separators from them.

asteroid's `XUMX` (the format of the published X-UMX weights, and what `umx train --architecture
xumx` writes) saves one torch file for all targets::

    {"model_name": "XUMX",
     "state_dict": {...},            # CrossUnmix's names, plus the STFT's window twice
     "model_args": {"sources": [...], "window_length": 4096, "in_chan": 4096, "n_hop": 1024,
                    "sample_rate": 44100, "hidden_size": 512, "nb_channels": 2, "max_bin": 1487,
                    "nb_layers": 3, "bidirectional": true, "spec_power": 1, ...},
     "infos": {...}}

The file is untrusted input: it is read with `weights_only` (no code runs), every field used is
checked, and the weights must be finite. A model given as a directory holds the file as
`xumx.pth`.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from umx.errors import UmxError, short
from umx.files import torch_save_atomic
from umx.model import CrossUnmix
from umx.modeldir import WEIGHTS_SUFFIX, _check_stft_fields, check_model_target, select_targets
from umx.separator import Separator
from umx.weights import _shape_mismatch, check_state_dict, read_torch_file

XUMX_FILE = "xumx.pth"  # the checkpoint's name inside a model directory
MODEL_NAMES = ("XUMX", "BrokenXUMX")  # asteroid's class names for the network
WINDOW_KEYS = ("encoder.0.window", "decoder.window")  # asteroid's STFT window, not weights


@dataclass
class XumxCheckpoint:
    """An X-UMX network and the STFT it works with."""

    net: CrossUnmix
    sample_rate: float
    n_fft: int
    n_hop: int


def xumx_file(model: str | os.PathLike) -> Path | None:
    """The X-UMX checkpoint that `model` names, if it names one: a `.pth` file itself, or the
    `xumx.pth` of a directory. None otherwise (e.g. an Open-Unmix model directory)."""
    path = Path(model)
    if path.is_file() and path.suffix == WEIGHTS_SUFFIX:
        return path
    if path.is_dir() and (path / XUMX_FILE).is_file():
        return path / XUMX_FILE
    return None


def load_xumx(path: str | os.PathLike) -> XumxCheckpoint:
    """Load an X-UMX checkpoint in asteroid's format, checked, frozen, on the CPU.

    `path` is the file or a directory holding it as `xumx.pth`. The architecture is read off
    the state dict and checked against `model_args`.

    Raises:
        UmxError: the file is missing or unreadable, or is not an X-UMX checkpoint, or its
            arguments or weights are unusable (see the module docstring).
    """
    path = xumx_file(path) or Path(path)
    loaded = read_torch_file(path)
    if not isinstance(loaded, Mapping) or not {"state_dict", "model_args"} <= set(loaded):
        raise UmxError(
            f"{path} is not an X-UMX checkpoint: asteroid's format has 'state_dict' and "
            "'model_args' entries"
        )
    name = loaded.get("model_name", MODEL_NAMES[0])
    if name not in MODEL_NAMES:
        raise UmxError(f"{path} holds asteroid's {short.repr(name)}, not an X-UMX model")
    args = loaded["model_args"]
    if not isinstance(args, Mapping):
        raise UmxError(f"{path} has 'model_args' that are not a mapping")
    targets, sample_rate, n_fft, n_hop = _check_args(path, args)
    state = check_state_dict(path, loaded["state_dict"])
    state = {key: value for key, value in state.items() if key not in WINDOW_KEYS}
    try:
        arch = xumx_architecture(state, targets)
    except (KeyError, ValueError) as error:
        raise UmxError(f"{path} is not an X-UMX state dict: {error}") from None
    if n_fft // 2 + 1 != arch["nb_bins"]:
        raise UmxError(
            f"{path} says in_chan {n_fft} ({n_fft // 2 + 1} bins) in its model_args but its "
            f"weights have {arch['nb_bins']} bins"
        )
    expected = {**arch, "bidirectional": not arch["unidirectional"]}
    for key in ("nb_channels", "hidden_size", "nb_layers", "max_bin", "bidirectional"):
        if args.get(key) is not None and args[key] != expected[key]:
            raise UmxError(
                f"{path} says {key} {short.repr(args[key])} in its model_args but its weights "
                f"have {expected[key]}"
            )
    with torch.device("meta"):  # no memory and no random initialisation: the weights follow
        net = CrossUnmix(targets, **arch)
    mismatch = _shape_mismatch(net.state_dict(), state)
    if mismatch:
        raise UmxError(f"{path} is not an X-UMX state dict: {mismatch}")
    net.load_state_dict(state, strict=True, assign=True)
    return XumxCheckpoint(net.freeze(), sample_rate, n_fft, n_hop)


def _check_args(path: Path, args: Mapping[str, Any]) -> tuple[list[str], float, int, int]:
    """`model_args`' targets, sample rate, STFT size and hop, checked."""
    targets = args.get("sources")
    if not isinstance(targets, list | tuple) or len(targets) < 2:
        raise UmxError(f"{path} has bad 'sources' in its model_args: two or more target names")
    for target in targets:
        check_model_target(target, str(path))
    if len(set(targets)) != len(targets):
        raise UmxError(f"{path} names a target twice in its model_args' 'sources'")
    fields = {
        "sample_rate": args.get("sample_rate"),
        "nfft": args.get("in_chan"),
        "nhop": args.get("n_hop"),
        "nb_channels": args.get("nb_channels"),
    }
    _check_stft_fields(f"the model_args of {path}", fields, required=True)
    window = args.get("window_length", fields["nfft"])
    if window != fields["nfft"]:
        raise UmxError(
            f"{path} has a window of {window!r} samples for an STFT of {fields['nfft']}: umx's "
            "STFT uses a window as long as the STFT"
        )
    if args.get("spec_power", 1) != 1:
        raise UmxError(
            f"{path} works on spectrograms to the power {args['spec_power']!r}; umx's models "
            "work on magnitudes (power 1)"
        )
    return list(targets), float(fields["sample_rate"]), int(fields["nfft"]), int(fields["nhop"])


def xumx_architecture(state: Mapping[str, Tensor], targets: Sequence[str]) -> dict[str, Any]:
    """`CrossUnmix`'s size arguments, read off the first target's entries of a state dict."""
    first = targets[0]
    max_bin = state[f"mean_scale.input_mean_{first}"].numel()
    hidden_size, fc1_inputs = state[f"layer_enc.{first}.enc.0.weight"].shape
    if max_bin == 0 or fc1_inputs % max_bin:
        raise ValueError(f"fc1 takes {fc1_inputs} inputs, not a multiple of the {max_bin} bins")
    nb_layers = 0
    while f"layer_lstm.{first}.weight_ih_l{nb_layers}" in state:
        nb_layers += 1
    return {
        "nb_bins": state[f"mean_scale.output_mean_{first}"].numel(),
        "nb_channels": fc1_inputs // max_bin,
        "hidden_size": hidden_size,
        "nb_layers": nb_layers,
        "unidirectional": not any(key.endswith("_reverse") for key in state),
        "max_bin": max_bin,
    }


def save_xumx(
    net: CrossUnmix,
    path: str | os.PathLike,
    *,
    sample_rate: float,
    n_fft: int,
    n_hop: int,
    infos: Mapping[str, Any] | None = None,
) -> None:
    """Write an X-UMX checkpoint in asteroid's format, atomically; asteroid loads it too.

    Args:
        net: the network; its state dict is saved on the CPU.
        path: the file to write.
        sample_rate, n_fft, n_hop: the STFT the network works with.
        infos: further fields of the file's `infos`, e.g. the training history.
    """
    if n_fft // 2 + 1 != net.nb_output_bins:
        raise ValueError(
            f"n_fft {n_fft} gives {n_fft // 2 + 1} bins, the model has {net.nb_output_bins}"
        )
    state = {key: value.detach().cpu().clone() for key, value in net.state_dict().items()}
    window = torch.hann_window(n_fft)
    state.update(dict.fromkeys(WINDOW_KEYS, window))
    model_args = {
        "sources": list(net.targets),
        "window_length": n_fft,
        "in_chan": n_fft,
        "n_hop": n_hop,
        "sample_rate": float(sample_rate),
        "hidden_size": net.hidden_size,
        "nb_channels": net.nb_channels,
        "input_mean": None,  # in the state dict
        "input_scale": None,
        "max_bin": net.nb_bins,
        "nb_layers": net.nb_layers,
        "bidirectional": not net.unidirectional,
        "spec_power": 1,
        "return_time_signals": False,
    }
    versions = {
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
    }
    checkpoint = {
        "model_name": MODEL_NAMES[0],
        "state_dict": state,
        "model_args": model_args,
        "infos": {"software_versions": versions, **(infos or {})},
    }
    torch_save_atomic(checkpoint, path)


def xumx_separator(
    path: str | os.PathLike, targets: Sequence[str] | None = None, **options: Any
) -> Separator:
    """A `Separator` of an X-UMX checkpoint: one view per target of one network, which runs
    once per block for all of them (see `umx.model.CrossUnmixTarget`).

    Args:
        path: the checkpoint file.
        targets: the targets to separate, in output order; all if None. The network estimates
            all of them anyway: the Wiener filter sees only those selected.
        options: further keyword arguments of `Separator`, e.g. its Wiener filtering options.

    Raises:
        UmxError: the checkpoint is unusable, or a target is unknown.
    """
    checkpoint = load_xumx(path)
    net = checkpoint.net
    selected = select_targets(net.targets, targets, f"X-UMX model {path}")
    return Separator(
        {target: net.target_view(target) for target in selected},
        sample_rate=checkpoint.sample_rate,
        n_fft=checkpoint.n_fft,
        n_hop=checkpoint.n_hop,
        nb_channels=net.nb_channels,
        model_targets=net.targets,
        **options,
    )
