"""``supervisor run`` as a real subprocess receiving real signals: exit codes and what clients receive."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from supervisor import ctl
from supervisor.config import load_config
from tests.e2e_util import free_port, free_port_run
from tests.proc import REPO, SupervisorProcess


def write_config(tmp_path: Path, body: str, *, loop: str = "asyncio", total: str = "30s") -> Path:
    path = tmp_path / "e2e.yaml"
    path.write_text(
        f"supervisor: {{loop: {loop}, shutdown_timeout: {total}, max_restarts: 2, restart_window: 60s}}\n"
        "metrics: {enabled: false}\nconsole: {enabled: false}\n" + textwrap.dedent(body)
    )
    return path


LINES = """
servers:
  - {name: work, handler: "tests.apps:lines", port: 0, shutdown_timeout: 10s}
  - {name: web, handler: "supervisor.handlers.http:make", port: 0, after: [work]}
"""


def in_flight(port: int, seconds: float) -> socket.socket:
    """A connection whose ``work`` request the server has demonstrably started."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(f"work {seconds}\n".encode())
    assert sock.recv(8) == b"working\n"
    return sock


def rest(sock: socket.socket) -> bytes:
    """Everything the server still sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.e2e
def test_signal_lets_in_flight_requests_finish_then_exits_0(tmp_path: Path, loop: str, sig: signal.Signals) -> None:
    with SupervisorProcess(write_config(tmp_path, LINES, loop=loop)) as sp:
        ports = sp.ready()
        idle = socket.create_connection(("127.0.0.1", ports["web"]), timeout=20)
        with ThreadPoolExecutor(20) as pool:
            clients = list(pool.map(lambda _: in_flight(ports["work"], 1.0), range(20)))
        sp.signal(sig)
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(rest, clients))
        assert sp.wait() == 0
        assert answers == [b"done\n"] * 20
        assert idle.recv(1) == b""  # the idle keep-alive client was closed, it did not hold the exit
        idle.close()
    out = sp.output
    assert f"shutting down ({sig.name}): stop accepting on every server" in out
    assert "Traceback" not in out
    assert out.rstrip().endswith("exit 0")


@pytest.mark.e2e
def test_second_signal_skips_the_drain(tmp_path: Path) -> None:
    with SupervisorProcess(write_config(tmp_path, LINES)) as sp:
        ports = sp.ready()
        client = in_flight(ports["work"], 60)
        sp.signal(signal.SIGTERM)
        sp.wait_for(r"shutting down \(SIGTERM\)")
        started = time.monotonic()
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
        # far below the 10 s drain budget the first signal would have granted
        assert time.monotonic() - started < 5
        assert rest(client) == b""
    assert "second stop request (SIGTERM): skipping the drain wait" in sp.output
    assert "Traceback" not in sp.output  # cutting every phase must not trip over a finished one
    assert "server work: drain skipped (second stop request), cancelling 1 connection(s) of generation 1" in sp.output


@pytest.mark.e2e
def test_gives_up_and_exits_1_when_a_port_stays_taken(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as blocker:
        port = blocker.getsockname()[1]
        body = f"""
        servers:
          - {{name: ok, handler: "tests.apps:lines", port: 0}}
          - {{name: taken, handler: "tests.apps:lines", port: {port}, backoff: {{initial: 10ms, max: 20ms}}}}
        """
        with SupervisorProcess(write_config(tmp_path, body)) as sp:
            assert sp.wait() == 1
    out = sp.output
    assert "server taken failed: OSError: [Errno 98] Address already in use" in out
    assert f"(while binding 127.0.0.1:{port})" in out
    assert "giving up: more than 2 restarts within 60s (last: server taken:" in out
    assert "Traceback" not in out


@pytest.mark.e2e
def test_invalid_config_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    path = write_config(tmp_path, "servers:\n  - {name: x, handler: 'tests.apps:lines', port: http}\n")
    with SupervisorProcess(path) as sp:
        assert sp.wait() == 2
    assert f"{path}:5: servers[0].port: expected an integer 0-65535, got 'http'" in sp.output
    assert "nothing was started" in sp.output
    assert "Traceback" not in sp.output
    assert "listening" not in sp.output


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "--version"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert result.stdout.strip() == f"supervisor {version}"


PROD = REPO / "configs" / "prod.yaml"


def test_demo_config_declares_the_readme_ports() -> None:
    config = load_config(PROD)
    assert {s.name: s.port for s in config.servers} == {"echo": 8888, "http": 8080, "chat": 7777}
    assert (config.metrics.port, config.console.port) == (9100, 20101)


def demo_on_free_ports(tmp_path: Path) -> tuple[Path, int]:
    """configs/prod.yaml as it is, but on ports nobody else holds: the suite passes beside a running demo."""
    console = free_port_run(2)
    text = PROD.read_text()
    text = re.sub(r"^(\s+port:) \d+$", r"\1 0", text, flags=re.M)  # every server
    text = text.replace("port: 9100}", "port: 0}").replace("port: 20101}", f"port: {console}}}")
    path = tmp_path / "prod.yaml"
    path.write_text(text)
    assert [s.port for s in load_config(path).servers] == [0, 0, 0]
    return path, console


@pytest.mark.e2e
def test_demo_config_serves_real_traffic(tmp_path: Path) -> None:
    """configs/prod.yaml as the README runs it (ports aside): the three servers, metrics and the console."""
    config, console = demo_on_free_ports(tmp_path)
    with SupervisorProcess(config) as sp:
        ports = sp.ready()
        assert set(ports) == {"echo", "http", "chat"}
        metrics = int(sp.wait_for(r"metrics listening on http://127\.0\.0\.1:(\d+)/metrics")[1])
        with socket.create_connection(("127.0.0.1", ports["echo"]), timeout=10) as s:
            s.sendall(b"hello\n")
            assert s.recv(64) == b"hello\n"
        with socket.create_connection(("127.0.0.1", ports["http"]), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = rest(s)
            assert answer.count(b"HTTP/1.1 200 OK") == 2
            assert answer.endswith(b"hello from supervisor\n")
        chat = socket.create_connection(("127.0.0.1", ports["chat"]), timeout=10)
        assert chat.recv(64) == b"welcome to the supervisor chat room\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as resp:
            assert 'supervisor_connections_total{server="echo"} 1.0' in resp.read().decode()
        reply = ctl.run("status", host="127.0.0.1", port=console, timeout=15)
        assert reply.ok
        assert "supervisor: ready, 3/3 server(s) running" in reply.text
        sp.signal(signal.SIGTERM)
        assert rest(chat) == b"* server shutting down, goodbye\n"
        assert sp.wait() == 0


@pytest.mark.e2e
def test_sighup_of_an_unchanged_file_changes_nothing(tmp_path: Path) -> None:
    with SupervisorProcess(write_config(tmp_path, LINES)) as sp:
        ports = sp.ready()
        sp.signal(signal.SIGHUP)
        sp.wait_for(r"INFO supervisor: reload: 2 server\(s\) unchanged")
        sp.wait_for(r"INFO supervisor: reload \(SIGHUP\) applied in \d+ ms; config sha256 [0-9a-f]{12}")
        with socket.create_connection(("127.0.0.1", ports["work"]), timeout=10) as s:
            s.sendall(b"who\n")
            assert s.recv(64) == b"work#1\n"  # the same generation, still serving
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


@pytest.mark.e2e
def test_sigusr1_logs_the_status_and_sigusr2_is_ignored(tmp_path: Path) -> None:
    """Python's default for both is to end the process at once, without a drain."""
    with SupervisorProcess(write_config(tmp_path, LINES)) as sp:
        ports = sp.ready()
        sp.signal(signal.SIGUSR1)
        sp.wait_for(r"INFO supervisor: SIGUSR1 received: status follows")
        sp.wait_for(r"^supervisor: ready, 2/2 server\(s\) running$")
        sp.signal(signal.SIGUSR2)
        sp.wait_for(r"WARNING supervisor: SIGUSR2 received: it has no meaning here; ignoring")
        with socket.create_connection(("127.0.0.1", ports["work"]), timeout=10) as s:
            s.sendall(b"who\n")
            assert s.recv(64) == b"work#1\n"
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    assert re.search(r"^work\s+running\s+127\.0\.0\.1:\d+", sp.output, re.M)


