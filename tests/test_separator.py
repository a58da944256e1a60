"""Separator: reference compatibility, shapes, residual, aggregation and chunked processing."""

from pathlib import Path

import pytest
import torch

from umx.errors import UmxError
from umx.model import OpenUnmix
from umx.separator import Separator

REFERENCE = Path(__file__).parent / "data" / "reference.pt"
TARGETS = ("vocals", "drums", "bass", "other")


def reference_models(case):
    """The reference's target models, loaded from its state dicts (extra keys dropped)."""
    models = {}
    for target, state in case["state_dicts"].items():
        state = {k: v for k, v in state.items() if k != "sample_rate"}
        nb_bins = state["output_mean"].shape[0]
        max_bin = state["input_mean"].shape[0]
        hidden, width = state["fc1.weight"].shape
        model = OpenUnmix(nb_bins, width // max_bin, hidden, max_bin=max_bin)
        model.load_state_dict(state, strict=True)
        models[target] = model.freeze()
    return models


@pytest.mark.parametrize("name", ["stereo", "mono"])
def test_whole_track_mode_reproduces_the_reference(name):
    cases = torch.load(REFERENCE, weights_only=True)
    case = cases[name]
    config = case["config"]
    for key, expected in case["outputs"].items():
        niter, softmask, residual, win = eval(key)  # a tuple literal written by make_reference.py
        separator = Separator(
            reference_models(case),
            sample_rate=config["sample_rate"],
            n_fft=config["nfft"],
            n_hop=config["nhop"],
            nb_channels=config["nb_channels"],
            niter=niter,
            softmask=softmask,
            residual="residual" if residual else None,
            wiener_win_len=win,
        )
        got = separator.separate(case["audio"], segment=None)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() < 1e-4, key


def small_separator(nb_channels=2, residual=None, niter=1, seed=0, targets=TARGETS):
    torch.manual_seed(seed)
    models = {}
    for target in targets:
        model = OpenUnmix(257, nb_channels, 16, max_bin=200)
        with torch.no_grad():
            model.output_mean.uniform_(0.2, 0.8)
        models[target] = model.freeze()
    return Separator(
        models,
        sample_rate=8000.0,
        n_fft=512,
        n_hop=128,
        nb_channels=nb_channels,
        niter=niter,
        residual=residual,
        wiener_win_len=50,
    )


@pytest.mark.parametrize("nb_channels", [1, 2])
def test_output_shapes(nb_channels):
    separator = small_separator(nb_channels)
    audio = torch.randn(2, nb_channels, 8123)
    stems = separator.separate(audio, segment=None)
    assert stems.shape == (2, 4, nb_channels, 8123)
    assert separator.targets == list(TARGETS)


def test_stems_sum_to_the_mixture_with_a_residual():
    separator = small_separator(residual="accompaniment", niter=0, targets=("vocals",))
    audio = torch.randn(1, 2, 6000) * 0.5
    stems = separator.separate(audio, segment=None)
    assert separator.targets == ["vocals", "accompaniment"]
    named = separator.to_dict(stems)
    torch.testing.assert_close(named["accompaniment"], audio - named["vocals"], atol=1e-5, rtol=0)


def test_wiener_em_keeps_the_sum_close_to_the_mixture():
    separator = small_separator(niter=1)
    audio = torch.randn(1, 2, 8000) * 0.5
    stems = separator.separate(audio, segment=None)
    assert (stems.sum(dim=1) - audio).abs().max() < 1e-3


def test_aggregate_sums_groups():
    separator = small_separator()
    stems = separator.separate(torch.randn(1, 2, 4000), segment=None)
    named = separator.to_dict(stems)
    groups = separator.to_dict(
        stems, {"vocals": ["vocals"], "accompaniment": ["drums", "bass", "other"]}
    )
    assert set(groups) == {"vocals", "accompaniment"}
    aggregate = {"rest": ["drums", "bass", "other"], "vocals": ["vocals"]}
    assert separator.output_names(aggregate) == list(separator.to_dict(stems, aggregate))
    assert separator.output_names() == list(named) == separator.targets
    torch.testing.assert_close(
        groups["accompaniment"], named["drums"] + named["bass"] + named["other"]
    )
    with pytest.raises(UmxError, match="guitar"):
        separator.to_dict(stems, {"x": ["guitar"]})


def test_short_input_is_padded_and_cut_back():
    separator = small_separator()
    for length in (1, 100, 256, 257):
        assert separator.separate(torch.randn(1, 2, length), segment=None).shape[-1] == length


@pytest.mark.parametrize("nb_channels", [1, 2])
def test_one_target_em_gives_the_target_of_a_run_with_the_residual(nb_channels):
    """EM filters one target with the rest of the mixture, which only the residual run writes."""
    audio = torch.randn(1, nb_channels, 9000)
    one = small_separator(nb_channels, niter=2, targets=("vocals",))
    both = small_separator(nb_channels, residual="rest", niter=2, targets=("vocals",))
    assert one.targets == ["vocals"] and both.targets == ["vocals", "rest"]
    stems, with_rest = one.separate(audio, segment=None), both.separate(audio, segment=None)
    assert stems.shape == (1, 1, nb_channels, 9000)
    torch.testing.assert_close(stems, with_rest[:, :1], rtol=0, atol=1e-6)
    torch.testing.assert_close(with_rest.sum(dim=1), audio, rtol=0, atol=1e-4)
    # EM moved the estimate away from the model magnitudes with the mixture's phase
    plain = small_separator(nb_channels, niter=0, targets=("vocals",)).separate(audio, segment=None)
    assert (stems - plain).abs().max() > 0.01 * audio.abs().max()


@pytest.mark.parametrize("length", [8000 * 5, 8000 * 5 + 333, 3000])
def test_chunked_mode_close_to_whole_track(length):
    """Chunks see less LSTM context and their own Wiener blocks only near their edges.

    Measured here: relative error 1.5 % (2 s segments, 0.5 s overlap), 0.3 % (3 s, 1 s);
    before chunks were aligned to the Wiener blocks it was 4.7 % and 3.1 %.
    """
    separator = small_separator(niter=1)
    audio = torch.randn(1, 2, length) * 0.5
    whole = separator.separate(audio, segment=None)
    for (segment, overlap), tolerance in (((2.0, 0.5), 0.03), ((3.0, 1.0), 0.01)):
        chunked = separator.separate(audio, segment=segment, overlap=overlap)
        assert chunked.shape == whole.shape
        assert (chunked - whole).norm() / whole.norm() < tolerance
    # before the first cross-fade, in the first Wiener block, chunked equals whole closely
    head = slice(1000, 5000)
    assert (chunked[..., head] - whole[..., head]).norm() / whole[..., head].norm() < 0.005


def test_chunks_are_aligned_to_frames_and_wiener_blocks():
    separator = small_separator()  # n_hop 128, Wiener blocks of 50 frames = 6400 samples
    assert separator._chunk_step(30000) == 25600
    assert separator._chunk_step(6000) == 5888
    assert separator._chunk_step(100) == 100


def test_chunked_crossfade_is_exact_for_a_linear_system():
    """With the identity-like niter=0 residual split, every chunking gives exactly the mixture."""
    separator = small_separator(residual="rest", niter=0, targets=("vocals",))
    audio = torch.randn(1, 2, 8000 * 3 + 17)
    for segment, overlap in ((1.0, 0.25), (0.7, 0.0), (10.0, 1.0)):
        chunks = list(separator.iter_chunks(audio, segment, overlap))
        stems = torch.cat(chunks, dim=-1)
        torch.testing.assert_close(stems.sum(dim=1), audio, atol=1e-5, rtol=0)


def whole_tensor_chunks(separator, audio, segment, overlap):
    """The pieces of the chunk loop over a whole mixture tensor that umx ran before mixtures
    could be given block by block (`Separator.iter_blocks`)."""
    seg_len, ovl_len = (
        round(segment * separator.sample_rate),
        round(overlap * separator.sample_rate),
    )
    step = separator._chunk_step(seg_len - ovl_len)
    nb_timesteps, carry, pieces = audio.shape[-1], None, []
    fade_in = (torch.arange(ovl_len) + 0.5) / max(ovl_len, 1)
    with torch.inference_mode():
        for start in range(0, max(nb_timesteps - ovl_len, 1), step):
            end = min(start + step + ovl_len, nb_timesteps)
            chunk = separator._whole(audio[..., start:end])
            if carry is not None:
                chunk[..., :ovl_len] = chunk[..., :ovl_len] * fade_in + carry
            if end == nb_timesteps:
                return [*pieces, chunk]
            carry = chunk[..., chunk.shape[-1] - ovl_len :] * (1.0 - fade_in)
            pieces.append(chunk[..., : chunk.shape[-1] - ovl_len])
    raise AssertionError("the loop always ends on the last chunk")


# segment 1 s and overlap 0.25 s at 8 kHz: chunks of 7888 frames, starting every 5888
@pytest.mark.parametrize("length", [3000, 7888, 7889, 2 * 5888 + 2000, 8000 * 3 + 17])
def test_a_mixture_given_block_by_block_gives_the_chunks_of_the_whole_tensor(length):
    """Shorter than a chunk, one chunk exactly, a frame more, two chunks exactly, and longer:
    the pieces are those of the whole tensor, sample for sample, whatever the blocks."""
    separator = small_separator()
    audio = 0.3 * torch.randn(1, 2, length, generator=torch.Generator().manual_seed(length))
    expected = whole_tensor_chunks(separator, audio, 1.0, 0.25)
    sizes = torch.randint(
        1, 3000, (length // 1000 + 1,), generator=torch.Generator().manual_seed(1)
    )
    cuts = sorted({0, length, *(int(c) for c in sizes.cumsum(0) if c < length)})
    splits = {
        "whole": [audio],
        "blocks of 1000": list(audio.split(1000, dim=-1)),
        "uneven blocks, the last empty": [
            audio[..., a:b] for a, b in zip(cuts, [*cuts[1:], length], strict=True)
        ],
        "frame by frame at the end": [audio[..., :-3], *audio[..., -3:].split(1, dim=-1)],
    }
    for name, blocks in splits.items():
        pieces = list(separator.iter_blocks(iter(blocks), 1.0, 0.25))
        assert [p.shape for p in pieces] == [p.shape for p in expected], name
        assert all(map(torch.equal, pieces, expected)), name
    assert all(map(torch.equal, separator.iter_unchecked(audio, 1.0, 0.25), expected))
    (whole,) = separator.iter_blocks(audio.split(1000, dim=-1), segment=None)
    assert torch.equal(whole, separator.separate(audio, segment=None))


def test_blocks_are_taken_as_the_chunks_need_them():
    """A chunk is separated once the blocks up to a frame past it were given, not before, and
    the last once there are no more: an error the blocks raise at their end comes first."""
    separator = small_separator()
    audio = 0.3 * torch.randn(1, 2, 8000 * 3, generator=torch.Generator().manual_seed(0))
    given = []

    def blocks():
        for block in audio.split(1000, dim=-1):
            given.append(block.shape[-1])
            yield block
        raise UmxError("a NaN at the end")

    chunks = separator.iter_blocks(blocks(), 1.0, 0.25)
    assert next(chunks).shape[-1] == 5888 and sum(given) == 8000  # 7888 frames and one more
    assert next(chunks).shape[-1] == 5888 and sum(given) == 14000
    with pytest.raises(UmxError, match="a NaN at the end"):
        list(chunks)


def test_bad_overlap_is_refused():
    separator = small_separator()
    with pytest.raises(UmxError, match="overlap"):
        separator.separate(torch.randn(1, 2, 8000), segment=1.0, overlap=1.0)


def test_channel_mismatch_is_refused():
    with pytest.raises(UmxError, match="2-channel"):
        small_separator().separate(torch.randn(1, 1, 8000), segment=None)


@pytest.mark.parametrize(
    "options",
    [{}, {"niter": 2, "softmask": True, "residual": "rest"}],
    ids=["default", "niter2-softmask-residual"],
)
def test_separation_never_reads_tensor_values_on_the_host(options):
    """On a GPU, reading a tensor's value on the host (a loop bound, a branch) stalls the device.
    Meta tensors have shapes but no values, so separating them fails at any such read. (The
    checks of the mixture and the stems around it read values, once per call or chunk: meta
    tensors are refused there, so the separation is run without them.)"""
    with torch.device("meta"):  # (the LSTM is slow on meta tensors: keep the model tiny)
        models = {t: OpenUnmix(129, 2, 8, nb_layers=1, max_bin=100).eval() for t in TARGETS[:2]}
        separator = Separator(
            models, sample_rate=8000, n_fft=256, n_hop=64, wiener_win_len=10, **options
        )
        audio = torch.randn(1, 2, 2400)
    with torch.inference_mode():
        (whole,) = separator.iter_unchecked(audio, segment=None)
        chunks = torch.cat(list(separator.iter_unchecked(audio, segment=0.15, overlap=0.05)), -1)
    assert whole.shape == chunks.shape == (1, len(separator.targets), 2, 2400)
    assert whole.is_meta and chunks.is_meta


def reference_style_mono_on_stereo(separator, audio, niter, softmask, residual):
    """What the reference computes for a one-channel separator on a stereo mixture, written
    with norbert: the models see the mean of the channels' magnitudes, and norbert's Wiener
    filter applies their one-channel estimates to both channels of the mixture's STFT."""
    pytest.importorskip("norbert")
    from test_filtering import norbert_reference
    from umx.transforms import istft, stft

    mix_stft = stft(audio.double(), separator.n_fft, separator.n_hop)  # (1, 2, bins, frames)
    mono_mag = mix_stft.abs().mean(dim=1, keepdim=True).float()
    v = torch.stack([model(mono_mag) for model in separator.target_models.values()], dim=-1)
    v = v[0].permute(2, 1, 0, 3).double().numpy()  # (frames, bins, 1, targets)
    x = mix_stft[0].permute(2, 1, 0).numpy()  # (frames, bins, 2)
    y = norbert_reference(v, x, niter, softmask, residual)
    spec = torch.from_numpy(y).permute(3, 2, 1, 0)  # (sources, 2, bins, frames)
    return istft(spec, audio.shape[-1], separator.n_fft, separator.n_hop).float()


@pytest.mark.parametrize(
    ("niter", "softmask", "residual"),
    [(0, False, False), (1, False, False), (2, True, False), (1, False, True)],
)
def test_mono_model_on_stereo_mixture_matches_the_reference(niter, softmask, residual):
    separator = small_separator(
        nb_channels=1, niter=niter, residual="rest" if residual else None, seed=3
    )
    separator.softmask = softmask
    separator.wiener_win_len = None  # norbert filters the whole excerpt at once
    audio = torch.randn(1, 2, 8000) * 0.3
    got = separator.separate(audio, segment=None)
    expected = reference_style_mono_on_stereo(separator, audio, niter, softmask, residual)
    assert got.shape == (1, len(separator.targets), 2, 8000)
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=0)


def test_mono_model_keeps_each_channels_content():
    """440 Hz on the left, 660 Hz on the right: each channel of every stem holds only its own
    channel's tone, as the reference's stems do."""
    separator = small_separator(nb_channels=1, niter=1, seed=1)
    t = torch.arange(8000) / 8000.0
    audio = torch.stack([torch.sin(2 * torch.pi * 440 * t), torch.sin(2 * torch.pi * 660 * t)])
    stems = separator.separate(audio[None] * 0.5, segment=None)[0]
    assert stems.shape == (4, 2, 8000)
    spectrum = torch.fft.rfft(stems, dim=-1).abs()  # 1 Hz per bin
    left_440, left_660 = spectrum[:, 0, 440], spectrum[:, 0, 660]
    right_440, right_660 = spectrum[:, 1, 440], spectrum[:, 1, 660]
    assert (left_660 < 1e-2 * left_440.max()).all()
    assert (right_440 < 1e-2 * right_660.max()).all()
    assert (stems[:, 0] - stems[:, 1]).abs().max() > 0.1  # the channels differ


def test_mono_model_on_mono_mixture_stays_mono():
    separator = small_separator(nb_channels=1)
    assert separator.channels_for(1) == 1 and separator.channels_for(2) == 2
    assert separator.separate(torch.randn(1, 1, 4000), segment=None).shape == (1, 4, 1, 4000)


@pytest.mark.parametrize("n_fft", [512, 1024])
def test_stft_settings_that_cannot_be_inverted_are_refused(n_fft):
    with pytest.raises(UmxError, match="cannot be inverted"):
        Separator({"vocals": OpenUnmix(n_fft // 2 + 1, 2, 8)}, n_fft=n_fft, n_hop=n_fft, niter=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"niter": -1}, "--niter must be at least 0"),
        ({"niter": 1.5}, "--niter must be a whole number"),
        ({"wiener_win_len": -1}, "--wiener-win-len must be greater than 0"),
        ({"wiener_win_len": 0}, "--wiener-win-len must be greater than 0"),
        ({"sample_rate": float("nan")}, "sample rate must be a finite number"),
        ({"sample_rate": 0.0}, "sample rate must be greater than 0"),
    ],
)
def test_bad_separator_options_are_refused(options, message):
    models = {t: OpenUnmix(257, 2, 8) for t in TARGETS}
    with pytest.raises(UmxError, match=message):
        Separator(models, n_fft=512, n_hop=128, **options)


@pytest.mark.parametrize(
    ("segment", "overlap", "message"),
    [
        (float("nan"), 1.0, "--segment must be a finite number"),
        (float("inf"), 1.0, "--segment must be a finite number"),
        (-1.0, 0.0, "--segment must be greater than 0"),
        (1.0, float("nan"), "--overlap must be a finite number"),
        (1.0, -0.5, "--overlap must be at least 0"),
    ],
)
def test_bad_chunking_is_refused(segment, overlap, message):
    with pytest.raises(UmxError, match=message):
        small_separator().separate(torch.randn(1, 2, 8000), segment=segment, overlap=overlap)


def test_chunks_shorter_than_four_stft_windows_are_refused():
    """Chunks of 0.05 s (n_fft 4096 at 44.1 kHz) differed from whole-track stems by 58-147 %:
    they are mostly STFT padding. The bound scales with the model's window."""
    separator = small_separator()  # n_fft 512 at 8 kHz: 4 windows are 0.256 s
    audio = torch.randn(1, 2, 8000) * 0.5
    with pytest.raises(UmxError) as error:
        separator.separate(audio, segment=0.25, overlap=0.0)
    assert str(error.value) == (
        "--segment 0.25 s is too short for this model: a chunk must span 4 STFT windows "
        "(0.256 s, n_fft 512 at 8000 Hz), or it separates into noise; give at least 0.26"
    )
    assert separator.separate(audio, segment=0.26, overlap=0.0).shape == (1, 4, 2, 8000)
