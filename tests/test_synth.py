"""Synthetic multitrack music: MIDI files, the procedural generator and `umx synth` rendering.

Rendering needs the Debian packages fluidsynth and timgm6mb-soundfont (CI installs them).
"""

import argparse
import json
import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import musdb
import numpy as np
import pytest
import soundfile as sf

import umx.synth.dataset
from processes import BOUND_S, children, read_only_folder, running, wait_for
from umx.defaults import SOUNDFONT_PACKAGES, SOURCES
from umx.errors import UmxError
from umx.folders import abandoned_stages
from umx.synth.dataset import render_example
from umx.synth.gm import analyse, split_stems, valid_starts
from umx.synth.midi import (
    NOTE_ON,
    PROGRAM_CHANGE,
    Event,
    Song,
    TempoMap,
    encode_midi,
    excerpt,
    note,
    parse_midi,
    read_midi,
    scale_tempo,
    tempo_event,
    transpose,
)
from umx.synth.options import add_synth_arguments, run_synth, synth_options
from umx.synth.plan import SongRef, plan_tracks
from umx.synth.procedural import generate_song
from umx.synth.render import check_fluidsynth, check_soundfont
from umx.synth.run import SynthOptions, make_dataset

SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
needs_fluidsynth = pytest.mark.skipif(
    not (shutil.which("fluidsynth") and SOUNDFONT.is_file()) and not os.environ.get("CI"),
    reason="needs the Debian packages fluidsynth and timgm6mb-soundfont",
)


def other_soundfont(path: Path) -> Path:
    """Writes to `path` a soundfont with the instruments of SOUNDFONT under another name: a
    byte-identical copy is refused as a test soundfont."""
    data = SOUNDFONT.read_bytes()
    name = data.index(b"INAM") + 8  # the INFO chunk's name: "TimGM6mb1.sf2"
    path.write_bytes(data[:name] + b"X" + data[name + 1 :])
    return path


def synth(*argv: object) -> int:
    """Runs `umx synth` with these arguments, as the CLI does."""
    parser = argparse.ArgumentParser()
    add_synth_arguments(parser)
    return run_synth(parser.parse_args([str(arg) for arg in argv]))


def gm_song(seconds: int = 8, bass_program: int = 33) -> Song:
    """A General MIDI song at 120 bpm without a voice program.

    Channel 10 plays drums, channel 2 a bass line on ``bass_program``, channel 1 a high
    monophonic piano melody and channel 3 low string chords.
    """
    events = [tempo_event(0, 500_000)]
    for channel, program in ((0, 0), (1, bass_program), (2, 48)):
        events.append(Event(0, PROGRAM_CHANGE | channel, bytes((program,))))
    for beat in range(2 * seconds):
        tick = beat * 480
        events += note(tick, 9, 36 if beat % 2 else 38, 100, 120)
        events += note(tick, 1, 36 + beat % 3, 90, 400)
        events += note(tick, 0, 72 + beat % 5, 90, 400)
        if beat % 2 == 0:
            for key in (55, 60, 64):
                events += note(tick, 2, key, 70, 900)
    events.sort(key=lambda event: event.tick)
    return Song(480, events, end_tick=2 * seconds * 480)


def note_channels(song: Song) -> set[int]:
    return {event.channel for event in song.events if event.is_note_on}


# --- MIDI files -----------------------------------------------------------------------------------


def test_parse_midi_known_file():
    """Format 1, two tracks, running status, a note-off as note-on with velocity 0."""
    conductor = bytes.fromhex("00FF510307A12060FF51030F424000FF2F00")
    part = bytes.fromhex("00C00500903C64603C00004064814080400000FF2F00")
    data = struct.pack(">4sIHHH", b"MThd", 6, 1, 2, 96)
    for track in (conductor, part):
        data += struct.pack(">4sI", b"MTrk", len(track)) + track
    song = parse_midi(data)
    assert song.ticks_per_beat == 96
    assert song.end_tick == 288
    assert [(event.tick, event.status, event.data) for event in song.events] == [
        (0, 0xFF, bytes.fromhex("510307A120")),
        (0, 0xC0, bytes((5,))),
        (0, 0x90, bytes((60, 100))),
        (96, 0xFF, bytes.fromhex("51030F4240")),
        (96, 0x90, bytes((60, 0))),
        (96, 0x90, bytes((64, 100))),
        (288, 0x80, bytes((64, 0))),
    ]
    assert song.events[4].is_note_off and not song.events[4].is_note_on
    tempo_map = TempoMap(song)
    assert tempo_map.seconds(96) == pytest.approx(0.5)
    assert tempo_map.seconds(288) == pytest.approx(2.5)
    assert tempo_map.tick(2.5) == 288
    assert parse_midi(encode_midi(song)).events == song.events


def test_read_midi_errors_name_the_file(tmp_path):
    truncated = tmp_path / "truncated.mid"
    truncated.write_bytes(encode_midi(gm_song())[:200])
    text = tmp_path / "text.mid"
    text.write_text("not a MIDI file")
    for path in (truncated, text, tmp_path / "missing.mid"):
        with pytest.raises(UmxError, match=path.name):
            read_midi(path)


