"""``stop``/``start``/``restart NAME`` with ``supervisor.workers: N``: the parent's stop marks (a worker started
later follows them), the command in every serving worker, and the server's socket refusing new clients while it
is stopped in every worker (parent_sockets.ParentSockets.refuse)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisor.commands import Command, Result
from supervisor.fleet import summed
from supervisor.state import WorkerState

if TYPE_CHECKING:
    from supervisor.workers import Parent


async def named(parent: Parent, command: Command, name: str) -> Result:
    """Run a named command in every serving worker (``stop all`` comes one name at a time: console_commands).

    The intent is recorded before the workers act, so a worker started meanwhile (a replacement, a reload's canary)
    starts the server as asked; if no worker did it, the mark is as it was (if one did, its replacement must agree
    with it)."""
    marks = parent.stopped_servers
    was_stopped = name in marks
    server = next((s for s in parent.plan.servers if s.name == name), None)
    if command is Command.STOP:
        marks.add(name)
    elif command in (Command.START, Command.RESTART):
        marks.discard(name)
        if server is not None:
            parent.sockets.resume(server)  # listening before any worker accepts on it
    steps = await parent.fleet.steps(command, name)
    if not any(r.ok for _, r in steps):
        marks.discard(name)
        if was_stopped:
            marks.add(name)
    if command is Command.STOP and server is not None and _stopped_everywhere(parent, steps):
        parent.sockets.refuse(server)
    return summed(steps)


def _stopped_everywhere(parent: Parent, steps: list[tuple[int, Result]]) -> bool:
    """Every worker stopped it, and none is starting that might not know (a worker accepting on a socket that stops
    listening would get EINVAL from each accept, in a loop): only then may its socket refuse clients."""
    slots = parent.fleet.slots
    return (
        not parent.stopping
        and (parent.rolling is None or parent.rolling.done())
        and all(s.state is WorkerState.RUNNING for s in slots)
        and len(steps) == len(slots)
        and all(r.ok for _, r in steps)
    )
