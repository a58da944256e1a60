"""Datasets and augmentations on small generated folders: shapes, mixtures, splits, errors."""

import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from umx.data.augment import AUGMENTATIONS, Compose, channelswap, forcestereo, gain, register
from umx.data.datasets import (
    AlignedDataset,
    AudioInfo,
    FixedSourcesTrackFolderDataset,
    UnmixDataset,
    VariableSourcesTrackFolderDataset,
)
from umx.data.musdb import MUSDBDataset, musdb_split
from umx.data.sources import SourceFolderDataset
from umx.errors import UmxError
from umx.train.inputs import cut_excerpts

RATE = 8000
FRAMES = 4000  # half a second per file
SEQ = 0.25  # seconds per training excerpt: 2000 frames

needs_ffprobe = pytest.mark.skipif(not shutil.which("ffprobe"), reason="musdb needs ffprobe")


def write(path: Path, audio: np.ndarray, rate: int = RATE) -> np.ndarray:
    """Write `(nb_channels, nb_timesteps)` audio as float wav; returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(os.fsencode(path), audio.T, rate, subtype="FLOAT")
    return audio


def ramp(offset: float, nb_channels: int = 2, frames: int = FRAMES) -> np.ndarray:
    """A file whose every sample says where it is: `offset + t / frames` (channel c adds c)."""
    t = np.arange(frames, dtype=np.float32) / frames
    return np.stack([offset + t + c for c in range(nb_channels)]).astype(np.float32) * 0.1


def trackfolders(root: Path, tracks: int = 3, sources=("vocals", "drums", "bass")) -> None:
    """`<root>/{train,valid}/<track>/<source>.wav`, each source a distinct ramp."""
    for split in ("train", "valid"):
        for i in range(tracks):
            for k, source in enumerate(sources):
                write(root / split / f"t{i}" / f"{source}.wav", ramp(i + 10 * k))


def start_of(target: torch.Tensor, offset: float) -> int:
    """Recover an excerpt's start frame from a `ramp(offset)` excerpt."""
    return round((float(target[0, 0]) / 0.1 - offset) * FRAMES)


# --- files ----------------------------------------------------------------------------------------


def test_audio_info_reads_excerpts_and_zero_pads_past_the_end(tmp_path):
    audio = write(tmp_path / "a.wav", ramp(0))
    info = AudioInfo.read(tmp_path / "a.wav")
    assert (info.sample_rate, info.nb_channels, info.nb_frames) == (RATE, 2, FRAMES)
    excerpt = info.load(FRAMES - 100, 300)
    assert excerpt.shape == (2, 300)
    assert torch.equal(excerpt[:, :100], torch.from_numpy(audio[:, -100:]))
    assert torch.count_nonzero(excerpt[:, 100:]) == 0
    assert torch.equal(info.load(), torch.from_numpy(audio))


