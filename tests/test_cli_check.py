"""``supervisor check``: exit 0 and the plan for a good config; exit 2, file:line messages and no traceback else."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.cli import EXIT_OK, EXIT_USAGE, main
from tests.e2e_util import unblock_fifo_later

ROOT = Path(__file__).resolve().parents[1]
PROD = ROOT / "configs" / "prod.yaml"
DATA = Path(__file__).resolve().parent / "data"
BAD = DATA / "bad.yaml"
UNPLANNABLE = DATA / "unplannable.yaml"


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """make_plan puts the config's folder on sys.path: keep that from leaking into other tests."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["check", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_prod_config_is_ok(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = check(capsys, str(PROD))
    assert rc == EXIT_OK == 0
    assert err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["#", "server", "address", "restart", "on_error", "backoff", "drain", "after", "handler"]
    assert [line.split()[1] for line in lines[1:4]] == ["echo", "http", "chat"]
    assert lines[1].split()[2] == "127.0.0.1:8888"
    assert lines[3].split()[-2:] == ["echo", "supervisor.handlers.chat:room"]
    assert lines[4] == "strategy one_for_one, at most 10 restarts in 60s, shutdown within 30s, loop asyncio"
    assert lines[-1] == f"{PROD}: OK, 3 server(s)"


