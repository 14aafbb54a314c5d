"""Where a server listens: one type for every address the supervisor shows, logs or hands to a client."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP address, or a unix socket path. ``str()`` is how it is written everywhere: ``127.0.0.1:8080``,
    ``[::1]:8080``, ``unix:/run/app/app.sock``."""

    host: str
    port: int
    path: str = ""  # a unix socket: host and port unused

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url_host(self) -> str:
        """The host as a URL writes it (IPv6 in brackets)."""
        return f"[{self.host}]" if ":" in self.host else self.host
