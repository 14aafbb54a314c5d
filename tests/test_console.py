"""The console in-process, driven over real telnet: a raw socket doing the negotiation (supervisor.ctl.ConsoleClient).

The client is blocking, so it runs on a worker thread while the supervisor's loop keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from supervisor import cli, console, console_commands
from supervisor.access import is_loopback
from supervisor.commands import Command
from supervisor.console import PROMPT, console_view
from supervisor.ctl import ConsoleClient, Reply
from supervisor.errors import ConfigError, ViewError
from supervisor.metrics import metrics_view
from supervisor.plan import Plan
from supervisor.state import ChildState
from supervisor.status import format_duration
from supervisor.supervisor import Supervisor
from supervisor.views import view_problems
from tests.e2e_util import free_port_run, require_tool, write_config
from tests.helpers import ask, plan_from, port_of, served, wait_state
from tests.proc import SupervisorProcess

from supervisor.config import load_config  # isort: skip


def _plan(tmp_path: Path, port: int, extra: str = "") -> Plan:
    return plan_from(
        tmp_path,
        f"""
        metrics: {{enabled: false}}
        console: {{port: {port}{extra}}}
        servers:
          - {{name: alpha, handler: "tests.apps:lines", port: 0}}
          - {{name: beta, handler: "tests.apps:lines", port: 0, after: [alpha]}}
        """,
    )


def _type(port: int, *lines: tuple[str, str]) -> list[str]:
    """Log in, then for each (line, pattern): type the line and wait for the pattern. Returns each answer."""
    answers = []
    with ConsoleClient("127.0.0.1", port, timeout=15) as c:
        c.wait_prompt()
        for line, pattern in lines:
            start = c.send_line(line)
            c.wait_for(pattern, start)
            c.wait_prompt(start)  # the command is done when the next prompt is drawn
            answers.append(c.text(start))
    return answers


def _request(port: int, action: str, *names: str, as_json: bool = False) -> Reply:
    with ConsoleClient("127.0.0.1", port, timeout=15) as c:
        c.wait_prompt()
        return c.request(action, *names, as_json=as_json)


async def test_status_shows_every_server(tmp_path: Path) -> None:
    port = free_port_run(2)
    async with served(_plan(tmp_path, port), console_view) as (sup, _):
        await ask(port_of(sup, "alpha"), b"hi")
        (out,) = await asyncio.to_thread(_type, port, ("status", r"supervisor: ready"))
    rows = [line.split() for line in out.splitlines() if line.startswith(("server ", "alpha ", "beta "))]
    assert rows[0] == ["server", "state", "address", "uptime", "restarts", "conns", "errors", "last", "error"]
    assert rows[1][:2] == ["alpha", "running"]
    assert rows[1][2] == f"127.0.0.1:{port_of(sup, 'alpha')}"
    assert rows[1][3].endswith("s")  # uptime, e.g. 0.4s
    assert rows[1][4:] == ["0", "0/1", "0", "-"]  # restarts, active/total connections, handler errors, last error
    assert rows[2][:2] == ["beta", "running"]
    assert "supervisor: ready, 2/2 server(s) running" in out


async def test_restart_from_the_console(tmp_path: Path) -> None:
    port = free_port_run(2)
    async with served(_plan(tmp_path, port), console_view) as (sup, _):
        before = port_of(sup, "alpha")
        ok, bad = await asyncio.to_thread(
            _type, port, ("restart alpha", r"restarted alpha"), ("restart nope", r"error: no server named 'nope'")
        )
        child = sup.snapshot().child("alpha")
        assert child is not None
        assert (child.state, child.generation, child.restarts) == (ChildState.RUNNING, 2, 1)
        assert port_of(sup, "alpha") == before  # the kept socket
        assert await ask(before, b"who") == b"alpha#2\n"
    assert f"restarted alpha (127.0.0.1:{before})" in ok
    assert "servers: alpha, beta" in bad


async def test_stop_start_and_status_json_through_ctl_requests(tmp_path: Path) -> None:
    port = free_port_run(2)
    async with served(_plan(tmp_path, port), console_view) as (sup, _):
        stopped = await asyncio.to_thread(_request, port, "stop", "beta")
        assert (stopped.ok, stopped.text, [s.server for s in stopped.steps]) == (True, "stopped beta", ["beta"])
        assert sup.snapshot().child("beta").state is ChildState.STOPPED  # type: ignore[union-attr]
        status = await asyncio.to_thread(_request, port, "status", as_json=True)
        started = await asyncio.to_thread(_request, port, "start", "beta")
        unknown = await asyncio.to_thread(_request, port, "restart", "gamma")
        missing = await asyncio.to_thread(_request, port, "stop")
    tree = json.loads(status.text)
    assert status.ok
    assert tree["ready"] is True  # beta was stopped on purpose: it does not make the process unready
    assert tree["shutting_down"] is False
    assert [(s["name"], s["state"]) for s in tree["servers"]] == [("alpha", "running"), ("beta", "stopped")]
    assert set(tree["servers"][0]) >= {"address", "uptime_seconds", "restarts", "connections_active", "last_error"}
    assert started.ok
    assert started.text.startswith("started beta (127.0.0.1:")
    assert unknown == Reply(False, "no server named 'gamma'; servers: alpha, beta; nothing was done", invalid=True)
    assert missing == Reply(
        False, "'stop' needs a server name (or several, or 'all'), e.g. stop echo, or stop all", True
    )


async def _shut_down_from_the_console(tmp_path: Path) -> tuple[Reply, Supervisor]:
    """``shutdown`` typed at the console of a serving supervisor: its reply, once the console has closed."""
    port = free_port_run(2)
    plan = _plan(tmp_path, port)
    sup = Supervisor(plan)
    async with console_view(plan, sup):
        task = asyncio.create_task(sup.serve())
        await sup.ready
        reply = asyncio.create_task(asyncio.to_thread(_request, port, "shutdown"))
        async with asyncio.timeout(10):
            await task  # serve() returns: the ordered shutdown ran
    return await reply, sup


async def test_shutdown_from_the_console(tmp_path: Path) -> None:
    reply, sup = await _shut_down_from_the_console(tmp_path)
    assert reply == Reply(True, "shutting down")
    assert sup.stop_reason == "control: shutdown"


async def test_the_shutdown_answer_is_written_before_the_console_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ctl shutdown` stops the supervisor, whose shutdown may take 1 ms: the console's close must not cancel the
    reply still on its way (CI once saw the client read a closed connection and exit 1). A slow UI thread is made
    certain here: the answer is written 0.3 s after the supervisor gave it, when its shutdown (1 ms) is over and
    the console is closing (the close waits up to ANSWER_GRACE, 1 s)."""
    execute = console_commands.execute

    async def slow_execute(*args: Any, **kwargs: Any) -> Reply:
        result = await execute(*args, **kwargs)
        await asyncio.sleep(0.3)  # the slow UI thread under test, not a wait for an event
        return result

    monkeypatch.setattr(console_commands, "execute", slow_execute)
    reply, _ = await _shut_down_from_the_console(tmp_path)
    assert reply == Reply(True, "shutting down")


