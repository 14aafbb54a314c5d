"""Wire one plan into a running process: the supervisor, its views, and signal handling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from supervisor.commands import Result
from supervisor.plan import Plan
from supervisor.signals import handle_signals
from supervisor.status import status_table
from supervisor.supervisor import Supervisor
from supervisor.tree import View

LOGGER = logging.getLogger("supervisor")


async def run_plan(
    plan: Plan, views: tuple[View, ...] = (), *, on_hup_reload: bool = True, stopped: frozenset[str] = frozenset()
) -> None:
    """Serve ``plan`` until SIGTERM/SIGINT or a give-up (raises GaveUp). ``on_hup_reload=False`` (a worker process:
    its parent rolls a new worker instead): SIGHUP is logged and ignored. ``stopped``: servers that start stopped."""
    supervisor = Supervisor(plan, stopped=stopped)
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[Result]] = set()

    def reload() -> None:  # SIGHUP: the reload logs what it did, or why it was refused
        if not on_hup_reload:
            LOGGER.warning("SIGHUP received by a worker process: ignored (send it to the parent, pid %d)", os.getppid())
            return
        task = loop.create_task(supervisor.reload("SIGHUP"), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    async with contextlib.AsyncExitStack() as stack:
        for view in views:
            await stack.enter_async_context(view(plan, supervisor))
        with handle_signals(loop, supervisor.request_stop, lambda: status_table(supervisor), reload):
            await supervisor.serve()
