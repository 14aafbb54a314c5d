"""``supervisor.workers: N`` end to end: a real ``supervisor run`` parent with real worker processes on real sockets,
real signals (SIGKILL to a worker under load, SIGTERM, a second SIGTERM, SIGHUP), a rolling reload that deploys
new handler code, /metrics summed over the workers, and ``ctl`` acting on every worker."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.ctl import ConsoleClient
from supervisor.streams import FRESH_WINDOW
from tests.e2e_util import free_port, write_config
from tests.proc import SupervisorProcess
from tests.test_ctl import ctl

pytestmark = pytest.mark.e2e

READY = r"supervisor ready: \d+ server\(s\) serving in (\d+) worker processes"
VERSIONED = """
import os
import time

VERSION = "{version}"


async def handle(reader, writer):
    while line := await reader.readline():
        if line == b"block\\n":
            time.sleep(60)  # a handler that blocks its worker's event loop
        writer.write(f"{{VERSION}} {{os.getpid()}}\\n".encode())
        await writer.drain()
    writer.close()
"""


VER = '{name: ver, handler: "ver:handle", port: 0}'
WEB = '{name: web, handler: "supervisor.handlers.http:make", port: 0}'


def _tree(
    tmp_path: Path, metrics: int, console: int, *, workers: int = 2, more: str = "", loop: str = "asyncio",
    servers: tuple[str, ...] = (VER, WEB),
) -> Path:  # fmt: skip
    """The config file: ``servers`` as flow mappings, one a line."""
    entries = "".join(f"\n  - {server}" for server in servers)
    text = f"""\
supervisor: {{workers: {workers}, loop: {loop}, shutdown_timeout: 10s{more}}}
metrics: {{port: {metrics}}}
console: {{port: {console}}}
servers:{entries}
"""
    return write_config(tmp_path, text)


def _write_handler(tmp_path: Path, version: str) -> None:
    (tmp_path / "ver.py").write_text(VERSIONED.format(version=version))


def _ports(sp: SupervisorProcess) -> dict[str, int]:
    sp.wait_for(READY)
    return {
        m[1]: int(m[3])
        for line in sp.output.splitlines()
        if (m := re.search(r"server (\S+) listening on (\S+):(\d+)", line))
    }


def ask(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"x\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(100)
            if not chunk:
                raise ConnectionError("closed without an answer")
            data += chunk
        return data.decode().strip()


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")}


def until(check: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


class Load:
    """Fresh connections, one request each, from a thread, until stopped (bounded: 60 s, 20,000 requests)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: Counter[str] = Counter()  # version -> answers
        self.pids: set[str] = set()
        self.refused = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        for _ in range(20_000):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            try:
                version, pid = ask(self.port).split()
            except ConnectionRefusedError:
                self.refused += 1
            except OSError as exc:
                self.failed.append(repr(exc) + " at " + time.strftime("%H:%M:%S") + f".{time.time() % 1:.3f}")
            else:
                self.answers[version] += 1
                self.pids.add(pid)

    @property
    def total(self) -> int:
        return sum(self.answers.values())


def _worker_pids(sp: SupervisorProcess) -> dict[int, int]:
    """slot -> pid of the worker ready in it most recently."""
    found = re.findall(r"worker (\d+) \(pid (\d+)\) ready", sp.output)
    return {int(slot): int(pid) for slot, pid in found}


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_workers_serve_one_socket_and_metrics_sum_them(tmp_path: Path, loop: str) -> None:
    _write_handler(tmp_path, "v1")
    metrics, console = free_port(), free_port()
    with SupervisorProcess(_tree(tmp_path, metrics, console, loop=loop)) as sp:
        assert sp.wait_for(READY)[1] == "2"
        port = _ports(sp)["ver"]
        pids = {ask(port).split()[1] for _ in range(60)}
        assert pids <= {str(p) for p in _worker_pids(sp).values()}
        until(lambda: scrape(metrics).get('supervisor_connections_total{server="ver"}') == 60.0, what="60 summed")
        m = scrape(metrics)
        assert m["supervisor_workers"] == 2.0
        assert m['supervisor_worker_up{worker="1"}'] == m['supervisor_worker_up{worker="2"}'] == 1.0
        assert m["supervisor_ready"] == 1.0
        status = ctl("--port", str(console), "status")
        assert status.returncode == 0, status.stderr
        assert re.search(r"^w1\s+running\s+\d+", status.stdout, re.M), status.stdout
        assert re.search(r"^w2\s+running\s+\d+", status.stdout, re.M), status.stdout
        restarted = ctl("--port", str(console), "restart", "ver")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert "in 2 worker(s)" in restarted.stdout
        assert len(re.findall(r"\[w\d\]: server ver listening on \S+ \(generation 2\)", sp.output)) == 2

        def tailed() -> bool:  # the workers forward their lines with their next report (within 0.5 s)
            tail = ctl("--port", str(console), "tail", "ver", "-n", "10")
            assert tail.returncode == 0, tail.stderr
            return all(f"[w{n}]: server ver listening on" in tail.stdout and "(generation 2)" in tail.stdout
                       for n in (1, 2))  # fmt: skip

        until(tailed, what="both workers' lines in `ctl tail ver`")
        sp.signal(signal.SIGTERM)
        assert sp.wait(30) == 0
    assert sp.output.count("]: exit 0") == 2  # both workers: [w1], [w2]


