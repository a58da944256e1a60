"""Regenerate `reference.pt`: outputs of the reference implementation (openunmix 1.3.0).

Not run by the tests. It needs `openunmix==1.3.0` importable (e.g. `pip download --no-deps
openunmix==1.3.0`, unzip the wheel and put it on PYTHONPATH); torchaudio is replaced by an empty
stand-in, since the reference only uses it for file I/O. Run: `python tests/data/make_reference.py`.

The file holds small models with random weights in the official layout (state dicts with the
reference's own extra keys), a mixture, and the reference Separator's stems for several settings.
"""

import sys
import types
from pathlib import Path

import torch

sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
from openunmix.model import OpenUnmix, Separator  # noqa: E402

TARGETS = ("vocals", "drums", "bass", "other")
# (name, sample_rate, n_fft, n_hop, nb_channels, hidden_size, max_bin, nb_timesteps, level):
# the mixture is noise of standard deviation `level`, loud enough that its STFT peaks above 10,
# where umx's Wiener filter scales the mixture as the reference does (a quieter one umx scales
# up, where the reference leaves it: see `umx.filtering._max_abs`).
MODELS = [
    ("stereo", 44100.0, 512, 128, 2, 16, 160, 9000, 0.3),
    ("mono", 16000.0, 256, 64, 1, 12, 100, 5000, 0.5),
]
# (niter, softmask, residual, wiener_win_len)
SETTINGS = [
    (0, False, False, 300),
    (1, False, False, 300),
    (2, True, True, 20),
    (1, False, True, None),
]


def main() -> None:
    torch.manual_seed(2024)
    cases = {}
    for name, rate, n_fft, n_hop, nb_channels, hidden, max_bin, length, level in MODELS:
        nb_bins = n_fft // 2 + 1
        models = {}
        for target in TARGETS:
            model = OpenUnmix(
                nb_bins=nb_bins,
                nb_channels=nb_channels,
                hidden_size=hidden,
                max_bin=max_bin,
                input_mean=torch.rand(nb_bins).numpy(),
                input_scale=(torch.rand(nb_bins) + 0.5).numpy(),
            )
            # Random, trained-looking weights: every parameter and BN statistic set.
            with torch.no_grad():
                for key, value in model.state_dict().items():
                    if value.dtype.is_floating_point:
                        value.copy_(torch.randn_like(value) * 0.5)
                        if "running_var" in key or key in ("input_scale", "output_scale"):
                            value.abs_().add_(0.5)
            models[target] = model.eval()
        audio = torch.randn(1, nb_channels, length) * level
        outputs = {}
        for niter, softmask, residual, win in SETTINGS:
            separator = Separator(
                models,
                niter=niter,
                softmask=softmask,
                residual=residual,
                sample_rate=rate,
                n_fft=n_fft,
                n_hop=n_hop,
                nb_channels=nb_channels,
                wiener_win_len=win,
            ).eval()
            with torch.no_grad():
                outputs[(niter, softmask, residual, win)] = separator(audio)
        cases[name] = {
            "config": {
                "sample_rate": rate,
                "nfft": n_fft,
                "nhop": n_hop,
                "nb_channels": nb_channels,
            },
            "state_dicts": {
                t: {**m.state_dict(), "sample_rate": torch.tensor(rate)} for t, m in models.items()
            },
            "audio": audio,
            "outputs": {repr(k): v for k, v in outputs.items()},
        }
    torch.save(cases, Path(__file__).with_name("reference.pt"))


if __name__ == "__main__":
    main()