def test_a_data_byte_above_127_is_refused_not_written_as_a_status():
    """Written back for fluidsynth, 0x99 would start drum notes in whatever stem held it."""
    header = bytes.fromhex("4D546864 00000006 0000 0001 01E0")
    track = bytes.fromhex("00 90 3C 64  60 80 3C 00  00 FF 2F 00")
    assert len(parse_midi(header + b"MTrk" + struct.pack(">I", len(track)) + track).events) == 2
    corrupt = track.replace(bytes.fromhex("3C 64"), bytes.fromhex("99 64"))
    with pytest.raises(ValueError, match="a data byte above 127 at byte 2 of a track"):
        parse_midi(header + b"MTrk" + struct.pack(">I", len(corrupt)) + corrupt)


def test_a_file_cut_between_events_is_refused_not_read_as_a_shorter_song(tmp_path):
    """Cut between two events, the track chunk declares more bytes than the file holds: it was
    read as a song of half the length, and rendered without a warning."""
    song = generate_song(0, 10)
    half = replace(song, events=song.events[: len(song.events) // 2])
    cut = len(encode_midi(replace(half, end_tick=half.events[-1].tick))) - 4  # less end-of-track
    path = tmp_path / "truncated.mid"
    path.write_bytes(encode_midi(song)[:cut])
    declared = len(encode_midi(song)) - 22  # less the header and the track's chunk header
    with pytest.raises(UmxError) as error:
        read_midi(path)
    assert str(error.value) == (
        f"{path} is not a readable MIDI file (truncated: its track 1 declares {declared:,} "
        f"bytes, the file holds {cut - 22:,})"
    )
    conductor = bytes.fromhex("00FF510307A12060FF51030F424000FF2F00")
    part = bytes.fromhex("00C00500903C64603C00004064814080400000FF2F00")
    data = struct.pack(">4sIHHH", b"MThd", 6, 1, 2, 96)
    for track in (conductor, part):
        data += struct.pack(">4sI", b"MTrk", len(track)) + track
    with pytest.raises(ValueError) as cut_in_track_2:
        parse_midi(data[: len(data) - len(part) + 3])  # the program change alone
    assert str(cut_in_track_2.value) == "truncated: its track 2 declares 22 bytes, the file holds 3"


def test_a_track_that_ends_before_the_length_it_declares_is_read():
    """Only its declared length is wrong: its end-of-track event is within the file."""
    data = encode_midi(gm_song())
    longer = data[:18] + struct.pack(">I", len(data) - 22 + 100) + data[22:]
    assert parse_midi(longer) == parse_midi(data)


def test_excerpt_keeps_set_up_and_drops_earlier_notes():
    events = [Event(0, PROGRAM_CHANGE, bytes((40,))), Event(100, 0xB0, bytes((7, 80)))]
    events += [*note(0, 0, 60, 90, 480), *note(960, 0, 62, 90, 480)]
    song = Song(480, sorted(events, key=lambda event: event.tick), end_tick=1920)
    cut = excerpt(song, 500, 1500)
    assert cut.end_tick == 1000
    assert cut.events == [
        Event(0, PROGRAM_CHANGE, bytes((40,))),
        Event(0, 0xB0, bytes((7, 80))),
        Event(460, NOTE_ON, bytes((62, 90))),
        Event(940, 0x80, bytes((62, 0))),
    ]


def test_transpose_and_scale_tempo():
    song = Song(480, [*note(0, 0, 126, 90, 10), *note(0, 0, 60, 90, 10), *note(0, 9, 36, 90, 10)])
    moved = transpose(song, 2, keep_channels=frozenset({9}))
    assert [event.data[0] for event in moved.events] == [62, 62, 36, 36]  # 128 is dropped
    faster = scale_tempo(Song(480, [tempo_event(480, 600_000)], end_tick=960), 2.0)
    assert TempoMap(faster).seconds(960) == pytest.approx((0.5 + 0.6) / 2)


# --- stems ----------------------------------------------------------------------------------------


def test_analyse_revoices_the_lead_and_the_bass_line():
    analysis = analyse(gm_song())
    assert analysis.revoiced == {0: "vocals"}
    assert analysis.activity.shape == (4, 9)
    assert analysis.activity[:, :8].all()
    without_bass = analyse(gm_song(bass_program=0))
    assert without_bass.revoiced == {0: "vocals", 1: "bass"}


def test_analyse_refuses_a_song_without_drums():
    song = gm_song()
    song.events = [event for event in song.events if event.channel != 9]
    with pytest.raises(UmxError, match="no drums part"):
        analyse(song)


def test_split_stems_gives_each_stem_its_notes():
    song = gm_song()
    stems = split_stems(song, {0: 53})
    assert {stem: note_channels(part) for stem, part in stems.items()} == {
        "vocals": {0},
        "drums": {9},
        "bass": {1},
        "other": {2},
    }
    nb_notes = sum(event.is_note_on for event in song.events)
    assert sum(event.is_note_on for part in stems.values() for event in part.events) == nb_notes
    programs = [(e.channel, e.data[0]) for e in stems["vocals"].events if e.kind == PROGRAM_CHANGE]
    assert programs == [(1, 33), (2, 48), (0, 53)]  # channel 0's piano replaced by a voice


def test_valid_starts():
    activity = np.ones((4, 6), dtype=bool)
    activity[0] = [1, 0, 0, 0, 1, 1]
    assert valid_starts(activity, 2.0).tolist() == [0, 3, 4]
    assert valid_starts(activity, 7.0).tolist() == []


# --- procedural songs -----------------------------------------------------------------------------


def test_procedural_songs_are_deterministic_per_seed():
    songs = [encode_midi(generate_song(seed, 30)) for seed in range(4)]
    assert encode_midi(generate_song(2, 30)) == songs[2]
    assert len(set(songs)) == 4
    song = generate_song(1, 30)
    assert TempoMap(song).seconds(song.end_tick) >= 30
    analysis = analyse(song)
    assert analysis.revoiced == {}
    assert analysis.activity[:, 2:29].mean() > 0.9


# --- planning -------------------------------------------------------------------------------------


def test_plan_tracks_splits_by_song_and_soundfont(tmp_path):
    path = tmp_path / "song.mid"
    path.write_bytes(encode_midi(gm_song(12)))
    songs = [SongRef(f"song{index}", path=str(path)) for index in range(10)]
    fonts = {
        "train": [Path("a.sf2"), Path("b.sf2")],
        "valid": [Path("a.sf2")],
        "test": [Path("c.sf2")],
    }
    plans = plan_tracks(songs, fonts, seed=1, duration=4, excerpts=3, test_fraction=0.2)
    assert len(plans) == 30
    split_of = {}
    for plan in plans:
        assert split_of.setdefault(plan.song.name, plan.split) == plan.split
        assert Path(plan.soundfont) in fonts[plan.split]
    assert sorted(split_of.values()).count("test") == 2
    assert sorted(split_of.values()).count("valid") == 1
    assert {plan.soundfont for plan in plans if plan.split == "train"} == {"a.sf2", "b.sf2"}
    again = plan_tracks(songs, fonts, seed=1, duration=4, excerpts=3, test_fraction=0.2)
    assert again == plans
    other_seed = plan_tracks(songs, fonts, seed=2, duration=4, excerpts=3, test_fraction=0.2)
    assert [plan.start for plan in other_seed] != [plan.start for plan in plans]


def test_plan_tracks_keeps_held_out_songs_in_the_test_split(tmp_path):
    """MIDI songs an earlier dataset tests on go to the test split whatever the seed, counting
    towards its share; a procedural song of such a name is this seed's own song, left alone."""
    path = tmp_path / "song.mid"
    path.write_bytes(encode_midi(gm_song(12)))
    songs = [SongRef(f"song{index}", path=str(path)) for index in range(10)]
    songs.append(SongRef("procedural-00000", seed=5))
    fonts = {"train": [Path("a.sf2")], "valid": [Path("a.sf2")], "test": [Path("c.sf2")]}
    args = {"seed": 1, "duration": 4, "test_fraction": 0.2, "valid_fraction": 0.1}

    def splits(**extra: object) -> dict[str, str]:
        return {plan.song.name: plan.split for plan in plan_tracks(songs, fonts, **args, **extra)}

    def counts(split_of: dict[str, str]) -> list[int]:
        midi = [split for name, split in split_of.items() if name.startswith("song")]
        return [midi.count(split) for split in ("test", "valid", "train")]

    plain = splits()
    trained = sorted(name for name, split in plain.items() if split != "test" and "song" in name)
    trained = trained[:3]
    assert counts(plain) == [2, 1, 7] and plain["procedural-00000"] == "train"
    held = splits(held_out=frozenset([*trained, "procedural-00000", "absent"]))
    assert [held[name] for name in trained] == ["test"] * 3
    assert counts(held) == [3, 1, 6]  # more held-out songs than the share: the split grows
    assert held["procedural-00000"] == "train"
    one = splits(held_out=frozenset(trained[:1]))
    assert one[trained[0]] == "test" and counts(one) == [2, 1, 7]
    assert splits(held_out=frozenset(["absent"])) == plain


def test_plan_tracks_refuses_a_test_soundfont_used_for_training(tmp_path):
    fonts = {"train": [Path("a.sf2")], "valid": [Path("a.sf2")], "test": [Path("a.sf2")]}
    with pytest.raises(UmxError, match=r"a\.sf2 is used for both training and testing"):
        plan_tracks([SongRef("x", seed=1)], fonts, seed=0)


@needs_fluidsynth
def test_a_copy_of_a_training_soundfont_is_refused_for_testing(tmp_path):
    """Paths alone were compared: the test split was rendered with the training instruments."""
    copy = shutil.copy(SOUNDFONT, tmp_path / "held-out.sf2")
    args = ["--root", tmp_path / "data", "--procedural", 2, "--test-fraction", 0.5]
    with pytest.raises(UmxError) as error:
        test = ["--test-soundfont", other_soundfont(tmp_path / "other.sf2"), copy]
        synth(*args, "--soundfont", SOUNDFONT, *test)
    assert str(error.value) == (
        f"the test soundfont {copy} is a copy of the training soundfont {SOUNDFONT}: give the "
        "test split another soundfont"
    )
    assert not (tmp_path / "data").exists()


def test_plan_tracks_skips_bad_midi_with_a_warning(tmp_path, caplog):
    broken = tmp_path / "broken.mid"
    broken.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01")
    no_drums = gm_song()
    no_drums.events = [event for event in no_drums.events if event.channel != 9]
    piano = tmp_path / "piano.mid"
    piano.write_bytes(encode_midi(no_drums))
    good = tmp_path / "good.mid"
    good.write_bytes(encode_midi(gm_song()))
    fonts = {split: [SOUNDFONT] for split in ("train", "valid")} | {"test": []}
    songs = [SongRef(path.stem, path=str(path)) for path in (broken, piano, good)]
    with caplog.at_level(logging.WARNING, logger="umx.synth.plan"):
        plans = plan_tracks(songs, fonts, seed=0, duration=3, test_fraction=0, valid_fraction=0)
    assert [plan.name for plan in plans] == ["good-00"]
    assert f"{broken} is not a readable MIDI file" in caplog.text
    assert f"skipping {piano}: it has no drums part" in caplog.text
    with pytest.raises(UmxError, match="none of the 2 songs can be rendered"):
        plan_tracks(songs[:2], fonts, seed=0, test_fraction=0, valid_fraction=0)


def test_a_song_lacking_tracks_its_header_declares_is_named_in_a_warning(tmp_path, caplog):
    """Cut between two tracks, a file reads as a song without the parts that were cut."""
    data = encode_midi(gm_song())
    assert parse_midi(data).missing_tracks == 0
    cut = tmp_path / "cut.mid"
    cut.write_bytes(data[:8] + struct.pack(">HH", 1, 3) + data[12:])  # 3 tracks, 1 held
    assert parse_midi(cut.read_bytes()).missing_tracks == 2
    fonts = {split: [SOUNDFONT] for split in ("train", "valid")} | {"test": []}
    with caplog.at_level(logging.WARNING, logger="umx.synth.plan"):
        plans = plan_tracks(
            [SongRef("cut", path=str(cut))], fonts, seed=0, duration=3, test_fraction=0,
            valid_fraction=0,
        )  # fmt: skip
    assert [plan.name for plan in plans] == ["cut-00"]
    assert caplog.messages == [
        f"{cut} lacks 2 of the tracks its header declares (cut short?); using those it holds"
    ]


def test_a_song_of_more_than_an_hour_is_skipped_before_its_analysis_takes_memory(tmp_path, caplog):
    """A MIDI file of a few bytes can declare a song of years (62 bytes once took 23 GB)."""
    slow = gm_song()
    slow.events[0] = tempo_event(0, 0xFFFFFF)  # the slowest tempo: 16.8 s a beat
    hour = round(3600 / (0xFFFFFF / 1e6) * 480)  # an hour in ticks
    analysis = analyse(replace(slow, end_tick=hour - 480))
    assert analysis.activity.shape == (4, 3585)  # 3583.2 s: a column per second begun, plus one
    too_long = tmp_path / "too-long.mid"
    too_long.write_bytes(encode_midi(replace(slow, end_tick=hour + 480)))
    fonts = {split: [SOUNDFONT] for split in ("train", "valid")} | {"test": []}
    songs = [SongRef("too-long", path=str(too_long)), SongRef("x", seed=1)]
    with caplog.at_level(logging.WARNING, logger="umx.synth.plan"):
        plans = plan_tracks(songs, fonts, seed=0, duration=3, test_fraction=0, valid_fraction=0)
    assert {plan.song.name for plan in plans} == {"x"}
    assert f"skipping {too_long}: it lasts 60.3 minutes; umx takes songs of up to 60 minutes" in (
        caplog.text
    )


# --- rendering ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset_args(tmp_path_factory):
    """`umx synth` arguments for a small dataset: 4 procedural songs and a MIDI file, 3 s tracks,
    with a held-out test soundfont (the train soundfont's instruments under another name)."""
    folder = tmp_path_factory.mktemp("synth")
    (folder / "gm.mid").write_bytes(encode_midi(gm_song()))
    other_soundfont(folder / "held-out.sf2")
    return [
        "--midi", folder / "gm.mid", "--procedural", 4, "--excerpts", 2, "--duration", 3,
        "--soundfont", SOUNDFONT, "--test-soundfont", folder / "held-out.sf2",
        "--test-fraction", 0.25, "--valid-fraction", 0.25, "--seed", 3, "-q",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, dataset_args):
    root = tmp_path_factory.mktemp("datasets") / "synth"
    assert synth("--root", root, *dataset_args, "--jobs", 2) == 0
    return root


def files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*.*")}


@needs_fluidsynth
def test_stems_sum_exactly_to_the_mixture_and_none_is_silent(dataset):
    manifest = json.loads((dataset / "synth.json").read_text())
    assert len(manifest["tracks"]) == 10
    for track in manifest["tracks"]:
        folder = dataset / ("test" if track["split"] == "test" else "train") / track["name"]
        audio = {stem: sf.read(folder / f"{stem}.wav")[0] for stem in ("mixture", *SOURCES)}
        assert audio["mixture"].shape == (3 * 44100, 2)
        assert np.array_equal(sum(audio[stem] for stem in SOURCES), audio["mixture"])
        for stem in SOURCES:
            level = 10 * np.log10(np.mean(audio[stem] ** 2))
            assert level > -45, (track["name"], stem, level)
            assert level == pytest.approx(track["levels_db"][stem], abs=0.01)
        peak = max(np.abs(audio[name]).max() for name in audio)
        assert 20 * np.log10(peak) == pytest.approx(track["peak_db"], abs=0.01)


@needs_fluidsynth
def test_splits_share_no_song_and_test_no_soundfont(dataset):
    manifest = json.loads((dataset / "synth.json").read_text())
    songs = manifest["songs"]
    assert set(songs["train"]).isdisjoint(songs["valid"])
    assert set(songs["test"]).isdisjoint([*songs["train"], *songs["valid"]])
    assert [len(songs[split]) for split in ("train", "valid", "test")] == [3, 1, 1]
    fonts = manifest["soundfonts"]
    assert fonts["train"] == fonts["valid"] == [str(SOUNDFONT.resolve())]
    assert [Path(font).name for font in fonts["test"]] == ["held-out.sf2"]
    test_folders = sorted(path.name for path in (dataset / "test").iterdir())
    assert test_folders == sorted(t["name"] for t in manifest["tracks"] if t["split"] == "test")


@needs_fluidsynth
def test_musdb_reads_the_dataset(dataset):
    manifest = json.loads((dataset / "synth.json").read_text())
    names = {
        split: [t["name"] for t in manifest["tracks"] if t["split"] == split]
        for split in ("train", "valid", "test")
    }
    train = musdb.DB(root=str(dataset), is_wav=True, subsets="train")
    assert sorted(track.name for track in train) == sorted(names["train"] + names["valid"])
    track = train[0]
    assert track.rate == 44100
    sources = sum(track.sources[stem].audio for stem in SOURCES)
    assert np.array_equal(sources, track.audio)
    valid = musdb.DB(
        root=str(dataset), is_wav=True, subsets="train", split="valid", setup_file="setup.yaml"
    )
    assert sorted(track.name for track in valid) == sorted(names["valid"])
    test = musdb.DB(root=str(dataset), is_wav=True, subsets="test")
    assert sorted(track.name for track in test) == sorted(names["test"])


@needs_fluidsynth
def test_same_seed_gives_identical_files(dataset, dataset_args, tmp_path):
    assert synth("--root", tmp_path / "again", *dataset_args, "--jobs", 1) == 0
    assert files(tmp_path / "again") == files(dataset)


@needs_fluidsynth
def test_the_library_run_makes_the_files_the_command_makes(tmp_path):
    """`make_dataset(SynthOptions(...))` writes what `umx synth` writes, synth.json included:
    lists, paths given as text and whole numbers are recorded as the command line's are."""
    (tmp_path / "gm.mid").write_bytes(encode_midi(gm_song(4)))
    argv = ["--midi", tmp_path / "gm.mid", "--procedural", 1, "--duration", 2, "--seed", 4]
    argv += ["--soundfont", SOUNDFONT, "--sample-rate", 16000, "--jobs", 1, "-q"]
    argv += ["--test-fraction", 0, "--valid-fraction", 0]
    assert synth("--root", tmp_path / "command", *argv) == 0
    options = SynthOptions(
        root=str(tmp_path / "library"),
        midi=[tmp_path / "gm.mid"],
        procedural=1,
        duration=2,
        seed=4,
        soundfont=[str(SOUNDFONT)],
        sample_rate=16000,
        jobs=1,
        test_fraction=0,
        valid_fraction=0,
    )
    manifest = make_dataset(options, progress=False)
    assert len(manifest["tracks"]) == 2
    assert files(tmp_path / "library") == files(tmp_path / "command")


@needs_fluidsynth
def test_existing_dataset_is_refused_without_force(tmp_path):
    root = tmp_path / "data"
    (root / "train" / "old").mkdir(parents=True)
    (root / "synth.json").write_text("{}")
    args = ["--root", root, "--procedural", 1, "--duration", 3, "--soundfont", SOUNDFONT, "-q"]
    args += ["--test-fraction", 0, "--valid-fraction", 0, "--jobs", 1]
    with pytest.raises(UmxError, match=r"already holds a dataset \(use --force"):
        synth(*args)
    assert (root / "train" / "old").is_dir()
    assert synth(*args, "--force") == 0
    assert sorted(path.name for path in (root / "train").iterdir()) == ["procedural-00000-00"]
    assert [path.name for path in tmp_path.iterdir()] == ["data"]  # nothing left beside it


@needs_fluidsynth
def test_test_songs_of_an_earlier_dataset_are_rendered_for_testing_only(tmp_path, dataset_args):
    """`--test-songs-of`: a song the earlier dataset tests on is rendered into the test split
    with the test soundfont, even with no test share, and the option is recorded."""
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "synth.json").write_text(json.dumps({"songs": {"test": ["gm", "other"]}}))
    args = [*dataset_args, "--procedural", 1, "--test-fraction", 0, "--valid-fraction", 0]
    assert synth("--root", tmp_path / "data", *args, "--test-songs-of", earlier) == 0
    manifest = json.loads((tmp_path / "data" / "synth.json").read_text())
    assert manifest["songs"] == {"train": ["procedural-00000"], "valid": [], "test": ["gm"]}
    assert manifest["soundfonts"]["test"] == [
        str(dataset_args[dataset_args.index("--test-soundfont") + 1])
    ]
    assert manifest["settings"]["test_songs_of"] == [str(earlier)]
    assert sorted(p.name for p in (tmp_path / "data" / "test").iterdir()) == ["gm-00", "gm-01"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"synth\.json not found: give a folder umx synth made"),
        ("fifo", r"synth\.json is not a regular file: give a folder umx synth made"),
        (b"{not json", r"synth\.json is not readable \("),
        (b"[]", r"synth\.json does not list its test songs: is it umx synth's\?"),
        (b'{"songs": {"test": [1]}}', r"synth\.json does not list its test songs"),
        (b'{"songs": {"train": []}}', r"synth\.json does not list its test songs"),
    ],
)
def test_test_songs_of_a_folder_umx_synth_did_not_make_is_refused(tmp_path, content, message):
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    if content == "fifo":  # a read would wait for a writer forever
        os.mkfifo(earlier / "synth.json")
    elif content is not None:
        (earlier / "synth.json").write_bytes(content)
    args = ["--procedural", 1, "--soundfont", SOUNDFONT, "--test-songs-of", earlier]
    with pytest.raises(UmxError, match=message):
        synth("--root", tmp_path / "out", *args)
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_not_a_dataset_is_refused_even_with_force(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UmxError, match="not empty and holds no dataset"):
        synth("--root", tmp_path, "--procedural", 1, "--soundfont", SOUNDFONT, "--force")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    notes = tmp_path / "notes.txt"  # a file in the way of a folder above: once "File exists"
    args = ["--procedural", 1, "--soundfont", SOUNDFONT, "--test-fraction", 0]
    for root, where in ((notes, ""), (notes / "a" / "b", f" (in --root {notes}/a/b)")):
        with pytest.raises(UmxError) as error:
            synth("--root", root, *args)
        assert str(error.value) == f"{notes} is a file, not a folder{where}"


