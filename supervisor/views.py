"""Which read-only views of the running tree a config turns on, and the checks they need before anything starts.

A view is an async context manager entered before the servers start and exited after the last one stopped
(``app.run_plan``). The order matters: views close in reverse, so the metrics endpoint, entered first, is
closed last and Prometheus can still scrape while the servers drain.

This module imports neither aiomonitor nor prometheus_client, so ``supervisor check`` stays fast.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterable

from supervisor.app import View
from supervisor.config import Config
from supervisor.errors import SupervisorError
from supervisor.plan import Plan


class ViewError(SupervisorError):
    """A view could not start (a port is taken, the console did not come up): exit 1, no server was started."""


def view_problems(config: Config) -> list[str]:
    """Config problems of the views, one formatted line each (``file:line: key: what to do``)."""
    c = config.console
    if c.enabled and not c.allow_remote and not is_loopback(c.host):
        return [
            f"{config.where('console.host')}: '{c.host}' is not a loopback address, and the console (and its web UI "
            "on console.port + 1) can stop servers and cancel tasks without any authentication; "
            "use 127.0.0.1, or set console.allow_remote: true if the network is trusted"
        ]
    return []


def enabled_views(plan: Plan) -> tuple[View, ...]:
    """The views ``plan`` asks for, metrics first so that it is closed last."""
    views: list[View] = []
    if plan.metrics.enabled:
        from supervisor.metrics import metrics_view

        views.append(metrics_view)
    if plan.console.enabled:
        from supervisor.console import console_view

        views.append(console_view)
    if os.environ.get("NOTIFY_SOCKET"):  # started by systemd with Type=notify
        from supervisor.notify import notify_view

        views.append(notify_view)
    return tuple(views)


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
