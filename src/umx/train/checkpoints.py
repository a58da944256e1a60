"""The state a run resumes from and the model directory it writes into.

Early stopping and the history are saved in the checkpoint `<target>.chkpnt`; this module reads
a checkpoint back (refusing one that is unreadable, of another target or does not fit the run),
holds the `--output` directory for the run (`claim_output`) and refuses one holding another
run, and composes its `separator.json`
(`umx.workers.stops_deferred` keeps a stop signal from landing in the middle of writing them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from umx.errors import UmxError, display_path, short
from umx.folders import check_folder_option, check_writable, claimed_folder
from umx.modeldir import SEPARATOR_JSON, WEIGHTS_SUFFIX
from umx.train.config import MAX_ADAM, XUMX_NAME, TrainConfig
from umx.weights import damaged_values, infer_architecture

CHECKPOINT_SUFFIX = ".chkpnt"
_SCHEDULER_COUNTS = ("patience", "cooldown", "cooldown_counter", "num_bad_epochs", "last_epoch")
_MISSING = object()  # an entry a checkpoint lacks


@dataclass
class EarlyStopping:
    """Stop when the validation loss has not decreased for `patience` epochs."""

    patience: int
    best: float = math.inf
    num_bad_epochs: int = 0

    def step(self, loss: float) -> bool:
        """Record an epoch's validation loss; returns whether it is a new best."""
        if loss < self.best:
            self.best, self.num_bad_epochs = loss, 0
            return True
        self.num_bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.num_bad_epochs >= self.patience


@dataclass
class History:
    """Per-epoch records, saved in `<target>.json` and the checkpoint."""

    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_time: list[float] = field(default_factory=list)
    best_epoch: int = 0


def _checkpoint_part(config: TrainConfig, use: Callable[[], Any]) -> Any:
    """Run `use`, which reads the checkpoint; a checkpoint that does not fit is a user error."""
    try:
        return use()
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as error:
        path = Path(config.checkpoint) / f"{config.target}{CHECKPOINT_SUFFIX}"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UmxError(f"{path} is a damaged checkpoint ({reason[:200]})") from None


def _cpu_state(model: torch.nn.Module) -> dict[str, Tensor]:
    return {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}


def _json_options(config: TrainConfig) -> dict[str, Any]:
    """The run's options as JSON values (paths as strings)."""
    return {
        key: str(value) if isinstance(value, Path) else value for key, value in vars(config).items()
    }