@needs_fluidsynth
def test_a_read_only_root_is_named_as_given(tmp_path, monkeypatch):
    """It said "ro/.s.e0eea2b0.partial: Read-only file system; write elsewhere", naming the
    hidden folder the dataset is rendered into."""
    (tmp_path / "ro").mkdir()
    read_only_folder(monkeypatch, tmp_path / "ro")
    args = ["--procedural", 1, "--duration", 2, "--soundfont", SOUNDFONT, "-q"]
    with pytest.raises(UmxError) as error:
        synth("--root", tmp_path / "ro" / "s", *args, "--test-fraction", 0, "--jobs", 1)
    assert str(error.value) == (
        f"cannot create {tmp_path / 'ro' / 's'}: Read-only file system; write elsewhere"
    )


def test_a_dataset_with_other_entries_beside_it_names_them(tmp_path):
    """It said "data is not empty and holds no dataset", of a dataset with a --midi folder in
    it: the refusal protects the MIDI files, but the reason was wrong."""
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    (root / "synth.json").write_text("{}")
    (root / "mid").mkdir()
    (root / "mid" / "song.mid").write_bytes(b"MThd")
    args = ["--root", root, "--midi", root / "mid", "--soundfont", SOUNDFONT, "--force"]
    with pytest.raises(UmxError) as error:
        synth(*args)
    assert str(error.value) == (
        f"{root} holds a dataset and also mid, which is not part of one: move it out, or "
        "choose a new folder"
    )
    for name in ("notes.txt", "z"):
        (root / name).write_text("mine")
    with pytest.raises(UmxError) as error:
        synth(*args)
    assert str(error.value) == (
        f"{root} holds a dataset and also mid, notes.txt and 1 more, which are not part of one: "
        "move them out, or choose a new folder"
    )
    assert (root / "mid" / "song.mid").read_bytes() == b"MThd"


