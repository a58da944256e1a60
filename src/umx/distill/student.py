"""The student's half of a distillation: the settings a run is resumed with, the training of
one target per teacher stem, and the provenance file of the model written.

`WORK/distill.json` holds the settings of the run that made the work folder: a later run with
other settings is refused, naming what changed, unless `--force` (the targets are then
trained again from scratch); and the training set each target was trained on, so that one
trained on other songs is not kept or resumed as if trained on these.
`OUTPUT/distillation.json` says where the model comes from: the teacher (name and weights'
SHA-256) and how much music it was distilled on.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from umx import __version__
from umx.distill.messages import distill_words
from umx.distill.teacher import (
    DATA_DIR,
    MIXTURE_FILE,
    TEACHER_DIR,
    TeacherPass,
    TrainingSet,
    foreign_files,
    foreign_refusal,
    read_json,
)
from umx.errors import UmxError, display_path
from umx.files import write_json_atomic

logger = logging.getLogger("umx")

SETTINGS_FILE = "distill.json"
TRAINED_ON = "trained_on"
"""In the settings: the training set (`TrainingSet.sha256`) each target was trained on."""
PROVENANCE_FILE = "distillation.json"
CHECKPOINT_SUFFIX = ".chkpnt"  # umx.train's, named here so that this module imports no torch


def read_settings(work: Path) -> dict[str, Any] | None:
    """The settings of the run that made `work`, or None where there is none.

    Raises:
        UmxError: the file is there but is not a distillation's settings.
    """
    path = work / SETTINGS_FILE
    try:
        settings = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as error:
        raise UmxError(
            f"{display_path(path)} is not readable ({error}); give another --work"
        ) from None
    if not isinstance(settings, dict):
        raise UmxError(
            f"{display_path(path)} is not a distillation's settings; give another --work"
        )
    return settings


def check_settings(work: Path, output: Path, settings: Mapping[str, Any], *, force: bool) -> None:
    """Refuse a run whose settings differ from those `work` was made with, or an output
    folder that holds something else than this distillation's model, unless `force`.

    Raises:
        UmxError: naming the first changes, or the output folder; or a work folder that holds
            files umx did not write (whatever `force`).
    """
    written = (TEACHER_DIR, DATA_DIR, SETTINGS_FILE)
    foreign = [  # but a temporary settings file, which the next write of the settings removes
        path
        for path in foreign_files(work, written)
        if not path.name.startswith(f".{SETTINGS_FILE}.")
    ]
    if foreign:
        raise foreign_refusal(work, foreign)
    stored = read_settings(work)
    if force:
        return
    if stored is not None:
        changes = [
            f"--{key.replace('_', '-')} was {_shown(stored.get(key))}, now {_shown(value)}"
            for key, value in settings.items()
            if key != "output" and stored.get(key) != json.loads(json.dumps(value))
        ]
        if changes:
            raise UmxError(
                f"the distillation in {display_path(work)} was started with other settings "
                f"({'; '.join(changes[:3])}): run it with the same options, give --force to "
                "train the student again from scratch, or another --work"
            )
    ours = stored is not None and stored.get("output") == os.path.abspath(output)
    if output.exists() and not ours and any(output.iterdir()):
        raise UmxError(
            f"the output folder {display_path(output)} already holds files of another run: "
            "choose another --output, or give --force to overwrite its targets"
        )


def _shown(value: object) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def write_settings(work: Path, settings: Mapping[str, Any]) -> None:
    """Record the settings of this run in `work` (atomically), keeping which training set each
    target was trained on (`TRAINED_ON`)."""
    trained_on = _trained_on(read_settings(work))
    write_json_atomic(work / SETTINGS_FILE, {**settings, TRAINED_ON: trained_on})


def _trained_on(settings: Mapping[str, Any] | None) -> dict[str, str]:
    """The training set of each target that a run's `settings` record (`TRAINED_ON`)."""
    trained_on = (settings or {}).get(TRAINED_ON)
    return trained_on if isinstance(trained_on, dict) else {}


def _record_training_set(work: Path, target: str, sha256: str) -> None:
    """Record in `work`'s settings that `target` is trained on the training set `sha256`."""
    settings = read_settings(work) or {}
    trained_on = {**_trained_on(settings), target: sha256}
    write_json_atomic(work / SETTINGS_FILE, {**settings, TRAINED_ON: trained_on})


