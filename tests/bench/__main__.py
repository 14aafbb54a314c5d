"""Every benchmark of issue #7 in one command: ``.venv/bin/python -m tests.bench [--quick]`` (~12 min; --quick ~3).

Runs, one after the other (never two at once: they would share the CPUs), and prints each one's table:
bench_hotpath (throughput, CPU per request and memory per idle connection, ours vs the bare servers, stream and
protocol, both loops), bench_alloc (that memory counted with tracemalloc: the allocator's state moves RSS),
bench_workers (workers: 2 vs 1 on a CPU-bound handler, a worker SIGKILLed under load, a rolling reload under
load), bench_scale (200 and 1,000 servers; 10,000 connections). bench_core (crash, drain)
and bench_reload stay separate commands.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNS = {
    "bench_hotpath": (
        ["--rounds", "7", "--duration", "3", "--idle", "2000"],
        ["--rounds", "1", "--duration", "2", "--idle", "500"],
    ),
    "bench_alloc": (["--rounds", "3", "--idle", "2000"], ["--rounds", "1", "--idle", "500"]),
    "bench_workers": (["--rounds", "3"], ["--quick"]),
    "bench_scale": ([], ["--quick"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short round of each")
    args = parser.parse_args()
    print(f"# {platform.python_version()} on {platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')}\n")
    failed = 0
    for module, (full, quick) in RUNS.items():
        print(f"## {module}\n", flush=True)
        done = subprocess.run([sys.executable, "-m", f"tests.bench.{module}", *(quick if args.quick else full)],
                              cwd=REPO, timeout=1800, check=False)  # fmt: skip
        failed += done.returncode != 0
        print(flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
