"""The levers of `umx synth` that bring tracks closer to records, each off by default: the mix
bus (``--mix-bus``) and denser `other` parts (``--dense-other``).

The end-to-end renders need the Debian packages fluidsynth and timgm6mb-soundfont (CI installs
them).
"""

import argparse
import json
import math
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from umx.synth.bus import apply_bus, draw_bus, limiter_gain, widen
from umx.synth.gm import STEMS
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


def test_drawn_buses_are_json_and_plans_without_the_bus_are_unchanged():
    settings = draw_bus(random.Random(3))
    assert json.loads(json.dumps(settings)) == settings
    songs = [SongRef(f"p{index}", seed=index, min_seconds=20) for index in range(6)]
    plain = plan_tracks(songs, FONTS, **PLAN_ARGS)
    produced = plan_tracks(songs, FONTS, **PLAN_ARGS, production=True)
    bussed = plan_tracks(songs, FONTS, **PLAN_ARGS, production=True, mix_bus=True)
    assert all(plan.mix_bus is None for plan in plain + produced)
    for before, after in zip(produced, bussed, strict=True):
        assert after.__dict__ | {"mix_bus": None} == before.__dict__
    assert len({json.dumps(plan.mix_bus) for plan in bussed}) == len(bussed)


@needs_fluidsynth
def test_a_bussed_track_sums_exactly_to_its_mixture():
    songs = [SongRef("p", seed=5, min_seconds=12)]
    fonts = {"train": [SOUNDFONT], "valid": [], "test": []}
    args = {"seed": 2, "duration": 3, "test_fraction": 0, "valid_fraction": 0}
    plan = plan_tracks(songs, fonts, **args, mix_bus=True)[0]
    plan = type(plan)(**{**plan.__dict__, "mix_bus": bus(ratio=3.0, width=0.0)})
    tracks = render_track(plan, 3.0, 22050)
    total = sum(tracks[stem].astype(np.int32) for stem in STEMS)
    assert np.array_equal(total, tracks["mixture"])
    for stem in ("mixture", *STEMS):  # width 0: every stem mono
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
    plain, dense = ({s: t[s].astype(float) for s in STEMS} for t in tracks)
    scale = np.sum(dense["drums"] * plain["drums"]) / np.sum(plain["drums"] ** 2)
    assert scale != pytest.approx(1.0, abs=0.01)  # the denser mixture peaks higher
    for stem in ("vocals", "drums", "bass"):  # the same audio, at the track's new peak level
        assert np.abs(dense[stem] - plain[stem] * scale).max() <= 1.5, stem
    assert np.abs(dense["other"] - plain["other"] * scale).max() > 1000


@needs_fluidsynth
def test_the_levers_are_recorded_in_synth_json_and_the_files_still_sum(tmp_path):
    root = tmp_path / "data"
    args = ["--procedural", 1, "--duration", 2, "--test-fraction", 0, "--valid-fraction", 0]
    args += ["--soundfont", SOUNDFONT, "--sample-rate", 16000, "--jobs", 1, "-q"]
    assert synth("--root", root, *args, "--mix-bus", "--dense-other") == 0
    manifest = json.loads((root / "synth.json").read_text())
    assert manifest["settings"]["mix_bus"] is manifest["settings"]["dense_other"] is True
    (track,) = manifest["tracks"]
    assert track["song"]["dense"] is True
    assert set(track["mix_bus"]) == {"width", "compressor", "limiter"}
    audio = {name: sf.read(root / "train" / track["name"] / f"{name}.wav")[0] for name in STEMS}
    mixture = sf.read(root / "train" / track["name"] / "mixture.wav")[0]
    assert np.array_equal(sum(audio.values()), mixture)
