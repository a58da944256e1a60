"""The levers of `umx synth` that make tracks sound produced: the Hydrogen drum sampler, the
formant singer and the per-stem effect chains.

The drum kits are built here, in ``tmp_path``; the end-to-end render needs the Debian packages
fluidsynth and timgm6mb-soundfont (CI installs them).
"""

import json
import math
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import freqz

from umx.defaults import SOURCES
from umx.errors import UmxError
from umx.synth.midi import Song, note, tempo_event
from umx.synth.plan import SongRef, plan_tracks
from umx.synth.production import (
    apply_chain,
    biquad,
    chorus,
    compress,
    draw_production,
    overdrive,
    reverb_response,
)
from umx.synth.render import render_track
from umx.synth.sampler import choose_layer, load_kit, play_drums
from umx.synth.singer import melody, sing

RATE = 8000
SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
needs_fluidsynth = pytest.mark.skipif(
    not (shutil.which("fluidsynth") and SOUNDFONT.is_file()) and not os.environ.get("CI"),
    reason="needs the Debian packages fluidsynth and timgm6mb-soundfont",
)


def write_kit(folder: Path, instruments: dict[str, list[tuple[float, float, float]]]) -> Path:
    """A Hydrogen kit in ``folder``: ``{name: [(min, max, sample value)]}``, each layer a
    100-sample constant mono wav at 8 kHz, so a hit shows which layer played it."""
    folder.mkdir(parents=True, exist_ok=True)
    xml = ['<drumkit_info xmlns="http://www.hydrogen-music.org/drumkit"><name>tiny</name>']
    xml.append("<instrumentList>")
    for index, (name, layers) in enumerate(instruments.items()):
        xml.append(f"<instrument><id>{index}</id><name>{name}</name><gain>1</gain>")
        xml.append("<instrumentComponent>")
        for number, (low, high, value) in enumerate(layers):
            filename = f"{name}-{number}.wav"
            sf.write(folder / filename, np.full(100, value), RATE, subtype="FLOAT")
            xml.append(
                f"<layer><filename>{filename}</filename><min>{low}</min><max>{high}</max>"
                "<gain>1</gain></layer>"
            )
        xml.append("</instrumentComponent></instrument>")
    xml.append("</instrumentList></drumkit_info>")
    (folder / "drumkit.xml").write_text("\n".join(xml))
    return folder


KIT = {
    "Kick": [(0.0, 0.5, 0.25), (0.5, 1.0, 0.75)],
    "Snare": [(0.0, 1.0, 0.5)],
    "Hat Closed": [(0.0, 1.0, 0.125)],
}


def drum_song(hits: list[tuple[int, int, int]]) -> Song:
    """Channel 10 notes ``(tick, key, velocity)`` at 120 bpm, 480 ticks per beat."""
    events = [tempo_event(0, 500_000)]
    for tick, key, velocity in hits:
        events += note(tick, 9, key, velocity, 60)
    events.sort(key=lambda event: event.tick)
    return Song(480, events, end_tick=4 * 480)


# --- the drum sampler -----------------------------------------------------------------------------


