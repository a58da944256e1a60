"""Separation speed and memory: umx against the reference openunmix 1.3.0, side by side.

Run by hand (not part of the test suite), from the repository root:

    .venv/bin/python benchmarks/separation.py                 # 30 s, 3 min and 10 min
    .venv/bin/python benchmarks/separation.py --quick         # 30 s only
    .venv/bin/python benchmarks/separation.py --device cuda   # models on a GPU

It generates deterministic music-like stereo signals, builds four umxhq-size target models with
fixed random weights in the official layout, installs the reference (once) into its own virtual
environment `benchmarks/.venv-reference` with the same torch wheel, and runs every case in its
own subprocess, which measures its own wall time and peak RSS. Stems are compared by their max
abs difference and its energy ratio in dB. A Markdown table goes to
`benchmarks/results/<date>-<time>-<host>.md`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
import venv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
REFERENCE_VENV = HERE / ".venv-reference"
REFERENCE_SHIMS = HERE / "reference_shims"
RESULTS = HERE / "results"
UMX_CLI = Path(sys.executable).parent / "umx"

SAMPLE_RATE = 44100
TARGETS = ("vocals", "drums", "bass", "other")
TORCH_VERSION = "2.13.0"
OPENUNMIX_VERSION = "1.3.0"
SEED = 20240601
DEFAULT_DURATIONS = (30.0, 180.0, 600.0)
REFERENCE_GB_PER_MINUTE = 1.6  # the reference's peak RSS grows ~25 MB per second of audio


# --- inputs -------------------------------------------------------------------------------------


def music_like(duration: float, seed: int = SEED) -> np.ndarray:
    """A deterministic stereo 'song', `(nb_timesteps, 2)` float32: harmonic tones on a chord
    progression, a bass line, noise-burst drums and a slow loudness envelope, panned apart."""
    rng = np.random.default_rng(seed)
    n = int(duration * SAMPLE_RATE)
    out = np.zeros((n, 2), dtype=np.float32)
    block = SAMPLE_RATE * 2  # one chord every two seconds, rendered block by block
    t_block = np.arange(block) / SAMPLE_RATE
    for start in range(0, n, block):
        length = min(block, n - start)
        t = t_block[:length]
        root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
        left = np.zeros(length)
        right = np.zeros(length)
        for k, ratio in enumerate((1.0, 1.26, 1.5, 2.0)):
            f = 2 * root * ratio
            tone = sum(np.sin(2 * np.pi * f * h * t + rng.uniform(0, 6.28)) / h for h in (1, 2, 3))
            pan = (k + 1) / 5
            left += (1 - pan) * tone
            right += pan * tone
        bass = np.sin(2 * np.pi * root / 2 * t) * (1 - np.exp(-t * 20))
        drums = np.zeros(length)
        for beat in range(0, length, SAMPLE_RATE // 4):
            hit = min(4096, length - beat)
            drums[beat : beat + hit] += rng.standard_normal(hit) * np.exp(-np.arange(hit) / 600)
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * (start + np.arange(length)) / SAMPLE_RATE / 17)
        out[start : start + length, 0] = envelope * (0.05 * left + 0.2 * bass + 0.15 * drums)
        out[start : start + length, 1] = envelope * (0.05 * right + 0.2 * bass + 0.12 * drums)
    return out


def signal_path(duration: float) -> Path:
    import soundfile as sf

    path = CACHE / f"signal-{duration:g}s.wav"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.wav")
        sf.write(tmp, music_like(duration), SAMPLE_RATE, subtype="FLOAT")
        tmp.rename(path)
    return path


def model_dir() -> Path:
    """Four umxhq-size target models with fixed random weights, in the official layout."""
    import torch

    from umx.model import OpenUnmix
    from umx.modeldir import save_separator
    from umx.separator import Separator

    directory = CACHE / "model-umxhq-random"
    if (directory / "separator.json").exists():
        return directory
    models = {}
    for k, target in enumerate(TARGETS):
        torch.manual_seed(SEED + k)
        model = OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=512, max_bin=1487)
        with torch.no_grad():
            # Magnitudes of the test signals are ~0.1-10: normalise them roughly, and give the
            # output layer a spread so that masks vary between 0 and ~2 per bin and target.
            model.input_scale.fill_(1.0)
            model.bn3.weight.uniform_(0.5, 1.5)
            model.bn3.bias.normal_(0.0, 0.5)
            model.output_mean.uniform_(-0.5, 1.0)
        models[target] = model.freeze()
    save_separator(Separator(models), directory, force=True)
    return directory


def warm_graph_cache(model: Path) -> None:
    """Export the models' ONNX graphs (float32 and int8) into the model cache once, so that
    the onnxruntime cases time the loading of the graphs, as every run after the first does."""
    from umx.onnx.runtime import onnx_separator
    from umx.zoo import load_separator

    separator = load_separator(model, progress=False)
    for quantize in (None, "int8"):
        onnx_separator(separator, quantize=quantize)


# --- the reference's environment ----------------------------------------------------------------


def reference_python() -> Path:
    """The interpreter of the reference's own venv, created on first use."""
    python = REFERENCE_VENV / "bin" / "python"
    marker = REFERENCE_VENV / ".complete"
    if marker.exists():
        return python
    print(f"creating the reference environment in {REFERENCE_VENV} ...", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(REFERENCE_VENV)
    constraints = REFERENCE_VENV / "constraints.txt"
    constraints.write_text(f"torch=={TORCH_VERSION}\n")
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(
        [*pip, "-c", str(constraints), f"torch=={TORCH_VERSION}", "numpy", "tqdm", "soundfile"],
        check=True,
    )
    subprocess.run([*pip, "--no-deps", f"openunmix=={OPENUNMIX_VERSION}"], check=True)
    marker.touch()
    return python


def reference_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REFERENCE_SHIMS)}


