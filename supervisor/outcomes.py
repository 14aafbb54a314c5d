"""What the coordinator does when a generation ends: log how, ask restart.decide() what comes next, then restart
it (with the siblings its strategy names, after the backoff), leave it stopped, or give up on the whole tree.

Runs on the coordinator's loop, from its event queue, and changes the tree only through the coordinator's seams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from supervisor.child import PENDING, Child
from supervisor.errors import StartTimeout, StopServer
from supervisor.generation import Generation, Reason
from supervisor.plan import Plan
from supervisor.restart import Intensity, Next, decide
from supervisor.state import ChildState, error_text

LOGGER = logging.getLogger("supervisor")


class Coordinator(Protocol):
    @property
    def plan(self) -> Plan: ...

    @property
    def children(self) -> Sequence[Child]: ...

    @property
    def shutting_down(self) -> bool: ...

    def now(self) -> float: ...

    def stop_generation(self, child: Child) -> None: ...

    def release(self, child: Child) -> None: ...

    def set_state(self, child: Child, state: ChildState) -> None: ...

    def give_up(self, why: str) -> None: ...


class Outcomes:
    def __init__(self, tree: Coordinator, intensity: Intensity) -> None:
        self._tree = tree
        self._intensity = intensity

    def ended(self, child: Child, gen: Generation | None, reason: Reason) -> None:
        if gen is not None:
            # a restart never waits for the old connections: they drain beside the new generation
            gen.start_drain(gen.plan.shutdown_timeout, restart=True)
        if child.gen is not (gen or PENDING):
            # stopped on purpose (group restart, console) before it ended by itself
            if reason is not None and not isinstance(reason, StopServer | asyncio.CancelledError):
                child.last_error = describe(reason)
                LOGGER.error("server %s failed while already restarting: %s", child.name, child.last_error)
            return
        child.gen = None
        child.started_at, uptime = None, (self._tree.now() - child.started_at if child.started_at else 0.0)
        failed = not isinstance(reason, StopServer)
        if failed:
            child.last_error = describe(reason)
            child.hold(logging.ERROR, "server %s failed: %s", child.name, child.last_error)
            if (exc := traceback_of(reason)) is not None:
                child.hold(logging.ERROR, "server %s: traceback of the failure: %r", child.name, exc, exc_info=exc)
            if not child.served:
                child.start_failures += 1
        else:
            child.hold(logging.INFO, "server %s stopped itself", child.name)
        decision = decide(
            child.plan, failed=failed, served=child.served, start_failures=child.start_failures, uptime=uptime,
            intensity=self._intensity, backoff=child.backoff,
        )  # fmt: skip
        if decision.next is Next.RESTART:
            self._restart(child, decision.delay, failed)
            return
        child.flush()
        if decision.next is Next.STAY_STOPPED:
            child.wanted = False
            self._tree.release(child)
            self._tree.set_state(child, ChildState.FAILED if failed else ChildState.STOPPED)
            LOGGER.warning("server %s (%s) will not be restarted", child.name, child.plan.restart)
            return
        sup = self._tree.plan.supervisor
        if decision.next is Next.GIVE_UP:
            why = f"more than {sup.max_restarts} restarts within {sup.restart_window:g}s (last: server {child.name}: "
            self._give_up(child, f"{why}{child.last_error})")
            return
        child.wanted = False  # Next.NEVER_STARTED: supervisord's FATAL, not retried forever
        self._tree.release(child)
        what = f"server {child.name} never started: {child.start_failures} failed start(s) (start_retries: "
        what += f"{child.plan.start_retries}), last: {child.last_error}"
        if child.plan.restart == "permanent":
            self._give_up(child, what)
        else:
            self._tree.set_state(child, ChildState.FAILED)
            LOGGER.error("%s; it stays stopped", what)

    def _give_up(self, child: Child, why: str) -> None:
        LOGGER.critical("giving up: %s", why)
        self._tree.set_state(child, ChildState.FAILED)
        self._tree.give_up(f"giving up: {why}")

    def _restart(self, child: Child, delay: float, failed: bool) -> None:
        siblings = self._affected(child)
        for sib in reversed(siblings):  # reverse start order, like a shutdown
            if sib.gen is not None:
                self._tree.stop_generation(sib)
            sib.stats.restarts["strategy"] += 1
            sib.restarts += 1
        child.stats.restarts["failure" if failed else "exit"] += 1
        child.restarts += 1
        due = self._tree.now() + delay
        for c in (child, *siblings):
            c.not_before = due
            self._tree.set_state(c, ChildState.BACKOFF)
        also = f" with {', '.join(s.name for s in siblings)}" if siblings else ""
        child.hold(
            logging.WARNING,
            "server %s restarting in %.3fs%s (%d recent restarts)", child.name, delay, also, self._intensity.recent,
        )  # fmt: skip
        if delay > 0:
            child.flush()

    def _affected(self, child: Child) -> list[Child]:
        """Siblings restarted with ``child`` under the strategy, in start order."""
        strategy = self._tree.plan.supervisor.strategy
        if strategy == "one_for_all":
            return [c for c in self._tree.children if c is not child and c.wanted]
        if strategy == "rest_for_one":
            later = self._tree.children[self._tree.children.index(child) + 1 :]  # start order (a reload may reorder)
            return [c for c in later if c.wanted]
        return []

    def orphaned(self, child: Child, dependency: Child) -> None:
        """``child`` comes ``after`` a server that failed and will not be restarted: it can never start."""
        child.last_error = f"waiting for {dependency.name}, which failed and will not be restarted"
        why = f"server {child.name} cannot start: it comes after {dependency.name}, which failed for good"
        child.wanted = False
        self._tree.release(child)
        if child.plan.restart == "permanent":
            self._give_up(child, why)
        else:
            self._tree.set_state(child, ChildState.FAILED)
            LOGGER.error("%s; it stays stopped", why)


def describe(reason: Reason) -> str:
    """One line for a log or the status table: ``RuntimeError: crash requested``."""
    return "stopped unexpectedly" if reason is None else error_text(reason)


def traceback_of(reason: Reason) -> BaseException | None:
    # bind errors, start timeouts and the like are clear from one line; a traceback helps only for code that raised
    if reason is None or isinstance(reason, OSError | StartTimeout):
        return None
    return reason
