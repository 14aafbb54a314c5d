"""The coordinator's event queue entries: what can wake it. Only the coordinator reads them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from supervisor.child import Child
from supervisor.commands import Command
from supervisor.generation import Generation, Reason

if TYPE_CHECKING:
    from supervisor import reload


@dataclass(frozen=True, slots=True)
class Ended:
    child: Child
    gen: Generation | None  # None: the socket could not even be bound
    reason: Reason


@dataclass(frozen=True, slots=True)
class Ready:
    child: Child
    gen: Generation


@dataclass(frozen=True, slots=True)
class Control:
    command: Command
    child: Child
    handled: asyncio.Future[None]  # resolved once the coordinator acted on it


@dataclass(frozen=True, slots=True)
class Reload:
    reload: reload.Reload  # prepared: its plan loaded and diffed, its new sockets bound


Event = Ended | Ready | Control | Reload | None  # None only wakes the loop (stop request, backoff timer)