def test_bad_config_lists_every_problem(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = check(capsys, str(BAD))
    assert rc == EXIT_USAGE == 2
    assert out == ""
    assert "Traceback" not in err
    assert err.splitlines() == [
        f"{BAD}:3: supervisor.strategy: expected one of one_for_one | one_for_all | rest_for_one "
        "(did you mean 'one_for_all'?), got 'one_for_al'",
        f"{BAD}:4: supervisor.restart_window: expected a duration like 250ms, 10s, 2m or a number of seconds, "
        "got '10x'",
        f"{BAD}:6: metrics.prot: unknown key; did you mean 'port'?",
        f"{BAD}:14: servers[1].port: expected an integer 0-65535, got 'http'",
        f"{BAD}:16: servers[1].backoff.max: expected a duration >= backoff.initial (2s), got 1s",
        f"supervisor: 5 problems in {BAD}; nothing was started",
    ]


def test_unplannable_config_lists_every_problem(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = check(capsys, str(UNPLANNABLE))
    assert rc == EXIT_USAGE
    assert out == ""
    assert err.splitlines() == [
        f"{UNPLANNABLE}:6: servers[0].options: 'supervisor.handlers.echo:handle' is a plain handler and takes no "
        "options; remove 'options' or point 'handler' at a factory",
        f"{UNPLANNABLE}:8: servers[1].handler: module 'supervisor.handlers.http' has no attribute 'mkae'; "
        "did you mean 'make'?",
        f"{UNPLANNABLE}:9: servers[1].port: 127.0.0.1:8888 is already used by server 'echo'; pick another port",
        f"{UNPLANNABLE}:10: servers[1].after: dependency cycle web -> chat -> web; remove one 'after' entry",
        f"supervisor: 4 problems in {UNPLANNABLE}; nothing was started",
    ]


def test_path_is_shown_as_given(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    rc, _, err = check(capsys, "tests/data/bad.yaml")
    assert rc == EXIT_USAGE
    assert err.splitlines()[0].startswith("tests/data/bad.yaml:3: supervisor.strategy: ")


def test_one_problem_is_singular(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("servers: []\n")
    rc, out, err = check(capsys, str(path))
    assert (rc, out) == (EXIT_USAGE, "")
    assert err.splitlines() == [
        f"{path}:1: servers: expected a non-empty list of servers, got an empty list",
        f"supervisor: 1 problem in {path}; nothing was started",
    ]


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    rc, out, err = check(capsys, str(path))
    assert (rc, out) == (EXIT_USAGE, "")
    assert err.splitlines() == [
        f"{path}: cannot read the config file: No such file or directory; check the path",
        f"supervisor: 1 problem in {path}; nothing was started",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "servers:\n  - name: [\n",  # YAML syntax
        "servers:\n  - {name: a, handler: 'm:h', port: 1, shutdown_timeout: 2020-13-45}\n",  # unconstructable
        "servers:\n  - {name: a, handler: 'm:h', port: 1, options: !!python/object:os.system {}}\n",  # unsafe tag
        "supervisor: {restart_window: 1" + "0" * 400 + "}\nservers: [{name: a, handler: 'm:h', port: 1}]\n",
        "servers:\n  - {name: a, handler: 'no_such_mod_cli:h', port: 1}\n",  # import
    ],
    ids=["syntax", "bad-date", "python-tag", "huge-int", "import"],
)
def test_bad_input_never_tracebacks(capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    rc, out, err = check(capsys, str(path))
    assert (rc, out) == (EXIT_USAGE, "")
    assert "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith(f"{path}:"), first
    assert first.removeprefix(f"{path}:").split(":")[0].isdigit(), first


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == EXIT_USAGE
    assert main(["frobnicate", str(PROD)]) == EXIT_USAGE
    assert main([]) == EXIT_USAGE
    _, err = capsys.readouterr()
    assert "usage: supervisor" in err


def check_in_a_process(path: Path) -> subprocess.CompletedProcess[str]:
    """``supervisor check PATH`` as a user runs it: its own interpreter, its exit code and streams."""
    cmd = [sys.executable, "-m", "supervisor", "check", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


def test_subprocess_bad_config_exits_2_without_traceback() -> None:
    result = check_in_a_process(UNPLANNABLE)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == f"supervisor: 4 problems in {UNPLANNABLE}; nothing was started"
    assert f"{UNPLANNABLE}:10: servers[1].after: dependency cycle web -> chat -> web" in result.stderr


def alias_bomb(levels: int) -> str:
    items = ["&l0 [x, x, x, x, x, x, x, x, x]"]
    items += [f"&l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, levels)]
    return "".join(f"      - {item}\n" for item in items)


# the address a listener on localhost binds: 127.0.0.1 or ::1, depending on the machine
LOCALHOST = socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][4][0]
SERVER = "servers:\n  - name: a\n    handler: supervisor.handlers.http:make\n    port: 0\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            SERVER + "    options: {x: " + "[" * 500 + "]" * 500 + "}\n",
            "5: servers[0].options.x…: nested more than 64 levels deep; flatten this value",
        ),
        (
            SERVER + "    options:\n" + alias_bomb(7),
            "5: servers[0].options: holds more than 10000 values with its aliases expanded; make it smaller",
        ),
        (
            SERVER + "    after:\n" + alias_bomb(7),
            "5: servers[0].after: holds more than 10000 values with its aliases expanded; make it smaller",
        ),
        (
            SERVER.replace("port: 0", "port: 0\n    host: no-such-host.invalid"),
            "5: servers[0].host: cannot resolve host 'no-such-host.invalid' (",
        ),
        (
            f"metrics: {{host: '{LOCALHOST}'}}\n{SERVER}"
            "  - {name: b, handler: supervisor.handlers.echo:handle, host: localhost, port: 9100}\n",
            "6: servers[1].port: localhost:9100 is already used by metrics (",
        ),
        (SERVER.replace("name: a", 'name: "a\\n"'), "2: servers[0].name: expected a name of letters, digits"),
    ],
    ids=["deep", "alias-bomb-options", "alias-bomb-after", "unresolvable-host", "same-address", "name-newline"],
)
def test_hostile_configs_exit_2_with_located_lines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, expected: str
) -> None:
    # each used to be a traceback (exit 1), tens of MB of message, or an OK for a config that cannot run
    path = tmp_path / "c.yaml"
    path.write_text(text)
    started = time.perf_counter()
    rc, out, err = check(capsys, str(path))
    assert time.perf_counter() - started < 2.0
    assert (rc, out) == (EXIT_USAGE, "")
    assert "Traceback" not in err
    assert len(err) < 1000
    first, last = err.splitlines()
    assert first.startswith(f"{path}:{expected}"), first
    assert last == f"supervisor: 1 problem in {path}; nothing was started"


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "directory", "too-big"])
def test_files_that_are_not_configs_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str) -> None:
    path = tmp_path / "c.yaml"
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")  # used to be a MemoryError
        expected = "cannot read the config file: it is a character device; name a regular file"
    elif kind == "fifo":
        os.mkfifo(path)  # used to block for ever: if it still does, a writer lets it go after 2 s (and it fails)
        unblock_fifo_later(path)
        expected = "cannot read the config file: it is a named pipe; name a regular file"
    elif kind == "directory":
        path.mkdir()
        expected = "cannot read the config file: it is a directory; name a regular file"
    else:
        path.write_text(SERVER + "#" * 2**20)
        expected = "the config file is larger than 1 MiB; check the path (a config is a few KiB)"
    rc, out, err = check(capsys, str(path))
    assert (rc, out) == (EXIT_USAGE, "")
    assert err.splitlines() == [f"{path}: {expected}", f"supervisor: 1 problem in {path}; nothing was started"]


