"""deploy/ is checked by the tools that will read it: systemd-analyze, kubernetes-validate, promtool."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from supervisor.config import load_config
from supervisor.plan import make_plan
from tests.e2e_util import require_tool
from tests.proc import REPO

DEPLOY = REPO / "deploy"


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd" / "supervisor.service").read_text()
    # systemd-analyze checks that ExecStart exists: point it at this checkout's install
    exe = Path(sys.executable).parent
    unit = unit.replace("/opt/supervisor/.venv/bin", str(exe)).replace(
        "/etc/supervisor/prod.yaml", str(REPO / "configs" / "prod.yaml")
    )
    (tmp_path / "supervisor.service").write_text(unit)
    result = subprocess.run(
        [require_tool("systemd-analyze"), "verify", str(tmp_path / "supervisor.service")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_systemd_stop_timeout_outlasts_the_supervisors_own_bound() -> None:
    unit = (DEPLOY / "systemd" / "supervisor.service").read_text()
    stop = next(line for line in unit.splitlines() if line.startswith("TimeoutStopSec="))
    assert (
        float(stop.removeprefix("TimeoutStopSec=").removesuffix("s"))
        > load_config(REPO / "configs" / "prod.yaml").supervisor.shutdown_timeout
    )
    assert "Type=notify" in unit
    assert "RestartPreventExitStatus=2" in unit  # a bad config is not retried


def test_kubernetes_manifests_validate() -> None:
    result = subprocess.run(
        [require_tool("kubernetes-validate"), "--strict", str(DEPLOY / "kubernetes" / "supervisor.yaml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_configmap_is_the_sample_config_and_plans() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "supervisor.yaml").read_text()))
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    sample = REPO / "configs" / "kubernetes.yaml"
    assert configmap["data"]["prod.yaml"] == sample.read_text()
    plan = make_plan(load_config(sample))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > plan.supervisor.shutdown_timeout + pre_stop
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {**{s.name: s.port for s in plan.servers}, "metrics": plan.metrics.port}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_prometheus_alert_rules_check_and_pass_their_unit_tests() -> None:
    promtool = require_tool("promtool")
    rules = DEPLOY / "prometheus"
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        result = subprocess.run([promtool, *args], cwd=rules, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


async def test_every_metric_the_alerts_use_is_exported(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from supervisor import Supervisor
    from supervisor.collector import make_registry
    from tests.helpers import plan_from

    sup = Supervisor(plan_from(tmp_path, "servers: [{name: s, handler: 'tests.apps:lines', port: 0}]"))
    exported = generate_latest(make_registry(sup, "asyncio")).decode()
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    used = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in re.findall(r"\b(supervisor_[a-z_]+)", rule["expr"])
    }
    assert used
    assert {name for name in used if f"\n{name}" not in exported} == set()


PER_CONNECTION_OVERHEAD = 8 * 1024  # measured: 5.8-6.1 kB per idle connection (README, Benchmarks), rounded up
BASE_RSS = 64 * 1024 * 1024  # the process before any connection: interpreter, aiohttp, aiomonitor, prometheus


def worst_case_bytes(config: Path) -> int:
    """What every server at max_connections, each connection with full buffers, could hold.

    A StreamReader pauses its transport at twice its limit; writes beyond max_write_buffer close the connection.
    """
    plan = make_plan(load_config(config))
    per_server = (
        s.max_connections * (2 * s.read_limit + s.max_write_buffer + PER_CONNECTION_OVERHEAD) for s in plan.servers
    )
    return BASE_RSS + sum(per_server)


def test_the_pods_memory_limit_holds_the_worst_case() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "supervisor.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    limit = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert limit.endswith("Mi")
    worst = worst_case_bytes(REPO / "configs" / "kubernetes.yaml")
    assert worst < int(limit[:-2]) * 1024 * 1024, f"worst case {worst / 2**20:.0f} MiB over the {limit} limit"
    assert worst_case_bytes(REPO / "configs" / "prod.yaml") == worst  # the demo has the same bounds