def test_a_worker_killed_under_load_refuses_no_one_and_is_replaced(tmp_path: Path) -> None:
    _write_handler(tmp_path, "v1")
    metrics, console = free_port(), free_port()
    with SupervisorProcess(_tree(tmp_path, metrics, console)) as sp:
        port = _ports(sp)["ver"]
        victim = _worker_pids(sp)[1]
        with Load(port) as load:
            until(lambda: load.total > 200, what="load flowing")
            before = scrape(metrics)['supervisor_connections_total{server="ver"}']
            os.kill(victim, signal.SIGKILL)
            sp.wait_for(rf"worker 1 \(pid {victim}\) died: killed by SIGKILL")
            sp.wait_for(r"worker 1: replacing it in")
            sp.wait_for(rf"worker 1 \(pid (?!{victim}\))\d+\) ready")
            seen = load.total
            until(lambda: load.total > seen + 200, what="served after the replacement")
        assert load.refused == 0
        # a connection the killed worker had accepted and not answered is reset: at most a few, never refused
        assert len(load.failed) <= 5, load.failed
        after = scrape(metrics)
        assert after['supervisor_connections_total{server="ver"}'] >= before
        assert after['supervisor_worker_restarts_total{worker="1"}'] == 1.0
        # A dead worker's totals are kept. Under load a SIGKILLed worker's last half second is lost with it (it
        # reports every 0.5 s), so measured at rest: once the sum stands still, killing a worker does not move it.
        total = 'supervisor_connections_total{server="ver"}'

        def settled() -> float:
            for _ in range(10):
                first = scrape(metrics)[total]
                time.sleep(1.2)  # over two report intervals of each worker: a sum that held still is complete
                if scrape(metrics)[total] == first:
                    return first
            raise AssertionError("connections_total never held still at rest")

        at_rest = settled()
        victim = _worker_pids(sp)[2]
        os.kill(victim, signal.SIGKILL)
        sp.wait_for(rf"worker 2 \(pid (?!{victim}\))\d+\) ready")
        assert scrape(metrics)[total] == at_rest  # the dead worker's share (about half) is still in the sum
        assert ctl("--port", str(console), "shutdown").returncode == 0
        assert sp.wait(30) == 0


def test_too_many_worker_deaths_shut_down_in_order_and_exit_1(tmp_path: Path) -> None:
    _write_handler(tmp_path, "v1")
    config = _tree(tmp_path, free_port(), free_port(), more=", max_restarts: 1, restart_window: 60s")
    with SupervisorProcess(config) as sp:
        sp.wait_for(READY)
        for death in range(2):
            pid = _worker_pids(sp)[2]
            os.kill(pid, signal.SIGKILL)
            sp.wait_for(rf"worker 2 \(pid {pid}\) died")
            if death == 0:
                sp.wait_for(rf"worker 2 \(pid (?!{pid})\d+\) ready")
        assert sp.wait(30) == 1
    assert "exit 1: worker processes died more than 1 times in 60s" in sp.output
    assert "shutdown complete" in sp.output