async def test_commands_before_the_supervisor_runs(tmp_path: Path) -> None:
    port = free_port_run(2)
    plan = _plan(tmp_path, port)
    async with console_view(plan, Supervisor(plan)):
        reply = await asyncio.to_thread(_request, port, "restart", "alpha")
        (status,) = await asyncio.to_thread(_type, port, ("status", r"supervisor: not ready"))
    assert (reply.ok, reply.text) == (False, "the supervisor is not running")
    assert re.search(r"alpha\s+stopped\s+127\.0\.0\.1:0\s+-\s+0\s+0/0\s+0\s+-", status)


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("repl", [False, True], ids=["repl-off", "repl-on"])
async def test_help_shows_whole_descriptions_and_only_usable_commands(tmp_path: Path, repl: bool) -> None:
    port = free_port_run(3)
    plan = _plan(tmp_path, port, ", repl: true" if repl else "")
    async with console_view(plan, Supervisor(plan)):
        (out,) = await asyncio.to_thread(_type, port, ("help", r"no command is repeated\."))
        (restart_help,) = await asyncio.to_thread(_type, port, ("restart --help", r"Usage: restart"))
    listed = re.findall(r"^  (\S+)", out, re.MULTILINE)
    assert listed[:7] == ["status", "restart", "stop", "start", "tail", "reload", "shutdown"]  # ours first, in order
    for command in Command:  # each description whole, as commands.py has it (wrapped, never cut with "...")
        assert _words(f"{command.usage} {command.help}") in _words(out), command
    assert not re.search(r"\.\.\.\r?$", out, re.MULTILINE)  # aiomonitor's own help cut descriptions so
    assert {"ps", "where", "cancel", "exit", "help"} <= set(listed)  # aiomonitor's own
    assert ("console" in listed) is repl  # the Python REPL only when it can be used
    assert not {"ctl", "noop"} & set(listed)  # the machine interface and aiomonitor's filler are hidden
    assert _words(Command.RESTART.help) in _words(restart_help)


