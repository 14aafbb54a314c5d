"""The one way a config file becomes a Plan, used alike by ``check``, ``run`` and a reload: read and validate
the file, build the plan, and add the views' own checks (console.host); and how its problems are reported."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from supervisor.config import load_config, parse_config
from supervisor.errors import ConfigError
from supervisor.handler_checks import resolve_handler
from supervisor.plan import Plan, line_of, make_importable, make_plan
from supervisor.spec import Config
from supervisor.values import MAX_PROBLEMS, capped
from supervisor.views import view_problems


def load_plan(path: str, *, handlers: bool = True) -> Plan:
    """Raises ConfigError with every problem, each ``file:line: key: what to do``."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise with_handler_problems(exc, handlers=handlers) from None
    return checked_plan(config, handlers=handlers)


def plan_from_text(text: str, path: str, digest: str, *, handlers: bool = True) -> Plan:
    """The plan of a config file's text read earlier (config.read_config): a workers parent reads the file once
    and gives its worker processes the very text it checked."""
    try:
        config = parse_config(text, Path(path))
    except ConfigError as exc:
        raise with_handler_problems(exc, handlers=handlers) from None
    return checked_plan(dataclasses.replace(config, digest=digest), handlers=handlers)


def with_handler_problems(exc: ConfigError, *, handlers: bool) -> ConfigError:
    """A file with problems is not planned, but its well-written servers' handlers are still imported, so one
    pass reports a typo in one server's entry and a module that does not import in another's."""
    config = exc.partial
    if not handlers or not isinstance(config, Config) or len(exc.problems) >= MAX_PROBLEMS:
        return exc
    make_importable(config)
    more: list[str] = []
    for spec in config.servers:
        entry = spec.where(".").path  # "servers[2]": a server with problems of its own is left to them
        if spec.handler and not any(f": {entry}." in p or f": {entry}: " in p for p in exc.problems):
            resolve_handler(spec, more)
    return ConfigError(capped(sorted(exc.problems + more, key=line_of))) if more else exc


def checked_plan(config: Config, *, handlers: bool = True) -> Plan:
    problems = view_problems(config)
    try:
        plan = make_plan(config, handlers=handlers)
    except ConfigError as exc:
        raise ConfigError(exc.problems + problems) from None
    if problems:
        raise ConfigError(problems)
    return plan


def problem_report(path: str, problems: list[str], consequence: str) -> list[str]:
    """What ``check`` prints for an invalid config (and a reload logs): every problem, then one summary line."""
    n = len(problems)
    return [*problems, f"supervisor: {n} problem{'s' if n > 1 else ''} in {path}; {consequence}"]
