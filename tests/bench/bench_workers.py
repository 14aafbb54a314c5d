"""Workers benchmark (``supervisor.workers: N``), real ``supervisor run`` processes on loopback, interleaved rounds:

1. throughput of a CPU-bound handler (``tests.bench.cpu_app``: ~0.5 ms of Python per request, so the server is
   the limit), ``workers: 2`` vs ``workers: 1``, ``wrk -t2 -c32`` (not pinned: the workers need every CPU);
2. a worker SIGKILLed under load (fresh connections, one line each, from 4 threads): refused connections (target
   0), resets of connections the dead worker had accepted, and kill -> its replacement ready;
3. a rolling reload under the same load: SIGHUP -> ``reload applied``, refused and failed requests.

Run: ``.venv/bin/python -m tests.bench.bench_workers [--rounds N] [--quick]`` from the repository (about 1 min).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests import proc

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
READY = re.compile(r"supervisor ready: ")
LISTENING = re.compile(r"server (\S+) listening on \S+:(\d+)")


class Run:
    """One ``supervisor run`` with its output followed on a thread."""

    def __init__(self, config: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "supervisor", "run", str(config), "--pidfile", str(config.with_suffix(".pid"))]
        proc.STARTED.append(" ".join(cmd[2:]))  # the suite's e2e marker check (tests/conftest.py)
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._follower = threading.Thread(target=self._follow, daemon=True)
        self._follower.start()

    def _follow(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                with self._cond:
                    self.lines.append((time.monotonic(), line.rstrip()))
                    self._cond.notify_all()

    def wait_for(self, pattern: str, after: float = 0.0, timeout: float = 30.0) -> tuple[float, re.Match[str]]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, line in self.lines:
                    if at >= after and (m := regex.search(line)):
                        return at, m
                waited = self.proc.poll() is None and self._cond.wait(max(0.0, deadline - time.monotonic()))
                if not waited and (time.monotonic() >= deadline or self.proc.poll() is not None):
                    tail = "\n".join(line for _, line in self.lines[-20:])
                    raise RuntimeError(f"no {pattern!r} within {timeout}s:\n{tail}")

    def ports(self) -> dict[str, int]:
        with self._cond:
            return {m[1]: int(m[2]) for _, line in self.lines if (m := LISTENING.search(line))}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._follower.join(5)  # its output read to the end and the pipe closed


@contextmanager
def running(tmp: Path, workers: int, name: str = "bench") -> Iterator[Run]:
    config = tmp / f"{name}-{workers}.yaml"
    config.write_text(
        f"supervisor: {{workers: {workers}, shutdown_timeout: 5s}}\n"
        "metrics: {enabled: false}\nconsole: {enabled: false}\nservers:\n"
        "  - {name: cpu, handler: 'tests.bench.cpu_app:make', port: 0, options: {work_ms: 0.5}}\n"
        "  - {name: echo, handler: 'supervisor.handlers.echo:handle', port: 0}\n"
    )
    run = Run(config)
    try:
        run.wait_for(r"supervisor ready: .*worker processes" if workers > 1 else r"supervisor ready: ")
        yield run
    finally:
        run.stop()


def wrk(port: int, seconds: int) -> float:
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", f"http://{HOST}:{port}/"], capture_output=True, text=True,
        timeout=seconds + 20,
    )  # fmt: skip
    found = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    if not found:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}{out.stderr}")
    return float(found[1])


class Load:
    """Fresh connections, one line each, from ``threads`` threads, until stopped (bounded: 60 s)."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.port, self.ok, self.refused, self.reset = port, 0, 0, 0
        self.kinds: Counter[str] = Counter()  # what the failures were
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, self.port), timeout=5) as s:
                    s.sendall(b"ping\n")
                    if not s.recv(64):
                        raise ConnectionResetError("closed without a reply")
                outcome = "ok"
            except ConnectionRefusedError:
                outcome = "refused"
            except OSError as exc:
                outcome = "reset"
                with self._lock:
                    self.kinds[type(exc).__name__] += 1
            with self._lock:
                setattr(self, outcome, getattr(self, outcome) + 1)


