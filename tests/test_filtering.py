"""The Wiener filter against the norbert library and against known answers."""

import numpy as np
import pytest
import torch

from umx.filtering import CausalWiener, expectation_maximization, wiener

norbert = pytest.importorskip("norbert")

EPS = 1e-10


def random_problem(nb_frames, nb_bins, nb_channels, nb_targets, seed=0, mono_targets=False):
    """Magnitude estimates and a complex mixture, in float64."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(nb_frames, nb_bins, nb_channels)) + 1j * rng.normal(
        size=(nb_frames, nb_bins, nb_channels)
    )
    mix *= 30.0  # exceed norbert's scaling threshold, so that path is exercised too
    target_channels = 1 if mono_targets else nb_channels
    mags = rng.uniform(0, 20, size=(nb_frames, nb_bins, target_channels, nb_targets))
    return mags, mix


def norbert_reference(mags, mix, niter, softmask, residual):
    """What norbert computes; its residual is an extra source, mix minus the targets."""
    mix = mix.copy()  # norbert scales its input in place
    if softmask:
        y = norbert.softmask(mags, mix, eps=EPS)
    else:
        y = mags * np.exp(1j * np.angle(mix[..., None]))
    if residual:
        y = np.concatenate([y, mix[..., None] - y.sum(axis=-1, keepdims=True)], axis=-1)
    if niter == 0:
        return y
    max_abs = max(1, np.abs(mix).max() / 10.0)
    y = norbert.expectation_maximization(y / max_abs, mix / max_abs, niter, eps=EPS)[0]
    return y * max_abs


@pytest.mark.parametrize("shape", [(7, 5, 2, 2), (13, 9, 2, 4), (6, 4, 1, 3)])
@pytest.mark.parametrize("niter", [0, 1, 2])
@pytest.mark.parametrize("softmask", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_wiener_equals_norbert(shape, niter, softmask, residual):
    nb_targets = shape[-1]
    if niter > 0 and nb_targets + residual < 2:
        pytest.skip("EM needs two sources")
    mags, mix = random_problem(*shape)
    expected = norbert_reference(mags, mix, niter, softmask, residual)
    got = wiener(
        torch.from_numpy(mags),
        torch.from_numpy(mix),
        niter=niter,
        softmask=softmask,
        residual=residual,
        eps=EPS,
        batch_size=3,
    )
    assert got.shape == expected.shape
    assert got.dtype == torch.complex128
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_mono_magnitudes_broadcast_over_stereo_mixture():
    mags, mix = random_problem(5, 6, 2, 2, mono_targets=True)
    stereo_mags = np.repeat(mags, 2, axis=2)
    for niter in (0, 1):
        got = wiener(torch.from_numpy(mags), torch.from_numpy(mix), niter=niter)
        expected = wiener(torch.from_numpy(stereo_mags), torch.from_numpy(mix), niter=niter)
        torch.testing.assert_close(got, expected)


def test_float32_close_to_float64():
    mags, mix = random_problem(20, 17, 2, 4, seed=3)
    y64 = wiener(torch.from_numpy(mags), torch.from_numpy(mix), niter=2)
    y32 = wiener(torch.from_numpy(mags).float(), torch.from_numpy(mix).to(torch.complex64), niter=2)
    assert y32.dtype == torch.complex64
    assert (y32.to(torch.complex128) - y64).abs().max() < 1e-4 * y64.abs().max()


def test_batch_size_does_not_change_the_result():
    mags, mix = random_problem(11, 5, 2, 3, seed=4)
    args = (torch.from_numpy(mags), torch.from_numpy(mix))
    whole = wiener(*args, niter=2, batch_size=None)
    torch.testing.assert_close(wiener(*args, niter=2, batch_size=4), whole)


def test_residual_completes_the_mixture():
    mags, mix = random_problem(8, 6, 2, 2, seed=5)
    y = wiener(torch.from_numpy(mags), torch.from_numpy(mix), niter=0, residual=True)
    torch.testing.assert_close(y.sum(dim=-1), torch.from_numpy(mix))


def test_em_sources_sum_to_the_mixture_when_they_span_it():
    """With one source per channel-independent component, Wiener gains sum to identity."""
    mags, mix = random_problem(10, 8, 2, 3, seed=6)
    x = torch.from_numpy(mix)
    y = wiener(torch.from_numpy(mags), x, niter=3)
    # sum_j v_j R_j Cxx^-1 = (Cxx - eps I) Cxx^-1 ~ I, so the estimates add up to the mixture
    torch.testing.assert_close(y.sum(dim=-1), x, atol=1e-4 * x.abs().max().item(), rtol=0)


def test_known_answer_single_bin():
    """A mixture that is exactly one source: EM gives that source all of it."""
    x = torch.tensor([[[1.0 + 2.0j, -0.5 + 0.5j]]], dtype=torch.complex128)  # (1, 1, 2)
    y = torch.stack([x, torch.zeros_like(x)], dim=-1)  # source 0 = mix, source 1 = silence
    out = expectation_maximization(y, x, niter=1)
    # exact up to the sqrt(eps) = 1e-5 regularisation of the mixture covariance
    torch.testing.assert_close(out[..., 0], x, atol=1e-4, rtol=0)
    assert out[..., 1].abs().max() < 1e-8


@pytest.mark.parametrize("nb_channels, residual", [(2, False), (2, True), (1, False)])
def test_out_receives_the_estimates(nb_channels, residual):
    mags, mix = random_problem(9, 5, nb_channels, 3, seed=7)
    args = (torch.from_numpy(mags), torch.from_numpy(mix))
    expected = wiener(*args, niter=2, residual=residual)
    # A strided view into a larger buffer, laid out as the separator's stems.
    buffer = torch.zeros(3 + residual, nb_channels, 12, 5, dtype=torch.complex128)
    out = buffer[:, :, 2:11].permute(2, 3, 1, 0)
    assert wiener(*args, niter=2, residual=residual, out=out) is out
    torch.testing.assert_close(out, expected)
    assert (buffer[:, :, :2] == 0).all() and (buffer[:, :, 11:] == 0).all()


@pytest.mark.parametrize("causal", [False, True], ids=["offline", "causal"])
@pytest.mark.parametrize("nb_channels", [1, 2])
@pytest.mark.parametrize("softmask", [False, True])
def test_a_quiet_mixture_is_filtered_as_a_loud_one(causal, nb_channels, softmask):
    """The filter does not depend on the level: norbert's `max(1, ...)` scale left a quiet
    mixture's powers to sink below the regulariser (at 1e-5 of this level, the stems added up
    to the mixture within -0.1 dB where the loud ones did within -50 dB)."""
    mags, mix = random_problem(40, 9, nb_channels, 3)
    mags, mix = torch.from_numpy(mags).float(), torch.from_numpy(mix).to(torch.complex64)

    def filtered(gain):
        if causal:
            return CausalWiener(2, softmask=softmask, memory=10)(mags * gain, mix * gain) / gain
        return wiener(mags * gain, mix * gain, niter=2, softmask=softmask) / gain

    loud = filtered(1.0)
    assert (loud.sum(dim=-1) - mix).abs().max() < 1e-3 * mix.abs().max()  # they span it
    for gain in (1e-2, 1e-5, 1e-8):
        torch.testing.assert_close(filtered(gain), loud, rtol=0, atol=1e-4 * loud.abs().max())