@pytest.mark.e2e
def test_a_taken_console_port_exits_1_before_any_server_starts(tmp_path: Path) -> None:
    port = free_port_run(2)
    config = write_config(tmp_path, LINES)
    config.write_text(config.read_text().replace("console: {enabled: false}", f"console: {{port: {port}}}"))
    with socket.create_server(("127.0.0.1", port)), SupervisorProcess(config) as sp:
        assert sp.wait() == 1
    sp.wait_for(
        rf"CRITICAL supervisor: exit 1: console: 127\.0\.0\.1:{port} is already in use \(telnet, console\.port\); "
        "pick another console.port or free that port"
    )
    assert "listening on" not in sp.output
    assert "Traceback" not in sp.output


@pytest.mark.parametrize("level", ["DEBUG", "WARNING"])
@pytest.mark.e2e
def test_log_level(tmp_path: Path, level: str) -> None:
    port = free_port()
    body = f"""
    servers:
      - {{name: work, handler: "tests.apps:lines", port: {port}}}
    """
    with SupervisorProcess(write_config(tmp_path, body), "--log-level", level) as sp:
        deadline = time.monotonic() + 20
        while True:  # at WARNING there is no ready line to wait for: wait for the port, with a deadline
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, sp.output
                time.sleep(0.02)
        with client:
            client.sendall(b"x" * 70_000 + b"\n")  # a line over read_limit: a client error, logged at DEBUG only
            assert client.recv(8) == b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"who\n")
            assert s.recv(64) == b"work#1\n"  # after the reset was handled
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    if level == "DEBUG":
        sp.wait_for(r"DEBUG supervisor: server work: client error \(too_long\): ValueError\('Separator is")
        assert " INFO supervisor: exit 0" in sp.output
    else:
        assert " INFO " not in sp.output
        assert " DEBUG " not in sp.output


@pytest.mark.e2e
def test_handler_that_ignores_cancellation_cannot_keep_the_process_alive(tmp_path: Path) -> None:
    body = """
    servers:
      - {name: stuck, handler: "tests.apps:immortal", port: 0, shutdown_timeout: 200ms}
    """
    with SupervisorProcess(write_config(tmp_path, body, total="1s")) as sp:
        ports = sp.ready()
        client = socket.create_connection(("127.0.0.1", ports["stuck"]), timeout=20)
        assert client.recv(3) == b"hi\n"
        sp.signal(signal.SIGTERM)
        assert sp.wait(timeout=20) == 0
        client.close()
    assert "1 task(s) ignored cancellation, exiting without them: " in sp.output
