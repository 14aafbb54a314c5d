"""Supervised multi-server process manager for asyncio TCP servers."""

from __future__ import annotations

from supervisor.config import Config, load_config
from supervisor.errors import ConfigError, GaveUp, IdleTimeout, StartTimeout, StopServer
from supervisor.handler import ServerContext, current_server
from supervisor.plan import Plan, make_plan
from supervisor.supervisor import Supervisor

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "GaveUp",
    "IdleTimeout",
    "Plan",
    "ServerContext",
    "StartTimeout",
    "StopServer",
    "Supervisor",
    "__version__",
    "current_server",
    "load_config",
    "make_plan",
]