# --- cases --------------------------------------------------------------------------------------


@dataclass
class Case:
    impl: str  # "umx" or "reference"
    interface: str  # "api" or "cli"
    mode: str  # "whole" or "chunked"
    niter: int
    duration: float
    backend: str = "torch"  # umx only: "torch", "onnxruntime" or "int8" (onnxruntime, int8)

    @property
    def name(self) -> str:
        backend = "" if self.backend == "torch" else f"-{self.backend}"
        return f"{self.impl}-{self.interface}-{self.mode}-n{self.niter}-{self.duration:g}s{backend}"

    @property
    def stems(self) -> Path:
        """Where the case leaves its stems: an `.npy` of `(nb_timesteps, nb_targets,
        nb_channels)` for the API, a directory of wav files for the CLI."""
        suffix = "" if self.interface == "cli" else ".npy"
        return CACHE / "stems" / f"{self.name}{suffix}"


def peak_rss_mb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024  # kB on Linux


class NpyStream:
    """Appends time-major pieces `(nb_piece, ...)` to an `.npy` file without holding them all."""

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.file = open(path, "wb")  # noqa: SIM115
        np.lib.format.write_array_header_1_0(
            self.file,
            {"descr": "<f4", "fortran_order": False, "shape": shape},
        )

    def write(self, piece: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(piece, dtype=np.float32).tobytes())

    def close(self) -> None:
        self.file.close()


BACKEND_OPTIONS = {
    "torch": [],
    "onnxruntime": ["--backend", "onnxruntime"],
    "int8": ["--backend", "onnxruntime", "--quantize", "int8"],
}


def time_models(separator, result: dict) -> None:
    """Add the time spent in the separator's target models to `result["model_s"]`."""
    result["model_s"] = 0.0

    def start(module, _inputs) -> None:
        module.started = time.perf_counter()

    def stop(module, _inputs, _output) -> None:
        result["model_s"] += time.perf_counter() - module.started

    for model in separator.target_models.values():
        model.register_forward_pre_hook(start)
        model.register_forward_hook(stop)