async def test_an_empty_line_does_nothing_and_replies_come_before_the_prompt(tmp_path: Path) -> None:
    port = free_port_run(2)
    async with served(_plan(tmp_path, port), console_view) as (sup, _):

        def operator() -> tuple[str, str, str]:
            with ConsoleClient("127.0.0.1", port, timeout=15) as c:
                c.wait_prompt()
                start = c.send_line("restart alpha")
                c.wait_prompt(c.wait_for(r"restarted alpha", start).end() + start)
                restart = c.text(start)
                empty = c.send_line("")  # Enter, twice: aiomonitor repeated `restart alpha` for each
                c.send_line("")
                c.wait_for(rf"(?s)({re.escape(PROMPT)}.*){{2}}", empty)  # a fresh prompt for each empty line
                nothing = c.text(empty)
                after = c.send_line("status")
                c.wait_for(r"supervisor: ready", after)
                return restart, nothing, c.text(after)

        restart, nothing, status = await asyncio.to_thread(operator)
        child = sup.snapshot().child("alpha")
        assert child is not None
        assert (child.generation, child.restarts) == (2, 1)  # one restart, not three
    typed, reply = restart.split("restarted alpha", 1)
    assert PROMPT not in typed.rsplit("restart alpha", 1)[1]  # no prompt drawn between the command and its reply
    assert reply.startswith(" (127.0.0.1:")
    assert PROMPT in reply  # the next prompt, after the reply
    assert "restarted" not in nothing
    assert re.search(r"alpha\s+running\s+\S+\s+\S+\s+1\s", status)


async def test_several_names_and_all_at_the_console(tmp_path: Path) -> None:
    port = free_port_run(2)
    async with served(_plan(tmp_path, port), console_view) as (sup, _):
        both, unknown, stopped, started = await asyncio.to_thread(
            _type,
            port,
            ("restart alpha beta", r"restarted beta"),
            ("restart alpha nope zz", r"nothing was done"),
            ("stop all", r"stopped alpha"),
            ("start all", r"started beta"),
        )
        generations = [(c.name, c.generation) for c in sup.snapshot().children]
    assert re.search(r"restarted alpha \(127\.0\.0\.1:\d+\)\r?\nrestarted beta \(", both)
    assert "error: no servers named 'nope', 'zz'; servers: alpha, beta; nothing was done" in unknown
    assert re.search(r"stopped beta\r?\nstopped alpha", stopped)  # reverse start order
    assert re.search(r"started alpha \(127\.0\.0\.1:\d+\)\r?\nstarted beta \(", started)
    assert generations == [("alpha", 3), ("beta", 3)]  # alpha was not restarted by the refused line


