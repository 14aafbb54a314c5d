"""The operator console: aiomonitor on ``console.host:port`` (telnet; its web UI on port + 1) with supervisor commands.

``status``, ``restart NAME``, ``stop NAME``, ``start NAME``, ``reload``, ``shutdown``, plus aiomonitor's own
(``ps``, ``where``, ``stacktrace``, ``help``...). aiomonitor runs its telnet server on a thread with its own event
loop, so the command bodies never touch the tree: they read it through ``tree.TreeView`` (the immutable snapshot and the
plain-int counters), and they *post* control requests with ``TreeView.submit()``, which the supervisor's loop runs.

A hidden ``ctl NONCE ACTION [NAME] [--json]`` command answers ``supervisor ctl`` with one framed line,
``ctl-result NONCE {"ok": ..., "text": ...}``, so the client needs no screen scraping (see ctl.py).

Resource handling: the monitor is started and closed from short-lived daemon threads with a deadline. aiomonitor
blocks forever in ``start()`` if its UI thread dies before it is ready, and ``close()`` joins a thread that can wait
on an open REPL session (platform-facts P3, P4): neither may hang the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import click
from aiohttp.web_exceptions import NotAppKeyWarning

from supervisor.access import check_ports_free, console_ports, is_loopback, port_is_free, remote_console_problem
from supervisor.commands import NAMED, Command, Result, parse
from supervisor.control import CONTROL_TIMEOUT, RELOAD_TIMEOUT
from supervisor.errors import ConfigError, ViewError
from supervisor.plan import Plan
from supervisor.status import status_json, status_table
from supervisor.tree import TreeView

with warnings.catch_warnings():
    # aiomonitor 0.7.1 imports click.parser.split_arg_string, deprecated in Click 8.2 (P10); pinned click<9
    warnings.filterwarnings("ignore", "Importing 'parser.split_arg_string' is deprecated", DeprecationWarning)
    import aiomonitor
    from aiomonitor.termui.commands import auto_async_command_done, auto_command_done, custom_help_option

LOGGER = logging.getLogger("supervisor")

START_TIMEOUT = 5.0  # aiomonitor starts in 1-2 ms; past this its UI thread died (P4, P11)
CLOSE_TIMEOUT = 5.0  # it closes in 1-10 ms; past this a session is stuck and the thread is left behind
CTL_RESULT = "ctl-result"
PROMPT = "supervisor >>> "
QUIET_LOGGERS = ("prompt_toolkit.contrib.telnet", "aiomonitor.monitor")

F = TypeVar("F", bound=Callable[..., Any])


def _typed(decorator: object) -> Callable[[F], F]:
    return cast(Callable[[F], F], decorator)


# aiomonitor is untyped; these keep mypy --strict honest about what the decorators do
_done = _typed(auto_command_done)
_async_done = _typed(auto_async_command_done)
_help = _typed(custom_help_option)


def _command(name: str, *, hidden: bool = False, doc: str | None = None) -> Callable[[F], F]:
    return _typed(aiomonitor.monitor_cli.command(name=name, hidden=hidden, help=doc))


class SupervisorMonitor(aiomonitor.Monitor):  # type: ignore[misc]  # aiomonitor is untyped
    """The monitor, knowing which supervisor its commands act on (several may run in one test process)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tree: TreeView, **kwargs: Any) -> None:
        super().__init__(loop, **kwargs)
        self.tree = tree
        self.prompt = PROMPT


# -- what the commands do (UI thread) -------------------------------------------------------------------------------


async def execute(tree: TreeView, action: str, name: str | None, *, as_json: bool = False) -> Result:
    """Run one action from the UI thread. Control actions are posted to the supervisor's loop, never done here."""
    command = parse(action, name)
    if isinstance(command, Result):
        return command
    if command is Command.STATUS:
        return Result(True, status_json(tree) if as_json else "\n".join(status_table(tree)))
    try:
        future = tree.submit(command, name)
    except RuntimeError:  # not started yet, or its loop is gone
        return Result(False, "the supervisor is not running")
    wait = RELOAD_TIMEOUT if command is Command.RELOAD else CONTROL_TIMEOUT + 5.0
    what = " ".join(filter(None, (action, name)))
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), wait)
    except TimeoutError:
        return Result(False, f"{what}: no answer within {wait:g}s; see the log")
    except Exception as exc:  # noqa: BLE001 - report whatever went wrong to the operator, keep the session
        return Result(False, f"{what}: {type(exc).__name__}: {exc}")


# -- the commands (registered once on aiomonitor's global click group; ctx.obj is the Monitor) ------------------------


def _tree(ctx: click.Context) -> TreeView | None:
    return getattr(ctx.obj, "tree", None)


def _echo(result: Result) -> None:
    for line in result.text.splitlines() or [""]:
        click.echo(line if result.ok else f"error: {line}")


