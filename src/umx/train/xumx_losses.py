"""X-UMX's training losses: the multi-domain loss and the combination scheme (Sawata et al.).

The multi-domain loss adds to the magnitude MSE a time-domain term, the weighted SDR of Choi et
al. ("Phase-aware speech enhancement with deep complex U-Net", ICLR 2019), computed on the
estimates' waveforms (the estimated magnitudes with the mixture's phase). The combination
scheme scores not only each target but also every sum of 2 to `nb_targets - 1` targets: for
vocals/drums/bass/other, 4 single targets and 10 combinations. The definitions and the default
weight of the time-domain term (10) are those of asteroid's X-UMX recipe
(`egs/musdb18/X-UMX/train.py`, `local/conf.yml`).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor
from torch.nn import functional as F

TIME_WEIGHT = 10.0  # weight of the time-domain term, as in the published recipe
EPS = 1e-10


def target_groups(nb_targets: int, combine: bool = True) -> list[tuple[int, ...]]:
    """The groups of targets the losses score: each target alone, then with `combine` every
    combination of 2 to `nb_targets - 1` targets, in `itertools.combinations` order."""
    sizes = range(1, nb_targets if combine else 2)
    return [group for size in sizes for group in itertools.combinations(range(nb_targets), size)]


def _group_sums(sources: Tensor, groups: list[tuple[int, ...]]) -> Tensor:
    """`(nb_targets, ...)` → `(nb_groups, ...)`: the sum of each group's sources."""
    return torch.stack([sources[list(group)].sum(0) for group in groups])


def frequency_loss(estimates: Tensor, targets: Tensor, groups: list[tuple[int, ...]]) -> Tensor:
    """Mean over the groups of the MSE between the sums of their estimated and true magnitudes.

    Args:
        estimates, targets: magnitudes, `(nb_targets, nb_samples, nb_channels, nb_bins,
            nb_frames)`.
        groups: see `target_groups`.

    Returns:
        the loss, a scalar.
    """
    return F.mse_loss(_group_sums(estimates, groups), _group_sums(targets, groups))


def weighted_sdr_loss(estimates: Tensor, references: Tensor, mixture: Tensor) -> Tensor:
    """The weighted SDR loss of Choi et al., averaged over signals; -1 for perfect estimates.

    Each signal contributes `-a cos(s_hat, s) - (1 - a) cos(x - s_hat, x - s)`, where `x` is its
    mixture, `s` its reference and `a = |s|^2 / (|s|^2 + |x - s|^2)`: the estimate and what it
    leaves of the mixture should both point the right way, weighted by their energies.

    Args:
        estimates, references, mixture: waveforms of the same shape, `(..., nb_timesteps)`.

    Returns:
        the loss, a scalar in [-1, 1].
    """
    noise, noise_hat = mixture - references, mixture - estimates
    energy = references.square().sum(-1)
    alpha = energy / (energy + noise.square().sum(-1) + EPS)
    return (
        -alpha * _cosine(estimates, references) - (1 - alpha) * _cosine(noise_hat, noise)
    ).mean()


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity along the last axis, kept finite for silent signals."""
    norms = torch.sqrt(EPS + a.square().sum(-1)) * torch.sqrt(EPS + b.square().sum(-1))
    return (a * b).sum(-1) / (norms + EPS)


def time_loss(estimates: Tensor, targets: Tensor, groups: list[tuple[int, ...]]) -> Tensor:
    """1 + the weighted SDR loss of every group's summed waveforms, the mixture being the sum
    of the true targets: 0 for perfect estimates, at most 2.

    Args:
        estimates, targets: waveforms, `(nb_targets, nb_samples, nb_channels, nb_timesteps)`.
        groups: see `target_groups`.

    Returns:
        the loss, a scalar.
    """
    mixture = targets.sum(0).expand(len(groups), *targets.shape[1:])
    return 1.0 + weighted_sdr_loss(
        _group_sums(estimates, groups), _group_sums(targets, groups), mixture
    )


def multi_domain_loss(
    magnitudes: tuple[Tensor, Tensor],
    waveforms: tuple[Tensor, Tensor] | None,
    *,
    combine: bool = True,
    time_weight: float = TIME_WEIGHT,
) -> Tensor:
    """X-UMX's loss: `frequency_loss + time_weight * time_loss` over the target groups.

    Args:
        magnitudes: estimated and true magnitudes, `(nb_targets, nb_samples, nb_channels,
            nb_bins, nb_frames)` each.
        waveforms: estimated and true waveforms, `(nb_targets, nb_samples, nb_channels,
            nb_timesteps)` each; None for the magnitude term alone.
        combine: score the combinations of targets too (the combination scheme).
        time_weight: weight of the time-domain term.

    Returns:
        the loss, a scalar.
    """
    groups = target_groups(magnitudes[0].shape[0], combine)
    loss = frequency_loss(*magnitudes, groups)
    if waveforms is not None:
        loss = loss + time_weight * time_loss(*waveforms, groups)
    return loss
