"""A worker process of ``supervisor.workers: N`` (``python -m supervisor.worker``, started by workers.py only).

It runs the whole supervision tree of today on the listening sockets its parent bound and passed down, with the
config text the parent checked and the handler code imported afresh (so a rolling reload deploys new code). It
has no metrics endpoint, console or pidfile of its own: its one view is the link to the parent (wire.py), which
reports its tree and counters, forwards its servers' log lines for ``tail``, and runs the parent's commands.
The parent's death (the link's end of file) is a stop request: a worker never outlives its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

from supervisor import logs, sockets, wire
from supervisor.commands import Command, Result
from supervisor.errors import ConfigError
from supervisor.plan import Plan
from supervisor.planfile import plan_from_text
from supervisor.tree import TreeView, View

ENV = "SUPERVISOR_WORKER"  # {"slot": N, "channel": fd, "sockets": {server: fd}, "parent": pid}: the parent sets it
PR_SET_PDEATHSIG = 1  # linux/prctl.h
EXIT_CONFIG = 2  # its config did not load (the problems were sent to the parent)
LOGGER = logging.getLogger("supervisor")


def main() -> int:
    raw = os.environ.pop(ENV, None)
    if raw is None:
        print("supervisor.worker is started by `supervisor run` (supervisor.workers: N), not by hand", file=sys.stderr)
        return EXIT_CONFIG
    spec = json.loads(raw)
    slot = int(spec["slot"])
    _follow_parent(int(spec["parent"]))
    fds = {name: int(fd) for name, fd in spec["sockets"].items()}
    for fd in (int(spec["channel"]), *fds.values()):
        os.set_inheritable(fd, False)  # a handler's own subprocess must not hold the ports or the link
    link = socket.socket(fileno=int(spec["channel"]))
    sockets.inherit(fds)
    first = wire.read_first(link)
    logs.setup(first["log_level"], first["log_format"], slot, first.get("log_dict_config"))
    try:
        plan = plan_from_text(first["text"], first["path"], first["digest"])
    except ConfigError as exc:  # the parent checked the text, but imports the handlers only here: fresh code
        link.sendall(json.dumps({"t": "problems", "problems": exc.problems}).encode() + b"\n")
        return EXIT_CONFIG
    from supervisor import cli
    from supervisor.app import run_plan

    LOGGER.info("worker %d (pid %d) serving %d server(s) on its parent's sockets", slot, os.getpid(), len(plan.servers))
    stopped = frozenset(first.get("stopped", ()))  # stopped by `stop NAME` in the workers this one replaces
    return cli.run(plan, run_plan(plan, (linked(link),), on_hup_reload=False, stopped=stopped))


def _follow_parent(parent: int) -> None:
    """SIGTERM (an ordered drain) when the parent dies, even if it never closed the link: Linux's parent-death
    signal; the link's end of file does the same on any system, if this loop still runs."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        raise SystemExit("supervisor.worker: its parent is gone before it started")


def linked(sock: socket.socket) -> View:
    def view(plan: Plan, tree: TreeView) -> contextlib.AbstractAsyncContextManager[object]:
        return _link(sock, tree)

    return view


@contextlib.asynccontextmanager
async def _link(sock: socket.socket, tree: TreeView) -> AsyncIterator[None]:
    channel = await wire.Channel.open(sock)
    reporter = Reporter(channel, tree)
    tasks = [asyncio.create_task(reporter.report(), name="worker-report"),
             asyncio.create_task(_obey(channel, tree), name="worker-commands"),
             asyncio.create_task(_let_go(tree), name="worker-sockets")]  # fmt: skip
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        reporter.send()  # the final counters: the parent keeps them as this worker's totals
        with contextlib.suppress(ConnectionError):
            await wire.within(channel.flush(), 1.0)
        channel.close()


async def _let_go(tree: TreeView) -> None:
    """At this worker's shutdown, the parent's sockets it inherited are closed (sockets.release_inherited)."""
    while not tree.snapshot().shutting_down:
        await tree.changed()
    sockets.release_inherited()


class Reporter:
    """Sends the tree's state on every change and every STATE_INTERVAL, with the log lines kept since."""

    def __init__(self, channel: wire.Channel, tree: TreeView) -> None:
        self._channel = channel
        self._tree = tree
        self._cursor = 0

    def send(self) -> None:
        tree = self._tree
        snap = tree.snapshot()
        lines, self._cursor = logs.RECENT.since(self._cursor)
        message: dict[str, Any] = {
            "t": "state",
            "ready": tree.ready.done() and not tree.ready.cancelled(),
            "shutting_down": snap.shutting_down,
            "children": [wire.child_to_wire(c) for c in snap.children],
            "stats": {name: wire.stats_to_wire(s) for name, s in tree.counters().items()},
            "lag": tree.guard.worst_lag(),
            "blocked": tree.guard.blocked(),
            "lines": lines,
        }
        self._channel.send(message)

    async def report(self) -> None:
        tree = self._tree
        while True:
            self.send()
            await self._channel.flush()
            await wire.within(tree.changed(), wire.STATE_INTERVAL)


async def _obey(channel: wire.Channel, tree: TreeView) -> None:
    """Run the parent's commands; its end of file (it died, or closed the link) stops this worker."""
    while (message := await channel.receive()) is not None:
        if message.get("t") != "command":
            continue
        try:
            result = await asyncio.wrap_future(tree.submit(Command(message["command"]), message.get("name")))
        except Exception as exc:  # noqa: BLE001 - answer the parent whatever went wrong
            result = Result(False, f"{type(exc).__name__}: {exc}")
        channel.send({"t": "result", "id": message["id"], **wire.result_to_wire(result)})
    LOGGER.warning("worker: the parent closed the link (it exited or was killed): shutting down")
    tree.submit(Command.SHUTDOWN)


if __name__ == "__main__":
    sys.exit(main())
