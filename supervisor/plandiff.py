"""What a reload changes: the running servers' plans against a new plan, by server name, on what the user wrote.

Pure (no event loop). Derived data is never compared: ``rank`` (inserting one server must not mark every later
one as changed), ``target`` (the resolved handler; ``handler_path`` is what was written) and ``direct``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from supervisor.plan import Plan, ServerPlan

LOGGER = logging.getLogger("supervisor")

DERIVED = frozenset({"name", "target", "direct", "rank"})
ADDRESS = ("host", "port", "unix")
COMPARED = tuple(f.name for f in dataclasses.fields(ServerPlan) if f.name not in DERIVED)


@dataclass(frozen=True, slots=True)
class PlanDiff:
    unchanged: tuple[str, ...] = ()
    changed: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # name -> the keys that differ
    moved: tuple[str, ...] = ()  # changed, and host or port among them: a new socket first
    added: tuple[str, ...] = ()  # in the new start order
    removed: tuple[str, ...] = ()  # in reverse of the old start order: how they stop
    supervisor: tuple[str, ...] = ()  # keys of the supervisor: section that differ
    views: tuple[str, ...] = ()  # "metrics", "console", "logging": sections that differ (applied at the next start)

    @property
    def empty(self) -> bool:
        return not (self.changed or self.added or self.removed or self.supervisor)


def changed_keys(old: ServerPlan, new: ServerPlan) -> tuple[str, ...]:
    return tuple(k for k in COMPARED if getattr(old, k) != getattr(new, k))


def diff(running: Sequence[ServerPlan], old: Plan, new: Plan) -> PlanDiff:
    """``running``: each server's plan as it runs now (a change that failed to apply keeps its old plan)."""
    before = {p.name: p for p in running}
    after = {p.name: p for p in new.servers}
    changed: dict[str, tuple[str, ...]] = {}
    unchanged: list[str] = []
    for name, plan in after.items():
        if name in before:
            if keys := changed_keys(before[name], plan):
                changed[name] = keys
            else:
                unchanged.append(name)
    sup = tuple(f.name for f in dataclasses.fields(new.supervisor) if _differs(old.supervisor, new.supervisor, f.name))
    views = changed_views(old, new)
    return PlanDiff(
        unchanged=tuple(unchanged),
        changed=changed,
        moved=tuple(n for n, keys in changed.items() if any(k in ADDRESS for k in keys)),
        added=tuple(n for n in after if n not in before),
        removed=tuple(p.name for p in reversed(running) if p.name not in after),
        supervisor=sup,
        views=views,
    )


def changed_views(old: Plan, new: Plan) -> tuple[str, ...]:
    """The sections read at start only (the metrics endpoint, the console, the log's handlers) that differ."""
    return tuple(s for s in ("metrics", "console", "logging") if getattr(old, s) != getattr(new, s))


def warn_views(views: tuple[str, ...]) -> None:
    """What a reload says of ``changed_views`` (one process or workers: N alike): nothing of them is applied."""
    if views:
        LOGGER.warning(
            "reload: %s changed: it applies when the supervisor is restarted (the metrics endpoint and the "
            "console keep their address, the log its handlers)", " and ".join(f"{v}:" for v in views),
        )  # fmt: skip


def _differs(a: object, b: object, key: str) -> bool:
    return bool(getattr(a, key) != getattr(b, key))
