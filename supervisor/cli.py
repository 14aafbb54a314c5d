"""Command line: the only module that decides exit codes and calls sys.exit."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import resource
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from supervisor import __version__, logs, pidfile
from supervisor.errors import ConfigError, GaveUp, SupervisorError
from supervisor.plan import Plan
from supervisor.planfile import load_plan, problem_report
from supervisor.spec import LOG_FORMATS, LOG_LEVELS

EXIT_OK = 0
EXIT_FAILURE = 1  # gave up after too many restarts, or an unexpected error
EXIT_USAGE = 2  # invalid config or command line: nothing was started

EXIT_GRACE = 1.0  # seconds leftover tasks get to unwind once the supervisor has stopped
FD_RESERVE = 64  # file descriptors beyond the connections: listeners, metrics, console, logging, imports

LOGGER = logging.getLogger("supervisor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="supervisor", description="Supervise asyncio TCP servers from one YAML file.")
    parser.add_argument("--version", action="version", version=f"supervisor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run every server in CONFIG until SIGTERM/SIGINT")
    run.add_argument("config", help="path to the YAML config")
    run.add_argument("--log-level", choices=LOG_LEVELS, help="the root logger's level (default: logging.level, INFO)")
    run.add_argument(
        "--pidfile", metavar="PATH",
        help="lock file holding the pid (default: under $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR or /tmp, named for "
        "the config); a second run of the same config exits 2",
    )  # fmt: skip
    run.add_argument(
        "--log-format", choices=LOG_FORMATS,
        help="text or json: one object per line (ts, level, logger, message, server, generation, exc); "
        "default: logging.format, text",
    )  # fmt: skip
    check = sub.add_parser("check", help="validate CONFIG and print the plan; exit 0 or 2")
    check.add_argument("config", help="path to the YAML config")
    _add_ctl(sub)
    return parser


def _add_ctl(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from supervisor import ctl_cli

    p = sub.add_parser(
        "ctl",
        help="run a console command against a running supervisor; exit 0, 1 if it failed, 2 if invalid",
        description="Run a console command (through the telnet console) and print plain text.",
    )
    ctl_cli.add_arguments(p)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage error
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    if args.command == "ctl":
        return run_ctl(args)
    try:
        plan = load_plan(args.config)
    except ConfigError as exc:
        print("\n".join(problem_report(args.config, exc.problems, "nothing was started")), file=sys.stderr)
        return EXIT_USAGE
    if args.command == "check":
        print("\n".join(plan.table()))
        print(f"{args.config}: OK, {len(plan.servers)} server(s)")
        return EXIT_OK
    path = Path(args.pidfile) if args.pidfile else pidfile.default_path(args.config)
    try:
        # before anything is bound or logged: one supervisor per config
        with pidfile.held(path, args.config, required=bool(args.pidfile)) as held:
            if (problem := _setup_logging(plan, args.log_level, args.log_format)) is not None:
                print("\n".join(problem_report(args.config, [problem], "nothing was started")), file=sys.stderr)
                return EXIT_USAGE
            for warning in plan.warnings:  # what `check` prints under its table: runnable, but probably not meant
                LOGGER.warning("%s", warning)
            LOGGER.log(logging.INFO if held.locked else logging.WARNING, "%s", held.line)
            return run(plan)
    except pidfile.AlreadyRunningError as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _setup_logging(plan: Plan, level: str | None, fmt: str | None) -> str | None:
    """Apply the command line over the config's ``logging:`` section; a problem (``file:line: key: ...``) or None."""
    spec = plan.logging
    if spec.dict_config and fmt:
        return (
            f"{spec.where}: --log-format does not apply: this mapping's formatters decide the format; drop "
            "--log-format, or remove dict_config to use the built-in text/json formats"
        )
    try:
        logs.setup(level or (None if spec.dict_config else spec.level), fmt or spec.format, 0, spec.dict_config)
    except (ValueError, TypeError, AttributeError, ImportError) as exc:  # what dictConfig raises for a bad mapping
        cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        return f"{spec.where}: {exc}{cause}; fix the mapping (it is logging.config.dictConfig's schema)"
    return None


