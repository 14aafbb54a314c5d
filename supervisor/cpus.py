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


def cgroup_quota(root: Path = CGROUP_ROOT, own: Path = Path("/proc/self/cgroup")) -> int | None:
    """The CPU quota (in whole CPUs, rounded up) of this process's cgroup: v2 ``cpu.max`` of its own cgroup and of
    each one above it up to ``root`` (the smallest: a parent's limit holds for its children; a container with its
    own cgroup namespace sees its cgroup as ``0::/``, a systemd unit's ``CPUQuota=`` is its unit's cgroup), else
    v1 ``cpu/cpu.cfs_quota_us`` and ``cpu/cpu.cfs_period_us`` at ``root``. Missing or unreadable files: None."""
    if (root / "cgroup.controllers").exists() or (root / "cpu.max").exists():  # v2 (its root has no cpu.max)
        found = [q for d in _own_and_above(root, own) if (q := _cpu_max(d)) is not None]
        return min(found, default=None)
    try:
        v1 = root / "cpu"
        return quota_cpus((v1 / "cpu.cfs_quota_us").read_text(), (v1 / "cpu.cfs_period_us").read_text())
    except (OSError, UnicodeDecodeError):
        return None


def _own_and_above(root: Path, own: Path) -> list[Path]:
    """``root``/(this process's v2 cgroup path), then each directory above it, up to ``root`` itself."""
    try:
        line = next((ln for ln in own.read_text().splitlines() if ln.startswith("0::")), "0::/")
    except (OSError, UnicodeDecodeError):
        line = "0::/"
    here = root / line[3:].strip().lstrip("/")
    if ".." in here.parts:  # not a path under the mount
        return [root]
    dirs = [here]
    while dirs[-1] != root:
        dirs.append(dirs[-1].parent)
    return dirs


def _cpu_max(cgroup: Path) -> int | None:
    try:
        quota, _, period = (cgroup / "cpu.max").read_text().strip().partition(" ")
    except (OSError, UnicodeDecodeError):
        return None
    return quota_cpus(quota, period)


def affinity() -> int:
    """CPUs this process may be scheduled on (the whole machine where affinity is unknown)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def auto(root: Path = CGROUP_ROOT) -> tuple[int, str]:
    """``workers: auto``: min(affinity, quota), at least 1, and where it came from ("CPU quota" / "CPU affinity")."""
    cpus, quota = max(1, affinity()), cgroup_quota(root)
    if quota is not None and quota < cpus:
        return quota, "CPU quota"
    return cpus, "CPU affinity"