@pytest.mark.e2e
def test_shutdown_does_not_hang_with_a_repl_session_open(tmp_path: Path) -> None:
    """aiomonitor's close() deadlocks on the app loop while a REPL session is open (P3): ours must not."""
    port = free_port_run(3)
    config = write_config(
        tmp_path,
        f"""
        metrics: {{enabled: false}}
        console: {{port: {port}, repl: true}}
        servers:
          - {{name: alpha, handler: "tests.apps:lines", port: 0}}
        """,
    )
    with SupervisorProcess(config) as sp:
        sp.ready()
        with contextlib.closing(ConsoleClient("127.0.0.1", port, timeout=15)) as client:
            client.connect()
            client.wait_prompt()
            start = client.send_line("console")  # the REPL runs on the supervisor's loop
            # aioconsole's banner, then its prompt: the REPL reads. Not one pattern across both: the banner and the
            # prompt are two writes, relayed by aiomonitor's proxy, whose own prompt_toolkit renderer draws into the
            # same stream, so its cursor moves can come between them ("---\r\n \x08>>> ").
            banner = client.wait_for(r"This console is running in an asyncio event loop", start)
            client.wait_for(r">>> ", start + banner.end())
            answer = client.send_line("[c.state.value for c in snapshot().children]")
            client.wait_for(r"\['running'\]", answer)
            stopping = time.monotonic()
            sp.signal(signal.SIGTERM)
            assert sp.wait(timeout=15) == 0
            took = time.monotonic() - stopping
            client.wait_closed()
    assert took < console.CLOSE_TIMEOUT
    sp.wait_for(r"INFO supervisor: console closed")


async def test_the_repl_is_off_by_default(tmp_path: Path) -> None:
    port = free_port_run(2)
    plan = _plan(tmp_path, port)
    async with console_view(plan, Supervisor(plan)):
        (out,) = await asyncio.to_thread(_type, port, ("console", r"Python console is disabled"))
    assert "set console.repl: true in the config and restart the supervisor" in _words(out)


@pytest.mark.parametrize("taken", [0, 1], ids=["telnet-port", "web-ui-port"])
async def test_a_taken_port_fails_fast(tmp_path: Path, taken: int) -> None:
    port = free_port_run(2)
    plan = _plan(tmp_path, port)
    busy = rf"console: 127.0.0.1:{port + taken} is already in use"
    with socket.create_server(("127.0.0.1", port + taken)), pytest.raises(ViewError, match=busy):
        async with asyncio.timeout(10), console_view(plan, Supervisor(plan)):
            pass


def test_a_remote_console_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        console:
          port: 20101
          host: 0.0.0.0
        servers:
          - {name: alpha, handler: "tests.apps:lines", port: 0}
        """,
    )
    (problem,) = view_problems(load_config(path))
    assert problem.startswith(f"{path}:4: console.host: '0.0.0.0' is not a loopback address")
    assert "console.allow_remote: true" in problem
    allowed = write_config(tmp_path, path.read_text().replace("port: 20101", "port: 20101\n  allow_remote: true"))
    assert view_problems(load_config(allowed)) == []
    disabled = write_config(tmp_path, path.read_text().replace("port: 20101", "port: 20101\n  enabled: false"))
    assert view_problems(load_config(disabled)) == []


async def test_console_view_refuses_a_remote_host_itself(tmp_path: Path) -> None:
    plan = _plan(tmp_path, 20101, ", host: 0.0.0.0")
    with pytest.raises(ConfigError, match=r"console\.host: '0\.0\.0\.0' is not a loopback address"):
        async with console_view(plan, Supervisor(plan)):
            pass


async def test_allow_remote_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port_run(2)
    plan = _plan(tmp_path, port, ", allow_remote: true")
    monkeypatch.setattr(console, "is_loopback", lambda host: False)  # bind loopback, take the remote path
    with caplog.at_level(logging.INFO, logger="supervisor"):
        async with console_view(plan, Supervisor(plan)):
            pass
    messages = [r.getMessage() for r in caplog.records if r.name == "supervisor"]
    assert messages[0].startswith(f"console on 127.0.0.1:{port} accepts remote connections (console.allow_remote)")
    assert messages[1:] == [
        f"console listening on telnet://127.0.0.1:{port} (web UI http://127.0.0.1:{port + 1})",
        "console closed",
    ]


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("::")
    assert not is_loopback("192.0.2.1")


def test_durations_read_well() -> None:
    assert [format_duration(s) for s in (None, 0.25, 59.9, 61, 3599, 3600 * 5 + 61, 86400 * 3 + 7200)] == [
        "-", "0.2s", "59.9s", "1m01s", "59m59s", "5h01m", "3d02h",
    ]  # fmt: skip


async def test_console_and_metrics_together(tmp_path: Path) -> None:
    """Both views in run_plan's order: a restart typed at the console shows in /metrics; status during shutdown."""
    port = free_port_run(2)
    plan = plan_from(
        tmp_path,
        f"""
        metrics: {{port: 0}}
        console: {{port: {port}}}
        servers:
          - {{name: alpha, handler: "tests.apps:lines", port: 0}}
        """,
    )
    async with served(plan, metrics_view, console_view) as (sup, (metrics, _)):
        await asyncio.to_thread(_type, port, ("restart alpha", r"restarted alpha"))
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{metrics.port}/metrics") as resp,  # type: ignore[attr-defined]
        ):
            exposition = await resp.text()
        sup.request_stop("test")
        await wait_state(sup, "alpha", ChildState.STOPPED)
        (out,) = await asyncio.to_thread(_type, port, ("status", r"supervisor: shutting down"))
    assert 'supervisor_server_restarts_total{reason="manual",server="alpha"} 1.0' in exposition
    assert 'supervisor_server_generation{server="alpha"} 2.0' in exposition
    assert re.search(r"alpha\s+stopped\s+127\.0\.0\.1:\d+\s+-\s+1\s", out)  # no uptime; 1 restart


