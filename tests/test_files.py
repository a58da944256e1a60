"""umx.files: atomic writes leave the old file or the new one, never a mix; hashes; safe names."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal

import pytest
import torch

from processes import file_size_limit
from umx import files, folders
from umx.audio import write_audio
from umx.errors import UmxError, os_error_line


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    files.write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")

    def write(file):
        file.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        files.write_atomic(path, write)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


@pytest.mark.parametrize("hard_links", [True, False])
def test_write_atomic_without_replace_keeps_a_file_that_appeared_meanwhile(
    tmp_path, monkeypatch, hard_links
):
    """Where overwriting needs consent, a file another process wrote while this one was writing
    is kept: the write fails with FileExistsError named after the file, leaving no temporary."""
    if not hard_links:  # a file system without them (FAT, some network ones)

        def link(*_: object, **__: object) -> None:
            raise PermissionError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(files.os, "link", link)
    path = tmp_path / "a.bin"
    with pytest.raises(FileExistsError) as error:
        files.write_atomic(
            path, lambda file: (file.write(b"mine"), path.write_bytes(b"other")), replace=False
        )
    assert error.value.filename == str(path)
    assert path.read_bytes() == b"other"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    files.write_bytes_atomic(tmp_path / "b.bin", b"new", replace=False)
    assert (tmp_path / "b.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]


def test_json_and_text_are_written_readably(tmp_path):
    files.write_json_atomic(tmp_path / "a.json", {"path": tmp_path, "n": 3})
    assert json.loads((tmp_path / "a.json").read_text()) == {"path": str(tmp_path), "n": 3}
    files.write_text_atomic(tmp_path / "a.txt", "é\n")
    assert (tmp_path / "a.txt").read_bytes() == "é\n".encode()


def test_torch_save_atomic_round_trips(tmp_path):
    torch = pytest.importorskip("torch")
    files.torch_save_atomic({"w": torch.arange(5.0)}, tmp_path / "w.pth")
    assert torch.load(tmp_path / "w.pth")["w"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_sha256_of_a_file_read_in_chunks_matches_its_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "HASH_CHUNK", 7)
    data = bytes(range(256)) * 3
    (tmp_path / "f").write_bytes(data)
    assert files.sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    # The FIPS 180-2 test vector.
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert files.sha256_bytes(b"abc") == expected


def test_staged_folder_replaces_the_old_folder_on_success(tmp_path):
    root = tmp_path / "set"
    root.mkdir()
    (root / "old.txt").write_text("old")
    with folders.staged_folder(root) as stage:
        (stage / "new.txt").write_text("new")
        assert (root / "old.txt").exists()  # untouched until the block ends
    assert [p.name for p in root.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_staged_folder_keeps_the_old_folder_on_failure(tmp_path):
    root = tmp_path / "set"
    root.mkdir()
    (root / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), folders.staged_folder(root) as stage:
        (stage / "new.txt").write_text("new")
        raise KeyboardInterrupt
    assert [p.name for p in root.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_a_full_disk_while_staging_names_the_file_in_the_folder_not_in_the_stage(tmp_path):
    """It named `.set.<token>.partial/train/a.wav`, in a hidden folder already removed."""
    root = tmp_path / "set"
    with (
        pytest.raises(UmxError) as error,
        file_size_limit(4096),
        folders.staged_folder(root) as stage,
    ):
        (stage / "train").mkdir()
        write_audio(stage / "train" / "a.wav", torch.ones(2, 44100) / 2, 44100)
    assert str(error.value).startswith(f"cannot write {root / 'train' / 'a.wav'} (")
    assert list(tmp_path.iterdir()) == []


def test_stages_left_by_a_killed_run_are_removed_by_the_next_one(tmp_path):
    """A process killed outright cannot remove its staging folder; the next `staged_folder` of
    the same root removes it, and the folders of other roots and names it did not make stay.
    While a live process fills one, another run of the same root is refused."""
    root = tmp_path / "set"
    abandoned = tmp_path / ".set.0123abcd.partial"
    live = tmp_path / ".set.89abcdef.partial"
    others = [tmp_path / ".set.mine.partial", tmp_path / ".other.0123abcd.partial"]
    for folder in (abandoned, live, *others):
        folder.mkdir()
        (folder / "track.wav").write_bytes(b"RIFF")
    lock = files.hold_lock(live)  # held as by the process filling it
    try:
        assert folders.abandoned_stages(root) == [abandoned]
        with pytest.raises(UmxError) as error, folders.staged_folder(root):
            pass  # the last of two runs to end would replace the other's root
        assert str(error.value) == (
            f"another run is writing {root} (into {live.name}): wait for it to end, or choose "
            "another folder"
        )
        assert sorted(tmp_path.iterdir()) == sorted([live, *others])  # the abandoned one gone
    finally:
        lock.close()
    with folders.staged_folder(root) as stage:  # once the live run has been killed too
        assert folders.abandoned_stages(root) == []  # its own stage is held
        (stage / "new.txt").write_text("new")
    assert (root / "new.txt").read_text() == "new"
    assert sorted(tmp_path.iterdir()) == sorted([root, *others])


def test_an_old_root_a_killed_run_was_deleting_is_removed_once_the_new_one_is_in_place(tmp_path):
    """A run killed while it deleted the root it replaced leaves the rest of it; the next run
    removes it, but only while the root exists: killed between the two renames, the old root
    is all there is."""
    root, old = tmp_path / "set", tmp_path / ".set.0123abcd.old"
    old.mkdir()
    (old / "track.wav").write_bytes(b"RIFF")
    assert folders.abandoned_stages(root) == []
    root.mkdir()
    assert folders.abandoned_stages(root) == [old]
    with folders.staged_folder(root) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(tmp_path.iterdir()) == [root]


def test_a_run_killed_between_the_two_renames_has_its_old_root_put_back(tmp_path, caplog):
    """It left no root: the one it replaced hidden as `.set.TOKEN.old`, its own complete set
    as `.set.TOKEN.partial`, which the next run then removed, keeping the old one hidden."""
    root = tmp_path / "set"
    old, stage = tmp_path / ".set.0123abcd.old", tmp_path / ".set.0123abcd.partial"
    for folder, text in ((old, "old"), (stage, "new")):
        folder.mkdir()
        (folder / "a.txt").write_text(text)
    with caplog.at_level(logging.WARNING, logger="umx"), folders.staged_folder(root) as new:
        assert (root / "a.txt").read_text() == "old"  # back before the run begins
        assert sorted(tmp_path.iterdir()) == [new, root]
    assert caplog.messages == [
        f"putting back {root}, moved aside by a run killed while replacing it"
    ]
    assert sorted(tmp_path.iterdir()) == [root]


def test_a_stop_during_the_swap_lands_once_the_new_root_is_in_place(tmp_path, monkeypatch):
    """A Ctrl-C or SIGTERM between the two renames left no root (and the next run removed the
    new set): the stop now comes after the swap and the old root's removal."""
    root = tmp_path / "set"
    root.mkdir()
    (root / "a.txt").write_text("old")
    replace = os.replace

    def replace_then_stop(source, target):
        replace(source, target)
        os.kill(os.getpid(), signal.SIGINT)  # Python's handler: KeyboardInterrupt

    monkeypatch.setattr(folders.os, "replace", replace_then_stop)
    with pytest.raises(KeyboardInterrupt), folders.staged_folder(root) as stage:
        (stage / "a.txt").write_text("new")
    assert (root / "a.txt").read_text() == "new"
    assert sorted(tmp_path.iterdir()) == [root]


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("My Song.mp3", "My_Song"),
        ("a/b c.wav", "a_b_c"),
        ("../../x", "song"),
        (".hidden", "hidden"),
        ("a.b.wav", "a.b"),
        ("", "song"),
        ("...", "song"),
        ("x" * 300 + ".wav", "x" * files.MAX_STEM),
    ],
)
def test_safe_stem_keeps_only_safe_characters(name, stem):
    assert files.safe_stem(name) == stem


