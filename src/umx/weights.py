"""One target model's weights: the architecture a state dict implies, its checked loading from a
`.pth` file, the `args` its json records, and a hash of its values.

A weights file is untrusted input: it must be a state dict of dense tensors of real numbers
whose shapes and dtypes are those of one `OpenUnmix`, with finite values and non-negative
variances.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from umx.errors import UmxError, short
from umx.model import OpenUnmix

SHOWN_KEYS = 3  # how many offending state dict keys an error message names
# Keys of a reference `Separator` or of old reference models that are not model weights.
_EXTRA_KEYS = frozenset({"sample_rate", "stft.window", "istft.window"})
_EXTRA_PREFIX = "transform."
# The dtypes a state dict may hold: floating-point weights (float16 and bfloat16 ones are made
# float32) and the integer counters of batch norms. Complex, quantized and float8 tensors are not.
_REAL_DTYPES = frozenset(
    {torch.float16, torch.bfloat16, torch.float32, torch.float64}
    | {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64}
)


def hash_weights(digest: Any, model: nn.Module) -> None:
    """Feed a model's weights to a hashlib `digest`: every parameter's and buffer's name,
    dtype, shape and values, in name order. Models with the same weights hash alike, whatever
    files they were loaded from (`umx batch`'s job identity, the ONNX graph cache's keys)."""
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


@dataclass(frozen=True)
class TargetArchitecture:
    """The hyper-parameters that fix the shapes of an `OpenUnmix` state dict."""

    nb_bins: int
    nb_channels: int
    hidden_size: int
    nb_layers: int
    unidirectional: bool
    max_bin: int

    @classmethod
    def of(cls, model: OpenUnmix) -> TargetArchitecture:
        """The architecture of a model."""
        return cls(
            nb_bins=model.nb_output_bins,
            nb_channels=model.nb_channels,
            hidden_size=model.hidden_size,
            nb_layers=model.nb_layers,
            unidirectional=model.unidirectional,
            max_bin=model.nb_bins,
        )

    def build(self) -> OpenUnmix:
        """A new model of this architecture, with fresh weights."""
        return OpenUnmix(
            nb_bins=self.nb_bins,
            nb_channels=self.nb_channels,
            hidden_size=self.hidden_size,
            nb_layers=self.nb_layers,
            unidirectional=self.unidirectional,
            max_bin=self.max_bin,
        )


def infer_architecture(state_dict: Mapping[str, Tensor]) -> TargetArchitecture:
    """Read the architecture off an `OpenUnmix` state dict.

    `nb_bins` is the length of `output_mean`, `max_bin` that of `input_mean`, `hidden_size` the
    output width of `fc1` and `nb_channels` its input width over `max_bin`; the LSTM has one
    layer per `lstm.weight_ih_l<k>` key and is unidirectional when no `_reverse` key exists.

    Raises:
        ValueError: a key needed is missing, or the shapes do not fit together or make a model
            that cannot run: no hidden units, an odd hidden size with a bidirectional LSTM
            (each direction has half), or more input bins than output bins.
    """
    for key in ("input_mean", "output_mean", "fc1.weight", "lstm.weight_ih_l0"):
        if key not in state_dict:
            raise ValueError(f"it has no {key!r} entry")
    if state_dict["fc1.weight"].dim() != 2:
        raise ValueError(
            f"its fc1.weight has shape {tuple(state_dict['fc1.weight'].shape)}, not 2-D"
        )
    max_bin, nb_bins = state_dict["input_mean"].numel(), state_dict["output_mean"].numel()
    hidden_size, fc1_inputs = state_dict["fc1.weight"].shape
    if max_bin == 0 or fc1_inputs == 0 or fc1_inputs % max_bin:
        raise ValueError(
            f"fc1 takes {fc1_inputs} inputs, not a multiple of the {max_bin} input bins"
        )
    if max_bin > nb_bins:
        raise ValueError(f"it has {max_bin} input bins, more than its {nb_bins} output bins")
    unidirectional = not any(key.endswith("_reverse") for key in state_dict)
    if hidden_size == 0:
        raise ValueError("its fc1 has no outputs (a hidden size of 0)")
    if hidden_size % 2 and not unidirectional:
        raise ValueError(
            f"its hidden size (fc1's outputs) is {hidden_size}, odd, but its LSTM is "
            "bidirectional: each direction takes half of it"
        )
    nb_layers = 0
    while f"lstm.weight_ih_l{nb_layers}" in state_dict:
        nb_layers += 1
    return TargetArchitecture(
        nb_bins=nb_bins,
        nb_channels=fc1_inputs // max_bin,
        hidden_size=hidden_size,
        nb_layers=nb_layers,
        unidirectional=unidirectional,
        max_bin=max_bin,
    )


def _args_mismatch(arch: TargetArchitecture, args: Mapping[str, Any]) -> str | None:
    """Describe the first disagreement between the json args and the weights, if any."""
    if args.get("nfft") is not None and int(args["nfft"]) // 2 + 1 != arch.nb_bins:
        return (
            f"its args say nfft {args['nfft']} ({int(args['nfft']) // 2 + 1} bins) but the "
            f"weights have {arch.nb_bins} bins"
        )
    for key in ("nb_channels", "hidden_size", "nb_layers", "max_bin", "unidirectional"):
        if args.get(key) is not None and args[key] != getattr(arch, key):
            return f"its args say {key} {args[key]} but the weights have {getattr(arch, key)}"
    return None


def _shape_mismatch(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> str | None:
    """Describe how a state dict differs from the one the model expects (its keys, shapes and
    dtypes), if it does."""

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:SHOWN_KEYS]) + (", ..." if len(keys) > SHOWN_KEYS else "")

    missing = [key for key in expected if key not in given]
    if missing:
        return f"it lacks {some(missing)}"
    unexpected = [key for key in given if key not in expected]
    if unexpected:
        return f"it has unexpected entries {some(unexpected)}"
    for key, want in expected.items():
        if given[key].shape != want.shape:
            return (
                f"its {key} has shape {tuple(given[key].shape)} where the shapes of its other "
                f"entries imply {tuple(want.shape)}"
            )
        if given[key].dtype != want.dtype:
            held, belong = _dtype_name(given[key]), _dtype_name(want)
            return f"its {key} holds {held} values where {belong} ones belong"
    return None


def read_torch_file(path: Path) -> Any:
    """Load a torch file without running any code from it (`weights_only`), on the CPU.

    Raises:
        UmxError: the file is missing, or unreadable (corrupt, truncated, not a torch file, or
            holding objects other than tensors and plain containers).
    """
    if not path.is_file():
        raise UmxError(f"{path} does not exist")
    # asteroid's checkpoints record `torch.__version__`, a `TorchVersion` (a `str`).
    allowed = torch.serialization.safe_globals([torch.torch_version.TorchVersion])
    try:
        # torch warns before refusing some files (a pickle of code: "Detected pickle protocol
        # 4..."): the refusal below says it in one line.
        with allowed, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    # torch.load fails on damaged files with any of UnpicklingError, RuntimeError, OSError,
    # EOFError, KeyError, ...: all mean the file is not a readable torch file.
    # Their messages say little to a user (a truncated file gives "Invalid argument").
    except Exception as error:
        raise UmxError(
            f"{path} is not a readable torch file: it is corrupt or truncated"
        ) from error


def _dtype_name(tensor: Tensor) -> str:
    """A tensor's dtype as messages show it: `int64`, not `torch.int64`."""
    return str(tensor.dtype).removeprefix("torch.")


