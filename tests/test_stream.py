"""Streaming separation: the model's carried LSTM state, the causal Wiener filter, the causal
framing, and the stream against the one-call offline separation with the same causal parts."""

import itertools
import math
import re
from pathlib import Path

import pytest
import torch

from umx.errors import UmxError
from umx.filtering import CausalWiener, wiener
from umx.model import OpenUnmix
from umx.separator import Separator
from umx.stream.engine import StreamingSeparator, separate_causal
from umx.transforms import istft_frames, stft

N_FFT, N_HOP = 512, 128
RATE = 16000


def causal_separator(nb_channels=2, niter=1, residual="other", softmask=False, seed=0):
    """A small separator of unidirectional models (n_fft 512, hidden 16), masks far from 0/1."""
    torch.manual_seed(seed)
    models = {}
    for target in ("vocals", "drums"):
        model = OpenUnmix(N_FFT // 2 + 1, nb_channels, 16, unidirectional=True, max_bin=200)
        with torch.no_grad():
            model.output_mean.uniform_(0.2, 0.8)
        models[target] = model.freeze()
    return Separator(
        models,
        sample_rate=RATE,
        n_fft=N_FFT,
        n_hop=N_HOP,
        nb_channels=nb_channels,
        niter=niter,
        softmask=softmask,
        residual=residual,
    )


def random_cuts(total, seed, longest=1500):
    """Block boundaries of random sizes over `total` samples: 1-sample blocks, empty ones,
    short ones and ones longer than n_fft."""
    generator = torch.Generator().manual_seed(seed)
    cuts = [0]
    while cuts[-1] < total:
        kind = int(torch.randint(0, 4, (1,), generator=generator))
        high = (2, 2, N_HOP, longest)[kind]
        size = (0, 1, 2, N_FFT + 1)[kind] + int(torch.randint(0, high, (1,), generator=generator))
        cuts.append(min(cuts[-1] + size, total))
    return cuts


def stream_in_blocks(stream, audio, cuts):
    """Feed `audio` cut at `cuts`, checking the fixed latency after each block, then flush."""
    pieces = []
    for start, stop in itertools.pairwise(cuts):
        pieces.append(stream.process(audio[:, start:stop]))
        returned = sum(piece.shape[-1] for piece in pieces)
        assert returned == max(0, stop - stream.latency)
    pieces.append(stream.flush())
    return torch.cat(pieces, dim=-1)


# The model: carried LSTM state.


@pytest.mark.parametrize("grad", [False, True])
def test_model_stream_in_pieces_equals_one_forward(grad):
    model = OpenUnmix(65, 2, 16, nb_layers=2, unidirectional=True, max_bin=40).eval()
    x = torch.rand(2, 2, 65, 30)
    with torch.set_grad_enabled(grad):
        whole = model(x)
        state, pieces = None, []
        for start, stop in [(0, 1), (1, 1), (1, 9), (9, 10), (10, 30)]:
            y, state = model.stream(x[..., start:stop], state)
            pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, dim=-1), whole, rtol=1e-5, atol=1e-6)
    h, c = state
    assert h.shape == c.shape == (2, 2, 16)


def test_model_stream_refuses_a_bidirectional_model():
    model = OpenUnmix(65, 2, 16, max_bin=40).eval()
    with pytest.raises(UmxError, match=r"bidirectional.*whole future.*umx train --unidirectional"):
        model.stream(torch.rand(1, 2, 65, 3))


# The causal Wiener filter.


def random_problem(nb_frames, nb_channels, nb_targets=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (nb_frames, 9, nb_channels)
    mix = torch.complex(
        torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    )
    mags = torch.rand(*shape, nb_targets, generator=generator) * 2
    return mags, mix * 2


@pytest.mark.parametrize("nb_channels", [1, 2])
@pytest.mark.parametrize("niter", [1, 2])
@pytest.mark.parametrize("memory", [None, 4.0])
def test_causal_wiener_in_pieces_equals_one_call(nb_channels, niter, memory):
    mags, mix = random_problem(40, nb_channels)
    cuts = [0, 1, 2, 9, 10, 33, 40]
    for options in (dict(residual=True), dict(softmask=True)):
        causal = CausalWiener(niter, memory=memory, batch_size=7, **options)
        whole = causal(mags, mix)
        causal.reset()
        pieces = torch.cat([causal(mags[a:b], mix[a:b]) for a, b in itertools.pairwise(cuts)])
        torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-5)
        assert whole.shape == (40, 9, nb_channels, 3 + options.get("residual", False))


