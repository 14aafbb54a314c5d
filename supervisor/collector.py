"""The metric families, computed when Prometheus scrapes: nothing here runs per connection.

The generations bump plain ints in each server's ``ServerStats``; :class:`SupervisorCollector` turns those and the
last ``TreeSnapshot`` into families. Every series exists from the first scrape (all servers, all states, all
restart and client-error reasons), so ``rate()`` and ``increase()`` see the first event instead of a series
appearing out of nowhere.
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from supervisor import __version__
from supervisor.client_faults import CLIENT_REASONS
from supervisor.loopguard import LAG_WINDOW
from supervisor.state import DURATION_BUCKETS, ChildState, ConfigStatus, TreeSnapshot, WorkerState, readiness
from supervisor.tree import TreeView

# The reasons the supervisor counts restarts under (supervisor.py, control.py); exported from the start.
RESTART_REASONS = ("failure", "exit", "strategy", "manual")


class SupervisorCollector(Collector):
    """Reads the tree at scrape time. Runs on the supervisor's loop (the aiohttp handler is a coroutine)."""

    def __init__(self, supervisor: TreeView, loop_name: str) -> None:
        self._sup = supervisor
        self._loop_name = loop_name

    def collect(self) -> Iterable[Metric]:
        snap = self._sup.snapshot()
        now = self._now()
        labels = ["server"]
        up = GaugeMetricFamily("supervisor_server_up", "1 if the server is accepting connections", labels=labels)
        state = GaugeMetricFamily(
            "supervisor_server_state", "1 for the state the server is in, 0 for the others", labels=["server", "state"]
        )
        uptime = GaugeMetricFamily(
            "supervisor_server_uptime", "Seconds the current generation has served", labels=labels, unit="seconds"
        )
        generation = GaugeMetricFamily(
            "supervisor_server_generation", "How many times the server has been started", labels=labels
        )
        restarts = CounterMetricFamily(
            "supervisor_server_restarts",
            "Restarts by reason: failure, exit (stopped itself), strategy (a sibling failed), manual",
            labels=["server", "reason"],
        )
        active = GaugeMetricFamily("supervisor_connections_active", "Open connections", labels=labels)
        total = CounterMetricFamily("supervisor_connections", "Connections accepted", labels=labels)
        errors = CounterMetricFamily(
            "supervisor_handler_errors", "Connections whose handler raised an exception", labels=labels
        )
        duration = HistogramMetricFamily(
            "supervisor_connection_duration", "How long connections stayed open", labels=labels, unit="seconds"
        )
        drain = GaugeMetricFamily(
            "supervisor_server_last_drain",
            "Seconds the last drain (restart or shutdown) of the server took",
            labels=labels,
            unit="seconds",
        )
        cancelled = CounterMetricFamily(
            "supervisor_connections_cancelled",
            "Connections cancelled because a drain ran out of time",
            labels=labels,
        )
        client = CounterMetricFamily(
            "supervisor_client_errors",
            "Connections ended by the client's doing, by reason: too_long (over read_limit), incomplete, reset, tls, "
            "idle_timeout, write_buffer (over max_write_buffer), other",
            labels=["server", "reason"],
        )
        rejected = CounterMetricFamily(
            "supervisor_connections_rejected", "Connections closed at once: max_connections reached", labels=labels
        )
        accept_errors = CounterMetricFamily(
            "supervisor_accept_errors",
            "Episodes of accept() failing for lack of resources (EMFILE: too many open files, ENFILE, ENOBUFS, "
            "ENOMEM); at most one is counted per 0.5 s",
            labels=labels,
        )
        handshakes = CounterMetricFamily(
            "supervisor_tls_handshakes",
            "TLS handshakes begun (a ClientHello received; TLS servers only). Those minus "
            "supervisor_connections_total: handshakes that failed, timed out, or are under way",
            labels=labels,
        )
        statuses = {c.name: c for c in snap.children}
        for name, stats in self._sup.counters().items():
            status = statuses.get(name)
            current = status.state if status else ChildState.STOPPED
            running = current is ChildState.RUNNING
            up.add_metric([name], 1.0 if running else 0.0)
            for s in ChildState:
                state.add_metric([name, s.value], 1.0 if s is current else 0.0)
            started = status.started_at if status else None
            uptime.add_metric([name], max(0.0, now - started) if running and started is not None and now else 0.0)
            generation.add_metric([name], float(status.generation if status else 0))
            counts = dict(stats.restarts)  # a copy: the loop is ours now, but keep the read in one step
            for reason in (*RESTART_REASONS, *sorted(set(counts) - set(RESTART_REASONS))):
                restarts.add_metric([name, reason], float(counts.get(reason, 0)))
            active.add_metric([name], float(stats.active))
            total.add_metric([name], float(stats.total))
            errors.add_metric([name], float(stats.handler_errors))
            duration.add_metric([name], _buckets(stats.duration_counts), stats.duration_sum)
            drain.add_metric([name], stats.last_drain_seconds)
            cancelled.add_metric([name], float(stats.drain_cancelled))
            for reason in CLIENT_REASONS:
                client.add_metric([name, reason], float(stats.client_errors.get(reason, 0)))
            rejected.add_metric([name], float(stats.rejected))
            accept_errors.add_metric([name], float(stats.accept_errors))
            handshakes.add_metric([name], float(stats.tls_handshakes))
        yield from (up, state, uptime, generation, restarts, active, total, errors, duration, drain, cancelled)
        yield from (client, rejected, accept_errors, handshakes)
        yield GaugeMetricFamily(
            "supervisor_event_loop_lag_seconds",
            f"The longest the event loop was blocked in the last {LAG_WINDOW:g}s (a handler running blocking code)",
            value=self._sup.guard.worst_lag(),
        )
        ready, _ = readiness(snap)
        yield GaugeMetricFamily(
            "supervisor_ready", "1 when every permanent server serves and no shutdown is under way", value=ready
        )
        yield GaugeMetricFamily(
            "supervisor_shutting_down", "1 once the ordered shutdown has begun", value=float(snap.shutting_down)
        )
        info = InfoMetricFamily("supervisor_build", "Version of the supervisor, the Python and the event loop")
        info.add_metric([], {"version": __version__, "python": platform.python_version(), "loop": self._loop_name})
        yield info
        yield from _config_families(snap.config)
        if snap.workers:
            yield from _worker_families(snap)

    def _now(self) -> float:
        try:
            return self._sup.now()
        except RuntimeError:  # collected outside the loop (a test calling registry.collect())
            return 0.0


