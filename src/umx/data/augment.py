"""Source augmentations for training, chosen by name from a registry.

An augmentation takes one source, `(nb_channels, nb_timesteps)`, and returns the augmented source.
Randomness comes from torch's global generator, which the trainer seeds every epoch and which
DataLoader workers seed per worker. Add one with the `register` decorator::

    @register("polarity")
    def polarity(audio: Tensor) -> Tensor:
        return -audio if torch.rand(()) < 0.5 else audio
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from umx.defaults import DEFAULT_AUGMENTATIONS  # noqa: F401 (re-exported)
from umx.errors import UmxError

Augmentation = Callable[[Tensor], Tensor]

AUGMENTATIONS: dict[str, Augmentation] = {}
"""Name → augmentation; `register` adds to it."""

GAIN_LOW, GAIN_HIGH = 0.25, 1.25
SWAP_PROBABILITY = 0.5


def register(name: str) -> Callable[[Augmentation], Augmentation]:
    """Decorator that makes an augmentation available under `name`."""

    def add(function: Augmentation) -> Augmentation:
        if name in AUGMENTATIONS:
            raise ValueError(f"an augmentation named {name!r} is already registered")
        AUGMENTATIONS[name] = function
        return function

    return add


@register("gain")
def gain(audio: Tensor) -> Tensor:
    """Scale the source by a gain drawn uniformly from [0.25, 1.25)."""
    return audio * (GAIN_LOW + torch.rand(()) * (GAIN_HIGH - GAIN_LOW))


@register("channelswap")
def channelswap(audio: Tensor) -> Tensor:
    """Swap the channels of a stereo source with probability 0.5; other sources pass unchanged."""
    if audio.shape[0] == 2 and torch.rand(()) < SWAP_PROBABILITY:
        return audio.flip(0)
    return audio


@register("forcestereo")
def forcestereo(audio: Tensor) -> Tensor:
    """Make the source stereo: mono is duplicated, channels beyond the second are dropped."""
    return audio.expand(2, -1).clone() if audio.shape[0] == 1 else audio[:2]


class Compose:
    """Apply augmentations in order. Picklable, so it travels to DataLoader worker processes.

    Args:
        names: names registered in `AUGMENTATIONS`.

    Raises:
        UmxError: a name is not registered.
    """

    def __init__(self, names: Sequence[str]) -> None:
        unknown = [name for name in names if name not in AUGMENTATIONS]
        if unknown:
            raise UmxError(
                f"unknown augmentation {unknown[0]!r}; the augmentations are "
                f"{', '.join(AUGMENTATIONS)}"
            )
        self.names = tuple(names)

    def __call__(self, audio: Tensor) -> Tensor:
        for name in self.names:
            audio = AUGMENTATIONS[name](audio)
        return audio

    def __repr__(self) -> str:
        return f"Compose({list(self.names)})"