def test_files_of_the_user_in_a_dataset_or_its_inputs_are_never_replaced(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "train" / "song").mkdir(parents=True)
    (root / "train" / "song" / "vocals.wav").write_bytes(b"stem")
    (root / "synth.json").write_text("{}")
    mine = root / "train" / "song" / "take2.mid"  # put there by the user: --force would delete it
    mine.write_bytes(b"MThd")
    args = ["--procedural", 1, "--soundfont", SOUNDFONT, "--force", "--test-fraction", 0]
    with pytest.raises(UmxError, match=rf"^{root} holds {mine}, which umx synth did not write"):
        synth("--root", root, *args)
    with pytest.raises(UmxError, match=rf"^{root} holds {mine}"):  # also when it is an input
        synth("--root", root, *args, "--midi", mine)
    samples = tmp_path / "samples"  # an earlier dataset's stems among the recorded sounds
    (samples / "data" / "train" / "t").mkdir(parents=True)
    sf.write(samples / "data" / "train" / "t" / "drums.wav", np.zeros(44100), 44100)
    with pytest.raises(UmxError, match=r"^the sound \S+/drums\.wav is inside --root"):
        synth("--root", samples / "data", *args, "--other-samples", samples)
    (tmp_path / "no-midi").mkdir()
    with pytest.raises(UmxError, match=r"no-midi holds no MIDI file \(\.kar, \.mid, \.midi\)"):
        synth("--root", tmp_path / "new", *args, "--midi", tmp_path / "no-midi")
    monkeypatch.chdir(root)  # the folder the user is in is never replaced
    with pytest.raises(UmxError, match=r"^--root \. is the folder you are in, or holds it"):
        synth("--root", ".", *args)
    assert mine.read_bytes() == b"MThd" and (samples / "data" / "train" / "t").is_dir()
    assert not (tmp_path / "new").exists()