def run_child(spec: dict) -> dict:
    """Run one case in this (fresh) process; report wall time and peak RSS."""
    case = Case(**spec["case"])
    signal, model, device = spec["signal"], spec["model"], spec["device"]
    case.stems.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    if case.interface == "cli":
        if case.impl == "umx":
            command = [
                str(UMX_CLI),
                "separate",
                signal,
                "--model",
                model,
                "--outdir",
                str(case.stems),
                "--niter",
                str(case.niter),
                "--subtype",
                "FLOAT",
                "--clip",
                "none",
                "--device",
                device,
                "--force",
                "-q",
                "--filename",
                "{target}.{ext}",
            ]
            command += ["--whole-track"] if case.mode == "whole" else []
            command += BACKEND_OPTIONS[case.backend]
            env = None
        else:
            command = [
                str(REFERENCE_VENV / "bin" / "umx"),
                signal,
                "--model",
                model,
                "--targets",
                *TARGETS,
                "--niter",
                str(case.niter),
                "--outdir",
                str(case.stems),
            ] + (["--no-cuda"] if device == "cpu" else [])
            env = reference_env()
        start = time.perf_counter()
        subprocess.run(
            command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        result["wall_s"] = time.perf_counter() - start
        result["peak_rss_mb"] = peak_rss_mb(children=True)
        return result

    import soundfile as sf
    import torch

    result["threads"] = torch.get_num_threads()
    result["torch"] = torch.__version__
    audio = torch.from_numpy(np.ascontiguousarray(sf.read(signal, dtype="float32")[0].T))[None]
    if case.impl == "umx":
        import umx
        from umx.devices import keep_freed_memory
        from umx.zoo import load_separator

        keep_freed_memory()  # as the umx command does (README, Performance)
        result["version"] = umx.__version__
        start = time.perf_counter()
        separator = load_separator(model, niter=case.niter, device=device, progress=False)
        if case.backend != "torch":
            from umx.onnx.runtime import onnx_separator

            quantize = "int8" if case.backend == "int8" else None
            separator = onnx_separator(separator, quantize=quantize)
        time_models(separator, result)
        if case.mode == "whole":
            stems = separator.separate(audio, segment=None)
        else:
            # Stream the chunks to disk, as the CLI does: memory stays flat in duration.
            out = NpyStream(case.stems, (audio.shape[-1], len(TARGETS), audio.shape[1]))
            for piece in separator.iter_chunks(audio):
                out.write(piece[0].permute(2, 0, 1).numpy())
            out.close()
            stems = None
    else:
        import openunmix
        from openunmix.utils import load_separator

        result["version"] = getattr(openunmix, "__version__", OPENUNMIX_VERSION)
        start = time.perf_counter()
        separator = load_separator(
            model_str_or_path=model,
            targets=list(TARGETS),
            niter=case.niter,
            residual=False,
            wiener_win_len=300,
            device=device,
            pretrained=True,
        )
        separator.freeze()  # its directory loader leaves the models in training mode
        time_models(separator, result)
        with torch.no_grad():
            stems = separator(audio.to(device)).cpu()
    result["wall_s"] = time.perf_counter() - start  # the stems are on the host: synchronised
    result["peak_rss_mb"] = peak_rss_mb()
    if device != "cpu":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if stems is not None:
        np.save(case.stems, stems[0].permute(2, 0, 1).numpy())
    return result


def load_stems(case: Case) -> np.ndarray:
    """`(nb_timesteps, nb_targets, nb_channels)` stems of a finished case."""
    if case.interface == "cli":
        import soundfile as sf

        # The reference's CLI writes into a folder named after the input under its outdir.
        files = {path.stem: path for path in case.stems.rglob("*.wav")}
        stems = [sf.read(files[t], dtype="float32")[0] for t in TARGETS]
        return np.stack(stems, axis=1)
    return np.load(case.stems, mmap_mode="r")


def difference(a: Case, b: Case) -> tuple[float, float]:
    """How far the stems of `a` are from those of `b`: the largest absolute difference, and
    the ratio in dB of the energy of `b`'s stems to that of the difference (all stems)."""
    x, y = load_stems(a), load_stems(b)
    n = min(len(x), len(y))
    block = SAMPLE_RATE * 30
    largest, signal, error = 0.0, 0.0, 0.0
    for s in range(0, n, block):
        xs, ys = np.asarray(x[s : s + block], np.float64), np.asarray(y[s : s + block], np.float64)
        largest = max(largest, float(np.abs(xs - ys).max()))
        signal += float(np.square(ys).sum())
        error += float(np.square(xs - ys).sum())
    return largest, 10 * np.log10(signal / error) if error > 0 else float("inf")


MODEL_STAGES = ("torch", "onnxruntime", "int8")


def run_model_stage(spec: dict) -> dict:
    """Time the model stage alone, the four target models on the whole signal's magnitudes,
    for torch float32, onnxruntime float32 and int8, in turns (round-robin, `repeat` times;
    the fastest of each is kept), so that a busy spell of the machine hits them alike."""
    import soundfile as sf
    import torch

    from umx.onnx.runtime import onnx_separator
    from umx.transforms import magnitude, stft
    from umx.zoo import load_separator

    audio = torch.from_numpy(np.ascontiguousarray(sf.read(spec["signal"], dtype="float32")[0].T))
    separator = load_separator(spec["model"], progress=False)
    separators = {
        "torch": separator,
        "onnxruntime": onnx_separator(separator),
        "int8": onnx_separator(separator, quantize="int8"),
    }
    mix = magnitude(stft(audio[None], separator.n_fft, separator.n_hop))
    best = dict.fromkeys(MODEL_STAGES, float("inf"))
    with torch.inference_mode():
        for _ in range(spec["repeat"]):
            for name in MODEL_STAGES:
                start = time.perf_counter()
                for model in separators[name].target_models.values():
                    model(mix)
                best[name] = min(best[name], time.perf_counter() - start)
    return {"model_stage_s": best, "threads": torch.get_num_threads()}


def run_model_stage_child(signal: Path, model: Path, repeat: int) -> dict[str, float]:
    """`run_model_stage` in a fresh subprocess: seconds per backend."""
    spec = {"signal": str(signal), "model": str(model), "repeat": repeat}
    completed = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])["model_stage_s"]


