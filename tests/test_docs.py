"""Every ```python block of README.md and docs/*.md runs as written, each on its own.

Each block runs in a fresh interpreter, in an empty folder holding only the repository's
`examples/`, offline (`UMX_OFFLINE=1`: the default model is the bundled umxsynth), so that a
block cannot lean on an earlier one, on the network or on files left by another test. A block
is left out only when the line just above it says why, visibly in the Markdown source:
`<!-- not run: needs MUSDB18 -->`.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"^(?:<!-- not run: (?P<reason>[^\n]+?) -->\n)?```python\n(?P<code>.*?)^```", re.M | re.S
)
BLOCK_TIMEOUT_S = 600


def python_blocks() -> list[tuple[str, str | None, str]]:
    """`(file:line, reason it is not run or None, code)` of every python block, in order."""
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("code"))  # the line of the ``` fence
            found.append((f"{document.name}:{line}", match["reason"], match["code"]))
    return found


BLOCKS = python_blocks()
RUN = [(where, code) for where, reason, code in BLOCKS if reason is None]


def test_blocks_are_found_and_every_skip_gives_its_reason():
    """The extraction sees every python fence (a changed fence style would hide blocks from
    the test), and most blocks run."""
    fences = sum(document.read_text().count("```python\n") for document in DOCUMENTS)
    assert len(BLOCKS) == fences
    skipped = {where: reason for where, reason, _ in BLOCKS if reason is not None}
    assert all(reason.strip() for reason in skipped.values())
    assert len(RUN) >= 6 and len(RUN) > 2 * len(skipped), (len(RUN), skipped)


@pytest.mark.parametrize("code", [pytest.param(code, id=where) for where, code in RUN])
def test_python_block_runs_as_written(code, tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {
        **os.environ,
        "UMX_OFFLINE": "1",
        "UMX_CACHE": str(tmp_path / "cache"),  # an empty cache: nothing but bundled models
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT / "src"),
        "MPLBACKEND": "Agg",
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_the_streaming_example_runs_with_a_one_channel_16_khz_model(tmp_path):
    """docs/streaming.md's example says "or a model trained with --unidirectional": with a
    one-channel model it fed stereo blocks (refused), and with a 16 kHz one it fed the 44.1 kHz
    song as if it were at 16 kHz (wrong stems, no error). It reads the song at the stream's
    rate and channels."""
    import torch

    from umx.model import OpenUnmix
    from umx.modeldir import save_separator
    from umx.separator import Separator

    (code,) = [code for where, code in RUN if "StreamingSeparator(separator)" in code]
    torch.manual_seed(0)
    model = OpenUnmix(257, 1, 16, unidirectional=True)
    with torch.no_grad():
        model.output_mean.uniform_(0.2, 0.8)  # stems that are not silent
    separator = Separator(
        {"vocals": model.freeze()}, sample_rate=16000, n_fft=512, n_hop=128, nb_channels=1
    )
    folder = save_separator(separator, tmp_path / "mono16k")
    assert '"umxsynth-rt"' in code
    code = code.replace('"umxsynth-rt"', repr(str(folder)))
    code += (
        "info = umx.audio.audio_info('examples/procedural-42.flac')\n"
        "assert audio.shape[0] == stems.shape[1] == 1, audio.shape\n"
        "assert abs(audio.shape[-1] - info.nb_frames * 16000 / info.sample_rate) <= 1\n"
    )
    test_python_block_runs_as_written(code, tmp_path)