def test_a_file_that_is_not_a_soundfont_is_refused(tmp_path):
    bogus = tmp_path / "bogus.sf2"
    bogus.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    with pytest.raises(UmxError, match=r"bogus\.sf2 is not a SoundFont file"):
        check_soundfont(bogus)
    with pytest.raises(UmxError) as error:  # once "not found"
        check_soundfont(tmp_path)
    assert str(error.value) == f"{tmp_path} is not a regular file: give a SoundFont file"


@needs_fluidsynth
def test_a_soundfont_fluidsynth_cannot_load_is_refused_before_any_work(tmp_path):
    """fluidsynth plays on without a soundfont it cannot load, and exits 0: its silence once
    made every track be skipped, found only at the end of the run."""
    bogus = tmp_path / "bogus.sf2"
    bogus.write_bytes(SOUNDFONT.read_bytes()[:4096])  # a SoundFont's header, cut short
    message = rf"^fluidsynth cannot load the SoundFont {re.escape(str(bogus))} \(.+\): give another"
    with pytest.raises(UmxError, match=message):
        check_soundfont(bogus)
    odd = bogus.rename(tmp_path / "bo\ngus.sf2")  # its name shown escaped: the error stays one line
    with pytest.raises(UmxError, match=r"SoundFont \S+/bo\\ngus\.sf2 \(.+\): give another"):
        check_soundfont(odd)
    bogus = odd.rename(bogus)
    root = tmp_path / "out" / "data"
    argv = ["--root", root, "--procedural", 1, "--duration", 3, "--test-fraction", 0]
    held_out = ["--test-soundfont", bogus, "--test-fraction", 0.5, "--procedural", 2]
    for fonts in (["--soundfont", bogus], ["--soundfont", SOUNDFONT, *held_out]):
        with pytest.raises(UmxError, match=message):
            synth(*argv, *fonts)
    assert not (tmp_path / "out").exists()


