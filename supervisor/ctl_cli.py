"""``supervisor ctl``'s command line: its arguments (the words and help of commands.py), what it prints, and the
outcome cli.py turns into the exit code; ``status --watch`` keeps one console session and redraws the table."""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import os
import shutil
import sys
import textwrap
import time

from supervisor import ctl
from supervisor.commands import (
    ACTIONS,
    ALL,
    RELOAD_TIMEOUT,
    STEP_TIMEOUT,
    TAIL_KEPT,
    TAIL_LINES,
    Command,
    Request,
    Result,
    parse,
)
from supervisor.config import load_config
from supervisor.errors import ConfigError

PREFIX = "supervisor ctl: "
DEFAULT_INTERVAL = 2.0  # as watch(1)
MIN_INTERVAL = 0.1
FOLLOW_INTERVAL = 0.5  # tail -f: how often new lines are asked for
HOME, CLEAR_SCREEN, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[2J", "\x1b[K", "\x1b[J"


class Outcome(enum.Enum):
    OK = "the command succeeded (or there was nothing to do)"
    FAILED = "the command failed on a server, or no console answered"
    INVALID = "the request was invalid: nothing was done"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``ctl`` sub-command's arguments; its epilog lists the commands as commands.py describes them."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    lines = [f"  {c.usage:<32}{c.help}" for c in Command]
    p.epilog = "commands:\n" + "\n".join(textwrap.fill(line, 110, subsequent_indent=" " * 34) for line in lines)
    p.epilog += "\n\nexit: " + "; ".join(f"{code} {o.value}" for code, o in enumerate(Outcome))
    p.add_argument("action", choices=ACTIONS, metavar="ACTION", help="what to do: " + ", ".join(ACTIONS))
    p.add_argument("names", nargs="*", metavar="NAME", help=f"servers (restart, stop, start): one or more, or '{ALL}'")
    p.add_argument("-c", "--config", help="read console.host and console.port from this config")
    p.add_argument("--host", help=f"console host (default {ctl.DEFAULT_HOST})")
    p.add_argument("--port", type=int, help=f"console port (default {ctl.DEFAULT_PORT})")
    p.add_argument("--json", action="store_true", help="print JSON (status: the whole tree)")
    p.add_argument(
        "--timeout", type=float,
        help="seconds to wait for an answer in all (default: as long as the supervisor may take: restart, stop, start "
        f"{STEP_TIMEOUT:g}s per server, restart that per worker; reload {RELOAD_TIMEOUT:g}s; else "
        f"{ctl.DEFAULT_TIMEOUT:g}s)",
    )  # fmt: skip
    p.add_argument("-n", "--lines", type=int, help=f"tail: how many lines (default {TAIL_LINES})")
    p.add_argument("-f", "--follow", action="store_true", help="tail: keep printing new lines until Ctrl-C")
    p.add_argument("--watch", action="store_true", help="status: redraw it every --interval until Ctrl-C")
    p.add_argument("--interval", type=float, help=f"seconds between --watch refreshes (default {DEFAULT_INTERVAL:g})")


def main(args: argparse.Namespace) -> Outcome:
    request = parse(args.action, args.names, typed_as="supervisor ctl ")
    if isinstance(request, Result):
        return _fail(request.text, Outcome.INVALID)
    watching = args.watch or args.interval is not None
    if watching and request.command is not Command.STATUS:
        return _fail("--watch and --interval go with status only", Outcome.INVALID)
    tailing = request.command is Command.TAIL
    if (args.follow or args.lines is not None) and not tailing:
        return _fail("-n and -f go with tail only", Outcome.INVALID)
    lines = TAIL_LINES if args.lines is None else args.lines
    if tailing and not 0 <= lines <= TAIL_KEPT:
        return _fail(f"-n: expected 0 to {TAIL_KEPT} (the lines kept per server), got {lines}", Outcome.INVALID)
    interval = DEFAULT_INTERVAL if args.interval is None else args.interval
    if interval < MIN_INTERVAL:
        return _fail(f"--interval: expected at least {MIN_INTERVAL:g} seconds, got {interval:g}", Outcome.INVALID)
    host, port = ctl.DEFAULT_HOST, ctl.DEFAULT_PORT
    if args.config:
        try:
            console = load_config(args.config).console
        except ConfigError as exc:
            for line in exc.problems:
                print(line, file=sys.stderr)
            return Outcome.INVALID
        host, port = console.host, console.port
    host, port = args.host or host, args.port or port
    timeout = args.timeout or ctl.DEFAULT_TIMEOUT  # status --watch and tail: one status or tail at a time
    try:
        if watching:
            return watch(host, port, interval=interval, as_json=args.json, timeout=timeout)
        if tailing:
            return tail(host, port, request.names[0], lines, follow=args.follow, timeout=timeout)
        reply = ctl.run(args.action, *request.names, host=host, port=port, as_json=args.json,
                        timeout=args.timeout or None, width=terminal_width())  # fmt: skip
    except ctl.ConsoleUnavailable as exc:
        return _fail(str(exc), Outcome.FAILED)
    return show(request, reply, as_json=args.json)


def show(request: Request, reply: Result, *, as_json: bool) -> Outcome:
    """Print the answer: a line per server on stdout, failures on stderr (so ``2>/dev/null`` keeps the good)."""
    if as_json and request.command is not Command.STATUS:
        results = [{"server": s.server, "ok": s.ok, "message": s.text} for s in reply.steps]
        one = request.names[0] if len(request.names) == 1 and request.names != (ALL,) else None
        body = {"ok": reply.ok, "action": str(request.command), "server": one, "message": reply.text}
        print(json.dumps({**body, "results": results}), flush=True)
    elif as_json and reply.ok:
        print(reply.text, flush=True)
    for outcome in reply.outcomes:
        if not outcome.ok:
            print(PREFIX + outcome.text, file=sys.stderr, flush=True)
        elif not as_json:
            print(outcome.text, flush=True)
    if reply.invalid:
        return Outcome.INVALID
    return Outcome.OK if reply.ok else Outcome.FAILED


def watch(host: str, port: int, *, interval: float, as_json: bool, timeout: float) -> Outcome:
    """``status --watch``: one console session, a status every ``interval`` until Ctrl-C (then OK). On a terminal
    the table is redrawn in place, like watch(1); otherwise a fresh table (or JSON line) is printed each time."""
    in_place = sys.stdout.isatty() and not as_json
    client = ctl.ConsoleClient(host, port, timeout)
    try:
        client.connect()
        client.wait_prompt()
        first = True
        while True:
            client.deadline = time.monotonic() + timeout
            reply = client.request("status", as_json=as_json, width=terminal_width())
            if not reply.ok:
                return _fail(reply.text, Outcome.FAILED)
            if as_json:
                print(reply.text, flush=True)
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                frame = [f"every {interval:g}s: status of {host}:{port} at {stamp} (Ctrl-C to stop)", "", reply.text]
                text = "\n".join(frame)
                if in_place:  # home, each line cleared to its end, the rest of the screen cleared
                    start = HOME + (CLEAR_SCREEN if first else "")
                    text = start + text.replace("\n", CLEAR_LINE + "\n") + CLEAR_LINE + "\n" + CLEAR_BELOW
                    sys.stdout.write(text)
                    sys.stdout.flush()
                else:
                    print(text + "\n", flush=True)
            first = False
            client.deadline = time.monotonic() + interval + timeout
            client.pump(interval)
    except KeyboardInterrupt:
        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C skips the goodbye (itself bounded)
            client.leave()
        return Outcome.OK
    finally:
        client.close()


def tail(host: str, port: int, name: str, lines: int, *, follow: bool, timeout: float) -> Outcome:
    """``tail NAME``: the server's last ``lines``; with ``follow``, new ones every FOLLOW_INTERVAL until Ctrl-C."""
    client = ctl.ConsoleClient(host, port, timeout)
    try:
        client.connect()
        client.wait_prompt()
        reply = client.request("tail", name, lines=lines)
        while True:
            if not reply.ok:
                return _fail(reply.text, Outcome.INVALID if reply.invalid else Outcome.FAILED)
            if reply.text:
                print(reply.text, flush=True)
            if not follow:
                return Outcome.OK
            client.deadline = time.monotonic() + FOLLOW_INTERVAL + timeout
            client.pump(FOLLOW_INTERVAL)
            client.deadline = time.monotonic() + timeout
            reply = client.request("tail", name, lines=TAIL_KEPT, after=reply.cursor)
    except KeyboardInterrupt:
        with contextlib.suppress(KeyboardInterrupt):
            client.leave()
        return Outcome.OK
    finally:
        client.close()


def terminal_width() -> int:
    """The width the status table is cut to: $COLUMNS if set, else the terminal's; 0 (never cut) for a pipe."""
    with contextlib.suppress(ValueError):
        if (columns := int(os.environ.get("COLUMNS", "0"))) > 0:
            return columns
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else 0


def _fail(text: str, outcome: Outcome) -> Outcome:
    print(PREFIX + text, file=sys.stderr, flush=True)
    return outcome
