"""The listening sockets of a parent with ``supervisor.workers: N``: bound once, at start (or by a reload that
adds or moves a server), kept for the parent's life, and closed with their unix socket files. While every worker
has a server stopped (``stop NAME``) its socket refuses new clients, its port kept."""

from __future__ import annotations

import logging
import socket

from supervisor import sockets
from supervisor.errors import SupervisorError
from supervisor.plan import Plan, ServerPlan

LOGGER = logging.getLogger("supervisor")


class ParentSockets(dict[str, socket.socket]):
    """Server name -> its listening socket (a moved server's old one as ``NAME@old`` until a roll is over)."""

    def __init__(self) -> None:
        super().__init__()
        self._files: dict[int, tuple[int, int] | None] = {}  # fd -> its unix socket file, removed at close
        self._refusing: set[str] = set()  # stopped in every worker: not listening (refuse)

    @classmethod
    def bind(cls, plan: Plan) -> ParentSockets:
        """Every server's socket, or SupervisorError (saying what to do) with none left bound."""
        bound = cls()
        try:
            for server in plan.servers:
                bound.adopt(server.name, sockets.bind(server))
        except OSError as exc:
            bound.close()
            raise SupervisorError(
                f"cannot listen: {exc.strerror}; stop what holds that address or pick another port (with workers: N "
                "every socket is bound once, at start); nothing was started"
            ) from None
        return bound

    def adopt(self, name: str, sock: socket.socket) -> None:
        self._refusing.discard(name)  # a reload's new socket for a moved server listens
        self[name] = sock
        self._files[sock.fileno()] = sockets.identity(sock)

    def refuse(self, server: ServerPlan) -> None:
        """Every worker has stopped ``server``: new clients are refused until :meth:`resume`, as a single process's
        closed port refuses them, instead of waiting in a queue nobody accepts from. The socket stops listening
        (shutdown on a listening socket; the clients queued are reset, as at a close) and keeps its port, on which
        it listens again. A fixed TCP port only: Linux gives up an ephemeral port (``port: 0``) at the shutdown,
        and a unix socket cannot listen again (both measured on 6.18); those go on queueing clients. The caller
        makes sure no worker accepts on it (worker_control.py): each accept would fail with EINVAL, in a loop.

        SO_REUSEADDR is off while it refuses: a socket that does not listen lets another one with the option bind
        the port (measured: a second server took it, and our listen() then failed with EADDRINUSE); without it
        ours conflicts with theirs. It is on again before the socket listens (the port's TIME_WAIT connections)."""
        sock = self.get(server.name)
        if sock is None or server.unix or not server.port or server.name in self._refusing:
            return
        try:
            sock.shutdown(socket.SHUT_RD)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        except OSError as exc:
            LOGGER.warning("server %s: cannot refuse new clients while stopped (%s): they wait", server.name, exc)
            return
        self._refusing.add(server.name)

    def resume(self, server: ServerPlan) -> str | None:
        """Listen again on a socket that :meth:`refuse` stopped (``start NAME``), before any worker accepts; None,
        or why it cannot (it then refuses on)."""
        if server.name not in self._refusing or (sock := self.get(server.name)) is None:
            return None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.listen(server.backlog)
        except OSError as exc:
            return f"cannot listen on its port again: {exc.strerror or exc}"
        self._refusing.discard(server.name)
        return None

    def resize(self, server: ServerPlan) -> None:
        """A reload's new backlog: Linux resizes a listening queue in place. A refusing socket takes it when it
        resumes (listen() now would make it listen while stopped)."""
        if server.name not in self._refusing:
            self[server.name].listen(server.backlog)

    def close(self, names: list[str] | None = None) -> None:
        """Close ``names`` (every socket if None) for good."""
        for name in list(self) if names is None else names:
            self._refusing.discard(name)
            sock = self.pop(name)
            sockets.close(sock, self._files.pop(sock.fileno(), None))