def worker_pids(run: Run) -> dict[int, int]:
    found = (re.search(r"worker (\d+) \(pid (\d+)\) ready", line) for _, line in list(run.lines))
    return {int(m[1]): int(m[2]) for m in found if m}


def kill_under_load(tmp: Path) -> dict[str, float]:
    with running(tmp, 2, "kill") as run:
        port = run.ports()["echo"]
        with Load(port) as load:
            time.sleep(1.0)  # a load phase before the kill, measured by its counts, not waited on as an event
            victim = worker_pids(run)[1]
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            at, _ = run.wait_for(rf"worker 1 \(pid (?!{victim}\))\d+\) ready", after=killed)
            time.sleep(1.0)
        if load.kinds:
            print(f"kill under load: failures {dict(load.kinds)}", file=sys.stderr)
        return {"refused": load.refused, "reset": load.reset, "ok": load.ok, "replaced_ms": (at - killed) * 1000}


def reload_under_load(tmp: Path) -> dict[str, float]:
    with running(tmp, 2, "roll") as run:
        port = run.ports()["echo"]
        with Load(port) as load:
            time.sleep(0.5)
            sent = time.monotonic()
            run.proc.send_signal(signal.SIGHUP)
            at, _ = run.wait_for(r"reload applied: ", after=sent)
            time.sleep(0.5)
        if load.kinds:
            print(f"reload under load: failures {dict(load.kinds)}", file=sys.stderr)
        return {"refused": load.refused, "failed": load.reset, "ok": load.ok, "applied_ms": (at - sent) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round, 2 s wrk runs")
    args = parser.parse_args()
    rounds, seconds = (1, 2) if args.quick else (args.rounds, 5)
    rps: dict[int, list[float]] = {1: [], 2: []}
    kills, rolls = [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for r in range(rounds):
            for workers in (1, 2) if r % 2 == 0 else (2, 1):  # interleaved, the order alternating
                with running(tmp, workers) as run:
                    port = run.ports()["cpu"]
                    wrk(port, 1)  # warm-up, unmeasured
                    rps[workers].append(wrk(port, seconds))
                print(f"round {r + 1}: workers {workers}: {rps[workers][-1]:,.0f} req/s", file=sys.stderr)
            kills.append(kill_under_load(tmp))
            rolls.append(reload_under_load(tmp))
    med = {w: statistics.median(v) for w, v in rps.items()}
    cpus = len(os.sched_getaffinity(0))
    print(f"\nPython {sys.version.split()[0]}, {cpus} CPUs, {rounds} round(s), medians\n")
    print("| measure | target | figure |\n|---|---|---|")
    print(f"| CPU-bound (~0.5 ms/request) req/s, workers: 1 | — | {med[1]:,.0f} |")
    print(f"| … workers: 2 | — | {med[2]:,.0f} |")
    print(f"| … ratio 2 / 1 | ≥ 1.6x | {med[2] / med[1]:.2f}x (per round: "
          f"{', '.join(f'{b / a:.2f}' for a, b in zip(rps[1], rps[2], strict=True))}) |")  # fmt: skip
    print(
        f"| worker SIGKILLed under load: refused | 0 | {sum(k['refused'] for k in kills):.0f} in {len(kills)} kill(s) |"
    )
    print(f"| … resets (accepted by the dead worker) | — | {sum(k['reset'] for k in kills):.0f} of "
          f"{sum(k['ok'] + k['reset'] for k in kills):,.0f} requests |")  # fmt: skip
    print(f"| … kill → replacement ready | — | {statistics.median(k['replaced_ms'] for k in kills):.0f} ms |")
    print(f"| rolling reload (2 workers) under load: SIGHUP → applied | — | "
          f"{statistics.median(r['applied_ms'] for r in rolls):.0f} ms |")  # fmt: skip
    print(f"| … refused / failed requests | 0 / 0 | {sum(r['refused'] for r in rolls):.0f} / "
          f"{sum(r['failed'] for r in rolls):.0f} of {sum(r['ok'] for r in rolls):,.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
