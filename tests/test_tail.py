"""``supervisor ctl tail NAME [-n N] [-f]`` and the console's ``tail``, against a real ``supervisor run``: a
server's own log lines (its handler's, and the supervisor's about it), the last N, and following new ones."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.ctl import ConsoleClient
from tests.e2e_util import free_port_run, write_config
from tests.proc import REPO, SupervisorProcess
from tests.test_ctl import _read_until, ctl


def _config(tmp_path: Path, port: int) -> Path:
    return write_config(
        tmp_path,
        f"""
        metrics: {{enabled: false}}
        console: {{port: {port}}}
        servers:
          - {{name: talk, handler: "tests.test_logs:chatty", port: 0}}
          - {{name: quiet, handler: "supervisor.handlers.echo:handle", port: 0}}
        """,
    )


def _say(port: int, *lines: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        for line in lines:
            conn.sendall(line + b"\n")
            assert conn.recv(100) == line + b"\n"


@pytest.mark.e2e
def test_tail_shows_a_servers_last_lines_and_follows_new_ones(tmp_path: Path) -> None:
    console = free_port_run(2)
    with SupervisorProcess(_config(tmp_path, console)) as sp:
        port = sp.ready()["talk"]
        _say(port, b"one", b"two", b"three")
        sp.wait_for(r"got b'three'")
        last = ctl("--port", str(console), "tail", "talk", "-n", "2")
        assert last.returncode == 0, last.stderr
        lines = last.stdout.splitlines()
        assert len(lines) == 2
        assert lines[0].endswith("INFO app [talk#1]: got b'two'")
        assert lines[1].endswith("INFO app [talk#1]: got b'three'")
        everything = ctl("--port", str(console), "tail", "talk").stdout
        assert "INFO supervisor: server talk listening on 127.0.0.1:" in everything  # the supervisor's line about it
        assert "quiet" not in everything  # only this server's
        unknown = ctl("--port", str(console), "tail", "nope")
        assert unknown.returncode == 2
        assert "no server named 'nope'" in unknown.stderr
        assert ctl("--port", str(console), "tail", "talk", "quiet").returncode == 2  # one name only

        with ConsoleClient("127.0.0.1", console, 20) as session:  # the console's own `tail`, as typed
            session.wait_prompt()
            start = session.send_line("tail talk -n 1")
            session.wait_for(r"got b'three'", start)
            assert "got b'two'" not in session.text(start)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "supervisor", "ctl", "--port", str(console), "tail", "talk", "-n", "1", "-f"]
        with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as follow:
            try:
                assert follow.stdout is not None
                first = _read_until(follow.stdout.fileno(), lambda seen: b"got b'three'" in seen)  # it follows now
                assert b"got b'two'" not in first  # -n 1
                _say(port, b"four")
                _read_until(follow.stdout.fileno(), lambda seen: b"got b'four'" in seen)
                _say(port, b"five")
                _read_until(follow.stdout.fileno(), lambda seen: b"got b'five'" in seen)
                follow.send_signal(signal.SIGINT)
                assert follow.wait(timeout=10) == 0
            finally:
                if follow.poll() is None:
                    follow.kill()
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