def _unusable_tensor(tensor: Tensor) -> str | None:
    """Why a tensor cannot be a weight whatever its name (see `_REAL_DTYPES`), if it cannot."""
    if tensor.layout != torch.strided:
        return f"is a {str(tensor.layout).removeprefix('torch.')} tensor, not a dense one"
    if tensor.device.type != "cpu":  # a meta tensor: map_location does not give it values
        return f"is a {tensor.device.type} tensor, without values"
    if tensor.dtype not in _REAL_DTYPES:
        return f"holds {_dtype_name(tensor)} values, not real numbers"
    return None


_SQUARES = {"running_var": "variances", "exp_avg_sq": "squared gradient averages"}


def damaged_values(name: str, tensor: Tensor) -> str | None:
    """Why the values of a tensor named `name` make it useless as a weight or optimizer state,
    if they do: NaN or infinite values, or negative ones where they are squares (batch-norm
    variances, Adam's running averages of squared gradients)."""
    if not tensor.is_floating_point():
        return None
    if not bool(torch.isfinite(tensor).all()):
        return "holds NaN or infinite values, which would make every separation garbage"
    square = next((kind for end, kind in _SQUARES.items() if name.endswith(end)), None)
    if square is not None and bool((tensor < 0).any()):
        return f"has negative {square}"
    return None


