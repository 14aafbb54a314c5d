"""The one command vocabulary: how a request's words are read, how its names are resolved, and that ctl, the
console's help and the README all show what commands.py says."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from supervisor import cli, ctl, ctl_cli
from supervisor.commands import (
    RELOAD_TIMEOUT,
    STEP_TIMEOUT,
    Command,
    Request,
    Result,
    answer_timeout,
    combine,
    parse,
    resolve,
)
from tests.proc import REPO

SERVERS = ("echo", "http", "chat")  # start order


def test_names_are_resolved_in_order_and_all_follows_the_start_order() -> None:
    assert resolve(Request(Command.RESTART, ("chat", "echo")), SERVERS) == ("chat", "echo")
    assert resolve(Request(Command.RESTART, ("all",)), SERVERS) == SERVERS
    assert resolve(Request(Command.START, ("all",)), SERVERS) == SERVERS
    assert resolve(Request(Command.STOP, ("all",)), SERVERS) == ("chat", "http", "echo")  # like the shutdown


def test_unknown_names_are_all_named_and_nothing_is_resolved() -> None:
    one = resolve(Request(Command.STOP, ("echo", "ehco")), SERVERS)
    assert one == Result(False, "no server named 'ehco'; servers: echo, http, chat; nothing was done", invalid=True)
    two = resolve(Request(Command.STOP, ("x", "echo", "y")), SERVERS)
    assert isinstance(two, Result)
    assert two.text.startswith("no servers named 'x', 'y'; ")


@pytest.mark.parametrize(
    ("action", "names", "message"),
    [
        (
            "reboot",
            (),
            "unknown action 'reboot'; expected one of: status, restart, stop, start, tail, reload, shutdown",
        ),
        ("stop", (), "'stop' needs a server name (or several, or 'all'), e.g. stop echo, or stop all"),
        ("status", ("echo",), "'status' takes no server name"),
        ("reload", ("all",), "'reload' takes no server name"),
        ("restart", ("all", "echo"), "'all' means every server: give it alone, or name the servers"),
    ],
)
def test_bad_requests_are_invalid(action: str, names: tuple[str, ...], message: str) -> None:
    assert parse(action, names) == Result(False, message, invalid=True)


def test_a_name_given_twice_is_acted_on_once() -> None:
    assert parse("restart", ["http", "echo", "http"]) == Request(Command.RESTART, ("http", "echo"))
    assert parse("restart", "echo") == Request(Command.RESTART, ("echo",))  # one name as a string
    assert parse("status", None) == Request(Command.STATUS)


def test_several_results_are_ok_only_if_every_one_is() -> None:
    good, bad = Result(True, "restarted echo", server="echo"), Result(False, "http did not come up", server="http")
    both = combine([good, bad])
    assert (both.ok, both.text, both.invalid, both.outcomes) == (False, "restarted echo\nhttp did not come up", False,
                                                                 (good, bad))  # fmt: skip
    assert combine([good]).ok
    assert Result(True, "shutting down").outcomes == (Result(True, "shutting down"),)


def _words(text: str) -> str:
    return " ".join(text.split())


def test_the_console_waits_for_a_restart_in_every_worker_one_after_the_other() -> None:
    """With workers: N, restart NAME runs in one worker after the other, each step as long as a single process
    may take (its CONTROL_TIMEOUT and the way there and back): the console's wait grows with N. stop and start
    run in every worker at once."""
    assert STEP_TIMEOUT == 15.0
    for command in (Command.RESTART, Command.STOP, Command.START, Command.SHUTDOWN):
        assert answer_timeout(command) == answer_timeout(command, 0) == STEP_TIMEOUT  # the single process
    assert answer_timeout(Command.RESTART, 2) == 2 * STEP_TIMEOUT + 5.0
    assert answer_timeout(Command.RESTART, 8) == 8 * STEP_TIMEOUT + 5.0
    assert answer_timeout(Command.STOP, 8) == answer_timeout(Command.START, 8) == STEP_TIMEOUT + 5.0
    assert answer_timeout(Command.RELOAD, 8) == answer_timeout(Command.RELOAD) == RELOAD_TIMEOUT


SLACK = ctl.ANSWER_SLACK
TWO = 2 * STEP_TIMEOUT + 5.0  # a restart in 2 workers


@pytest.mark.parametrize(
    ("action", "names", "status", "expected"),
    [
        ("restart", ("echo",), {"servers": [{}, {}]}, STEP_TIMEOUT + SLACK),  # the single process: no workers listed
        ("restart", ("echo",), {"servers": [{}], "workers": [{}] * 4}, 4 * STEP_TIMEOUT + 5.0 + SLACK),
        ("restart", ("echo", "web"), {"servers": [{}, {}], "workers": [{}] * 2}, 2 * TWO + SLACK),  # one by one
        ("restart", ("all",), {"servers": [{}] * 3, "workers": [{}] * 2}, 3 * TWO + SLACK),
        ("stop", ("all",), {"servers": [{}] * 3, "workers": [{}] * 2}, 3 * (STEP_TIMEOUT + 5.0) + SLACK),
        ("reload", (), None, RELOAD_TIMEOUT + SLACK),
        ("shutdown", (), None, ctl.DEFAULT_TIMEOUT),
    ],
)
def test_ctl_waits_as_long_as_the_console_may_for_the_workers_it_asked_about(
    monkeypatch: pytest.MonkeyPatch, action: str, names: tuple[str, ...], status: object, expected: float
) -> None:
    """ctl cannot know the workers in advance: for a server command it asks for the status first."""
    client = ctl.ConsoleClient()
    asked: list[str] = []

    def request(action: str, *names: str, as_json: bool = False) -> Result:
        asked.append(action)
        return Result(True, json.dumps(status))

    monkeypatch.setattr(client, "request", request)
    assert client.answer_time(action, names) == expected
    assert asked == (["status"] if status is not None else [])


def test_ctl_help_and_the_readme_say_what_commands_py_says() -> None:
    ctl_help = subprocess.run(
        [sys.executable, "-m", "supervisor", "ctl", "--help"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert ctl_help.returncode == 0
    readme = (REPO / "README.md").read_text()
    for command in Command:
        assert _words(f"{command.usage} {command.help}") in _words(ctl_help.stdout), command
        assert f"\n{command.usage} " in readme, command  # the console's command block


@pytest.mark.parametrize(("outcome", "code"), [(o, code) for code, o in enumerate(ctl_cli.Outcome)])
def test_ctl_exit_codes_are_cli_s_and_in_the_order_its_help_says(
    monkeypatch: pytest.MonkeyPatch, outcome: ctl_cli.Outcome, code: int
) -> None:
    monkeypatch.setattr(ctl_cli, "main", lambda args: outcome)
    assert cli.run_ctl(argparse.Namespace()) == code
    assert code == (cli.EXIT_OK, cli.EXIT_FAILURE, cli.EXIT_USAGE)[code]
