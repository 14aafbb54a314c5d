"""Wire one plan into a running process: the supervisor, its views, and signal handling."""

from __future__ import annotations

import asyncio
import contextlib

from supervisor.commands import Result
from supervisor.plan import Plan
from supervisor.signals import handle_signals
from supervisor.status import status_table
from supervisor.supervisor import Supervisor
from supervisor.tree import View


async def run_plan(plan: Plan, views: tuple[View, ...] = ()) -> None:
    """Serve ``plan`` until SIGTERM/SIGINT or a give-up (raises GaveUp)."""
    supervisor = Supervisor(plan)
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[Result]] = set()

    def reload() -> None:  # SIGHUP: the reload logs what it did, or why it was refused
        task = loop.create_task(supervisor.reload("SIGHUP"), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    async with contextlib.AsyncExitStack() as stack:
        for view in views:
            await stack.enter_async_context(view(plan, supervisor))
        with handle_signals(loop, supervisor.request_stop, lambda: status_table(supervisor), reload):
            await supervisor.serve()
