"""A bare ``loop.create_server`` serving the HTTP hello as an ``asyncio.Protocol`` (handlers/http_protocol.py): the
anchor the ``kind: protocol`` server is measured against. SIGTERM/SIGINT stop it. Prints ``seed ready: HOST:PORT
pid=N`` on stderr once listening (the line bench_core's seed prints, so the same helpers start it).

Run as ``python -m tests.bench.bare_protocol [--loop uvloop]`` with the repository on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

from supervisor.handlers.http_protocol import make


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(make({}), args.host, args.port, backlog=args.backlog)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"seed ready: {host}:{port} pid={os.getpid()}", file=sys.stderr, flush=True)
    stop: asyncio.Future[None] = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await stop
    server.close()


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bare_protocol")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=100)
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
