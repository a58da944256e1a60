"""Box plots of the per-track scores, on a score axis that keeps them readable."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from umx.evaluate.common import _extra, _write_atomic
from umx.evaluate.scoring import METRICS
from umx.evaluate.tracks import _target_order

if TYPE_CHECKING:
    import museval
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


SCORE_GAP = 20.0
"""dB between groups of boxes that a box plot shows on one axis regardless of their spread."""


def plot_scores(
    methods: museval.MethodStore, directory: str | os.PathLike, name: str
) -> list[Path]:
    """Box plots of the per-track scores (frame medians), as sigsep shows results.

    One PNG per metric, `<name>_<metric>.png`. One method: a box per target. Several: a panel
    per target and a box per method. The title states how many tracks were scored and each
    box's label how many tracks it summarises (tracks without a finite score are left out).
    The score axis, shared by the panels, covers the boxes of most methods (see
    `score_limits`); values beyond it, such as the 150+ dB SAR of the mixture baseline, are
    marked at the edge with their count and median instead of squashing the rest.

    Returns:
        the paths written.
    """
    per_track = methods.agg_frames_scores()  # indexed by method, track, target, metric
    order = list(dict.fromkeys(methods.df["method"]))
    targets = _target_order(per_track.index.get_level_values("target").unique())
    tracks = per_track.index.to_frame(index=False).groupby("method")["track"].nunique()
    paths = []
    for metric in METRICS:
        scores = per_track.xs(metric, level="metric")
        found = {key: _finite(group) for key, group in scores.groupby(level=["method", "target"])}
        boxes = {
            (method, target): found.get((method, target), np.empty(0))
            for method in order
            for target in targets
        }
        figure = _box_figure(boxes, order, targets, metric, [int(tracks[m]) for m in order])
        path = Path(directory) / f"{name}_{metric}.png"
        _write_atomic(path, lambda file, figure=figure: figure.savefig(file, format="png", dpi=100))
        paths.append(path)
    return paths


def _finite(scores: pd.Series) -> np.ndarray:
    values = scores.to_numpy(dtype=float)
    return values[np.isfinite(values)]


def _box_figure(
    boxes: Mapping[tuple[str, str], np.ndarray],
    order: Sequence[str],
    targets: Sequence[str],
    metric: str,
    nb_tracks: Sequence[int],
) -> Figure:
    """The box plot of one metric: `boxes[(method, target)]` holds the per-track scores, and
    `nb_tracks` the number of tracks scored of each method of `order`."""
    single = len(order) == 1
    counted = f"{min(nb_tracks)}" + (f" to {max(nb_tracks)}" if len(set(nb_tracks)) > 1 else "")
    counted += " track" if counted == "1" else " tracks"
    # One method: a single panel, a box per target. Several: a panel per target.
    panels = (
        [(order[0], list(targets))] if single else [(target, list(order)) for target in targets]
    )
    width = 1.0 * len(targets) + 2.5 if single else len(targets) * (0.7 * len(order) + 1.2) + 1
    figure = _extra("matplotlib.figure").Figure(figsize=(max(width, 5.0), 4.2), layout="tight")
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    rotation, align = (0, "center") if single else (30, "right")
    if not single:
        figure.suptitle(f"{metric} per track, n = {counted}")
    ordered = [boxes[(method, target)] for method in order for target in targets]
    limits = score_limits(ordered, first=len(targets))
    for ax, (title, labels) in zip(axes, panels, strict=True):
        data = [boxes[(title, label)] if single else boxes[(label, title)] for label in labels]
        positions = range(1, len(labels) + 1)
        ax.boxplot(data, positions=positions)
        ticks = [f"{label}\nn = {values.size}" for label, values in zip(labels, data, strict=True)]
        ax.set_xticks(positions, ticks, rotation=rotation, ha=align)
        ax.set_title(f"{title}: {metric} per track, n = {counted}" if single else title)
        ax.grid(axis="y", alpha=0.3)
        if limits is not None:
            ax.set_ylim(limits)
            for position, values in zip(positions, data, strict=True):
                _mark_off_scale(ax, position, values, limits)
    axes[0].set_ylabel(f"{metric} (dB), median over frames")
    return figure


def score_limits(
    boxes: Sequence[np.ndarray], *, first: int = 0, gap: float = 3.0
) -> tuple[float, float] | None:
    """A shared score axis range under which the boxes are readable.

    Each box stands for its whisker extent (the scores within 1.5 interquartile ranges of its
    quartiles, as the box plot draws it). Extents are grouped where the space between them is
    at most `SCORE_GAP` dB or `gap` times the median extent; the axis covers the group holding
    the most boxes with their outliers as near as that, plus 5 % on each side. A group far
    from the others, such as the mixture baseline's SAR of 150+ dB next to scores of 0 to
    20 dB, is left off the axis (and marked at its edge by the plot) instead of squashing every
    other box. Ties go to the group holding the most of the first `first` boxes (the first
    method's).

    Args:
        boxes: the finite scores of each box; empty boxes are ignored.
        first: how many of the leading boxes belong to the first method.
        gap: the largest space between boxes shown together, in median extents, when that is
            more than `SCORE_GAP`.

    Returns:
        (low, high), or None when no box has a score.
    """
    extents = [(index, *_whiskers(values)) for index, values in enumerate(boxes) if values.size]
    if not extents:
        return None
    extents.sort(key=lambda extent: extent[1])
    median = float(np.median([high - low for _, low, high in extents]))
    largest_gap = max(SCORE_GAP, gap * median)
    groups: list[list[tuple[int, float, float]]] = []
    for extent in extents:
        if groups and extent[1] - max(high for _, _, high in groups[-1]) <= largest_gap:
            groups[-1].append(extent)
        else:
            groups.append([extent])
    chosen = max(
        groups, key=lambda group: (len(group), sum(index < first for index, _, _ in group))
    )
    low = min(low for _, low, _ in chosen)
    high = max(high for _, _, high in chosen)
    # The group's outliers too, unless they lie as far away as another group would.
    values = np.concatenate([boxes[index] for index, _, _ in chosen])
    near = values[(values >= low - largest_gap) & (values <= high + largest_gap)]
    low, high = float(near.min()), float(near.max())
    margin = 0.05 * max(high - low, 1.0)
    return low - margin, high + margin


def _whiskers(values: np.ndarray) -> tuple[float, float]:
    """The extent of a box plot's whiskers: the scores within 1.5 IQR of the quartiles."""
    q1, q3 = np.percentile(values, [25, 75])
    inside = values[(values >= q1 - 1.5 * (q3 - q1)) & (values <= q3 + 1.5 * (q3 - q1))]
    return float(inside.min()), float(inside.max())


def _mark_off_scale(
    ax: Axes, position: int, values: np.ndarray, limits: tuple[float, float]
) -> None:
    """Mark the scores beyond `limits` at the axis edge: a triangle, their count and median."""
    low, high = limits
    for off, edge, marker, align in (
        (values[values > high], high, "^", "top"),
        (values[values < low], low, "v", "bottom"),
    ):
        if off.size:
            ax.plot([position], [edge], marker=marker, color="C3", clip_on=False, zorder=3)
            ax.annotate(
                f"{off.size} off scale\nmedian {np.median(off):.3g}",
                (position, edge),
                xytext=(0, -9 if align == "top" else 9),
                textcoords="offset points",
                ha="center",
                va=align,
                fontsize=7,
                color="C3",
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "linewidth": 0},
            )
