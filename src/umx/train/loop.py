"""The training run: devices and process group, the model, the epoch loop and the outputs.

`run_training` sets up the device (and the process group under torchrun) and runs a `Trainer`,
which builds the model (new, fine-tuned or resumed), trains and validates epoch by epoch
(`umx.train.epochs`) with early stopping, and writes the checkpoint, the best model,
`separator.json` and the loss curve after every epoch (rank 0 only).
"""

from __future__ import annotations

import logging
import math
import platform
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from umx import __version__
from umx.devices import resolve_device
from umx.errors import UmxError
from umx.files import torch_save_atomic, write_json_atomic
from umx.messages import plural
from umx.model import OpenUnmix
from umx.modeldir import SEPARATOR_JSON, save_target_model
from umx.train.checkpoints import (
    CHECKPOINT_SUFFIX,
    EarlyStopping,
    History,
    _checkpoint_part,
    _cpu_state,
    _json_options,
    _read_checkpoint,
    _separator_config,
    claim_output,
)
from umx.train.config import (
    ARCHITECTURE,
    DEFAULTS,
    is_xumx_run,
    require_train_extra,
    resolve_options,
)
from umx.train.distributed import Distributed, seed_everything
from umx.train.epochs import train_epoch, validate
from umx.train.finetune import fine_tuned_architecture
from umx.train.inputs import cap_excerpts, check_epoch, compute_statistics, make_datasets
from umx.train.plots import CURVE_SUFFIX, plot_history
from umx.train.progress import outlook, resume_hint, summary
from umx.transforms import Spectrogram, bandwidth_to_max_bin
from umx.weights import infer_architecture
from umx.workers import stops_deferred
from umx.zoo import load_separator

logger = logging.getLogger("umx.train")  # the command's name, not this module's
NB_LAYERS = 3
LR_COOLDOWN = 10  # epochs without learning-rate decay after a decay, as in Open-Unmix
VALID_SEGMENT = 30.0  # seconds of a validation track the model sees at once (bounds memory)


def run_training(given: Mapping[str, Any]) -> int:
    """Train one target model (or one X-UMX model of every source) as the options `given` say
    (by field of `umx.train.config.TrainConfig`; the others are its defaults, or a resumed
    checkpoint's). Returns 0.

    Raises:
        UmxError: bad options or data, or an output directory holding another run.
    """
    distributed = Distributed.from_env()
    if not distributed.is_main:
        logging.getLogger("umx").setLevel(logging.WARNING)  # rank 0 speaks for all
    elif given.get("debug"):
        logging.getLogger("umx").setLevel(logging.DEBUG)
    device = resolve_device(given.get("device") or DEFAULTS["device"], distributed.local_rank)
    if distributed.enabled:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        logger.info("training on %d processes (%s)", distributed.world_size, dist.get_backend())
    try:
        trainer_type = Trainer
        if is_xumx_run(given):
            from umx.train.xumx import XumxTrainer  # a Trainer subclass: imported on use

            trainer_type = XumxTrainer
        with ExitStack() as held:
            trainer_type(given, distributed, device, held).run()
        if distributed.enabled:
            dist.barrier()  # no rank tears gloo down while another still talks to it
    except (MemoryError, RuntimeError) as error:
        if not _out_of_memory(error):
            raise
        raise UmxError(
            f"{device} ran out of memory: lower --batch-size, --seq-dur or --hidden-size"
        ) from None
    finally:
        if distributed.enabled:
            dist.destroy_process_group()
    return 0


def _out_of_memory(error: BaseException) -> bool:
    """Whether an error is an allocation failure (torch reports the CPU's as RuntimeError)."""
    text = str(error)
    return (
        isinstance(error, MemoryError | torch.OutOfMemoryError)
        or "can't allocate memory" in text
        or "out of memory" in text
    )