def _read_checkpoint(directory: Path, target: str | None, device: torch.device) -> dict[str, Any]:
    """Load `<target>.chkpnt` from the `--checkpoint` directory (the only one there when
    `target` is None).

    Raises:
        UmxError: no such checkpoint, an unreadable one, one of another target, or one whose
            sample rate or tensors are damaged (NaN, infinite, negative variances), or a number
            of whose state makes no sense (`STATE_NUMBERS`).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UmxError(
            f"--checkpoint {display_path(directory)} does not exist or is not a folder: give "
            "the --output folder of the run to resume"
        )
    found = sorted(
        path.name[: -len(CHECKPOINT_SUFFIX)] for path in directory.glob(f"*{CHECKPOINT_SUFFIX}")
    )
    models = sorted(
        path.name[: -len(WEIGHTS_SUFFIX)] for path in directory.glob(f"*{WEIGHTS_SUFFIX}")
    )
    if target is None and not found and models:
        raise UmxError(
            f"{directory} holds no checkpoint to resume: its {', '.join(models)} model"
            f"{'s have' if len(models) > 1 else ' has'} none (train again with --output "
            f"{directory} --force to overwrite it)"
        )
    if target is None:
        if len(found) != 1:
            names = ", ".join(found) or "none"
            raise UmxError(
                f"{directory} must hold exactly one checkpoint to resume without --target "
                f"(it holds {names})"
            )
        target = found[0]
    path = directory / f"{target}{CHECKPOINT_SUFFIX}"
    if not path.is_file():
        if target in models:
            raise UmxError(
                f"{path} does not exist: the {target} model in {directory} has no checkpoint "
                f"to resume (train again with --output {directory} --force to overwrite it)"
            )
        names = ", ".join(found) or "none"
        raise UmxError(f"{path} does not exist: {directory} holds checkpoints of {names}")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # a damaged file fails in many ways: all mean unreadable
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UmxError(f"{path} is not a readable checkpoint ({reason})") from None
    keys = ("epoch", "args", "sample_rate", "model", "best_model", "optimizer", "scheduler")
    keys += ("early_stopping", "history")
    if (
        not isinstance(checkpoint, dict)
        or not all(key in checkpoint for key in keys)
        or not isinstance(checkpoint["args"], dict)
    ):
        raise UmxError(f"{path} is not a umx training checkpoint")
    if checkpoint["args"].get("target") != target:
        raise UmxError(
            f"{path} is a checkpoint of target {checkpoint['args'].get('target')!r}, not {target!r}"
        )
    rate = checkpoint["sample_rate"]
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 < rate < math.inf:
        raise UmxError(f"{path} is a damaged checkpoint (its sample rate is {str(rate)[:40]!r})")
    damaged = _damaged_tensor(
        {key: checkpoint[key] for key in ("model", "best_model", "optimizer")}
    )
    if damaged is not None:
        name, problem = damaged
        problem = f"its {name[:80]} {problem.split(',')[0]}"
    else:
        problem = _senseless_number(checkpoint)
    if problem is not None:
        raise UmxError(
            f"{path} is a damaged checkpoint ({problem}): resume a copy of it from before, or "
            "train again"
        )
    return checkpoint


def _real(value: object) -> bool:
    """Whether `value` is a real number (NaN and infinities included), not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _loss(value: object) -> bool:
    """A lowest loss so far: finite, or infinite before the first epoch (never NaN, which no
    epoch improves on)."""
    return _real(value) and (math.isfinite(value) or value == math.inf)


def _at_most(maximum: float) -> Callable[[object], bool]:
    return lambda value: _real(value) and 0 <= value <= maximum


def _below_one(value: object) -> bool:
    return _real(value) and 0 <= value < 1


STATE_NUMBERS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("early_stopping.best", _loss, "a loss"),
    ("early_stopping.num_bad_epochs", _count, "a count of epochs"),
    ("history.best_epoch", _count, "an epoch"),
    ("history.lr.*", _at_most(MAX_ADAM["lr"]), "a learning rate from 0 to 1"),
    ("history.epoch_time.*", _at_most(math.inf), "a duration"),
    ("optimizer.param_groups.*.lr", _at_most(MAX_ADAM["lr"]), "a learning rate from 0 to 1"),
    ("optimizer.param_groups.*.weight_decay", _at_most(MAX_ADAM["weight_decay"]), "a decay"),
    ("optimizer.param_groups.*.eps", lambda v: _below_one(v) and v > 0, "a small epsilon"),
    ("optimizer.param_groups.*.betas.*", _below_one, "a beta from 0 to 1 (exclusive)"),
    ("scheduler.factor", lambda v: _below_one(v) and v > 0, "a factor between 0 and 1"),
    ("scheduler.min_lrs.*", _at_most(MAX_ADAM["lr"]), "a learning rate from 0 to 1"),
    ("scheduler.best", _loss, "a loss"),
    ("scheduler.threshold", _below_one, "a threshold below 1"),
    ("scheduler.eps", _below_one, "a small epsilon"),
    *((f"scheduler.{key}", _count, "a count of epochs") for key in _SCHEDULER_COUNTS),
    ("scheduler.mode", lambda v: v == "min", "'min'"),
    ("scheduler.threshold_mode", lambda v: v in ("rel", "abs"), "'rel' or 'abs'"),
)
"""The numbers (and modes) of a checkpoint's state beside its tensors, by dotted name (`*`:
every item of a list), what each must satisfy and what it is: an edited one (a NaN best loss,
which no epoch improves on, an infinite learning rate, a decay factor above 1) is refused."""


