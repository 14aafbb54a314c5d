"""The one way a config file becomes a Plan, used alike by ``check``, ``run`` and a reload: read and validate
the file, build the plan, and add the views' own checks (console.host); and how its problems are reported."""

from __future__ import annotations

from supervisor.config import load_config
from supervisor.errors import ConfigError
from supervisor.plan import Plan, make_plan
from supervisor.views import view_problems


def load_plan(path: str) -> Plan:
    """Raises ConfigError with every problem, each ``file:line: key: what to do``."""
    config = load_config(path)
    problems = view_problems(config)
    try:
        plan = make_plan(config)
    except ConfigError as exc:
        raise ConfigError(exc.problems + problems) from None
    if problems:
        raise ConfigError(problems)
    return plan


def problem_report(path: str, problems: list[str], consequence: str) -> list[str]:
    """What ``check`` prints for an invalid config (and a reload logs): every problem, then one summary line."""
    n = len(problems)
    return [*problems, f"supervisor: {n} problem{'s' if n > 1 else ''} in {path}; {consequence}"]
