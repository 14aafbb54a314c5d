"""What a config says, as frozen dataclasses: the supervisor, metrics, console and server specs, and where in
the YAML each value was written (so the plan, and later a reload, can still point at file:line: key)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

STRATEGIES: Final = ("one_for_one", "one_for_all", "rest_for_one")
RESTART_TYPES: Final = ("permanent", "transient", "temporary")
HANDLER_ERROR_POLICIES: Final = ("log", "restart")
CLIENT_AUTH: Final = ("none", "optional", "required")
LOOPS: Final = ("asyncio", "uvloop")
KINDS: Final = ("stream", "protocol")  # a server's handler kind: asyncio streams, or an asyncio.Protocol
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS: Final = ("text", "json")


@dataclass(frozen=True, slots=True)
class Location:
    """Where a value came from, so later stages (plan, reload) can still point at the YAML."""

    file: str
    line: int
    path: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path}"


@dataclass(frozen=True, slots=True)
class SupervisorSpec:
    strategy: str = "one_for_one"
    max_restarts: int = 10
    restart_window: float = 60.0
    shutdown_timeout: float = 30.0
    loop: str = "asyncio"
    max_loop_lag: float = 5.0  # a loop blocked this long makes /healthz fail (LAG_WINDOW)
    workers: int = 1  # processes serving the same sockets (workers.py); 1: this process serves, no other


@dataclass(frozen=True, slots=True)
class MetricsSpec:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9100


@dataclass(frozen=True, slots=True)
class ConsoleSpec:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 20101
    allow_remote: bool = False
    repl: bool = False


@dataclass(frozen=True, slots=True)
class LoggingSpec:
    level: str = "INFO"  # the root logger's level (--log-level wins)
    format: str = "text"  # the built-in stderr handler's format (--log-format wins)
    # a logging.config.dictConfig mapping: the user's own handlers and formatters instead of the stderr one
    dict_config: Mapping[str, Any] = field(default_factory=dict)
    where: str = field(default="", compare=False)  # "file:line: logging.dict_config", for an error applying it


@dataclass(frozen=True, slots=True)
class BackoffSpec:
    initial: float = 0.1
    factor: float = 2.0
    max: float = 5.0  # with max_restarts 10 and restart_window 60s, the give-up rule stays reachable
    jitter: float = 0.1
    reset_after: float = 10.0


@dataclass(frozen=True, slots=True)
class TlsSpec:
    """Paths as written (the plan resolves them next to the config file and loads them)."""

    cert: str
    key: str
    ca: str = ""  # verify client certificates against these CAs
    client_auth: str = ""  # none | optional | required; "" = required with a ca, else none
    handshake_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    handler: str
    port: int
    kind: str = "stream"  # stream: handle(reader, writer) | protocol: an asyncio.Protocol factory
    host: str = "127.0.0.1"
    unix: str = ""  # a unix socket path instead of host/port
    mode: int | None = None  # the unix socket file's permissions (None: as the umask leaves them)
    tls: TlsSpec | None = None
    restart: str = "permanent"
    on_handler_error: str = "log"
    backoff: BackoffSpec = BackoffSpec()
    shutdown_timeout: float = 5.0
    backlog: int = 1024
    max_connections: int = 10_000  # concurrent handlers; 0: no limit
    idle_timeout: float = 0.0  # close a connection that sent nothing for this long; 0: never
    read_limit: int = 64 * 1024  # StreamReader limit: the longest line or message a client can send
    max_write_buffer: int = 8 * 1024 * 1024  # unsent bytes a connection may hold; 0: no limit
    start_timeout: float = 30.0  # entering the lifespan
    start_retries: int = 5  # failed starts, never having served, before the server is given up on
    after: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    # key -> where it was written; keys left at their default point at the server's own entry
    locations: Mapping[str, Location] = field(default_factory=dict, compare=False, repr=False)

    def where(self, key: str) -> Location:
        # a key not written points at its section (``tls``), else at the server's entry
        found = self.locations.get(key) or self.locations.get(key.partition(".")[0]) or self.locations.get(".")
        # a spec built in code (not read from YAML) has no locations: still name the key
        return found or Location("<config>", 0, f"server '{self.name}'.{key}")


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    servers: tuple[ServerSpec, ...]
    supervisor: SupervisorSpec = SupervisorSpec()
    metrics: MetricsSpec = MetricsSpec()
    console: ConsoleSpec = ConsoleSpec()
    logging: LoggingSpec = LoggingSpec()
    # "metrics", "metrics.port", "console.port", ... -> where it was written (sections and their keys)
    locations: Mapping[str, Location] = field(default_factory=dict, compare=False, repr=False)
    digest: str = field(default="", compare=False)  # sha256 of the file (hex): status, supervisor_config_info

    def where(self, key: str) -> Location:
        """Where ``key`` (e.g. ``metrics.port``) was written, else its section, else the top of the file."""
        section = key.partition(".")[0]
        return self.locations.get(key) or self.locations.get(section) or Location(str(self.path), 1, key)