@pytest.mark.parametrize("memory", [0.001, 0.5, -1.0, math.nan])
def test_causal_wiener_refuses_a_memory_under_one_frame(memory):
    # exp(-1 / 0.001) is 0.0 in floating point: the filter crashed on its first frames.
    with pytest.raises(UmxError, match=r"^the Wiener memory must be at least 1|finite"):
        CausalWiener(1, memory=memory)
    one_frame = CausalWiener(1, memory=1.0)(*random_problem(12, 2))
    assert one_frame.shape == (12, 9, 2, 3) and bool(torch.isfinite(one_frame).all())


@pytest.mark.parametrize("nb_channels", [1, 2])
def test_causal_wiener_uses_no_future_frame(nb_channels):
    mags, mix = random_problem(30, nb_channels)
    other_mags, other_mix = random_problem(30, nb_channels, seed=1)
    mags2 = torch.cat([mags[:12], other_mags[12:]])
    mix2 = torch.cat([mix[:12], other_mix[12:]])
    first = CausalWiener(2, memory=5.0)(mags, mix)
    second = CausalWiener(2, memory=5.0)(mags2, mix2)
    torch.testing.assert_close(first[:12], second[:12])
    assert not torch.allclose(first[12:], second[12:])


def test_causal_wiener_without_em_is_the_frame_wise_filter():
    mags, mix = random_problem(10, 2)
    for softmask in (False, True):
        expected = wiener(mags, mix, niter=0, softmask=softmask, residual=True)
        got = CausalWiener(0, softmask=softmask, residual=True)(mags, mix)
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("niter", [1, 2, 3])
@pytest.mark.parametrize("identical_channels", [False, True])
def test_causal_wiener_is_finite_and_scales_with_a_loud_mixture(niter, identical_channels):
    """Full-scale audio gives STFT bins of |x| ~ 1e3. Estimates at any level are those
    computed in float64, scaled. Identical channels (a mono recording in stereo) keep every
    covariance of rank one, where float32 is only roughly right (as in the offline filter) but
    must stay finite and no larger than the mixture by much in any bin."""
    mags, mix = random_problem(60, 2)
    if identical_channels:
        mags, mix = mags[:, :, :1].expand_as(mags), mix[:, :, :1].expand_as(mix)
    exact = CausalWiener(niter, residual=True)(mags.double(), mix.cdouble())
    for level in (100.0, 1e3, 1e5):
        result = CausalWiener(niter, residual=True)(mags * level, mix * level) / level
        assert torch.isfinite(torch.view_as_real(result)).all()
        if identical_channels:
            assert (result.abs() <= 1.5 * mix.abs()[..., None]).all()
        else:
            torch.testing.assert_close(result, exact.cfloat(), rtol=1e-3, atol=1e-3)


def test_causal_wiener_on_a_stationary_mixture_approaches_the_offline_em():
    """Sources with fixed spectra and panning, from noisy magnitude estimates: once the running
    statistics have settled, the causal EM's estimates are as good as the offline EM's."""
    generator = torch.Generator().manual_seed(0)
    nb_frames, nb_bins, nb_sources = 400, 32, 3
    pans = torch.tensor([[1.0, 0.2], [0.5, 0.5], [0.1, 1.0]])  # (nb_sources, nb_channels)
    spectra = torch.rand(nb_sources, nb_bins, generator=generator) + 0.1
    shape = (nb_frames, nb_bins, nb_sources)
    signals = torch.complex(
        torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    )
    sources = (signals * spectra.T)[:, :, None, :] * pans.T  # (nb_frames, nb_bins, 2, nb_sources)
    mix = sources.sum(dim=-1)
    noise = torch.exp(0.5 * torch.randn(sources.shape, generator=generator))
    mags = sources.abs() * noise

    def sdr(estimates):
        settled = slice(100, None)
        error = (estimates - sources)[settled].abs().square().sum()
        return 10 * math.log10(sources[settled].abs().square().sum() / error)

    without_em = sdr(wiener(mags, mix, niter=0))
    offline = sdr(wiener(mags, mix, niter=1))
    causal = sdr(CausalWiener(1, memory=50.0)(mags, mix))
    cumulative = sdr(CausalWiener(1, memory=None)(mags, mix))
    assert offline > without_em + 1.0  # the spatial statistics help
    assert causal > offline - 0.3
    assert cumulative > offline - 0.1


# The causal framing.


