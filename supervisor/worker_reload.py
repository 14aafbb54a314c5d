"""A reload with ``supervisor.workers: N``: a zero-downtime deploy of config *and* code. The parent re-reads the
file and checks it (without importing handlers: its own modules would be the old code), binds what is new, then
rolls the workers one at a time: a new worker, started with the new text and importing the handlers afresh, must
be ready before the old one in its slot stops accepting and drains (pm2 kills the old one after a timeout
whether or not the new one is ready: Unitech/pm2#3143). The old one drains in the background (worker_retire.py):
the roll goes on to the next slot at once, and answers once every slot's new worker is ready, so a reload takes
N worker starts, not N drains. The first new worker is the canary: if it does not become ready, nothing has
changed and the old workers serve on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import socket
import time
from typing import TYPE_CHECKING

from supervisor import sockets, wire
from supervisor.commands import Result
from supervisor.config import read_config
from supervisor.errors import ConfigError
from supervisor.fleet import Slot
from supervisor.plan import Plan
from supervisor.plandiff import changed_views, warn_views
from supervisor.planfile import plan_from_text, problem_report
from supervisor.state import WorkerState
from supervisor.worker_keeper import READY_SLACK
from supervisor.worker_process import EXIT_GRACE, ConfigText

if TYPE_CHECKING:
    from supervisor.workers import Parent

LOGGER = logging.getLogger("supervisor")


async def roll(parent: Parent, trigger: str) -> Result:
    fleet = parent.fleet
    path = parent.plan.source
    LOGGER.info("reload (%s): reading %s", trigger, path)
    fleet.config = dataclasses.replace(fleet.config, reloading=True)
    fleet.publish()
    try:
        result = await _roll(parent, path)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        LOGGER.exception("reload (%s) failed", trigger)
        result = Result(False, f"reload failed: {type(exc).__name__}: {exc}")
    finally:
        fleet.config = dataclasses.replace(fleet.config, reloading=False)
    outcome = "success" if result.ok else "invalid" if result.invalid else "failure"
    config = fleet.config.count(outcome)
    if result.ok:
        config = dataclasses.replace(config, source=path, digest=parent.config.digest, loaded_at=time.time(),
                                     last_success_at=time.time())  # fmt: skip
    fleet.config = dataclasses.replace(config, last_reload_ok=result.ok)
    fleet.publish()
    (LOGGER.info if result.ok else LOGGER.error)("%s", result.text)
    return result


async def _roll(parent: Parent, path: str) -> Result:
    try:
        text, digest = read_config(path)
        plan = plan_from_text(text, path, digest, handlers=False)
    except ConfigError as exc:
        for line in problem_report(path, exc.problems, "the running config is unchanged"):
            LOGGER.error("%s", line)
        return Result(False, f"reload refused: {len(exc.problems)} problem(s) in {path}; see the log", invalid=True)
    try:
        pending = _bind_new(parent, plan)
    except OSError as exc:
        return Result(False, f"reload failed: {exc.strerror}; the running config is unchanged")
    config = ConfigText(path, text, digest)
    drain = parent.plan.supervisor.shutdown_timeout  # the old workers' own bound
    slots = parent.fleet.slots[: plan.supervisor.workers]
    behind: list[int] = []  # slots whose new worker failed after the canary's success
    try:
        for n, slot in enumerate(slots):
            if (failure := await _replace(parent, slot, config, plan, pending, canary=n == 0)) is None:
                if n == 0:  # the canary serves the new config: from here on it is the config
                    _adopt(parent, plan, config, pending)
                continue
            if n == 0:  # the canary: nothing has changed
                return Result(False, f"reload failed: {failure}; the old workers serve on, unchanged",
                              invalid=failure.startswith("the new worker's config"))  # fmt: skip
            LOGGER.error("reload: worker %d: %s; stopping its old worker: its slot starts the new config", slot.number,
                         failure)  # fmt: skip
            behind.append(slot.number)
            if slot.process is not None and not slot.process.exited.done():
                slot.state = WorkerState.STOPPING  # draining; then its keeper starts the new config in the slot
                parent.retire(slot.process)
                parent.fleet.publish()
    finally:
        for sock, ours in pending.values():  # not adopted (the canary failed, or the reload was cut): closed again
            sockets.close(sock, ours)
    _resize(parent, plan)
    parent.sockets.close([name for name in parent.sockets if name not in {s.name for s in plan.servers}])
    if behind:
        return Result(False, f"reload applied by the canary, but worker(s) {behind} failed to start it and are being "
                             "replaced by their slots with the new config; see the log")  # fmt: skip
    return Result(True, f"reload applied: {len(slots)} worker(s) replaced one at a time, each new one ready before "
                        f"the old one stopped accepting; the old ones drain their connections in the background, "
                        f"within {drain:g}s (config {digest[:12]}, handler code imported afresh)")  # fmt: skip


Pending = dict[str, tuple[socket.socket, "tuple[int, int] | None"]]


def _bind_new(parent: Parent, plan: Plan) -> Pending:
    """Bind what the new plan listens on and the parent does not (added or moved servers), beside the running
    sockets: only the new workers get them, and only an adopted reload makes them the parent's."""
    old = {s.name: s for s in parent.plan.servers}
    pending: Pending = {}
    try:
        for server in plan.servers:
            before = old.get(server.name)
            if before is None or before.address != server.address:
                sock = sockets.bind(server)
                pending[server.name] = (sock, sockets.identity(sock))
    except OSError:
        for sock, ours in pending.values():
            sockets.close(sock, ours)
        raise
    return pending


