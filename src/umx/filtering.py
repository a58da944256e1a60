"""Multichannel Wiener filtering of source estimates, as in the `norbert` library.

Given magnitude estimates for every source and the mixture's complex STFT, build complex source
estimates whose sum is (close to) the mixture. With `niter > 0`, expectation-maximisation refines
per-source power spectral densities `v` and spatial covariance matrices `R`, then applies the
multichannel Wiener gain `v_j R_j Cxx^-1`. Tensors here use one axis order throughout:
`(nb_frames, nb_bins, nb_channels[, nb_sources])`.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-10
SCALE_FACTOR = 10.0
EM_BATCH_SIZE = 200


def wiener(
    target_magnitudes: Tensor,
    mix_stft: Tensor,
    niter: int = 1,
    softmask: bool = False,
    residual: bool = False,
    eps: float = EPS,
    batch_size: int | None = EM_BATCH_SIZE,
) -> Tensor:
    """Complex source estimates from magnitude estimates and the mixture.

    Args:
        target_magnitudes: non-negative estimates, `(nb_frames, nb_bins, nb_channels, nb_targets)`;
            `nb_channels` may be 1 for models that see a mono downmix.
        mix_stft: complex mixture, `(nb_frames, nb_bins, nb_channels)`.
        niter: number of EM iterations; 0 keeps the initial estimates.
        softmask: start from ratio masks applied to the mixture instead of the target
            magnitudes with the mixture's phase.
        residual: add one source, the mixture minus the sum of the targets.
        eps: regulariser, as norbert's `eps`.
        batch_size: frames processed at once in EM, bounding memory; all frames if None.

    Returns:
        complex estimates, `(nb_frames, nb_bins, nb_channels, nb_sources)`, where
        `nb_sources = nb_targets + residual`.
    """
    if softmask:
        total = target_magnitudes.sum(dim=-1, keepdim=True)
        y = _scale(mix_stft[..., None], target_magnitudes / (eps + total))
    else:
        phase = torch.polar(torch.ones_like(mix_stft.real), mix_stft.angle())
        y = _scale(phase[..., None], target_magnitudes)
    if residual:
        y = torch.cat([y, mix_stft[..., None] - y.sum(dim=-1, keepdim=True)], dim=-1)
    if niter == 0:
        return y

    # Scale down for numerical stability, as norbert does (kept a tensor: no device sync).
    max_abs = torch.clamp(mix_stft.abs().max() / SCALE_FACTOR, min=1.0)
    y = expectation_maximization(y / max_abs, mix_stft / max_abs, niter, eps, batch_size)
    return y * max_abs


def _scale(z: Tensor, r: Tensor) -> Tensor:
    """`z * r` for complex `z` and real `r`, broadcast, without promoting `r` to complex."""
    return torch.view_as_complex(torch.view_as_real(z) * r[..., None])


def expectation_maximization(
    y: Tensor,
    x: Tensor,
    niter: int = 2,
    eps: float = EPS,
    batch_size: int | None = EM_BATCH_SIZE,
) -> Tensor:
    """Refine source estimates with the EM algorithm of the multichannel Wiener filter.

    Args:
        y: initial complex source estimates, `(nb_frames, nb_bins, nb_channels, nb_sources)`.
        x: complex mixture, `(nb_frames, nb_bins, nb_channels)`.
        niter: number of iterations.
        eps: regulariser.
        batch_size: frames filtered at once; all frames if None.

    Returns:
        refined estimates, same shape as `y`.
    """
    nb_frames, _, nb_channels = x.shape
    batch_size = batch_size or nb_frames
    if nb_channels == 2:
        return _stereo_expectation_maximization(y, x, niter, eps, batch_size)
    regularization = eps**0.5 * torch.eye(nb_channels, dtype=x.dtype, device=x.device)
    for _ in range(niter):
        v, R = local_gaussian_model(y, eps)
        v = v.to(x.dtype)
        y = torch.empty_like(y)
        for start in range(0, nb_frames, batch_size):
            t = slice(start, start + batch_size)
            Cxx = torch.einsum("tbs,bcds->tbcd", v[t], R) + regularization
            z = torch.einsum("tbcd,tbd->tbc", _invert(Cxx, eps), x[t])
            # Wiener gain v_j R_j Cxx^-1 applied to the mixture.
            y[t] = v[t, :, None, :] * torch.einsum("bcds,tbd->tbcs", R, z)
    return y


def _stereo_expectation_maximization(
    y: Tensor, x: Tensor, niter: int, eps: float, batch_size: int
) -> Tensor:
    """`expectation_maximization` for two channels, written out element by element.

    The same arithmetic as the general case, but the 2x2 Hermitian matrices are kept as their
    entries (`r00`, `r11` real, `r01` complex, `r10 = conj(r01)`) and complex numbers as real
    and imaginary parts in `(nb_sources, nb_frames, nb_bins)` order, so that every step is one
    pass of vectorised real arithmetic over contiguous bins instead of many small matrix
    products over a trailing source axis.
    """
    nb_frames = x.shape[0]
    regularization = eps**0.5
    # (nb_sources, nb_channels, nb_frames, nb_bins), contiguous: bins innermost.
    yr = y.real.permute(3, 2, 0, 1).contiguous()
    yi = y.imag.permute(3, 2, 0, 1).contiguous()
    x0r, x0i, x1r, x1i = (part[:, :, c] for c in (0, 1) for part in (x.real, x.imag))
    for _ in range(niter):
        # Local Gaussian model: v (s, t, b); R's entries (s, 1, b), normalised by sum_t v.
        p0 = yr[:, 0] ** 2 + yi[:, 0] ** 2
        p1 = yr[:, 1] ** 2 + yi[:, 1] ** 2
        v = (p0 + p1) / 2
        norm = 1.0 / (eps + v.sum(dim=1, keepdim=True))
        r00 = p0.sum(dim=1, keepdim=True) * norm
        r11 = p1.sum(dim=1, keepdim=True) * norm
        del p0, p1
        # r01 = sum_t y0 conj(y1), real and imaginary parts.
        r01r = (yr[:, 0] * yr[:, 1] + yi[:, 0] * yi[:, 1]).sum(dim=1, keepdim=True) * norm
        r01i = (yi[:, 0] * yr[:, 1] - yr[:, 0] * yi[:, 1]).sum(dim=1, keepdim=True) * norm
        for start in range(0, nb_frames, batch_size):
            t = slice(start, start + batch_size)
            vt = v[:, t]
            # Mixture covariance Cxx = sum_j v_j R_j + regularisation: [[a, b], [conj b, d]].
            a = (vt * r00).sum(dim=0) + regularization
            d = (vt * r11).sum(dim=0) + regularization
            br = (vt * r01r).sum(dim=0)
            bi = (vt * r01i).sum(dim=0)
            inv_det = 1.0 / (a * d - (br**2 + bi**2))
            # z = Cxx^-1 x
            z0r = (d * x0r[t] - (br * x1r[t] - bi * x1i[t])) * inv_det
            z0i = (d * x0i[t] - (br * x1i[t] + bi * x1r[t])) * inv_det
            z1r = (a * x1r[t] - (br * x0r[t] + bi * x0i[t])) * inv_det
            z1i = (a * x1i[t] - (br * x0i[t] - bi * x0r[t])) * inv_det
            # The Wiener gain v_j R_j applied to z.
            yr[:, 0, t] = vt * (r00 * z0r + r01r * z1r - r01i * z1i)
            yi[:, 0, t] = vt * (r00 * z0i + r01r * z1i + r01i * z1r)
            yr[:, 1, t] = vt * (r01r * z0r + r01i * z0i + r11 * z1r)
            yi[:, 1, t] = vt * (r01r * z0i - r01i * z0r + r11 * z1i)
    return torch.complex(yr, yi).permute(2, 3, 1, 0)


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
