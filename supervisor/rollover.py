"""A reload's servers, from the moment it is applied until each settles: a changed server rolls over to its new
plan make-before-break (a warm generation on the kept socket, or its new one if moved, in dependency order; it
takes over once ready, else the old one keeps serving), and a server the reload started comes up or does not.

Runs on the coordinator's loop, from its event queue; the reload (reload.py) reads :attr:`Rollover.failed` and
finishes once :attr:`Rollover.settled`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from supervisor.child import Child
from supervisor.generation import Generation, Reason
from supervisor.listener import Listener
from supervisor.outcomes import describe, traceback_of
from supervisor.plan import ServerPlan
from supervisor.state import ChildState

LOGGER = logging.getLogger("supervisor")

# Settled states of a server the reload started (added, or changed while it was down): it came up, or it did not.
_DOWN = (ChildState.FAILED, ChildState.BACKOFF, ChildState.STOPPED)


class Coordinator(Protocol):
    def child(self, name: str) -> Child | None: ...

    def spawn(self, child: Child, plan: ServerPlan, listener: Listener) -> Generation: ...

    def release(self, child: Child) -> None: ...

    def set_state(self, child: Child, state: ChildState) -> None: ...

    def serving(self, child: Child, gen: Generation) -> None: ...


class Rollover:
    def __init__(
        self, tree: Coordinator, changed: Mapping[str, tuple[str, ...]], moved: tuple[str, ...],
        say: Callable[[str, int], None],
    ) -> None:  # fmt: skip
        self._tree = tree
        self._changed = changed  # server -> the keys that changed
        self._moved = moved
        self._say = say  # one line per server, logged and part of the reload's Result
        self._waiting: dict[str, bool] = {}  # server -> True: a warm generation (settled by an event), False: a start
        self.failed: list[str] = []

    @property
    def settled(self) -> bool:
        return not self._waiting

    def started(self, name: str) -> None:
        """An added server: the reload waits for it to come up (or not)."""
        self._waiting[name] = False

    def change(self, child: Child, plan: ServerPlan, listener: Listener | None) -> None:
        """``child`` is to run ``plan`` (on ``listener``, its new socket, if it moved)."""
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
        self._say(f"server {child.name} changed ({self._keys(child)}): {child.state.value}, its next start uses "
                  "the new config", logging.INFO)  # fmt: skip

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
        moved = f" on {gen.ready.result()}" if child.name in self._moved else ""
        was = f", generation {old.number} draining" if isinstance(old, Generation) else ""
        self._settled(child, f"server {child.name} changed ({self._keys(child)}): generation {gen.number} "
                      f"serving{moved}{was}")  # fmt: skip

    def failed_to_start(self, child: Child, gen: Generation, reason: Reason) -> None:
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
        serving = f"generation {child.gen.number} keeps serving" if isinstance(child.gen, Generation) else "stays down"
        self._settled(child, None, f"changed ({self._keys(child)}): the new generation failed to start: {why}; "
                      f"{serving}")  # fmt: skip

    def progress(self) -> None:
        """After every coordinator event: settle the servers the reload started."""
        for name, warm in list(self._waiting.items()):
            child = self._tree.child(name)
            if warm or child is None:
                continue
            if child.state is ChildState.RUNNING and child.gen is not None:
                self._settled(child, f"server {name}: serving on {child.address} (generation {child.generation})")
            elif child.state in _DOWN and child.gen is None:
                self._settled(child, None, f"did not start: {child.state.value}: {child.last_error}")

    def _settled(self, child: Child, line: str | None, error: str = "") -> None:
        self._waiting.pop(child.name, None)
        if line is not None:
            self._say(line, logging.INFO)
        else:
            self.failed.append(child.name)
            self._say(f"server {child.name} {error}", logging.ERROR)

    def _keys(self, child: Child) -> str:
        return ", ".join(self._changed[child.name])
