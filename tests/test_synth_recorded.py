"""`umx synth --other-samples`: recorded sounds layered into the `other` stem.

The end-to-end render needs the Debian packages fluidsynth and timgm6mb-soundfont (CI installs
them). The recorded sounds are files the tests write.
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

from umx.defaults import SOURCES
from umx.errors import UmxError
from umx.synth.options import add_synth_arguments, run_synth
from umx.synth.plan import SongRef, plan_tracks
from umx.synth.recorded import MAX_SECONDS, draw_layer, find_samples, play_layer
from umx.synth.render import render_track

RATE = 8000
SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
needs_fluidsynth = pytest.mark.skipif(
    not (shutil.which("fluidsynth") and SOUNDFONT.is_file()) and not os.environ.get("CI"),
    reason="needs the Debian packages fluidsynth and timgm6mb-soundfont",
)


def tone(path: Path, hz: float, seconds: float, rate: int = RATE, channels: int = 1) -> Path:
    """Writes a sine of ``hz`` (in every channel) and returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = 0.5 * np.sin(2 * math.pi * hz * np.arange(round(seconds * rate)) / rate)
    sf.write(path, np.stack([wave] * channels, axis=1), rate)
    return path


def sound(file: Path, **settings: float) -> dict:
    """One sound of a layer: unshifted, no gap, from its start, centred, at 0 dB."""
    plain = {"file": str(file), "shift": 0, "gap": 0.0, "offset": 0.0, "pan": 0.0, "gain_db": 0.0}
    return plain | settings


def peak_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * rate / len(audio))


@pytest.mark.parametrize("file_rate", [RATE, 2 * RATE])
def test_a_sound_is_shifted_by_resampling_and_repeated_after_its_gap(tmp_path, file_rate):
    file = tone(tmp_path / "a.wav", 440, 0.4, rate=file_rate)
    layer = {"share": 0.5, "sounds": [sound(file, shift=12, gap=0.3)]}
    out = play_layer(layer, 2 * RATE, RATE)
    assert out.shape == (2, 2 * RATE) and np.allclose(out[0], out[1])  # centred: equal
    play, period = round(0.2 * RATE), round(0.2 * RATE) + round(0.3 * RATE)  # an octave up
    assert peak_hz(out[0, :play], RATE) == pytest.approx(880, abs=RATE / play)
    for start in range(0, 2 * RATE, period):
        assert np.sqrt(np.mean(out[0, start + 20 : start + play - 20] ** 2)) > 0.9  # levelled
        assert not out[:, start + play + 5 : min(start + period - 5, 2 * RATE)].any()  # the gap
    assert np.abs(out[:, 0]).max() < 0.01  # faded in: no click


