"""How long `umx --help`, every `umx CMD --help` and `umx --list-models` take, start to exit.

Run by hand (not part of the test suite), from the repository root:

    .venv/bin/python benchmarks/cli_help.py             # 7 runs of each, the median shown
    .venv/bin/python benchmarks/cli_help.py --runs 15

Each command runs in a fresh process (`python -m umx.cli ...`, the interpreter's start
included, as a user types it), with UMX_OFFLINE=1 so that `--list-models` reads only the cache.
The target is 0.4 s on a 2-core machine; what they import is checked by tests/test_cli.py
(`test_help_parsing_and_list_models_import_no_torch`), not timed there. A busy machine makes
every figure slower: say how busy it was (the load average is printed) when quoting them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("separate", "stream", "batch", "train", "evaluate", "synth", "download", "export")
COMMANDS += ("serve",)
TARGET_S = 0.4


def seconds(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of one `python ARGV` run, from start to exit."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each command (default: 7)")
    runs = parser.parse_args().runs
    env = {**os.environ, "UMX_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    cases = [["--help"], *[[command, "--help"] for command in COMMANDS], ["--list-models"]]
    times: dict[str, list[float]] = {" ".join(case): [] for case in cases}
    baseline = []  # the interpreter alone
    seconds(["-m", "umx.cli", "--version"], env)  # warm the file cache once
    for _ in range(runs):  # round-robin, so that a burst of load hits every case alike
        baseline.append(seconds(["-c", "pass"], env))
        for case in cases:
            times[" ".join(case)].append(seconds(["-m", "umx.cli", *case], env))
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
    print(f"python -c pass: {statistics.median(baseline):.3f} s (median of {runs})\n")
    print(f"| command | median (s) | min (s) | <= {TARGET_S} s |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"| `umx {name}` | {median:.3f} | {min(values):.3f} | "
            f"{'yes' if median <= TARGET_S else 'no'} |"
        )


if __name__ == "__main__":
    main()
