"""Checking a server's ``handler: module:attr`` at plan time: import it, walk to the attribute, and make sure the
server can call it the way it will -- as ``handle(reader, writer)`` or as a factory taking the options --
reporting every failure as a located problem, never a traceback."""

from __future__ import annotations

import difflib
import importlib
import inspect

from supervisor.handler import is_direct_handler, is_protocol_class, looks_like_sync_handler
from supervisor.spec import ServerSpec
from supervisor.values import clip


def resolve_handler(spec: ServerSpec, problems: list[str]) -> tuple[object, bool] | None:
    where = spec.where("handler")
    module_name, _, attr = spec.handler.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(f"{missing}.")):
            problems.append(
                f"{where}: cannot import module '{module_name}' ({exc}); "
                "check the name, and that it is on PYTHONPATH or next to the config file"
            )
        else:  # the module exists but one of its own imports is missing
            problems.append(f"{where}: importing '{module_name}' raised ModuleNotFoundError: {clip(str(exc), 200)}")
        return None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's module raised while importing: report
        problems.append(f"{where}: importing '{module_name}' raised {type(exc).__name__}: {clip(str(exc), 200)}")
        return None
    target: object = module
    owner = f"module '{module_name}'"
    walked: list[str] = []
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            problems.append(f"{where}: {owner} has no attribute '{part}'{_attr_hint(target, part)}")
            return None
        except Exception as exc:  # noqa: BLE001 - a property or __getattr__ of the user's code raised
            problems.append(
                f"{where}: getting '{part}' from {owner} raised {type(exc).__name__}: {clip(str(exc), 200)}"
            )
            return None
        walked.append(part)
        owner = f"'{module_name}:{'.'.join(walked)}'"
    if spec.kind == "protocol":
        return _protocol_target(spec, target, problems)
    if is_protocol_class(target):
        problems.append(
            f"{where}: '{spec.handler}' is an asyncio.Protocol class; add 'kind: protocol' to this server, "
            "or name an async def handle(reader, writer)"
        )
        return None
    if not callable(target):
        problems.append(
            f"{where}: '{spec.handler}' is not callable (it is of type {type(target).__name__}); "
            "name an async def handle(reader, writer) or a factory taking options"
        )
        return None
    if looks_like_sync_handler(target):
        problems.append(
            f"{where}: '{spec.handler}' takes (reader, writer) but is not a coroutine function; "
            "declare it with async def"
        )
        return None
    direct = is_direct_handler(target)
    if (wrong := _misfit(target, direct)) is not None:
        problems.append(f"{where}: '{spec.handler}' {wrong}")
        return None
    if direct and spec.options:
        problems.append(
            f"{spec.where('options')}: '{spec.handler}' is a plain handler and takes no options; "
            "remove 'options' or point 'handler' at a factory"
        )
    return target, direct


# keys of the stream kind's own reader and writer: a protocol owns its buffers (idle_timeout applies to both)
STREAM_ONLY = ("read_limit", "max_write_buffer")


def _protocol_target(spec: ServerSpec, target: object, problems: list[str]) -> tuple[object, bool] | None:
    where = spec.where("handler")
    for key in STREAM_ONLY:
        if key in spec.locations:
            problems.append(
                f"{spec.where(key)}: '{key}' applies to kind stream only (a protocol owns its buffers and "
                "flow: use pause_writing()/resume_writing() and bound what you buffer); remove it"
            )
    if is_protocol_class(target):
        if spec.options:
            problems.append(
                f"{spec.where('options')}: '{spec.handler}' is a Protocol class and takes no options; "
                "remove 'options' or point 'handler' at a factory make(options)"
            )
        return target, True
    if inspect.iscoroutinefunction(target) or not callable(target):
        problems.append(
            f"{where}: '{spec.handler}' is not usable with kind protocol; name an asyncio.Protocol class or a "
            "factory make(options) returning a protocol factory (or remove 'kind: protocol' for a stream handler)"
        )
        return None
    if not _takes(target, 1):
        problems.append(
            f"{where}: '{spec.handler}' is called with one argument, the server's options, but cannot take "
            f"it{_signature(target)}; make it def make(options)"
        )
        return None
    return target, False


def _misfit(target: object, direct: bool) -> str | None:
    """Why the server cannot call ``target`` the way it will (with (reader, writer), or as a factory with the
    options), by signature alone; None if it can, or if it cannot be told."""
    if direct:
        return None if _takes(target, 2) else f"cannot take (reader, writer){_signature(target)}; fix its parameters"
    if isinstance(target, type):
        lifespan = hasattr(target, "__aenter__") and hasattr(target, "__aexit__")
        call = target.__call__  # the class's own, else type.__call__ (not a coroutine function)
        if not (lifespan or (inspect.iscoroutinefunction(call) and _takes(call, 3))):
            return (
                "is a class, so it is used as a factory, but its instances are neither async context managers "
                "nor have an async def __call__(self, reader, writer); add one of those, or name a function"
            )
        if not _takes(target, 1):
            return (
                f"is a class, so it is called with the server's options, but it cannot take them{_signature(target)}; "
                "give its __init__ an options parameter"
            )
    elif not _takes(target, 1):
        return (
            f"is called with one argument, the server's options, but cannot take it{_signature(target)}; "
            "make it def make(options) (a factory) or async def handle(reader, writer)"
        )
    return None


def _takes(target: object, n: int) -> bool:
    """Whether ``target`` accepts ``n`` positional arguments (True if its signature cannot be read)."""
    try:
        signature = inspect.signature(target)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a builtin without one
        return True
    try:
        signature.bind(*range(n))
    except TypeError:
        return False
    return True


def _signature(target: object) -> str:
    try:
        return f" (its signature is {clip(str(inspect.signature(target)), 120)})"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""


def _attr_hint(owner: object, attr: str) -> str:
    close = difflib.get_close_matches(attr, [n for n in dir(owner) if not n.startswith("_")], n=1)
    return f"; did you mean '{close[0]}'?" if close else ""
