"""Multichannel Wiener filtering of source estimates, as in the `norbert` library.

Given magnitude estimates for every source and the mixture's complex STFT, build complex source
estimates whose sum is (close to) the mixture. With `niter > 0`, expectation-maximisation refines
per-source power spectral densities `v` and spatial covariance matrices `R`, then applies the
multichannel Wiener gain `v_j R_j Cxx^-1`. `wiener` estimates `R` over blocks of frames;
`CausalWiener`, for streams, from past and present frames only. Tensors here use one axis order
throughout: `(nb_frames, nb_bins, nb_channels[, nb_sources])`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from umx.errors import check_number

EPS = 1e-10
SCALE_FACTOR = 10.0
MIN_SCALE = 1e-12
"""The smallest scale of a mixture (`_max_abs`): digital silence is not divided by zero, and
the scaled powers stay within float32."""
EM_BATCH_SIZE = 200
WIENER_MEMORY = 300.0
"""Time constant, in frames, of the causal EM's exponentially weighted statistics (about 7 s
at hop 1024 and 44.1 kHz, the span of the offline filter's default 300-frame blocks)."""
MAX_GROWTH = 16.0
"""Largest log-ratio of the weights within one piece of a running sum (see `_running_sum`)."""


def wiener(
    target_magnitudes: Tensor,
    mix_stft: Tensor,
    niter: int = 1,
    softmask: bool = False,
    residual: bool = False,
    eps: float = EPS,
    batch_size: int | None = EM_BATCH_SIZE,
    out: Tensor | None = None,
) -> Tensor:
    """Complex source estimates from magnitude estimates and the mixture.

    Args:
        target_magnitudes: non-negative estimates, `(nb_frames, nb_bins, nb_channels, nb_targets)`;
            `nb_channels` may be 1 for models that see a mono downmix.
        mix_stft: complex mixture, `(nb_frames, nb_bins, nb_channels)`.
        niter: number of EM iterations; 0 keeps the initial estimates.
        softmask: start from ratio masks applied to the mixture instead of the target
            magnitudes with the mixture's phase.
        residual: add one source, the mixture minus the sum of the targets. With one target,
            no residual and `niter > 0`, EM still runs on two sources: the rest of the mixture
            is used internally and left out of the result (see `needs_rest`).
        eps: regulariser, as norbert's `eps`.
        batch_size: frames processed at once in EM, bounding memory; all frames if None.
        out: where to write the estimates (any strides, e.g. a view into a larger buffer);
            a new tensor if None.

    Returns:
        complex estimates, `(nb_frames, nb_bins, nb_channels, nb_sources)`, where
        `nb_sources = nb_targets + residual`; `out` if given.
    """
    if needs_rest(target_magnitudes.shape[-1], niter, residual):
        y = wiener(target_magnitudes, mix_stft, niter, softmask, True, eps, batch_size)[..., :1]
        return y if out is None else out.copy_(y)
    batch_size = batch_size or mix_stft.shape[0]
    if niter > 0 and mix_stft.shape[-1] == 2 and not (softmask or residual):
        # The initial estimates are the magnitudes with the mixture's phase: EM's first
        # statistics follow from the magnitudes alone, without building complex estimates.
        return _stereo_em(mix_stft, niter, eps, batch_size, magnitudes=target_magnitudes, out=out)
    if softmask:
        total = target_magnitudes.sum(dim=-1, keepdim=True)
        # the regulariser follows a quiet mixture down (see `_max_abs`), as EM's does
        eps = eps * torch.clamp(_max_abs(mix_stft), max=1.0)
        y = _scale(mix_stft[..., None], target_magnitudes / (eps + total))
    else:
        y = _scale(_phase(mix_stft)[..., None], target_magnitudes)
    if residual:
        y = torch.cat([y, mix_stft[..., None] - y.sum(dim=-1, keepdim=True)], dim=-1)
    if niter > 0:
        y = expectation_maximization(y, mix_stft, niter, eps, batch_size)
    return y if out is None else out.copy_(y)


