"""The one-call Python API."""

import json
import signal

import numpy as np
import pytest
import soundfile
import torch

import umx
import umx.api
import umx.audio
from umx.audio import write_audio
from umx.modeldir import save_separator

TARGETS = ("vocals", "drums", "bass", "other")


@pytest.fixture(scope="module")
def separator(small_music_separator):
    return small_music_separator


def test_returns_named_stems_like_the_input(separator):
    audio = torch.randn(2, 16000) * 0.3
    stems = umx.separate(audio, 16000, model=separator, segment=None)
    assert list(stems) == list(TARGETS)
    for stem in stems.values():
        assert stem.shape == audio.shape
    torch.testing.assert_close(sum(stems.values()), audio, atol=1e-3, rtol=0)
    # the same as the Separator itself
    direct = separator.separate(audio[None], segment=None)
    torch.testing.assert_close(stems["drums"], direct[0, 1])


def test_other_rates_channels_and_batches(separator):
    # 1 s of mono at 24 kHz, band-limited so that it survives the trip to 16 kHz and back
    t = torch.arange(24000) / 24000
    mono = (0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.2 * torch.sin(2 * torch.pi * 3000 * t))[
        None
    ]
    stems = umx.separate(mono, 24000, model=separator)
    assert all(stem.shape == (1, 24000) for stem in stems.values())
    assert (sum(stems.values()) - mono)[:, 1000:-1000].abs().max() < 0.01
    batch = torch.randn(3, 2, 8000) * 0.3
    stems = umx.separate(batch, 16000, model=separator, aggregate={"acc": ["drums", "bass"]})
    assert list(stems) == ["acc"]
    assert stems["acc"].shape == (3, 2, 8000)


def test_model_directory(separator, tmp_path):
    save_separator(separator, tmp_path / "model")
    audio = torch.randn(2, 8000) * 0.3
    stems = umx.separate(
        audio, 16000, model=tmp_path / "model", targets=["vocals"], residual="rest"
    )
    assert list(stems) == ["vocals", "rest"]
    torch.testing.assert_close(stems["vocals"] + stems["rest"], audio, atol=1e-4, rtol=0)


def test_options_of_a_given_separator_are_not_ignored(separator):
    with pytest.raises(umx.UmxError, match="load_separator"):
        umx.separate(torch.randn(2, 8000), 16000, model=separator, niter=0)


def test_bad_shape():
    with pytest.raises(umx.UmxError, match="nb_channels"):
        umx.separate(torch.randn(10), 16000, model="umxl")


def test_aggregate_json_longer_than_a_file_name_parses():
    groups = {f"group{i:03d}": ["vocals", "drums"] for i in range(40)}
    text = json.dumps(groups)
    assert len(text.encode()) > 1000  # far beyond the 255 bytes of a file name
    assert umx.api.parse_aggregate(text) == groups


def test_aggregate_from_a_file(tmp_path):
    path = tmp_path / "groups.json"
    path.write_text('{"acc": ["drums", "bass"]}')
    assert umx.api.parse_aggregate(str(path)) == {"acc": ["drums", "bass"]}


def test_mono_model_separates_stereo_into_stereo_stems():
    """A one-channel model on a stereo mixture (umxse's case): stereo stems, each channel its
    own, equal to the Separator's own result."""
    torch.manual_seed(0)
    models = {t: umx.OpenUnmix(257, 1, 8, max_bin=200).freeze() for t in ("speech", "noise")}
    separator = umx.Separator(models, sample_rate=16000, n_fft=512, n_hop=128, nb_channels=1)
    audio = torch.randn(2, 16000) * 0.3
    stems = umx.separate(audio, 16000, model=separator, segment=None)
    assert all(stem.shape == (2, 16000) for stem in stems.values())
    direct = separator.separate(audio[None], segment=None)[0]
    torch.testing.assert_close(stems["speech"], direct[0])
    assert (stems["speech"][0] - stems["speech"][1]).abs().max() > 0.05


@pytest.mark.parametrize(
    ("filename", "names", "shown"),
    [
        ("../{target}.wav", ["vocals"], "for song.wav and stem 'vocals'"),
        ("{target}/x.wav", [".."], "for song.wav and stem '..'"),
    ],
)
def test_a_path_outside_outdir_names_the_stem(filename, names, shown):
    """The message names the stem itself, not the text `{name!r}` (an f-string was missing)."""
    with pytest.raises(umx.UmxError) as caught:
        umx.api.output_paths("song.wav", names, "out", filename)
    assert shown in str(caught.value) and "{" not in str(caught.value).replace(filename, "")


def test_input_shorter_than_one_sample_at_the_model_rate_is_refused(separator, tmp_path):
    """One frame at 192 kHz is no sample at 16 kHz: it gave stems of 0 frames, exit 0."""
    song = tmp_path / "one.wav"
    write_audio(song, torch.full((2, 1), 0.1), 192000)
    for match_input in (False, True):
        with pytest.raises(umx.UmxError) as error:
            umx.api.separate_file(song, separator, outdir=tmp_path / "out", match_input=match_input)
        assert str(error.value) == (
            f"{song} is too short: 1 frame at 192000 Hz is less than one sample at the model's "
            "rate (16000 Hz)"
        )
    assert not (tmp_path / "out").exists()
    # 12 frames at 192 kHz are one at 16 kHz: separated, as long as the input
    stems = umx.separate(torch.full((2, 12), 0.1), 192000, model=separator, segment=None)
    assert all(stem.shape == (2, 12) for stem in stems.values())


