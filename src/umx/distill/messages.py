"""The messages of `umx batch` and `umx train`, which a distillation drives, said in `umx
distill`'s own options: batch's advice names options distill does not have (`--job`,
`--downmix`, `--retry-failed`, `--outdir`), and train's resume hint resumes one target where
distill prints the command that resumes the whole run."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from umx.batch.run import FAILURES_SUMMARY
from umx.errors import UmxError

BATCH_WORDS = (
    (
        "run it with the same options, or give a new --job",
        "run it with the same --teacher and --niter (--force keeps the teacher's stems), or "
        "give another --work",
    ),
    ("give a new --job", "give another --work"),
    (" (--extensions)", ""),  # distill searches for the default extensions
    ("(use --downmix to average the channels)", "(convert it to stereo, or leave it out)"),
    ("left as it is: --retry-failed separates the input again and replaces it", "left out"),
    (
        "(move it away, or use --force to overwrite; the next run checks again)",
        "(give another --work)",
    ),
    (
        "tell them apart in --filename with {parent} (the input's folder) or {trackext} "
        "(its extension)",
        "rename one of the songs or its folder (the teacher's stems are kept by folder and "
        "song name)",
    ),
)
"""Phrases of `umx batch`'s messages (and `umx.api`'s, which it uses), and what `umx distill`
says instead (each phrase is checked to be in their sources by `tests/test_distill.py`)."""
RESUME_HINTS = (
    "to resume from the last epoch completed: ",
    "no epoch was completed, so nothing can be resumed",
    "stopped; the same command resumes the job",
)
"""The starts of `umx train`'s resume hints (`umx.train.progress.resume_hint`) and `umx batch`'s
(the teacher's pass), left out: the distillation prints the command that resumes it."""
LEFT_OUT = (FAILURES_SUMMARY,)
"""`umx batch`'s messages (as logged, before their arguments) left out: the distillation says
how many songs the teacher could not separate, and how to try them again, in its own words."""


def in_distill_words(text: str) -> str:
    """`text` with the phrases of `BATCH_WORDS` replaced."""
    for phrase, instead in BATCH_WORDS:
        text = text.replace(phrase, instead)
    return text


class _DistillWords(logging.Filter):
    """Rewords the records of `umx batch` (`BATCH_WORDS`) and drops the resume hints of
    `umx train` and `umx batch` (`RESUME_HINTS`) and batch's `LEFT_OUT`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(RESUME_HINTS) or record.msg in LEFT_OUT:
            return False
        reworded = in_distill_words(message)
        if reworded != message:
            record.msg, record.args = reworded, None
        return True


@contextlib.contextmanager
def distill_words() -> Iterator[None]:
    """Within the block, the messages of `umx batch` and `umx train` logged by the handlers of
    the `umx` and root loggers, and an `UmxError` it raises, are said in distill's words."""
    handlers = [*logging.getLogger("umx").handlers, *logging.getLogger().handlers]
    words = _DistillWords()
    for handler in handlers:
        handler.addFilter(words)
    try:
        yield
    except UmxError as error:
        reworded = in_distill_words(str(error))
        if reworded == str(error):
            raise
        raise UmxError(reworded) from None
    finally:
        for handler in handlers:
            handler.removeFilter(words)
