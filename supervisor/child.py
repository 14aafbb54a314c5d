"""The coordinator's record of one configured server: it outlives its generations and only the coordinator
writes it. Views never see it: they get :class:`~supervisor.state.ChildStatus` snapshots."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from supervisor.generation import Generation, Reason
from supervisor.listener import Listener
from supervisor.plan import ServerPlan
from supervisor.restart import Backoff
from supervisor.state import ChildState, ChildStatus, ServerStats

LOGGER = logging.getLogger("supervisor")


@dataclass(eq=False, slots=True)
class Child:
    plan: ServerPlan
    backoff: Backoff
    stats: ServerStats = field(default_factory=ServerStats)
    state: ChildState = ChildState.STOPPED
    wanted: bool = True  # False once stopped on purpose, or given up on
    listener: Listener | None = None  # the kept listening socket, bound once
    closing: asyncio.Future[None] | None = None  # done once the last released listener's socket is closed
    gen: Generation | Pending | None = None  # the generation starting or accepting now
    live: set[Generation] = field(default_factory=set)  # every generation whose task still runs
    # A reload's change, made before break: the new plan (and socket, if it moved) until its generation,
    # ``next``, is ready beside the serving one; then it takes over and the old one drains (reload.py).
    pending: ServerPlan | None = None
    pending_listener: Listener | None = None
    next: Generation | None = None
    generation: int = 0
    not_before: float = 0.0  # loop time before which a restart must not start
    started_at: float | None = None
    address: str = ""
    restarts: int = 0
    last_error: str = ""
    served: bool = False  # a generation has become ready since the server was (re)started by hand
    start_failures: int = 0  # failed starts in a row before it ever served
    # Log lines of a failure whose restart is immediate: written once the next generation serves,
    # since formatting and writing them costs more than the whole restart.
    held: list[Callable[[], None]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def stopped_unstarted(self) -> bool:
        """Stopped by hand before it ever ran here (a worker replacing one where it was stopped): its dependents,
        running there, do not wait for it here either."""
        return not self.wanted and self.generation == 0

    def hold(self, level: int, msg: str, *args: object, exc_info: BaseException | None = None) -> None:
        self.held.append(functools.partial(LOGGER.log, level, msg, *args, exc_info=exc_info))

    def stop_serving(self, *, restart: bool) -> None:
        """The serving generation stops accepting and drains within its budget (beside a restart, if one)."""
        gen, self.gen = self.gen, None
        if gen is not None:
            gen.stop(None)
            gen.start_drain(self.plan.shutdown_timeout, restart=restart)

    def release(self, *, final: bool) -> None:
        """Close the server's listener for good: its port is free, new clients are refused. ``final`` (the
        shutdown) keeps the closed listener for the last drain to read and closes a reload's new socket too."""
        if self.next is not None:  # a reload's warm generation: it ends, and the reload reports it
            self.next.stop(None)
        if self.listener is not None:
            self.listener.close()
            self.closing = self.listener.closed
            if not final:
                self.listener = None
        if final and self.pending_listener is not None:
            self.pending_listener.close()

    def flush(self) -> None:
        held, self.held = self.held, []
        for write in held:
            write()

    def status(self) -> ChildStatus:
        return ChildStatus(
            name=self.name,
            state=self.state,
            address=self.address or str(self.plan.address),
            restart=self.plan.restart,
            started_at=self.started_at,
            generation=self.generation,
            restarts=self.restarts,
            last_error=self.last_error,
            wanted=self.wanted,
        )


class Pending:
    """Stands in for a generation whose socket could not be bound, until its failure is handled."""

    def stop(self, reason: Reason = None) -> None:
        pass

    def start_drain(self, budget: float, *, restart: bool = False) -> None:
        pass


PENDING = Pending()
