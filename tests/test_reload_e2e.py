"""Reload end to end: a real ``supervisor run``, a real SIGHUP (sent the way the systemd unit's ExecReload sends
it), clients on real sockets, and ``supervisor ctl reload`` with its exit codes 0, 2 and 1."""

from __future__ import annotations

import hashlib
import shlex
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.e2e_util import free_port_run, write_config
from tests.proc import REPO, SupervisorProcess
from tests.test_ctl import ctl

TREE = """
metrics: {{enabled: false}}
console: {{enabled: false}}
supervisor: {{loop: {loop}}}
servers:
  - {{name: keep, handler: "tests.apps:lines", port: 0}}
  - {{name: edit, handler: "tests.apps:journaled", port: 0, options: {{v: {v}}}}}
{more}"""
GONE = '  - {name: gone, handler: "tests.apps:lines", port: 0}\n'
NEW = '  - {name: new, handler: "tests.apps:lines", port: 0, after: [edit]}\n'


def who(port: int, sock: socket.socket | None = None) -> str:
    """One ``who`` on ``sock`` (kept open), or on a fresh connection."""
    own = sock is None
    s = sock or socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(b"who\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = s.recv(64)
            if not chunk:
                raise ConnectionError(f"EOF after {answer!r}")
            answer += chunk
        return answer.decode().strip()
    finally:
        if own:
            s.close()


def reload_by_unit(sp: SupervisorProcess) -> None:
    """Run the systemd unit's own ExecReload= line with $MAINPID set, as systemctl reload would."""
    unit = (REPO / "deploy" / "systemd" / "supervisor.service").read_text()
    line = next(x for x in unit.splitlines() if x.startswith("ExecReload="))
    assert sp.proc is not None
    argv = [a.replace("$MAINPID", str(sp.proc.pid)) for a in shlex.split(line.removeprefix("ExecReload="))]
    subprocess.run(argv, check=True, timeout=10)


def applied(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return rf"reload \(SIGHUP\) applied in \d+ ms; config sha256 {digest}"


@pytest.mark.e2e
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sighup_adds_removes_and_changes_servers_without_disturbing_the_rest(tmp_path: Path, loop: str) -> None:
    config = write_config(tmp_path, TREE.format(loop=loop, v=1, more=GONE))
    with SupervisorProcess(config) as sp:
        ports = sp.ready()
        kept = socket.create_connection(("127.0.0.1", ports["keep"]), timeout=5)
        assert who(0, kept) == "keep#1"
        write_config(tmp_path, TREE.format(loop=loop, v=2, more=NEW))
        reload_by_unit(sp)
        sp.wait_for(applied(config))
        assert who(0, kept) == "keep#1"  # the same connection, the same generation, across the reload
        assert who(ports["edit"]) == "edit#2"
        new = int(sp.wait_for(r"server new listening on \S+:(\d+) \(generation 1\)")[1])
        assert who(new) == "new#1"
        with pytest.raises(ConnectionRefusedError):
            who(ports["gone"])
        sp.wait_for(r"reload: server gone removed: port closed, 0 connection\(s\) draining")
        sp.wait_for(r"reload: 1 server\(s\) unchanged")
        sp.wait_for(r"reload: server edit changed \(options\): generation 2 serving, generation 1 draining")
        kept.close()
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


@pytest.mark.e2e
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_changed_server_under_load_refuses_and_fails_nothing(tmp_path: Path, loop: str) -> None:
    """Four clients open a connection per request to ``edit`` while it is reloaded ten times."""
    config = write_config(tmp_path, TREE.format(loop=loop, v=0, more=""))
    with SupervisorProcess(config) as sp:
        port = sp.ready()["edit"]
        stop = threading.Event()
        answered, problems = [0], []
        lock = threading.Lock()

        def client() -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    ok = who(port).startswith("edit#")
                except OSError as exc:
                    ok, exc_text = False, repr(exc)
                else:
                    exc_text = "wrong answer"
                with lock:
                    if ok:
                        answered[0] += 1
                    else:
                        problems.append(exc_text)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            for v in range(1, 11):
                write_config(tmp_path, TREE.format(loop=loop, v=v, more=""))
                sp.signal(signal.SIGHUP)
                sp.wait_for(applied(config))
                mark, deadline = answered[0], time.monotonic() + 10
                while answered[0] < mark + 20 and time.monotonic() < deadline:
                    time.sleep(0.001)  # load between every two reloads, not only before the first
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert problems == []
        assert answered[0] >= 200
        assert who(port) == "edit#11"
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


@pytest.mark.e2e
def test_ctl_reload_exits_0_applied_2_invalid_1_failed(tmp_path: Path) -> None:
    console = free_port_run(2)
    text = TREE.replace("console: {{enabled: false}}", f"console: {{{{port: {console}}}}}")
    config = write_config(tmp_path, text.format(loop="asyncio", v=1, more=""))
    with SupervisorProcess(config) as sp:
        ports = sp.ready()
        write_config(tmp_path, text.format(loop="asyncio", v=2, more=""))
        done = ctl("-c", str(config), "reload")
        assert done.returncode == 0, done.stderr
        assert "server edit changed (options): generation 2 serving, generation 1 draining" in done.stdout
        assert "reload (control) applied in" in done.stdout

        config.write_text(config.read_text().replace("port: 0}", "port: http}", 1))
        invalid = ctl("--port", str(console), "reload")
        assert invalid.returncode == 2
        assert f"{config}:6: servers[0].port: expected an integer 0-65535, got 'http'" in invalid.stderr
        assert f"supervisor: 1 problem in {config}; the running config is unchanged" in invalid.stderr

        write_config(tmp_path, text.format(loop="asyncio", v="3, fail_enter: true", more=""))
        failed = ctl("--port", str(console), "reload")
        assert failed.returncode == 1
        assert "server edit changed (options): the new generation failed to start" in failed.stderr
        assert who(ports["edit"]) == "edit#2"  # the old generation keeps serving
        status = ctl("--port", str(console), "status")
        assert "reloads: 1 success, 1 failure, 1 invalid (the last one failed: see the log)" in status.stdout
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
