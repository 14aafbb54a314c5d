"""Who may reach what, in one place: the console's loopback rule, the ports the console takes, and probing
whether a local port is free (aiomonitor cannot report a failed bind itself)."""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable

from supervisor.errors import ViewError
from supervisor.spec import ConsoleSpec


def console_ports(spec: ConsoleSpec) -> list[tuple[int, str]]:
    """Every port the console binds, with what it is for: telnet, aiomonitor's web UI, and the REPL if on."""
    ports = [(spec.port, "telnet, console.port"), (spec.port + 1, "web UI, console.port + 1")]
    if spec.repl:
        ports.append((spec.port + 2, "Python REPL, console.port + 2"))
    return ports


def remote_console_problem(spec: ConsoleSpec) -> str | None:
    """Why this console must not start (a non-loopback host without ``allow_remote``), or None."""
    if not spec.enabled or spec.allow_remote or is_loopback(spec.host):
        return None
    return (
        f"'{spec.host}' is not a loopback address, and the console (and its web UI on console.port + 1) can stop "
        "servers and cancel tasks without any authentication; use 127.0.0.1, or set console.allow_remote: true "
        "if the network is trusted"
    )


def is_loopback(host: str) -> bool:
    """True if every address ``host`` stands for is a loopback address (``localhost`` is looked up)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def check_ports_free(host: str, ports: Iterable[tuple[int, str]], what: str) -> None:
    """Raise ViewError if any of ``ports`` on ``host`` is already listened on.

    aiomonitor cannot report a failed bind: a busy web UI port makes its start hang forever and a busy
    telnet port is silently skipped (platform-facts P4), so the console checks its ports first.
    """
    for port, role in ports:
        try:
            free = port_is_free(host, port)
        except OSError as exc:
            raise ViewError(f"{what}: cannot listen on {host}:{port} ({role}): {exc.strerror or exc}") from None
        if not free:
            raise ViewError(
                f"{what}: {host}:{port} is already in use ({role}); pick another console.port or free that port"
            )


def port_is_free(host: str, port: int) -> bool:
    """Whether a listening socket could be bound to ``host:port`` now (SO_REUSEADDR, like the servers use)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    except OSError:
        return False
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True
