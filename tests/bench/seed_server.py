"""The bare seed pattern, as the tutorial in /work/shared/seed writes it, serving one benchmark handler.

    server = await asyncio.start_server(handler, host, port)
    serve_forever() in a background task; on cancel: server.close(); await server.wait_closed(); raise

SIGTERM/SIGINT cancel that task (the tutorial's "cancel the server task"); then ``asyncio.run`` returns and
cancels whatever handlers are still running. Prints ``seed ready: HOST:PORT pid=N`` on stderr once listening.

``--crash-exits``: a handler exception kills the process (exit status 1), the way an unhandled fatal error ends
a single-server program. ``--respawn``: run the server as a child and start it again as soon as it exits, the
naive ``while true; do python server.py; done`` restart (no poll delay, unlike supervisord's 1 s loop).

Run as ``python -m tests.bench.seed_server`` with the repository on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from types import FrameType

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# The naive restart loop gives up after this many starts, so a broken child cannot spin forever.
MAX_SPAWNS = 10_000


def load_handler(app: str) -> Handler:
    if app == "http":
        from supervisor.handlers.http import make

        return make({})
    from tests.bench.apps import crashy

    return crashy


def exit_on_error(handler: Handler) -> Handler:
    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except Exception as exc:  # noqa: BLE001 - the point: any handler error is fatal here
            print(f"seed: handler error, exiting: {exc!r}", file=sys.stderr, flush=True)
            os._exit(1)

    return wrapped


async def main(args: argparse.Namespace) -> None:
    handler = load_handler(args.app)
    if args.crash_exits:
        handler = exit_on_error(handler)

    # task for running the server in the background (the seed pattern, verbatim apart from the ready line)
    async def background_server() -> None:
        server = await asyncio.start_server(handler, args.host, args.port, backlog=args.backlog)
        host, port = server.sockets[0].getsockname()[:2]
        print(f"seed ready: {host}:{port} pid={os.getpid()}", file=sys.stderr, flush=True)
        try:
            await server.serve_forever()
        except asyncio.CancelledError:
            server.close()
            await server.wait_closed()
            raise

    server_task = asyncio.create_task(background_server())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server_task.cancel)
    try:
        await server_task
    except asyncio.CancelledError:
        if not server_task.cancelled():
            raise


def respawn(argv: list[str]) -> int:
    """Start the server again each time it exits, until SIGTERM/SIGINT; forward those to the child."""
    stopping = threading.Event()
    child: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    rc = 1
    for _ in range(MAX_SPAWNS):
        if stopping.is_set():
            break
        child = subprocess.Popen([sys.executable, "-m", "tests.bench.seed_server", *argv])
        rc = child.wait()
    return rc


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="seed_server", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--app", choices=("http", "crashy"), default="http")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=100)
    parser.add_argument("--crash-exits", action="store_true", help="a handler exception ends the process (exit 1)")
    parser.add_argument("--respawn", action="store_true", help="run as a naive restart loop around the server")
    return parser.parse_args(argv)


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.respawn:
        return respawn([a for a in argv if a != "--respawn"])
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