def test_a_rolling_reload_deploys_new_code_with_no_request_lost(tmp_path: Path) -> None:
    _write_handler(tmp_path, "v1")
    metrics, console = free_port(), free_port()
    with SupervisorProcess(_tree(tmp_path, metrics, console)) as sp:
        port = _ports(sp)["ver"]
        with Load(port) as load:
            until(lambda: load.total > 100, what="load flowing")
            _write_handler(tmp_path, "v2")
            _tree(tmp_path, free_port(), console)  # a new metrics port too: read at start only, and said so
            sp.signal(signal.SIGHUP)
            sp.wait_for(r"reload applied: 2 worker\(s\) replaced one at a time")
            until(lambda: load.answers["v2"] > 100, what="v2 answers")
        assert "reload: metrics: changed: it applies when the supervisor is restarted" in sp.output
        assert load.refused == 0
        assert load.failed == []
        assert ask(port).startswith("v2 ")

        # each new worker was ready before its predecessor stopped accepting (the workers' own clocks: one system);
        # the reload answers before the old workers' drains: the workers' lines may come after the answer
        ready, stopping = "supervisor ready:", r"shutting down \(SIGTERM\)"

        def lines(slot: int, what: str) -> list[str]:
            after = sp.output[sp.output.index("reload (SIGHUP): reading") :]
            return re.findall(rf"^(\S+ \S+) INFO supervisor \[w{slot}\]: {what}", after, re.M)

        until(lambda: all(lines(n, ready) and lines(n, stopping) for n in (1, 2)), what="each worker's lines")
        for slot in (1, 2):
            assert lines(slot, ready)[0] <= lines(slot, stopping)[0], sp.output
        # new code that does not import: the canary never serves, the old workers go on, ctl exits 2
        (tmp_path / "ver.py").write_text("def handle(:\n")
        refused = ctl("--port", str(console), "reload")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "the old workers serve on" in refused.stderr
        assert "ver.py" in refused.stderr or "'ver'" in refused.stderr, refused.stderr  # names what does not import
        assert ask(port).startswith("v2 ")
        m = scrape(metrics)
        assert m['supervisor_config_reloads_total{result="success"}'] == 1.0
        assert m['supervisor_config_reloads_total{result="invalid"}'] == 1.0
        sp.signal(signal.SIGTERM)
        assert sp.wait(30) == 0


def test_sigterm_drains_every_worker_and_a_second_one_cuts_the_wait(tmp_path: Path) -> None:
    _write_handler(tmp_path, "v1")
    with SupervisorProcess(_tree(tmp_path, free_port(), free_port())) as sp:
        port = _ports(sp)["web"]
        results: list[bytes] = []

        def get(path: str) -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                    if b"slept" in data:
                        break
                results.append(data)

        threads = [threading.Thread(target=get, args=("/sleep?s=5",)) for _ in range(10)]
        for t in threads:
            t.start()
        until(lambda: _active(sp) >= 10, what="10 in flight")
        sp.signal(signal.SIGTERM)
        until(lambda: _refused(port), timeout=10, what="a new client refused")
        assert results == []  # refused while the requests drain (as with workers: 1), not only once they are done
        assert sp.wait(30) == 0
        for t in threads:
            t.join(10)
        assert len(results) == 10
        assert all(b"200" in r.split(b"\r\n")[0] for r in results), results

    with SupervisorProcess(_tree(tmp_path, free_port(), free_port())) as sp:
        port = _ports(sp)["web"]
        slow = [threading.Thread(target=_slow_get, args=(port,), daemon=True) for _ in range(4)]
        for t in slow:
            t.start()
        until(lambda: _active(sp) >= 4, what="4 in flight")
        sp.signal(signal.SIGTERM)
        sp.wait_for(r"shutdown \(SIGTERM\): stopping 2 worker")
        started = time.monotonic()
        sp.signal(signal.SIGTERM)
        assert sp.wait(30) == 0
        assert time.monotonic() - started < 5.0  # not the 10 s shutdown_timeout nor the 30 s request


