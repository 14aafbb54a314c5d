"""The ``status`` answer, as a table or JSON: one row per server from the published snapshot and the counters.

Used by the console, ``supervisor ctl status`` and SIGUSR1 (which logs the table). Safe on any thread, and
imports no aiomonitor.
"""

from __future__ import annotations

import json
import time
from typing import Any

from supervisor.state import ChildState, ConfigStatus, ServerStats, TreeSnapshot, readiness
from supervisor.tree import TreeView


def status_rows(supervisor: TreeView) -> list[dict[str, Any]]:
    """One dict per server: the snapshot plus the live counters. Safe on any thread."""
    snap = supervisor.snapshot()
    now = _now(supervisor)
    stats = supervisor.counters()
    rows = []
    for c in snap.children:
        s = stats.get(c.name)
        uptime = None
        if c.state is ChildState.RUNNING and c.started_at is not None and now is not None:
            uptime = round(max(0.0, now - c.started_at), 3)
        rows.append(
            {
                "name": c.name,
                "state": c.state.value,
                "address": c.address,
                "restart": c.restart,
                "uptime_seconds": uptime,
                "generation": c.generation,
                "restarts": c.restarts,
                "connections_active": s.active if s else 0,
                "connections_total": s.total if s else 0,
                "handler_errors": s.handler_errors if s else 0,
                "last_error": c.last_error,
                "last_handler_error": s.last_handler_error if s else "",
                "last_handler_error_seconds_ago": _ago(s, now),
            }
        )
    return rows


def status_json(supervisor: TreeView) -> str:
    snap = supervisor.snapshot()
    ready, why = readiness(snap)
    tree: dict[str, Any] = {"ready": ready, "not_ready_because": why or None, "shutting_down": snap.shutting_down}
    if snap.workers:
        tree["workers"] = [
            {"worker": w.slot, "state": w.state.value, "pid": w.pid, "restarts": w.restarts, "last_exit": w.last_exit}
            for w in snap.workers
        ]
    c = snap.config
    config = {
        "file": c.source, "sha256": c.digest, "loaded_at": c.loaded_at, "reloading": c.reloading,
        "last_reload_successful": c.last_reload_ok, "reloads": dict(c.reloads),
    }  # fmt: skip
    return json.dumps({**tree, "config": config, "servers": status_rows(supervisor)})


STATUS_HEAD = ("server", "state", "address", "uptime", "restarts", "conns", "errors", "last error")
MIN_ERROR_WIDTH = 20  # the last error keeps this much however narrow the terminal: it wraps rather than vanishes
CUT = "..."


def status_table(supervisor: TreeView, width: int | None = None) -> list[str]:
    """The ``status`` table: one row per server in start order, space-aligned, ``-`` for empty cells.

    Stable for scripts: columns never contain spaces except the last (``last error``), so
    ``awk '{print $1, $2}'`` works; ``conns`` is ``active/total``, ``errors`` counts handler errors, ``last
    error`` is the server's last failure, then its last handler error (``handler: ValueError: bad (4.2s ago)``).
    With a ``width`` (a terminal's), a last error that would not fit is cut with ``...``. The last two lines say
    which config runs and sum up the tree.
    """
    snap = supervisor.snapshot()
    rows = [
        [
            r["name"],
            r["state"],
            r["address"] or "-",
            format_duration(r["uptime_seconds"]),
            str(r["restarts"]),
            f"{r['connections_active']}/{r['connections_total']}",
            str(r["handler_errors"]),
            last_errors(r),
        ]
        for r in status_rows(supervisor)
    ]
    widths = [max(len(row[i]) for row in [STATUS_HEAD, *rows]) for i in range(len(STATUS_HEAD) - 1)]
    if width:
        room = max(width - sum(widths) - 2 * len(widths), MIN_ERROR_WIDTH)
        for row in rows:
            row[-1] = clip(row[-1], room)
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    lines = [fmt.format(*STATUS_HEAD).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]
    lines.extend(worker_lines(snap, _now(supervisor)))
    lines.append(config_line(snap.config))
    lines.append(f"supervisor: {_summary(supervisor, snap)}")
    return lines


WORKER_HEAD = ("worker", "state", "pid", "uptime", "restarts", "last exit")


def worker_lines(snap: TreeSnapshot, now: float | None) -> list[str]:
    """With ``supervisor.workers: N``: one row per worker process under the servers' (none for one process)."""
    if not snap.workers:
        return []
    rows = [
        [f"w{w.slot}", w.state.value, str(w.pid or "-"),
         format_duration(now - w.started_at if now is not None and w.started_at is not None else None),
         str(w.restarts), " ".join(w.last_exit.split()) or "-"]
        for w in snap.workers
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [WORKER_HEAD, *rows]) for i in range(len(WORKER_HEAD) - 1)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    return [fmt.format(*WORKER_HEAD).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]


def last_errors(row: dict[str, Any]) -> str:
    """The ``last error`` cell: the server's last failure, then its last handler error and how long ago."""
    parts = [" ".join(row["last_error"].split())] if row["last_error"] else []  # one line, whatever it said
    if row["last_handler_error"] and row["last_handler_error"] != row["last_error"]:  # restart: told once
        ago = row["last_handler_error_seconds_ago"]
        parts.append(
            f"handler: {row['last_handler_error']}" + (f" ({format_duration(ago)} ago)" if ago is not None else "")
        )
    return "; ".join(parts) or "-"


def _ago(stats: ServerStats | None, now: float | None) -> float | None:
    if stats is None or not stats.last_handler_error or now is None:
        return None
    return round(max(0.0, now - stats.last_handler_error_at), 3)


def clip(text: str, room: int) -> str:
    return text if len(text) <= room else text[: max(room - len(CUT), 1)] + CUT


def config_line(c: ConfigStatus) -> str:
    """``config: prod.yaml sha256 3f2a9c1e07bb loaded 2026-12-02 10:31:07, reloads: 2 success, 1 invalid``"""
    loaded = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.loaded_at))
    counts = ", ".join(f"{n} {result}" for result, n in c.reloads if n) or "none"
    last = " (reloading now)" if c.reloading else "" if c.last_reload_ok else " (the last one failed: see the log)"
    return f"config: {c.source} sha256 {c.digest[:12] or '-'} loaded {loaded}, reloads: {counts}{last}"


def _summary(supervisor: TreeView, snap: TreeSnapshot) -> str:
    running = sum(c.state is ChildState.RUNNING for c in snap.children)
    ready, why = readiness(snap)
    state = "ready" if ready else why if snap.shutting_down else f"not ready ({why})"
    return f"{state}, {running}/{len(snap.children)} server(s) running"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _now(supervisor: TreeView) -> float | None:
    # On the UI thread the running loop is aiomonitor's: its time() is the same monotonic clock as the
    # supervisor loop's (asyncio and uvloop both read CLOCK_MONOTONIC), so uptimes computed here are right.
    try:
        return supervisor.now()
    except RuntimeError:
        return None