def run_case(case: Case, signal: Path, model: Path, device: str) -> dict:
    python = reference_python() if case.impl == "reference" else Path(sys.executable)
    env = reference_env() if case.impl == "reference" else None
    spec = {"case": case.__dict__, "signal": str(signal), "model": str(model), "device": device}
    completed = subprocess.run(
        [str(python), __file__, "--child", json.dumps(spec)],
        check=True,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def available_ram_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024**2
    return float("inf")


def cases_for(duration: float, with_reference: bool) -> list[Case]:
    long = duration > 300
    cases = [
        Case("umx", "api", "whole", 1, duration),
        Case("umx", "api", "chunked", 1, duration),
        Case("umx", "cli", "chunked", 1, duration),
    ]
    if not long:
        cases += [
            Case("umx", "api", "whole", 0, duration),
            Case("umx", "cli", "whole", 1, duration),
        ]
        for backend in ("onnxruntime", "int8"):
            cases += [
                Case("umx", "api", "whole", 1, duration, backend),
                Case("umx", "cli", "chunked", 1, duration, backend),
            ]
    if with_reference:
        cases.append(Case("reference", "api", "whole", 1, duration))
        if not long:
            cases += [
                Case("reference", "api", "whole", 0, duration),
                Case("reference", "cli", "whole", 1, duration),
            ]
    return cases


# What each case's stems are compared with.
def baseline_of(case: Case) -> Case | None:
    if case.impl == "reference":
        return None
    if case.backend != "torch":  # the same case with torch
        return Case("umx", case.interface, case.mode, case.niter, case.duration)
    if case.mode == "whole":
        return Case("reference", case.interface, "whole", case.niter, case.duration)
    return Case("umx", "api", "whole", case.niter, case.duration)


def machine(device: str) -> dict[str, str]:
    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import torch

    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024**3:.0f} GiB",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "device": "CPU" if device == "cpu" else f"{device}, {torch.cuda.get_device_name(device)}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--durations", type=float, nargs="+", default=list(DEFAULT_DURATIONS))
    parser.add_argument("--quick", action="store_true", help="30 s only")
    parser.add_argument("--no-reference", action="store_true", help="umx cases only")
    parser.add_argument("--only", nargs="+", help="run only cases whose name contains these")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per case; the fastest is reported"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu (default) or cuda[:N]: where both run the models"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        run = run_model_stage if "repeat" in spec else run_child
        print(json.dumps(run(spec)))
        return

    durations = [30.0] if args.quick else args.durations
    start_load = ", ".join(f"{load:.1f}" for load in os.getloadavg())
    info = machine(args.device)
    model = model_dir()
    warm_graph_cache(model)
    if not args.no_reference:
        reference_python()
    rows: list[tuple[Case, dict]] = []
    stages: list[tuple[float, dict[str, float]]] = []
    notes: list[str] = []
    for duration in durations:
        signal = signal_path(duration)
        cases = []
        for case in cases_for(duration, not args.no_reference):
            if args.only and not any(word in case.name for word in args.only):
                continue
            need = REFERENCE_GB_PER_MINUTE * duration / 60 + 1
            if case.impl == "reference" and need > available_ram_gb():
                notes.append(f"{case.name} skipped: needs ~{need:.0f} GB RAM")
                continue
            cases.append(case)
        # Repeats go round the cases, so that a busy spell of the machine hits them alike;
        # each case keeps its fastest wall time and its largest peak RSS.
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for case in cases:
                print(f"{case.name} ...", end=" ", flush=True)
                result = run_case(case, signal, model, args.device)
                print(f"{result['wall_s']:.1f} s, {result['peak_rss_mb']:.0f} MB", flush=True)
                if case.name in best:
                    result["wall_s"] = min(result["wall_s"], best[case.name]["wall_s"])
                    if "model_s" in result:
                        result["model_s"] = min(result["model_s"], best[case.name]["model_s"])
                    result["peak_rss_mb"] = max(
                        result["peak_rss_mb"], best[case.name]["peak_rss_mb"]
                    )
                best[case.name] = result
        for case in cases:
            result = best[case.name]
            result["rtf"] = result["wall_s"] / duration
            rows.append((case, result))
        if not args.only or "model-stage" in args.only:
            print(f"model-stage-{duration:g}s ...", end=" ", flush=True)
            stages.append((duration, run_model_stage_child(signal, model, max(args.repeat, 3))))
            print(", ".join(f"{k} {v:.2f} s" for k, v in stages[-1][1].items()), flush=True)
    done = {case.name: case for case, _ in rows}
    for case, result in rows:
        base = baseline_of(case)
        if base is not None and base.name in done:
            result["vs"] = base.name.rsplit("-", 1)[0]
            result["max_diff"], result["diff_db"] = difference(case, base)
    notes.append(
        "load average (1, 5, 15 min) at the end: "
        + ", ".join(f"{load:.1f}" for load in os.getloadavg())
        + f"; at the start: {start_load}"
    )
    ratios = speed_ratios(rows)
    report = render(info, rows, ratios, notes, " ".join(sys.argv[1:]), args.repeat, stages)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{datetime.datetime.now():%Y-%m-%d-%H%M}-{info['host']}.md"
    path.write_text(report)
    print(f"written {path}")


