"""The listening sockets of a parent with ``supervisor.workers: N``: bound once, at start (or by a reload that
adds or moves a server), kept for the parent's life, and closed with their unix socket files."""

from __future__ import annotations

import socket

from supervisor import sockets
from supervisor.errors import SupervisorError
from supervisor.plan import Plan


class ParentSockets(dict[str, socket.socket]):
    """Server name -> its listening socket (a moved server's old one as ``NAME@old`` until a roll is over)."""

    def __init__(self) -> None:
        super().__init__()
        self._files: dict[int, tuple[int, int] | None] = {}  # fd -> its unix socket file, removed at close

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
        self[name] = sock
        self._files[sock.fileno()] = sockets.identity(sock)

    def close(self, names: list[str] | None = None) -> None:
        """Close ``names`` (every socket if None) for good."""
        for name in list(self) if names is None else names:
            sock = self.pop(name)
            sockets.close(sock, self._files.pop(sock.fileno(), None))
