"""The handler API users write against, and how a configured ``module:attr`` becomes one.

A server's ``handler:`` names either

* a **handler**: ``async def handle(reader, writer) -> None``, called once per connection; or
* a **factory**: ``def make(options) -> handler`` or ``-> async context manager yielding a handler``.
  The factory is called once per server generation (so a restart starts from fresh state) with the
  server's ``options`` mapping. An async context manager is the server's *lifespan*: enter it to set up
  per-server state and background tasks, and it is exited after the generation's connections drained.
  An exception escaping the lifespan (including from a background task in a TaskGroup it owns) is a
  server failure and triggers a restart.

With ``kind: protocol`` it names an ``asyncio.Protocol`` class (one instance per connection), or a factory
``make(options)`` returning a zero-argument protocol factory, or a lifespan yielding one (see protocols.py).

Inside a handler or a lifespan, :func:`current_server` tells which server runs it and whether it is draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeAlias

Handler: TypeAlias = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Factory: TypeAlias = Callable[[Mapping[str, Any]], Any]
ProtocolFactory: TypeAlias = Callable[[], asyncio.BaseProtocol]


@dataclass(slots=True)
class ServerContext:
    """What a handler or lifespan may know about the server generation it runs in."""

    name: str
    generation: int
    options: Mapping[str, Any]
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when this generation stops accepting (shutdown or restart): time to say goodbye."""


_CURRENT: contextvars.ContextVar[ServerContext] = contextvars.ContextVar("supervisor_server")


def current_server() -> ServerContext:
    """The server running the calling handler or lifespan. Raises LookupError outside one."""
    return _CURRENT.get()


def set_current(ctx: ServerContext) -> None:
    # Set in the generation's task before the server starts: asyncio copies the context into each
    # connection's task, so handlers see it without any per-connection work.
    _CURRENT.set(ctx)


def resolve(target: str) -> object:
    """Import ``module:attr``. Raises ImportError/AttributeError with the original message."""
    module_name, _, attr_path = target.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


def is_direct_handler(obj: object) -> bool:
    """True for ``async def handle(reader, writer)``; False for a factory taking ``options``."""
    if not inspect.iscoroutinefunction(obj):
        return False
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


def open_handler(target: object, direct: bool, options: Mapping[str, Any]) -> AbstractAsyncContextManager[Handler]:
    """Enter one generation's handler: call the factory and enter its lifespan, if any."""
    return _open(target, direct, options, _check_handler)


def open_protocol(
    target: object, direct: bool, options: Mapping[str, Any]
) -> AbstractAsyncContextManager[ProtocolFactory]:
    """``kind: protocol``: the Protocol class itself, or what the factory made (or its lifespan yielded)."""
    return _open(target, direct, options, _check_protocol_factory)


@contextlib.asynccontextmanager
async def _open(
    target: object, direct: bool, options: Mapping[str, Any], check: Callable[[Any], None]
) -> AsyncIterator[Any]:
    if direct:
        yield target
        return
    made = target(options)  # type: ignore[operator]
    if inspect.isawaitable(made):
        made = await made
    if hasattr(made, "__aenter__") and hasattr(made, "__aexit__"):
        async with made as entered:
            check(entered)
            yield entered
    else:
        check(made)
        yield made


def is_protocol_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, asyncio.BaseProtocol)


def _check_protocol_factory(factory: object) -> None:
    if not callable(factory) or inspect.iscoroutinefunction(factory):
        raise TypeError(f"the factory gave {factory!r}, expected an asyncio.Protocol class or a zero-argument callable")


def _check_handler(handler: object) -> None:
    call = type(handler).__call__ if callable(handler) else None  # an object with an async __call__
    if not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)):
        raise TypeError(f"the factory gave {handler!r}, expected an async def handle(reader, writer)")


def looks_like_sync_handler(obj: object) -> bool:
    """A plain ``def handle(reader, writer)``: a common slip, better reported at check time than per connection."""
    if inspect.iscoroutinefunction(obj) or not inspect.isfunction(obj):
        return False
    params = list(inspect.signature(obj).parameters.values())
    required = [p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(required) >= 2
