"""``supervisor ctl`` end to end against a real ``supervisor run``, and its telnet client in isolation."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisor import status as status_mod
from supervisor.ctl import ConsoleClient
from supervisor.telnet import CPR_ANSWER, strip_ansi
from tests.e2e_util import free_port, free_port_run, write_config
from tests.proc import REPO, SupervisorProcess


def ctl(*args: str, timeout: float = 30, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"PYTHONPATH": str(REPO)}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    cmd = [sys.executable, "-m", "supervisor", "ctl", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


HEAD = ["server", "state", "address", "uptime", "restarts", "conns", "errors", "last", "error"]


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
        assert lines[0].split() == HEAD
        assert re.fullmatch(rf"echo\s+running\s+127\.0\.0\.1:{ports['echo']}\s+\S+s\s+0\s+0/0\s+0\s+-", lines[1])
        assert re.fullmatch(rf"web\s+running\s+127\.0\.0\.1:{ports['web']}\s+\S+s\s+0\s+0/0\s+0\s+-", lines[2])
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
        assert bad.returncode == 2  # an invalid request: nothing was done
        assert bad.stdout == ""
        assert bad.stderr == "supervisor ctl: no server named 'nope'; servers: echo, web; nothing was done\n"

        stop = ctl("-c", str(config), "stop", "web", "--json")  # host and port from the config
        assert stop.returncode == 0
        assert json.loads(stop.stdout) == {
            "ok": True, "action": "stop", "server": "web", "message": "stopped web",
            "results": [{"server": "web", "ok": True, "message": "stopped web"}],
        }  # fmt: skip

        tree = json.loads(ctl("--port", p, "status", "--json").stdout)
        assert [(s["name"], s["state"], s["restarts"]) for s in tree["servers"]] == [
            ("echo", "running", 1),
            ("web", "stopped", 0),
        ]
        assert tree["ready"] is True  # web is transient: not needed to be ready

        start = ctl("--port", p, "start", "web")
        assert start.returncode == 0
        assert re.fullmatch(r"started web \(127\.0\.0\.1:\d+\)\n", start.stdout)  # stop released its port 0


def _three(tmp_path: Path, port: int) -> Path:
    return write_config(
        tmp_path,
        f"""
        metrics: {{enabled: false}}
        console: {{port: {port}}}
        servers:
          - {{name: a, handler: "tests.apps:lines", port: 0}}
          - {{name: b, handler: "tests.apps:lines", port: 0, on_handler_error: restart}}
          - {{name: c, handler: "tests.apps:lines", port: 0, after: [a]}}
        """,
    )


def generations(port: int) -> dict[str, int]:
    status = ctl("--port", str(port), "status", "--json")
    assert status.returncode == 0, status.stderr
    return {s["name"]: s["generation"] for s in json.loads(status.stdout)["servers"]}


@pytest.mark.e2e
def test_several_names_and_all(tmp_path: Path) -> None:
    port = free_port_run(2)
    with SupervisorProcess(_three(tmp_path, port)) as sp:
        ports = sp.ready()
        p = str(port)

        two = ctl("--port", p, "restart", "c", "a")  # in the order given, one line each
        assert (two.returncode, two.stderr) == (0, "")
        assert two.stdout == f"restarted c (127.0.0.1:{ports['c']})\nrestarted a (127.0.0.1:{ports['a']})\n"
        assert generations(port) == {"a": 2, "b": 1, "c": 2}

        every = ctl("--port", p, "restart", "all", "--json")
        assert every.returncode == 0
        answer = json.loads(every.stdout)
        assert (answer["ok"], answer["server"]) == (True, None)
        assert [(r["server"], r["ok"]) for r in answer["results"]] == [("a", True), ("b", True), ("c", True)]
        assert generations(port) == {"a": 3, "b": 2, "c": 3}

        stop = ctl("--port", p, "stop", "all")
        assert (stop.returncode, stop.stdout) == (0, "stopped c\nstopped b\nstopped a\n")  # reverse start order
        start = ctl("--port", p, "start", "all")
        assert start.returncode == 0
        assert re.fullmatch(r"started a \(\S+\)\nstarted b \(\S+\)\nstarted c \(\S+\)\n", start.stdout)


@pytest.mark.e2e
def test_unknown_names_are_refused_before_anything_is_done(tmp_path: Path) -> None:
    port = free_port_run(2)
    with SupervisorProcess(_three(tmp_path, port)) as sp:
        sp.ready()
        before = generations(port)
        bad = ctl("--port", str(port), "restart", "a", "nope", "b", "zz")
        assert bad.returncode == 2
        assert bad.stdout == ""
        assert bad.stderr == "supervisor ctl: no servers named 'nope', 'zz'; servers: a, b, c; nothing was done\n"
        assert generations(port) == before == {"a": 1, "b": 1, "c": 1}  # not even `a`, named first
        assert "by control request" not in sp.output


@pytest.mark.e2e
def test_stop_and_start_say_what_is_true(tmp_path: Path) -> None:
    port = free_port_run(2)
    with SupervisorProcess(_three(tmp_path, port)) as sp:
        sp.ready()
        p = str(port)
        first, second = ctl("--port", p, "stop", "b"), ctl("--port", p, "stop", "b")
        assert (first.returncode, first.stdout) == (0, "stopped b\n")
        assert (second.returncode, second.stdout, second.stderr) == (0, "b is already stopped\n", "")
        mixed = ctl("--port", p, "stop", "a", "b")  # one to do, one already done
        assert (mixed.returncode, mixed.stdout) == (0, "stopped a\nb is already stopped\n")
        started, again = ctl("--port", p, "start", "b"), ctl("--port", p, "start", "b")
        assert re.fullmatch(r"started b \(127\.0\.0\.1:\d+\)\n", started.stdout)
        assert (again.returncode, again.stdout) == (0, "b is already running\n")
        revived = ctl("--port", p, "restart", "a")  # restart of a stopped server: started, and said so
        assert re.fullmatch(r"started a \(127\.0\.0\.1:\d+\); it was stopped\n", revived.stdout)


@pytest.mark.e2e
def test_status_shows_handler_errors_and_the_last_error(tmp_path: Path) -> None:
    port = free_port_run(2)
    with SupervisorProcess(_three(tmp_path, port)) as sp:
        ports = sp.ready()
        for name, line in (("a", b"bad\n"), ("b", b"crash\n")):  # a: logged, connection closed; b: restarts
            with socket.create_connection(("127.0.0.1", ports[name]), timeout=10) as client:
                client.sendall(line)
                assert client.recv(100) == b""  # closed by the handler's error
        sp.wait_for(r"server a: handler error, connection closed: ValueError\('handler bug'\)")
        sp.wait_for(r"server b listening on \S+ \(generation 2\)")

        status = ctl("--port", str(port), "status")  # a pipe: nothing is cut
        assert status.returncode == 0
        rows = {line.split()[0]: line for line in status.stdout.splitlines()[1:4]}
        handler_error = r"handler: ValueError: handler bug \(\d+\.\ds ago\)"  # its text, not only a count
        assert re.fullmatch(rf"a\s+running\s+\S+\s+\S+\s+0\s+0/1\s+1\s+{handler_error}", rows["a"])
        error = "RuntimeError: crash requested"
        assert re.fullmatch(rf"b\s+running\s+\S+\s+\S+\s+1\s+0/1\s+1\s+.*{error}\S*", rows["b"])

        for columns in (90, 40):  # $COLUMNS, as a terminal's width
            cut = ctl("--port", str(port), "status", columns=columns).stdout.splitlines()[2]
            assert cut.endswith("...")
            start = cut.index("RuntimeError")  # the error keeps 20 characters however narrow: wrapped, not gone
            assert error.startswith(cut[start:].removesuffix("..."))
            assert len(cut) == max(columns, start + status_mod.MIN_ERROR_WIDTH), columns


@contextlib.contextmanager
def _watch(port: int, stdout: int) -> Iterator[subprocess.Popen[bytes]]:
    """``supervisor ctl status --watch`` writing to ``stdout``; killed at the end if still running."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "supervisor", "ctl", "--port", str(port), "status", "--watch", "--interval", "0.2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=stdout, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _read_until(fd: int, done: Callable[[bytes], bool], timeout: float = 20) -> bytes:
    """Read ``fd`` until ``done(everything so far)``, failing at the deadline or at end of file."""
    seen = b""
    deadline = time.monotonic() + timeout
    while not done(seen):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; got {seen!r}"
        assert select.select([fd], [], [], left)[0], f"timed out; got {seen!r}"
        chunk = os.read(fd, 65536)
        assert chunk, f"end of output; got {seen!r}"
        seen += chunk
    return seen