def speed_ratios(rows: list[tuple[Case, dict]]) -> list[str]:
    """umx against the reference for the same interface, niter and duration."""
    by_name = {case.name: result for case, result in rows}
    lines = []
    for case, result in rows:
        if case.impl != "umx":
            continue
        ref = by_name.get(
            Case("reference", case.interface, "whole", case.niter, case.duration).name
        )
        if ref is None:
            continue
        lines.append(
            f"{case.name}: {ref['wall_s'] / result['wall_s']:.2f}x faster, "
            f"{result['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x the reference's peak RSS"
        )
    # The backends' model stage (the four target models' calls) against torch float32's.
    for case, result in rows:
        torch_case = Case("umx", case.interface, case.mode, case.niter, case.duration)
        base = by_name.get(torch_case.name)
        if case.backend == "torch" or "model_s" not in result or base is None:
            continue
        lines.append(
            f"{case.name}: model stage {base['model_s'] / result['model_s']:.2f}x faster than "
            f"torch float32 ({result['model_s']:.2f} s against {base['model_s']:.2f} s)"
        )
    return lines


def command_line(argv: str) -> str:
    """The command as typed, with the thread settings that were in the environment."""
    env = [
        f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ
    ]
    return " ".join([*env, ".venv/bin/python benchmarks/separation.py", argv]).strip()