def test_sampler_places_each_hit_at_its_note_with_the_layer_of_its_velocity(tmp_path):
    kit = load_kit(write_kit(tmp_path / "kit", KIT))
    assert sorted(kit.instruments) == ["hat_closed", "kick", "snare"]
    song = drum_song([(480, 36, 32), (960, 36, 127), (1440, 42, 127)])  # beats 1, 2 and 3
    out = play_drums(song, kit, 2 * RATE, RATE, seed=0)
    mono = np.sqrt(np.sum(out**2, axis=0) / 2)  # a constant-power balance keeps the power
    starts = np.flatnonzero(np.diff(np.concatenate([[0.0], np.abs(out[0]) > 0]).astype(int)) == 1)
    assert list(starts) == [RATE // 2, RATE, 3 * RATE // 2]  # 0.5 s per beat
    assert np.count_nonzero(out[0]) == 300
    # the soft kick plays the soft layer (0.25) scaled by its velocity; the hard one the hard layer
    soft, hard = mono[RATE // 2 + 50], mono[RATE + 50]
    assert soft / (32 / 127) == pytest.approx(0.25, rel=0.15)
    assert hard / (127 / 127) == pytest.approx(0.75, rel=0.15)
    assert np.array_equal(out, play_drums(song, kit, 2 * RATE, RATE, seed=0))


def test_choose_layer_draws_among_overlapping_layers_and_falls_back_to_the_nearest(tmp_path):
    kit = load_kit(write_kit(tmp_path / "kit", {**KIT, "Snare": [(0, 1, 0.1), (0, 1, 0.2)]}))
    rng = random.Random(0)
    snares = kit.instruments["snare"][0]
    assert {choose_layer(snares, 100, rng).path.name for _ in range(40)} == {
        "Snare-0.wav",
        "Snare-1.wav",
    }
    gap = load_kit(write_kit(tmp_path / "gap", {**KIT, "Kick": [(0.6, 1.0, 0.7)]}))
    assert choose_layer(gap.instruments["kick"][0], 10, rng).path.name == "Kick-0.wav"


@needs_fluidsynth
def test_a_kit_that_is_not_one_is_named_as_given_with_a_clean_reason(tmp_path, monkeypatch, capsys):
    from umx.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "drumkit.xml").write_text("<drumkit_info")
    args = ["synth", "--root", "data", "--procedural", "1", "--soundfont", str(SOUNDFONT)]
    refusals = {
        "nothere": "umx: error: --drum-kits nothere does not exist: give the folder of a Hydrogen "
        "drum kit, which holds its drumkit.xml",
        "empty": "umx: error: empty is not a Hydrogen drum kit: it holds no drumkit.xml",
        "broken": "umx: error: broken is not a Hydrogen drum kit (drumkit.xml: unclosed token: "
        "line 1, column 0)",
    }
    for kit, refusal in refusals.items():
        assert main([*args, "--drum-kits", kit]) == 1
        assert capsys.readouterr().err == refusal + "\n"
    assert not (tmp_path / "data").exists()


def test_a_pedal_hat_falls_back_to_the_closed_hat_and_unknown_notes_are_left_out(tmp_path):
    kit = load_kit(write_kit(tmp_path / "kit", KIT))
    out = play_drums(drum_song([(0, 44, 127), (480, 81, 127)]), kit, RATE, RATE, seed=1)
    assert np.count_nonzero(out[0]) == 100  # the pedal hat played, the triangle (81) did not


def test_bad_kits_are_refused_with_their_name(tmp_path):
    with pytest.raises(UmxError, match="is not a Hydrogen drum kit"):
        load_kit(tmp_path)
    (tmp_path / "drumkit.xml").write_text("<drumkit_info")
    with pytest.raises(UmxError, match="is not a Hydrogen drum kit"):
        load_kit(tmp_path)
    no_snare = write_kit(tmp_path / "no-snare", {"Kick": KIT["Kick"], "Hat": KIT["Hat Closed"]})
    with pytest.raises(UmxError, match=r"no-snare/drumkit\.xml has no snare"):
        load_kit(no_snare)


OUT = " is not from 0 to 100"
IN = f" in <instrument>{OUT}"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "<gain>1</gain></layer>",
            "<gain>nan</gain></layer>",
            f"a <gain> of 'nan' in <layer>{OUT}",
        ),
        ("<name>Snare</name><gain>1</gain>", "<name>Snare</name><gain>1e300</gain>", "'1e300' in"),
        ("<name>Kick</name><gain>1</gain>", "<name>Kick</name><volume>-5</volume>", f"'-5'{IN}"),
        ("<min>0.0</min>", "<min>abc</min>", "a <min> of 'abc' in <layer> is not a number"),
        ("<max>1.0</max>", "<max>inf</max>", "a <max> of 'inf' in <layer> is not a number"),
        ("<filename>Kick-0.wav", "<filename>../kit/Kick-0.wav", "'../kit/Kick-0.wav' outside"),
        ("<filename>Kick-0.wav", "<filename>/etc/hostname", "names the sample '/etc/hostname'"),
    ],
)
def test_a_kit_with_a_value_out_of_range_is_refused_naming_it(tmp_path, old, new, message):
    kit = write_kit(tmp_path / "kit", KIT)
    xml = (kit / "drumkit.xml").read_text()
    assert old in xml
    (kit / "drumkit.xml").write_text(xml.replace(old, new, 1))
    with pytest.raises(UmxError) as error:
        load_kit(kit)
    assert str(error.value).startswith(f"{kit}/drumkit.xml")
    assert message in str(error.value)


@pytest.mark.parametrize("sample", ["text", "nan", "16-bit values"])
def test_a_sample_that_is_not_audio_stops_the_drums_naming_it(tmp_path, sample):
    kit = write_kit(tmp_path / sample, KIT)
    path = kit / "Snare-0.wav"
    if sample == "text":
        path.write_text("not audio")
    else:
        value = np.nan if sample == "nan" else 20000.0
        sf.write(path, np.full(100, value), RATE, subtype="FLOAT")
    with pytest.raises(UmxError, match=str(path)):
        play_drums(drum_song([(0, 38, 127)]), load_kit(kit), RATE, RATE, seed=0)