@pytest.mark.e2e
def test_watch_prints_a_table_each_interval_until_ctrl_c(tmp_path: Path) -> None:
    port = free_port_run(2)
    with SupervisorProcess(_three(tmp_path, port)) as sp:
        sp.ready()
        with _watch(port, subprocess.PIPE) as watch:
            assert watch.stdout is not None
            out = _read_until(watch.stdout.fileno(), lambda seen: seen.count(b"supervisor: ready") >= 2)
            watch.send_signal(signal.SIGINT)
            assert watch.wait(timeout=10) == 0
            assert watch.stderr is not None
            assert watch.stderr.read() == b""
    text = out.decode()
    assert "\x1b" not in text  # not a terminal: fresh tables, no redrawing
    frames = text.split("every 0.2s: status of ")[1:]
    assert len(frames) >= 2
    for frame in frames[:2]:
        assert frame.splitlines()[2].split() == HEAD
        assert re.search(r"^a\s+running\s", frame, re.MULTILINE)


@pytest.mark.e2e
def test_watch_ends_with_exit_1_when_the_supervisor_goes_away(tmp_path: Path) -> None:
    port = free_port_run(2)
    with SupervisorProcess(_three(tmp_path, port)) as sp:
        sp.ready()
        with _watch(port, subprocess.PIPE) as watch:
            assert watch.stdout is not None
            _read_until(watch.stdout.fileno(), lambda seen: b"supervisor: ready" in seen)
            sp.signal(signal.SIGTERM)
            assert sp.wait() == 0
            assert watch.wait(timeout=30) == 1
            assert watch.stderr is not None
            why = watch.stderr.read().decode()
            assert re.match(rf"supervisor ctl: (the console at|lost the console at) 127\.0\.0\.1:{port}\b", why), why


@pytest.mark.e2e
def test_watch_redraws_in_place_on_a_terminal(tmp_path: Path) -> None:
    port = free_port_run(2)
    with SupervisorProcess(_three(tmp_path, port)) as sp:
        sp.ready()
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 90, 0, 0))  # 40 rows, 90 columns
        try:
            with _watch(port, follower) as watch:
                out = _read_until(leader, lambda seen: seen.count(b"supervisor: ready") >= 3)
                watch.send_signal(signal.SIGINT)
                assert watch.wait(timeout=10) == 0
        finally:
            os.close(follower)
            os.close(leader)
    frames = out.split(b"\x1b[H")[1:]
    assert frames[0].startswith(b"\x1b[2J")  # the screen is cleared once...
    assert not frames[1].startswith(b"\x1b[2J")  # ...then each refresh overwrites it from the top
    assert b"\x1b[K\r\n" in frames[1]  # every line cleared to its end (the pty turns \n into \r\n)
    assert frames[1].rstrip().endswith(b"\x1b[J")  # and what an older, longer table left below


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