def memory(result: dict) -> str:
    """Peak RSS, and the peak GPU memory of the API cases on a GPU."""
    gpu = f" (GPU {result['peak_gpu_mb']:.0f})" if "peak_gpu_mb" in result else ""
    return f"{result['peak_rss_mb']:.0f}{gpu}"


def render(
    info: dict,
    rows: list,
    ratios: list[str],
    notes: list[str],
    argv: str,
    repeat: int,
    stages: list[tuple[float, dict[str, float]]],
) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Separation benchmark, {now}",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram']}; host {info['host']}.",
        f"Python {info['python']}, torch {info['torch']} ({info['device']}), "
        f"{info['threads']} CPU threads; "
        f"reference openunmix {OPENUNMIX_VERSION}. Four umxhq-size targets (random weights), "
        f"wiener_win_len 300. Wall time: fastest of {repeat} run(s) per case.",
        f"Command: `{command_line(argv)}`",
        "",
        "| case | backend | audio | niter | wall s | model s | RTF | peak RSS MB "
        "| max abs diff | diff dB | vs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, r in rows:
        diff = f"{r['max_diff']:.1e}" if "max_diff" in r else ""
        diff_db = f"{r['diff_db']:.0f}" if "diff_db" in r else ""
        model_s = f"{r['model_s']:.1f}" if "model_s" in r else ""
        backend = case.backend if case.impl == "umx" else ""
        lines.append(
            f"| {case.impl} {case.interface} {case.mode} | {backend} | {case.duration:g} s "
            f"| {case.niter} | {r['wall_s']:.1f} | {model_s} | {r['rtf']:.3f} | {memory(r)} "
            f"| {diff} | {diff_db} | {r.get('vs', '')} |"
        )
    if stages:
        lines += [
            "",
            "Model stage alone (the four target models on the whole signal's magnitudes, "
            f"backends in turns, fastest of {max(repeat, 3)}):",
            "",
            "| audio | torch float32 s | onnxruntime float32 s | int8 s "
            "| onnxruntime speed-up | int8 speed-up |",
            "|---|---|---|---|---|---|",
        ]
        for duration, stage in stages:
            lines.append(
                f"| {duration:g} s | {stage['torch']:.2f} | {stage['onnxruntime']:.2f} "
                f"| {stage['int8']:.2f} | {stage['torch'] / stage['onnxruntime']:.2f}x "
                f"| {stage['torch'] / stage['int8']:.2f}x |"
            )
    lines += ["", "umx / reference:", ""] + [f"- {line}" for line in ratios]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
