"""Groups of targets summed into stems (`--aggregate`, the Python API's `aggregate`): read from
JSON text or a JSON file, and checked, by themselves and against a model's targets."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from umx.errors import UmxError, check_target_name, display_path
from umx.messages import shown

if TYPE_CHECKING:
    from umx.separator import Separator

AGGREGATE_SHAPE = '--aggregate must map names to non-empty lists of targets, e.g. {"acc": ["bass"]}'


def check_groups(aggregate: object) -> None:
    """Refuse groups that cannot be summed as asked, whatever the model: not a mapping of names
    to non-empty lists of target names, no group at all, a target listed twice in a group
    (summed twice, a stem 6 dB too loud), or a group name that cannot be a file name.

    Raises:
        UmxError: naming `--aggregate` (the Python API's `aggregate`) and what to fix.
    """
    if not isinstance(aggregate, Mapping) or not all(
        isinstance(group, Sequence)
        and not isinstance(group, str)
        and group
        and all(isinstance(target, str) for target in group)
        for group in aggregate.values()
    ):
        raise UmxError(AGGREGATE_SHAPE)
    if not aggregate:
        raise UmxError("--aggregate needs at least one group")
    for name, group in aggregate.items():
        if len(set(group)) < len(group):
            twice = next(target for target in group if list(group).count(target) > 1)
            where = f"the group {shown(str(name))}"
            raise UmxError(f"--aggregate lists {shown(twice)} twice in {where}: list it once")
    for name in aggregate:  # written as file names
        check_target_name(name, "--aggregate")


def check_aggregate(aggregate: Mapping[str, Sequence[str]] | None, separator: Separator) -> None:
    """Refuse groups that `check_groups` refuses, that name targets the separator does not
    separate (a target of its model left out by --targets is told apart from one it lacks), or
    that leave out its residual, which was asked for and would go unwritten; before any work.
    None (no groups) passes."""
    if aggregate is None:
        return
    check_groups(aggregate)
    named = {target for group in aggregate.values() for target in group}
    left_out = sorted(named & set(separator.model_targets) - set(separator.targets))
    if left_out:
        raise UmxError(
            f"--aggregate sums {', '.join(left_out)}, which --targets leaves out: add it to "
            "--targets, or leave --targets out"
        )
    unknown = sorted(named - set(separator.targets))
    if unknown:
        raise UmxError(
            f"--aggregate names unknown targets {', '.join(unknown)}; "
            f"the targets are {', '.join(separator.targets)}"
        )
    if separator.residual is not None and separator.residual not in named:
        raise UmxError(
            f"--residual {separator.residual} is in no --aggregate group, so it would not be "
            "written: add it to a group, or leave --residual out"
        )


def parse_aggregate(text: str | None) -> dict[str, list[str]] | None:
    """`--aggregate` as JSON text or a JSON file: `{name: [target, ...]}`."""
    if text is None:
        return None
    if not text.strip():
        raise UmxError("--aggregate is empty: give JSON text or a JSON file")
    # an object is JSON text, and so is what names no regular file (isfile is false for a long
    # JSON text too: names are limited to 255 bytes); a file is read
    braced = text.lstrip().startswith("{")
    is_text = braced or not os.path.isfile(text)
    try:
        value = json.loads(text if is_text else _read_json_file(text))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        if is_text and not braced:
            reason = f"{shown(text)} is not JSON text and not a regular file"
        raise UmxError(
            f"--aggregate is neither valid JSON nor a readable JSON file ({reason})"
        ) from None
    if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
        raise UmxError(AGGREGATE_SHAPE)
    check_groups(value)  # the names too, before any path is made of them
    return value


AGGREGATE_FILE_LIMIT = 1 << 20
"""The largest `--aggregate` JSON file read, in bytes."""


def _read_json_file(name: str) -> str:
    """The text of a small regular file."""
    path = Path(name)
    if path.stat().st_size > AGGREGATE_FILE_LIMIT:
        raise ValueError(f"{display_path(path)} is larger than {AGGREGATE_FILE_LIMIT} bytes")
    return path.read_text()