@needs_fluidsynth
def test_a_log_file_gets_the_summary_line_and_no_progress_bar(tmp_path):
    """stderr that is not a terminal (`2>log`) gets umx's lines only, as from `umx separate` or
    `umx batch`: no progress bar, whose redraws would pile up in the file on one line."""
    command = [sys.executable, "-m", "umx.cli", "synth", "--root", "data", "--procedural", "1"]
    command += ["--soundfont", str(SOUNDFONT), "--duration", "2", "--test-fraction", "0"]
    run = subprocess.run(
        [*command, "--excerpts", "1"], cwd=tmp_path, capture_output=True, text=True,
        timeout=BOUND_S,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr == "umx: wrote 1 track (2.0 s) to data: 1 train, 0 valid, 0 test\n"


def stop_synth_mid_run(tmp_path: Path, argv: list, stop: str) -> tuple[int, list[int], str]:
    """Runs `umx synth` with 2 workers in its own process group, as from a terminal, and stops
    it once a track is rendered: the driver with SIGKILL, SIGTERM or SIGHUP, or the group with
    Ctrl-C's SIGINT. Its temporary files go to `tmp_path`/tmp, which must be left empty.

    Returns:
        its exit status, its workers (stopped by then) and what it wrote to stderr.
    """
    command = [sys.executable, "-m", "umx.cli", "synth", *map(str, argv), "-q"]
    command += ["--procedural", "8", "--duration", "20", "--jobs", "2"]
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    with open(tmp_path / "stderr", "wb") as err:
        driver = subprocess.Popen(command, stderr=err, start_new_session=True, env=env)
        try:
            wait_for(lambda: list(tmp_path.glob(".data.*.partial/*/*")), "a track rendered")
            workers = children(driver.pid, b"spawn_main")  # not the resource tracker
            if stop == "Ctrl-C":
                os.killpg(driver.pid, signal.SIGINT)
            else:
                driver.send_signal(getattr(signal, stop))
            status = driver.wait(timeout=BOUND_S)
            wait_for(lambda: not any(map(running, workers)), "the workers to stop", 30)
        finally:
            driver.kill()
    assert not list((tmp_path / "tmp").iterdir())  # fluidsynth's files, removed by the workers
    (tmp_path / "tmp").rmdir()
    return status, workers, (tmp_path / "stderr").read_text()


@needs_fluidsynth
def test_a_killed_run_stops_its_workers_and_the_next_run_removes_what_it_left(tmp_path):
    """SIGKILL or the out-of-memory killer leaves `umx synth` no time to stop its workers or
    remove its unfinished dataset: the workers stop themselves, quietly, and the next run
    into the same folder removes the unfinished one."""
    root = tmp_path / "data"
    argv = ["--root", root, "--soundfont", SOUNDFONT, "--test-fraction", 0, "--excerpts", 1]
    status, workers, err = stop_synth_mid_run(tmp_path, argv, "SIGKILL")
    assert status == -signal.SIGKILL and len(workers) == 2
    assert "Traceback" not in err
    assert len(abandoned_stages(root)) == 1
    assert synth(*argv, "--procedural", 1, "--duration", 3, "-q") == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "stderr"]
    assert len(list(root.glob("train/*/mixture.wav"))) == 1


