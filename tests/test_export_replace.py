"""`umx export --force` over an earlier export: replaced whole or not at all.

On the bundled causal `umxsynth-rt`, two of its targets (fast to export).
"""

import errno
import json
import os
import signal

import numpy as np
import pytest
import torch

from umx.cli import main
from umx.onnx.folder import load_export
from umx.onnx.options import EXPORT_JSON

TARGETS = ["bass", "vocals"]


@pytest.fixture(scope="module")
def mixture():
    """1 s of stereo 44.1 kHz noise and a tone, `(1, nb_channels, nb_timesteps)`."""
    rng = np.random.default_rng(5)
    t = np.arange(44100) / 44100
    audio = 0.3 * np.sin(2 * np.pi * 220.0 * t) + 0.05 * rng.standard_normal((2, t.size))
    return torch.from_numpy(audio.astype(np.float32))[None]


def export(out, *extra):
    """`umx export umxsynth-rt OUT --targets bass vocals -q EXTRA...`; returns the exit code."""
    return main(["export", "umxsynth-rt", str(out), "--targets", *TARGETS, "-q", *extra])


def files(folder):
    """Every file in `folder` by name, with its bytes."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_forced_export_that_fails_part_way_leaves_the_old_one_as_it_was(
    tmp_path, monkeypatch, mixture, capsys
):
    """The disk fills up while the Nth file of the new export is written, for each N: one
    line, and the old int8 export is byte for byte as it was, with no temporary file beside
    it, and separates as before. (Each file had been written in place in turn, the old JSON
    removed first: a folder without its JSON, float graphs beside int8 ones.)"""
    out = tmp_path / "e"
    assert export(out, "--quantize", "int8") == 0
    before = files(out)
    stems = load_export(out).separate(mixture)
    capsys.readouterr()
    fsync = os.fsync
    for failing in range(1, len(before) + 1):
        calls = []

        def full_disk(descriptor, failing=failing, calls=calls):
            calls.append(descriptor)
            if len(calls) == failing:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            fsync(descriptor)

        monkeypatch.setattr(os, "fsync", full_disk)
        assert export(out, "--force") == 1
        monkeypatch.setattr(os, "fsync", fsync)
        assert capsys.readouterr().err == (
            f"umx: error: cannot write the export into {out}: No space left on device; "
            "free some space, or write elsewhere\n"
        )
        assert files(out) == before, failing
        assert torch.equal(load_export(out).separate(mixture), stems)
    assert export(out, "--force") == 0  # and with room, the float32 export replaces it
    assert sorted(files(out)) == sorted(before)
    assert files(out)[EXPORT_JSON] != before[EXPORT_JSON]


def test_a_forced_export_removes_the_graphs_of_the_old_one_it_does_not_have(tmp_path):
    """Only the files the old JSON lists: graphs (`.onnx`) in the folder, never others, even
    where a hand-edited JSON names them."""
    out = tmp_path / "e"
    assert export(out) == 0  # bass and vocals, each with its streaming graph
    (out / "notes.txt").write_text("kept")
    (out / "mine.onnx").write_bytes(b"not listed: kept")
    (tmp_path / "outside.onnx").write_bytes(b"outside the folder: kept")
    drums = ["export", "umxsynth", str(out), "--targets", "drums", "--force", "-q"]
    assert main(drums) == 0  # bidirectional: no streaming graph
    assert sorted(files(out)) == ["drums.onnx", "mine.onnx", "notes.txt", EXPORT_JSON]
    assert load_export(out).targets == ["drums"]

    info = json.loads((out / EXPORT_JSON).read_text())
    info["targets"]["drums"].update(graph="../outside.onnx", stream_graph="notes.txt")
    info["targets"]["bass"] = {"graph": str(out / "mine.onnx"), "stream_graph": EXPORT_JSON}
    (out / EXPORT_JSON).write_text(json.dumps(info))
    assert export(out, "--force") == 0
    assert sorted(files(out)) == sorted(
        ["mine.onnx", "notes.txt", EXPORT_JSON, "drums.onnx"]
        + [f"{t}{s}" for t in TARGETS for s in (".onnx", ".stream.onnx")]
    )
    assert (tmp_path / "outside.onnx").exists()


@pytest.mark.parametrize("force", [(), ("--force",)], ids=["", "force"])
def test_a_folder_where_a_graph_goes_is_named_with_what_to_do(tmp_path, capsys, force):
    """It said "cannot write the export into e3: Is a directory", after writing the graphs
    before it."""
    (tmp_path / "e3" / "vocals.onnx").mkdir(parents=True)
    assert export(tmp_path / "e3", *force) == 1
    assert capsys.readouterr().err == (
        f"umx: error: cannot write the export into {tmp_path / 'e3'}: "
        f"{tmp_path / 'e3' / 'vocals.onnx'} is a folder; move it away, or write elsewhere\n"
    )
    assert [p.name for p in (tmp_path / "e3").iterdir()] == ["vocals.onnx"]


def test_a_pipe_in_place_of_the_old_json_is_replaced_not_read(tmp_path):
    """Reading it, for the graphs it lists, would block for ever."""
    out = tmp_path / "e"
    out.mkdir()
    os.mkfifo(out / EXPORT_JSON)

    class Blocked(BaseException):  # not an OSError, which a read failing would be
        pass

    def blocked(*_):
        raise Blocked

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(60)
    try:
        assert export(out, "--force") == 0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert load_export(out).targets == TARGETS