def needs_rest(nb_targets: int, niter: int, residual: bool) -> bool:
    """Whether filtering `nb_targets` sources needs the rest of the mixture as a hidden source.

    EM models the mixture as the sum of the sources: with a single source it would give that
    source the whole mixture. One target without a residual is therefore filtered together
    with the mixture minus its estimate, which the result then leaves out: its estimate is
    the one a run with the residual gives.
    """
    return niter > 0 and nb_targets == 1 and not residual


def _scale(z: Tensor, r: Tensor) -> Tensor:
    """`z * r` for complex `z` and real `r`, broadcast, without promoting `r` to complex."""
    return torch.view_as_complex(torch.view_as_real(z) * r[..., None])


def _power(z: Tensor) -> Tensor:
    """`|z|^2` of a complex tensor (cheaper than `abs`)."""
    return z.real.square() + z.imag.square()


def _phase(z: Tensor) -> Tensor:
    """`exp(i angle(z))`: unit-modulus phase factors, 1 where `z` is 0."""
    power = _power(z)
    return torch.where(power > 0, _scale(z, power.rsqrt()), 1.0)


def _max_abs(x: Tensor) -> Tensor:
    """The scale of the mixture for EM, `max |x| / 10`, as a tensor (no sync). norbert's is
    `max(1, max |x| / 10)`, the same for music at any usual level (a -40 dBFS sine peaks at
    about 10 in the 4096-point STFT), but a quiet mixture it leaves as it is: its powers then
    sink towards the regulariser, which takes an ever larger share of the estimates (at -60
    dBFS the stems added up to the mixture only within -14 dB, at -100 dBFS they were nearly
    silent). Scaled up as well as down, the filter does not depend on the level."""
    return torch.clamp(_power(x).max().sqrt() / SCALE_FACTOR, min=MIN_SCALE)


def expectation_maximization(
    y: Tensor,
    x: Tensor,
    niter: int = 2,
    eps: float = EPS,
    batch_size: int | None = EM_BATCH_SIZE,
) -> Tensor:
    """Refine source estimates with the EM algorithm of the multichannel Wiener filter.

    As norbert, the arithmetic runs on `y` and `x` divided by `max |x| / 10` (`_max_abs`),
    which matters only through `eps`; the result is scaled back.

    Args:
        y: initial complex source estimates, `(nb_frames, nb_bins, nb_channels, nb_sources)`.
        x: complex mixture, `(nb_frames, nb_bins, nb_channels)`.
        niter: number of iterations.
        eps: regulariser.
        batch_size: frames filtered at once; all frames if None.

    Returns:
        refined estimates, same shape as `y`.
    """
    batch_size = batch_size or x.shape[0]
    if x.shape[-1] == 2:
        return _stereo_em(x, niter, eps, batch_size, estimates=y)
    max_abs = _max_abs(x)
    y, x = y / max_abs, x / max_abs
    for _ in range(niter):
        v, R = local_gaussian_model(y, eps)
        y = _filter(v, R[None], x, eps, batch_size)
    return y * max_abs


def _filter(v: Tensor, R: Tensor, x: Tensor, eps: float, batch_size: int) -> Tensor:
    """The multichannel Wiener estimates `v_j R_j Cxx^-1 x`, `(nb_frames, nb_bins, nb_channels,
    nb_sources)`, from powers `v` `(nb_frames, nb_bins, nb_sources)`, spatial covariances `R`
    `(nb_frames or 1, nb_bins, nb_channels, nb_channels, nb_sources)` and the mixture `x`
    `(nb_frames, nb_bins, nb_channels)`."""
    nb_frames, _, nb_channels = x.shape
    v = v.to(x.dtype)
    regularization = eps**0.5 * torch.eye(nb_channels, dtype=x.dtype, device=x.device)
    y = x.new_empty(*x.shape, v.shape[-1])
    for start in range(0, nb_frames, batch_size):
        t = slice(start, start + batch_size)
        Rt = R if R.shape[0] == 1 else R[t]
        Cxx = torch.einsum("tbs,tbcds->tbcd", v[t], Rt) + regularization
        z = torch.einsum("tbcd,tbd->tbc", _invert(Cxx, eps), x[t])
        # Wiener gain v_j R_j Cxx^-1 applied to the mixture.
        y[t] = v[t, :, None, :] * torch.einsum("tbcds,tbd->tbcs", Rt, z)
    return y