def check_state_dict(path: Path, loaded: object) -> dict[str, Tensor]:
    """A state dict read from `path`, checked, with floating-point tensors as float32.

    Raises:
        UmxError: it is not a mapping of names to tensors, or it holds sparse, meta, complex
            or other tensors that cannot be weights, NaN or infinite values or negative
            batch-norm variances.
    """
    if not isinstance(loaded, Mapping) or not all(
        isinstance(key, str) and isinstance(value, Tensor) for key, value in loaded.items()
    ):
        raise UmxError(f"{path} does not hold a state dict of tensors")
    for key, value in loaded.items():
        problem = _unusable_tensor(value)
        if problem:
            raise UmxError(f"{path} is not usable: its {short.repr(key)} {problem}")
    state = {
        key: value.float() if value.is_floating_point() else value for key, value in loaded.items()
    }
    for key, value in state.items():
        if problem := damaged_values(key, value):
            raise UmxError(f"{path} is not usable: its {short.repr(key)} {problem}")
    return state


def load_target_model(path: str | os.PathLike, args: Mapping[str, Any] | None = None) -> OpenUnmix:
    """Load one target's `OpenUnmix` from a `.pth` state dict, in evaluation mode.

    The architecture is read off the state dict (`infer_architecture`) and checked against
    `args` where they say something. Float16 weights are converted to float32, and the extra
    keys of reference files (`sample_rate`, `stft.window`, `istft.window`, `transform.*`) are
    dropped before a strict load.

    Args:
        path: the weights file.
        args: the `args` of the target's json, if known.

    Returns:
        the model, frozen (evaluation mode, no gradients), on the CPU.

    Raises:
        UmxError: the file is missing, unreadable, not an Open-Unmix state dict, holds NaN or
            infinite values or negative variances, or disagrees with `args`.
    """
    path = Path(path)
    loaded = read_torch_file(path)
    state = {
        key: value
        for key, value in check_state_dict(path, loaded).items()
        if key not in _EXTRA_KEYS and not key.startswith(_EXTRA_PREFIX)
    }
    try:
        arch = infer_architecture(state)
        with torch.device("meta"):  # no memory and no random initialisation: the weights follow
            model = arch.build()
    except ValueError as error:
        raise UmxError(f"{path} is not an Open-Unmix state dict: {error}") from None
    mismatch = _args_mismatch(arch, args or {})
    if mismatch:
        raise UmxError(f"{path} does not match its json: {mismatch}")
    mismatch = _shape_mismatch(model.state_dict(), state)
    if mismatch:
        raise UmxError(f"{path} is not an Open-Unmix state dict: {mismatch}")
    model.load_state_dict(state, strict=True, assign=True)
    return model.freeze()


def target_args(model: OpenUnmix, *, sample_rate: float, n_fft: int, n_hop: int) -> dict[str, Any]:
    """The `args` a target json must hold for `model`: its architecture and STFT.

    `bandwidth` is the centre frequency of the last bin the model sees, which maps back to the
    same `max_bin`.
    """
    arch = TargetArchitecture.of(model)
    if n_fft // 2 + 1 != arch.nb_bins:
        raise ValueError(f"n_fft {n_fft} gives {n_fft // 2 + 1} bins, the model has {arch.nb_bins}")
    return {
        "sample_rate": float(sample_rate),
        "nfft": n_fft,
        "nhop": n_hop,
        "nb_channels": arch.nb_channels,
        "hidden_size": arch.hidden_size,
        "nb_layers": arch.nb_layers,
        "unidirectional": arch.unidirectional,
        "max_bin": arch.max_bin,
        "bandwidth": (arch.max_bin - 1) * sample_rate / n_fft,
    }
