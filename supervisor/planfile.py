"""The one way a config file becomes a Plan, used alike by ``check``, ``run`` and a reload: read and validate
the file, build the plan, and add the views' own checks (console.host); and how its problems are reported."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from supervisor.config import load_config, parse_config
from supervisor.errors import ConfigError
from supervisor.plan import Plan, make_plan
from supervisor.spec import Config
from supervisor.views import view_problems


def load_plan(path: str, *, handlers: bool = True) -> Plan:
    """Raises ConfigError with every problem, each ``file:line: key: what to do``."""
    return checked_plan(load_config(path), handlers=handlers)


def plan_from_text(text: str, path: str, digest: str, *, handlers: bool = True) -> Plan:
    """The plan of a config file's text read earlier (config.read_config): a workers parent reads the file once
    and gives its worker processes the very text it checked."""
    return checked_plan(dataclasses.replace(parse_config(text, Path(path)), digest=digest), handlers=handlers)


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
