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
    """Run a named command in every serving worker (``stop all`` comes one name at a time: console_commands), one
    command at a time: a ``start`` sent while a ``stop`` was under way would make a worker listen on the socket
    the stop then refuses (found in review: refused clients, and 8,000-14,000 EINVAL tracebacks in a second).

    The intent is recorded before the workers act, so a worker started meanwhile (a replacement, a reload's canary)
    starts the server as asked; if no worker did it, the mark is as it was (if one did, its replacement must agree
    with it)."""
    async with parent.commanding:
        return await _named(parent, command, name)


async def _named(parent: Parent, command: Command, name: str) -> Result:
    marks = parent.stopped_servers
    was_stopped = name in marks
    server = next((s for s in parent.plan.servers if s.name == name), None)
    starts = command in (Command.START, Command.RESTART)
    if starts and server is not None and (why := parent.sockets.resume(server)) is not None:
        # listening before any worker accepts, or not at all
        return Result(False, f"{name}: {why}; it stays stopped: free the port, then start {name} again")
    if command is Command.STOP:
        marks.add(name)
    elif command in (Command.START, Command.RESTART):
        marks.discard(name)
    steps = await parent.fleet.steps(command, name)
    if not any(r.ok for _, r in steps):
        marks.discard(name)
        if was_stopped:
            marks.add(name)
    if command is Command.STOP and server is not None and name in marks and _stopped_everywhere(parent, steps):
        parent.sockets.refuse(server)
    return summed(steps)


def _stopped_everywhere(parent: Parent, steps: list[tuple[int, Result]]) -> bool:
    """Every worker stopped it, none is starting that might not know, and every retiring one stopped accepting (a
    worker accepting on a socket that stops listening would get EINVAL from each accept, in a loop): only then may
    its socket refuse clients."""
    fleet = parent.fleet
    in_slots = {s.process for s in fleet.slots}
    return (
        not parent.stopping
        and (parent.rolling is None or parent.rolling.done())
        and all(s.state is WorkerState.RUNNING for s in fleet.slots)
        and len(steps) == len(fleet.slots)
        and all(r.ok for _, r in steps)
        and all(p.stopped_accepting.done() for p in fleet.processes() if p not in in_slots)
    )
