"""The exception umx raises for problems a user can fix (bad files, bad options, missing models),
and the checks of numbers that users give."""

from __future__ import annotations

import math

MIN_RATE, MAX_RATE = 1000.0, 768000.0
"""The sample rates umx accepts anywhere (audio given to the API, raw PCM, model files), in Hz."""


class UmxError(Exception):
    """A user error: its message is one sentence, shown by the CLI without a traceback."""


def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    integer: bool = False,
) -> None:
    """Refuse a number a user gave that is not finite, not of the right kind, or out of range.

    Args:
        name: how the user knows the value, e.g. `--niter`; the message names it.
        value: the value to check; booleans and strings are refused.
        minimum: the smallest value allowed, inclusive.
        above: a bound the value must exceed, exclusive.
        maximum: the largest value allowed, inclusive.
        integer: only whole numbers (ints) are allowed.

    Raises:
        UmxError: the value breaks one of these rules.
    """
    kinds = (int,) if integer else (int, float)
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise UmxError(f"{name} must be {kind}, not {value!r}")
    if not math.isfinite(value):
        raise UmxError(f"{name} must be a finite number, not {value}")
    if minimum is not None and value < minimum:
        raise UmxError(f"{name} must be at least {minimum:g}, not {value:g}")
    if above is not None and value <= above:
        raise UmxError(f"{name} must be greater than {above:g}, not {value:g}")
    if maximum is not None and value > maximum:
        raise UmxError(f"{name} must be at most {maximum:g}, not {value:g}")
