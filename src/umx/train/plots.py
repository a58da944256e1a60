"""The loss curves of a run, drawn with matplotlib (imported only when drawing)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

from umx.files import write_bytes_atomic
from umx.train.checkpoints import History

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CURVE_SUFFIX = "_loss.png"


def plot_history(history: History, path: Path, target: str) -> None:
    """Write the training and validation loss curves as a PNG, atomically."""
    buffer = io.BytesIO()
    loss_figure(history, target).savefig(buffer, format="png", dpi=100)
    write_bytes_atomic(path, buffer.getvalue())


def loss_figure(history: History, target: str) -> Figure:
    """The loss curves: whole epochs on the x axis, plain numbers on the (log) loss axis."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    axes = figure.add_subplot()
    epochs = range(1, len(history.train_loss) + 1)
    marker = "." if len(epochs) <= 30 else None  # few epochs: show each
    axes.plot(epochs, history.train_loss, marker=marker, label="training")
    axes.plot(epochs, history.valid_loss, marker=marker, label="validation")
    if history.best_epoch:
        axes.axvline(history.best_epoch, color="gray", linestyle=":", label="best")
    axes.set(xlabel="epoch", ylabel="loss (MSE)", title=f"{target}: loss")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    losses = [v for v in (*history.train_loss, *history.valid_loss) if math.isfinite(v) and v > 0]
    ticks = loss_ticks(min(losses), max(losses)) if losses else None
    if ticks is not None:
        axes.set_yscale("log")
        axes.set_yticks(ticks)
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.yaxis.set_minor_formatter(NullFormatter())
        margin = (max(losses) / min(losses)) ** 0.05
        axes.set_ylim(min(losses) / margin, max(losses) * margin)
    else:
        axes.ticklabel_format(axis="y", useOffset=False)
    axes.legend()
    return figure


def loss_ticks(low: float, high: float) -> list[float] | None:
    """Ticks of a log loss axis from `low` to `high` (positive): round numbers, 3 to 12 of them.

    The coarsest of the series 1, 10, 100... (every other decade if that is too many),
    1, 2, 5, 10... and 1, 2, 3, 4, 6, 8, 10... that puts at least 3 ticks in the range.

    Returns:
        the ticks, or None when the range is too narrow for a log axis to help (a linear axis
        then reads better).
    """
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 4, 6, 8)):
        ticks = [float(f"{m}e{e}") for e in range(first, last + 1) for m in mantissas]
        ticks = [t for t in ticks if low <= t <= high]
        if mantissas == (1,) and len(ticks) > 12:
            ticks = ticks[:: math.ceil(len(ticks) / 12)]
        if len(ticks) >= 3:
            return ticks
    return None
