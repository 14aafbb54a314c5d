"""The console's commands: what ``status``, ``restart``/``stop``/``start`` (several names, or ``all``), ``reload``,
``shutdown``, ``help``, ``console`` and the hidden ``ctl`` do, with the words and help text of commands.py.

They run on aiomonitor's UI thread and loop (registered once on its global click group; ``ctx.obj`` is the
monitor), so they never touch the tree: they read it through ``tree.TreeView`` (the immutable snapshot and
the plain-int counters) and *post* control requests with ``TreeView.submit()``, which the supervisor's loop runs.
The hidden ``ctl NONCE [--json] [--width N] -- ACTION [NAME ...]`` answers ``supervisor ctl`` with one framed
line, ``ctl-result NONCE {"ok": ..., "text": ..., "steps": [...]}``, so it needs no screen scraping (ctl.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import click

from supervisor import logs
from supervisor.commands import (
    ACTIONS,
    ALL,
    NAMED,
    TAIL_LINES,
    Command,
    Result,
    answer_timeout,
    combine,
    parse,
    resolve,
)
from supervisor.status import status_json, status_table
from supervisor.tree import TreeView

with warnings.catch_warnings():
    # aiomonitor 0.7.1 imports click.parser.split_arg_string, deprecated in Click 8.2 (P10); pinned click<9
    warnings.filterwarnings("ignore", "Importing 'parser.split_arg_string' is deprecated", DeprecationWarning)
    import aiomonitor
    from aiomonitor.termui.commands import auto_async_command_done, auto_command_done, custom_help_option

CTL_RESULT = "ctl-result"
HELP_WIDTH = 100  # when the session did not say how wide its terminal is

F = TypeVar("F", bound=Callable[..., Any])


def _typed(decorator: object) -> Callable[[F], F]:
    return cast(Callable[[F], F], decorator)


# aiomonitor is untyped; these keep mypy --strict honest about what the decorators do
_done = _typed(auto_command_done)
_async_done = _typed(auto_async_command_done)
_help = _typed(custom_help_option)
_AIOMONITOR_REPL = aiomonitor.monitor_cli.commands["console"]  # aiomonitor's own `console`, run when the REPL is on


def _command(
    name: str, *, hidden: bool = False, doc: str | None = None, aliases: Sequence[str] = ()
) -> Callable[[F], F]:
    return _typed(aiomonitor.monitor_cli.command(name=name, hidden=hidden, help=doc, aliases=list(aliases)))


# -- what the commands do (UI thread) -------------------------------------------------------------------------------


async def execute(
    tree: TreeView, action: str, names: Sequence[str] = (), *, as_json: bool = False, width: int | None = None,
    lines: int = TAIL_LINES, after: int = 0,
) -> Result:  # fmt: skip
    """Run one request from the UI thread. Control actions are posted to the supervisor's loop, never done here;
    on several servers, one after the other in order, once every name is known (else nothing is done)."""
    request = parse(action, names)
    if isinstance(request, Result):
        return request
    command = request.command
    if command is Command.STATUS:
        return Result(True, status_json(tree) if as_json else "\n".join(status_table(tree, width)))
    if not command.needs_name and command is not Command.TAIL:
        return await _submit(tree, command, None)
    targets = resolve(request, [c.name for c in tree.snapshot().children])
    if isinstance(targets, Result):
        return targets
    if command is Command.TAIL:
        kept, cursor = logs.RECENT.tail(targets[0], lines, after)
        return Result(True, "\n".join(kept), server=targets[0], cursor=cursor)
    return combine([dataclasses.replace(await _submit(tree, command, name), server=name) for name in targets])


async def _submit(tree: TreeView, command: Command, name: str | None) -> Result:
    try:
        future = tree.submit(command, name)
    except RuntimeError:  # not started yet, or its loop is gone
        return Result(False, "the supervisor is not running")
    wait = answer_timeout(command, len(tree.snapshot().workers))  # restart NAME: one worker after the other
    what = " ".join(filter(None, (command, name)))
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), wait)
    except TimeoutError:
        return Result(False, f"{what}: no answer within {wait:g}s; see the log")
    except Exception as exc:  # noqa: BLE001 - report whatever went wrong to the operator, keep the session
        return Result(False, f"{what}: {type(exc).__name__}: {exc}")


# -- the commands -----------------------------------------------------------------------------------------------


def _tree(ctx: click.Context) -> TreeView | None:
    return getattr(ctx.obj, "tree", None)


def _echo(result: Result) -> None:
    for outcome in result.outcomes:
        for line in outcome.text.splitlines() or [""]:
            click.echo(line if outcome.ok else f"error: {line}")


def _spawn(
    ctx: click.Context, action: str, names: Sequence[str], show: Callable[[Result], None], **options: Any
) -> None:
    """Run ``action`` as a task on the UI loop (like aiomonitor's ``cancel``); the session waits for it."""
    monitor = ctx.obj
    tree = _tree(ctx)

    @_async_done
    async def run(ctx: click.Context) -> None:
        if tree is None:
            show(Result(False, "this monitor does not belong to a supervisor"))
            return
        show(await execute(tree, action, names, **options))

    if tree is None:  # another aiomonitor Monitor in this process: the commands are on aiomonitor's one group
        monitor._termui_tasks.add(monitor._ui_loop.create_task(run(ctx)))
    else:
        monitor.answer(run(ctx))  # console.SupervisorMonitor: its close waits for the answer to be written


@_command(Command.STATUS, doc=Command.STATUS.help)
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
@_help
@_done
def _status(ctx: click.Context, as_json: bool) -> None:
    tree = _tree(ctx)
    if tree is None:
        click.echo("error: this monitor does not belong to a supervisor")
        return
    for line in [status_json(tree)] if as_json else status_table(tree, ctx.terminal_width):
        click.echo(line)


def _named_command(command: Command) -> None:
    @_command(command, doc=command.help)
    @click.argument("names", nargs=-1, metavar=f"NAME [NAME ...] | {ALL}")
    @_help
    def run(ctx: click.Context, names: tuple[str, ...]) -> None:
        _spawn(ctx, command, names, _echo)


for _named in sorted(NAMED):
    _named_command(_named)


def _plain_command(command: Command) -> None:
    @_command(command, doc=command.help)
    @_help
    def run(ctx: click.Context) -> None:
        _spawn(ctx, command, (), _echo)


for _plain in (Command.RELOAD, Command.SHUTDOWN):
    _plain_command(_plain)


@_command(Command.TAIL, doc=Command.TAIL.help)
@click.argument("name")
@click.option("-n", "lines", type=click.IntRange(0, logs.RECENT_LINES), default=TAIL_LINES, help="how many lines")
@_help
def _tail(ctx: click.Context, name: str, lines: int) -> None:
    _spawn(ctx, Command.TAIL, (name,), _echo, lines=lines)


@_command("ctl", hidden=True)
@click.argument("nonce")
@click.argument("action")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True)
@click.option("--width", type=int, default=0)
@click.option("--lines", type=click.IntRange(0, logs.RECENT_LINES), default=TAIL_LINES)
@click.option("--after", type=click.IntRange(0), default=0)
@_help
def _ctl(
    ctx: click.Context, nonce: str, action: str, names: tuple[str, ...], as_json: bool, width: int, lines: int,
    after: int,
) -> None:  # fmt: skip
    """Machine interface for `supervisor ctl`: one framed JSON line per request"""

    def show(result: Result) -> None:
        steps = [{"server": s.server, "ok": s.ok, "text": s.text} for s in result.steps]
        frame = {"ok": result.ok, "text": result.text, "invalid": result.invalid, "steps": steps,
                 "cursor": result.cursor}  # fmt: skip
        click.echo(f"{CTL_RESULT} {nonce} " + json.dumps(frame))

    _spawn(ctx, action, names, show, as_json=as_json, width=width or None, lines=lines, after=after)


