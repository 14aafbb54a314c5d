"""The control vocabulary, in one place: the commands the console, ``supervisor ctl`` and the coordinator accept,
their usage and help text, how a request names its servers (several, or ``all``), and the result every one of
them reports. Imports nothing heavy, so ``ctl`` stays a small client."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

ALL = "all"  # every server: start order for restart and start, reverse start order for stop


class Command(enum.StrEnum):
    STATUS = "status"
    RESTART = "restart"
    STOP = "stop"
    START = "start"
    TAIL = "tail"
    RELOAD = "reload"
    SHUTDOWN = "shutdown"

    @property
    def needs_name(self) -> bool:
        return self in NAMED

    @property
    def help(self) -> str:
        return _HELP[self]

    @property
    def usage(self) -> str:
        """How the command is typed, e.g. ``restart NAME [NAME ...] | all``."""
        return _USAGE.get(self, f"{self} NAME [NAME ...] | {ALL}" if self.needs_name else str(self))


NAMED = frozenset({Command.RESTART, Command.STOP, Command.START})
ACTIONS: tuple[str, ...] = tuple(c.value for c in Command)  # for argparse choices and messages
_USAGE = {Command.STATUS: "status [--json]", Command.TAIL: "tail NAME [-n N] [-f]"}
TAIL_LINES = 20  # lines `tail` shows unless told
TAIL_KEPT = 200  # lines kept per server for `tail` (logs.Recent)
_HELP = {
    Command.STATUS: (
        "Show every server: state, address, uptime, restarts, active/total connections, handler errors and the "
        "last failure; --json gives the whole tree"
    ),
    Command.RESTART: (
        "Restart servers, one after the other: a new generation on the same listening socket, while the old "
        "connections drain beside it (a stopped server is started)"
    ),
    Command.STOP: "Stop servers and close their ports until 'start' (all: in reverse start order)",
    Command.START: "Start stopped or failed servers; one already running is left alone",
    Command.TAIL: (
        "The last lines a server logged (its handler's and lifespan's, and the supervisor's lines about it); "
        "-n N lines (default 20); -f keeps following (ctl)"
    ),
    Command.RELOAD: "Re-read the config file and apply what changed (unchanged servers are not touched)",
    Command.SHUTDOWN: "Shut the supervisor down in order (like SIGTERM)",
}


# How long control waits, in one place: the supervisor's own wait, the console's (console_commands._submit), a worker's
# step (worker_process.WorkerProcess.command) and ``ctl``'s default deadline (ctl.ConsoleClient.answer_time).
CONTROL_TIMEOUT = 10.0  # a server command waits this long for the server to be running (or stopped) again
STEP_TIMEOUT = CONTROL_TIMEOUT + 5.0  # one process's answer to a server command: posting it, the wait, the answer
RELOAD_TIMEOUT = 120.0  # a reload's answer: every new generation (or worker) is bounded by its start_timeout
HOP_SLACK = 5.0  # with workers: the parent's own hop, beyond the workers' steps


def answer_timeout(command: Command, workers: int = 0) -> float:
    """How long the console waits for ``command``'s answer on one server (or a reload's). ``workers``: how many
    the published snapshot lists (``TreeSnapshot.workers``; 0 in the single process of ``workers: 1``). With
    workers, ``restart NAME`` runs in one worker after the other (the server is never down in every worker at
    once), each step bounded by STEP_TIMEOUT, so the wait grows with the workers; ``stop`` and ``start`` run in
    every worker at once: one step."""
    if command is Command.RELOAD:
        return RELOAD_TIMEOUT
    if workers <= 0:
        return STEP_TIMEOUT
    steps = workers if command is Command.RESTART else 1
    return steps * STEP_TIMEOUT + HOP_SLACK


@dataclass(frozen=True, slots=True)
class Result:
    """What a command did. ``ok`` and ``invalid`` decide the exit code of ``ctl``: 0, 1, or 2 when the request
    itself was invalid and nothing was done (unknown server names, a reloaded config with problems). ``text``
    is shown as it is. A command on several servers has one step per server (``server`` set), in order."""

    ok: bool
    text: str
    invalid: bool = False
    server: str = ""
    steps: tuple[Result, ...] = ()
    cursor: int = 0  # tail: the log sequence to follow from

    @property
    def outcomes(self) -> tuple[Result, ...]:
        """One result per line shown: the steps, or the result itself."""
        return self.steps or (self,)


def combine(steps: Sequence[Result]) -> Result:
    """Several servers' results as one: ok only if every step is."""
    return Result(
        all(s.ok for s in steps), "\n".join(s.text for s in steps), any(s.invalid for s in steps), steps=tuple(steps)
    )


@dataclass(frozen=True, slots=True)
class Request:
    command: Command
    names: tuple[str, ...] = ()  # as typed: ``all`` is resolved against the running tree (:func:`resolve`)


def parse(action: str, names: Sequence[str] | str | None = (), *, typed_as: str = "") -> Request | Result:
    """The request, or a failed Result saying what is wrong with it (``typed_as``: how the example in the message
    begins, e.g. ``supervisor ctl ``). Checks the words only: which servers exist is :func:`resolve`'s job."""
    if names is None:
        names = ()
    elif isinstance(names, str):
        names = (names,)
    try:
        command = Command(action)
    except ValueError:
        return Result(False, f"unknown action '{action}'; expected one of: {', '.join(ACTIONS)}", invalid=True)
    if command is Command.TAIL:
        if len(names) != 1 or names[0] == ALL:
            return Result(False, f"'tail' takes one server name, e.g. {typed_as}tail echo", invalid=True)
        return Request(command, tuple(names))
    if command.needs_name and not names:
        example = f"{typed_as}{command} echo, or {typed_as}{command} {ALL}"
        return Result(False, f"'{command}' needs a server name (or several, or '{ALL}'), e.g. {example}", invalid=True)
    if not command.needs_name and names:
        return Result(False, f"'{command}' takes no server name", invalid=True)
    if ALL in names and len(names) > 1:
        return Result(False, f"'{ALL}' means every server: give it alone, or name the servers", invalid=True)
    return Request(command, tuple(dict.fromkeys(names)))  # a name given twice is acted on once


def resolve(request: Request, servers: Sequence[str]) -> tuple[str, ...] | Result:
    """The servers ``request`` acts on, in the order to apply it, or a failed (invalid) Result naming every
    unknown name: then nothing may be done. ``servers`` are the running tree's names in start order."""
    if request.names == (ALL,):
        return tuple(reversed(servers)) if request.command is Command.STOP else tuple(servers)
    unknown = [n for n in request.names if n not in servers]
    if unknown:
        which = ", ".join(f"'{n}'" for n in unknown)
        what = "no server named" if len(unknown) == 1 else "no servers named"
        return Result(False, f"{what} {which}; servers: {', '.join(servers)}; nothing was done", invalid=True)
    return request.names