@pytest.mark.parametrize("segment", [None, 2.0])
def test_match_input_stems_are_as_long_as_the_input(separator, tmp_path, segment):
    """240001 frames at 48 kHz are 80000 at 16 kHz, which come back as 240000: the stems
    written were a frame short, where `umx.separate`'s had the input's length."""
    audio = 0.1 * torch.randn(1, 240001, generator=torch.Generator().manual_seed(0))
    song = tmp_path / "song.wav"
    write_audio(song, audio, 48000, subtype="FLOAT")
    out, chunks = tmp_path / f"out{segment}", {"segment": segment, "overlap": 0.5}
    umx.api.separate_file(song, separator, outdir=out, subtype="FLOAT", match_input=True, **chunks)
    expected = umx.separate(audio, 48000, model=separator, **chunks)
    for target, stem in expected.items():
        written, rate = soundfile.read(out / "song" / f"{target}.wav", dtype="float32")
        assert rate == 48000 and written.shape == (240001,)
        torch.testing.assert_close(torch.from_numpy(written)[None], stem, atol=1e-5, rtol=0)


def test_numpy_scalars_are_numbers(separator):
    """`np.int64(44100)` was refused: "rate must be a number, not np.int64(44100)"."""
    audio = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    expected = umx.separate(audio, 16000, model=separator, segment=None)
    stems = umx.separate(audio, np.int64(16000), model=separator, segment=None)
    torch.testing.assert_close(stems["vocals"], expected["vocals"])
    chunked = umx.separate(audio, 16000, model=separator, segment=np.float64(0.5), overlap=0.0)
    assert chunked["vocals"].shape == audio.shape
    with pytest.raises(umx.UmxError, match=r"^rate must be a number, not np\.True_$"):
        umx.separate(audio, np.bool_(True), model=separator)
    with pytest.raises(umx.UmxError, match=r"^--niter must be a whole number, not np\.float64"):
        umx.separate(audio, 16000, model="umxsynth", niter=np.float64(1))


def test_a_missing_gpu_is_one_line(separator, monkeypatch):
    """`device="cuda"` without one was an AssertionError from torch."""
    monkeypatch.setattr(torch.version, "cuda", "12.1")  # a CUDA build, on a machine without GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", torch.device("cuda", 0)):
        with pytest.raises(umx.UmxError, match="no CUDA GPU is available"):
            umx.separate(torch.zeros(2, 1600), 16000, model="umxsynth", device=device)
    with pytest.raises(umx.UmxError, match=r"^unknown device 'tpu'"):
        umx.separate(torch.zeros(2, 1600), 16000, model=separator, device="tpu")


def test_a_separator_is_not_moved_to_another_device(separator, monkeypatch):
    """A device given with a Separator was ignored: the one it is on is taken, another refused."""
    audio = 0.1 * torch.randn(2, 1600, generator=torch.Generator().manual_seed(0))
    assert umx.separate(audio, 16000, model=separator, device="cpu")["vocals"].shape == (2, 1600)
    monkeypatch.setattr(umx.api, "resolve_device", lambda name: torch.device("cuda", 1))
    with pytest.raises(umx.UmxError) as error:
        umx.separate(audio, 16000, model=separator, device="cuda:1")
    assert str(error.value) == (
        "device 'cuda:1' given with a Separator on cpu: move it with separator.to(device), or "
        "leave device out"
    )
    assert separator.device == torch.device("cpu")


def test_an_extension_in_the_template_and_another_ext_contradict():
    """`--ext flac --filename '{track}/{target}.wav'` wrote WAV files, ignoring --ext."""
    with pytest.raises(umx.UmxError) as error:
        umx.api.output_paths("song.wav", ["vocals"], "out", "{track}/{target}.wav", "flac")
    assert str(error.value) == (
        "--filename '{track}/{target}.wav' gives .wav files, but --ext is flac: end the template "
        "with .{ext}, or leave out --ext"
    )
    paths = umx.api.output_paths("song.wav", ["vocals"], "out", "{track}/{target}.flac")
    assert paths["vocals"].suffix == ".flac"  # the default ext: the template chooses
    paths = umx.api.output_paths("song.wav", ["vocals"], "out", "{target}.{ext}", "mp3")
    assert paths["vocals"].suffix == ".mp3"


def test_a_broken_link_as_outdir_is_named(tmp_path):
    """It said "cannot create output directory dangling/song: File exists"."""
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(umx.UmxError) as error:
        umx.api.check_outdir(tmp_path / "dangling")
    assert str(error.value) == (
        f"--outdir {tmp_path / 'dangling'} is a broken symbolic link (to {tmp_path / 'nowhere'}): "
        "remove it, or give another folder"
    )


def test_a_stop_while_the_stems_are_put_in_place_leaves_all_of_them_or_none(
    separator, tmp_path, monkeypatch
):
    """Ctrl-C after the first stem was renamed into place left it alone, and the next run was
    refused for it (it already exists); now the stop waits for the last rename."""
    song = tmp_path / "song.wav"
    write_audio(
        song, 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(1)), 16000
    )
    commit = umx.audio.AudioWriter._commit

    def stopped_after_drums(writer):
        commit(writer)
        if writer.path.name == "drums.wav":  # the second of four, in either order
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(umx.audio.AudioWriter, "_commit", stopped_after_drums)
    with pytest.raises(KeyboardInterrupt):
        umx.api.separate_file(song, separator, outdir=tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "song").iterdir()) == sorted(
        f"{target}.wav" for target in TARGETS
    )
    monkeypatch.setattr(umx.audio.AudioWriter, "_complete", lambda writer: signal.raise_signal(2))
    with pytest.raises(KeyboardInterrupt):  # a stop before any rename: no stem at all
        umx.api.separate_file(song, separator, outdir=tmp_path / "none")
    assert not (tmp_path / "none").exists()
