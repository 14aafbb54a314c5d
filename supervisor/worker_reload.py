"""A reload with ``supervisor.workers: N``: a zero-downtime deploy of config *and* code. The parent re-reads the
file and checks it (without importing handlers: its own modules would be the old code), binds what is new, then
rolls the workers one at a time: a new worker, started with the new text and importing the handlers afresh, must
be ready before the old one in its slot stops accepting and drains (pm2 kills the old one after a timeout
whether or not the new one is ready: Unitech/pm2#3143). The first new worker is the canary: if it does not become
ready, nothing has changed and the old workers serve on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from typing import TYPE_CHECKING

from supervisor import sockets
from supervisor.commands import Result
from supervisor.config import read_config
from supervisor.errors import ConfigError
from supervisor.fleet import Slot
from supervisor.plan import Plan
from supervisor.planfile import plan_from_text, problem_report
from supervisor.state import WorkerState
from supervisor.worker_process import ConfigText, WorkerProcess

if TYPE_CHECKING:
    from supervisor.workers import Parent

LOGGER = logging.getLogger("supervisor")

READY_SLACK = 10.0  # beyond the slowest server's start_timeout: the new worker's interpreter start and imports


async def roll(parent: Parent, trigger: str) -> Result:
    fleet = parent.fleet
    path = parent.plan.source
    LOGGER.info("reload (%s): reading %s", trigger, path)
    fleet.config = dataclasses.replace(fleet.config, reloading=True)
    fleet.publish()
    try:
        result = await _roll(parent, path)
    except asyncio.CancelledError:
        fleet.config = dataclasses.replace(fleet.config, reloading=False)
        raise
    outcome = "success" if result.ok else "invalid" if result.invalid else "failure"
    config = fleet.config.count(outcome)
    if result.ok:
        config = dataclasses.replace(config, source=path, digest=parent.config.digest, loaded_at=time.time(),
                                     last_reload_ok=True, last_success_at=time.time())  # fmt: skip
    fleet.config = dataclasses.replace(config, reloading=False, last_reload_ok=result.ok)
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
        added = _bind_new(parent, plan)
    except OSError as exc:
        return Result(False, f"reload failed: {exc.strerror}; the running config is unchanged")
    config = ConfigText(path, text, digest)
    fleet = parent.fleet
    slots = fleet.slots[: plan.supervisor.workers]
    for n, slot in enumerate(slots):
        if (failure := await _replace(parent, slot, config, plan)) is not None:
            if n == 0:  # the canary: nothing has changed
                parent.close_sockets(added)
                return Result(False, f"reload failed: {failure}; the old workers serve on, unchanged",
                              invalid=failure.startswith("the new worker's config"))  # fmt: skip
            LOGGER.error("reload: worker %d: %s; its slot restarts it with the new config", slot.number, failure)
        if n == 0:  # the canary serves the new config: from here on it is the config
            _adopt(parent, plan, config)
    await _resize(parent, plan)
    parent.close_sockets([name for name in parent.sockets if name not in {s.name for s in plan.servers}])
    n = len(slots)
    return Result(True, f"reload applied: {n} worker(s) replaced one at a time, each new one ready before the old "
                        f"one stopped (config {digest[:12]}, handler code imported afresh)")  # fmt: skip


def _bind_new(parent: Parent, plan: Plan) -> list[str]:
    """Bind what the new plan listens on and the parent does not yet; the old socket of a moved server is kept
    as ``NAME@old`` until the old workers are gone. Any failure: what was bound here is closed again."""
    old = {s.name: s for s in parent.plan.servers}
    added: list[str] = []
    try:
        for server in plan.servers:
            before = old.get(server.name)
            if before is not None and before.address == server.address:
                sock = parent.sockets[server.name]
                if server.backlog != before.backlog:
                    sock.listen(server.backlog)
                continue
            fresh = sockets.bind(server)
            if server.name in parent.sockets:
                parent.sockets[f"{server.name}@old"] = parent.sockets.pop(server.name)
            parent.adopt_socket(server.name, fresh)
            added.append(server.name)
    except OSError:
        for name in added:
            parent.close_sockets([name])
            if (kept := parent.sockets.pop(f"{name}@old", None)) is not None:
                parent.sockets[name] = kept
        raise
    return added


async def _replace(parent: Parent, slot: Slot, config: ConfigText, plan: Plan) -> str | None:
    """Start slot's successor; once it is ready, retire the old one (stop accepting, drain). None, or why not."""
    fleet = parent.fleet
    new = await parent.spawn(slot.number, config, plan)
    bound = max((s.start_timeout for s in plan.servers), default=0.0) + READY_SLACK
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(new.settled(), bound)
    if not new.ready.done() or new.ready.exception() is not None:
        new.signal(signal.SIGKILL)
        await asyncio.shield(new.exited)
        fleet.bury(new)
        if new.problems:
            for problem in new.problems:
                LOGGER.error("reload: %s", problem)
            shown = "; ".join(new.problems[:3]) + ("; ..." if len(new.problems) > 3 else "")
            return f"the new worker's config has {len(new.problems)} problem(s): {shown}"
        if new.exited.done():
            return f"the new worker ended before it was ready: {new.exit_reason(new.exited.result())}"
        return f"the new worker was not ready within {bound:g}s"
    old = slot.process  # the one serving now (its keeper may have replaced a dead one meanwhile)
    slot.process, slot.state, slot.started_at = new, WorkerState.RUNNING, asyncio.get_running_loop().time()
    LOGGER.info("reload: worker %d (pid %d) ready; stopping its predecessor (pid %d)", slot.number, new.pid,
                old.pid if old else 0)  # fmt: skip
    fleet.publish()
    if old is not None and not old.exited.done():
        await _retire(parent, old, plan)
    return None


async def _retire(parent: Parent, old: WorkerProcess, plan: Plan) -> None:
    fleet = parent.fleet
    fleet.retiring.append(old)
    old.signal(signal.SIGTERM)
    bound = plan.supervisor.shutdown_timeout + 2.0
    try:
        await asyncio.wait_for(asyncio.shield(old.exited), bound)
    except TimeoutError:
        old.signal(signal.SIGKILL)
        await asyncio.shield(old.exited)
    fleet.retiring.remove(old)
    fleet.bury(old)
    fleet.publish()


def _adopt(parent: Parent, plan: Plan, config: ConfigText) -> None:
    parent.plan, parent.config = plan, config
    fleet = parent.fleet
    fleet.plan = plan
    fleet.addresses = {s.name: sockets.address_of(parent.sockets[s.name]) for s in plan.servers}
    parent.retune(plan)


async def _resize(parent: Parent, plan: Plan) -> None:
    """A changed ``workers`` count: start the added slots, retire the extra ones."""
    fleet = parent.fleet
    wanted = plan.supervisor.workers
    while len(fleet.slots) < wanted:
        slot = Slot(len(fleet.slots) + 1)
        fleet.slots.append(slot)
        parent.keep(slot)
    extra = fleet.slots[wanted:]
    del fleet.slots[wanted:]
    for slot in extra:
        parent.drop(slot)
        if slot.process is not None:
            await _retire(parent, slot.process, plan)