def _senseless_number(checkpoint: dict[str, Any]) -> str | None:
    """What is wrong with the first of `STATE_NUMBERS` in `checkpoint` that is missing or makes
    no sense, e.g. `its scheduler.factor is 5.0, not a factor between 0 and 1`; None if none
    is. A part of another type than the path says is left to `Trainer._restore`."""
    for where, sensible, wanted in STATE_NUMBERS:
        for name, value in _entries(checkpoint, where.split(".")):
            if value is _MISSING:
                return f"its {name} is missing"
            if not sensible(value):
                return f"its {name} is {short.repr(value)}, not {wanted}"
    return None


def _entries(value: Any, keys: list[str], name: str = "") -> Iterator[tuple[str, Any]]:
    """The entries at the path `keys` in nested dicts, lists and tuples (`*`: every item),
    with their dotted names; `_MISSING` for a key a dict lacks, nothing for a part of another
    type."""
    if not keys:
        yield name, value
        return
    key, rest = keys[0], keys[1:]
    if key == "*":
        items = list(enumerate(value)) if isinstance(value, list | tuple) else []
    elif isinstance(value, dict) and key not in value:
        items, rest = [(key, _MISSING)], []
    else:
        items = [(key, value[key])] if isinstance(value, dict) else []
    for inner, item in items:
        yield from _entries(item, rest, f"{name}.{inner}" if name else str(inner))


def _damaged_tensor(value: Any, name: str = "") -> tuple[str, str] | None:
    """The name of the first tensor in `value` (nested dicts, lists and tuples) whose values are
    damaged (`weights.damaged_values`), with what is wrong; None if there is none."""
    if isinstance(value, Tensor):
        problem = damaged_values(name, value)
        return None if problem is None else (name, problem)
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if (found := _damaged_tensor(item, f"{name}.{key}" if name else str(key))) is not None:
            return found
    return None


def claim_output(
    held: ExitStack,
    output: Path,
    target: str,
    config: TrainConfig,
    sample_rate: float,
    checkpoint: dict[str, Any] | None,
) -> None:
    """Hold `target`'s lock in the `output` folder (made if missing) in `held`, so that no
    other run writes this target's files there meanwhile, then refuse a folder holding another
    run's (`_check_output`).

    Raises:
        UmxError: the folder is not one or cannot be written, another umx train holds it, or
            see `_check_output`.
    """
    check_folder_option("--output", output)
    check_writable("--output", output)  # before any epoch
    busy = (
        f"another umx train is writing the {target} model in {display_path(output)}; wait for "
        "it to end, or train into another --output"
    )
    held.enter_context(claimed_folder(output, busy, target))
    _check_output(output, target, config, sample_rate, checkpoint)


def _check_output(
    output: Path,
    target: str,
    config: TrainConfig,
    sample_rate: float,
    checkpoint: dict[str, Any] | None,
) -> None:
    """Refuse an output directory holding another run of the same target, or another STFT.

    Raises:
        UmxError: unless `--force` is given or the run resumes from this very directory.
    """
    resuming_here = checkpoint is not None and output.resolve() == Path(config.checkpoint).resolve()
    ours = [
        path.name
        for suffix in (CHECKPOINT_SUFFIX, WEIGHTS_SUFFIX, ".json")
        if (path := output / f"{target}{suffix}").exists()
    ]
    if ours and not (resuming_here or config.force):
        # The checkpoint is written first: a run killed at any moment leaves one to resume.
        if (output / f"{target}{CHECKPOINT_SUFFIX}").exists():
            remedy = f"use --checkpoint {output} to resume it or --force to overwrite it"
        else:
            remedy = "it has no checkpoint to resume: use --force to overwrite it"
        raise UmxError(
            f"{output} already holds a {target} model of another run ({', '.join(ours)}); {remedy}"
        )
    suffixes = (WEIGHTS_SUFFIX, CHECKPOINT_SUFFIX)
    found = {path.name.removesuffix(end) for end in suffixes for path in output.glob(f"*{end}")}
    others = sorted(found - {target})  # models of other targets, which need the folder's STFT
    _check_one_architecture(output, target, others)
    _check_one_causality(output, others, config.unidirectional)
    existing = _read_separator_json(output / SEPARATOR_JSON)
    if existing is not None and (others or not config.force):  # --force: this target's only
        wanted = _separator_config(output, target, config, sample_rate)
        different = [
            key
            for key in ("sample_rate", "nfft", "nhop", "nb_channels")
            if key in existing and existing[key] != wanted[key]
        ]
        if different:
            key = different[0]
            said = f"{output / SEPARATOR_JSON} says {key} {existing[key]}"
            if others:
                said += f" for its {', '.join(others)} model{'s' * (len(others) > 1)}"
            raise UmxError(
                f"{said}, but this run has {wanted[key]}: train into another --output"
                + ("" if others else " (or use --force)")
            )