def _wav_bytes() -> bytes:
    """A half-second float wav of `ramp(0)`, as bytes."""
    buffer = io.BytesIO()
    soundfile.write(buffer, ramp(0).T, RATE, subtype="FLOAT", format="WAV")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("not audio"), "is not decodable audio"),
        (lambda p: p.write_bytes(_wav_bytes()[:-4000]), "is truncated"),
        (lambda p: os.mkfifo(p), "is a named pipe, not a regular audio file"),
        (lambda p: write(p, np.zeros((3, 100), np.float32)), "3 channels"),
        (lambda p: write(p, np.zeros((1, 0), np.float32)), "contains no audio"),
    ],
)
def test_audio_info_rejects_bad_files_naming_them(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(UmxError, match=message) as error:
        AudioInfo.read(path)
    assert str(path) in str(error.value)


def test_audio_info_refuses_a_huge_declared_length_before_loading(tmp_path):
    # FLAC's STREAMINFO claims 2^36 - 1 samples; trusted, a validation read of the whole file
    # would allocate 512 GiB
    path = tmp_path / "huge.flac"
    soundfile.write(path, ramp(0).T, RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    fields = int.from_bytes(data[18:26], "big")
    data[18:26] = (fields | (2**36 - 1)).to_bytes(8, "big")
    path.write_bytes(bytes(data))
    with pytest.raises(UmxError, match=r"huge\.flac is truncated: .* the file holds 0\.50 s"):
        AudioInfo.read(path)


def test_audio_info_reads_non_utf8_names(tmp_path):
    path = tmp_path / os.fsdecode(b"\xff\xfe.wav")
    audio = write(path, ramp(0))
    info = AudioInfo.read(path)
    assert info.nb_frames == FRAMES
    assert torch.equal(info.load(100, 50), torch.from_numpy(audio[:, 100:150]))


def test_excerpt_length_truncates_like_open_unmix():
    def seq_len(seconds: float) -> int:
        options = {"sample_rate": RATE, "nb_channels": 2, "augment": None}
        return UnmixDataset(seq_duration=seconds, **options).seq_len

    assert seq_len(0.33337) == 2666  # int(2666.96); round would give 2667
    assert seq_len(SEQ) == 2000


# --- track folders --------------------------------------------------------------------------------


def test_trackfolder_fix_training_excerpts_are_sums_of_aligned_sources(tmp_path):
    trackfolders(tmp_path)
    dataset = FixedSourcesTrackFolderDataset(
        tmp_path,
        "train",
        target_file="vocals.wav",
        interferer_files=["drums.wav", "bass.wav"],
        seq_duration=SEQ,
        nb_channels=2,
        samples_per_track=4,
    )
    assert dataset.sample_rate == RATE
    assert len(dataset) == 3 * 4
    torch.manual_seed(0)
    starts = set()
    for index in range(len(dataset)):
        mixture, target = dataset[index]
        assert mixture.shape == target.shape == (2, 2000)
        track = index // 4
        start = start_of(target, track)
        starts.add(start)
        expected_target = ramp(track)[:, start : start + 2000]
        drums, bass = (ramp(track + 10 * k)[:, start : start + 2000] for k in (1, 2))
        torch.testing.assert_close(target, torch.from_numpy(expected_target))
        torch.testing.assert_close(mixture, torch.from_numpy(expected_target + drums + bass))
    assert len(starts) > 1  # excerpts at random positions


def test_trackfolder_fix_random_track_mix_draws_interferers_from_other_tracks(tmp_path):
    trackfolders(tmp_path, tracks=4)
    dataset = FixedSourcesTrackFolderDataset(
        tmp_path,
        "train",
        target_file="vocals.wav",
        interferer_files=["drums.wav"],
        seq_duration=SEQ,
        nb_channels=2,
        samples_per_track=8,
        random_track_mix=True,
    )
    torch.manual_seed(0)
    tracks = set()
    for index in range(len(dataset)):
        mixture, target = dataset[index]
        drums = mixture - target
        tracks.add(round(float(drums[0, 0]) / 0.1 - 10))  # the drums ramp starts at track + 10
        assert start_of(target, index // 8) in range(FRAMES - 2000 + 1)
    assert len(tracks) > 1


def test_validation_items_are_whole_tracks_in_order(tmp_path):
    trackfolders(tmp_path)
    dataset = FixedSourcesTrackFolderDataset(
        tmp_path,
        "valid",
        target_file="vocals.wav",
        interferer_files=["drums.wav", "bass.wav"],
        seq_duration=None,
        nb_channels=2,
    )
    assert len(dataset) == 3
    for track in range(3):
        mixture, target = dataset[track]
        sources = [ramp(track + 10 * k) for k in range(3)]
        torch.testing.assert_close(target, torch.from_numpy(sources[0]))
        torch.testing.assert_close(mixture, torch.from_numpy(sum(sources)))


def test_short_files_are_zero_padded_and_channels_converted(tmp_path):
    for split in ("train",):
        write(tmp_path / split / "t0" / "vocals.wav", ramp(0, nb_channels=1, frames=1000))
        write(tmp_path / split / "t0" / "noise.wav", ramp(5, nb_channels=1, frames=1000))
    dataset = FixedSourcesTrackFolderDataset(
        tmp_path,
        "train",
        target_file="vocals.wav",
        interferer_files=["noise.wav"],
        seq_duration=SEQ,
        nb_channels=2,
    )
    mixture, target = dataset[0]
    assert mixture.shape == (2, 2000)
    expected = torch.from_numpy(ramp(0, nb_channels=1, frames=1000)[0])
    for channel in range(2):  # mono duplicated
        torch.testing.assert_close(target[channel, :1000], expected)
    assert torch.count_nonzero(mixture[:, 1000:]) == 0


def test_eval_view_is_deterministic_and_unaugmented(tmp_path):
    trackfolders(tmp_path)
    dataset = FixedSourcesTrackFolderDataset(
        tmp_path,
        "train",
        target_file="vocals.wav",
        interferer_files=["drums.wav"],
        seq_duration=SEQ,
        nb_channels=2,
        samples_per_track=5,
        augment=Compose(["gain"]),
        random_track_mix=True,
    )
    view = dataset.eval_view()
    assert len(view) == 3 and len(dataset) == 15
    mixture, target = view[1]
    torch.testing.assert_close(target, torch.from_numpy(ramp(1)))
    torch.testing.assert_close(mixture, torch.from_numpy(ramp(1) + ramp(11)))


def test_aligned_pairs_input_and_output_at_the_same_position(tmp_path):
    for i in range(2):
        write(tmp_path / "train" / f"t{i}" / "noisy.wav", ramp(i + 20))
        write(tmp_path / "train" / f"t{i}" / "clean.wav", ramp(i))
    dataset = AlignedDataset(
        tmp_path,
        "train",
        input_file="noisy.wav",
        output_file="clean.wav",
        seq_duration=SEQ,
        nb_channels=2,
        samples_per_track=3,
    )
    assert len(dataset) == 6
    torch.manual_seed(1)
    for index in range(6):
        mixture, target = dataset[index]
        start = start_of(target, index // 3)
        expected = ramp(index // 3 + 20)[:, start : start + 2000]
        torch.testing.assert_close(mixture, torch.from_numpy(expected))


def test_trackfolder_var_mixes_every_source_and_silences_missing_targets(tmp_path):
    write(tmp_path / "valid" / "a" / "vocals.wav", ramp(0))
    write(tmp_path / "valid" / "a" / "guitar.wav", ramp(1))
    write(tmp_path / "valid" / "a" / "piano.wav", ramp(2))
    write(tmp_path / "valid" / "b" / "organ.wav", ramp(3))
    options = {"target_file": "vocals.wav", "seq_duration": None, "nb_channels": 2}
    with pytest.raises(UmxError, match="silence-missing") as error:
        VariableSourcesTrackFolderDataset(tmp_path, "valid", **options)
    assert str(tmp_path / "valid" / "b" / "vocals.wav") in str(error.value)

    dataset = VariableSourcesTrackFolderDataset(tmp_path, "valid", silence_missing=True, **options)
    mixture, target = dataset[0]
    torch.testing.assert_close(target, torch.from_numpy(ramp(0)))
    torch.testing.assert_close(mixture, torch.from_numpy(ramp(0) + ramp(1) + ramp(2)))
    mixture, target = dataset[1]
    assert torch.count_nonzero(target) == 0 and target.shape == (2, FRAMES)
    torch.testing.assert_close(mixture, torch.from_numpy(ramp(3)))


@pytest.mark.parametrize("name", ["mixture.wav", "Mixture.wav"])
def test_trackfolder_var_refuses_a_mixture_file_among_the_sources(tmp_path, name):
    """Every file is a source of the sum, so a mixture file would be mixed in once more."""
    write(tmp_path / "valid" / "a" / "vocals.wav", ramp(0))
    write(tmp_path / "valid" / "a" / "guitar.wav", ramp(1))
    write(tmp_path / "valid" / "a" / name, ramp(0) + ramp(1))
    options = {"target_file": "vocals.wav", "seq_duration": None, "nb_channels": 2}
    with pytest.raises(UmxError, match=re.escape("is a mixture: trackfolder_var sums")) as error:
        VariableSourcesTrackFolderDataset(tmp_path, "valid", **options)
    assert str(error.value).startswith(str(tmp_path / "valid" / "a" / name))
    assert "\n" not in str(error.value)


def test_trackfolder_var_random_interferer_mix_takes_one_tracks_interferers(tmp_path):
    for i in range(3):
        write(tmp_path / "train" / f"t{i}" / "vocals.wav", ramp(i))
        for k in range(i + 1):  # track i has i + 1 interferers, each the ramp 10 + i
            write(tmp_path / "train" / f"t{i}" / f"x{k}.wav", ramp(10 + i))
    dataset = VariableSourcesTrackFolderDataset(
        tmp_path,
        "train",
        target_file="vocals.wav",
        seq_duration=SEQ,
        nb_channels=2,
        samples_per_track=6,
        random_interferer_mix=True,
    )
    torch.manual_seed(0)
    seen = set()
    for index in range(len(dataset)):
        mixture, target = dataset[index]
        rest = (mixture - target)[0, 0] / 0.1  # (i + 1) * (10 + i + t)
        seen.add(min(range(3), key=lambda i: abs(float(rest) / (i + 1) - 10 - i - 0.25)))
    assert len(seen) > 1


def test_sourcefolder_mixes_random_files_and_validates_deterministically(tmp_path):
    for k, name in enumerate(["speech", "noise", "wind"]):
        for i in range(3):
            write(tmp_path / "valid" / name / f"{i}.wav", ramp(10 * k + i, nb_channels=1))
    dataset = SourceFolderDataset(
        tmp_path,
        "valid",
        target_dir="speech",
        interferer_dirs=["noise", "wind"],
        nb_samples=5,
        seq_duration=SEQ,
        nb_channels=1,
        deterministic=True,
    )
    assert len(dataset) == 5 and dataset.sample_rate == RATE
    for index in range(5):
        mixture, target = dataset[index]
        assert mixture.shape == target.shape == (1, 2000)
        again = dataset[index]
        assert torch.equal(mixture, again[0]) and torch.equal(target, again[1])
        assert float(target[0, 0]) < 0.1 * 3  # the target is a speech file (offsets 0..2)
        assert float((mixture - target)[0, 0]) > 0.1 * 30  # noise + wind (offsets >= 10, 20)


def test_excerpts_longer_than_the_longest_file_are_cut_to_it(tmp_path):
    write(tmp_path / "train" / "speech" / "0.wav", ramp(0, frames=FRAMES // 2))
    write(tmp_path / "train" / "noise" / "0.wav", ramp(1))
    files = {"target_dir": "speech", "interferer_dirs": ["noise"], "nb_samples": 2}
    dataset = SourceFolderDataset(tmp_path, "train", seq_duration=3600.0, nb_channels=2, **files)
    assert cut_excerpts(dataset) and dataset.seq_len == FRAMES
    assert dataset[0][0].shape == (2, FRAMES)
    assert not cut_excerpts(dataset)  # already no longer than the longest file
    dataset.seq_duration = 3600.0
    assert cut_excerpts(dataset, minimum=2 * FRAMES) and dataset.seq_len == 2 * FRAMES
    trackfolders(tmp_path / "tracks", tracks=1)
    tracks = fix_dataset(tmp_path / "tracks")
    tracks.seq_duration = 1 / 3  # 2666.67 frames: not cut, frames truncate as before
    assert not cut_excerpts(tracks) and tracks.seq_len == 2666
    tracks.seq_duration = 3 * FRAMES / RATE
    assert cut_excerpts(tracks) and tracks.seq_len == FRAMES
    assert tracks.eval_view().seq_len is None and not cut_excerpts(tracks.eval_view())


def test_sourcefolder_training_draws_vary(tmp_path):
    for name in ("speech", "noise"):
        for i in range(4):
            write(tmp_path / "train" / name / f"{i}.wav", ramp(i))
    dataset = SourceFolderDataset(
        tmp_path,
        "train",
        target_dir="speech",
        interferer_dirs=["noise"],
        nb_samples=8,
        seq_duration=SEQ,
        nb_channels=2,
    )
    torch.manual_seed(0)
    targets = {float(dataset[i][1][0, 0]) for i in range(8)}
    assert len(targets) > 1


# --- MUSDB18 ----------------------------------------------------------------------------------


def musdb_folder(root: Path, names) -> None:
    for i, name in enumerate(names):
        sources = {s: ramp(i + 10 * k) for k, s in enumerate(["vocals", "drums", "bass", "other"])}
        for source, audio in sources.items():
            write(root / "train" / name / f"{source}.wav", audio)
        write(root / "train" / name / "mixture.wav", sum(sources.values()))


def test_musdb_split_rules():
    names = [f"song {i:02d}" for i in range(20)]
    assert musdb_split(names, ["other"]) == (names[:18], names[18:])
    assert musdb_split(names, ["other"], valid_tracks=5) == (names[:15], names[15:])
    official = ["song 03", "song 07"]
    assert musdb_split(names, official)[1] == official
    with pytest.raises(UmxError, match="cannot hold out"):
        musdb_split(names[:1], [])


@needs_ffprobe
def test_musdb_wav_folders_train_on_source_sums_and_validate_on_mixtures(tmp_path):
    musdb_folder(tmp_path, ["a", "b", "c"])
    options = {"is_wav": True, "nb_channels": 2, "valid_tracks": 1}
    train = MUSDBDataset(
        tmp_path, "drums", split="train", seq_duration=SEQ, samples_per_track=2, **options
    )
    valid = MUSDBDataset(tmp_path, "drums", split="valid", seq_duration=None, **options)
    assert (len(train), len(valid), train.sample_rate) == (4, 1, RATE)
    torch.manual_seed(0)
    for index in range(4):
        mixture, target = train[index]
        start = start_of(target, index // 2 + 10)
        sources = sum(ramp(index // 2 + 10 * k)[:, start : start + 2000] for k in range(4))
        torch.testing.assert_close(mixture, torch.from_numpy(sources))
    mixture, target = valid[0]
    torch.testing.assert_close(target, torch.from_numpy(ramp(12)))
    torch.testing.assert_close(mixture, torch.from_numpy(sum(ramp(2 + 10 * k) for k in range(4))))


MUSDB_SETUP = {
    "sources": {source: f"{source}.wav" for source in ("vocals", "drums", "bass", "other")},
    "mixture": "mixture.wav",
    "stem_ids": {"mixture": 0, "drums": 1, "bass": 2, "other": 3, "vocals": 4},
    "targets": {"vocals": {"vocals": 1}},
}
"""A musdb set-up file, less its `validation_tracks`."""


@needs_ffprobe
def test_musdb_takes_the_validation_tracks_of_the_datasets_own_setup(tmp_path):
    musdb_folder(tmp_path, ["a", "b", "c"])
    setup = {**MUSDB_SETUP, "validation_tracks": ["a"]}
    (tmp_path / "setup.yaml").write_text(json.dumps(setup))  # JSON is YAML
    options = {"is_wav": True, "nb_channels": 2}
    valid = MUSDBDataset(tmp_path, split="valid", seq_duration=None, **options)
    train = MUSDBDataset(tmp_path, split="train", seq_duration=SEQ, **options)
    assert [Path(t.name).name for t in valid.tracks] == ["a"]
    assert [Path(t.name).name for t in train.tracks] == ["b", "c"]

    (tmp_path / "setup.yaml").write_text("sources: [")
    with pytest.raises(UmxError, match=re.escape(f"{tmp_path / 'setup.yaml'} is not a valid")):
        MUSDBDataset(tmp_path, split="valid", seq_duration=None, **options)


@needs_ffprobe
def test_musdb_reports_a_missing_source_file(tmp_path):
    musdb_folder(tmp_path, ["a", "b"])
    (tmp_path / "train" / "a" / "bass.wav").unlink()
    with pytest.raises(UmxError, match="does not exist") as error:
        MUSDBDataset(tmp_path, split="train", is_wav=True, seq_duration=SEQ, nb_channels=2)
    assert str(tmp_path / "train" / "a" / "bass.wav") in str(error.value)


@needs_ffprobe
@pytest.mark.parametrize(
    ("empty", "said"),
    [
        (lambda path: write(path, np.zeros((2, 0), np.float32)), "contains no audio"),
        (lambda path: path.write_bytes(b""), "is not decodable audio (the file is empty)"),
    ],
)
@pytest.mark.parametrize("setup", [False, True])
def test_musdb_names_an_empty_mixture_file(tmp_path, empty, said, setup):
    """ffprobe gives an empty mixture.wav no length, which was blamed on the set-up file."""
    musdb_folder(tmp_path, ["a", "b"])
    if setup:
        (tmp_path / "setup.yaml").write_text(json.dumps({**MUSDB_SETUP, "validation_tracks": []}))
    empty(tmp_path / "train" / "b" / "mixture.wav")
    with pytest.raises(UmxError) as error:
        MUSDBDataset(tmp_path, split="train", is_wav=True, seq_duration=SEQ, nb_channels=2)
    assert str(error.value) == f"{tmp_path / 'train' / 'b' / 'mixture.wav'} {said}"


@pytest.mark.parametrize(
    ("folder", "said"),
    [
        ("bass.wav", "is a directory, not a file: MUSDB18-HQ holds <root>/train/<track>/"),
        ("extra", "is a folder inside a track folder, which musdb would take for a track"),
    ],
)
def test_musdb_refuses_a_folder_inside_a_track_folder(tmp_path, folder, said):
    """musdb walks every folder below train/: `a/bass.wav/` was a missing bass.wav/vocals.wav."""
    musdb_folder(tmp_path, ["a", "b"])
    (tmp_path / "train" / "a" / folder).unlink(missing_ok=True)
    (tmp_path / "train" / "a" / folder).mkdir()
    with pytest.raises(UmxError) as error:
        MUSDBDataset(tmp_path, split="train", is_wav=True, seq_duration=SEQ, nb_channels=2)
    assert str(error.value).startswith(f"{tmp_path / 'train' / 'a' / folder} {said}")


@needs_ffprobe
def test_musdb_names_an_empty_or_damaged_stem_file(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "A - B.stem.mp4").write_bytes(b"")
    (tmp_path / "train" / "C - D.stem.mp4").write_bytes(b"\0" * 4096)
    with pytest.raises(UmxError) as error:
        MUSDBDataset(tmp_path, split="train", seq_duration=SEQ, nb_channels=2)
    assert str(error.value) == (
        f"{tmp_path / 'train' / 'A - B.stem.mp4'} is not a readable stem file (ffprobe: Invalid "
        "data found when processing input); replace it, or move it out of the folder"
    )


@pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs ffmpeg to write an mp4")
def test_musdb_refuses_a_stem_file_without_its_sources(tmp_path, monkeypatch, capsys):
    """An mp4 of one audio stream (a song, not a stem file) was a traceback of stempeg's
    (IndexError); `umx train` now refuses it in the line `umx evaluate` says."""
    import subprocess

    from umx.cli import main

    (tmp_path / "train").mkdir()
    write(tmp_path / "song.wav", np.zeros((2, 4410), np.float32))
    for name in ("x", "y"):
        command = ["ffmpeg", "-loglevel", "error", "-i", str(tmp_path / "song.wav"), "-c:a", "aac"]
        subprocess.run([*command, str(tmp_path / "train" / f"{name}.stem.mp4")], check=True)
    said = (
        "train/x.stem.mp4 has 1 audio stream, not the mixture and 4 sources of a MUSDB18 stem "
        "file: replace it, or move it out of the folder"
    )
    with pytest.raises(UmxError) as error:
        MUSDBDataset(tmp_path, split="train", seq_duration=SEQ, nb_channels=2, valid_tracks=1)
    assert str(error.value) == f"{tmp_path}/{said}"
    from umx.evaluate.tracks import check_references, load_tracks

    (track, _) = load_tracks(tmp_path, subset="train")  # umx evaluate's check, the same line
    with pytest.raises(UmxError, match=f"^{re.escape(str(error.value))}$"):
        check_references(track)
    monkeypatch.chdir(tmp_path)
    args = ["train", "--root", ".", "--output", "model", "--epochs", "1", "--hidden-size", "16"]
    capsys.readouterr()
    assert main(args) == 1
    assert capsys.readouterr().err == f"umx: error: {said}\n"


@needs_ffprobe
def test_musdb_stem_files_are_decoded_stream_by_stream(tmp_path):
    stempeg = pytest.importorskip("stempeg")
    rate, n = 44100, 44100
    t = np.arange(n) / rate
    (tmp_path / "train").mkdir()
    for i in range(2):  # streams: mixture, drums, bass, other, vocals; source k at 200 + 100 k Hz
        sources = [
            np.repeat(0.1 * np.sin(2 * np.pi * (200 + 100 * k) * t)[:, None], 2, 1)
            for k in range(1, 5)
        ]
        stems = np.stack([sum(sources), *sources]).astype(np.float32)
        writer = stempeg.StreamsWriter(codec="aac", bitrate=128000)
        stempeg.write_stems(
            str(tmp_path / "train" / f"song{i}.stem.mp4"), stems, sample_rate=rate, writer=writer
        )
    options = {"nb_channels": 2, "valid_tracks": 1}
    train = MUSDBDataset(tmp_path, "bass", split="train", seq_duration=0.5, **options)
    valid = MUSDBDataset(tmp_path, "bass", split="valid", seq_duration=None, **options)
    assert (len(train), len(valid), train.sample_rate) == (64, 1, rate)

    def peak(audio):
        return float(np.argmax(np.abs(np.fft.rfft(audio[0].numpy())))) * rate / audio.shape[1]

    mixture, target = train[0]
    assert mixture.shape == target.shape == (2, n // 2)
    assert peak(target) == pytest.approx(400, abs=5)  # bass is stream 2
    mixture, target = valid[0]
    assert mixture.shape == target.shape == (2, n)
    residual = mixture - target  # the mixture stream holds all four sources
    assert float(residual.square().mean()) > 0.5 * float(target.square().mean())


# --- bad folders ----------------------------------------------------------------------------------


def fix_dataset(root: Path, split: str = "train") -> FixedSourcesTrackFolderDataset:
    return FixedSourcesTrackFolderDataset(
        root,
        split,
        target_file="vocals.wav",
        interferer_files=["drums.wav"],
        seq_duration=SEQ,
        nb_channels=2,
    )


def test_bad_folders_are_errors_naming_the_path(tmp_path):
    def fails(message, root=tmp_path, split="train"):
        with pytest.raises(UmxError, match=re.escape(message)):
            fix_dataset(root, split)

    fails(f"{tmp_path / 'nowhere'} does not exist", root=tmp_path / "nowhere")
    (tmp_path / "train").mkdir()
    fails(f"{tmp_path / 'train'} holds no track folders")
    fails(f"{tmp_path / 'valid'} does not exist", split="valid")
    write(tmp_path / "train" / "t" / "vocals.wav", ramp(0))
    fails(f"{tmp_path / 'train' / 't' / 'drums.wav'} does not exist")


def test_a_folder_of_songs_is_told_umx_distill(tmp_path):
    """Songs without stems are no training set of `umx train`: `umx distill` trains on them."""
    hint = "; to train on songs without stems: umx distill (docs/distillation.md)"
    write(tmp_path / "song.wav", ramp(0))
    with pytest.raises(UmxError, match=re.escape(f"{tmp_path / 'train'} does not exist: ")) as e:
        fix_dataset(tmp_path)
    assert str(e.value).endswith(hint)
    write(tmp_path / "train" / "song.wav", ramp(0))
    with pytest.raises(UmxError, match="holds no track folders: ") as e:
        fix_dataset(tmp_path)
    assert str(e.value).endswith(hint)
    (tmp_path / "song.wav").unlink()
    (tmp_path / "train" / "song.wav").unlink()
    with pytest.raises(UmxError, match="holds no track folders: ") as e:
        fix_dataset(tmp_path)  # no songs: no hint
    assert not str(e.value).endswith(hint)


@pytest.mark.parametrize(
    ("drums", "rate", "message"),
    [
        (ramp(1, frames=FRAMES - 1), RATE, "frames long"),
        (ramp(1), RATE * 2, "sample rate"),
        (ramp(1, nb_channels=1), RATE, "channels"),
    ],
)
def test_sources_of_a_track_must_match(tmp_path, drums, rate, message):
    write(tmp_path / "train" / "t" / "vocals.wav", ramp(0))
    write(tmp_path / "train" / "t" / "drums.wav", drums, rate)
    with pytest.raises(UmxError, match=message) as error:
        fix_dataset(tmp_path)
    assert str(tmp_path / "train" / "t" / "drums.wav") in str(error.value)


def _aligned(root: Path, **files) -> AlignedDataset:
    return AlignedDataset(root, "train", seq_duration=SEQ, nb_channels=2, **files)


def _fixed(root: Path, **files) -> FixedSourcesTrackFolderDataset:
    return FixedSourcesTrackFolderDataset(root, "train", seq_duration=SEQ, nb_channels=2, **files)


def _var(root: Path, **files) -> VariableSourcesTrackFolderDataset:
    return VariableSourcesTrackFolderDataset(
        root, "train", seq_duration=SEQ, nb_channels=2, **files
    )


def _sources(root: Path, **files) -> SourceFolderDataset:
    return SourceFolderDataset(
        root, "train", nb_samples=1, seq_duration=SEQ, nb_channels=2, **files
    )


@pytest.mark.parametrize(
    ("make", "files", "message"),
    [
        (_aligned, {"input_file": "vocals.wav", "output_file": "{root}/train/t0/drums.wav"},
         "--output-file takes the name of a file inside each track folder, not '{root}/train"),
        (_aligned, {"input_file": "vocals.wav", "output_file": "../t1/drums.wav"},
         "--output-file takes the name of a file inside each track folder, not '../t1/drums.wav'"),
        (_aligned, {"input_file": "vocals.wav", "output_file": "vocals.wav"},
         "--output-file vocals.wav is also the --input-file: they must name different files"),
        (_fixed, {"target_file": "vocals.wav", "interferer_files": ["drums.wav", "vocals.wav"]},
         "--interferer-files vocals.wav is also the --target-file: they must name different"),
        (_fixed, {"target_file": "vocals.wav", "interferer_files": ["drums.wav", "drums.wav"]},
         "--interferer-files drums.wav is given twice: name each file once"),
        (_fixed, {"target_file": "vocals.wav", "interferer_files": ["../t1/drums.wav"]},
         "--interferer-files takes the name of a file"),
        (_var, {"target_file": "../t1/vocals.wav"}, "--target-file takes the name of a file"),
        (_sources, {"target_dir": "t0", "interferer_dirs": ["t0"]},
         "--interferer-dirs t0 is also the --target-dir: they must name different folders"),
        (_sources, {"target_dir": "t0", "interferer_dirs": ["../train/t1"]},
         "--interferer-dirs takes the name of a folder inside train/ and valid/"),
    ],
)  # fmt: skip
def test_sources_are_plain_names_of_different_files(tmp_path, make, files, message):
    """A path would pair a track's stem with another track's, in every track, and a name given
    twice a source with itself: wrong data, silently, unless refused."""
    trackfolders(tmp_path, tracks=2, sources=("vocals", "drums"))
    files = {
        key: [v.format(root=tmp_path) for v in value]
        if isinstance(value, list)
        else value.format(root=tmp_path)
        for key, value in files.items()
    }
    with pytest.raises(UmxError, match=re.escape(message.format(root=tmp_path))):
        make(tmp_path, **files)


# --- augmentations --------------------------------------------------------------------------------


def test_gain_scales_all_channels_by_one_factor_in_range():
    torch.manual_seed(0)
    audio = torch.rand(2, 100) + 0.5
    factors = []
    for _ in range(200):
        ratio = gain(audio) / audio
        assert torch.allclose(ratio, ratio[0, 0].expand_as(ratio))
        factors.append(float(ratio[0, 0]))
    assert 0.25 <= min(factors) < 0.35 and 1.15 < max(factors) < 1.25


def test_channelswap_swaps_stereo_about_half_the_time_and_leaves_mono():
    torch.manual_seed(0)
    audio = torch.stack([torch.zeros(10), torch.ones(10)])
    swapped = sum(bool(torch.equal(channelswap(audio), audio.flip(0))) for _ in range(400))
    assert 150 < swapped < 250
    mono = torch.rand(1, 10)
    assert torch.equal(channelswap(mono), mono)


def test_forcestereo_duplicates_mono_and_drops_extra_channels():
    mono = torch.rand(1, 10)
    assert torch.equal(forcestereo(mono), mono.repeat(2, 1))
    many = torch.rand(3, 10)
    assert torch.equal(forcestereo(many), many[:2])


def test_registry_composes_by_name_and_rejects_unknown_names():
    @register("negate")
    def negate(audio):
        return -audio

    try:
        audio = torch.rand(1, 10)
        assert torch.equal(Compose(["negate", "forcestereo"])(audio), -audio.repeat(2, 1))
        with pytest.raises(ValueError, match="already registered"):
            register("negate")(negate)
    finally:
        del AUGMENTATIONS["negate"]
    with pytest.raises(UmxError, match=r"unknown augmentation 'negate'.*gain, channelswap"):
        Compose(["negate"])
