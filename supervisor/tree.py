"""The one read-only interface every view (metrics, console, status, sd_notify) uses to see the running tree.

Views never touch children, generations or listeners: they read the published immutable snapshot, the plain
counters and the loop guard's lag, wait for changes, and hand control requests to the coordinator's loop.
The Supervisor implements it; a view is typed against this, so it cannot reach further by accident.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from supervisor.address import Address
from supervisor.commands import Command, Result
from supervisor.plan import Plan
from supervisor.state import ServerStats, TreeSnapshot


class Lag(Protocol):
    max_lag: float

    def worst_lag(self) -> float: ...

    def blocked(self) -> bool: ...


class TreeView(Protocol):
    @property
    def plan(self) -> Plan: ...

    @property
    def ready(self) -> asyncio.Future[list[Address]]:
        """The readiness handshake: every bound address once all servers first served (cancelled if never)."""

    @property
    def guard(self) -> Lag: ...

    def snapshot(self) -> TreeSnapshot:
        """The last published snapshot; safe on any thread."""

    async def changed(self) -> TreeSnapshot:
        """The next snapshot, once something changed (on the supervisor's loop)."""

    def counters(self) -> Mapping[str, ServerStats]:
        """Each server's counters, live: read, never write."""

    def now(self) -> float:
        """The supervisor's clock (snapshot times are on it)."""

    def submit(self, command: Command, name: str | None = None) -> concurrent.futures.Future[Result]:
        """Run a control command on the supervisor's loop, from any thread."""


# A view is started before the servers and closed after the last one stopped (metrics, console, sd_notify).
View = Callable[[Plan, TreeView], AbstractAsyncContextManager[object]]
