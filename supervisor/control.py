"""Control requests from the console and ``supervisor ctl``: check them, hand them to the coordinator's loop,
wait for the outcome; and what each command does to a server, applied by the coordinator itself (it is the
only writer of the tree: :func:`apply` runs on its loop, from its event queue)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from supervisor.child import Child
from supervisor.commands import CONTROL_TIMEOUT, Command, Result
from supervisor.state import ChildState, TreeSnapshot

LOGGER = logging.getLogger("supervisor")


class Coordinator(Protocol):
    """The coordinator's seams that control uses."""

    @property
    def shutting_down(self) -> bool: ...

    @property
    def names(self) -> list[str]: ...

    def child(self, name: str) -> Child | None: ...

    def request_stop(self, reason: str) -> None: ...

    def post_control(self, command: Command, child: Child) -> asyncio.Future[None]: ...

    async def changed(self) -> TreeSnapshot: ...

    async def reload(self, trigger: str) -> Result: ...

    def stop_generation(self, child: Child) -> None: ...

    def release(self, child: Child) -> None: ...

    def set_state(self, child: Child, state: ChildState) -> None: ...


async def request(tree: Coordinator, command: Command, name: str | None) -> Result:
    """Run one command on the coordinator's loop and report what came of it."""
    if command is Command.SHUTDOWN:
        tree.request_stop("control: shutdown")
        return Result(True, "shutting down")
    if command is Command.RELOAD:
        return await tree.reload("control")
    if command is Command.STATUS:
        return Result(False, "status is answered by the console itself, from the snapshot")
    child = tree.child(name or "")
    if child is None:
        # not `invalid`: the console checked every name before the first was applied; one gone since (a reload
        # removed it) fails this step only, after earlier ones were done
        return Result(False, f"no server named '{name}'; servers: {', '.join(tree.names)}")
    if tree.shutting_down:
        return Result(False, "the supervisor is shutting down")
    if child.pending is not None or child.next is not None:
        return Result(False, f"{name} is being reloaded (a new generation is starting); try again once it is done")
    if command is Command.START and child.wanted and child.state is not ChildState.FAILED:
        return Result(True, f"{name} is already {_ALREADY.get(child.state, child.state.value)}")
    if command is Command.STOP and not child.wanted and child.state is ChildState.STOPPED:
        return Result(True, f"{name} is already stopped")
    before = child.generation
    was = child.state if child.state in (ChildState.STOPPED, ChildState.FAILED) else None
    try:
        async with asyncio.timeout(CONTROL_TIMEOUT):
            await tree.post_control(command, child)
    except TimeoutError:
        return Result(False, f"{name}: no answer within {CONTROL_TIMEOUT:g}s (the supervisor may be shutting down)")
    try:
        if command is Command.STOP:
            await _until(tree, lambda: child.state in (ChildState.STOPPED, ChildState.FAILED))
            if child.closing is not None:  # the port is free once this returns: a script may bind it next
                await asyncio.wait_for(asyncio.shield(child.closing), CONTROL_TIMEOUT)
            return Result(True, f"stopped {name}")
        await _until(
            tree,
            lambda: (
                (child.state is ChildState.RUNNING and child.generation > before)
                or child.state in (ChildState.FAILED, ChildState.BACKOFF, ChildState.STOPPED)
            ),
        )
    except TimeoutError:  # applied, but not done yet (a start waiting for its `after` servers, a slow lifespan)
        return Result(False, f"{name}: still {child.state.value} after {CONTROL_TIMEOUT:g}s; see status and the log")
    if child.state is ChildState.RUNNING:
        if command is Command.RESTART and was is not None:  # nothing was running: say what happened
            return Result(True, f"started {name} ({child.address}); {_WAS[was]}")
        return Result(True, f"{'started' if command is Command.START else 'restarted'} {name} ({child.address})")
    return Result(False, f"{name} did not come up: {child.state.value}: {child.last_error}")


# What ``restart`` adds for a server that was not running, and what ``start`` says of one meant to run already
# (``echo is already running``).
_WAS = {ChildState.STOPPED: "it was stopped", ChildState.FAILED: "it had failed"}
_ALREADY = {
    ChildState.STARTING: "starting",
    ChildState.BACKOFF: "meant to run (in backoff: it restarts by itself; see status)",
    ChildState.STOPPING: "meant to run (stopping, then it starts again)",
}


async def _until(tree: Coordinator, condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(CONTROL_TIMEOUT):
        while not condition():
            await tree.changed()


def apply(tree: Coordinator, command: Command, child: Child) -> None:
    """What ``command`` does to ``child`` (on the coordinator's loop; its next reconcile starts what is due)."""
    if tree.shutting_down:
        return
    if command is Command.STOP:
        child.wanted = False
        if child.gen is not None:
            tree.stop_generation(child)
        tree.release(child)
        tree.set_state(child, ChildState.STOPPED)
        LOGGER.info("server %s stopped by control request", child.name)
        return
    if command is Command.RESTART:
        if child.gen is not None:
            tree.stop_generation(child)
        child.stats.restarts["manual"] += 1
        child.restarts += 1
    child.wanted = True
    child.not_before = 0.0
    child.served = False  # started by hand: start_retries counts afresh
    child.start_failures = 0
    if child.state is ChildState.FAILED:  # a server given up on starts from the initial backoff again
        child.backoff.failures = 0
    tree.set_state(child, ChildState.STARTING if child.gen is None else child.state)
    LOGGER.info(
        "server %s %s by control request", child.name, "restarting" if command is Command.RESTART else "starting"
    )
