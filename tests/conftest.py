"""Fixtures shared by test modules."""

import logging
import signal

import pytest
import torch

from umx.model import OpenUnmix
from umx.separator import Separator

SMALL_TARGETS = ("vocals", "drums", "bass", "other")

# A shell without job control starts a background pytest with Ctrl-C ignored, and the processes
# that tests start would inherit that: restore it, so that the tests' SIGINTs reach them as a
# terminal's Ctrl-C would.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="module")
def small_music_separator():
    """A small 4-target stereo separator (16 kHz, n_fft 512), seeded: masks far from trivial."""
    torch.manual_seed(0)
    models = {}
    for target in SMALL_TARGETS:
        model = OpenUnmix(257, 2, 16, max_bin=200)
        with torch.no_grad():
            model.output_mean.uniform_(0.2, 0.8)
        models[target] = model.freeze()
    return Separator(models, sample_rate=16000, n_fft=512, n_hop=128, nb_channels=2)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    tiny models train fastest so, and a busy machine makes more threads crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def offline_with_an_empty_cache(tmp_path_factory, monkeypatch):
    """No test touches the network or the user's model cache: tests that download set up a
    local server and unset UMX_OFFLINE themselves."""
    monkeypatch.setenv("UMX_OFFLINE", "1")
    monkeypatch.setenv("UMX_CACHE", str(tmp_path_factory.mktemp("umx-cache")))


@pytest.fixture(autouse=True)
def umx_logger_as_it_was():
    """`umx.cli.main` points the umx logger at the stderr of the test that runs it, which pytest
    captures and then closes: each test's changes to the logger are undone after it, so that
    later tests' threads (a module's server) do not log to a closed file."""
    logger = logging.getLogger("umx")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate
