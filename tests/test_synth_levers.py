"""The levers of `umx synth` that bring tracks closer to records, each off by default: the mix
bus (``--mix-bus``), denser `other` parts (``--dense-other``), guitar amps (``--amp-guitars``)
and Festival's singer (``--festival-singer``).

The end-to-end renders need the Debian packages fluidsynth and timgm6mb-soundfont (CI installs
them); the Festival singer's, festival and festvox-kallpc16k (skipped without them).
"""

import argparse
import json
import math
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from umx.defaults import SOURCES
from umx.errors import UmxError
from umx.synth.amp import amplify, cabinet, draw_amp, drive
from umx.synth.bus import apply_bus, draw_bus, limiter_gain, widen
from umx.synth.festival import VOICE, VOICES_FOLDER, draw_festival, score, sing
from umx.synth.gm import split_guitars
from umx.synth.midi import PROGRAM_CHANGE, Event, Song, encode_midi, note, tempo_event
from umx.synth.options import add_synth_arguments, run_synth
from umx.synth.plan import SongRef, plan_tracks
from umx.synth.procedural import DENSE_PARTS, generate_song
from umx.synth.render import render_track

RATE = 8000
SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
needs_fluidsynth = pytest.mark.skipif(
    not (shutil.which("fluidsynth") and SOUNDFONT.is_file()) and not os.environ.get("CI"),
    reason="needs the Debian packages fluidsynth and timgm6mb-soundfont",
)
HELD_OUT_VOICE = "ked_diphone"
needs_festival = pytest.mark.skipif(
    not (shutil.which("text2wave") and any(VOICES_FOLDER.glob(f"*/{VOICE}"))),
    reason="needs the Debian packages festival and festvox-kallpc16k",
)
needs_held_out_voice = pytest.mark.skipif(
    not (shutil.which("text2wave") and any(VOICES_FOLDER.glob(f"*/{HELD_OUT_VOICE}"))),
    reason="needs the Debian packages festival and festvox-kdlpc16k",
)


def synth(*argv: object) -> int:
    """Runs `umx synth` with these arguments, as the CLI does."""
    parser = argparse.ArgumentParser()
    add_synth_arguments(parser)
    return run_synth(parser.parse_args([str(arg) for arg in argv]))


def crest_db(audio: np.ndarray) -> float:
    """Peak over RMS, in dB."""
    return 20 * math.log10(np.abs(audio).max() / np.sqrt(np.mean(np.square(audio))))


def loud_mix() -> dict[str, np.ndarray]:
    """Two stems of 4 s at 8 kHz: a kick, four decaying 60 Hz hits a second, and a steady pad."""
    times = np.arange(4 * RATE) / RATE
    hits = np.zeros(len(times))
    hits[:: RATE // 4] = 1.0
    tail = np.arange(800)
    kick = np.convolve(hits, np.exp(-tail / 80) * np.sin(2 * math.pi * 60 * tail / RATE))
    pad = 0.2 * np.stack([np.sin(2 * math.pi * 220 * times), np.sin(2 * math.pi * 330 * times)])
    return {"drums": np.stack([kick[: len(times)], 0.9 * kick[: len(times)]]), "other": pad}


def bus(ratio: float = 1.0, reduction_db: float = 6.0, width: float = 1.0) -> dict:
    compressor = {"threshold_db": -12.0, "ratio": ratio, "attack": 0.01, "release": 0.1}
    return {
        "width": width,
        "compressor": compressor,
        "limiter": {"reduction_db": reduction_db, "release": 0.05},
    }


PLAN_ARGS = {"seed": 1, "duration": 4, "excerpts": 2, "test_fraction": 0.2}
FONTS = {"train": [Path("a.sf2")], "valid": [Path("a.sf2")], "test": [Path("b.sf2")]}


# --- the mix bus ----------------------------------------------------------------------------------


def test_width_zero_is_mono_and_one_leaves_the_stem_unchanged():
    audio = np.random.default_rng(0).standard_normal((2, 1000))
    mono = widen(audio, 0.0)
    assert np.array_equal(mono[0], mono[1])
    assert np.allclose(mono[0], audio.mean(axis=0), rtol=0, atol=1e-15)
    assert np.allclose(widen(audio, 1.0), audio, rtol=0, atol=1e-15)
    wide = widen(audio, 1.5)  # the side grows by half, the mid stays
    assert np.allclose(wide[0] - wide[1], 1.5 * (audio[0] - audio[1]))
    assert np.allclose(wide[0] + wide[1], audio[0] + audio[1])


def test_the_limiter_brings_the_peaks_down_by_its_reduction_and_leaves_the_rest():
    audio = np.random.default_rng(1).standard_normal((2, RATE)) * 0.05
    audio[:, 4000] = [1.0, -0.5]
    gain = limiter_gain(audio, reduction_db=6.0, release=0.05, sample_rate=RATE)
    limited = audio * gain
    assert np.abs(limited).max() == pytest.approx(10 ** (-6 / 20), rel=1e-9)
    assert gain[4000] == pytest.approx(10 ** (-6 / 20), rel=1e-9)
    # the gain falls over the 5 ms look-ahead and holds for the 50 ms release, no longer
    assert np.all(gain[: 4000 - 40] == 1.0) and np.all(gain[4000 + 400 + 40 :] == 1.0)
    assert np.all(gain[4000 - 39 : 4000 + 400] < 1.0)


def test_the_bus_cuts_the_crest_factor_of_a_loud_mix_and_gains_every_stem_alike():
    stems = loud_mix()
    mixture = sum(stems.values())
    out = apply_bus(stems, bus(), RATE)
    limited = sum(out.values())
    # a 6 dB limiter: peaks 6 dB down, the RMS about 1.8 dB down, the crest factor 4.2 dB less
    assert np.abs(limited).max() == pytest.approx(np.abs(mixture).max() / 2, rel=0.01)
    assert crest_db(mixture) - crest_db(limited) == pytest.approx(4.18, abs=0.05)
    heard = np.abs(stems["other"]) > 0.01
    gain = out["other"][heard] / stems["other"][heard]
    assert np.allclose(out["drums"][heard], stems["drums"][heard] * gain)  # one gain for all


def test_the_bus_compressor_narrows_the_gap_between_loud_and_quiet_passages():
    times = np.arange(2 * RATE) / RATE
    level = np.where(times < 1, 0.1, 1.0)  # the second second 20 dB louder
    stems = {
        stem: np.stack([np.sin(2 * math.pi * frequency * times) * level] * 2)
        for stem, frequency in (("bass", 100), ("other", 440))
    }
    out = sum(apply_bus(stems, bus(ratio=4.0, reduction_db=0.0), RATE).values())
    gap = 20 * math.log10(np.abs(out[0, 12000:]).max() / np.abs(out[0, 2000:6000]).max())
    assert gap == pytest.approx(20 - 9, abs=0.3)  # 12 dB over the threshold, 3/4 taken off


@pytest.mark.parametrize(
    ("option", "field", "draw"),
    [
        ("mix_bus", "mix_bus", draw_bus),
        ("amp_guitars", "amp", draw_amp),
        ("festival_singer", "festival", draw_festival),
    ],
)
def test_drawn_levers_are_json_and_plans_without_them_are_unchanged(option, field, draw):
    settings = draw(random.Random(3))
    assert json.loads(json.dumps(settings)) == settings
    songs = [SongRef(f"p{index}", seed=index, min_seconds=20) for index in range(6)]
    plain = plan_tracks(songs, FONTS, **PLAN_ARGS)
    produced = plan_tracks(songs, FONTS, **PLAN_ARGS, production=True)
    levered = plan_tracks(songs, FONTS, **PLAN_ARGS, production=True, **{option: True})
    assert all(getattr(plan, field) is None for plan in plain + produced)
    for before, after in zip(produced, levered, strict=True):
        assert after.__dict__ | {field: None} == before.__dict__
    assert len({json.dumps(getattr(plan, field)) for plan in levered}) == len(levered)


@needs_fluidsynth
def test_a_bussed_track_sums_exactly_to_its_mixture():
    songs = [SongRef("p", seed=5, min_seconds=12)]
    fonts = {"train": [SOUNDFONT], "valid": [], "test": []}
    args = {"seed": 2, "duration": 3, "test_fraction": 0, "valid_fraction": 0}
    plan = plan_tracks(songs, fonts, **args, mix_bus=True)[0]
    plan = type(plan)(**{**plan.__dict__, "mix_bus": bus(ratio=3.0, width=0.0)})
    tracks = render_track(plan, 3.0, 22050)
    total = sum(tracks[stem].astype(np.int32) for stem in SOURCES)
    assert np.array_equal(total, tracks["mixture"])
    for stem in ("mixture", *SOURCES):  # width 0: every stem mono
        assert np.array_equal(tracks[stem][:, 0], tracks[stem][:, 1])
    plain = render_track(plan_tracks(songs, fonts, **args)[0], 3.0, 22050)
    mixtures = (tracks["mixture"].astype(float), plain["mixture"].astype(float))
    assert crest_db(mixtures[1]) - crest_db(mixtures[0]) > 2


# --- dense other ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 7])
def test_a_dense_song_is_the_plain_song_with_more_other_parts(seed):
    plain, dense = generate_song(seed, 30), generate_song(seed, 30, dense=True)
    added = [event for event in dense.events if event.channel in DENSE_PARTS]
    assert [event for event in dense.events if event.channel not in DENSE_PARTS] == plain.events
    assert not any(event.channel in DENSE_PARTS for event in plain.events)
    programs = {event.channel: event.data[0] for event in added if event.kind == 0xC0}
    assert all(programs[channel] in DENSE_PARTS[channel][1] for channel in DENSE_PARTS)
    assert programs[7] in (29, 30)  # a distorted guitar
    for channel in DENSE_PARTS:
        notes = [event for event in added if event.channel == channel and event.is_note_on]
        assert len(notes) >= 16, channel  # it plays through the song
        assert notes[-1].tick > plain.end_tick * 0.8
    assert dense.end_tick == plain.end_tick


def test_dense_songs_plan_the_same_tracks():
    songs = [SongRef(f"p{index}", seed=index, min_seconds=20) for index in range(6)]
    dense = [SongRef(song.name, seed=song.seed, min_seconds=20, dense=True) for song in songs]
    for before, after in zip(
        plan_tracks(songs, FONTS, **PLAN_ARGS), plan_tracks(dense, FONTS, **PLAN_ARGS), strict=True
    ):
        assert after.__dict__ | {"song": before.song} == before.__dict__


@needs_fluidsynth
def test_a_dense_track_renders_the_same_vocals_drums_and_bass():
    fonts = {"train": [SOUNDFONT], "valid": [], "test": []}
    args = {"seed": 2, "duration": 3, "test_fraction": 0, "valid_fraction": 0}
    tracks = [
        render_track(plan_tracks([song], fonts, **args)[0], 3.0, 16000)
        for dense in (False, True)
        for song in [SongRef("p", seed=5, min_seconds=12, dense=dense)]
    ]
    plain, dense = ({s: t[s].astype(float) for s in SOURCES} for t in tracks)
    scale = np.sum(dense["drums"] * plain["drums"]) / np.sum(plain["drums"] ** 2)
    assert scale != pytest.approx(1.0, abs=0.01)  # the denser mixture peaks higher
    for stem in ("vocals", "drums", "bass"):  # the same audio, at the track's new peak level
        assert np.abs(dense[stem] - plain[stem] * scale).max() <= 1.5, stem
    assert np.abs(dense["other"] - plain["other"] * scale).max() > 1000


# --- guitar amps ----------------------------------------------------------------------------------


def guitar_song(guitar_program: int = 29) -> Song:
    """Four seconds at 120 bpm: a voice melody, a bass, drums, piano chords on channel 3 and a
    riff on channel 4 with ``guitar_program``."""
    events = [tempo_event(0, 500_000)]
    for channel, program in ((0, 52), (1, 33), (2, 0), (3, guitar_program)):
        events.append(Event(0, PROGRAM_CHANGE | channel, bytes((program,))))
    for beat in range(8):
        tick = beat * 480
        events += note(tick, 9, 36 if beat % 2 else 38, 100, 120)
        events += note(tick, 0, 67 + beat % 3, 90, 400)
        events += note(tick, 1, 33 + beat % 2, 90, 400)
        events += note(tick, 2, 60, 70, 400) + note(tick, 2, 64, 70, 400)
        events += note(tick, 3, 52, 90, 200) + note(tick + 240, 3, 59, 90, 200)
    events.sort(key=lambda event: event.tick)
    return Song(480, events, end_tick=8 * 480)


def test_split_guitars_follows_each_channel_s_program():
    events = [Event(0, PROGRAM_CHANGE | 2, bytes((0,))), Event(0, PROGRAM_CHANGE | 9, bytes((25,)))]
    events += note(0, 2, 60, 90, 100)  # piano
    events += [Event(200, PROGRAM_CHANGE | 2, bytes((30,)))]
    events += note(150, 2, 62, 90, 100) + note(300, 2, 64, 90, 100)  # held over the change
    events += note(300, 9, 36, 90, 100)  # drums, whatever their program
    events.sort(key=lambda event: event.tick)
    guitars, rest = split_guitars(Song(480, events, end_tick=480))

    def notes(song):
        return [(e.tick, e.channel, e.data[0]) for e in song.events if e.is_note_on]

    assert notes(guitars) == [(300, 2, 64)]
    assert notes(rest) == [(0, 2, 60), (150, 2, 62), (300, 9, 36)]
    offs = [e.tick for e in guitars.events if e.is_note_off]
    assert offs == [400]  # the guitar note's own note-off, not the piano's at 250
    for part in (guitars, rest):  # both keep the program changes
        assert sum(e.kind == PROGRAM_CHANGE for e in part.events) == 3


def test_the_amp_drive_adds_odd_and_even_harmonics():
    sine = np.stack([np.sin(2 * math.pi * 250 * np.arange(RATE) / RATE)] * 2)
    spectrum = np.abs(np.fft.rfft(drive(sine, 20.0, 0.3)[0]))
    assert spectrum[500] / spectrum[250] > 0.02 and spectrum[750] / spectrum[250] > 0.05
    unbiased = np.abs(np.fft.rfft(drive(sine, 20.0, 0.0)[0]))
    assert unbiased[500] / unbiased[250] < 1e-6  # symmetric clipping: odd harmonics only
    assert np.array_equal(drive(np.zeros((2, 10)), 20.0, 0.3), np.zeros((2, 10)))


def test_the_cabinet_cuts_deep_bass_and_the_top_and_keeps_the_middle():
    rate = 44100
    impulse = np.zeros((1, rate))
    impulse[0, 0] = 1.0
    settings = draw_amp(random.Random(0))["cabinet"] | {"low": 100, "high": 4000}
    gain = np.abs(np.fft.rfft(cabinet(impulse, settings, rate)[0]))  # 1 Hz bins
    low, middle, top = 20 * np.log10(gain[[30, 1000, 12000]])  # dB (the DC bin is a true zero)
    assert abs(middle) < 6
    assert low < middle - 15
    assert top < middle - 30


def test_amplify_keeps_the_level_and_changes_the_sound():
    audio = np.stack([np.sin(2 * math.pi * 196 * np.arange(RATE) / RATE)] * 2) * 0.3
    out = amplify(audio, draw_amp(random.Random(1)), RATE)
    assert out.shape == audio.shape and np.isfinite(out).all()
    assert np.sqrt(np.mean(out**2)) == pytest.approx(np.sqrt(np.mean(audio**2)))
    assert not np.allclose(out, audio, atol=0.05)
    assert np.array_equal(amplify(0 * audio, draw_amp(random.Random(1)), RATE), 0 * audio)


@needs_fluidsynth
@pytest.mark.parametrize("guitar_program", [29, 48])
def test_the_amp_changes_only_the_guitars_of_other(tmp_path, guitar_program):
    path = tmp_path / "song.mid"
    path.write_bytes(encode_midi(guitar_song(guitar_program)))
    fonts = {"train": [SOUNDFONT], "valid": [], "test": []}
    args = {"seed": 2, "duration": 3, "test_fraction": 0, "valid_fraction": 0}
    plans = [
        plan_tracks([SongRef("g", path=str(path))], fonts, **args, amp_guitars=amp)[0]
        for amp in (False, True)
    ]
    plain, amped = (render_track(plan, 3.0, 16000) for plan in plans)
    assert np.array_equal(sum(amped[s].astype(np.int32) for s in SOURCES), amped["mixture"])
    if guitar_program == 48:  # strings: no guitar, the same files
        assert all(np.array_equal(plain[name], amped[name]) for name in plain)
        return
    plain, amped = ({s: t[s].astype(float) for s in SOURCES} for t in (plain, amped))
    scale = np.sum(amped["drums"] * plain["drums"]) / np.sum(plain["drums"] ** 2)
    for stem in ("vocals", "drums", "bass"):  # the same audio, at the track's new peak level
        assert np.abs(amped[stem] - plain[stem] * scale).max() <= 1.5, stem
    assert np.abs(amped["other"] - plain["other"] * scale).max() > 1000


# --- Festival's singer ----------------------------------------------------------------------------


def vocal_line(notes: list[tuple[float, float, int]]) -> Song:
    """Notes ``(start s, end s, key)`` on channel 0 at 120 bpm (960 ticks a second)."""
    events = [tempo_event(0, 500_000)]
    for start, end, key in notes:
        events += note(round(start * 960), 0, key, 90, round((end - start) * 960))
    events.sort(key=lambda event: event.tick)
    return Song(480, events, end_tick=4 * 960)


LINE = [(0.5, 1.0, 69), (1.0, 1.5, 60), (2.0, 2.5, 64), (2.52, 3.0, 62), (3.0, 3.03, 70)]
"""A line with a rest, a silence too short to be a rest and a note too short to sing."""


def test_the_score_gives_each_note_its_pitch_and_length_and_each_rest_its_own():
    text, start = score(vocal_line(LINE), seed=0)
    assert start == 0.5
    pitches = [float(f) for f in re.findall(r'FREQ="([0-9.]+)"', text)]
    lengths = [float(f) for f in re.findall(r'DURATION SECONDS="([0-9.]+)"', text)]
    rests = [float(f) for f in re.findall(r'REST SECONDS="([0-9.]+)"', text)]
    # A4 is sung an octave down; the 20 ms silence lengthens the note before it
    assert pitches == [220.0, 261.63, 329.63, 293.66]
    assert lengths == pytest.approx([0.5, 0.5, 0.52, 0.48], abs=0.0011)
    assert rests == pytest.approx([0.5], abs=0.0011)
    assert score(vocal_line([]), seed=0) == ("", 0.0)


@needs_festival
def test_festival_sings_each_note_in_time_and_in_tune():
    rate = 16000
    voice = sing(vocal_line(LINE), 4 * rate, rate, seed=1)
    assert voice.shape == (2, 4 * rate) and np.array_equal(voice[0], voice[1])

    def rms(start, end):
        return np.sqrt(np.mean(voice[0, round(start * rate) : round(end * rate)] ** 2))

    sung = [rms(a, b) for a, b in ((0.6, 0.9), (1.1, 1.4), (2.1, 2.4), (2.6, 2.9))]
    assert min(sung) > 30 * max(rms(0.0, 0.45), rms(1.6, 1.9), rms(3.2, 4.0))
    segment = voice[0, round(2.15 * rate) : round(2.15 * rate) + 1024]  # E4, 329.6 Hz
    segment = segment - segment.mean()
    correlation = np.correlate(segment, segment, "full")[1023:]
    lag = 32 + np.argmax(correlation[32 : rate // 70])
    assert rate / lag == pytest.approx(329.63, rel=0.03)
    assert not sing(vocal_line([]), rate, rate, seed=1).any()


@needs_fluidsynth
def test_a_missing_festival_is_one_error_naming_the_packages(tmp_path, monkeypatch):
    monkeypatch.setattr("umx.synth.festival.VOICES_FOLDER", tmp_path / "no-voices")
    with pytest.raises(UmxError, match="apt-get install festival festvox-kallpc16k"):
        synth("--root", tmp_path / "out", "--procedural", 1, "--festival-singer")
    assert not (tmp_path / "out").exists()


def test_a_held_out_festival_voice_sings_the_test_split_only():
    songs = [SongRef(f"p{index}", seed=index, min_seconds=20) for index in range(10)]
    same = plan_tracks(songs, FONTS, **PLAN_ARGS, festival_singer=True)
    held_out = plan_tracks(
        songs, FONTS, **PLAN_ARGS, festival_singer=True, test_festival_voice=HELD_OUT_VOICE
    )
    assert {plan.split for plan in held_out} == {"train", "valid", "test"}
    for before, after in zip(same, held_out, strict=True):
        voice = HELD_OUT_VOICE if after.split == "test" else VOICE
        assert before.festival["voice"] == VOICE and after.festival["voice"] == voice
        assert after.__dict__ | {"festival": before.festival} == before.__dict__
        assert after.festival | {"voice": VOICE} == before.festival  # share and seed alike
    with pytest.raises(
        UmxError,
        match=f"voice {VOICE} is used for both training and testing: give "
        "--test-festival-voice another voice, such as ked_diphone$",
    ):
        plan_tracks(songs, FONTS, **PLAN_ARGS, festival_singer=True, test_festival_voice=VOICE)


@needs_held_out_voice
def test_the_held_out_voice_is_another_singer_in_the_same_tune():
    rate = 16000
    kal, ked = (
        sing(vocal_line(LINE), 4 * rate, rate, 1, voice) for voice in (VOICE, HELD_OUT_VOICE)
    )
    window = slice(round(2.1 * rate), round(2.1 * rate) + 2048)  # E4, 329.6 Hz
    for voice in (kal, ked):
        segment = voice[0, window] - voice[0, window].mean()
        correlation = np.correlate(segment, segment, "full")[2047:]
        lag = 32 + np.argmax(correlation[32 : rate // 70])
        assert rate / lag == pytest.approx(329.63, rel=0.03)

    def spectrum(voice):
        magnitude = np.abs(np.fft.rfft(voice[0, round(0.5 * rate) : 3 * rate]))
        return magnitude / np.linalg.norm(magnitude)

    # another timbre (kal singing other words: 0.90)
    assert float(spectrum(kal) @ spectrum(ked)) < 0.85


@needs_fluidsynth
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--test-festival-voice", HELD_OUT_VOICE],
            "--test-festival-voice needs --festival-singer",
        ),
        (["--festival-singer", "--test-festival-voice", "nope"], "unknown Festival voice 'nope'"),
        (
            ["--festival-singer", "--test-festival-voice", '") (system "touch pwned") ("'],
            "unknown Festival voice",
        ),
        (["--festival-singer", "--test-festival-voice", VOICE], "both training and testing"),
    ],
    ids=["without-festival", "unknown", "scheme-injection", "training-voice"],
)
@pytest.mark.parametrize("test_fraction", [0.5, 0])
def test_bad_test_festival_voices_are_refused(
    tmp_path, monkeypatch, options, message, test_fraction
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UmxError, match=message):
        synth(
            "--root",
            tmp_path / "out",
            "--procedural",
            1,
            "--test-fraction",
            test_fraction,
            *options,
        )
    assert sorted(tmp_path.iterdir()) == []


@needs_fluidsynth
@needs_festival
def test_a_track_sung_by_festival_sums_exactly_to_its_mixture():
    songs = [SongRef("p", seed=5, min_seconds=12)]
    fonts = {"train": [SOUNDFONT], "valid": [], "test": []}
    args = {"seed": 2, "duration": 3, "test_fraction": 0, "valid_fraction": 0}
    plain, sung = (
        render_track(plan_tracks(songs, fonts, **args, festival_singer=on)[0], 3.0, 16000)
        for on in (False, True)
    )
    assert np.array_equal(sum(sung[s].astype(np.int32) for s in SOURCES), sung["mixture"])
    plain, sung = ({s: t[s].astype(float) for s in SOURCES} for t in (plain, sung))
    scale = np.sum(sung["drums"] * plain["drums"]) / np.sum(plain["drums"] ** 2)
    for stem in ("drums", "bass", "other"):
        assert np.abs(sung[stem] - plain[stem] * scale).max() <= 1.5, stem
    assert np.abs(sung["vocals"] - plain["vocals"] * scale).max() > 1000


@needs_fluidsynth
def test_the_levers_are_recorded_in_synth_json_and_the_files_still_sum(tmp_path):
    root = tmp_path / "data"
    args = ["--procedural", 1, "--duration", 2, "--test-fraction", 0, "--valid-fraction", 0]
    args += ["--soundfont", SOUNDFONT, "--sample-rate", 16000, "--jobs", 1, "-q"]
    assert synth("--root", root, *args, "--mix-bus", "--dense-other", "--amp-guitars") == 0
    manifest = json.loads((root / "synth.json").read_text())
    settings = manifest["settings"]
    assert settings["mix_bus"] is settings["dense_other"] is settings["amp_guitars"] is True
    (track,) = manifest["tracks"]
    assert track["song"]["dense"] is True
    assert set(track["amp"]) == {"pre_eq", "drive", "tone", "cabinet"}
    assert set(track["mix_bus"]) == {"width", "compressor", "limiter"}
    audio = {name: sf.read(root / "train" / track["name"] / f"{name}.wav")[0] for name in SOURCES}
    mixture = sf.read(root / "train" / track["name"] / "mixture.wav")[0]
    assert np.array_equal(sum(audio.values()), mixture)
