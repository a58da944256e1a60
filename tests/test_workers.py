"""Worker processes and stop signals (`umx.workers`)."""

import multiprocessing
import signal

from umx.workers import sigint_held_for_children


def _report_mask(conn) -> None:
    conn.send(signal.pthread_sigmask(signal.SIG_BLOCK, set()))


def test_a_process_started_with_sigint_held_starts_with_it_held():
    """A `spawn` worker starts with SIGINT blocked (a Ctrl-C while it imports would print a
    traceback), though starting multiprocessing's resource tracker unblocks it; the driver's
    own mask is as it was afterwards."""
    context = multiprocessing.get_context("spawn")
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    receiver, sender = context.Pipe(duplex=False)
    with sigint_held_for_children():
        process = context.Process(target=_report_mask, args=(sender,))
        process.start()
    sender.close()
    assert signal.SIGINT in receiver.recv()
    process.join(60)
    assert process.exitcode == 0
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before