def test_a_backoff_that_never_gives_up_is_a_warning_not_an_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "metrics: {enabled: false}\nconsole: {enabled: false}\nservers:\n"
        "  - {name: ok, handler: supervisor.handlers.echo:handle, port: 0, backoff: {max: 1s}}\n"
        "  - {name: taken, handler: supervisor.handlers.echo:handle, port: 0, backoff: {max: 30s}}\n"
    )
    rc, out, err = check(capsys, str(path))
    assert (rc, err) == (EXIT_OK, "")
    assert out.splitlines()[-3:] == [
        "warnings (the config is valid and runs as it is):",
        f"{path}:5: servers[1].backoff: with this backoff at most 10 restarts fit in restart_window (60s), so more "
        "than max_restarts (10) never happens and the supervisor would never give up on 'taken'; "
        "lower backoff.max or raise restart_window above 72.99s",
        f"{path}: OK, 2 server(s)",
    ]


def test_subprocess_deep_config_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(SERVER + "    options: {x: " + "[" * 5000 + "]" * 5000 + "}\n")
    result = check_in_a_process(path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"{path}:5: servers[0].options.x…: nested more than 64 levels deep; flatten this value",
        f"supervisor: 1 problem in {path}; nothing was started",
    ]


def test_one_pass_reports_a_malformed_entry_and_the_other_servers_import_errors(tmp_path: Path) -> None:
    """Found by a user: a typo in one server's entry hid the others' import errors until the next run."""
    (tmp_path / "mine.py").write_text("import nowhere_to_be_found\n")  # next to the config: imported from there
    path = tmp_path / "c.yaml"
    path.write_text(
        "servers:\n"
        '  - {name: a, handler: "no colon here", port: 1}\n'
        '  - {name: b, handler: "nosuchmod:x", port: 2}\n'
        '  - {name: c, handler: "supervisor.handlers.echo:hndle", port: 3}\n'
        '  - {name: d, handler: "mine:handle", port: 4}\n'
        '  - {name: e, handler: "nosuchmod:y", port: 5, backlog: -1}\n'  # its own problem: not imported as well
    )
    result = check_in_a_process(path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert [line.split(": ")[1] for line in lines[:-1]] == [
        "servers[0].handler", "servers[1].handler", "servers[2].handler", "servers[3].handler", "servers[4].backlog",
    ]  # fmt: skip
    assert "cannot import module 'nosuchmod'" in lines[1]
    assert "did you mean 'handle'?" in lines[2]
    assert "importing 'mine' raised ModuleNotFoundError: No module named 'nowhere_to_be_found'" in lines[3]
    assert lines[-1] == f"supervisor: 5 problems in {path}; nothing was started"
    assert "Traceback" not in result.stderr