@pytest.mark.parametrize("n_fft, n_hop", [(N_FFT, N_HOP), (512, 96)])
def test_causal_framing_reconstructs_the_signal_in_pieces(n_fft, n_hop):
    audio = torch.randn(2, 3000, dtype=torch.float64)
    pre = n_fft - n_hop
    nb_frames = (pre + 3000 - 1) // n_hop + 1
    padded = torch.nn.functional.pad(audio, (pre, (nb_frames - 1) * n_hop + n_fft - pre - 3000))
    spec = stft(padded, n_fft, n_hop, center=False)
    assert spec.shape == (2, n_fft // 2 + 1, nb_frames)
    whole, tail = istft_frames(spec, n_fft, n_hop)
    assert whole.shape == (2, nb_frames * n_hop) and tail.shape == (2, pre)
    torch.testing.assert_close(whole[:, pre : pre + 3000], audio)
    tail, pieces = None, []
    for start, stop in [(0, 1), (1, 4), (4, 5), (5, nb_frames)]:
        piece, tail = istft_frames(spec[..., start:stop], n_fft, n_hop, tail)
        pieces.append(piece)
    torch.testing.assert_close(torch.cat(pieces, dim=-1), whole)


# The stream against the offline separation.


@pytest.mark.parametrize(
    "model_channels, audio_channels", [(1, 1), (2, 2), (1, 2)], ids=["mono", "stereo", "downmix"]
)
@pytest.mark.parametrize("niter", [0, 1])
def test_stream_in_random_blocks_equals_the_offline_separation(
    model_channels, audio_channels, niter
):
    separator = causal_separator(model_channels, niter)
    audio = torch.randn(audio_channels, 6000) * 0.5
    expected = separate_causal(separator, audio)
    assert expected.shape == (3, audio_channels, 6000)
    stream = StreamingSeparator(separator, nb_channels=audio_channels)
    assert stream.latency == N_FFT - 1
    assert stream.targets == ["vocals", "drums", "other"]
    cuts = random_cuts(6000, seed=niter + 2 * model_channels)
    sizes = [stop - start for start, stop in itertools.pairwise(cuts)]
    assert 0 in sizes and 1 in sizes and max(sizes) > N_FFT
    got = stream_in_blocks(stream, audio, cuts)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-5
    assert expected.abs().max() > 0.1


def test_stream_with_softmask_and_without_residual():
    separator = causal_separator(2, niter=2, residual=None)
    audio = torch.randn(2, 3000)
    stream = StreamingSeparator(separator, wiener_memory=None)
    got = stream_in_blocks(stream, audio, random_cuts(3000, seed=7))
    expected = separate_causal(separator, audio, wiener_memory=None)
    assert got.shape == (2, 2, 3000)
    assert (got - expected).abs().max() < 1e-5


def test_the_output_depends_on_no_input_after_the_latency():
    separator = causal_separator(2)
    audio = torch.randn(2, 4000)
    changed = audio.clone()
    changed[:, 2500:] = torch.randn(2, 1500)
    latency = StreamingSeparator(separator).latency
    first, second = separate_causal(separator, audio), separate_causal(separator, changed)
    torch.testing.assert_close(first[..., : 2500 - latency], second[..., : 2500 - latency])
    assert not torch.allclose(first[..., 2500 - latency :], second[..., 2500 - latency :])


def test_blocks_that_are_multiples_of_the_hop_have_the_shorter_latency():
    separator = causal_separator(2)
    stream = StreamingSeparator(separator, block_multiple=2 * N_HOP)
    assert stream.latency == N_FFT - N_HOP
    audio = torch.randn(2, 10 * 2 * N_HOP + 100)
    pieces = [
        stream.process(audio[:, k : k + 2 * N_HOP]) for k in range(0, 10 * 2 * N_HOP, 2 * N_HOP)
    ]
    # once primed, every block returns as many samples as it brought
    assert [p.shape[-1] for p in pieces[2:]] == [2 * N_HOP] * 8
    with pytest.raises(UmxError, match=r"not a multiple of the block multiple 256.*flush"):
        stream.process(audio[:, :100])
    pieces.append(stream.flush(audio[:, -100:]))  # the last, partial block
    got = torch.cat(pieces, dim=-1)
    assert got.shape[-1] == audio.shape[-1]
    assert (got - separate_causal(separator, audio)).abs().max() < 1e-5


@pytest.mark.parametrize("length", [0, 1, N_HOP, N_FFT - 1, N_FFT + 1])
def test_the_output_has_the_input_length_after_flush(length):
    separator = causal_separator(2)
    stream = StreamingSeparator(separator)
    audio = torch.randn(2, length)
    got = torch.cat([stream.process(audio), stream.flush()], dim=-1)
    assert got.shape == (3, 2, length)
    expected = separate_causal(separator, audio)
    assert expected.shape == (3, 2, length)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # flush resets: the same stream again gives the same stems
    again = torch.cat([stream.process(audio), stream.flush()], dim=-1)
    torch.testing.assert_close(again, got)


def test_memory_does_not_grow_with_the_stream():
    stream = StreamingSeparator(causal_separator(2, niter=1))
    generator = torch.Generator().manual_seed(0)

    def state():
        """Less than a frame of input and of finished output is kept, and states of fixed
        shapes, in tensors that hold no larger buffer's memory."""
        assert stream._input.shape[-1] < N_FFT and stream._ready.shape[-1] < N_FFT
        fixed = [stream._tail, *(t for s in stream._states.values() for t in s)]
        fixed += [t for sums in stream._filter._sums for t in sums]
        for tensor in [stream._input, stream._ready, *fixed]:
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
        return [tensor.shape for tensor in fixed]

    after_50 = None
    for nb_blocks in range(1, 301):
        stream.process(torch.randn(2, 300, generator=generator))
        if nb_blocks == 50:
            after_50 = state()
    assert state() == after_50
    stream.process(torch.randn(2, 20 * N_FFT, generator=generator))  # a long block
    stream.process(torch.randn(2, 300, generator=generator))
    assert state() == after_50


def test_a_bidirectional_model_is_refused_with_the_fix():
    separator = Separator(
        {"vocals": OpenUnmix(N_FFT // 2 + 1, 2, 16, max_bin=200).freeze()},
        sample_rate=RATE,
        n_fft=N_FFT,
        n_hop=N_HOP,
        residual="accompaniment",
    )
    message = r"'vocals' model has a bidirectional LSTM.*whole future.*umx train --unidirectional"
    with pytest.raises(UmxError, match=message):
        StreamingSeparator(separator)
    with pytest.raises(UmxError, match=message):
        separate_causal(separator, torch.zeros(2, 1000))


def test_bad_blocks_are_refused():
    stream = StreamingSeparator(causal_separator(2))
    with pytest.raises(UmxError, match="2 channels, got \\(1, 100\\)"):
        stream.process(torch.zeros(1, 100))
    stream.process(torch.zeros(2, 16000))
    with pytest.raises(UmxError, match="with 1 channel, got \\(2, 100\\)"):  # not "1 channels"
        StreamingSeparator(causal_separator(1)).process(torch.zeros(2, 100))
    for value, what in ((float("nan"), "a NaN sample"), (-float("inf"), "an infinite sample")):
        block = torch.zeros(2, 100)
        block[1, 50] = value
        with pytest.raises(UmxError, match=f"^the stream: {what} at 1.003 s is not audio"):
            stream.process(block)
    block = torch.zeros(2, 100)
    block[0, 8:] = 1e30  # 16-bit PCM read as float32 holds such values
    with pytest.raises(UmxError, match=r"the sample 1e\+30 at 1.000 s is not audio.*±10000"):
        stream.process(block)
    with pytest.raises(UmxError, match="2-channel audio, not 1-channel"):
        StreamingSeparator(causal_separator(2), nb_channels=1)


def test_the_documented_example_runs(monkeypatch):
    """With the bundled causal model, offline, from the repository's root as the docs say."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    text = (Path(__file__).resolve().parents[1] / "docs" / "streaming.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)[0]  # the engine's example
    exec(compile(code, "streaming.md", "exec"), {})


def test_a_separator_with_some_bidirectional_targets_names_the_causal_ones():
    """The engine, not only `umx stream`, says which targets can stream (it named only the
    first bidirectional one)."""
    causal = causal_separator(residual=None)
    models = dict(causal.target_models)
    models["bass"] = OpenUnmix(N_FFT // 2 + 1, 2, 16, max_bin=200).freeze()
    mixed = Separator(models, sample_rate=RATE, n_fft=N_FFT, n_hop=N_HOP, nb_channels=2)
    with pytest.raises(UmxError) as error:
        StreamingSeparator(mixed)
    assert str(error.value) == (
        "the bass model of the separator is bidirectional and cannot stream; its causal vocals, "
        "drums can: give --targets vocals drums, or train bass with --unidirectional"
    )
    with pytest.raises(UmxError, match=r"^the bass model of the separator is bidirectional"):
        separate_causal(mixed, torch.zeros(2, RATE))
