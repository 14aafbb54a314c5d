"""Memory per idle connection, counted: the bytes the server's Python allocates per connection (tracemalloc), ours
against the bare server of the same kind and loop. bench_hotpath's RSS column is the OS's view of the same thing,
which moves with the allocator's state from run to run; this one does not (libuv's handles are counted too:
uvloop allocates them with PyMem_RawMalloc, which tracemalloc traces).

Each contender of bench_hotpath is started under tests.bench.traced; ``--warm`` keep-alive connections are opened
and held (the pools and tables a first connection fills), then ``--idle`` more (each served one request):
(traced after - traced before) / idle. The warm ones stay open to the end: closed before the first count, the
server could still be tearing them down, and what it freed after that count was taken off the idle ones
(a bare server measured at 1,055 B a connection instead of ~1,500 once, in CI).

Run: ``.venv/bin/python -m tests.bench.bench_alloc [--rounds N] [--idle N] [--only SUBSTR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from tests.bench.bench_core import _close_all, _open_idle
from tests.bench.bench_hotpath import CONTENDERS, Contender, start

TRACED = ("-m", "tests.bench.traced")


def traced_bytes(ask: Path, reply: Path, timeout: float = 30.0) -> int:
    """The server's traced total, asked over the FIFOs; bounded: a server that died must fail the run, not hang it."""
    got: list[int] = []

    def exchange() -> None:
        with contextlib.suppress(OSError, ValueError):  # released below: an empty answer
            with open(ask, "w", encoding="ascii") as out:
                out.write("?\n")
            with open(reply, encoding="ascii") as answer:  # blocks until the server's thread has counted
                got.append(int(answer.read()))

    asking = threading.Thread(target=exchange, name="traced-ask", daemon=True)
    asking.start()
    asking.join(timeout)
    if not got:
        for fifo, mode in ((ask, os.O_RDONLY), (reply, os.O_WRONLY)):  # open the other ends: the open() returns
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, mode | os.O_NONBLOCK))
        asking.join(5)
        raise RuntimeError(f"the traced server did not answer within {timeout:g}s")
    return got[0]


def one(c: Contender, args: argparse.Namespace, tmp: Path) -> float:
    ask, reply = tmp / "ask", tmp / "reply"
    for fifo in (ask, reply):
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
    saved = dict(os.environ)
    os.environ.update(TRACED_ASK=str(ask), TRACED_REPLY=str(reply))  # ServerProcess copies the environment
    try:
        return _measure(c, args, ask, reply, tmp)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _measure(c: Contender, args: argparse.Namespace, ask: Path, reply: Path, tmp: Path) -> float:
    with start(c, args.python, tmp, None, TRACED) as (_, port):
        loop = asyncio.new_event_loop()
        try:
            warm = loop.run_until_complete(_open_idle(port, args.warm))
            before = traced_bytes(ask, reply)
            writers = loop.run_until_complete(_open_idle(port, args.idle))
            per_conn = (traced_bytes(ask, reply) - before) / args.idle
            loop.run_until_complete(_close_all([*warm, *writers], graceful=True))
        finally:
            loop.close()
    print(f"  {c.label}: {per_conn:,.0f} B/conn", file=sys.stderr, flush=True)
    return float(per_conn)


def table(results: dict[str, list[float]], contenders: Sequence[Contender]) -> list[str]:
    lines = ["| contender | allocated/idle conn | x bare (per round) |", "|---|---|---|"]
    for c in contenders:
        ratio = ""
        if c.who == "ours" and results.get(c.base):
            pairs = [o / b for o, b in zip(results[c.label], results[c.base], strict=False)]
            ratio = f"{statistics.median(pairs):.3f} ({min(pairs):.3f}-{max(pairs):.3f})"
        lines.append(f"| {c.label} | {statistics.median(results[c.label]):,.0f} B | {ratio} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_alloc", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--warm", type=int, default=100)
    parser.add_argument("--only", default="", help="comma-separated substrings of contender labels")
    args = parser.parse_args(argv)
    wanted = [w for w in args.only.split(",") if w]
    contenders = [c for c in CONTENDERS if not wanted or any(w in c.label for w in wanted)]
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-alloc-") as tmp:
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
            shift = r % len(contenders)
            for c in contenders[shift:] + contenders[:shift]:
                results.setdefault(c.label, []).append(one(c, args, Path(tmp)))
    print(f"\n{args.rounds} rounds, {args.idle} idle keep-alive connections (after {args.warm} opened and held); "
          "tracemalloc in the server; medians; ratios per round ours/bare, median (min-max)")  # fmt: skip
    print("\n".join(table(results, contenders)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