def test_temporaries_of_writers_killed_outright_are_removed_by_the_next_write(tmp_path):
    """A temporary file is locked while it is written; one whose lock is free was left by a
    writer killed outright, and the next write of the same file removes it."""
    path = tmp_path / "scores.json"
    left, live = tmp_path / ".scores.json.0123abcd.tmp", tmp_path / ".scores.json.89abcdef.tmp"
    others = [tmp_path / ".other.json.0123abcd.tmp", tmp_path / ".scores.json.tmp"]
    for file in (left, live, *others):
        file.write_text("partial")
    lock = files.hold_lock(live, create=False)  # a writer still writing
    held = []

    def write(file):
        (own,) = set(tmp_path.glob(".scores.json.*.tmp")) - {live}
        held.append(files.hold_lock(own, create=False) is None)
        file.write(b"{}")

    try:
        files.write_atomic(path, write)
    finally:
        lock.close()
    assert held == [True]
    assert sorted(tmp_path.iterdir()) == sorted([path, live, *others])
    files.write_text_atomic(path, "{}")
    assert sorted(tmp_path.iterdir()) == sorted([path, *others])


def test_a_write_refused_by_the_file_system_names_the_file_and_leaves_nothing(tmp_path):
    """torch.save turns a failed write into "unexpected pos 704 vs 598": the operating system's
    reason is kept, naming the file written rather than its temporary file."""
    path = tmp_path / "model.pth"
    for write in (
        lambda: files.torch_save_atomic({"weights": torch.zeros(10000)}, path),
        lambda: files.write_bytes_atomic(path, bytes(10000)),
    ):
        with file_size_limit(4096), pytest.raises(OSError) as error:
            write()
        assert (error.value.errno, error.value.filename) == (errno.EFBIG, str(path))
        assert os_error_line(error.value) == f"{path}: File too large"
        assert list(tmp_path.iterdir()) == []
    full = OSError(errno.ENOSPC, "No space left on device", "out/x.wav")
    assert os_error_line(full) == (
        "out/x.wav: No space left on device; free some space, or write elsewhere"
    )
    long = OSError(errno.ENAMETOOLONG, "File name too long", "out/" + "x" * 300)
    assert os_error_line(long) == f"out/{'x' * 300}: File name too long; use a shorter name"