def _check_training_sets(
    work: Path, output: Path, targets: Sequence[str], data: TrainingSet, training: Mapping
) -> None:
    """Refuse to keep or resume a target trained (in part) on another training set than
    `data`: songs added, removed, decoded or separated again since. Without the check, such a
    target was skipped as trained, and the provenance file described songs it never heard.

    Raises:
        UmxError: naming the first such target and what to do.
    """
    trained_on = _trained_on(read_settings(work))
    for target in targets:
        info = _target_info(output / f"{target}.json")
        resumable = (output / f"{target}{CHECKPOINT_SUFFIX}").is_file()
        if info is None:
            kept = resumable
        else:  # else trained again from scratch anyway
            done = _finished(info, output, target, training["epochs"])
            kept = _made_with(info, training) and (done or resumable)
        if kept and trained_on.get(target, data.sha256) != data.sha256:
            raise UmxError(
                f"{target} in {display_path(output)} was trained on another training set: "
                "songs or the teacher's stems of them were added, removed or changed since; give "
                "--force to train the student again on these, or another --output"
            )


def train_student(
    data: TrainingSet,
    output: Path,
    targets: Sequence[str],
    training: Mapping[str, Any],
    *,
    work: Path,
    force: bool = False,
    device: str | None = None,
    quiet: bool = False,
) -> list[str]:
    """Train one student target per stem with `umx.train.run_training` on the `aligned`
    dataset of `data` (`mixture.wav` in, the teacher's stem out).

    A target whose model finished (its last epoch, or an early stop) is skipped; one with a
    checkpoint in `output` is resumed from it; `force` trains every target again. Either is
    refused where the work folder's settings say the target was trained on another training
    set (`TrainingSet.sha256`), which each target's training records there as it starts. A target's
    files count only where its json records the same `training` options: those of a run with
    other settings (one stopped after `--force` changed them) are trained again from scratch,
    not kept or resumed.

    Args:
        data: the training set.
        output: the student's model directory.
        targets: the targets to train, in order.
        training: options of `umx.train.TrainConfig` for every target (epochs, seed...).
        work: the work folder, whose settings record the training set of each target.
        force: train from scratch, overwriting the targets' files.
        device: where to train (None: auto).
        quiet: warnings only.

    Returns:
        the targets trained in this run (not those skipped).
    """
    from umx.train import run_training

    if not force:
        _check_training_sets(work, output, targets, data, training)
    trained = []
    for target in targets:
        info = _target_info(output / f"{target}.json")
        current = info is not None and _made_with(info, training)
        if not force and current and _finished(info, output, target, training["epochs"]):
            logger.info("%s: trained before, skipped", target)
            continue
        if not force and info is not None and not current:
            logger.info("%s: trained with other settings before, trained again", target)
        given: dict[str, Any] = {
            **training,
            "dataset": "aligned",
            "root": data.root,
            "input_file": MIXTURE_FILE,
            "output_file": f"{target}.wav",
            "target": target,
            "output": output,
            "device": device,
            "quiet": quiet,
        }
        resumable = info is None or current  # a checkpoint without json: written just before
        if not force and resumable and (output / f"{target}{CHECKPOINT_SUFFIX}").is_file():
            given["checkpoint"] = output
            given.pop("model", None)  # a resumed target has its model
        else:
            given["force"] = force or info is not None  # this distillation's stale files
        _record_training_set(work, target, data.sha256)
        with distill_words():  # Ctrl-C: the distillation's resume command, not train's
            run_training(given)
        trained.append(target)
    return trained


def _target_info(path: Path) -> dict[str, Any] | None:
    """The target json `umx.train` wrote, or None where there is none that reads."""
    info = read_json(path)
    return info if isinstance(info, dict) else None


def _made_with(info: Mapping[str, Any], training: Mapping[str, Any]) -> bool:
    """Whether a target json records the training options `training` (as JSON reads them),
    but for `epochs`: a run of fewer epochs is the start of this one, not one of more."""
    args, trained = info.get("args"), info.get("epochs_trained")
    wanted = json.loads(json.dumps(dict(training), default=str))
    return (
        isinstance(args, dict)
        and all(args.get(key) == value for key, value in wanted.items() if key != "epochs")
        and isinstance(trained, int)
        and trained <= training["epochs"]
    )


def _finished(info: Mapping[str, Any], output: Path, target: str, epochs: int) -> bool:
    """Whether a target json says its run ended (by its last epoch or an early stop) and the
    target's weights are there."""
    done = info.get("stopped_early") is True or (
        isinstance(info.get("epochs_trained"), int) and info["epochs_trained"] >= epochs
    )
    return done and (output / f"{target}.pth").is_file()


def write_provenance(
    output: Path, teacher: TeacherPass, data: TrainingSet, targets: Sequence[str]
) -> dict[str, Any]:
    """Write `output/distillation.json`: the teacher and the music the model learnt from.

    Returns:
        what was written.
    """
    provenance = {
        "distilled_from": {**teacher.source, "stems": teacher.targets},
        "targets": list(targets),
        "tracks": len(data.train) + len(data.valid),
        "train_tracks": len(data.train),
        "valid_tracks": len(data.valid),
        "hours": round(data.seconds / 3600, 4),
        "umx": __version__,
    }
    write_json_atomic(output / PROVENANCE_FILE, provenance)
    return provenance
