"""``workers: auto`` in a container: a cgroup CPU quota (Kubernetes ``limits.cpu``) caps the CPU count, rounded
up, never below 1; no quota, or files missing or unreadable, leaves the affinity count."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor import cpus, values


def v2(root: Path, cpu_max: str) -> Path:
    (root / "cpu.max").write_text(cpu_max)
    return root


def v1(root: Path, quota: str, period: str = "100000\n") -> Path:
    (root / "cpu").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text(quota)
    (root / "cpu" / "cpu.cfs_period_us").write_text(period)
    return root


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [
        ("200000", "100000", 2),
        ("150000", "100000", 2),  # 1.5 CPUs: round up
        ("50000", "100000", 1),  # half a CPU is still one worker
        ("100001", "100000", 2),
        ("6400000", "100000", 64),
        ("max", "100000", None),
        ("-1", "100000", None),  # cgroup v1's "no quota"
        ("0", "100000", None),
        ("200000", "0", None),
        ("", "", None),
        ("lots", "100000", None),
    ],
)
def test_quota_cpus(quota: str, period: str, expected: int | None) -> None:
    assert cpus.quota_cpus(quota, period) == expected


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("200000 100000\n", 2), ("max 100000\n", None), ("250000 100000", 3), ("200000", None), ("garbage\n", None)],
)
def test_cgroup_v2_cpu_max(tmp_path: Path, cpu_max: str, expected: int | None) -> None:
    assert cpus.cgroup_quota(v2(tmp_path, cpu_max)) == expected


@pytest.mark.parametrize(("quota", "expected"), [("200000\n", 2), ("-1\n", None), ("350000\n", 4)])
def test_cgroup_v1_cfs_quota(tmp_path: Path, quota: str, expected: int | None) -> None:
    assert cpus.cgroup_quota(v1(tmp_path, quota)) == expected


def test_v2_is_read_before_v1(tmp_path: Path) -> None:
    assert cpus.cgroup_quota(v1(v2(tmp_path, "300000 100000\n"), "100000\n")) == 3


def test_missing_files_mean_no_quota(tmp_path: Path) -> None:
    assert cpus.cgroup_quota(tmp_path) is None
    assert cpus.cgroup_quota(tmp_path / "absent") is None
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")  # no period beside it
    assert cpus.cgroup_quota(tmp_path) is None


def test_unreadable_files_mean_no_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").mkdir()  # reading a directory fails whoever runs the test (root ignores chmod)
    assert cpus.cgroup_quota(tmp_path) is None
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "cpu.max").write_bytes(b"\xff\xfe 100000\n")
    assert cpus.cgroup_quota(tmp_path / "other") is None


def test_auto_is_the_smaller_of_affinity_and_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "affinity", lambda: 64)
    assert cpus.auto(v2(tmp_path, "200000 100000\n")) == (2, "CPU quota")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus.auto(tmp_path) == (64, "CPU affinity")
    (tmp_path / "cpu.max").write_text("12800000 100000\n")  # a quota above the CPUs it may run on
    assert cpus.auto(tmp_path) == (64, "CPU affinity")
    assert cpus.auto(tmp_path / "absent") == (64, "CPU affinity")


def test_auto_is_at_least_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "affinity", lambda: 0)
    assert cpus.auto(tmp_path) == (1, "CPU affinity")
    monkeypatch.setattr(cpus, "affinity", lambda: 8)
    assert cpus.auto(v2(tmp_path, "1000 100000\n")) == (1, "CPU quota")


def test_workers_auto_is_capped_by_the_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_auto, root = cpus.auto, v2(tmp_path, "200000 100000\n")
    monkeypatch.setattr(cpus, "affinity", lambda: 64)
    monkeypatch.setattr(cpus, "auto", lambda: real_auto(root))
    assert values.workers("auto") == 2
    assert values.workers(5) == 5  # an explicit count is not capped


def test_the_real_machine() -> None:
    count, source = cpus.auto()
    assert 1 <= count <= cpus.affinity()
    assert source in {"CPU quota", "CPU affinity"}
    assert values.workers("auto") == count


def test_v2_reads_the_process_cgroup_and_every_one_above_it(tmp_path: Path) -> None:
    """A systemd unit's CPUQuota= is its own cgroup's cpu.max (no namespace: /proc/self/cgroup names the path);
    a parent's limit holds for its children: the smallest counts. The v2 root itself has no cpu.max."""
    (tmp_path / "cgroup.controllers").write_text("cpu io memory\n")
    unit = tmp_path / "system.slice" / "app.service"
    unit.mkdir(parents=True)
    own = tmp_path / "proc-self-cgroup"
    own.write_text("0::/system.slice/app.service\n")
    assert cpus.cgroup_quota(tmp_path, own) is None  # no cpu.max anywhere
    (unit / "cpu.max").write_text("300000 100000\n")
    assert cpus.cgroup_quota(tmp_path, own) == 3
    (tmp_path / "system.slice" / "cpu.max").write_text("150000 100000\n")  # the slice allows less
    assert cpus.cgroup_quota(tmp_path, own) == 2
    (unit / "cpu.max").write_text("max 100000\n")
    assert cpus.cgroup_quota(tmp_path, own) == 2  # the slice's limit still holds
    own.write_text("0::/../../etc\n")  # not under the mount: only the mount's own
    assert cpus.cgroup_quota(tmp_path, own) is None
