"""X-UMX's losses (`umx.train.xumx_losses`) against references written from their definitions.

asteroid defines these losses in its X-UMX recipe (`egs/musdb18/X-UMX/train.py`), which its
wheel and sdist do not ship; the frequency-domain reference below uses asteroid's packaged
`singlesrc_mse`, the time-domain one follows the recipe's definition signal by signal in double
precision.
"""

import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

from umx.train.xumx_losses import (
    frequency_loss,
    multi_domain_loss,
    target_groups,
    time_loss,
    weighted_sdr_loss,
)

SHIMS = str(Path(__file__).parent / "asteroid_shims")


@pytest.fixture(scope="module")
def singlesrc_mse():
    sys.path.insert(0, SHIMS)
    try:
        return pytest.importorskip("asteroid.losses").singlesrc_mse
    finally:
        sys.path.remove(SHIMS)


def _batch(seed=0, nb_timesteps=2000):
    generator = torch.Generator().manual_seed(seed)
    truth = torch.randn(4, 3, 2, nb_timesteps, generator=generator)
    estimate = truth + 0.7 * torch.randn(truth.shape, generator=generator)
    magnitudes = torch.rand(2, 4, 3, 2, 65, 20, generator=generator)
    return estimate, truth, magnitudes


def test_target_groups_are_singles_then_combinations():
    assert target_groups(4, combine=False) == [(0,), (1,), (2,), (3,)]
    groups = target_groups(4)
    assert len(groups) == 14 and groups[4] == (0, 1) and groups[-1] == (1, 2, 3)
    assert target_groups(2) == [(0,), (1,)]


@pytest.mark.parametrize("combine", [False, True])
def test_frequency_loss_equals_asteroid_mse_over_groups(singlesrc_mse, combine):
    estimate, truth = _batch(1)[2]
    terms = []
    for size in range(1, 4 if combine else 2):
        for group in itertools.combinations(range(4), size):
            est, ref = (sum(x[i] for i in group) for x in (estimate, truth))
            terms.append(singlesrc_mse(est, ref).mean())
    expected = sum(terms) / len(terms)
    got = frequency_loss(estimate, truth, target_groups(4, combine))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _reference_time_loss(estimate, truth, combine, eps=1e-10):
    """The recipe's time-domain loss, one signal at a time, in double precision."""
    estimate, truth = estimate.double(), truth.double()
    mixture = truth.sum(0)
    terms = []
    for size in range(1, 4 if combine else 2):
        for group in itertools.combinations(range(4), size):
            est, ref = (sum(x[i] for i in group) for x in (estimate, truth))
            for b, c in itertools.product(range(truth.shape[1]), range(truth.shape[2])):
                s, s_hat, x = ref[b, c], est[b, c], mixture[b, c]
                n, n_hat = x - s, x - s_hat
                alpha = s.dot(s) / (s.dot(s) + n.dot(n) + eps)
                cos_s = s_hat.dot(s) / (
                    math.sqrt(eps + s_hat.dot(s_hat)) * math.sqrt(eps + s.dot(s)) + eps
                )
                cos_n = n_hat.dot(n) / (
                    math.sqrt(eps + n_hat.dot(n_hat)) * math.sqrt(eps + n.dot(n)) + eps
                )
                terms.append(-alpha * cos_s - (1 - alpha) * cos_n)
    return 1.0 + sum(terms) / len(terms)


@pytest.mark.parametrize("combine", [False, True])
def test_time_loss_equals_the_recipes_definition(combine):
    estimate, truth, _ = _batch(2)
    got = time_loss(estimate, truth, target_groups(4, combine))
    expected = _reference_time_loss(estimate, truth, combine)
    assert 0.05 < float(got) < 1.0  # noisy estimates: neither perfect nor useless
    assert abs(float(got) - float(expected)) < 1e-5


def test_time_loss_is_zero_for_perfect_estimates_and_larger_for_worse():
    _, truth, _ = _batch(3)
    groups = target_groups(4)
    assert abs(float(time_loss(truth, truth, groups))) < 1e-6
    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(4))
    losses = [float(time_loss(truth + level * noise, truth, groups)) for level in (0.1, 0.5, 2.0)]
    assert losses == sorted(losses) and losses[-1] < 2.0


def test_weighted_sdr_of_silent_signals_is_finite():
    silent = torch.zeros(2, 100)
    loss = weighted_sdr_loss(silent, silent, silent)
    assert math.isfinite(float(loss))


def test_multi_domain_loss_weights_the_time_term():
    estimate, truth, magnitudes = _batch(5)
    groups = target_groups(4)
    spectral = frequency_loss(magnitudes[0], magnitudes[1], groups)
    temporal = time_loss(estimate, truth, groups)
    both = multi_domain_loss(tuple(magnitudes), (estimate, truth), time_weight=10.0)
    torch.testing.assert_close(both, spectral + 10.0 * temporal)
    torch.testing.assert_close(multi_domain_loss(tuple(magnitudes), None), spectral)
    alone = multi_domain_loss(tuple(magnitudes), None, combine=False)
    torch.testing.assert_close(alone, frequency_loss(*magnitudes, target_groups(4, False)))