def run(plan: Plan, main: Coroutine[Any, Any, None] | None = None) -> int:
    """Run ``main`` (default: this process serves ``plan`` with its views) to its end; the exit code."""
    _raise_open_files_limit(plan)
    if plan.supervisor.loop == "uvloop":
        import uvloop

        new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    else:
        new_loop = asyncio.new_event_loop
    if main is None:
        main = _serve(plan)
    try:
        _run_loop(new_loop(), main)
    except GaveUp as exc:
        LOGGER.critical("exit 1: %s", exc)
        return EXIT_FAILURE
    except SupervisorError as exc:  # a view could not start (port taken): nothing was served
        LOGGER.critical("exit 1: %s", exc)
        return EXIT_FAILURE
    except Exception:
        LOGGER.critical("exit 1: unexpected error", exc_info=True)
        return EXIT_FAILURE
    LOGGER.info("exit 0")
    return EXIT_OK


async def _serve(plan: Plan) -> None:
    from supervisor.views import enabled_views

    if plan.supervisor.workers > 1:  # this process binds the sockets and keeps the worker processes serving them
        from supervisor.workers import run_parent

        await run_parent(plan, enabled_views(plan))
        return
    from supervisor.app import run_plan

    await run_plan(plan, enabled_views(plan))


def _raise_open_files_limit(plan: Plan) -> None:
    """Every connection is a file descriptor: take the hard limit (as Go's runtime does), warn if still short.

    The soft limit is often 1024 while the hard one is far higher; a server at its max_connections would
    otherwise hit EMFILE long before any bound of ours.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
        else:
            if target != soft:
                LOGGER.info("open-files limit raised from %d to %d (the hard limit)", soft, target)
                soft = target
    wanted = sum(s.max_connections for s in plan.servers) + FD_RESERVE
    if all(s.max_connections for s in plan.servers) and wanted > soft:
        LOGGER.warning(
            "the servers may hold %d connections (the sum of max_connections) but the process may open only %d "
            "files: past that, accepts fail with EMFILE; raise LimitNOFILE= / ulimit -n or lower max_connections",
            wanted - FD_RESERVE, soft,
        )  # fmt: skip


def _run_loop(loop: asyncio.AbstractEventLoop, main: Coroutine[Any, Any, None]) -> None:
    """Like asyncio.run(), except that tasks ignoring cancellation cannot keep the process alive.

    asyncio.run() cancels what is left at exit and then waits for it without a bound: one handler that
    swallows CancelledError in a loop would turn SIGTERM into SIGKILL. The supervisor has already
    bounded its own shutdown; here we give leftovers one grace period and leave.
    """
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    finally:
        try:
            left = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in left:
                task.cancel()
            if left:
                _, stuck = loop.run_until_complete(asyncio.wait(left, timeout=EXIT_GRACE))
                if stuck:
                    names = ", ".join(sorted(t.get_name() for t in stuck)[:5])
                    LOGGER.error(
                        "%d task(s) ignored cancellation, exiting without them: %s "
                        "(a handler that catches CancelledError and carries on; the drain warnings above name "
                        "its server)",
                        len(stuck), names,
                    )  # fmt: skip
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def run_ctl(args: argparse.Namespace) -> int:
    """``supervisor ctl``: 0 when the command succeeded (or had nothing to do: ``already stopped``), 1 when it
    failed on a server or no console answered, 2 when the request was invalid and nothing was done (usage,
    unknown server names, a reload whose config has problems: the supervisor runs on unchanged)."""
    from supervisor import ctl_cli

    outcome = ctl_cli.main(args)
    return {ctl_cli.Outcome.OK: EXIT_OK, ctl_cli.Outcome.FAILED: EXIT_FAILURE}.get(outcome, EXIT_USAGE)
