"""BSSEval v4 over a test set: per-track scores, aggregate tables, baselines, plots.

A test set is MUSDB18 read by `musdb` (`.stem.mp4` files, or with `is_wav` a folder per track
holding `mixture.wav`, `vocals.wav`, `drums.wav`, `bass.wav` and `other.wav`, as MUSDB18-HQ).
A method turns one track into estimates: a separation model, a folder of estimates already on
disk, or a baseline (the oracle ideal ratio or binary mask, or the mixture as every estimate).

Scores are museval's: computed by umx's own BSSEval v4 (`bsseval`, the same numbers several times
faster) or by museval itself. Results follow sigsep's conventions: one museval JSON per track in
`<evaldir>/<subset>/<track>.json` (read by `museval.EvalStore` and `museval.MethodStore`), and
aggregate scores that are the median over frames, then the median over tracks. Waveforms here are
numpy arrays `(nb_timesteps, nb_channels)`, the axis order of musdb and museval.

museval, musdb, pandas and matplotlib (the `evaluate` extra) are imported when first needed, so
that the `umx` command starts without them.

The modules, each with one job: `tracks` (MUSDB18 test sets), `methods` (model, estimates on
disk, baselines), `bsseval` (BSSEval v4 metrics of sources and estimates, as museval computes
them), `scoring` (BSSEval per track and over a test set, the JSON files), `reports`
(score tables and reports), `plots` (box plots), `run` (`EvaluateOptions` and `run_evaluation`,
the run of `umx evaluate`), `options` (the command line, parsed into `EvaluateOptions`),
`common` (the extra's import, atomic writes). Their public names are re-exported here.
"""

from typing import TYPE_CHECKING

from umx.lazy import lazy_exports

if TYPE_CHECKING:
    from umx.evaluate.bsseval import Scores, bss_eval
    from umx.evaluate.methods import (
        BASELINES,
        EPS,
        IRM_POWER,
        BaselineMethod,
        Estimates,
        EstimatesMethod,
        Method,
        ModelMethod,
        model_display_name,
        oracle,
    )
    from umx.evaluate.options import add_evaluate_arguments, run_evaluate
    from umx.evaluate.plots import SCORE_GAP, plot_scores, score_limits
    from umx.evaluate.reports import (
        MAX_NAME,
        load_scores,
        method_name,
        method_scores,
        report,
        score_table,
        side_by_side,
        to_markdown,
        write_table,
    )
    from umx.evaluate.run import EvaluateOptions, Evaluation, run_evaluation
    from umx.evaluate.scoring import (
        BSSEVAL,
        HOP,
        METRICS,
        WIN,
        Summary,
        check_settings,
        evaluate,
        json_path,
        score_track,
    )
    from umx.evaluate.tracks import SOURCES, SUBSETS, TARGETS, check_references, load_tracks

__all__ = [
    "BASELINES",
    "BSSEVAL",
    "EPS",
    "HOP",
    "IRM_POWER",
    "MAX_NAME",
    "METRICS",
    "SCORE_GAP",
    "SOURCES",
    "SUBSETS",
    "TARGETS",
    "WIN",
    "BaselineMethod",
    "Estimates",
    "EstimatesMethod",
    "EvaluateOptions",
    "Evaluation",
    "Method",
    "ModelMethod",
    "Scores",
    "Summary",
    "add_evaluate_arguments",
    "bss_eval",
    "check_references",
    "check_settings",
    "evaluate",
    "json_path",
    "load_scores",
    "load_tracks",
    "method_name",
    "method_scores",
    "model_display_name",
    "oracle",
    "plot_scores",
    "report",
    "run_evaluate",
    "run_evaluation",
    "score_limits",
    "score_table",
    "score_track",
    "side_by_side",
    "to_markdown",
    "write_table",
]

__getattr__, __dir__ = lazy_exports(
    globals(), ("bsseval", "methods", "options", "plots", "reports", "run", "scoring", "tracks")
)
