"""The `umx` command's entry point: it imports the command line (`umx.cli`, a tenth of a second
of imports) and runs it. Ctrl-C during those imports ends the command as Ctrl-C does later,
with one line and the status 130, instead of Python's traceback from inside an import."""

from __future__ import annotations

import signal
import sys


def main() -> int:
    """Run the `umx` command with `sys.argv`; returns its exit status."""
    try:
        from umx.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("umx: interrupted\n")
        return 128 + signal.SIGINT
    return run()