@needs_fluidsynth
@pytest.mark.parametrize(
    ("stop", "status", "message"),
    [("Ctrl-C", 130, "interrupted"), ("SIGTERM", 128 + signal.SIGTERM, "stopped by SIGTERM")],
)
def test_a_stopped_run_stops_its_workers_in_one_line_leaving_nothing(
    tmp_path, stop, status, message
):
    """Stopping the pool SIGTERMs its workers: they once died of it mid-track, leaving
    fluidsynth's temporary folder (a 5 MB song.wav) in /tmp; they now unwind as on Ctrl-C."""
    argv = ["--root", tmp_path / "data", "--soundfont", SOUNDFONT, "--test-fraction", 0]
    stopped, workers, err = stop_synth_mid_run(tmp_path, argv, stop)
    assert (stopped, len(workers), err) == (status, 2, f"umx: {message}\n")
    assert [path.name for path in tmp_path.iterdir()] == ["stderr"]


def test_missing_tools_name_the_debian_package(tmp_path, monkeypatch):
    known = tmp_path / "GM.sf2"
    monkeypatch.setitem(SOUNDFONT_PACKAGES, known, "fluid-soundfont-gm")
    with pytest.raises(UmxError, match=r"GM.sf2 not found \(apt-get install fluid-soundfont-gm\)"):
        check_soundfont(known)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UmxError, match=r"apt-get install fluidsynth"):
        check_fluidsynth()


