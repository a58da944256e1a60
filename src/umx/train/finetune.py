"""Fine-tuning (`umx train --model`, `umx distill --student`): the architecture a model to
start from fixes, which the options given must agree with and the data is then read with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from umx.errors import UmxError
from umx.separator import Separator
from umx.transforms import bandwidth_to_max_bin


def fine_tuned_architecture(
    separator: Separator, target: str, given: Mapping[str, Any], name: str
) -> dict[str, Any]:
    """The architecture options of `separator`'s `target` model, which fine-tuning it keeps.

    Args:
        given: the options asked for (keys of `umx.train.config.ARCHITECTURE`, None or absent
            where not given); each must agree with the model.
        name: the model as the user named it, for messages.

    Raises:
        UmxError: an option given differs from the model's, naming both.
    """
    model = separator.target_models[target]
    rate = separator.sample_rate
    found = {
        "nfft": separator.n_fft,
        "nhop": separator.n_hop,
        "nb_channels": separator.nb_channels,
        "hidden_size": model.hidden_size,
        "unidirectional": model.unidirectional,
        "bandwidth": (model.nb_bins - 1) * rate / separator.n_fft,
    }
    for key, value in found.items():
        wanted = given.get(key)
        if wanted is None:
            continue
        if key == "bandwidth":
            same = bandwidth_to_max_bin(rate, found["nfft"], wanted) == model.nb_bins
        else:
            same = wanted == value
        if same:
            continue
        if key == "unidirectional":
            raise UmxError(
                f"{name} is bidirectional; --unidirectional needs a causal model to start from"
                if wanted
                else f"{name} is causal (unidirectional): fine-tuning keeps it causal"
            )
        option = f"--{key.replace('_', '-')}"
        raise UmxError(
            f"{option} {wanted} differs from {name}'s {value}: fine-tuning keeps the model's, "
            f"so leave {option} out"
        )
    return found
