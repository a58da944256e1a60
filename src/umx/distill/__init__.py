"""`umx distill`: train a student model on a folder of the user's own music, with a teacher
model's stems as the targets (knowledge distillation), so that a small or causal model learns
real music wherever a good teacher exists.

A run has three steps, each resumable:

1. The teacher's pass: a `umx batch` job over the music (its manifest, resuming and locking)
   writes the teacher's stems into `WORK/teacher` as float wav files; or the stems another
   separator made are imported there.
2. The training set: `WORK/data` in the layout of the `aligned` dataset, each track the
   decoded music as the teacher heard it (`mixture.wav`) beside links to the teacher's stems;
   the songs are split into training and validation songs with the seed.
3. The student: one Open-Unmix target per teacher stem, trained with `umx.train` into the
   output model directory, resumed from its checkpoints; a finished target is skipped.

Modules, one job each:

- `umx.distill.run`: `DistillOptions`, a run's typed options, and `run_distillation`.
- `umx.distill.teacher`: the teacher's pass and the training set built from its stems.
- `umx.distill.stems`: a teacher's stems made by another separator (`--teacher-stems`).
- `umx.distill.student`: the settings of a run, training the targets, the provenance file.
- `umx.distill.options`: the `umx distill` command's options, parsed into `DistillOptions`.
- `umx.distill.messages`: the messages of `umx batch` and `umx train` in distill's options.
"""

from typing import TYPE_CHECKING

from umx.lazy import lazy_exports

if TYPE_CHECKING:
    from umx.distill.options import add_distill_arguments, run_distill
    from umx.distill.run import DistillOptions, run_distillation
    from umx.distill.student import PROVENANCE_FILE, train_student
    from umx.distill.teacher import TeacherTrack, build_training_set, teacher_pass

__all__ = [
    "PROVENANCE_FILE",
    "DistillOptions",
    "TeacherTrack",
    "add_distill_arguments",
    "build_training_set",
    "run_distill",
    "run_distillation",
    "teacher_pass",
    "train_student",
]

__getattr__, __dir__ = lazy_exports(
    globals(), ("messages", "options", "run", "stems", "student", "teacher")
)