class Trainer:
    """One training run: set-up from options, the epoch loop and the outputs."""

    criterion: Callable[[torch.nn.Module, Tensor, Tensor], Tensor] | None = None
    """The training loss of a batch (see `train_epoch`); None for the magnitude MSE."""

    def __init__(
        self,
        given: Mapping[str, Any],
        distributed: Distributed,
        device: torch.device,
        held: ExitStack,
    ) -> None:
        """Set the run up (datasets, model, optimiser); `held` keeps this target's lock in the
        output folder (`claim_output`, rank 0 only) for the run."""
        self.distributed = distributed
        self.device = device
        self.progress = distributed.is_main and not given.get("quiet")
        self.bars = self.progress and sys.stderr.isatty()  # a log file gets lines, not bars
        require_train_extra()
        resumed = given.get("checkpoint")
        checkpoint = None
        if resumed is not None:
            checkpoint = _read_checkpoint(resumed, given.get("target"), device)
        self.config = config = resolve_options(given, checkpoint)
        self.output = Path(config.output)
        self.target = config.target
        pretrained, model_rate = None, None
        if config.model is not None and checkpoint is None:  # first: the data takes its channels
            pretrained, model_rate = self._pretrained_model(given)
            config = self.config  # with the model's architecture
        self.train_set, self.valid_set = self._make_datasets()
        check_epoch(self.train_set, config.samples_per_track)
        self.sample_rate = self.train_set.sample_rate
        self._check_rates(checkpoint and checkpoint["sample_rate"], model_rate)
        excerpt = round(config.seq_dur * self.sample_rate)
        if excerpt < config.nfft:
            raise UmxError(
                f"--seq-dur {config.seq_dur:g} is {excerpt} samples at {self.sample_rate:g} Hz, "
                f"shorter than one STFT frame of --nfft {config.nfft}: use at least "
                f"{math.ceil(1000 * config.nfft / self.sample_rate) / 1000:g} s"
            )
        cap_excerpts((self.train_set, self.valid_set), config.seq_dur, config.nfft)
        # every rank refuses, or none
        distributed.check_on_main(
            lambda: claim_output(
                held, self.output, self.target, config, self.sample_rate, checkpoint
            )
        )

        seed_everything(config.seed, 0)
        if checkpoint is not None:
            self.model = _checkpoint_part(config, lambda: self._build(checkpoint["model"]))
        else:
            self.model = pretrained or self._new_model()
        self.model.to(device)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer,
            factor=config.lr_decay_gamma,
            patience=config.lr_decay_patience,
            cooldown=LR_COOLDOWN,
        )
        self.stopper = EarlyStopping(config.patience)
        self.history = History()
        self.epoch = 0
        self.best_state = _cpu_state(self.model)
        if checkpoint is not None:
            _checkpoint_part(config, lambda: self._restore(checkpoint, lr_given="lr" in given))
        self.spectrogram = Spectrogram(config.nfft, config.nhop)

    def _check_rates(self, checkpoint_rate: float | None, model_rate: float | None) -> None:
        """Refuse data whose splits differ in rate, or at another rate than the resumed
        checkpoint's or the fine-tuned model's (each None where there is none).

        Raises:
            UmxError: naming both rates and, for a model, what to do.
        """
        config, rate = self.config, self.sample_rate
        if self.valid_set.sample_rate != rate:
            raise UmxError(
                f"the validation data of {config.root} is at {self.valid_set.sample_rate:g} Hz, "
                f"the training data at {rate:g} Hz"
            )
        if checkpoint_rate is not None and checkpoint_rate != rate:
            raise UmxError(
                f"the checkpoint was trained at {checkpoint_rate:g} Hz but the data of "
                f"{config.root} is at {rate:g} Hz"
            )
        if model_rate is not None and model_rate != rate:
            raise UmxError(
                f"{config.model} works at {model_rate:g} Hz, but the data of {config.root} is at "
                f"{rate:g} Hz: fine-tune it on data at {model_rate:g} Hz, or leave out --model "
                f"to train a new model at {rate:g} Hz"
            )

    def _make_datasets(self) -> tuple[Any, Any]:
        """The training and validation datasets (see `make_datasets`)."""
        return make_datasets(self.config)

    def _build(self, state: dict[str, Any]) -> torch.nn.Module:
        """A new model of the architecture of a state dict, with fresh weights.

        Raises:
            ValueError: the state dict is not one of this trainer's models.
        """
        return infer_architecture(state).build()

    def _validate(self, dataset: Subset, segment: int) -> float:
        """This process's share of the validation loss (see `validate`)."""
        return validate(
            self.model,
            dataset,
            self.spectrogram,
            self.device,
            segment=segment,
            distributed=self.distributed,
        )

    def _input_statistics(self) -> tuple[Tensor | None, Tensor | None]:
        """Per-bin mean and scale of the training magnitudes (see `compute_statistics`); None
        with `--debug`."""
        config = self.config
        if config.debug:
            return None, None
        if self.progress and not self.bars:
            nb_items = len(self.train_set.eval_view())
            logger.info("computing the input statistics over %s", plural(nb_items, "training item"))
        return compute_statistics(
            self.train_set,
            config.nfft,
            config.nhop,
            distributed=self.distributed,
            progress=self.bars,
        )

    def _new_model(self) -> OpenUnmix:
        """A model of the options, its input scaling set from the training statistics."""
        return OpenUnmix(**self._new_model_arguments())

    def _new_model_arguments(self) -> dict[str, Any]:
        """The architecture of the options and the input scaling of the training statistics,
        as keyword arguments of a new model (`OpenUnmix`, or X-UMX's `CrossUnmix`)."""
        config = self.config
        mean, scale = self._input_statistics()
        return {
            "nb_bins": config.nfft // 2 + 1,
            "nb_channels": config.nb_channels,
            "hidden_size": config.hidden_size,
            "nb_layers": NB_LAYERS,
            "unidirectional": config.unidirectional,
            "input_mean": mean,
            "input_scale": scale,
            "max_bin": bandwidth_to_max_bin(self.sample_rate, config.nfft, config.bandwidth),
        }

    def _pretrained_model(self, given: Mapping[str, Any]) -> tuple[OpenUnmix, float]:
        """The `--model` target to fine-tune, and the sample rate it works at. The options of
        the model (architecture, STFT, channels) are set from it, before any data is read; those
        `given` on the command line must agree.

        Raises:
            UmxError: the model is not an Open-Unmix one (X-UMX), or of another architecture.
        """
        config = self.config
        given = {key: given[key] for key in ARCHITECTURE if given.get(key) is not None}
        separator = load_separator(config.model, targets=[self.target], niter=0, progress=self.bars)
        if not isinstance(separator.target_models[self.target], OpenUnmix):
            raise UmxError(
                f"--model {config.model} is an X-UMX model: --model fine-tunes an Open-Unmix "
                "target; give an Open-Unmix model, or train X-UMX anew with --architecture xumx"
            )
        model = separator.target_models[self.target]
        found = fine_tuned_architecture(separator, self.target, given, config.model)
        self.config = replace(config, **found)
        logger.info("fine-tuning %s of %s", self.target, config.model)
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model.train(), separator.sample_rate

    def _restore(self, checkpoint: dict[str, Any], lr_given: bool) -> None:
        """Take the state of `checkpoint`, with this run's options (the checkpoint's, and those
        given now over them: see `resolve_options`) over its optimizer's, scheduler's and early
        stopping's; the learning rate only where `lr_given` (--lr given now), as the scheduler
        may have lowered it since.

        Raises:
            ValueError, KeyError, TypeError, RuntimeError: it does not fit this run.
        """
        numbers = (int, float)
        stopping, history = checkpoint["early_stopping"], checkpoint["history"]
        if not (
            isinstance(checkpoint["epoch"], int)
            and checkpoint["epoch"] >= 0
            and isinstance(stopping.get("best"), numbers)
            and isinstance(stopping.get("num_bad_epochs"), int)
            and isinstance(history.get("best_epoch"), int)
            and all(
                isinstance(history.get(key), list)
                and len(history[key]) == checkpoint["epoch"]
                and all(isinstance(value, numbers) for value in history[key])
                for key in ("train_loss", "valid_loss", "lr", "epoch_time")
            )
        ):
            raise ValueError("its epoch, early-stopping state or history is inconsistent")
        if _shapes(self._build(checkpoint["best_model"])) != _shapes(self.model):
            raise ValueError("its best and current models differ in shape")
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.stopper = EarlyStopping(**checkpoint["early_stopping"])
        config = self.config
        self.stopper.patience = config.patience
        self.scheduler.factor = config.lr_decay_gamma
        self.scheduler.patience = config.lr_decay_patience
        for group in self.optimizer.param_groups:
            group["weight_decay"] = config.weight_decay
            if lr_given:
                group["lr"] = config.lr
        self.history = History(**checkpoint["history"])
        self.best_state = checkpoint["best_model"]
        self.epoch = checkpoint["epoch"]
        logger.info("resuming %s after epoch %d", self.config.checkpoint or self.output, self.epoch)

    def run(self) -> None:
        config, distributed = self.config, self.distributed
        if self.stopper.should_stop or self.epoch >= config.epochs:
            logger.info("training already finished after %d epochs", self.epoch)
            if not math.isfinite(self.stopper.best):  # a checkpoint of an older version
                raise UmxError(
                    f"no epoch of {self.output} had a finite validation loss, so there is no "
                    "model to write; train again with a lower --lr"
                )
            if distributed.is_main:  # a run killed while writing its last epoch: complete it
                self._write_outputs()
            return
        sampler = DistributedSampler(
            self.train_set,
            num_replicas=distributed.world_size,
            rank=distributed.rank,
            shuffle=True,
            seed=config.seed,
        )
        loader = DataLoader(
            self.train_set,
            batch_size=config.batch_size,
            sampler=sampler,
            num_workers=config.nb_workers,
            pin_memory=self.device.type == "cuda",
        )
        valid_share = Subset(
            self.valid_set, range(distributed.rank, len(self.valid_set), distributed.world_size)
        )
        model: torch.nn.Module = self.model
        if distributed.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(self.model, device_ids=device_ids)
        segment = round(VALID_SEGMENT * self.sample_rate)
        logger.info(
            summary(
                target=self.target,
                train_set=self.train_set,
                valid_set=self.valid_set,
                device=str(self.device),
                nb_parameters=sum(parameter.numel() for parameter in self.model.parameters()),
                batch_size=config.batch_size * distributed.world_size,
                epochs=config.epochs,
                patience=config.patience,
                output=self.output,
            )
        )
        epochs = tqdm(
            range(self.epoch + 1, config.epochs + 1),
            desc="epochs",
            unit="epoch",
            initial=self.epoch,
            total=config.epochs,
            disable=not self.bars,
            # no time left for --epochs (1000 by default): the postfix says when it may end
            bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
        )
        try:
            self._epochs(model, loader, sampler, valid_share, segment, epochs)
        except BaseException as stop:
            if distributed.is_main and not isinstance(stop, Exception):  # Ctrl-C, SIGTERM...
                epochs.close()
                logger.warning(resume_hint(self.output, self.target, config.device))
            raise
        epochs.close()
        logger.info(
            "best validation loss %.6g in epoch %d; model in %s",
            self.stopper.best,
            self.history.best_epoch,
            self.output,
        )

    def _epochs(
        self,
        model: torch.nn.Module,
        loader: DataLoader,
        sampler: DistributedSampler,
        valid_share: Subset,
        segment: int,
        epochs: tqdm,
    ) -> None:
        """Train, validate and write the outputs epoch by epoch until the last or an early
        stop; `model` is the one trained (DDP-wrapped when distributed)."""
        config, distributed = self.config, self.distributed
        for epoch in epochs:
            started = time.monotonic()
            seed_everything(config.seed, epoch, distributed.rank)
            sampler.set_epoch(epoch)
            train_loss = train_epoch(
                model,
                loader,
                self.spectrogram,
                self.optimizer,
                self.device,
                distributed=distributed,
                progress=self.bars,
                criterion=self.criterion,
            )
            if not math.isfinite(train_loss):
                raise UmxError(
                    f"the training loss is {train_loss} in epoch {epoch}; try a lower --lr"
                )
            valid_loss = self._validate(valid_share, segment)
            if not math.isfinite(valid_loss):  # the epochs before (if any) wrote the best model
                raise UmxError(
                    f"the validation loss is {valid_loss} in epoch {epoch}; try a lower --lr"
                )
            self.scheduler.step(valid_loss)
            best = self.stopper.step(valid_loss)
            if best:
                self.best_state = _cpu_state(self.model)
                self.history.best_epoch = epoch
            seconds = time.monotonic() - started
            self.history.train_loss.append(train_loss)
            self.history.valid_loss.append(valid_loss)
            self.history.lr.append(self.optimizer.param_groups[0]["lr"])
            self.history.epoch_time.append(seconds)
            self.epoch = epoch
            ahead = outlook(epoch, config.epochs, self.stopper, self.history.epoch_time)
            if self.bars:
                epochs.set_postfix_str(
                    f"train {train_loss:.4g}, valid {valid_loss:.4g}{'; ' if ahead else ''}{ahead}"
                )
            elif self.progress:  # a log file: one line per epoch instead of bars
                logger.info(
                    "epoch %d/%d: train loss %.6g, valid loss %.6g%s, %.1f s%s",
                    epoch,
                    config.epochs,
                    train_loss,
                    valid_loss,
                    " (best)" if best else "",
                    seconds,
                    f"; {ahead}" if ahead else "",
                )
            if distributed.is_main:
                with stops_deferred():
                    self._write_outputs()
            if self.stopper.should_stop:
                logger.info("early stopping after epoch %d", epoch)
                break

    def _write_checkpoint(self) -> None:
        """Write `<target>.chkpnt` (atomically): everything a resumed run needs."""
        torch_save_atomic(
            {
                "epoch": self.epoch,
                "args": _json_options(self.config),
                "sample_rate": self.sample_rate,
                "model": _cpu_state(self.model),
                "best_model": self.best_state,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "early_stopping": asdict(self.stopper),
                "history": asdict(self.history),
            },
            self.output / f"{self.target}{CHECKPOINT_SUFFIX}",
        )

    def _metadata(self) -> dict[str, Any]:
        """The run's state and history as JSON values, saved beside the best model."""
        history = self.history
        return {
            "epochs_trained": self.epoch,
            "best_epoch": history.best_epoch,
            "best_loss": self.stopper.best,
            "num_bad_epochs": self.stopper.num_bad_epochs,
            "stopped_early": self.stopper.should_stop,
            "train_loss_history": history.train_loss,
            "valid_loss_history": history.valid_loss,
            "lr_history": history.lr,
            "train_time_history": history.epoch_time,
            "versions": {
                "umx": __version__,
                "torch": str(torch.__version__),
                "python": platform.python_version(),
            },
        }

    def _write_outputs(self) -> None:
        """Write the checkpoint, then the best model, its json, separator.json and the curve.

        The checkpoint goes first, each file atomically: a run killed at any moment leaves a
        directory whose `<target>.chkpnt` holds the latest completed epoch, so that it can
        always be resumed with `--checkpoint` (the other files are written again from it).
        """
        config = self.config
        self._write_checkpoint()
        best = infer_architecture(self.best_state).build()
        best.load_state_dict(self.best_state)
        history = self.history
        save_target_model(
            best,
            self.output,
            self.target,
            sample_rate=self.sample_rate,
            n_fft=config.nfft,
            n_hop=config.nhop,
            args=_json_options(config),
            metadata=self._metadata(),
        )
        write_json_atomic(
            self.output / SEPARATOR_JSON,
            _separator_config(self.output, self.target, config, self.sample_rate),
        )
        plot_history(history, self.output / f"{self.target}{CURVE_SUFFIX}", self.target)


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}
