"""``supervisor run`` as a real subprocess receiving real signals: exit codes and what clients receive."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import supervisor
from tests.proc import REPO, SupervisorProcess

pytestmark = pytest.mark.e2e


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
    assert "server work: drain skipped (second stop request), cancelling 1 connection(s) of generation 1" in sp.output


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


def test_invalid_config_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    path = write_config(tmp_path, "servers:\n  - {name: x, handler: 'tests.apps:lines', port: http}\n")
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "run", str(path)], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert f"{path}:5: servers[0].port: expected an integer 0-65535, got 'http'" in result.stderr
    assert "nothing was started" in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stderr


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "--version"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"supervisor {supervisor.__version__}"


def test_demo_config_serves_real_traffic() -> None:
    """configs/prod.yaml, exactly as the README runs it."""
    with SupervisorProcess(REPO / "configs" / "prod.yaml") as sp:
        ports = sp.ready()
        assert ports == {"echo": 8888, "http": 8080, "chat": 7777}
        with socket.create_connection(("127.0.0.1", 8888), timeout=10) as s:
            s.sendall(b"hello\n")
            assert s.recv(64) == b"hello\n"
        with socket.create_connection(("127.0.0.1", 8080), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = rest(s)
            assert answer.count(b"HTTP/1.1 200 OK") == 2
            assert answer.endswith(b"hello from supervisor\n")
        chat = socket.create_connection(("127.0.0.1", 7777), timeout=10)
        assert chat.recv(64) == b"welcome to the supervisor chat room\n"
        sp.signal(signal.SIGTERM)
        assert rest(chat) == b"* server shutting down, goodbye\n"
        assert sp.wait() == 0


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
