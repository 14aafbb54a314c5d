"""Binding a server's listening socket, once for the server's life: TCP, or a unix socket (a stale socket file
is replaced, ``mode`` is applied, and the file is removed when the socket closes for good). In a worker process
(``supervisor.workers: N``) the parent bound them: :func:`inherit` makes ``bind`` hand out copies of its sockets,
and the unix files stay the parent's to remove."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat

from supervisor.address import Address
from supervisor.plan import ServerPlan

_INHERITED: dict[str, int] = {}  # server name -> a listening socket's fd the parent passed to this worker
_SHARED: list[bool] = []  # [True] in a worker process
_FLEET_STOPS: list[bool] = []  # [True] in a worker whose parent stops every worker (signals.FLEET_STOP)


def inherit(fds: dict[str, int]) -> None:
    """This process is a worker: its servers' listening sockets are these fds, bound and kept by the parent."""
    _INHERITED.update(fds)
    _SHARED[:] = [True]


def release_inherited() -> None:
    """A worker's shutdown has begun: it binds no more copies, and lets the parent's fds go (the copies its
    listeners hold close as each one stops accepting). A socket refuses new clients only once its last
    descriptor is closed: kept to the worker's exit, it queued clients nobody would accept."""
    while _INHERITED:
        os.close(_INHERITED.popitem()[1])


class TakeOne(socket.socket):
    """A worker's copy of a shared listening socket that accepts one connection per event loop iteration.

    asyncio's accept loop takes up to ``backlog`` connections per wake-up: the first worker awake took every one
    of wrk's 32 keep-alive connections and the other worker idled (measured: workers 2 vs 1 on a CPU-bound
    handler 1.02x in two rounds of three). Refusing the second accept of an iteration (EAGAIN: asyncio waits for
    the next readiness) lets every worker's loop compete for each connection. uvloop accepts in libuv, which
    does the same under UV_TCP_SINGLE_ACCEPT=1 (worker_process.py sets it).
    """

    _taken = False

    def accept(self) -> tuple[socket.socket, object]:
        if self._taken:
            raise BlockingIOError(errno.EAGAIN, "one accept per loop iteration (workers share this socket)")
        conn = super().accept()
        self._taken = True
        asyncio.get_running_loop().call_soon(self._again)
        return conn

    def _again(self) -> None:
        self._taken = False


def fleet_stops() -> None:
    """This worker's parent stops every worker at once: nobody will accept on these sockets after its drains."""
    _FLEET_STOPS[:] = [True]


def served_after_drain() -> bool:
    """Another process may go on accepting on this process's sockets after a drain: a worker's, unless the whole
    fleet stops (for a ``stop NAME`` too, and after a parent died: it cannot tell, and sparing costs 1 s at most).
    A connection just accepted, whose first request may be on the way, is then answered rather than sent
    end-of-stream: the client would not know to retry on a fresh connection."""
    return shared() and not _FLEET_STOPS


def shared() -> bool:
    """This process is one of several accepting on each socket (a worker): the socket outlives its drain."""
    return bool(_SHARED)


def bind(plan: ServerPlan) -> socket.socket:
    """A listening, non-blocking socket for ``plan``. OSError names the address and what went wrong."""
    if shared():
        if (fd := _INHERITED.get(plan.name)) is None:  # never a socket of its own: the port is the parent's
            raise OSError(errno.EBADF, "this worker is shutting down: it has let its parent's sockets go")
        # a copy: closing it (a stop, this worker's shutdown) leaves the parent's, and its accept queue, open
        sock = TakeOne(fileno=os.dup(fd))
        sock.setblocking(False)
        return sock
    try:
        return _bind_unix(plan) if plan.unix else _bind_tcp(plan)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror} (while binding {plan.address})") from None


def _bind_tcp(plan: ServerPlan) -> socket.socket:
    family, _, _, _, address = socket.getaddrinfo(
        plan.host, plan.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    # Not socket.create_server(): it leaves proto 0, accepted sockets inherit it, and asyncio sets
    # TCP_NODELAY only when proto is IPPROTO_TCP. Without it every keep-alive response waits ~40 ms
    # for a delayed ACK (Nagle), on asyncio's loop; uvloop sets it regardless.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(plan.backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_unix(plan: ServerPlan) -> socket.socket:
    path = plan.unix
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        sock.bind(path)  # EADDRINUSE: another process bound it since the probe; its file is not ours to remove
        bound = True
        if plan.mode is not None:
            os.chmod(path, plan.mode)
        sock.listen(plan.backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        if bound:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    return sock


def _remove_stale(path: str) -> None:
    """A socket file nobody accepts on (a supervisor that was killed) is replaced; a live one is in use."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, "the path exists and is not a socket; remove it yourself")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: nothing listens on it
        return
    except OSError:
        pass  # a full backlog, a timeout: something is there
    finally:
        probe.close()
    raise OSError(
        errno.EADDRINUSE,
        "another process is listening on this socket file; stop it, or give this server another unix path",
    )


def address_of(sock: socket.socket) -> Address:
    if sock.family == socket.AF_UNIX:
        return Address("", 0, sock.getsockname())
    host, port = sock.getsockname()[:2]
    return Address(host, port)


def identity(sock: socket.socket) -> tuple[int, int] | None:
    """The unix socket file's (device, inode): remove the file at close only if it is still ours."""
    if sock.family != socket.AF_UNIX or shared():
        return None
    st = os.stat(sock.getsockname())
    return st.st_dev, st.st_ino


def remove_file(sock_path: str, ours: tuple[int, int] | None) -> None:
    if ours is None:
        return
    with contextlib.suppress(OSError):
        st = os.stat(sock_path)
        if (st.st_dev, st.st_ino) == ours:
            os.unlink(sock_path)


def close(sock: socket.socket, ours: tuple[int, int] | None) -> None:
    """Close a bound socket for good, and its unix socket file if it is still the one ``identity`` gave."""
    remove_file(sock.getsockname() if sock.family == socket.AF_UNIX else "", ours)
    sock.close()
