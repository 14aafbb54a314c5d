"""``supervisor ctl`` end to end against a real ``supervisor run``, and its telnet client in isolation."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.ctl import CPR_ANSWER, ConsoleClient, strip_ansi
from tests.e2e_util import free_port, free_port_run, write_config
from tests.proc import REPO, SupervisorProcess


def ctl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "supervisor", "ctl", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _config(tmp_path: Path, port: int) -> Path:
    return write_config(
        tmp_path,
        f"""
        metrics: {{enabled: false}}
        console: {{port: {port}}}
        servers:
          - {{name: echo, handler: "supervisor.handlers.echo:handle", port: 0}}
          - {{name: web, handler: "supervisor.handlers.http:make", port: 0, restart: transient}}
        """,
    )


@pytest.mark.e2e
def test_status_restart_stop_start(tmp_path: Path) -> None:
    port = free_port_run(2)
    config = _config(tmp_path, port)
    with SupervisorProcess(config) as sp:
        ports = sp.ready()
        p = str(port)

        status = ctl("--port", p, "status")
        assert (status.returncode, status.stderr) == (0, "")
        lines = status.stdout.splitlines()
        assert lines[0].split() == ["server", "state", "address", "uptime", "restarts", "conns", "last", "error"]
        assert re.fullmatch(rf"echo\s+running\s+127\.0\.0\.1:{ports['echo']}\s+\S+s\s+0\s+0/0\s+-", lines[1])
        assert re.fullmatch(rf"web\s+running\s+127\.0\.0\.1:{ports['web']}\s+\S+s\s+0\s+0/0\s+-", lines[2])
        assert re.fullmatch(r"config: \S+\.yaml sha256 [0-9a-f]{12} loaded \S+ \S+, reloads: none", lines[3])
        assert lines[4] == "supervisor: ready, 2/2 server(s) running"
        assert "\x1b" not in status.stdout

        by_name = ctl("--host", "localhost", "--port", p, "status")
        assert by_name.returncode == 0
        uptimes = re.compile(r"\s\d+\.\ds\s")  # they move on between the two calls
        assert uptimes.sub(" ", by_name.stdout) == uptimes.sub(" ", status.stdout)
        elsewhere = ctl("--host", "127.0.0.2", "--port", p, "status", "--timeout", "5")  # loopback, but not bound
        assert elsewhere.returncode == 1
        assert f"cannot connect to the console at 127.0.0.2:{port}" in elsewhere.stderr

        restart = ctl("--port", p, "restart", "echo")
        assert (restart.returncode, restart.stdout) == (0, f"restarted echo (127.0.0.1:{ports['echo']})\n")
        sp.wait_for(r"server echo listening on 127\.0\.0\.1:\d+ \(generation 2\)")

        bad = ctl("--port", p, "restart", "nope")
        assert bad.returncode == 1
        assert bad.stdout == ""
        assert bad.stderr == "supervisor ctl: no server named 'nope'; servers: echo, web\n"

        stop = ctl("-c", str(config), "stop", "web", "--json")  # host and port from the config
        assert stop.returncode == 0
        assert json.loads(stop.stdout) == {"ok": True, "action": "stop", "server": "web", "message": "stopped web"}

        tree = json.loads(ctl("--port", p, "status", "--json").stdout)
        assert [(s["name"], s["state"], s["restarts"]) for s in tree["servers"]] == [
            ("echo", "running", 1),
            ("web", "stopped", 0),
        ]
        assert tree["ready"] is True  # web is transient: not needed to be ready

        start = ctl("--port", p, "start", "web")
        assert start.returncode == 0
        assert re.fullmatch(r"started web \(127\.0\.0\.1:\d+\)\n", start.stdout)  # stop released its port 0


@pytest.mark.e2e
def test_shutdown(tmp_path: Path) -> None:
    port = free_port_run(2)
    with SupervisorProcess(_config(tmp_path, port)) as sp:
        sp.ready()
        result = ctl("--port", str(port), "shutdown")
        assert (result.returncode, result.stdout) == (0, "shutting down\n")
        assert sp.wait(timeout=20) == 0
        sp.wait_for(r"shutting down \(control: shutdown\)")


def test_a_bad_config_is_exit_2_with_its_problems(tmp_path: Path) -> None:
    bad = write_config(tmp_path, "console: {port: telnet}\nservers: []\n")
    result = ctl("-c", str(bad), "status")
    assert result.returncode == 2
    assert f"{bad}:1: console.port: expected an integer 1-65534, got 'telnet'" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_no_console_is_exit_1() -> None:
    port = free_port()  # nothing listens there
    result = ctl("--port", str(port), "status")
    assert result.returncode == 1
    assert result.stderr.startswith(f"supervisor ctl: cannot connect to the console at 127.0.0.1:{port}: ")


def test_a_silent_service_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog) and never speaks
        result = ctl("--port", str(silent.getsockname()[1]), "--timeout", "1", "status")
    assert result.returncode == 1
    assert "no answer from the console" in result.stderr
    assert "no supervisor console prompt" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["restart"], "'restart' needs a server name"),
        (["status", "echo"], "'status' takes no server name"),
        (["reboot"], "invalid choice: 'reboot'"),
    ],
)
def test_usage_errors_are_exit_2(args: list[str], message: str) -> None:
    result = ctl(*args)
    assert result.returncode == 2
    assert message in result.stderr


# -- the telnet client on its own ---------------------------------------------------------------------------------


def test_telnet_commands_are_removed_even_when_split() -> None:
    client = ConsoleClient()
    stream = (
        b"\xff\xfd\x22"  # DO LINEMODE
        b"\xff\xfa\x22\x01\x00\xff\xf0"  # SB LINEMODE MODE 0 SE
        b"hel\xff\xfb\x01lo"  # WILL ECHO in the middle of the text
        b" \xff\xff!"  # an escaped 0xff data byte
    )
    for i in range(len(stream)):  # every split point
        client.data.clear()
        client._feed(stream[:i])
        client._feed(stream[i:])
        assert bytes(client.data) == b"hello \xff!", i


def test_cursor_position_queries_are_answered_once() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        client = ConsoleClient()
        client._sock = ours
        client._feed(b"prompt\x1b[")
        client._feed(b"6n more \x1b[6n")
        theirs.settimeout(5)
        assert theirs.recv(100) == CPR_ANSWER * 2
        client._feed(b"no query here")
        theirs.setblocking(False)
        with pytest.raises(BlockingIOError):
            theirs.recv(100)
        client._sock = None


def test_strip_ansi() -> None:
    drawn = "\x1b[?25l\x1b[0m\x1b[38;5;81;1msupervisor >>> \x1b[0m\x1b[K\x1b]0;title\x07\x1b(Bstatus\r\n\x1b[?25h"
    assert strip_ansi(drawn) == "supervisor >>> status\r\n"