@pytest.mark.e2e
def test_debian_telnet_in_tmux(tmp_path: Path) -> None:
    """What an operator does: `telnet 127.0.0.1 PORT`, type `status` and `restart alpha`, then `exit`."""
    tmux, telnet = require_tool("tmux"), require_tool("telnet")
    port = free_port_run(2)
    config = write_config(
        tmp_path,
        f"""
        metrics: {{enabled: false}}
        console: {{port: {port}}}
        servers:
          - {{name: alpha, handler: "tests.apps:lines", port: 0}}
        """,
    )
    sock = str(tmp_path / "tmux.sock")  # our own tmux server: no other session is touched

    def tm(*args: str) -> str:
        return subprocess.run([tmux, "-S", sock, *args], capture_output=True, text=True, timeout=10, check=True).stdout

    def screen_shows(pattern: str) -> str:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            screen = tm("capture-pane", "-p", "-t", "mon", "-S", "-100")
            if re.search(pattern, screen):
                return screen
            time.sleep(0.05)  # polling the pane with a deadline
        raise AssertionError(f"{pattern!r} not on screen:\n{screen}")

    with SupervisorProcess(config) as sp:
        sp.ready()
        # one tmux command line; remain-on-exit keeps the pane readable after telnet has quit
        tm("new-session", "-d", "-s", "mon", "-x", "160", "-y", "50", f"{telnet} 127.0.0.1 {port}",
           ";", "set-option", "-w", "-t", "mon", "remain-on-exit", "on")  # fmt: skip
        try:
            screen_shows(re.escape(PROMPT.strip()))  # tmux trims trailing spaces
            tm("send-keys", "-t", "mon", "status", "Enter")
            status = screen_shows(r"supervisor: ready, 1/1 server\(s\) running")
            assert re.search(r"alpha\s+running\s+127\.0\.0\.1:\d+", status)
            tm("send-keys", "-t", "mon", "restart alpha", "Enter")
            screen_shows(r"restarted alpha \(127\.0\.0\.1:\d+\)")
            sp.wait_for(r"server alpha listening on \S+ \(generation 2\)")
            tm("send-keys", "-t", "mon", "exit", "Enter")
            screen_shows(r"Connection closed by foreign host")
        finally:
            subprocess.run([tmux, "-S", sock, "kill-server"], capture_output=True, timeout=10)


def test_check_and_run_refuse_a_remote_console(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(
        tmp_path,
        """
        console: {host: 0.0.0.0}
        servers:
          - {name: alpha, handler: "tests.apps:lines", port: 0}
        """,
    )
    for command in ("check", "run"):
        assert cli.main([command, str(path)]) == cli.EXIT_USAGE
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith(f"{path}:2: console.host: '0.0.0.0' is not a loopback address")
        assert err[1] == f"supervisor: 1 problem in {path}; nothing was started"
