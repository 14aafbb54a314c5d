"""The control vocabulary, in one place: what the console, ``supervisor ctl`` and the coordinator accept, and
the result every one of them reports. Imports nothing heavy, so ``ctl`` stays a small client."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Command(enum.StrEnum):
    STATUS = "status"
    RESTART = "restart"
    STOP = "stop"
    START = "start"
    RELOAD = "reload"
    SHUTDOWN = "shutdown"

    @property
    def needs_name(self) -> bool:
        return self in NAMED

    @property
    def help(self) -> str:
        return _HELP[self]


NAMED = frozenset({Command.RESTART, Command.STOP, Command.START})
ACTIONS: tuple[str, ...] = tuple(c.value for c in Command)  # for argparse choices and messages
_HELP = {
    Command.STATUS: "Show every server: state, address, uptime, restarts, connections, last error",
    Command.RESTART: "Restart a server (its port stays open; old connections drain)",
    Command.STOP: "Stop a server and close its port until 'start'",
    Command.START: "Start a stopped or failed server",
    Command.RELOAD: "Re-read the config file and apply what changed (unchanged servers are not touched)",
    Command.SHUTDOWN: "Shut the supervisor down in order (like SIGTERM)",
}


@dataclass(frozen=True, slots=True)
class Result:
    """What a command did: ``ok`` and ``invalid`` decide the exit code of ``ctl`` (0, 1, or 2 for a reload whose
    config is invalid); ``text`` is shown as it is."""

    ok: bool
    text: str
    invalid: bool = False


def parse(action: str, name: str | None, *, typed_as: str = "") -> Command | Result:
    """The command, or a failed Result saying what is wrong with the request (``typed_as``: how the example
    in the message begins, e.g. ``supervisor ctl ``)."""
    try:
        command = Command(action)
    except ValueError:
        return Result(False, f"unknown action '{action}'; expected one of: {', '.join(ACTIONS)}")
    if command.needs_name and not name:
        return Result(False, f"'{command}' needs a server name, e.g. {typed_as}{command} echo")
    if not command.needs_name and name:
        return Result(False, f"'{command}' takes no server name")
    return command