def _check_one_architecture(output: Path, target: str, others: list[str]) -> None:
    """Refuse to train X-UMX into a folder holding Open-Unmix models or the other way round:
    a folder is one model, and separating with it would take one and leave the other unseen.

    Raises:
        UmxError: whatever `--force` says (it replaces this target's files, not another's).
    """
    if target == XUMX_NAME and others:
        held = f"the Open-Unmix {others[0]} model ({others[0]}{WEIGHTS_SUFFIX} or .chkpnt)"
    elif target != XUMX_NAME and XUMX_NAME in others:
        held = f"an X-UMX model ({XUMX_NAME}{WEIGHTS_SUFFIX} or .chkpnt)"
    else:
        return
    this = "an X-UMX model" if target == XUMX_NAME else f"an Open-Unmix {target} model"
    raise UmxError(
        f"{output} holds {held}, and a folder holds one architecture: train {this} into "
        "another --output"
    )


def _check_one_causality(output: Path, others: list[str], unidirectional: bool) -> None:
    """Refuse to train a bidirectional target into a folder of causal ones or the other way
    round: `umx stream` refuses a folder with any bidirectional target, and `umx separate`
    would take the causal ones' latency for nothing.

    Raises:
        UmxError: naming the other targets and what to do, whatever `--force` says.
    """
    differ = [other for other in others if _is_causal(output, other) is not unidirectional]
    if not differ:
        return
    kind = "bidirectional" if unidirectional else "causal"
    advice = "leave out --unidirectional" if unidirectional else "add --unidirectional"
    models = f"{', '.join(differ)} model{'s' * (len(differ) > 1)}"
    raise UmxError(
        f"{output} holds the {kind} {models}, and a folder's models are all causal or none: "
        f"{advice}, or train into another --output"
    )


def _is_causal(output: Path, target: str) -> bool | None:
    """Whether `target`'s model in `output` is causal (unidirectional): its json's `args`
    say, else its weights (or its checkpoint's) do; None where none can be read."""
    json_path = output / f"{target}.json"
    try:
        args = json.loads(json_path.read_text()).get("args") if json_path.is_file() else None
    except (OSError, ValueError, AttributeError):
        args = None
    if isinstance(args, dict) and isinstance(args.get("unidirectional"), bool):
        return args["unidirectional"]
    for suffix, key in ((WEIGHTS_SUFFIX, None), (CHECKPOINT_SUFFIX, "best_model")):
        path = output / f"{target}{suffix}"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            return infer_architecture(state[key] if key else state).unidirectional
        except Exception:  # missing or damaged: the folder's own checks say so when loaded
            continue
    return None


def _read_separator_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UmxError(f"{path} is not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise UmxError(f"{path} does not hold a JSON object")
    return data


def _separator_config(
    output: Path, target: str, config: TrainConfig, sample_rate: float
) -> dict[str, Any]:
    """separator.json for the output directory; an existing `targets` list gains `target`."""
    existing = _read_separator_json(output / SEPARATOR_JSON) or {}
    data = {
        "sample_rate": float(sample_rate),
        "nfft": config.nfft,
        "nhop": config.nhop,
        "nb_channels": config.nb_channels,
    }
    targets = existing.get("targets")
    if isinstance(targets, list):
        data["targets"] = targets if target in targets else [*targets, target]
    return data