def test_no_songs_is_an_error(tmp_path):
    with pytest.raises(UmxError, match="no songs"):
        synth("--root", tmp_path / "data", "--soundfont", SOUNDFONT, "--test-fraction", 0)


@needs_fluidsynth
def test_render_example(tmp_path):
    path = tmp_path / "examples" / "example.flac"
    written = render_example(path, seed=7, duration=3, soundfont=SOUNDFONT, stems=True)
    assert [p.name for p in written] == ["example.flac"] + [f"example.{s}.flac" for s in SOURCES]
    audio = [sf.read(p, dtype="int16")[0].astype(np.int32) for p in written]
    assert audio[0].shape == (3 * 44100, 2)
    assert np.array_equal(sum(audio[1:]), audio[0])
    assert abs(audio[0][:10]).max() < 100  # faded in
    first = [p.read_bytes() for p in written]
    with pytest.raises(UmxError, match="already exists"):
        render_example(path, seed=7, duration=3, soundfont=SOUNDFONT)
    render_example(path, seed=7, duration=3, soundfont=SOUNDFONT, stems=True, force=True)
    assert [p.read_bytes() for p in written] == first
    with pytest.raises(UmxError, match=r"written as \.wav or \.flac"):
        render_example(tmp_path / "example.mp3", seed=7)


@needs_fluidsynth
def test_an_example_written_meanwhile_is_kept_without_force(tmp_path, monkeypatch):
    path = tmp_path / "example.wav"
    render_track = umx.synth.dataset.render_track

    def another_run_ends(*args, **kwargs):
        path.write_bytes(b"other")
        return render_track(*args, **kwargs)

    monkeypatch.setattr(umx.synth.dataset, "render_track", another_run_ends)
    with pytest.raises(UmxError) as error:
        render_example(path, seed=7, duration=3, soundfont=SOUNDFONT)
    assert str(error.value) == f"{path} already exists (use --force to overwrite)"
    assert [p.name for p in tmp_path.iterdir()] == ["example.wav"]
    assert path.read_bytes() == b"other"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--duration", "nan", "--duration must be a finite number"),
        ("--duration", "inf", "--duration must be a finite number"),
        ("--duration", "0", "--duration must be at least 2"),
        ("--duration", "1", "--duration must be at least 2, not 1"),
        ("--test-fraction", "nan", "--test-fraction must be a finite number"),
        ("--valid-fraction", "-0.1", "--valid-fraction must be at least 0"),
        ("--duration", "1e12", "--duration must be at most 600, not 1000000000000"),
        ("--sample-rate", "0", "--sample-rate must be at least 8000"),
        ("--sample-rate", "99999999", "--sample-rate must be at most 96000"),
        ("--jobs", "0", "--jobs must be at least 1"),
        ("--jobs", "99999999", "--jobs must be at most [0-9]+, 4 per core umx may use here"),
        ("--procedural", "-1", "--procedural must be at least 0"),
        ("--procedural", "99999999", "--procedural must be at most 100000"),
        ("--excerpts", "99999999", "--excerpts must be at most 100"),
    ],
)
def test_bad_numbers_are_one_clear_error_before_any_work(tmp_path, option, value, message):
    with pytest.raises(UmxError, match=message):
        synth("--root", tmp_path / "out", "--procedural", 1, option, value)
    assert not (tmp_path / "out").exists()


def test_synth_options_have_the_command_lines_defaults_and_store_lists_as_tuples():
    parser = argparse.ArgumentParser()
    add_synth_arguments(parser)
    assert synth_options(parser.parse_args(["--root", "data"])) == SynthOptions(root="data")
    options = SynthOptions(root="data", midi=[Path("a.mid")], soundfont=["a.sf2"], seed=np.int64(2))
    assert (options.root, options.midi, options.soundfont) == (
        Path("data"),
        ("a.mid",),
        (Path("a.sf2"),),
    )
    assert type(options.seed) is int and type(options.duration) is float
    assert options.test_soundfont is None and options.drum_kits == ()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"procedural": -1}, "--procedural must be at least 0, not -1"),
        ({"duration": "30"}, "--duration must be a number, not '30'"),
        ({"excerpts": 1.5}, "--excerpts must be a whole number, not 1.5"),
        ({"test_fraction": 0.6, "valid_fraction": 0.5}, "--test-fraction and --valid-fraction "),
        ({"production": "no"}, "--production must be True or False, not 'no'"),
        ({"force": 1}, "--force must be True or False, not 1"),
        ({"midi": "song.mid"}, "--midi must be a list of paths, not 'song.mid'"),
        ({"test_songs_of": Path("data")}, "--test-songs-of must be a list of paths, not "),
        ({"soundfont": ["a.sf2", 3]}, "--soundfont must be a path, not 3"),
        ({"root": None}, "--root must be a folder, not None"),
        ({"test_festival_voice": "ked_diphone"}, "--test-festival-voice needs --festival-singer"),
    ],
)
def test_synth_options_refuse_bad_values_with_the_command_lines_messages(options, message):
    with pytest.raises(UmxError, match=f"^{re.escape(message)}"):
        SynthOptions(**{"root": "data", **options})
