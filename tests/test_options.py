"""Typed options (`umx.options`): checked once when built, then taken by the library as they are."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from umx.api import separate_file, separator_for
from umx.audio import write_audio
from umx.defaults import FALLBACK_MODEL
from umx.errors import UmxError
from umx.options import OutputOptions, SeparationOptions
from umx.zoo import load_separator


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"niter": -1}, "--niter"),
        ({"niter": 1.5}, "--niter"),
        ({"wiener_win_len": -3}, "^--wiener-win-len must be at least 0, not -3$"),
        ({"segment": math.nan}, "--segment"),
        ({"overlap": -0.5}, "--overlap"),
        (
            {"segment": 2.0, "overlap": 1.01},
            r"^--overlap \(1.01 s\) must be at most half of --segment \(2 s\), or every "
            "sample is separated many times over: give --overlap 1 or less$",
        ),
        ({"residual": "../rest"}, "--residual"),
        ({"backend": "tensorflow"}, "unknown backend"),
        ({"quantize": "int4"}, "int4"),
        ({"backend": "torch", "quantize": "int8"}, "leave out --backend torch"),
        ({"backend": "onnxruntime", "device": "cuda"}, "--backend onnxruntime"),
        ({"targets": "vocals"}, "targets must be a list of names, not the text 'vocals'"),
        ({"targets": ()}, "--targets is empty"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        # the text "false" is true in Python
        ({"whole_track": "no"}, "^--whole-track must be True or False, not 'no'$"),
        ({"softmask": "false"}, "^--softmask must be True or False, not 'false'$"),
        ({"model": 3}, "^--model must be a model name or folder, not 3$"),
    ],
)
def test_options_that_make_no_sense_are_refused_when_built(fields, message):
    with pytest.raises(UmxError, match=message):
        SeparationOptions(**fields)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"ext": "ogg"}, "--ext 'ogg' is no format umx writes: use wav, flac, mp3"),
        ({"subtype": "PCM_8"}, "--subtype 'PCM_8' is not one of wav's: use PCM_16, PCM_24, FLOAT"),
        ({"ext": "mp3", "subtype": "FLOAT"}, "is not one of mp3's"),
        # the template's own extension sets the format, so the subtype is checked against it
        (
            {"filename": "{track}/{target}.mp3", "subtype": "PCM_24"},
            "^--subtype 'PCM_24' is not one of mp3's, the format --filename sets: use "
            "MPEG_LAYER_III$",
        ),
        ({"filename": "{target}.flac", "subtype": "FLOAT", "clip": "none"}, "not one of flac's"),
        ({"filename": "{target}.mp3", "ext": "flac"}, "gives .mp3 files, but --ext is flac"),
        ({"clip": "wrap"}, "--clip 'wrap': use rescale or clamp"),
        ({"clip": "none"}, "none only with the FLOAT subtype"),
        ({"force": "false"}, "^--force must be True or False, not 'false'$"),
        ({"force": 0}, "^--force must be True or False, not 0$"),
        ({"outdir": None}, "^--outdir must be a path, not None$"),
        ({"filename": None}, "^--filename must be a text template, not None$"),
    ],
)
def test_output_options_that_make_no_sense_are_refused_when_built(fields, message):
    with pytest.raises(UmxError, match=message):
        OutputOptions(**fields)
    assert OutputOptions(clip="none", subtype="FLOAT").clip == "none"
    assert OutputOptions(filename="{target}.mp3", subtype="MPEG_LAYER_III").subtype  # mp3's own
    assert OutputOptions(outdir="out").outdir == Path("out")  # a path, whatever was given
    assert SeparationOptions(device="cuda:1").device == "cuda:1"  # a name: GPUs may be elsewhere


def test_options_are_normalised_and_the_backend_chosen_when_built():
    options = SeparationOptions(targets=["vocals", "drums"], wiener_win_len=0, whole_track=True)
    assert options.targets == ("vocals", "drums")
    assert options.wiener_win_len is None  # 0: the whole segment, as --wiener-win-len 0
    assert options.chunk_seconds is None  # --whole-track wins over --segment
    assert options.backend == "torch"
    assert SeparationOptions(segment=4.0).chunk_seconds == 4.0
    assert SeparationOptions(quantize="int8").backend == "onnxruntime"
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.niter = 3


def test_a_whole_track_needs_no_overlap_shorter_than_the_segment():
    assert SeparationOptions(segment=1.0, overlap=5.0, whole_track=True).chunk_seconds is None


def test_output_options_are_the_keyword_arguments_of_separate_file(tmp_path):
    options = OutputOptions(outdir=tmp_path, ext="flac", subtype="PCM_24", force=True)
    assert options.as_kwargs() == {
        "outdir": tmp_path,
        "filename": OutputOptions.filename,
        "ext": "flac",
        "subtype": "PCM_24",
        "clip": "rescale",
        "force": True,
    }


def test_separator_for_loads_the_model_with_the_options():
    options = SeparationOptions(
        model=FALLBACK_MODEL,
        targets=("vocals",),
        residual="rest",
        niter=0,
        softmask=True,
        wiener_win_len=50,
    )
    separator = separator_for(options, progress=False)
    assert separator.model_name == FALLBACK_MODEL
    assert separator.targets == ["vocals", "rest"]
    assert (separator.niter, separator.softmask, separator.wiener_win_len) == (0, True, 50)
    reference = load_separator(FALLBACK_MODEL, targets=["vocals"], progress=False)
    weights = separator.target_models["vocals"].state_dict()
    for name, value in reference.target_models["vocals"].state_dict().items():
        assert torch.equal(weights[name], value)


def test_force_given_as_text_does_not_overwrite_stems(tmp_path, small_music_separator):
    """`force="false"` was taken as true and replaced existing stems."""
    song, stem = tmp_path / "song.wav", tmp_path / "out" / "song" / "vocals.wav"
    write_audio(song, 0.1 * torch.randn(2, 16000), 16000)
    stem.parent.mkdir(parents=True)
    stem.write_bytes(b"keep me")
    with pytest.raises(UmxError, match="--force"):
        separate_file(
            song,
            small_music_separator,
            **OutputOptions(tmp_path / "out", force="false").as_kwargs(),
        )
    with pytest.raises(UmxError, match=r"^--force must be True or False, not 'no'$"):
        separate_file(song, small_music_separator, outdir=tmp_path / "out", force="no")
    assert stem.read_bytes() == b"keep me"


def test_every_option_says_its_default_at_most_once():
    from umx.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.choices and isinstance(a.choices, dict)]
    for name, command in commands.choices.items():
        for action in command._actions:
            assert (action.help or "").count("default:") <= 1, (name, action.help)


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(15.0, "15 s"), (0.5, "0.5 s"), (150.0, "2 min"), (3599.0, "60 min"), (11 * 3600, "11.0 h")],
)
def test_durations_read_in_their_unit(seconds, words):
    from umx.messages import duration

    assert duration(seconds) == words
