"""A real Prometheus scrapes a real ``supervisor run``: the target is up, and traffic, a crash, a manual restart and
the shutdown drain all show up in the right series, read back through Prometheus' HTTP API.

Locally, without the ``prometheus`` binary, the test skips and says why; in CI (CI=true) it fails instead.
Prometheus shows its first ``up`` ~5.5 s after it starts (a fixed discovery throttle, P18); every wait here
polls with a deadline.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisor import ctl
from tests import e2e_util
from tests.e2e_util import free_port, free_port_run, require_tool, write_config
from tests.proc import SupervisorProcess

DEADLINE = 20.0
METRICS_LINE = r"metrics listening on http://127\.0\.0\.1:(\d+)/metrics"


class Prometheus:
    def __init__(self, binary: str, workdir: Path, target_port: int) -> None:
        self.port = free_port()
        self.workdir = workdir
        config = workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: supervisor\n"
            "    scrape_interval: 1s\n"
            "    scrape_timeout: 900ms\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
        )
        self.log = workdir / "prometheus.log"
        self.cmd = [
            binary,
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            "--log.level=warn",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.wait_until(lambda: self._get("/-/ready") is not None, "Prometheus ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def _get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return bytes(resp.read())
        except OSError:
            return None

    def query(self, promql: str) -> list[dict[str, object]]:
        body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        if body is None:
            return []
        result: list[dict[str, object]] = json.loads(body)["data"]["result"]
        return result

    def targets(self) -> list[dict[str, object]]:
        body = self._get("/api/v1/targets")
        return json.loads(body)["data"]["activeTargets"] if body else []

    def wait_for(self, promql: str) -> float:
        """Poll until ``promql`` returns at least one series; the seconds it took."""
        return self.wait_until(lambda: bool(self.query(promql)), promql)

    def wait_until(self, condition: Callable[[], bool], what: str) -> float:
        started = time.monotonic()
        while not condition():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.proc.returncode}):\n{self.log.read_text()}")
            if time.monotonic() - started > DEADLINE:
                raise AssertionError(f"not within {DEADLINE}s: {what}\n{self.log.read_text()}")
            time.sleep(0.1)  # polling interval of a condition with a deadline, not a stand-in for an event
        return time.monotonic() - started


@pytest.fixture
def prometheus_binary() -> str:
    return require_tool("prometheus")


@pytest.fixture
def promtool() -> str:
    return require_tool("promtool")


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[SupervisorProcess, int, int]]:
    """``supervisor run`` with metrics on a port it picks, the console, an echo, a fragile and an HTTP server."""
    console_port = free_port_run(2)
    config = write_config(
        tmp_path,
        f"""
        metrics: {{port: 0}}
        console: {{port: {console_port}}}
        servers:
          - {{name: echo, handler: "supervisor.handlers.echo:handle", port: 0}}
          - name: fragile
            handler: "tests.apps:lines"
            port: 0
            on_handler_error: restart
            backoff: {{initial: 0s}}
          - {{name: web, handler: "supervisor.handlers.http:make", port: 0, shutdown_timeout: 20s}}
        """,
    )
    with SupervisorProcess(config) as sp:
        metrics_port = int(sp.wait_for(METRICS_LINE)[1])
        sp.ready()
        yield sp, metrics_port, console_port


def _talk(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.e2e
def test_promtool_checks_the_live_exposition(supervised: tuple[SupervisorProcess, int, int], promtool: str) -> None:
    _, metrics_port, _ = supervised
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        body = resp.read()
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert (result.returncode, result.stdout + result.stderr) == (0, b"")


@pytest.mark.e2e
def test_prometheus_sees_traffic_restarts_and_the_drain(
    supervised: tuple[SupervisorProcess, int, int], prometheus_binary: str, tmp_path: Path
) -> None:
    sp, metrics_port, console_port = supervised
    ports = sp.ready()
    prom = Prometheus(prometheus_binary, tmp_path, metrics_port)
    timings: dict[str, float] = {}
    try:
        started = time.monotonic()
        prom.start()
        timings["prometheus ready"] = time.monotonic() - started
        timings["first up == 1"] = prom.wait_for('up{job="supervisor"} == 1')
        (target,) = prom.targets()
        assert (target["health"], target["lastError"]) == ("up", "")

        # every series exists before anything happened (rate() sees the first restart)
        assert prom.query('supervisor_server_restarts_total{server="echo",reason="manual"} == 0')
        assert prom.query('supervisor_server_restarts_total{server="fragile",reason="failure"} == 0')
        assert prom.query('supervisor_build_info{loop="asyncio"} == 1')
        assert prom.query("supervisor_ready == 1")

        for i in range(3):
            assert _talk(ports["echo"], b"line %d\n" % i) == b"line %d\n" % i
        _talk(ports["fragile"], b"crash\n")  # the handler raises: restart with reason "failure"
        sp.wait_for(r"server fragile listening on \S+ \(generation 2\)")
        assert ctl.run("restart", "echo", port=console_port).ok

        started = time.monotonic()
        prom.wait_for('supervisor_connections_total{server="echo"} >= 3')
        prom.wait_for('supervisor_server_restarts_total{server="echo",reason="manual"} == 1')
        prom.wait_for('supervisor_server_restarts_total{server="fragile",reason="failure"} == 1')
        prom.wait_for('supervisor_handler_errors_total{server="fragile"} == 1')
        prom.wait_for('supervisor_server_generation{server="echo"} == 2')
        prom.wait_for('supervisor_connection_duration_seconds_count{server="echo"} >= 3')
        timings["changes visible"] = time.monotonic() - started
        assert prom.query('supervisor_server_up{server="fragile"} == 1')

        # a request in flight holds the drain; metrics close last, so Prometheus sees the shutdown
        with socket.create_connection(("127.0.0.1", ports["web"]), timeout=10) as slow:
            slow.sendall(b"GET /sleep?s=15 HTTP/1.1\r\nHost: x\r\n\r\n")
            prom.wait_for('supervisor_connections_active{server="web"} == 1')
            sp.signal(signal.SIGTERM)
            started = time.monotonic()
            prom.wait_for("supervisor_shutting_down == 1 and supervisor_ready == 0")
            prom.wait_for('supervisor_server_state{server="web",state="stopping"} == 1')
            timings["drain visible"] = time.monotonic() - started
            sp.signal(signal.SIGTERM)  # second signal: stop waiting for the slow request
            assert sp.wait(timeout=20) == 0
    finally:
        prom.stop()
    print("\nprometheus timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))


def test_a_missing_prometheus_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name, path=None: None)
    monkeypatch.setattr(e2e_util, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="prometheus is not installed"):
        e2e_util.require_tool("prometheus")
    monkeypatch.setattr(e2e_util, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI must run this test"):
        e2e_util.require_tool("prometheus")