def test_pan_gain_offset_and_stereo_files(tmp_path):
    mono = tone(tmp_path / "mono.wav", 300, 0.5)
    left = play_layer({"sounds": [sound(mono, pan=-1.0, gain_db=-6.0)]}, RATE, RATE)
    assert not left[1].any() and np.sqrt(np.mean(left[0, 100:3900] ** 2)) == pytest.approx(
        math.sqrt(2) * 10 ** (-6 / 20), rel=0.01
    )
    whole = play_layer({"sounds": [sound(mono)]}, RATE, RATE)
    late = play_layer({"sounds": [sound(mono, offset=0.5)]}, RATE, RATE)
    assert np.allclose(late[:, : RATE // 4], whole[:, RATE // 4 : RATE // 2])  # starts midway
    stereo = tmp_path / "stereo.flac"
    sf.write(stereo, np.stack([np.ones(RATE) * 0.5, np.zeros(RATE)], axis=1), RATE)
    out = play_layer({"sounds": [sound(stereo)]}, RATE, RATE)
    assert out[0, RATE // 2] > 0 and not out[1].any()  # its channels kept
    sf.write(tmp_path / "silent.wav", np.zeros(RATE), RATE)
    assert not play_layer({"sounds": [sound(tmp_path / "silent.wav")]}, RATE, RATE).any()
    sf.write(tmp_path / "nan.wav", np.full(RATE, np.nan), RATE, subtype="FLOAT")
    with pytest.raises(UmxError, match=r"nan\.wav holds samples that are not finite numbers"):
        play_layer({"sounds": [sound(tmp_path / "nan.wav")]}, RATE, RATE)


def test_layers_are_drawn_reproducibly_as_json():
    samples = ["a.wav", "b.wav", "c.flac"]
    layers = [draw_layer(random.Random(seed), samples) for seed in range(200)]
    assert layers == [draw_layer(random.Random(seed), samples) for seed in range(200)]
    drawn = [layer for layer in layers if layer is not None]
    assert 0.6 < len(drawn) / len(layers) < 0.8
    assert all(json.loads(json.dumps(layer)) == layer for layer in drawn)
    files = {s["file"] for layer in drawn for s in layer["sounds"]}
    assert files == set(samples)
    assert {len(layer["sounds"]) for layer in drawn} == {1, 2}
    assert draw_layer(random.Random(0), []) is None


FONTS = {"train": [Path("a.sf2")], "valid": [Path("a.sf2")], "test": [Path("b.sf2")]}
PLAN_ARGS = {"seed": 1, "duration": 4, "excerpts": 2, "test_fraction": 0.2}


def test_plans_draw_each_split_s_sounds_and_are_otherwise_unchanged():
    songs = [SongRef(f"p{index}", seed=index, min_seconds=20) for index in range(10)]
    sounds = {"train": [Path("t.wav")], "valid": [Path("t.wav")], "test": [Path("x.wav")]}
    plain = plan_tracks(songs, FONTS, **PLAN_ARGS, production=True)
    layered = plan_tracks(songs, FONTS, **PLAN_ARGS, production=True, other_samples=sounds)
    assert all(plan.recorded is None for plan in plain)
    for before, after in zip(plain, layered, strict=True):
        assert after.__dict__ | {"recorded": None} == before.__dict__
        if after.recorded is not None:
            expected = "x.wav" if after.split == "test" else "t.wav"
            assert {s["file"] for s in after.recorded["sounds"]} == {expected}
    assert any(plan.recorded for plan in layered if plan.split == "test")
    shared = {"train": [Path("t.wav")], "valid": [], "test": [Path("t.wav")]}
    with pytest.raises(UmxError, match=r"recorded sound t\.wav is used for both training"):
        plan_tracks(songs, FONTS, **PLAN_ARGS, other_samples=shared)


def test_sample_folders_are_searched_and_bad_files_refused(tmp_path):
    a = tone(tmp_path / "pack" / "a.wav", 200, 0.1)
    b = tone(tmp_path / "pack" / "sub" / "b.flac", 200, 0.1)
    (tmp_path / "pack" / "notes.txt").write_text("not audio")
    os.mkfifo(tmp_path / "pack" / "pipe.wav")  # a special file is skipped, never opened
    assert find_samples([tmp_path / "pack", a]) == [a.resolve(), b.resolve()]  # once each
    (tmp_path / "empty").mkdir()
    (tmp_path / "fake.wav").write_text("not audio")
    sf.write(tmp_path / "none.wav", np.zeros((0, 1)), RATE)
    long = tone(tmp_path / "long.wav", 1, MAX_SECONDS + 1, rate=100)
    for path, message in [
        (tmp_path / "missing", "recorded sound or folder .*missing not found"),
        (tmp_path / "pack" / "pipe.wav", "pipe.wav is not a regular file: give a file or a"),
        (tmp_path / "empty", "empty holds no recorded sound"),
        (tmp_path / "fake.wav", "fake.wav is not an audio file soundfile reads"),
        (tmp_path / "none.wav", "none.wav lasts 0 s; recorded sounds last 0.01 to 60 s"),
        (long, "long.wav lasts 61 s; recorded sounds last 0.01 to 60 s"),
    ]:
        with pytest.raises(UmxError, match=message):
            find_samples([path])


def synth(*argv: object) -> int:
    """Runs `umx synth` with these arguments, as the CLI does."""
    parser = argparse.ArgumentParser()
    add_synth_arguments(parser)
    return run_synth(parser.parse_args([str(arg) for arg in argv]))


@needs_fluidsynth
def test_a_layered_track_changes_only_other_and_still_sums(tmp_path):
    pack = tmp_path / "pack"
    tone(pack / "a.wav", 523, 0.7)
    tone(pack / "b.wav", 330, 1.1, rate=22050, channels=2)
    songs = [SongRef("p", seed=5, min_seconds=12)]
    fonts = {"train": [SOUNDFONT], "valid": [], "test": []}
    args = {"seed": 2, "duration": 3, "test_fraction": 0, "valid_fraction": 0}
    sounds = {"train": find_samples([pack]), "valid": [], "test": []}
    for seed in range(2, 12):  # the first seed whose track gets a layer
        args["seed"] = seed
        layered_plan = plan_tracks(songs, fonts, **args, other_samples=sounds)[0]
        if layered_plan.recorded:
            break
    plain = render_track(plan_tracks(songs, fonts, **args)[0], 3.0, 16000)
    layered = render_track(layered_plan, 3.0, 16000)
    assert np.array_equal(sum(layered[s].astype(np.int32) for s in SOURCES), layered["mixture"])
    plain, layered = ({s: t[s].astype(float) for s in SOURCES} for t in (plain, layered))
    scale = np.sum(layered["drums"] * plain["drums"]) / np.sum(plain["drums"] ** 2)
    for stem in ("vocals", "drums", "bass"):  # the same audio, at the track's new peak level
        assert np.abs(layered[stem] - plain[stem] * scale).max() <= 1.5, stem
    assert np.abs(layered["other"] - plain["other"] * scale).max() > 1000


@needs_fluidsynth
def test_the_command_records_the_sounds_and_refuses_a_shared_one(tmp_path):
    pack = tmp_path / "pack"
    train, test = tone(pack / "train.wav", 440, 0.5), tone(tmp_path / "test.wav", 660, 0.5)
    args = ["--procedural", 4, "--duration", 2, "--test-fraction", 0.25, "--valid-fraction", 0]
    copy = tmp_path / "test.sf2"  # another soundfont for the test split: not a byte-identical copy
    data = SOUNDFONT.read_bytes()
    name = data.index(b"INAM") + 8  # the INFO chunk's name
    copy.write_bytes(data[:name] + b"X" + data[name + 1 :])
    args += ["--soundfont", SOUNDFONT, "--test-soundfont", copy]
    args += ["--sample-rate", 16000, "--jobs", 1, "-q"]
    shared = ["--other-samples", pack, "--test-other-samples", train]
    with pytest.raises(UmxError, match="used for both training and testing"):
        synth("--root", tmp_path / "d", *args, *shared)
    assert not (tmp_path / "d").exists()
    for seed in range(10):  # until a seed gives tracks with a layer in both splits
        root = tmp_path / f"data{seed}"
        sounds = ["--other-samples", pack, "--test-other-samples", test]
        assert synth("--root", root, *args, *sounds, "--seed", seed) == 0
        manifest = json.loads((root / "synth.json").read_text())
        assert manifest["settings"]["other_samples"] == [str(pack)]
        assert manifest["settings"]["test_other_samples"] == [str(test)]
        layered = [track for track in manifest["tracks"] if track["recorded"]]
        for track in layered:
            expected = test if track["split"] == "test" else train
            assert {s["file"] for s in track["recorded"]["sounds"]} == {str(expected.resolve())}
        if {track["split"] for track in layered} == {"train", "test"}:
            break
    else:
        pytest.fail("no seed gave a layer to both splits")
