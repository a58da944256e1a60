"""umx batch: separate many files as one resumable job, on this machine or a Ray cluster.

Modules, one job each:

- `umx.batch.inputs`: files, folders, glob patterns and list files into the job's inputs.
- `umx.batch.job`: the job directory (settings, inputs, the manifest of `umx.jobs`),
  `--status`.
- `umx.batch.plan`: what a resumed run has left to do, from the job's manifest.
- `umx.batch.work`: what a worker does: load the model once, separate inputs with
  `umx.jobs.run_task`, each result (outputs with their SHA-256) a record.
- `umx.batch.local`: worker processes on this machine.
- `umx.batch.ray_backend`: Ray actors on a cluster (the only module that imports `ray`).
- `umx.batch.run`: a job run from start to end on typed options (`BatchOptions`): inputs,
  model, job directory, workers, progress, summary.
- `umx.batch.options`: the `umx batch` command's options, which build a `BatchOptions`.
"""

from typing import TYPE_CHECKING

from umx.lazy import lazy_exports

if TYPE_CHECKING:
    from umx.batch.inputs import BatchInput, collect_inputs, read_list
    from umx.batch.job import Job, find_job, summarize
    from umx.batch.options import add_batch_arguments, run_batch
    from umx.batch.run import BatchOptions, job_inputs, run_batch_job

__all__ = [
    "BatchInput",
    "BatchOptions",
    "Job",
    "add_batch_arguments",
    "collect_inputs",
    "find_job",
    "job_inputs",
    "read_list",
    "run_batch",
    "run_batch_job",
    "summarize",
]

__getattr__, __dir__ = lazy_exports(globals(), ("inputs", "job", "options", "run"))
