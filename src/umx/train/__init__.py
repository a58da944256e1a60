"""Training of one Open-Unmix target model: datasets from options, input statistics, the
training loop, early stopping, resumable checkpoints and distributed data parallel training.

`umx train` parses its options with `add_train_arguments` and calls `run_training` with those
given;
`python -m umx.train` does the same. Under `torchrun --nproc_per_node=N` the same command trains
with DistributedDataParallel (NCCL on GPUs, gloo on CPUs); only rank 0 writes.

The STFT is computed with `center=True`, as `umx.transforms` and the separator do (the reference
trainer used `center=False`): training and separation see the same frames.

Its modules, one job each (their docstrings hold the details):

- :mod:`umx.train.config`: `TrainConfig`, the options of a run, their defaults and their
  checks, given on the command line, by a caller or restored from a checkpoint.
- :mod:`umx.train.options`: the command line: the argument table, the options given on it,
  `run_train` and `main`.
- :mod:`umx.train.inputs`: the training and validation datasets of the options, and the input
  statistics of a new model.
- :mod:`umx.train.distributed`: this process's place in a torchrun job, its collectives and the
  per-epoch seeding.
- :mod:`umx.train.checkpoints`: early stopping and history, the checkpoint read back, the checks
  of the output directory and its `separator.json`.
- :mod:`umx.train.plots`: the loss curves and the ticks of their log axis.
- :mod:`umx.train.epochs`: one epoch: a training pass over the batches, and the validation loss
  over whole tracks in bounded memory.
- :mod:`umx.train.loop`: the run: device and process group, the model, the epoch loop (with
  early stopping) and the outputs written after each epoch.

The public names are re-exported here: ``from umx.train import run_training``.
"""

from typing import TYPE_CHECKING

from umx.lazy import lazy_exports

if TYPE_CHECKING:
    from umx.train.checkpoints import CHECKPOINT_SUFFIX, EarlyStopping, History
    from umx.train.config import DATASETS, DEFAULTS, TrainConfig, check_options, resolve_options
    from umx.train.distributed import Distributed, seed_everything
    from umx.train.epochs import train_epoch, validate
    from umx.train.inputs import compute_statistics, make_datasets
    from umx.train.loop import Trainer, run_training
    from umx.train.options import add_train_arguments, main
    from umx.train.plots import CURVE_SUFFIX, loss_figure, loss_ticks, plot_history

__all__ = [
    "CHECKPOINT_SUFFIX",
    "CURVE_SUFFIX",
    "DATASETS",
    "DEFAULTS",
    "Distributed",
    "EarlyStopping",
    "History",
    "TrainConfig",
    "Trainer",
    "add_train_arguments",
    "check_options",
    "compute_statistics",
    "loss_figure",
    "loss_ticks",
    "main",
    "make_datasets",
    "plot_history",
    "resolve_options",
    "run_training",
    "seed_everything",
    "train_epoch",
    "validate",
]

__getattr__, __dir__ = lazy_exports(
    globals(),
    ("checkpoints", "config", "distributed", "epochs", "inputs", "loop", "options", "plots"),
)
