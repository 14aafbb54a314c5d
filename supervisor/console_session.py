"""One telnet session of the console: the prompt, one command at a time, the next prompt once it is done.

It replaces aiomonitor 0.7.1's ``interact()`` for our monitor (console.py wires it in), to fix three things an
operator hits: an empty line repeated the last command (``restart echo`` then Enter restarted twice: here an
empty line does nothing); a command that answers from a task (``restart``, ``cancel``) got the next prompt
drawn before its reply, because aiomonitor's ``--help`` option marks every command done at once (here the
session also waits for the tasks a command spawned); and so the ``console`` REPL ran while this prompt read
the same input. Runs on aiomonitor's UI thread and loop, like the commands.
"""

from __future__ import annotations

import asyncio
import shlex
import traceback
import warnings
from contextvars import copy_context
from typing import Any

import click
from prompt_toolkit import PromptSession
from prompt_toolkit.formatted_text import FormattedText

with warnings.catch_warnings():  # as in console_commands.py (P10)
    warnings.filterwarnings("ignore", "Importing 'parser.split_arg_string' is deprecated", DeprecationWarning)
    from aiomonitor.context import command_done, current_monitor, current_stdout
    from aiomonitor.termui.commands import monitor_cli, print_fail
    from aiomonitor.termui.completion import ClickCompleter

NEGOTIATION_WAIT = 0.3  # what aiomonitor waits for the telnet negotiation (terminal type and size) to finish
PROMPT_STYLE = "#5fd7ff bold"
INTRO = "\nsupervisor console: type help for the commands; an empty line does nothing\n"


async def session(monitor: Any, connection: Any) -> None:
    """The loop for one telnet connection (``connection``: prompt_toolkit's TelnetConnection)."""
    await asyncio.sleep(NEGOTIATION_WAIT)
    print(INTRO, file=connection.stdout)
    monitor_token = current_monitor.set(monitor)
    stdout_token = current_stdout.set(connection.stdout)  # click.echo in the commands writes to this session
    prompt: PromptSession[str] = PromptSession(completer=ClickCompleter(monitor_cli), complete_while_typing=False)
    try:
        while True:
            try:
                line = (await prompt.prompt_async(FormattedText([(PROMPT_STYLE, monitor.prompt)]))).strip()
            except KeyboardInterrupt:
                print_fail("To leave, press Ctrl+D or type 'exit'.")
                continue
            except (EOFError, asyncio.CancelledError):
                return
            if line and not await run_line(monitor, line, prompt.output.get_size().columns):
                return
    finally:
        current_stdout.reset(stdout_token)
        current_monitor.reset(monitor_token)


def closing(monitor: Any) -> bool:
    """aiomonitor's ``close()`` has begun: it cancels this future first, then the tasks the commands spawned. That
    ends a command the session was waiting for (an open ``console`` REPL, a ``restart``) without cancelling the
    session, which must then end too rather than draw a prompt on a closing console: the prompt asks the client
    where its cursor is, and the session's cancellation a moment later waits up to a second for that answer
    (1 s of every shutdown with a REPL open, when the client has stopped reading).
    """
    future = getattr(monitor, "_ui_forever_future", None)
    return future is not None and future.done()


async def run_line(monitor: Any, line: str, columns: int) -> bool:
    """Run one typed line and wait until it is done; False when the session ends (``exit``, the monitor closes)."""
    try:
        args = shlex.split(line)
    except ValueError as exc:
        print_fail(f"cannot read that line: {exc}")
        return True
    done = asyncio.Event()
    token = command_done.set(done)
    try:
        before = set(monitor._termui_tasks)  # aiomonitor's own record of the tasks commands spawn on this loop
        copy_context().run(
            monitor_cli.main, args, prog_name="", obj=monitor, standalone_mode=False,
            max_content_width=columns, terminal_width=columns,
        )  # fmt: skip
        spawned = set(monitor._termui_tasks) - before
        await done.wait()
        if spawned:  # the command answers from these: its reply comes before the next prompt
            await asyncio.wait(spawned)
        if closing(monitor):
            return False
    except click.ClickException as exc:  # unknown command, missing argument: one line, as aiomonitor prints it
        print_fail(exc.format_message())
    except asyncio.CancelledError:  # `exit`, or the monitor is closing
        return False
    except Exception:  # noqa: BLE001 - a command's bug is shown in the session, which goes on
        print_fail(traceback.format_exc())
    finally:
        command_done.reset(token)
    return True
