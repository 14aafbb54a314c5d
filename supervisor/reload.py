"""A reload: re-read the config file, validate it as ``check`` does, and apply the difference (plandiff.py).

    prepare (load, diff, bind every new socket: any failure and nothing changed) -> apply (one coordinator
    event: the supervisor: section, removed servers drain and close, added ones join the tree) -> settle
    (rollover.py: changed servers warm a new generation beside the serving one; each takes over once ready,
    or the old one keeps serving) -> done (one Result, logged, metrics, sd_notify)

Unchanged servers are not touched at all. Runs on the coordinator's loop; :meth:`Reload.apply` and the settle
steps run from its event queue, so the coordinator stays the only writer of the tree.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from supervisor import events
from supervisor.address import Address
from supervisor.child import Child
from supervisor.commands import Result
from supervisor.errors import ConfigError
from supervisor.listener import Listener
from supervisor.plan import Plan, ServerPlan
from supervisor.plandiff import PlanDiff, diff, warn_views
from supervisor.planfile import load_plan, problem_report
from supervisor.rollover import Coordinator as RolloverSeams
from supervisor.rollover import Rollover
from supervisor.spec import SupervisorSpec
from supervisor.state import ChildState, ConfigStatus, ServerStats, TreeSnapshot

LOGGER = logging.getLogger("supervisor")


def refusal(*, stopping: bool, started: bool, under_way: Reload | None) -> str:
    """Why a reload cannot begin now ("" if it can): one at a time, and only while the tree is up."""
    if stopping:
        return "the supervisor is shutting down"
    if not started:
        return "the supervisor is still starting; reload once it is ready"
    if under_way is not None:
        since = time.monotonic() - under_way.started
        return f"a reload ({under_way.trigger}) is under way since {since:.1f}s; try again once it is done"
    return ""


async def run(tree: Coordinator, trigger: str) -> Result:
    """One reload, from its trigger (SIGHUP, ctl, the console) to its Result: refused, or prepared and applied."""
    if why := refusal(stopping=tree.stopping, started=tree.ready.done(), under_way=tree.under_way):
        LOGGER.warning("reload (%s) refused: %s", trigger, why)
        return Result(False, f"not reloading: {why}")
    LOGGER.info("reload (%s): reading %s", trigger, tree.plan.source)
    reload = Reload(tree, trigger, tree.snapshot().config)
    tree.begin(reload)
    if (early := await reload.prepare()) is not None:
        return early
    if tree.stopping:  # a stop came while the new sockets were bound
        reload.interrupt()
    else:
        tree.post(events.Reload(reload))
    return await asyncio.shield(reload.done)


class Coordinator(RolloverSeams, Protocol):
    @property
    def plan(self) -> Plan: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def under_way(self) -> Reload | None: ...

    @property
    def ready(self) -> asyncio.Future[list[Address]]: ...

    def snapshot(self) -> TreeSnapshot: ...

    def begin(self, under_way: Reload) -> None: ...

    def post(self, event: events.Event) -> None: ...

    @property
    def children(self) -> Sequence[Child]: ...

    def now(self) -> float: ...

    def make_child(self, plan: ServerPlan, listener: Listener) -> Child: ...

    def stop_generation(self, child: Child, *, restart: bool = True) -> None: ...

    def adopt(self, plan: Plan, children: list[Child], retired: list[Child]) -> None: ...

    def retune(self, spec: SupervisorSpec) -> None: ...

    def reloaded(self, status: ConfigStatus) -> None: ...


class Reload:
    def __init__(self, tree: Coordinator, trigger: str, status: ConfigStatus) -> None:
        self._tree = tree
        self.trigger = trigger
        self._status = status
        self.started = time.monotonic()
        self.done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.plan: Plan | None = None
        self.applied = False
        self.diff = PlanDiff()
        self.rollover = Rollover(tree, {}, (), self._say)  # replaced once the diff is known
        self._listeners: dict[str, Listener] = {}  # moved and added servers' new sockets
        self._lines: list[str] = []

    # -- prepare: nothing in the tree changes yet ------------------------------------------------------------------

    async def prepare(self) -> Result | None:
        """Load, diff and bind. A Result here means the reload ends before it changed anything."""
        tree = self._tree
        source = tree.plan.source
        try:
            # on a thread: parsing is pure-Python YAML (~60 ms for 200 servers), and every server would stall
            # for it on the loop; nothing here touches the tree
            self.plan = await asyncio.to_thread(load_plan, source)
        except ConfigError as exc:
            report = problem_report(source, exc.problems, "the running config is unchanged")
            for line in report:
                LOGGER.error("reload: %s", line)
            return self._end("invalid", Result(False, "\n".join(report), invalid=True))
        self.diff = d = diff([c.plan for c in tree.children], tree.plan, self.plan)
        self.rollover = Rollover(tree, d.changed, d.moved, self._say)
        new = {p.name: p for p in self.plan.servers}
        for name in d.changed:  # the asyncio.Server on a kept socket is TLS or not for the socket's life
            old = tree.child(name)
            if name in d.moved or not old or not old.listener:
                continue
            was, now = old.plan.tls, new[name].tls
            what = "turning tls on or off" if (was is None) != (now is None) else ""
            if was and now and was.fixed != now.fixed:
                what = "changing tls client_auth, ca or handshake_timeout"
            if what:
                why = (f"reload: server {name}: {what} needs a new socket: change its port (or unix path) in the "
                       "same reload, or restart the supervisor; nothing changed")  # fmt: skip
                LOGGER.error("%s", why)
                return self._end("failure", Result(False, why))
        for name in (*d.moved, *d.added):
            old = tree.child(name)
            try:
                listener = Listener.bind(new[name], old.stats if old else ServerStats())
            except OSError as exc:
                self.close_listeners()
                why = f"reload: server {name}: {exc.strerror}; nothing changed, the running config is unchanged"
                LOGGER.error("%s", why)
                return self._end("failure", Result(False, why))
            self._listeners[name] = listener
            await listener.start()
        return None

    def close_listeners(self) -> None:
        for listener in self._listeners.values():
            listener.close()
        self._listeners.clear()

    # -- apply: one coordinator event ------------------------------------------------------------------------------

    def apply(self) -> None:
        tree, d, new = self._tree, self.diff, self.plan
        assert new is not None
        self.applied = True
        if d.supervisor:
            tree.retune(new.supervisor)
            self._say(f"supervisor: {', '.join(d.supervisor)} changed: applied from now on")
        if "workers" in d.supervisor:  # one process cannot become a parent of workers in place
            LOGGER.warning("reload: supervisor.workers changed to %d: it applies when the supervisor is restarted "
                           "(this process serves on alone)", new.supervisor.workers)  # fmt: skip
        warn_views(d.views)
        retired = []
        for name in d.removed:  # reverse start order, like a shutdown
            child = tree.child(name)
            assert child is not None
            child.wanted = False
            draining = child.stats.active
            if child.gen is not None:
                tree.stop_generation(child, restart=False)
            tree.release(child)
            tree.set_state(child, ChildState.STOPPED)
            retired.append(child)
            self._say(f"server {name} removed: port closed, {draining} connection(s) draining")
        children = []
        for plan in new.servers:
            if plan.name in d.added:
                child = tree.make_child(plan, self._listeners.pop(plan.name))
                self.rollover.started(plan.name)
            else:
                child = tree.child(plan.name)
                assert child is not None
                if plan.name in d.changed:
                    self.rollover.change(child, plan, self._listeners.pop(plan.name, None))
                else:
                    child.plan = plan  # equal in all the user wrote: only its rank may differ
            children.append(child)
        running = dataclasses.replace(
            new, metrics=tree.plan.metrics, console=tree.plan.console, servers=tuple(c.plan for c in children)
        )
        tree.adopt(running, children, retired)
        if unchanged := len(d.unchanged):
            self._say(f"{unchanged} server(s) unchanged")

    def progress(self) -> None:
        """After every coordinator event: settle the servers this reload started, finish once none is left."""
        self.rollover.progress()
        if self.rollover.settled and not self.done.done():
            self._finish()

    def _say(self, line: str, level: int = logging.INFO) -> None:
        """One line per server as it happens (unchanged ones summed in one): logged, and part of the Result."""
        self._lines.append(line)
        LOGGER.log(level, "reload: %s", line)

    # -- done ------------------------------------------------------------------------------------------------------

    def _finish(self) -> None:
        assert self.plan is not None
        took = time.monotonic() - self.started
        failed = self.rollover.failed
        ok = not failed
        head = f"reload ({self.trigger}) {'applied' if ok else 'failed'} in {took * 1000:.0f} ms"
        summary = f"{head}; config sha256 {self.plan.digest[:12]}"
        if not ok:
            summary += f"; not applied: {', '.join(failed)} (see the lines above; a reload retries them)"
        LOGGER.log(logging.INFO if ok else logging.ERROR, "%s", summary)
        result = Result(ok, "\n".join([*self._lines, summary]))
        self._end("success" if ok else "failure", result, digest=self.plan.digest)

    def interrupt(self) -> None:
        """A shutdown began: every generation is stopped by it; the reload reports what it got to."""
        self.close_listeners()
        if not self.done.done():
            self._end("failure", Result(False, "reload interrupted: the supervisor is shutting down"))

    def _end(self, result: str, outcome: Result, digest: str = "") -> Result:
        if self.done.done():  # interrupted by a shutdown while it was preparing: counted once, already
            return self.done.result()
        status = dataclasses.replace(self._status.count(result), reloading=False, last_reload_ok=outcome.ok)
        if outcome.ok:
            status = dataclasses.replace(status, digest=digest, loaded_at=time.time(), last_success_at=time.time())
        self._tree.reloaded(status)
        self.done.set_result(outcome)
        return outcome