@_command("console", doc="Switch to the async Python REPL, on the supervisor's loop (needs console.repl: true)")
@_help
@_done
def _console(ctx: click.Context) -> None:
    if getattr(ctx.obj, "repl", False):
        ctx.invoke(_AIOMONITOR_REPL)  # it spawns the REPL's task; the session waits for it
        return
    click.echo(
        "error: the Python console is disabled: set console.repl: true in the config and restart the supervisor "
        "(the console section is read at start only)"
    )


@_command("help", doc="Show the commands and what each does", aliases=("?", "h"))
@_help
@_done
def _help_command(ctx: click.Context) -> None:
    click.echo(help_text(ctx.obj, ctx.terminal_width or HELP_WIDTH), nl=False)


def help_text(monitor: object, width: int) -> str:
    """Every usable command with its whole description (wrapped, never cut): ours from commands.py, then
    aiomonitor's, without ``console`` while the REPL is off and without the hidden ones."""
    group = aiomonitor.monitor_cli
    theirs = []
    for name in group.list_commands(click.Context(group)):
        cmd = group.commands[name]
        if cmd.hidden or name in ACTIONS or (name == "console" and not getattr(monitor, "repl", False)):
            continue
        usage = " ".join([name, *(p.human_readable_name for p in cmd.params if isinstance(p, click.Argument))])
        theirs.append((usage, " ".join((cmd.help or "").split())))
    formatter = click.HelpFormatter(width=max(width - 1, 40))
    with formatter.section("Supervisor commands"):
        formatter.write_dl([(c.usage, c.help) for c in Command], col_max=32)
    with formatter.section("Console commands (aiomonitor)"):
        formatter.write_dl(theirs, col_max=32)
    formatter.write_paragraph()
    formatter.write_text("COMMAND --help shows its options. An empty line does nothing; no command is repeated.")
    return formatter.getvalue()