async def _replace(
    parent: Parent, slot: Slot, config: ConfigText, plan: Plan, pending: Pending, *, canary: bool
) -> str | None:
    """Start slot's successor; once it is ready, retire the old one (stop accepting, drain). None, or why not."""
    fleet = parent.fleet
    new = await parent.spawn(slot.number, config, plan, {name: sock for name, (sock, _) in pending.items()})
    bound = max((s.start_timeout for s in plan.servers), default=0.0) + READY_SLACK  # the new plan's
    try:
        await wire.within(new.settled(), bound)
    except asyncio.CancelledError:  # a shutdown: the new worker goes with the others
        new.signal(signal.SIGKILL)
        raise
    if not new.ready.done() or new.ready.exception() is not None:
        # it may serve some servers already: they drain, bounded; the canary's failure is answered once it is gone
        # (a second reload must find the ports the failed one bound free again), a later slot's in the background
        retired = parent.retire(new)
        if canary:
            await retired
        if new.problems:
            for problem in new.problems:
                LOGGER.error("reload: %s", problem)
            shown = "; ".join(new.problems[:3]) + ("; ..." if len(new.problems) > 3 else "")
            return f"the new worker's config has {len(new.problems)} problem(s): {shown}"
        if new.exited.done() and new.exited.result() != 0:
            return f"the new worker ended before it was ready: {new.exit_reason(new.exited.result())}"
        return f"the new worker was not ready within {bound:g}s"
    old = slot.swap(new)  # the one serving now (its keeper may have replaced a dead one meanwhile)
    slot.state, slot.started_at = WorkerState.RUNNING, asyncio.get_running_loop().time()
    LOGGER.info("reload: worker %d (pid %d) ready; stopping its predecessor (pid %d)", slot.number, new.pid,
                old.pid if old else 0)  # fmt: skip
    fleet.publish()
    if old is not None:
        parent.retire(old)  # it stops accepting at once and drains in the background
        # the roll goes on once it says so (its next report, within moments), not after its drain: starting the next
        # new worker in that instant took the CPU from the old one's last accepts (those its listener hands to the
        # draining generation as it closes: listener.py), so they waited behind a whole interpreter start
        await wire.within(asyncio.shield(old.stopped_accepting), EXIT_GRACE)
    return None


def _adopt(parent: Parent, plan: Plan, config: ConfigText, pending: Pending) -> None:
    """The canary serves ``plan``: it is the parent's now. A moved server's old socket stays open (as NAME@old)
    until the roll is over (a draining old worker holds its own copy until it exits)."""
    backlogs = {s.name: s.backlog for s in parent.plan.servers}
    for server in plan.servers:
        if server.name not in pending and backlogs.get(server.name, server.backlog) != server.backlog:
            parent.sockets.resize(server)
    for name, (sock, _) in list(pending.items()):
        if name in parent.sockets:
            parent.sockets[f"{name}@old"] = parent.sockets.pop(name)
        parent.sockets.adopt(name, sock)
        del pending[name]
    warn_views(changed_views(parent.plan, plan))  # the parent's views: the workers have none
    parent.plan, parent.config = plan, config
    parent.stopped_servers &= {s.name for s in plan.servers}  # one removed and added again later starts afresh
    fleet = parent.fleet
    fleet.plan = plan
    fleet.addresses = {s.name: sockets.address_of(parent.sockets[s.name]) for s in plan.servers}
    parent.retune(plan)


def _resize(parent: Parent, plan: Plan) -> None:
    """A changed ``workers`` count: start the added slots, retire the extra ones (they drain in the background)."""
    added, removed = parent.fleet.resize(plan.supervisor.workers)
    for slot in added:
        parent.keep(slot)
    for slot in removed:
        parent.drop(slot)
        if slot.process is not None:
            parent.retire(slot.process)