# Two channels: the EM written out element by element. The 2x2 Hermitian matrices are kept as
# their entries (r00 and r11 real, r01 complex, r10 = conj(r01)) and the arithmetic runs over
# `(nb_sources, nb_frames, nb_bins)` planes with bins innermost, so that each step is one pass
# of vectorised arithmetic over contiguous memory instead of many small matrix products. Frames
# are filtered `batch_size` at a time, which bounds the temporaries.


def _stereo_em(
    x: Tensor,
    niter: int,
    eps: float,
    batch_size: int,
    magnitudes: Tensor | None = None,
    estimates: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """EM for a stereo mixture `x`, `(nb_frames, nb_bins, 2)`, from either `magnitudes`
    `(nb_frames, nb_bins, nb_channels, nb_sources)` (given the mixture's phase) or complex
    `estimates` `(nb_frames, nb_bins, 2, nb_sources)`; returns the refined estimates, shaped
    as `estimates`, in `out` if given, else as a view of a `(nb_sources, 2, nb_frames,
    nb_bins)` tensor."""
    x = x.permute(2, 0, 1).contiguous()  # (2, nb_frames, nb_bins)
    scale2 = _max_abs(x) ** -2  # norbert's scaling of the powers (see expectation_maximization)
    x_planes = _planes(x)
    if magnitudes is not None:
        # (nb_sources, nb_frames, nb_channels, nb_bins): views, bins innermost where the
        # separator's layout has them so.
        m = magnitudes.expand(*magnitudes.shape[:2], 2, -1).permute(3, 0, 2, 1)
        v, r = _stereo_model_from_magnitudes(m, x, scale2, eps, batch_size)
        nb_sources = m.shape[0]
    else:
        v, r = _stereo_model(estimates.permute(3, 2, 0, 1).contiguous(), scale2, eps)
        nb_sources = estimates.shape[-1]
    # (nb_sources, 2, nb_frames, nb_bins)
    y = x.new_empty(nb_sources, *x.shape) if out is None else out.permute(3, 2, 0, 1)
    for iteration in range(niter):
        if iteration:
            v, r = _stereo_model(y, scale2, eps)
        _stereo_filter(v, r, x_planes, y, eps, batch_size)
    return y.permute(2, 3, 1, 0) if out is None else out


def _planes(x: Tensor) -> Tensor:
    """A stereo mixture `(2, nb_frames, nb_bins)` as real planes `(2 channels, 2 parts,
    nb_frames, nb_bins)`, as `_stereo_filter` reads it."""
    return torch.view_as_real(x).permute(0, 3, 1, 2).contiguous()


def _stereo_covariances(
    power0: Tensor, power1: Tensor, cross: Tensor, total: Tensor, eps: float
) -> Tensor:
    """Spatial covariances from sums over frames of `|y0|^2`, `|y1|^2`, `y0 conj(y1)` (scaled)
    and of `v`, all `(nb_sources, 1, nb_bins)` (or one sum per frame, `(nb_sources, nb_frames,
    nb_bins)`): entries `(r00, r11, r01.real, r01.imag)` stacked, `(4, nb_sources, 1 or
    nb_frames, nb_bins)`."""
    norm = 1.0 / (eps + total)
    return torch.stack([power0, power1, cross.real, cross.imag]) * norm


def _stereo_terms(y: Tensor, scale2: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-frame terms of the local Gaussian model of complex estimates `y`, `(nb_sources, 2,
    nb_frames, nb_bins)`: the scaled powers `|y_c|^2`, `(nb_sources, 2, nb_frames, nb_bins)`,
    their channel mean `v` and the scaled cross term `y0 conj(y1)`, both `(nb_sources,
    nb_frames, nb_bins)`."""
    power = _power(y) * scale2
    return power, power.mean(dim=1), y[:, 0] * y[:, 1].conj() * scale2


def _stereo_model(y: Tensor, scale2: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Local Gaussian model of complex estimates `y`, `(nb_sources, 2, nb_frames, nb_bins)`:
    scaled powers `v`, `(nb_sources, nb_frames, nb_bins)`, and covariance entries as
    `_stereo_covariances` returns them."""
    power, v, cross = _stereo_terms(y, scale2)
    sums = power.sum(dim=2, keepdim=True)
    cross = cross.sum(dim=1, keepdim=True)
    return v, _stereo_covariances(sums[:, 0], sums[:, 1], cross, v.sum(dim=1, keepdim=True), eps)


def _stereo_model_from_magnitudes(
    m: Tensor, x: Tensor, scale2: Tensor, eps: float, batch_size: int
) -> tuple[Tensor, Tensor]:
    """`_stereo_model` of the estimates `m exp(i angle(x))`, from the magnitudes `m`,
    `(nb_sources, nb_frames, 2, nb_bins)`, and the mixture `x`, `(2, nb_frames, nb_bins)`:
    their powers are `m^2` and their cross term `m0 m1 exp(i (angle(x0) - angle(x1)))`."""
    nb_sources, nb_frames, _, nb_bins = m.shape
    v = m.new_empty(nb_sources, nb_frames, nb_bins)
    sums = m.new_zeros(3, nb_sources, nb_bins)  # |y0|^2, |y1|^2, Re y0 conj(y1)
    cross_imag = m.new_zeros(nb_sources, nb_bins)
    for start in range(0, nb_frames, batch_size):
        t = slice(start, start + batch_size)
        m0, m1 = m[:, t, 0], m[:, t, 1]
        power0, power1 = m0.square(), m1.square()
        sums[0] += power0.sum(dim=1)
        sums[1] += power1.sum(dim=1)
        torch.add(power0, power1, out=v[:, t])
        phase = _phase(x[0, t]) * _phase(x[1, t]).conj()
        product = m0 * m1
        sums[2] += (product * phase.real.contiguous()).sum(dim=1)
        cross_imag += (product * phase.imag.contiguous()).sum(dim=1)
    v *= scale2 / 2
    sums = sums[:, :, None] * scale2
    cross = torch.complex(sums[2], cross_imag[:, None] * scale2)
    return v, _stereo_covariances(sums[0], sums[1], cross, v.sum(dim=1, keepdim=True), eps)


def _weighted_sum(planes: Tensor, weights: Tensor) -> Tensor:
    """`sum_j weights[j] * planes[j]` for `planes` `(nb_sources, ...)` and matching `weights`,
    accumulated in place (faster than a reduction over the leading axis)."""
    total = planes[0] * weights[0]
    for plane, weight in zip(planes[1:], weights[1:], strict=True):
        total.addcmul_(plane, weight)
    return total


def _stereo_filter(
    v: Tensor, r: Tensor, x_planes: Tensor, y: Tensor, eps: float, batch_size: int
) -> None:
    """Write the multichannel Wiener estimates `v_j R_j Cxx^-1 x` into `y`,
    `(nb_sources, 2, nb_frames, nb_bins)` complex, from scaled powers `v`
    `(nb_sources, nb_frames, nb_bins)`, covariance entries `r` (`_stereo_covariances`) and the
    unscaled mixture planes `(2 channels, 2 parts, nb_frames, nb_bins)`; `r` holds either
    one matrix per bin or one per frame and bin."""
    regularization = eps**0.5
    y_planes = torch.view_as_real(y)
    for start in range(0, v.shape[1], batch_size):
        t = slice(start, start + batch_size)
        vt = v[:, t]
        rt = r if r.shape[2] == 1 else r[:, :, t]
        r00, r11, r01r, r01i = rt
        (x0r, x0i), (x1r, x1i) = x_planes[:, :, t]
        # The mixture covariance sum_j v_j R_j + regularisation, [[a, b], [conj b, d]].
        a, d, br, bi = (_weighted_sum(vt, coefficients) for coefficients in rt)
        a += regularization
        d += regularization
        # sum_j v_j R_j is positive semi-definite, so the determinant is at least
        # regularisation * (a + d - regularisation); where float32 cancels it below that (a
        # loud bin of rank one, e.g. a sine or identical channels), the bound is the value.
        det = a * d - (br.square() + bi.square())
        inv_det = 1.0 / torch.maximum(det, regularization * (a + d - regularization))
        # z = Cxx^-1 x, with x unscaled: v_j R_j z is then the unscaled estimate.
        z0r = (d * x0r - (br * x1r - bi * x1i)) * inv_det
        z0i = (d * x0i - (br * x1i + bi * x1r)) * inv_det
        z1r = (a * x1r - (br * x0r + bi * x0i)) * inv_det
        z1i = (a * x1i - (br * x0i - bi * x0r)) * inv_det
        # The Wiener gain v_j R_j applied to z, written straight into y (real and imaginary
        # parts of each channel).
        for (channel, part), terms in {
            (0, 0): ((r00, z0r), (r01r, z1r), (r01i, -z1i)),
            (0, 1): ((r00, z0i), (r01r, z1i), (r01i, z1r)),
            (1, 0): ((r01r, z0r), (r01i, z0i), (r11, z1r)),
            (1, 1): ((r01r, z0i), (r01i, -z0r), (r11, z1i)),
        }.items():
            (c0, p0), (c1, p1), (c2, p2) = terms
            acc = c0 * p0
            acc.addcmul_(c1, p1).addcmul_(c2, p2)
            torch.mul(acc, vt, out=y_planes[:, channel, t, :, part])


def local_gaussian_model(y: Tensor, eps: float = EPS) -> tuple[Tensor, Tensor]:
    """Power spectral densities and spatial covariance matrices of the sources.

    Args:
        y: complex source estimates, `(nb_frames, nb_bins, nb_channels, nb_sources)`.

    Returns:
        `v`, `(nb_frames, nb_bins, nb_sources)`, the channel-averaged power, and
        `R`, `(nb_bins, nb_channels, nb_channels, nb_sources)`, the power-weighted average of
        the sources' covariance `y y^H` over frames.
    """
    v = (y.real**2 + y.imag**2).mean(dim=2)
    R = torch.einsum("tbcs,tbds->bcds", y, y.conj())
    return v, R / (eps + v.sum(dim=0))[:, None, None, :]


def _invert(M: Tensor, eps: float) -> Tensor:
    """Inverse of the matrices `M`, `(..., nb_channels, nb_channels)`, as norbert computes it."""
    nb_channels = M.shape[-1]
    if nb_channels == 1:
        return 1.0 / (M + eps)
    if nb_channels == 2:
        a, b, c, d = M[..., 0, 0], M[..., 0, 1], M[..., 1, 0], M[..., 1, 1]
        inv_det = 1.0 / (a * d - b * c)
        return (
            torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2)
            * inv_det[..., None, None]
        )
    return torch.linalg.inv(M)


class CausalWiener:
    """Wiener filtering whose statistics use only past and present frames, fed frame by frame.

    With `niter = 0` the estimates are those of `wiener` (frame-wise, trivially causal). With
    `niter > 0`, each EM iteration estimates the spatial covariance of each source at frame `t`
    from exponentially weighted sums over frames `0..t` only,

        R_t = S_t / (eps + V_t),  S_t = a S_{t-1} + y_t y_t^H,  V_t = a V_{t-1} + v_t,

    with `a = exp(-1 / memory)`: a time constant of `memory` frames, or, with `memory=None`,
    plain sums from the first frame (`a = 1`, a cumulative average). The offline EM instead
    sums over whole blocks of frames, future ones included. As the offline filter's, the powers
    are scaled by `(max |x| / 10)^-2` (see `_max_abs`), with the maximum over the frames so
    far instead of the whole mixture (which would look ahead): without it, the 2x2 determinant
    of a loud bin whose covariance is (nearly) of rank one, e.g. on the first frame, cancels to
    0 in float32 and the estimates become NaN, and a quiet mixture's powers sink towards
    `eps` (which the covariances' `eps` follows down, `_covariance_eps`).

    The filter keeps the sums of every iteration between calls: calling it on consecutive
    pieces of a spectrogram, split anywhere, gives (to rounding) the estimates of one call
    over the whole spectrogram with a fresh filter, which is the offline form.

    Args:
        niter: number of EM iterations; 0 keeps the initial estimates.
        softmask: start from ratio masks applied to the mixture.
        residual: add one source, the mixture minus the sum of the targets.
        memory: time constant of the statistics in frames, at least 1; None for a cumulative
            average.
        eps: regulariser, as `wiener`'s.
        batch_size: frames processed at once, bounding memory.
    """

    def __init__(
        self,
        niter: int = 1,
        softmask: bool = False,
        residual: bool = False,
        memory: float | None = WIENER_MEMORY,
        eps: float = EPS,
        batch_size: int = EM_BATCH_SIZE,
    ) -> None:
        check_number("niter", niter, minimum=0, integer=True)
        if memory is not None:
            # Under a frame, exp(-1 / memory) underflows to 0 and EM sees no past at all.
            check_number("the Wiener memory", memory, minimum=1)
        check_number("batch_size", batch_size, above=0, integer=True)
        self.niter = niter
        self.softmask = softmask
        self.residual = residual
        self.memory = memory
        self.decay = 1.0 if memory is None else math.exp(-1.0 / memory)
        self.eps = eps
        self.batch_size = batch_size
        self.reset()

    def reset(self) -> None:
        """Forget the statistics: the next call starts a new signal."""
        # Per iteration, the running sums after the last frame (frames axis kept); empty at first.
        self._sums: list[list[Tensor]] = [[] for _ in range(self.niter)]
        self._peak: Tensor | None = None  # the largest |x|^2 of the mixture so far, `(1,)`

    def __call__(self, target_magnitudes: Tensor, mix_stft: Tensor) -> Tensor:
        """Filter the next frames.

        Args:
            target_magnitudes: non-negative estimates, `(nb_frames, nb_bins, nb_channels,
                nb_targets)`; `nb_channels` may be 1 for models that see a mono downmix.
            mix_stft: complex mixture, `(nb_frames, nb_bins, nb_channels)`.

        Returns:
            complex estimates, `(nb_frames, nb_bins, nb_channels, nb_sources)`, where
            `nb_sources = nb_targets + residual`; one target is filtered with the rest of
            the mixture as `wiener` does (see `needs_rest`).
        """
        rest = needs_rest(target_magnitudes.shape[-1], self.niter, self.residual)
        pieces = []
        for start in range(0, max(mix_stft.shape[0], 1), self.batch_size):
            t = slice(start, start + self.batch_size)
            y = wiener(
                target_magnitudes[t],
                mix_stft[t],
                niter=0,
                softmask=self.softmask,
                residual=self.residual or rest,
                eps=self.eps,
            )
            if self.niter and y.shape[0]:
                em = self._stereo_em if mix_stft.shape[-1] == 2 else self._em
                y = em(y, mix_stft[t])
            pieces.append(y[..., :1] if rest else y)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def _stereo_em(self, y: Tensor, x: Tensor) -> Tensor:
        """The causal EM of `y` `(nb_frames, nb_bins, 2, nb_sources)` on `x` `(nb_frames,
        nb_bins, 2)`, element by element as `_stereo_em`."""
        x_planes = _planes(x.permute(2, 0, 1))
        scale2 = self._scale2(x)[:, None]
        eps = self._covariance_eps(scale2)
        y = y.permute(3, 2, 0, 1).contiguous()  # (nb_sources, 2, nb_frames, nb_bins)
        for sums in self._sums:
            power, v, cross = _stereo_terms(y, 1.0)
            running = self._update(sums, (power[:, 0], power[:, 1], cross, v), dim=1)
            r = _stereo_covariances(*running, eps)
            y = torch.empty_like(y)
            _stereo_filter(v * scale2, r, x_planes, y, self.eps, self.batch_size)
        return y.permute(2, 3, 1, 0)

    def _em(self, y: Tensor, x: Tensor) -> Tensor:
        """The causal EM for any number of channels (one, in practice), as
        `expectation_maximization`."""
        scale2 = self._scale2(x)[:, None, None]
        eps = self._covariance_eps(scale2)
        for sums in self._sums:
            v = _power(y).mean(dim=2)  # (nb_frames, nb_bins, nb_sources)
            outer = torch.einsum("tbcs,tbds->tbcds", y, y.conj())
            total, covariance = self._update(sums, (v, outer), dim=0)
            R = covariance / (eps + total)[:, :, None, None, :]
            y = _filter(v * scale2, R, x, self.eps, self.batch_size)
        return y

    def _scale2(self, x: Tensor) -> Tensor:
        """The scale of the powers, `(max |x| / 10)^-2` (see `_max_abs`), for each frame of the
        mixture `x` `(nb_frames, nb_bins, nb_channels)`, from the maximum over all frames up to
        it (this call's and the earlier calls'), `(nb_frames,)`. The Wiener estimates
        `v_j R_j Cxx^-1 x` do not change with it but through the regulariser, which it keeps
        in proportion to the powers: large enough beside them for float32, and small beside
        those of a quiet mixture."""
        peaks = _power(x).flatten(1).amax(dim=1)
        if self._peak is not None:
            peaks = torch.maximum(peaks, self._peak)
        peaks = torch.cummax(peaks, dim=0).values
        self._peak = peaks[-1:].clone()
        return torch.clamp(peaks / SCALE_FACTOR**2, min=MIN_SCALE**2).reciprocal()

    def _covariance_eps(self, scale2: Tensor) -> Tensor:
        """The regulariser of the covariances' unscaled sums, per frame (shaped as `scale2`):
        `eps`, made as much smaller as a quiet mixture's powers are scaled up by `scale2`."""
        return self.eps * torch.clamp(scale2.reciprocal(), max=1.0)

    def _update(self, sums: list[Tensor], terms: tuple[Tensor, ...], dim: int) -> list[Tensor]:
        """The running sums of per-frame `terms` (frames axis `dim`) continuing `sums`, which
        then hold the sums after the last frame."""
        carries = sums or [None] * len(terms)
        running = [
            _running_sum(term, carry, self.decay, dim)
            for term, carry in zip(terms, carries, strict=True)
        ]
        sums[:] = [total.narrow(dim, total.shape[dim] - 1, 1).clone() for total in running]
        return running


def _running_sum(terms: Tensor, carry: Tensor | None, decay: float, dim: int) -> Tensor:
    """Exponentially weighted running sums along the frames axis `dim` of `terms`:
    `s_t = decay * s_{t-1} + terms_t`, from `s_{-1} = carry` (frames axis of size 1; zero if
    None). A decay of 1 gives plain cumulative sums.

    Computed as `s_t = decay^t (decay s_{-1} + sum_{i <= t} decay^-i terms_i)`, a cumulative
    sum, over pieces short enough that `decay^-i` stays below `exp(MAX_GROWTH)`.
    """
    if decay == 1.0:
        sums = torch.cumsum(terms, dim=dim)
        return sums if carry is None else sums.add_(carry)
    step = max(1, int(MAX_GROWTH / -math.log(decay)))
    pieces = []
    for piece in terms.split(step, dim=dim):
        shape = [1] * terms.dim()
        shape[dim] = piece.shape[dim]
        powers = decay ** torch.arange(piece.shape[dim], dtype=torch.float64)
        powers = powers.to(piece.real.dtype).to(piece.device).view(shape)
        sums = torch.cumsum(piece / powers, dim=dim)
        if carry is not None:
            sums += carry * decay
        sums *= powers
        carry = sums.narrow(dim, sums.shape[dim] - 1, 1)
        pieces.append(sums)
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)
