"""How many CPUs ``workers: auto`` counts: this process's CPU affinity, capped by a cgroup CPU quota if one is set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")


def quota_cpus(quota: str, period: str) -> int | None:
    """CPUs a CFS quota allows, rounded up (``150000`` per ``100000`` -> 2), or None for no or a nonsense quota.

    cgroup v2's ``cpu.max`` holds ``"$QUOTA $PERIOD"`` in microseconds, ``"max 100000"`` for no limit; Kubernetes
    ``limits.cpu: 2`` writes ``"200000 100000"``. cgroup v1 splits them into ``cpu.cfs_quota_us`` (``-1``: none)
    and ``cpu.cfs_period_us``."""
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max", or not a number at all
        return None
    if q <= 0 or p <= 0:
        return None
    return -(-q // p)


def cgroup_quota(root: Path = CGROUP_ROOT) -> int | None:
    """The CPU quota (in whole CPUs, rounded up) of the cgroup mounted at ``root``: v2 ``cpu.max`` if present,
    else v1 ``cpu/cpu.cfs_quota_us`` and ``cpu/cpu.cfs_period_us``. Missing or unreadable files: None."""
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        return quota_cpus(quota, period)
    except (OSError, UnicodeDecodeError):  # not cgroup v2 (or not readable): try v1
        pass
    try:
        v1 = root / "cpu"
        return quota_cpus((v1 / "cpu.cfs_quota_us").read_text(), (v1 / "cpu.cfs_period_us").read_text())
    except (OSError, UnicodeDecodeError):
        return None


def affinity() -> int:
    """CPUs this process may be scheduled on (the whole machine where affinity is unknown)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def auto(root: Path = CGROUP_ROOT) -> tuple[int, str]:
    """``workers: auto``: min(affinity, quota), at least 1, and where it came from ("CPU quota" / "CPU affinity")."""
    cpus, quota = max(1, affinity()), cgroup_quota(root)
    if quota is not None and quota < cpus:
        return quota, "CPU quota"
    return cpus, "CPU affinity"
