"""Reports: the per-track JSON files read back, aggregated into score tables (Markdown and CSV),
and with the box plots, the reports of one or several methods."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from umx.audio import display_path
from umx.errors import UmxError
from umx.evaluate.common import _extra, _write_text
from umx.evaluate.plots import plot_scores
from umx.evaluate.scoring import METRICS
from umx.evaluate.tracks import _target_order

if TYPE_CHECKING:
    import museval
    import pandas as pd


MAX_NAME = 100
"""Characters of a method name read from a JSON file (longer ones, or ones that would break a
Markdown table, give way to the folder's name)."""


def load_scores(
    evaldir: str | os.PathLike, subset: str = "test", tracks: Iterable[str] | None = None
) -> museval.EvalStore:
    """Read the per-track JSON files of one method.

    Args:
        evaldir: as written by `evaluate`.
        subset: the subfolder to read.
        tracks: the track names to read; every JSON of the subset if None.

    Returns:
        museval's store of the framewise scores (`.df` has columns time, target, metric, score,
        track).

    Raises:
        UmxError: no JSON found, or one is unreadable.
    """
    folder = Path(evaldir) / subset
    paths = (
        sorted(folder.glob("*.json"))
        if tracks is None
        else [folder / f"{name}.json" for name in tracks]
    )
    museval = _extra("museval")
    store = museval.EvalStore()
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as error:
            raise UmxError(f"{path} is not a museval JSON file ({error})") from None
        try:
            store.add_track(museval.json2df(data, path.stem))
        except Exception as error:  # museval and pandas fail on untrusted JSON in many ways
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UmxError(
                f"{display_path(path)} is not a museval JSON file ({display_path(reason)}): "
                "give an evaluation folder of umx evaluate"
            ) from None
    if store.df.empty:
        raise UmxError(f"{folder} holds no scores (museval .json files)")
    return store


def method_name(
    evaldir: str | os.PathLike, subset: str = "test", tracks: Iterable[str] | None = None
) -> str:
    """The name of the method whose scores are in `evaldir`, for reports.

    `evaluate` records the method's name in every museval JSON (a model's is the model loaded,
    e.g. `umxl`, or its directory's name); when the JSON files name one method, that is its
    name, otherwise the name of `evaldir`.
    """
    folder = Path(evaldir) / subset
    paths = (
        folder.glob("*.json") if tracks is None else (folder / f"{name}.json" for name in tracks)
    )
    names = set()
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = None
        names.add(data.get("method") if isinstance(data, dict) else None)
    (name,) = names if len(names) == 1 else (None,)
    if (
        isinstance(name, str)
        and 0 < len(name) <= MAX_NAME
        and name.isprintable()
        and "|" not in name
    ):
        return name
    return display_path(Path(evaldir).resolve().name)


def method_scores(stores: Mapping[str, museval.EvalStore]) -> museval.MethodStore:
    """Several methods' scores in one museval `MethodStore`, under the given names."""
    methods = _extra("museval").MethodStore()
    for name, store in stores.items():
        methods.add_evalstore(store, name)
    return methods


def score_table(methods: museval.MethodStore) -> pd.DataFrame:
    """The aggregate scores: median over frames, then median over tracks (NaN frames skipped).

    Returns:
        one row per (method, target), in the methods' order and MUSDB18's target order, one
        column per metric of `METRICS`, in dB.
    """
    table = methods.agg_frames_tracks_scores().unstack("metric")[list(METRICS)]
    order = list(dict.fromkeys(methods.df["method"]))
    targets = _target_order(table.index.get_level_values("target"))
    index = [(m, t) for m in order for t in targets if (m, t) in table.index]
    table = table.loc[index]
    table.columns.name = None
    return table


def side_by_side(table: pd.DataFrame) -> pd.DataFrame:
    """`score_table`'s table with the methods side by side, to compare them at a glance.

    Returns:
        one row per (target, metric), in MUSDB18's target order and `METRICS`' order, and one
        column per method, in the methods' order; NaN where a method has no score of a target.
    """
    pd = _extra("pandas")
    methods = list(dict.fromkeys(table.index.get_level_values("method")))
    targets = _target_order(table.index.get_level_values("target"))
    columns = {method: table.loc[method].stack() for method in methods}
    index = pd.MultiIndex.from_product([targets, METRICS], names=["target", "metric"])
    wide = pd.concat(columns, axis=1).reindex(index)
    wide.columns.name = None
    return wide


def to_markdown(table: pd.DataFrame, decimals: int = 2) -> str:
    """A score table as a Markdown table, the index levels as the first columns; a missing
    score (NaN) shows as `-`."""
    header = [*table.index.names, *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, row in table.iterrows():
        values = ("-" if math.isnan(v) else f"{v:.{decimals}f}" for v in row)
        cells = [*(key if isinstance(key, tuple) else (key,)), *values]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, directory: str | os.PathLike, name: str) -> list[Path]:
    """Write `<name>.md` and `<name>.csv` into `directory`, each atomically; returns the paths."""
    directory = Path(directory)
    markdown, csv = directory / f"{name}.md", directory / f"{name}.csv"
    _write_text(markdown, to_markdown(table))
    _write_text(csv, table.to_csv(float_format="%.5f"))
    return [markdown, csv]


def report(
    stores: Mapping[str, museval.EvalStore],
    directory: str | os.PathLike,
    name: str,
    *,
    compare: bool = False,
) -> pd.DataFrame:
    """Aggregate table (Markdown and CSV) and box plots of one or several methods.

    Args:
        stores: method name → its scores, from `load_scores`.
        directory: where `<name>.md`, `<name>.csv` and `<name>_<metric>.png` go.
        name: the reports' file name stem.
        compare: put the methods side by side (`side_by_side`).

    Returns:
        the table written: `score_table`'s, or with `compare` `side_by_side`'s.
    """
    methods = method_scores(stores)
    table = score_table(methods)
    if compare:
        table = side_by_side(table)
    write_table(table, directory, name)
    plot_scores(methods, directory, name)
    return table
