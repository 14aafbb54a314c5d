"""Hot-path benchmark: our supervised servers against the bare servers they are built on, interleaved, as ratios.

Contenders (each a subprocess on ``--python``; each serves the keep-alive HTTP hello ``GET /``):

* ``bare stream asyncio|uvloop``: ``asyncio.start_server`` with ``supervisor.handlers.http:make``
  (tests.bench.seed_server);
* ``bare protocol asyncio|uvloop``: ``loop.create_server`` with ``supervisor.handlers.http_protocol:make``
  (tests.bench.bare_protocol);
* ``ours stream asyncio|uvloop``: ``supervisor run`` of the first handler (``supervisor.loop`` set, metrics on);
* ``ours protocol asyncio|uvloop``: the same with ``kind: protocol`` and the second.

Per round every contender runs once (the order rotates each round): ``wrk -t1 -c50`` after a 1 s unmeasured warm-up,
server and wrk pinned to separate CPUs (``taskset``), req/s and the server's CPU time per request; then
``--idle`` keep-alive connections opened (each served one request) and the server's RSS growth per connection.
Ratios are ours / the bare server of the same kind and loop, per round (paired), then their median: on a noisy
shared machine a ratio inside one round is steadier than either figure alone.

Run: ``.venv/bin/python -m tests.bench.bench_hotpath [--rounds N] [--duration S] [--idle N] [--only SUBSTR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.bench.bench_core import (
    LISTENING_RE,
    OURS_READY,
    SEED_READY_RE,
    WRK_WARMUP,
    ServerProcess,
    _close_all,
    _open_idle,
    cpu_seconds,
    free_port,
    pick_cpus,
    pinned,
    run_wrk,
)

BACKLOG = 4096


@dataclass(frozen=True, slots=True)
class Contender:
    who: str  # bare | ours
    kind: str  # stream | protocol
    loop: str  # asyncio | uvloop

    @property
    def label(self) -> str:
        return f"{self.who} {self.kind} {self.loop}"

    @property
    def base(self) -> str:
        return f"bare {self.kind} {self.loop}"


CONTENDERS = tuple(
    Contender(who, kind, loop) for kind in ("stream", "protocol") for loop in ("asyncio", "uvloop") for who in
    ("bare", "ours")
)  # fmt: skip


def config(tmp: Path, c: Contender) -> Path:
    handler = "supervisor.handlers.http:make" if c.kind == "stream" else "supervisor.handlers.http_protocol:make"
    path = tmp / f"hot-{c.kind}-{c.loop}.yaml"
    kind = ", kind: protocol" if c.kind == "protocol" else ""  # stream is the default
    path.write_text(
        f"supervisor: {{loop: {c.loop}}}\n"
        f"metrics: {{enabled: true, port: {free_port()}}}\n"  # on, as in production; a free port, never 9100
        "console: {enabled: false}\n"
        "servers:\n"
        f"  - {{name: http, handler: '{handler}', port: 0, backlog: {BACKLOG}{kind}}}\n",
        encoding="utf-8",
    )
    return path


@contextlib.contextmanager
def start(
    c: Contender, python: str, tmp: Path, cpu: int | None, wrap: Sequence[str] = ()
) -> Iterator[tuple[ServerProcess, int]]:
    """``c`` serving, and its port; ``wrap``: arguments between the interpreter and ``-m MODULE``
    (bench_alloc's ``-m tests.bench.traced``)."""
    if c.who == "ours":
        cmd = [python, *wrap, "-m", "supervisor", "run", str(config(tmp, c))]
        sp = ServerProcess(pinned(cmd, cpu), c.label)
        try:
            port = int(sp.wait_for(LISTENING_RE).group(3))
            sp.wait_for(re.compile(re.escape(OURS_READY)))
        except BaseException:
            sp.stop()
            raise
    else:
        module = "tests.bench.seed_server" if c.kind == "stream" else "tests.bench.bare_protocol"
        cmd = [python, *wrap, "-m", module, "--loop", c.loop, "--backlog", str(BACKLOG)]
        sp = ServerProcess(pinned(cmd, cpu), c.label)
        try:
            port = int(sp.wait_for(SEED_READY_RE).group(2))
        except BaseException:
            sp.stop()
            raise
    sp.ready()
    try:
        yield sp, port
    finally:
        sp.stop()


def one(c: Contender, args: argparse.Namespace, tmp: Path, cpus: tuple[int, int] | None) -> dict[str, float]:
    server_cpu, wrk_cpu = cpus if cpus else (None, None)
    got: dict[str, float] = {}
    with start(c, args.python, tmp, server_cpu) as (sp, port):
        if args.duration:
            run_wrk(port, WRK_WARMUP, wrk_cpu)
            sp.quiet()
            before = cpu_seconds(sp.pid)
            result = run_wrk(port, args.duration, wrk_cpu)
            got["rps"] = result.rps
            got["cpu_us"] = (cpu_seconds(sp.pid) - before) / max(result.requests, 1) * 1e6
            got["errors"] = result.errors
        if args.idle:
            loop = asyncio.new_event_loop()
            try:
                warm = loop.run_until_complete(_open_idle(port, min(100, args.idle)))
                loop.run_until_complete(_close_all(warm, graceful=True))
                rss0 = sp.rss_kb()
                writers = loop.run_until_complete(_open_idle(port, args.idle))
                got["rss_kb"] = (sp.rss_kb() - rss0) / args.idle
                loop.run_until_complete(_close_all(writers, graceful=True))
            finally:
                loop.close()
    shown = ", ".join(f"{k} {v:,.2f}" for k, v in got.items())
    print(f"  {c.label}: {shown}", file=sys.stderr, flush=True)
    return got


def table(results: dict[str, list[dict[str, float]]], contenders: Sequence[Contender]) -> list[str]:
    def med(label: str, key: str) -> float | None:
        values = [r[key] for r in results.get(label, []) if key in r]
        return statistics.median(values) if values else None

    def ratio(c: Contender, key: str) -> str:
        if c.who == "bare":
            return ""
        pairs = [o[key] / b[key] for o, b in zip(results[c.label], results.get(c.base, []), strict=False)
                 if key in o and key in b and b[key]]  # fmt: skip
        if not pairs:
            return ""
        return f"{statistics.median(pairs):.3f} ({min(pairs):.3f}-{max(pairs):.3f})"

    head = "| contender | req/s | x bare (per round) | server µs/req | x bare | RSS/idle conn kB | x bare |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for c in contenders:
        cells = [c.label]
        for key, fmt in (("rps", "{:,.0f}"), ("cpu_us", "{:.1f}"), ("rss_kb", "{:.2f}")):
            value = med(c.label, key)
            cells += [fmt.format(value) if value is not None else "-", ratio(c, key)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_hotpath", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=3, help="seconds of measured wrk per run (0: skip)")
    parser.add_argument("--idle", type=int, default=2000, help="idle connections for RSS (0: skip)")
    parser.add_argument("--only", default="", help="comma-separated substrings of contender labels")
    args = parser.parse_args(argv)
    if args.duration and shutil.which("wrk") is None:
        print("bench_hotpath: wrk is not installed; throughput skipped", file=sys.stderr)
        args.duration = 0
    wanted = [w for w in args.only.split(",") if w]
    contenders = [c for c in CONTENDERS if not wanted or any(w in c.label for w in wanted)]
    cpus = pick_cpus()
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-hotpath-") as tmp:
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
            shift = r % len(contenders)
            for c in contenders[shift:] + contenders[:shift]:  # rotate: no contender always runs first
                results.setdefault(c.label, []).append(one(c, args, Path(tmp), cpus))
    pin = f"server CPU {cpus[0]}, wrk CPU {cpus[1]}" if cpus else "NOT pinned"
    print(f"\n{args.rounds} interleaved rounds, wrk -t1 -c50 -d{args.duration}s, {pin}, {args.idle} idle connections; "
          f"medians; ratios are per-round ours/bare, median (min-max)")  # fmt: skip
    print("\n".join(table(results, contenders)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