def test_the_fleets_shutdown_ends_a_just_accepted_idle_connection_at_once(tmp_path: Path) -> None:
    """A retiring worker (a rolling reload) spares a connection it just accepted for FRESH_WINDOW (1 s): its first
    request may be on the way and the other workers serve on. When every worker stops nobody does: the parent
    says so with its signal (FLEET_STOP), and the connection reads end-of-stream at once, as with workers: 1."""
    _write_handler(tmp_path, "v1")
    with SupervisorProcess(_tree(tmp_path, free_port(), free_port())) as sp:
        port = _ports(sp)["web"]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as fresh:  # connected, sends nothing yet
            until(lambda: _active(sp) == 1, what="a worker accepted it")
            stopping = time.monotonic()
            sp.signal(signal.SIGTERM)
            assert fresh.recv(100) == b""  # end-of-stream, not an answer or a reset
            ended = time.monotonic() - stopping
        assert sp.wait(30) == 0
        sp.wait_for(r"shutting down \(SIGINT: every worker stops\)")
    assert ended < 0.9 * FRESH_WINDOW, ended  # was 1.0 s and more: the worker took it for its retirement


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _slow_get(port: int) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(b"GET /sleep?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(4096)
    except OSError:
        pass


def _active(sp: SupervisorProcess) -> int:
    port = int(re.search(r"metrics listening on http://127.0.0.1:(\d+)", sp.output)[1])  # type: ignore[index]
    return int(scrape(port).get('supervisor_connections_active{server="web"}', 0))


def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    _write_handler(tmp_path, "v1")
    with SupervisorProcess(_tree(tmp_path, free_port(), free_port())) as sp:
        sp.wait_for(READY)
        pids = list(_worker_pids(sp).values())
        sp.signal(signal.SIGKILL)
        sp.wait(10)

        def gone() -> bool:
            for pid in pids:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    continue
                except OSError as exc:
                    if exc.errno != errno.ESRCH:
                        raise
                with open(f"/proc/{pid}/stat") as f:  # a zombie (not reaped: its parent is gone) has exited
                    if f.read().split(")")[-1].split()[0] != "Z":
                        return False
            return True

        until(gone, timeout=15, what=f"workers {pids} exited")


def test_sd_notify_comes_from_the_parent_only(tmp_path: Path) -> None:
    """Every datagram systemd would get is sent by the parent (SO_PASSCRED gives each sender's pid)."""
    _write_handler(tmp_path, "v1")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    notify.settimeout(15)
    received: list[tuple[int, str]] = []

    def next_message() -> str:
        data, ancillary, _, _ = notify.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = next(int.from_bytes(d[:4], "little") for level, kind, d in ancillary if kind == socket.SCM_CREDENTIALS)
        received.append((pid, data.decode()))
        return data.decode()

    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    with SupervisorProcess(_tree(tmp_path, free_port(), free_port()), env=env) as sp:
        assert next_message().startswith("READY=1")
        sp.wait_for(READY)
        sp.signal(signal.SIGHUP)
        assert next_message().startswith("RELOADING=1")
        assert next_message().startswith("READY=1")
        sp.signal(signal.SIGTERM)
        assert next_message().startswith("STOPPING=1")
        assert sp.wait(30) == 0
        parent = sp.proc.pid if sp.proc else 0
    notify.close()
    assert {pid for pid, _ in received} == {parent}, received


def test_a_worker_whose_loop_is_blocked_is_killed_and_replaced(tmp_path: Path) -> None:
    _write_handler(tmp_path, "v1")
    with SupervisorProcess(_tree(tmp_path, free_port(), free_port(), more=", max_loop_lag: 1s")) as sp:
        port = _ports(sp)["ver"]
        before = _worker_pids(sp)
        blocker = socket.create_connection(("127.0.0.1", port), timeout=30)
        blocker.sendall(b"block\n")
        m = sp.wait_for(r"worker (\d) \(pid (\d+)\) sent nothing for [\d.]+s: its event loop is blocked; killing it")
        slot, pid = int(m[1]), int(m[2])
        assert before[slot] == pid
        sp.wait_for(rf"worker {slot} \(pid {pid}\) died: killed by SIGKILL")
        sp.wait_for(rf"worker {slot} \(pid (?!{pid})\d+\) ready")
        assert ask(port).startswith("v1 ")
        blocker.close()
        sp.signal(signal.SIGTERM)
        assert sp.wait(30) == 0


def _pids_started(sp: SupervisorProcess) -> list[int]:
    return [int(p) for p in re.findall(r"worker \d+ \(pid (\d+)\) serving", sp.output)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_failed_canary_with_a_moved_server_changes_nothing(tmp_path: Path) -> None:
    _write_handler(tmp_path, "v1")
    old_port, new_port = free_port(), free_port()
    moved = f"""
        supervisor: {{workers: 2}}
        metrics: {{enabled: false}}
        console: {{port: {free_port()}}}
        servers:
          - {{name: ver, handler: "HANDLER", port: PORT}}
        """
    config = write_config(tmp_path, moved.replace("HANDLER", "ver:handle").replace("PORT", str(old_port)))
    console = int(re.search(r"console: \{port: (\d+)\}", config.read_text())[1])  # type: ignore[index]
    with SupervisorProcess(config) as sp:
        sp.wait_for(READY)
        write_config(tmp_path, moved.replace("HANDLER", "nosuch:handle").replace("PORT", str(new_port)))
        failed = ctl("--port", str(console), "reload")
        assert failed.returncode == 2, failed.stdout + failed.stderr
        with pytest.raises(ConnectionRefusedError):
            ask(new_port)  # the port the reload bound for its canary is closed again
        victim = _worker_pids(sp)[1]
        os.kill(victim, signal.SIGKILL)  # its replacement starts from the running config, on the running socket
        sp.wait_for(rf"worker 1 \(pid (?!{victim}\))\d+\) ready")
        assert ask(old_port).startswith("v1 ")
        sp.signal(signal.SIGTERM)
        assert sp.wait(30) == 0


def test_sigterm_during_a_rolling_reload_stops_every_worker(tmp_path: Path) -> None:
    _write_handler(tmp_path, "v1")
    config = _tree(tmp_path, free_port(), free_port())
    with SupervisorProcess(config) as sp:
        sp.wait_for(READY)
        slow = '  - {name: slow, handler: "tests.apps:sluggish", port: 0, options: {enter: 5}, start_timeout: 30s}\n'
        config.write_text(config.read_text() + slow)
        sp.signal(signal.SIGHUP)
        sp.wait_for(r"worker 1 \(pid \d+\) serving 3 server")  # the canary, entering its slow lifespan
        sp.signal(signal.SIGTERM)
        assert sp.wait(30) == 0
        pids = _pids_started(sp)
    assert len(pids) == 3
    until(lambda: not any(_alive(p) for p in pids), timeout=10, what=f"every worker of {pids} exited")


HOLD = """
import asyncio
import os
import pathlib

RELEASE = pathlib.Path(__file__).with_name("release")


async def handle(reader, writer):
    await reader.readline()
    writer.write(f"held {os.getpid()}\\n".encode())
    await writer.drain()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not RELEASE.exists() and loop.time() < deadline:  # a slow request, in flight until the test lets it end
        await asyncio.sleep(0.05)
    writer.write(f"done {os.getpid()}\\n".encode())
    await writer.drain()
    writer.close()
"""


def _line(sock: socket.socket) -> str:
    """One answer line (the socket's timeout bounds each read; 100 reads at most)."""
    data = b""
    for _ in range(100):
        if data.endswith(b"\n"):
            break
        chunk = sock.recv(100)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data.decode().strip()


def _hold(port: int) -> tuple[int, socket.socket]:
    """A request in flight: the worker that took it (its pid) holds it until the release file appears."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"hold\n")
    held, pid = _line(sock).split()
    assert held == "held"
    return int(pid), sock


def test_a_reload_answers_once_the_new_workers_serve_while_the_old_ones_drain(tmp_path: Path) -> None:
    (tmp_path / "hold.py").write_text(HOLD)
    console = free_port()
    config = write_config(
        tmp_path,
        f"""
        supervisor: {{workers: 2, shutdown_timeout: 20s}}
        metrics: {{enabled: false}}
        console: {{port: {console}}}
        servers:
          - {{name: hold, handler: "hold:handle", port: 0, shutdown_timeout: 20s}}
        """,
    )
    with SupervisorProcess(config) as sp:
        port = _ports(sp)["hold"]
        old = set(_worker_pids(sp).values())
        held: list[tuple[int, socket.socket]] = []
        for _ in range(100):  # until each old worker has one in flight (the kernel picks the worker)
            held.append(_hold(port))
            if {pid for pid, _ in held} == old:
                break
        assert {pid for pid, _ in held} == old
        started = time.monotonic()
        reloaded = ctl("--port", str(console), "reload", timeout=90)
        took = time.monotonic() - started
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        assert "the old ones drain their connections in the background, within 20s" in reloaded.stdout
        assert took < 15, f"the reload answered after {took:.1f}s: it waited for the old workers' drains"
        for _, sock in held:  # answered while every old worker still has its request in flight
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(100)
            sock.settimeout(30)
        assert all(_alive(pid) for pid in old)
        new = set(_worker_pids(sp).values())
        assert len(new) == 2
        assert not new & old
        taker, fresh = _hold(port)  # a new connection goes to a new worker: the old ones stopped accepting
        assert taker in new
        # a shutdown now waits for the draining old workers too, without a second SIGTERM (it would cut their drain)
        sp.signal(signal.SIGTERM)
        sp.wait_for(r"shutdown \(SIGTERM\): stopping 4 worker process\(es\)")
        (tmp_path / "release").touch()
        for pid, sock in [*held, (taker, fresh)]:
            assert _line(sock) == f"done {pid}"  # the in-flight requests complete, on the workers that took them
            sock.close()
        assert sp.wait(30) == 0
    assert "second stop request" not in sp.output
    assert sp.output.count("]: exit 0") == 4


def test_a_retired_worker_that_does_not_end_its_drain_in_time_is_killed(tmp_path: Path) -> None:
    _write_handler(tmp_path, "v1")
    console = free_port()
    config = write_config(
        tmp_path,
        f"""
        supervisor: {{workers: 2, shutdown_timeout: 1s}}
        metrics: {{enabled: false}}
        console: {{port: {console}}}
        servers:
          - {{name: ver, handler: "ver:handle", port: 0}}
        """,
    )
    with SupervisorProcess(config) as sp:
        port = _ports(sp)["ver"]
        blocker = socket.create_connection(("127.0.0.1", port), timeout=30)
        blocker.sendall(b"x\nblock\n")  # answered by the old worker that took it, whose loop then blocks for 60 s
        victim = int(_line(blocker).split()[1])
        reloaded = ctl("--port", str(console), "reload")
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        sp.wait_for(rf"worker \d \(pid {victim}\) still draining after 3s: killing it")
        sp.wait_for(rf"worker \d \(pid {victim}\) retired: killed by SIGKILL")
        assert ask(port).startswith("v1 ")
        blocker.close()
        sp.signal(signal.SIGTERM)
        assert sp.wait(30) == 0


def test_a_slot_removed_and_added_again_keeps_its_restarts(tmp_path: Path) -> None:
    """A reload to fewer workers retires the extra slots' workers (they drain in the background); one back to more
    finds slot 3's restart count where it was: supervisor_worker_restarts_total never goes backwards."""
    _write_handler(tmp_path, "v1")
    metrics, console = free_port(), free_port()
    text = f"""
        supervisor: {{workers: WORKERS}}
        metrics: {{port: {metrics}}}
        console: {{port: {console}}}
        servers:
          - {{name: ver, handler: "ver:handle", port: 0}}
        """
    config = write_config(tmp_path, text.replace("WORKERS", "3"))
    restarts = 'supervisor_worker_restarts_total{worker="3"}'
    with SupervisorProcess(config) as sp:
        assert sp.wait_for(READY)[1] == "3"
        victim = _worker_pids(sp)[3]
        os.kill(victim, signal.SIGKILL)
        sp.wait_for(rf"worker 3 \(pid (?!{victim}\))\d+\) ready")
        until(lambda: scrape(metrics).get(restarts) == 1.0, what="slot 3 restarted once")
        third = _worker_pids(sp)[3]
        write_config(tmp_path, text.replace("WORKERS", "2"))
        shrunk = ctl("--port", str(console), "reload")
        assert shrunk.returncode == 0, shrunk.stdout + shrunk.stderr
        sp.wait_for(rf"worker 3 \(pid {third}\) retired: exit 0")
        assert restarts not in scrape(metrics)
        write_config(tmp_path, text.replace("WORKERS", "3"))
        grown = ctl("--port", str(console), "reload")
        assert grown.returncode == 0, grown.stdout + grown.stderr
        until(lambda: scrape(metrics).get("supervisor_workers") == 3.0, what="3 workers serving")
        assert scrape(metrics)[restarts] == 1.0
        assert ask(_ports(sp)["ver"]).startswith("v1 ")
        sp.signal(signal.SIGTERM)
        assert sp.wait(30) == 0


SLOW_RESTARTS = """
import asyncio
import contextlib

STARTS = 0


async def answer(reader, writer):
    writer.write(b"hello\\n")
    await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def slow_restarts(options):
    global STARTS
    STARTS += 1
    if STARTS > 1:  # a restart: this worker's new generation takes its time to serve
        await asyncio.sleep(float(options["restart"]))
    yield answer
"""


def test_a_restart_in_every_worker_one_after_the_other_is_waited_for(tmp_path: Path) -> None:
    """2 workers x 8.5 s: longer than the console waits for one process (15 s), still answered in full."""
    (tmp_path / "slow.py").write_text(SLOW_RESTARTS)
    console = free_port()
    config = write_config(
        tmp_path,
        f"""
        supervisor: {{workers: 2}}
        metrics: {{enabled: false}}
        console: {{port: {console}}}
        servers:
          - {{name: slow, handler: "slow:slow_restarts", port: 0, options: {{restart: 8.5}}}}
        """,
    )
    with SupervisorProcess(config) as sp:
        sp.wait_for(READY)
        started = time.monotonic()
        restarted = ctl("--port", str(console), "restart", "slow", timeout=60)
        took = time.monotonic() - started
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert "in 2 worker(s)" in restarted.stdout
        assert took > 2 * 8.5  # one worker after the other
        assert len(re.findall(r"\[w\d\]: server slow listening on \S+ \(generation 2\)", sp.output)) == 2
        sp.signal(signal.SIGTERM)
        assert sp.wait(30) == 0


def test_a_server_stopped_by_hand_stays_stopped_in_a_replacement_worker_and_through_a_reload(tmp_path: Path) -> None:
    """As in a single process: `stop NAME` holds until `start NAME`, whatever worker serves meanwhile."""
    _write_handler(tmp_path, "v1")
    metrics, console = free_port(), free_port()

    def web() -> str:
        status = ctl("--port", str(console), "status")
        assert status.returncode == 0, status.stderr
        found = re.search(r"^web\s+(\S+)", status.stdout, re.M)
        assert found, status.stdout
        return found[1]

    with SupervisorProcess(_tree(tmp_path, metrics, console)) as sp:
        _ports(sp)
        assert ctl("--port", str(console), "stop", "web").returncode == 0
        assert web() == "stopped"
        victim = _worker_pids(sp)[1]
        os.kill(victim, signal.SIGKILL)
        until(lambda: _worker_pids(sp)[1] != victim, what="worker 1 replaced and ready")
        assert web() == "stopped"
        reloaded = ctl("--port", str(console), "reload")
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        assert web() == "stopped"
        assert ctl("--port", str(console), "start", "web").returncode == 0
        until(lambda: web() == "running", what="web started in every worker")
        sp.signal(signal.SIGTERM)
        assert sp.wait(30) == 0
    between = sp.output[sp.output.index("stopped by control request") : sp.output.index("starting by control request")]
    assert "]: server web listening" not in between  # no worker served it between the stop and the start


def test_a_server_stopped_in_every_worker_refuses_new_clients_until_started(tmp_path: Path) -> None:
    """As a single process's closed port: refused at once (they waited in a queue nobody accepted from), through a
    replaced worker and a reload that changes its backlog; `start` serves it again on the same port."""
    _write_handler(tmp_path, "v1")
    metrics, console, web = free_port(), free_port(), free_port()

    def config(backlog: int) -> Path:
        fixed = WEB.replace("port: 0", f"port: {web}, backlog: {backlog}")
        return _tree(tmp_path, metrics, console, servers=(VER, fixed))

    def get() -> bytes:
        with socket.create_connection(("127.0.0.1", web), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(100)

    with SupervisorProcess(config(128)) as sp:
        _ports(sp)
        assert get().startswith(b"HTTP/1.1 200")
        assert ctl("--port", str(console), "stop", "web").returncode == 0
        assert _refused(web)
        victim = _worker_pids(sp)[1]
        os.kill(victim, signal.SIGKILL)
        until(lambda: _worker_pids(sp)[1] != victim, what="worker 1 replaced and ready")
        assert _refused(web)
        config(256)
        reloaded = ctl("--port", str(console), "reload")
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        assert _refused(web)
        assert ctl("--port", str(console), "start", "web").returncode == 0
        assert get().startswith(b"HTTP/1.1 200")
        sp.signal(signal.SIGTERM)
        assert sp.wait(30) == 0
    assert "Traceback" not in sp.output


def test_a_stop_and_a_start_at_once_leave_the_socket_as_the_workers_are(tmp_path: Path) -> None:
    """Found in review: a `start` sent while a `stop` was under way made a worker listen on the socket the stop
    then refused (clients refused while `status` said running; thousands of EINVAL tracebacks). One named command
    at a time: whichever comes last wins, and the socket agrees with the workers."""
    _write_handler(tmp_path, "v1")
    metrics, console, web = free_port(), free_port(), free_port()
    config = _tree(tmp_path, metrics, console, servers=(WEB.replace("port: 0", f"port: {web}"),))
    with SupervisorProcess(config) as sp:
        _ports(sp)
        for _ in range(4):
            clients = [ConsoleClient("127.0.0.1", console, timeout=20) for _ in range(2)]
            for c in clients:
                c.connect()
                c.wait_prompt()
            replies: list[object] = []
            threads = [threading.Thread(target=lambda c=c, a=a, r=replies: r.append(c.request(a, "web")))
                       for c, a in zip(clients, ("stop", "start"), strict=True)]  # fmt: skip
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            for c in clients:
                c.close()
            assert len(replies) == 2, replies
            state = re.search(r"^web\s+(\S+)", ctl("--port", str(console), "status").stdout, re.M)
            assert state is not None
            assert _refused(web) == (state[1] == "stopped"), state[1]
            assert ctl("--port", str(console), "start", "web").returncode == 0
        sp.signal(signal.SIGTERM)
        assert sp.wait(30) == 0
    assert "Invalid argument" not in sp.output
    assert "Traceback" not in sp.output


def test_replacement_workers_serve_the_dependents_of_a_server_stopped_by_hand(tmp_path: Path) -> None:
    """`ver` starts after `web`; with `web` stopped, a worker replacing a dead one must not wait for it: it is
    ready and serves `ver`. Both workers are replaced, so the answers can only come from replacements."""
    _write_handler(tmp_path, "v1")
    metrics, console = free_port(), free_port()
    config = _tree(tmp_path, metrics, console, servers=(WEB, VER.replace("port: 0", "port: 0, after: [web]")))
    with SupervisorProcess(config) as sp:
        port = _ports(sp)["ver"]
        assert ctl("--port", str(console), "stop", "web").returncode == 0
        first = _worker_pids(sp)
        for slot, victim in first.items():
            os.kill(victim, signal.SIGKILL)
            until(lambda: _worker_pids(sp)[slot] != victim, what=f"worker {slot} replaced and ready")  # noqa: B023
        replacements = set(_worker_pids(sp).values())
        assert replacements.isdisjoint(first.values())
        answers = {int(ask(port).split()[1]) for _ in range(20)}
        assert answers <= replacements, (answers, replacements)
        status = ctl("--port", str(console), "status")
        assert re.search(r"^web\s+stopped", status.stdout, re.M), status.stdout
        sp.signal(signal.SIGTERM)
        assert sp.wait(30) == 0


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4, after the command's parentheses
                found.append(int(entry.name))
    return found


def _readyz(metrics: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_readyz_is_the_parents_view_of_every_worker_and_sigint_stops_them(tmp_path: Path) -> None:
    _write_handler(tmp_path, "v1")
    metrics, console = free_port(), free_port()
    with SupervisorProcess(_tree(tmp_path, metrics, console)) as sp:
        _ports(sp)
        assert _readyz(metrics) == (200, {"ready": True})
        assert sp.proc is not None
        assert len(_children(sp.proc.pid)) == 2  # the worker processes
        sp.signal(signal.SIGINT)
        assert sp.wait(30) == 0
    assert sp.output.count("]: exit 0") == 2


def test_workers_1_is_one_process(tmp_path: Path) -> None:
    _write_handler(tmp_path, "v1")
    metrics, console = free_port(), free_port()
    with SupervisorProcess(_tree(tmp_path, metrics, console, workers=1)) as sp:
        port = sp.ready()["ver"]
        assert sp.proc is not None
        assert ask(port).split()[1] == str(sp.proc.pid)  # served by the supervisor itself
        assert _children(sp.proc.pid) == []
        assert _readyz(metrics) == (200, {"ready": True})
        sp.signal(signal.SIGTERM)
        assert sp.wait(30) == 0