def _config_families(config: ConfigStatus) -> Iterable[Metric]:
    """Which config runs and how reloads went, named like Prometheus' own ``prometheus_config_*``."""
    info = InfoMetricFamily("supervisor_config", "The config file running and its sha256")
    info.add_metric([], {"file": config.source, "sha256": config.digest})
    yield info
    yield GaugeMetricFamily(
        "supervisor_config_last_reload_successful",
        "1 if the last reload applied everything (or none was tried yet), 0 if it was invalid or failed",
        value=float(config.last_reload_ok),
    )
    yield GaugeMetricFamily(
        "supervisor_config_last_reload_success_timestamp_seconds",
        "Unix time the running config was loaded: at start, or by the last reload that applied",
        value=config.last_success_at,
    )
    reloads = CounterMetricFamily(
        "supervisor_config_reloads",
        "Reloads by result: success, failure (a new generation or socket failed), invalid (the file has errors)",
        labels=["result"],
    )
    for result, count in config.reloads:
        reloads.add_metric([result], float(count))
    yield reloads


def _worker_families(snap: TreeSnapshot) -> Iterable[Metric]:
    """With ``supervisor.workers: N`` (the servers' series above are already summed over the workers)."""
    yield GaugeMetricFamily(
        "supervisor_workers", "Worker processes serving (ready), of supervisor.workers",
        value=sum(w.state is WorkerState.RUNNING for w in snap.workers),
    )  # fmt: skip
    yield GaugeMetricFamily("supervisor_workers_configured", "supervisor.workers", value=len(snap.workers))
    up = GaugeMetricFamily("supervisor_worker_up", "1 if the worker process in this slot serves", labels=["worker"])
    restarts = CounterMetricFamily(
        "supervisor_worker_restarts", "Worker processes replaced after dying, by slot", labels=["worker"]
    )
    for w in snap.workers:
        up.add_metric([str(w.slot)], float(w.state is WorkerState.RUNNING))
        restarts.add_metric([str(w.slot)], float(w.restarts))
    yield up
    yield restarts


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (value <= bound) -> Prometheus's cumulative ``le`` buckets, ending with +Inf."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip((*DURATION_BUCKETS, float("inf")), counts, strict=True):
        running += n
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
    return out


def make_registry(supervisor: TreeView, loop_name: str) -> CollectorRegistry:
    """A registry of its own per supervisor (tests run several in one process), with the process collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SupervisorCollector(supervisor, loop_name))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
