"""A reload: re-read the config file, validate it as ``check`` does, and apply the difference (plandiff.py).

    prepare (load, diff, bind every new socket: any failure and nothing changed) -> apply (one coordinator
    event: the supervisor: section, removed servers drain and close, added ones join the tree) -> settle
    (changed servers warm a new generation on their socket beside the serving one, in dependency order; each
    takes over once ready, or the old one keeps serving) -> done (one Result, logged, metrics, sd_notify)

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

from supervisor.child import Child
from supervisor.commands import Result
from supervisor.errors import ConfigError
from supervisor.generation import Generation, Reason
from supervisor.listener import Listener
from supervisor.outcomes import describe, traceback_of
from supervisor.plan import Plan, ServerPlan
from supervisor.plandiff import PlanDiff, diff
from supervisor.planfile import load_plan, problem_report
from supervisor.spec import SupervisorSpec
from supervisor.state import ChildState, ConfigStatus, ServerStats

LOGGER = logging.getLogger("supervisor")

# Settled states of a server the reload started (added, or changed while it was down): it came up, or it did not.
_DOWN = (ChildState.FAILED, ChildState.BACKOFF, ChildState.STOPPED)


class Coordinator(Protocol):
    @property
    def plan(self) -> Plan: ...

    @property
    def children(self) -> Sequence[Child]: ...

    def now(self) -> float: ...

    def child(self, name: str) -> Child | None: ...

    def make_child(self, plan: ServerPlan, listener: Listener) -> Child: ...

    def spawn(self, child: Child, plan: ServerPlan, listener: Listener) -> Generation: ...

    def stop_generation(self, child: Child, *, restart: bool = True) -> None: ...

    def release(self, child: Child) -> None: ...

    def set_state(self, child: Child, state: ChildState) -> None: ...

    def serving(self, child: Child, gen: Generation) -> None: ...

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
        self._listeners: dict[str, Listener] = {}  # moved and added servers' new sockets
        self._waiting: dict[str, bool] = {}  # server -> True: a warm generation (settled by an event), False: a start
        self._failed: list[str] = []
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
        new = {p.name: p for p in self.plan.servers}
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
        if d.views:
            LOGGER.warning(
                "reload: %s changed: the metrics endpoint and the console keep their address until the supervisor "
                "is restarted", " and ".join(f"{v}:" for v in d.views),
            )  # fmt: skip
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
                self._waiting[plan.name] = False
            else:
                child = tree.child(plan.name)
                assert child is not None
                if plan.name in d.changed:
                    self._change(child, plan)
                else:
                    child.plan = plan  # equal in all the user wrote: only its rank may differ
            children.append(child)
        running = dataclasses.replace(
            new, metrics=tree.plan.metrics, console=tree.plan.console, servers=tuple(c.plan for c in children)
        )
        tree.adopt(running, children, retired)
        if unchanged := len(d.unchanged):
            self._say(f"{unchanged} server(s) unchanged")

    def _change(self, child: Child, plan: ServerPlan) -> None:
        keys = ", ".join(self.diff.changed[child.name])
        listener = self._listeners.pop(child.name, None)
        if isinstance(child.gen, Generation):  # serving or starting: make the new one before breaking it
            child.pending, child.pending_listener = plan, listener
            self._waiting[child.name] = True  # its line is written once it settles
            return
        # nothing serving (backoff, stopped, failed): the next start uses the new plan
        if child.state is ChildState.FAILED:  # a server given up on gets its chance with the new config
            child.wanted, child.served, child.start_failures, child.not_before = True, False, 0, 0.0
            child.backoff.failures = 0
            self._tree.set_state(child, ChildState.STARTING)
        if not child.wanted and listener is not None:  # stopped on purpose: its port stays closed until `start`
            listener.close()
            listener = None
        self._take(child, plan, listener)
        if child.wanted:
            self._waiting[child.name] = False
        self._say(f"server {child.name} changed ({keys}): {child.state.value}, its next start uses the new config")

    # -- settle: warm generations, in dependency order -------------------------------------------------------------

    def due(self, child: Child) -> None:
        """Reconcile's step for a child with a pending change: warm its new generation once its ``after``
        servers are running (and settled themselves), or take the change at once if the old one is gone."""
        tree, plan = self._tree, child.pending
        assert plan is not None
        if child.next is not None:
            return
        if child.gen is None:  # the serving generation ended meanwhile: its restart uses the new plan
            self._take(child, plan, child.pending_listener)
            self._waiting[child.name] = False
            return
        deps = [tree.child(d) for d in plan.after]
        if all(d is not None and d.state is ChildState.RUNNING and d.pending is None for d in deps):
            child.next = tree.spawn(child, plan, child.pending_listener or child.listener)  # type: ignore[arg-type]
            tree.set_state(child, child.state)  # published with the warm generation's number

    def _take(self, child: Child, plan: ServerPlan, listener: Listener | None) -> None:
        """``child`` runs ``plan`` from now on; a moved server's new socket replaces the old one, closed now."""
        child.plan, child.pending, child.pending_listener = plan, None, None
        child.backoff.spec = plan.backoff
        if listener is not None:
            self._tree.release(child)
            child.listener = listener

    def ready(self, child: Child, gen: Generation) -> None:
        """The warm generation is serving (it attached itself to the socket): the old one stops and drains."""
        old, child.gen, child.next = child.gen, gen, None
        self._take(child, gen.plan, child.pending_listener)  # moved: the old socket stops accepting now
        if isinstance(old, Generation):
            old.stop(None)
            old.start_drain(old.plan.shutdown_timeout, restart=True)
        self._tree.serving(child, gen)
        moved = f" on {gen.ready.result()}" if child.name in self.diff.moved else ""
        was = f", generation {old.number} draining" if isinstance(old, Generation) else ""
        keys = ", ".join(self.diff.changed[child.name])
        self._settled(child, f"server {child.name} changed ({keys}): generation {gen.number} serving{moved}{was}")

    def failed(self, child: Child, gen: Generation, reason: Reason) -> None:
        """The warm generation ended before it was ready: the old one keeps serving, with the old config."""
        child.next, child.pending = None, None
        if (listener := child.pending_listener) is not None:
            listener.close()
            child.pending_listener = None
        gen.start_drain(0.0)
        why = describe(reason) if reason is not None else "stopped before it was ready"
        child.last_error = f"reload: {why}"
        if (exc := traceback_of(reason)) is not None:
            LOGGER.error("reload: server %s: traceback of the failure: %r", child.name, exc, exc_info=exc)
        keys = ", ".join(self.diff.changed[child.name])
        serving = f"generation {child.gen.number} keeps serving" if isinstance(child.gen, Generation) else "stays down"
        self._settled(child, None, f"changed ({keys}): the new generation failed to start: {why}; {serving}")

    def progress(self) -> None:
        """After every coordinator event: settle the servers this reload started, finish once none is left."""
        for name, warm in list(self._waiting.items()):
            child = self._tree.child(name)
            if warm or child is None:
                continue
            if child.state is ChildState.RUNNING and child.gen is not None:
                self._settled(child, f"server {name}: serving on {child.address} (generation {child.generation})")
            elif child.state in _DOWN and child.gen is None:
                self._settled(child, None, f"did not start: {child.state.value}: {child.last_error}")
        if not self._waiting and not self.done.done():
            self._finish()

    def _settled(self, child: Child, line: str | None, error: str = "") -> None:
        self._waiting.pop(child.name, None)
        if line is not None:
            self._say(line)
        else:
            self._failed.append(child.name)
            self._say(f"server {child.name} {error}", logging.ERROR)

    def _say(self, line: str, level: int = logging.INFO) -> None:
        """One line per server as it happens (unchanged ones summed in one): logged, and part of the Result."""
        self._lines.append(line)
        LOGGER.log(level, "reload: %s", line)

    # -- done ------------------------------------------------------------------------------------------------------

    def _finish(self) -> None:
        assert self.plan is not None
        took = time.monotonic() - self.started
        ok = not self._failed
        head = f"reload ({self.trigger}) {'applied' if ok else 'failed'} in {took * 1000:.0f} ms"
        summary = f"{head}; config sha256 {self.plan.digest[:12]}"
        if not ok:
            summary += f"; not applied: {', '.join(self._failed)} (see the lines above; a reload retries them)"
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
