"""What X-UMX costs against Open-Unmix at the published size: parameters and time per chunk.

Run by hand (not part of the test suite), from the repository root:

    .venv/bin/python benchmarks/xumx_cost.py                  # 30 s chunk, 1 thread, 5 repeats
    .venv/bin/python benchmarks/xumx_cost.py --threads 2 --repeat 3 --device cuda

Both models have fixed random weights at umxhq's size (44.1 kHz, n_fft 4096, hop 1024, hidden
512, 3 LSTM layers, 16 kHz bandwidth): four `OpenUnmix` target models against one `CrossUnmix` of
the four targets. It times the magnitude models alone and the whole `Separator` (STFT, models,
Wiener EM with one iteration, iSTFT) on one chunk of stereo noise, and prints the fastest of
`--repeat` runs of each, round-robin.
"""

from __future__ import annotations

import argparse
import time

import torch

from umx.model import CrossUnmix, OpenUnmix
from umx.separator import Separator
from umx.transforms import bandwidth_to_max_bin, magnitude, stft

TARGETS = ["vocals", "drums", "bass", "other"]
RATE, N_FFT, N_HOP = 44100, 4096, 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="chunk length")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each case")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    max_bin = bandwidth_to_max_bin(RATE, N_FFT)
    size = {"nb_bins": N_FFT // 2 + 1, "nb_channels": 2, "hidden_size": 512, "max_bin": max_bin}
    umx = {target: OpenUnmix(**size).freeze() for target in TARGETS}
    xumx = CrossUnmix(TARGETS, **size).freeze()
    separators = {
        "umx": Separator(umx, sample_rate=RATE, n_fft=N_FFT, n_hop=N_HOP),
        "xumx": Separator(
            {t: xumx.target_view(t) for t in TARGETS}, sample_rate=RATE, n_fft=N_FFT, n_hop=N_HOP
        ),
    }
    for separator in separators.values():
        separator.to(args.device)
    audio = 0.1 * torch.randn(1, 2, round(args.seconds * RATE), device=args.device)
    mix = magnitude(stft(audio, N_FFT, N_HOP))

    def models_umx() -> None:
        for model in umx.values():
            model(mix)

    def models_xumx() -> None:
        xumx(mix)

    cases = {
        "models, umx (4 x OpenUnmix)": models_umx,
        "models, xumx (CrossUnmix)": models_xumx,
        "separator, umx": lambda: separators["umx"](audio),
        "separator, xumx": lambda: separators["xumx"](audio),
    }
    best = dict.fromkeys(cases, float("inf"))
    with torch.inference_mode():
        for _ in range(args.repeat):
            for name, case in cases.items():
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                case()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                best[name] = min(best[name], time.perf_counter() - start)
    parameters = {
        "umx": sum(p.numel() for model in umx.values() for p in model.parameters()),
        "xumx": sum(p.numel() for p in xumx.parameters()),
    }
    print(f"parameters: umx {parameters['umx']:,}, xumx {parameters['xumx']:,}")
    print(
        f"{args.seconds:g} s chunk, {args.threads} thread(s), {args.device}, best of {args.repeat}:"
    )
    for name, seconds in best.items():
        print(f"  {name}: {seconds:.3f} s")


if __name__ == "__main__":
    main()
