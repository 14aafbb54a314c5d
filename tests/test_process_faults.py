"""Faults that need a whole ``supervisor run`` process: file descriptors run out, a lifespan that takes its time,
stray signals, a blocked loop, a server that can never start. Real processes, real signals, bounded waits."""

from __future__ import annotations

import re
import signal
import socket
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.proc import SupervisorProcess

pytestmark = pytest.mark.e2e

METRICS = r"metrics listening on http://127\.0\.0\.1:(\d+)/metrics"


def config(tmp_path: Path, body: str, *, loop: str = "asyncio", metrics: bool = False) -> Path:
    path = tmp_path / "faults.yaml"
    path.write_text(
        f"supervisor: {{loop: {loop}, shutdown_timeout: 10s}}\n"
        + ("metrics: {port: 0}\n" if metrics else "metrics: {enabled: false}\n")
        + "console: {enabled: false}\n"
        + textwrap.dedent(body)
    )
    return path


def echo_until_served(port: int, deadline: float = 20.0) -> None:
    """Retry (with a deadline) until the server answers a line: it recovers by itself."""
    until = time.monotonic() + deadline
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"ping\n")
                if s.recv(16) == b"ping\n":
                    return
        except OSError:
            pass
        assert time.monotonic() < until, f"port {port} never served again"
        time.sleep(0.05)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_running_out_of_file_descriptors_logs_a_line_per_interval_and_recovers(tmp_path: Path, loop: str) -> None:
    body = """
    servers:
      - {name: echo, handler: "supervisor.handlers.echo:handle", port: 0, max_connections: 0}
    """
    with SupervisorProcess(config(tmp_path, body, loop=loop, metrics=True), open_files=128) as sp:
        port = sp.ready()["echo"]
        metrics = int(sp.wait_for(METRICS)[1])
        clients = []
        for _ in range(200):  # far past the 128 descriptors the process may open
            try:
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                break
        if loop == "asyncio":
            sp.wait_for(r"ERROR supervisor: server echo: cannot accept connections: \[Errno 24\] Too many open files")
        time.sleep(2.5)  # a soak, not a wait for an event: two of asyncio's one-second accept retries
        during = len(sp.lines)
        for client in clients:
            client.close()
        echo_until_served(port)
        exposition = scrape(metrics)
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    assert during < 30, sp.output  # was 1.4 million lines in 8 s
    assert "Traceback" not in sp.output
    errors = float(re.search(r'supervisor_accept_errors_total\{server="echo"\} (\S+)', exposition)[1])  # type: ignore[index]
    assert errors > 0 if loop == "asyncio" else errors == 0  # uvloop (libuv) drops such connections silently


def test_sigterm_is_not_held_by_a_lifespan_still_entering(tmp_path: Path) -> None:
    """Reported: a 12 s lifespan enter held SIGTERM for 11.5 s despite a 2 s budget."""
    body = """
    servers:
      - {name: ok, handler: "tests.apps:lines", port: 0}
      - {name: slow, handler: "tests.apps:sluggish", port: 0, shutdown_timeout: 2s, options: {enter: 12}}
    """
    with SupervisorProcess(config(tmp_path, body)) as sp:
        sp.wait_for(r"server ok listening on")
        started = time.monotonic()
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
        took = time.monotonic() - started
    assert took < 1.5, sp.output  # the enter is cut at once: there is nothing of it to drain


def test_a_second_signal_cuts_a_lifespan_exit(tmp_path: Path) -> None:
    body = """
    servers:
      - {name: slow, handler: "tests.apps:sluggish", port: 0, shutdown_timeout: 8s, options: {exit: 60}}
    """
    with SupervisorProcess(config(tmp_path, body)) as sp:
        sp.ready()
        sp.signal(signal.SIGTERM)
        sp.wait_for(r"shutting down \(SIGTERM\)")
        started = time.monotonic()
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
        took = time.monotonic() - started
    assert took < 1.5, sp.output  # not the 8 s the exit had left
    assert "server slow#1: the lifespan did not exit within" in sp.output
    assert "Traceback" not in sp.output


def test_a_lifespan_that_never_finishes_entering_times_out_and_is_given_up(tmp_path: Path) -> None:
    body = """
    servers:
      - name: stuck
        handler: "tests.apps:sluggish"
        port: 0
        start_timeout: 200ms
        start_retries: 2
        backoff: {initial: 10ms}
        options: {enter: 60}
    """
    with SupervisorProcess(config(tmp_path, body)) as sp:
        assert sp.wait(timeout=20) == 1
    out = sp.output
    assert out.count("server stuck failed: StartTimeout: the lifespan did not finish entering within 0.2s") == 3
    assert "giving up: server stuck never started: 3 failed start(s) (start_retries: 2), last: StartTimeout" in out
    assert "Traceback" not in out


def test_a_port_taken_at_start_is_given_up_on_and_readyz_says_why(tmp_path: Path) -> None:
    """Reported: retried forever (30 s backoff cap vs a 60 s window), /readyz 'starting', /healthz 200."""
    with socket.create_server(("127.0.0.1", 0)) as one, socket.create_server(("127.0.0.1", 0)) as two:
        body = f"""
        servers:
          - {{name: ok, handler: "tests.apps:lines", port: 0}}
          - {{name: opt, handler: "tests.apps:lines", port: {one.getsockname()[1]}, restart: transient,
              start_retries: 1, backoff: {{initial: 10ms}}}}
          - {{name: taken, handler: "tests.apps:lines", port: {two.getsockname()[1]},
              backoff: {{initial: 50ms, max: 30s}}}}
        """
        with SupervisorProcess(config(tmp_path, body, metrics=True)) as sp:
            metrics = int(sp.wait_for(METRICS)[1])
            sp.wait_for(r"server opt never started: 2 failed start\(s\) \(start_retries: 1\)")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=10)
            except urllib.error.HTTPError as exc:
                readyz = exc.read().decode()
            assert sp.wait(timeout=30) == 1  # taken: permanent, 6 failed starts -> give up, exit 1
    assert '"reason": "not serving: taken (backoff: OSError: [Errno 98] Address already in use' in readyz
    assert "giving up: server taken never started: 6 failed start(s) (start_retries: 5)" in sp.output