def _spawn(
    ctx: click.Context, action: str, name: str | None, show: Callable[[Result], None], *, as_json: bool = False
) -> None:
    """Run ``action`` as a task on the UI loop (like aiomonitor's ``cancel``); it marks the command done."""
    monitor = ctx.obj
    tree = _tree(ctx)

    @_async_done
    async def run(ctx: click.Context) -> None:
        if tree is None:
            show(Result(False, "this monitor does not belong to a supervisor"))
            return
        show(await execute(tree, action, name, as_json=as_json))

    monitor._termui_tasks.add(monitor._ui_loop.create_task(run(ctx)))


@_command(Command.STATUS, doc=Command.STATUS.help)
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
@_help
@_done
def _status(ctx: click.Context, as_json: bool) -> None:
    tree = _tree(ctx)
    if tree is None:
        click.echo("error: this monitor does not belong to a supervisor")
        return
    for line in [status_json(tree)] if as_json else status_table(tree):
        click.echo(line)


def _named_command(command: Command) -> None:
    @_command(command, doc=command.help)
    @click.argument("name")
    @_help
    def run(ctx: click.Context, name: str) -> None:
        _spawn(ctx, command, name, _echo)


for _named in sorted(NAMED):
    _named_command(_named)


def _plain_command(command: Command) -> None:
    @_command(command, doc=command.help)
    @_help
    def run(ctx: click.Context) -> None:
        _spawn(ctx, command, None, _echo)


for _plain in (Command.RELOAD, Command.SHUTDOWN):
    _plain_command(_plain)


@_command("ctl", hidden=True)
@click.argument("nonce")
@click.argument("action")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@_help
def _ctl(ctx: click.Context, nonce: str, action: str, name: str | None, as_json: bool) -> None:
    """Machine interface for `supervisor ctl`: one framed JSON line per request"""

    def show(result: Result) -> None:
        frame = {"ok": result.ok, "text": result.text, "invalid": result.invalid}
        click.echo(f"{CTL_RESULT} {nonce} " + json.dumps(frame))

    _spawn(ctx, action, name, show, as_json=as_json)


# -- the view -----------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def console_view(plan: Plan, supervisor: TreeView) -> AsyncIterator[SupervisorMonitor]:
    """The view ``app.run_plan`` enters: the console for the supervisor's whole life."""
    spec = plan.console
    if (problem := remote_console_problem(spec)) is not None:  # the CLI reports it with its line, before all this
        raise ConfigError([f"{plan.source}: console.host: {problem}"])
    if spec.allow_remote and not is_loopback(spec.host):
        LOGGER.warning(
            "console on %s:%d accepts remote connections (console.allow_remote): anyone who can reach it can stop "
            "servers, and its web UI on port %d can cancel tasks; there is no authentication",
            spec.host, spec.port, spec.port + 1,
        )  # fmt: skip
    check_ports_free(spec.host, console_ports(spec), "console")
    loop = asyncio.get_running_loop()
    monitor = SupervisorMonitor(
        loop,
        supervisor,
        host=spec.host,
        termui_port=spec.port,
        webui_port=spec.port + 1,
        console_port=spec.port + 2,  # bound only while a REPL session is open
        console_enabled=spec.repl,
        hook_task_factory=False,  # breaks every create_task under uvloop on 3.13 (P12)
        locals={"__name__": "__console__", "supervisor": supervisor, "snapshot": supervisor.snapshot},
    )
    # the web UI triggers aiohttp's NotAppKeyWarning on its thread; with -W error it would kill the thread (P11)
    warnings.filterwarnings("ignore", category=NotAppKeyWarning)
    for noisy in QUIET_LOGGERS:  # five INFO lines per telnet session; our own lines say what matters
        if logging.getLogger(noisy).level == logging.NOTSET:
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if not await _in_thread(monitor.start, START_TIMEOUT, "console-start"):
        raise ViewError(
            f"console: aiomonitor did not start within {START_TIMEOUT:g}s on {spec.host}:{spec.port}; "
            "rerun with --log-level DEBUG to see why, or set console.enabled: false to run without it"
        )
    monitor._event_loop_thread_id = threading.get_ident()  # `stacktrace` shows this thread, not the starter
    try:
        if port_is_free(spec.host, spec.port):  # aiomonitor skips a telnet port it cannot bind, silently (P4)
            raise ViewError(
                f"console: the telnet server did not start on {spec.host}:{spec.port}; "
                "another process may have taken the port just now: pick another console.port"
            )
        LOGGER.info(
            "console listening on telnet://%s:%d (web UI http://%s:%d)", spec.host, spec.port, spec.host, spec.port + 1
        )
        yield monitor
    finally:
        if await _in_thread(monitor.close, CLOSE_TIMEOUT, "console-close"):
            LOGGER.info("console closed")
        else:
            LOGGER.warning("console did not close within %.1fs; leaving its thread behind", CLOSE_TIMEOUT)


async def _in_thread(fn: Callable[[], None], timeout: float, name: str) -> bool:
    """Run ``fn`` on a daemon thread; False if it is still running after ``timeout`` (it is then abandoned).

    Not ``asyncio.to_thread``: a stuck call would then hold up the loop's executor shutdown at exit.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if not done.done():
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

    def target() -> None:
        error: BaseException | None = None
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which raises it
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed while we were stuck: nobody waits any more
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=target, name=name, daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout)
    except TimeoutError:
        return False
    return True
