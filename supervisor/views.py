"""Which read-only views of the running tree a config turns on, and the checks they need before anything starts.

A view is an async context manager entered before the servers start and exited after the last one stopped
(``app.run_plan``), reading the tree through ``tree.TreeView``. The order matters: views close in reverse, so
the metrics endpoint, entered first, is closed last and Prometheus can still scrape while the servers drain.

This module imports neither aiomonitor nor prometheus_client, so ``supervisor check`` stays fast.
"""

from __future__ import annotations

import os

from supervisor.access import remote_console_problem
from supervisor.plan import Plan
from supervisor.spec import Config
from supervisor.tree import View


def view_problems(config: Config) -> list[str]:
    """Config problems of the views, one formatted line each (``file:line: key: what to do``)."""
    if (problem := remote_console_problem(config.console)) is not None:
        return [f"{config.where('console.host')}: {problem}"]
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
