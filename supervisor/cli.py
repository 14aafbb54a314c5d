"""Command line: the only module that decides exit codes and calls sys.exit."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from supervisor import __version__
from supervisor.config import load_config
from supervisor.errors import ConfigError, GaveUp
from supervisor.plan import Plan, make_plan

EXIT_OK = 0
EXIT_FAILURE = 1  # gave up after too many restarts, or an unexpected error
EXIT_USAGE = 2  # invalid config or command line: nothing was started

LOGGER = logging.getLogger("supervisor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="supervisor", description="Supervise asyncio TCP servers from one YAML file.")
    parser.add_argument("--version", action="version", version=f"supervisor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run every server in CONFIG until SIGTERM/SIGINT")
    run.add_argument("config", help="path to the YAML config")
    run.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    check = sub.add_parser("check", help="validate CONFIG and print the plan; exit 0 or 2")
    check.add_argument("config", help="path to the YAML config")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage error
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    try:
        plan = make_plan(load_config(args.config))
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        n = len(exc.problems)
        print(f"supervisor: {n} problem{'s' if n > 1 else ''} in {args.config}; nothing was started", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "check":
        print("\n".join(plan.table()))
        print(f"{args.config}: OK, {len(plan.servers)} server(s)")
        return EXIT_OK
    _setup_logging(args.log_level)
    return run(plan)


def run(plan: Plan) -> int:
    from supervisor.app import run_plan

    try:
        if plan.supervisor.loop == "uvloop":
            import uvloop

            uvloop.run(run_plan(plan))
        else:
            asyncio.run(run_plan(plan))
    except GaveUp as exc:
        LOGGER.critical("exit 1: %s", exc)
        return EXIT_FAILURE
    except Exception:
        LOGGER.critical("exit 1: unexpected error", exc_info=True)
        return EXIT_FAILURE
    LOGGER.info("exit 0")
    return EXIT_OK


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
