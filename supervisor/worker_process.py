"""The parent's side of one worker process: start it on the kept sockets with a config text, read what it reports
(its tree, counters and log lines), ask it to run a command, signal it, and wait for its end."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from supervisor import logs, wire
from supervisor.commands import STEP_TIMEOUT, Command, Result
from supervisor.signals import STOP_SIGNALS
from supervisor.state import ChildStatus, ServerStats
from supervisor.worker import ENV

LOGGER = logging.getLogger("supervisor")

EXIT_GRACE = 2.0  # beyond a worker's own shutdown bound: its interpreter's exit, before it is killed


@dataclass(frozen=True, slots=True)
class ConfigText:
    """What a worker is started with: the file's text as the parent read and checked it."""

    path: str
    text: str
    digest: str


class WorkerProcess:
    def __init__(
        self, slot: int, config: ConfigText, on_report: Callable[[WorkerProcess], None], shutdown_timeout: float
    ) -> None:
        self.slot = slot
        self.config = config
        self.drain_bound = shutdown_timeout + EXIT_GRACE  # after SIGTERM: its own drain's bound, then its exit
        self.pid = 0
        self.children: tuple[ChildStatus, ...] = ()
        self.stats: dict[str, ServerStats] = {}
        self.lag = 0.0
        self.blocked = False
        self.problems: list[str] = []  # its config did not load (then it exits 2)
        self.terminating = False  # sent a stop signal once (draining): a second one would cut its drain
        self.reported_at = 0.0  # loop time of its last state message (one every wire.STATE_INTERVAL at least)
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()  # its tree serves: resolved once
        self.exited: asyncio.Future[int] = loop.create_future()  # its exit status (negative: killed by a signal)
        # it reported its shutdown (its servers stopped accepting before that report), or it exited
        self.stopped_accepting: asyncio.Future[None] = loop.create_future()
        self._on_report = on_report
        self._proc: asyncio.subprocess.Process | None = None
        self._channel: wire.Channel | None = None
        self._answers: dict[int, asyncio.Future[Result]] = {}
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, sockets: Mapping[str, socket.socket], stopped: Collection[str] = ()) -> None:
        """Start the worker on ``sockets``; the servers in ``stopped`` start stopped (``start NAME`` starts them)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = {name: s.fileno() for name, s in sockets.items()}
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}  # sd_notify is the parent's alone
        env.setdefault("UV_TCP_SINGLE_ACCEPT", "1")  # libuv (uvloop): one accept per wake-up, see sockets.TakeOne
        env[ENV] = json.dumps({"slot": self.slot, "channel": theirs.fileno(), "sockets": fds, "parent": os.getpid()})
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "supervisor.worker", pass_fds=(theirs.fileno(), *fds.values()), env=env,
                stdin=subprocess.DEVNULL, start_new_session=True,  # Ctrl-C reaches the parent; it stops the workers
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid = self._proc.pid
        self._channel = channel = await wire.Channel.open(ours)
        log, config = logs.settings(), self.config
        channel.send({"t": "config", "path": config.path, "text": config.text, "digest": config.digest,
                      "log_level": log.level, "log_format": log.format,
                      "log_dict_config": log.dict_config, "stopped": sorted(stopped)})  # fmt: skip
        self._tasks = [asyncio.create_task(self._read(channel), name=f"worker-{self.slot}-link"),
                       asyncio.create_task(self._wait(self._proc), name=f"worker-{self.slot}-wait")]  # fmt: skip

    async def _wait(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        try:
            others = [t for t in self._tasks if t is not asyncio.current_task()]
            if others:  # the link's reader has read all there was by now or never will
                await asyncio.wait(others, timeout=1.0)
        finally:
            self._ended(code)

    def _ended(self, code: int) -> None:
        if self._channel is not None:
            self._channel.close()
        for answer in self._answers.values():
            if not answer.done():
                answer.set_result(Result(False, f"worker {self.slot} exited before answering"))
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(self.exit_reason(code)))
            self.ready.exception()  # retrieved: a caller may never await a worker that died starting
        if not self.stopped_accepting.done():
            self.stopped_accepting.set_result(None)
        self.exited.set_result(code)

    async def _read(self, channel: wire.Channel) -> None:
        while (message := await channel.receive()) is not None:
            try:
                self._take(message)
            except (KeyError, TypeError, ValueError) as exc:  # another version's worker (an upgrade, then a reload)
                LOGGER.error("worker %d (pid %d): a message this supervisor cannot read (%r): killing it; restart "
                             "the supervisor after an upgrade", self.slot, self.pid, exc)  # fmt: skip
                self.signal(signal.SIGKILL)
                return

    def _take(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "state":
            self._state(message)
        elif kind == "result" and (answer := self._answers.pop(message["id"], None)) and not answer.done():
            answer.set_result(wire.result_from_wire(message))
        elif kind == "problems":
            self.problems = list(message["problems"])

    def _state(self, message: dict[str, Any]) -> None:
        self.reported_at = asyncio.get_running_loop().time()
        self.children = tuple(wire.child_from_wire(c) for c in message["children"])
        self.stats = {name: wire.stats_from_wire(s) for name, s in message["stats"].items()}
        self.lag, self.blocked = float(message["lag"]), bool(message["blocked"])
        for server, line in message.get("lines", ()):
            logs.RECENT.keep(server, line)
        if message["ready"] and not self.ready.done():
            self.ready.set_result(None)
        if message.get("shutting_down") and not self.stopped_accepting.done():
            self.stopped_accepting.set_result(None)
        self._on_report(self)

    async def settled(self) -> None:
        """Return once this worker is ready or has ended (whichever first)."""
        either: list[asyncio.Future[object]] = [self.ready, self.exited]  # type: ignore[list-item]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)

    async def command(self, command: Command, name: str) -> Result:
        if self._channel is None or self.exited.done():
            return Result(False, f"worker {self.slot} is not running")
        ident = next(self._ids)
        answer: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._answers[ident] = answer
        self._channel.send({"t": "command", "id": ident, "command": str(command), "name": name})
        try:
            return await asyncio.wait_for(answer, STEP_TIMEOUT)  # as long as the console waits for one process
        except TimeoutError:
            return Result(False, f"worker {self.slot}: no answer within {STEP_TIMEOUT:g}s")
        finally:
            self._answers.pop(ident, None)

    def signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and not self.exited.done():
            self.terminating = self.terminating or sig in STOP_SIGNALS
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    def exit_reason(self, code: int) -> str:
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return "config problems" if self.problems else f"exit {code}"
