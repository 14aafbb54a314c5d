"""Every exception the supervisor raises on purpose, in one place (no import loops)."""

from __future__ import annotations


class SupervisorError(Exception):
    """Base class for errors the CLI turns into an exit code and a message."""


class ConfigError(SupervisorError):
    """The config (or a command line argument) is invalid: exit code 2, nothing started.

    ``problems`` holds one fully formatted line per problem
    (``configs/x.yaml:12: servers[1].port: expected an integer 0-65535, got 'http'``).
    """

    def __init__(self, problems: list[str], partial: object = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.partial = partial  # the config as far as it could be read (a spec.Config), for more checks in one pass


class ViewError(SupervisorError):
    """A view could not start (a port is taken, the console did not come up): exit 1, no server was started."""


class GaveUp(SupervisorError):  # noqa: N818 - "gave up" is the event operators grep for
    """Restart intensity exceeded: the supervisor shut down in order and exits 1."""


class StopServer(Exception):  # noqa: N818 - it is a request, not an error
    """Raise from a handler or a lifespan to stop the server normally.

    A ``permanent`` server is restarted anyway; ``transient`` and ``temporary`` servers stay stopped.
    """


class IdleTimeout(TimeoutError):  # noqa: N818 - reads as what happened, like TimeoutError
    """Raised into a handler's read when its client sent nothing for ``idle_timeout`` in the middle of a message."""


class StartTimeout(Exception):  # noqa: N818 - it reads as what happened
    """A server's lifespan did not finish entering within ``start_timeout``."""
