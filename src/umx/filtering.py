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
        y = (target_magnitudes / (eps + total)) * mix_stft[..., None]
    else:
        phase = torch.polar(torch.ones_like(mix_stft.real), mix_stft.angle())
        y = target_magnitudes * phase[..., None]
    if residual:
        y = torch.cat([y, mix_stft[..., None] - y.sum(dim=-1, keepdim=True)], dim=-1)
    if niter == 0:
        return y

    # Scale down for numerical stability, as norbert does.
    max_abs = max(1.0, float(mix_stft.abs().max()) / SCALE_FACTOR)
    y = expectation_maximization(y / max_abs, mix_stft / max_abs, niter, eps, batch_size)
    return y * max_abs


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