# --- the formant singer ---------------------------------------------------------------------------


def test_melody_is_the_top_line():
    events = [tempo_event(0, 500_000)]
    for key in (60, 64, 67):  # a chord on beat 0, for 2 beats
        events += note(0, 0, key, 90, 960)
    events += note(480, 0, 72, 90, 240)  # a higher note in the middle of it
    events += note(960, 0, 62, 90, 480)
    events.sort(key=lambda event: event.tick)
    line = melody(Song(480, events, end_tick=1920))
    assert [(round(start, 3), round(end, 3), key) for start, end, key, _ in line] == [
        (0.0, 0.5, 67),
        (0.5, 0.75, 72),
        (1.0, 1.5, 62),
    ]


@pytest.mark.parametrize("key", [57, 64, 72])
def test_the_singer_sings_the_notes_pitch(key):
    events = [tempo_event(0, 500_000), *note(0, 0, key, 100, 4 * 480)]
    rate = 16000
    voice = sing(Song(480, events, end_tick=4 * 480), 2 * rate, rate, seed=key)
    assert voice.shape == (2, 2 * rate) and np.array_equal(voice[0], voice[1])
    middle = voice[0, rate // 2 : 3 * rate // 2]  # a second of the held note, vibrato included
    correlation = np.correlate(middle, middle, "full")[len(middle) - 1 :]
    expected = 440 * 2 ** ((key - 69) / 12)
    low, high = int(rate / expected / 1.3), int(rate / expected * 1.3)
    period = low + np.argmax(correlation[low:high])
    assert 12 * abs(math.log2(rate / period / expected)) < 0.5  # within half a semitone


def test_the_singer_is_silent_without_notes():
    assert not sing(Song(480, [tempo_event(0, 500_000)], end_tick=480), 1000, RATE, 0).any()


# --- the effect chains ----------------------------------------------------------------------------


def gain_db(b: np.ndarray, a: np.ndarray, frequency: float, rate: int) -> float:
    _, response = freqz(b, a, worN=[frequency], fs=rate)
    return 20 * math.log10(abs(response[0]))


def test_equaliser_bands_boost_and_cut_where_they_say():
    rate = 44100
    assert gain_db(*biquad("lowshelf", 200, 6.0, 0.7, rate), 20, rate) == pytest.approx(6, abs=0.1)
    assert gain_db(*biquad("lowshelf", 200, 6.0, 0.7, rate), 8000, rate) == pytest.approx(
        0, abs=0.1
    )
    assert gain_db(*biquad("bell", 1000, -5.0, 1.0, rate), 1000, rate) == pytest.approx(
        -5, abs=0.01
    )
    assert gain_db(*biquad("highshelf", 5000, 4.0, 0.7, rate), 20000, rate) == pytest.approx(
        4, abs=0.2
    )
    assert gain_db(*biquad("bandpass", 2000, 0.0, 2.0, rate), 2000, rate) == pytest.approx(
        0, abs=0.01
    )
    assert gain_db(*biquad("lowpass", 2000, 0.0, 0.707, rate), 8000, rate) < -20


def test_compressor_reduces_the_loud_part_by_the_ratio():
    rate = 8000
    times = np.arange(2 * rate) / rate
    level = np.where(times < 1, 0.1, 1.0)  # 20 dB louder in the second half
    audio = np.stack([np.sin(2 * math.pi * 200 * times) * level] * 2)
    out = compress(
        audio, threshold_db=-10.0, ratio=4.0, attack=0.005, release=0.02, sample_rate=rate
    )
    assert np.all(np.abs(out) <= np.abs(audio) + 1e-12)
    quiet = np.abs(out[0, 2000:6000]).max() / 0.1
    loud = np.abs(out[0, 12000:]).max()
    assert quiet == pytest.approx(1.0, abs=0.01)  # below the threshold: untouched
    # 10 dB above the threshold, 3/4 of it taken off: -7.5 dB
    assert 20 * math.log10(loud) == pytest.approx(-7.5, abs=0.5)


def test_overdrive_adds_odd_harmonics():
    rate = 8000
    sine = np.stack([np.sin(2 * math.pi * 250 * np.arange(rate) / rate)] * 2)
    spectrum = np.abs(np.fft.rfft(overdrive(sine, 20.0, 3500.0, rate)[0]))
    clean = np.abs(np.fft.rfft(sine[0]))
    assert spectrum[750] / spectrum[250] > 0.1  # the third harmonic
    assert clean[750] / clean[250] < 1e-6


def test_chorus_adds_a_swept_copy():
    rate = 8000
    audio = np.stack([np.sin(2 * math.pi * 50 * np.arange(rate) / rate)] * 2)
    assert np.array_equal(chorus(audio, 1.0, 0.002, 0.0, rate), audio)
    wet = (chorus(audio, 1.0, 0.002, 0.5, rate) - audio)[:, 100:]
    assert not np.allclose(wet[0], wet[1])  # the channels are swept in quadrature
    assert np.abs(wet).max() == pytest.approx(0.5, abs=0.01)  # the copy, at half the level


@pytest.mark.parametrize("family", ["noise", "schroeder"])
def test_reverb_decays_by_its_rt60(family):
    rate = 8000
    room = {"family": family, "rt60": 0.5, "predelay": 0.01, "damping": 3000, "seed": 1}
    response = reverb_response(room, rate)
    assert response.shape == (2, round(0.6 * rate) + 80)
    assert not response[:, :79].any()  # the predelay
    assert np.sum(response**2, axis=1) == pytest.approx([1, 1])
    energy = [np.sum(response[0, start : start + 800] ** 2) for start in (400, 2400)]
    # 0.25 s later, 30 dB of the 60 dB decay (within a few dB: the noise and the combs)
    assert 10 * math.log10(energy[0] / energy[1]) == pytest.approx(30, abs=6)


def test_a_chain_keeps_the_length_and_changes_the_signal():
    rate = 8000
    settings = draw_production(random.Random(4), SOURCES, "noise")
    assert json.loads(json.dumps(settings)) == settings
    audio = np.random.default_rng(0).standard_normal((2, rate)) * 0.1
    for stem in SOURCES:
        out = apply_chain(audio, settings["stems"][stem], settings["room"], rate)
        assert out.shape == audio.shape and np.isfinite(out).all()
        assert not np.allclose(out, audio)


# --- planning and rendering -----------------------------------------------------------------------


def test_plans_hold_out_the_test_kit_and_reverb_and_stay_unchanged_without_levers(tmp_path):
    songs = [SongRef(f"p{index}", seed=index, min_seconds=20) for index in range(10)]
    fonts = {"train": [Path("a.sf2")], "valid": [Path("a.sf2")], "test": [Path("b.sf2")]}
    kits = {"train": [Path("k1"), Path("k2")], "valid": [Path("k1")], "test": [Path("k3")]}
    args = {"seed": 1, "duration": 4, "excerpts": 2, "test_fraction": 0.2}
    plain = plan_tracks(songs, fonts, **args)
    produced = plan_tracks(songs, fonts, **args, drum_kits=kits, production=True, sung=True)
    assert all(plan.drum_kit is None and plan.production is None for plan in plain)
    for before, after in zip(plain, produced, strict=True):
        assert (before.start, before.gains_db) == (after.start, after.gains_db)
        held_out = after.split == "test"
        assert after.drum_kit in ([None, "k3"] if held_out else [None, "k1", "k2"])
        assert after.production["room"]["family"] == ("schroeder" if held_out else "noise")
    assert {plan.drum_kit for plan in produced if plan.split == "train"} == {None, "k1", "k2"}
    assert 0 < sum(plan.sung > 0 for plan in produced) < len(produced)
    with pytest.raises(
        UmxError,
        match=r"drum kit k1 is used for both training and testing: the "
        r"test split must sound new to a model, so give it another drum kit$",
    ):
        plan_tracks(songs, fonts, **args, drum_kits={**kits, "test": [Path("k1")]})


@needs_fluidsynth
def test_a_produced_track_sums_exactly_to_its_mixture(tmp_path):
    kit = write_kit(tmp_path / "kit", KIT)
    songs = [SongRef("p", seed=5, min_seconds=12)]
    fonts = {"train": [SOUNDFONT], "valid": [], "test": []}
    plan = plan_tracks(
        songs, fonts, seed=2, duration=3, test_fraction=0, valid_fraction=0,
        drum_kits={"train": [kit]}, production=True, sung=True,
    )[0]  # fmt: skip
    plan = type(plan)(**{**plan.__dict__, "drum_kit": str(kit), "sung": 0.8})
    tracks = render_track(plan, 3.0, 22050)
    assert tracks is not None and tracks["mixture"].shape == (3 * 22050, 2)
    total = sum(tracks[stem].astype(np.int32) for stem in SOURCES)
    assert np.array_equal(total, tracks["mixture"])
    for stem in SOURCES:
        assert np.abs(tracks[stem]).max() > 100, stem
    plain = render_track(type(plan)(**{**plan.__dict__, "production": None}), 3.0, 22050)
    assert not np.array_equal(plain["other"], tracks["other"])  # the effects changed it
    assert np.array_equal(tracks["drums"], render_track(plan, 3.0, 22050)["drums"])
