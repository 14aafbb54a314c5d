"""What the running tree publishes for read-only views (metrics, console, ctl, /readyz).

The supervisor's loop is the only writer. Views on other threads (the aiomonitor console) read
``TreeSnapshot`` objects, which are immutable, so no lock is needed beyond the reference swap.
``ServerStats`` are plain counters bumped on the per-connection path: no locks, no allocations.
:class:`Publisher` holds the last snapshot and the ``changed()`` future waiters use.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import enum
from collections import Counter
from dataclasses import dataclass, field


class ChildState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


# Connection durations span sub-millisecond probes to hours-long chat sessions.
DURATION_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0)


@dataclass(slots=True)
class ServerStats:
    """Counters for one configured server, across all its generations."""

    active: int = 0
    total: int = 0
    handler_errors: int = 0
    restarts: Counter[str] = field(default_factory=Counter)  # reason -> count
    duration_counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0
    last_drain_seconds: float = 0.0
    drain_cancelled: int = 0  # connections cancelled because a drain ran out of time
    client_errors: Counter[str] = field(default_factory=Counter)  # client_faults.CLIENT_REASONS value -> count
    parked: int = 0  # accepted during a restart, waiting for the next generation
    rejected: int = 0  # closed at once: max_connections reached
    accept_errors: int = 0  # accept() failed for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM)
    tls_handshakes: int = 0  # ClientHellos received (TLS servers only)
    last_handler_error: str = ""  # error_text() of the last handler error, for status
    last_handler_error_at: float = 0.0  # its loop time (CLOCK_MONOTONIC: comparable across worker processes)

    def handler_failed(self, exc: BaseException, now: float) -> None:
        """Count a handler error and keep its text: not a hot path (one per failed connection)."""
        self.handler_errors += 1
        self.last_handler_error = error_text(exc)
        self.last_handler_error_at = now

    def observe_duration(self, seconds: float) -> None:
        self.duration_counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.duration_sum += seconds


@dataclass(frozen=True, slots=True)
class ChildStatus:
    name: str
    state: ChildState
    address: str  # "host:port" once bound, else ""
    restart: str
    started_at: float | None  # loop time the current generation became ready
    generation: int
    restarts: int
    last_error: str
    wanted: bool = True  # False once stopped on purpose (ctl stop) or given up on


@dataclass(frozen=True, slots=True)
class ConfigStatus:
    """Which config runs, and how its reloads went (wall-clock times, for people and Prometheus)."""

    source: str = ""
    digest: str = ""  # sha256 of the file the running config was read from
    loaded_at: float = 0.0  # when it was loaded: at start, or by the last reload that applied
    reloading: bool = False
    last_reload_ok: bool = True  # like prometheus_config_last_reload_successful: 1 until a reload fails
    last_success_at: float = 0.0
    reloads: tuple[tuple[str, int], ...] = (("success", 0), ("failure", 0), ("invalid", 0))

    def count(self, result: str) -> ConfigStatus:
        counts = tuple((r, n + (r == result)) for r, n in self.reloads)
        return dataclasses.replace(self, reloads=counts)


class WorkerState(enum.StrEnum):
    STARTING = "starting"  # spawned, not ready yet
    RUNNING = "running"  # every server it runs serves (its readiness handshake)
    STOPPING = "stopping"  # told to stop (a shutdown, or the old worker of a rolling reload)
    BACKOFF = "backoff"  # it died: replaced after a delay
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker process slot (``supervisor.workers: N``): the process serving in it now."""

    slot: int  # 1..N
    pid: int
    state: WorkerState
    started_at: float | None  # loop time it became ready
    restarts: int  # replacements of this slot after a death
    last_exit: str  # how the last process in this slot ended ("" if none did)


@dataclass(frozen=True, slots=True)
class TreeSnapshot:
    children: tuple[ChildStatus, ...] = ()
    started: bool = False  # every wanted server has served at least once (the readiness handshake)
    shutting_down: bool = False
    config: ConfigStatus = ConfigStatus()
    workers: tuple[WorkerStatus, ...] = ()  # empty in the single process of ``workers: 1``

    def child(self, name: str) -> ChildStatus | None:
        return next((c for c in self.children if c.name == name), None)

    @property
    def ready(self) -> bool:
        return readiness(self)[0]


def readiness(snap: TreeSnapshot) -> tuple[bool, str]:
    """The one readiness rule, behind the snapshot, ``/readyz``, ``supervisor_ready``, sd_notify and ``status``.

    Ready: the tree has started, no shutdown is under way, and every ``permanent`` server that is meant to run
    is serving. Transient and temporary servers, and servers stopped on purpose (``ctl stop``), don't count:
    under Kubernetes an unready pod leaves its Service, which must not happen for a server an operator stopped.
    The reason names what is missing: ``not serving: echo (backoff: OSError: ...)``.
    """
    if snap.shutting_down:
        return False, "shutting down"
    needed = (c for c in snap.children if c.wanted and (c.restart == "permanent" or not snap.started))
    down = [c for c in needed if c.state is not ChildState.RUNNING]
    if down:
        return False, "not serving: " + ", ".join(_why(c) for c in down)
    if not snap.started:
        return False, "starting"
    return True, ""


def _why(c: ChildStatus) -> str:
    return f"{c.name} ({c.state.value}: {c.last_error})" if c.last_error else f"{c.name} ({c.state.value})"


def error_text(exc: BaseException) -> str:
    """One line for a log or the status table: ``RuntimeError: crash requested``."""
    if isinstance(exc, BaseExceptionGroup):
        # a TaskGroup in a lifespan wraps the real error: name the errors, not the group
        return "; ".join(error_text(e) for e in exc.exceptions)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Publisher:
    """The last published snapshot, and a future replaced on every publish so no waiter can miss a change."""

    def __init__(self, first: TreeSnapshot) -> None:
        self._snapshot = first
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def snapshot(self) -> TreeSnapshot:
        """Thread-safe: the reference swap is the only write."""
        return self._snapshot

    async def changed(self) -> TreeSnapshot:
        await asyncio.shield(self._changed)
        return self._snapshot

    def publish(self, snapshot: TreeSnapshot) -> None:
        self._snapshot = snapshot
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)
