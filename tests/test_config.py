"""Config loading: every value read right, every problem reported as ``file:line: key.path: what is expected``."""

from __future__ import annotations

import errno
import math
import os
import stat
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import cpus
from supervisor.config import (
    BackoffSpec,
    Config,
    ConsoleSpec,
    Location,
    MetricsSpec,
    ServerSpec,
    SupervisorSpec,
    load_config,
    parse_config,
    parse_duration,
)
from supervisor.errors import ConfigError
from tests.e2e_util import unblock_fifo_later

ECHO = "supervisor.handlers.echo:handle"


def write(tmp_path: Path, text: str, name: str = "supervisor.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def one_problem(tmp_path: Path, text: str) -> str:
    """The single problem in ``text``, without the ``<file>:`` prefix (so tests read ``12: key: ...``)."""
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert len(problems) == 1, problems
    prefix = f"{path}:"
    assert problems[0].startswith(prefix), problems[0]
    return problems[0].removeprefix(prefix)


def server_with(line: str) -> str:
    """A one-server config with ``line`` added to the server at line 5."""
    return f"servers:\n  - name: echo\n    handler: {ECHO}\n    port: 8888\n    {line}\n"


# -- values read right ---------------------------------------------------------------------------------------------


def test_minimal_config_takes_every_default(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        servers:
          - {{name: echo, handler: "{ECHO}", port: 8888}}
        """,
    )
    config = load_config(path)
    assert config == Config(
        path=path,
        servers=(ServerSpec(name="echo", handler=ECHO, port=8888),),
        supervisor=SupervisorSpec(),
        metrics=MetricsSpec(),
        console=ConsoleSpec(),
    )
    server = config.servers[0]
    assert server.host == "127.0.0.1"
    assert server.restart == "permanent"
    assert server.on_handler_error == "log"
    assert server.backoff == BackoffSpec(initial=0.1, factor=2.0, max=5.0, jitter=0.1, reset_after=10.0)
    assert server.shutdown_timeout == 5.0
    assert server.backlog == 1024
    assert server.after == ()
    assert server.options == {}
    assert config.supervisor == SupervisorSpec("one_for_one", 10, 60.0, 30.0, "asyncio")


def test_every_key_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        supervisor:
          strategy: rest_for_one
          max_restarts: 3
          restart_window: 2m
          shutdown_timeout: 1500ms
          loop: uvloop
        metrics: {{enabled: false, host: 0.0.0.0, port: 0}}
        console: {{enabled: true, host: '::1', port: 3000, allow_remote: true, repl: true}}
        servers:
          - name: db.proxy-1
            handler: {ECHO}
            host: 10.0.0.1
            port: 5432
            restart: transient
            on_handler_error: restart
            backoff: {{initial: 250ms, factor: 3, max: 1m, jitter: 0, reset_after: 1h}}
            shutdown_timeout: 2.5
            backlog: 16
            options: {{a: 1, nested: {{b: [1, 2]}}}}
          - name: web
            handler: pkg.mod:Factory.make
            port: 80
            restart: temporary
            after: db.proxy-1
          - name: worker
            handler: {ECHO}
            port: 81
            after: [db.proxy-1, web]
        """,
    )
    config = load_config(path)
    assert config.supervisor == SupervisorSpec("rest_for_one", 3, 120.0, 1.5, "uvloop")
    assert config.metrics == MetricsSpec(enabled=False, host="0.0.0.0", port=0)
    assert config.console == ConsoleSpec(enabled=True, host="::1", port=3000, allow_remote=True, repl=True)
    db, web, worker = config.servers
    assert db == ServerSpec(
        name="db.proxy-1",
        handler=ECHO,
        host="10.0.0.1",
        port=5432,
        restart="transient",
        on_handler_error="restart",
        backoff=BackoffSpec(initial=0.25, factor=3.0, max=60.0, jitter=0.0, reset_after=3600.0),
        shutdown_timeout=2.5,
        backlog=16,
        options={"a": 1, "nested": {"b": [1, 2]}},
    )
    assert web.handler == "pkg.mod:Factory.make"
    assert web.restart == "temporary"
    assert web.after == ("db.proxy-1",)  # a single name is a list of one
    assert worker.after == ("db.proxy-1", "web")


def test_yaml_anchors_and_aliases_are_shared(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        servers:
          - name: a
            handler: {ECHO}
            port: 1
            backoff: &fast {{initial: 10ms, max: 1s}}
          - name: b
            handler: {ECHO}
            port: 2
            backoff: *fast
        """,
    )
    a, b = load_config(path).servers
    assert a.backoff == b.backoff == BackoffSpec(initial=0.01, max=1.0)


def test_locations_point_at_each_key_and_defaults_at_the_entry(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        metrics:
          port: 9200
        servers:
          - name: echo
            handler: {ECHO}
            port: 8888
            after:
              - other
          - name: other
            handler: {ECHO}
            port: 8889
        """,
    )
    config = load_config(path)
    echo = config.servers[0]
    assert echo.where("name") == Location(str(path), 4, "servers[0].name")
    assert echo.where("port") == Location(str(path), 6, "servers[0].port")
    assert echo.where("after") == Location(str(path), 7, "servers[0].after")  # the key's line, not the item's
    assert echo.where("host") == Location(str(path), 4, "servers[0]")  # a default: the server's entry
    assert str(echo.where("port")) == f"{path}:6: servers[0].port"
    assert config.servers[1].where(".") == Location(str(path), 9, "servers[1]")
    assert config.where("metrics.port") == Location(str(path), 2, "metrics.port")
    assert config.where("metrics.host") == Location(str(path), 1, "metrics")  # a default: the section
    assert config.where("console.port") == Location(str(path), 1, "console.port")  # no section at all


def test_specs_built_in_code_still_have_locations() -> None:
    spec = ServerSpec(name="echo", handler=ECHO, port=1)
    assert str(spec.where("port")) == "<config>:0: server 'echo'.port"
    config = Config(path=Path("x.yaml"), servers=(spec,))
    assert str(config.where("metrics.port")) == "x.yaml:1: metrics.port"


def test_parse_config_takes_text_and_names_the_path() -> None:
    config = parse_config(f"servers: [{{name: a, handler: '{ECHO}', port: 1}}]", Path("inline.yaml"))
    assert config.path == Path("inline.yaml")
    with pytest.raises(ConfigError) as info:
        parse_config("servers: []", Path("inline.yaml"))
    assert info.value.problems == ["inline.yaml:1: servers: expected a non-empty list of servers, got an empty list"]


# -- durations ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (2, 2.0),
        (1.5, 1.5),
        ("0", 0.0),
        ("1.5", 1.5),
        ("250ms", 0.25),
        ("1ms", 0.001),
        ("10s", 10.0),
        ("0.5s", 0.5),
        ("2m", 120.0),
        ("1.5m", 90.0),
        ("1h", 3600.0),
        (" 3 s ", 3.0),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10x", "expected a duration like 250ms, 10s, 2m or a number of seconds"),
        ("ms", "expected a duration like 250ms, 10s, 2m or a number of seconds"),
        ("1 5s", "expected a duration like 250ms, 10s, 2m or a number of seconds"),
        ("10S", "expected a duration like 250ms, 10s, 2m or a number of seconds"),
        ("-1s", "expected a duration like 250ms, 10s, 2m or a number of seconds"),
        ("", "expected a duration like 250ms, 10s, 2m or a number of seconds"),
        (True, "expected a duration like 250ms, 10s, 2m or a number of seconds"),
        (None, "expected a duration like 250ms, 10s, 2m or a number of seconds"),
        ([1], "expected a duration like 250ms, 10s, 2m or a number of seconds"),
        (-1, "expected a duration >= 0"),
        (-0.5, "expected a duration >= 0"),
        (math.inf, "expected a finite duration"),
        (math.nan, "expected a finite duration"),
        (10**400, "expected a finite duration"),  # used to escape as OverflowError
        ("1" + "0" * 400 + "s", "expected a finite duration"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        parse_duration(value)


@given(st.integers(min_value=0, max_value=10**12))
def test_milliseconds_round_trip(n: int) -> None:
    # 250ms is 250 / 1000, exactly what the user means (n * 0.001 is off by one ulp for n = 9, 13, 18, ...)
    assert parse_duration(f"{n}ms") == n / 1000


@given(st.integers(min_value=0, max_value=10**12))
def test_whole_units_round_trip(n: int) -> None:
    assert parse_duration(n) == parse_duration(f"{n}") == parse_duration(f"{n}s") == float(n)
    assert parse_duration(f"{n}m") == n * 60.0
    assert parse_duration(f"{n}h") == n * 3600.0


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_numbers_are_seconds(x: float) -> None:
    assert parse_duration(x) == x
    assert parse_duration(f"{x:f}s") == pytest.approx(x, abs=1e-6)


def test_duration_keys_accept_numbers_and_units(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        supervisor: {{restart_window: 90, shutdown_timeout: 2m}}
        servers:
          - {{name: a, handler: "{ECHO}", port: 1, shutdown_timeout: 250ms, backoff: {{initial: 0, max: 0.5}}}}
        """,
    )
    config = load_config(path)
    assert config.supervisor.restart_window == 90.0
    assert config.supervisor.shutdown_timeout == 120.0
    assert config.servers[0].shutdown_timeout == 0.25
    assert config.servers[0].backoff.initial == 0.0
    assert config.servers[0].backoff.max == 0.5


# -- the file itself -------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert problems_of(path) == [f"{path}: cannot read the config file: No such file or directory; check the path"]


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    assert problems_of(tmp_path) == [f"{tmp_path}: cannot read the config file: it is a directory; name a regular file"]


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "servers: []\n")

    def refuse(name: object, *args: object, **kwargs: object) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(name))

    # chmod 000 does not stop root, so make the open fail the way it would for anyone else
    monkeypatch.setattr(os, "open", refuse)
    assert problems_of(path) == [f"{path}: cannot read the config file: Permission denied; check the path"]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"servers: []\n# caf\xe9\n")
    assert problems_of(path) == [f"{path}: the config file is not UTF-8 text (invalid continuation byte)"]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n...\n", "~\n", "null\n"])
def test_empty_config(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert problems_of(path) == [f"{path}:1: the config is empty; it needs at least a 'servers' list"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "servers:\n  - name: echo\n    port: [1, 2\n",
            "4: invalid YAML: expected ',' or ']', but got '<stream end>'; fix the syntax",
        ),
        (
            "servers:\n  - name: echo\n\tport: 1\n",
            "3: invalid YAML: found character '\\t' that cannot start any token; fix the syntax",
        ),
        (
            "servers:\n  - name: 'echo\n",
            "3: invalid YAML: found unexpected end of stream; fix the syntax",
        ),
        (
            "servers: []\n---\nservers: []\n",
            "2: invalid YAML: but found another document; fix the syntax",
        ),
        (
            "servers:\n  - name: *nope\n",
            "2: invalid YAML: found undefined alias 'nope'; fix the syntax",
        ),
        (
            "servers:\n  - name: ok\n    handler: \x01\n",
            "3: invalid YAML: unacceptable character #x0001: special characters are not allowed; remove that character",
        ),
    ],
    ids=["unclosed-list", "tab", "unclosed-quote", "two-documents", "undefined-alias", "control-character"],
)
def test_yaml_syntax_errors_name_the_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    assert problems_of(path) == [f"{path}:{expected}"]


@pytest.mark.parametrize(
    ("text", "got"),
    [
        ("- a\n- b\n", "a list"),
        ("just a string\n", "'just a string'"),
        ("42\n", "42"),
        ("true\n", "true"),
    ],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    assert one_problem(tmp_path, text) == (
        f"1: (top level): expected a mapping with keys supervisor, metrics, console, logging, servers, got {got}"
    )


# -- keys ----------------------------------------------------------------------------------------------------------


def test_unknown_top_level_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        # comment
        supervisr: {{}}
        servers:
          - {{name: a, handler: "{ECHO}", port: 1}}
        """,
    )
    assert problems_of(path) == [f"{path}:2: supervisr: unknown key; did you mean 'supervisor'?"]


def test_misspelled_servers_is_unknown_and_servers_is_missing(tmp_path: Path) -> None:
    path = write(tmp_path, f"metrics: {{port: 9000}}\nserver:\n  - {{name: a, handler: '{ECHO}', port: 1}}\n")
    assert problems_of(path) == [
        f"{path}:1: servers: missing; declare at least one server (name, handler, port)",
        f"{path}:2: server: unknown key; did you mean 'servers'?",
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("hostt: 127.0.0.1", "5: servers[0].hostt: unknown key; did you mean 'host'?"),
        ("restarts: permanent", "5: servers[0].restarts: unknown key; did you mean 'restart'?"),
        ("option: {}", "5: servers[0].option: unknown key; did you mean 'options'?"),
        (
            "zzz: 1",
            "5: servers[0].zzz: unknown key; expected one of: name, handler, port, kind, host, unix, mode, tls, "
            "restart, on_handler_error, "
            "backoff, shutdown_timeout, backlog, max_connections, idle_timeout, read_limit, max_write_buffer, "
            "start_timeout, start_retries, after, options",
        ),
        ("backoff: {intial: 1s}", "5: servers[0].backoff.intial: unknown key; did you mean 'initial'?"),
        ("[a]: 1", "5: servers[0]: keys must be plain strings"),
    ],
)
def test_unknown_server_keys(tmp_path: Path, line: str, expected: str) -> None:
    assert one_problem(tmp_path, server_with(line)) == expected


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("supervisor: {stratgy: one_for_all}", "1: supervisor.stratgy: unknown key; did you mean 'strategy'?"),
        ("metrics: {prot: 1}", "1: metrics.prot: unknown key; did you mean 'port'?"),
        ("console: {repel: true}", "1: console.repel: unknown key; did you mean 'repl'?"),
        (
            "metrics: {zzz: 1}",
            "1: metrics.zzz: unknown key; expected one of: enabled, host, port",
        ),
    ],
)
def test_unknown_section_keys(tmp_path: Path, section: str, expected: str) -> None:
    text = f"{section}\nservers: [{{name: a, handler: '{ECHO}', port: 1}}]\n"
    assert one_problem(tmp_path, text) == expected


def test_duplicate_keys_everywhere(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        metrics: {{port: 1}}
        metrics: {{port: 2}}
        servers:
          - name: echo
            handler: {ECHO}
            port: 8888
            port: 8889
            backoff: {{initial: 1s, initial: 2s}}
          - name: f
            handler: pkg:make
            port: 1
            options:
              a: 1
              deep:
                - {{x: 1, x: 2}}
              a: 3
        """,
    )
    assert problems_of(path) == [
        f"{path}:2: metrics: duplicate key; keep only one",
        f"{path}:7: servers[0].port: duplicate key; keep only one",
        f"{path}:8: servers[0].backoff.initial: duplicate key; keep only one",
        f"{path}:15: servers[1].options.deep[0].x: duplicate key; keep only one",
        f"{path}:16: servers[1].options.a: duplicate key; keep only one",
    ]


# -- values: types and ranges ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("host: ''", "servers[0].host: expected a host name or IP address such as 127.0.0.1, got ''"),
        ("host: a b", "servers[0].host: expected a host name or IP address such as 127.0.0.1, got 'a b'"),
        ("host: 5", "servers[0].host: expected a host name or IP address such as 127.0.0.1, got 5"),
        ("host: [a]", "servers[0].host: expected a host name or IP address such as 127.0.0.1, got a list"),
        (
            "restart: permanant",
            "servers[0].restart: expected one of permanent | transient | temporary (did you mean 'permanent'?), "
            "got 'permanant'",
        ),
        ("restart: 1", "servers[0].restart: expected one of permanent | transient | temporary, got 1"),
        (
            "on_handler_error: crash",
            "servers[0].on_handler_error: expected one of log | restart, got 'crash'",
        ),
        ("backlog: 0", "servers[0].backlog: expected an integer 1-65535, got 0"),
        ("backlog: many", "servers[0].backlog: expected an integer 1-65535, got 'many'"),
        ("shutdown_timeout: 0", "servers[0].shutdown_timeout: expected a duration > 0, got 0"),
        ("shutdown_timeout: 0ms", "servers[0].shutdown_timeout: expected a duration > 0, got '0ms'"),
        (
            "shutdown_timeout: 10x",
            "servers[0].shutdown_timeout: expected a duration like 250ms, 10s, 2m or a number of seconds, got '10x'",
        ),
        ("shutdown_timeout: -5", "servers[0].shutdown_timeout: expected a duration >= 0, got -5"),
        (
            "shutdown_timeout: yes",
            "servers[0].shutdown_timeout: expected a duration like 250ms, 10s, 2m or a number of seconds, got true",
        ),
        ("backoff: {factor: 0.5}", "servers[0].backoff.factor: expected a number from 1 to 100, got 0.5"),
        ("backoff: {factor: '2'}", "servers[0].backoff.factor: expected a number from 1 to 100, got '2'"),
        ("backoff: {jitter: 1.5}", "servers[0].backoff.jitter: expected a number from 0 to 1, got 1.5"),
        ("backoff: {jitter: true}", "servers[0].backoff.jitter: expected a number from 0 to 1, got true"),
        ("backoff: {initial: -1}", "servers[0].backoff.initial: expected a duration >= 0, got -1"),
        (
            "backoff: {reset_after: soon}",
            "servers[0].backoff.reset_after: expected a duration like 250ms, 10s, 2m or a number of seconds, "
            "got 'soon'",
        ),
        (
            "backoff: {initial: 2s, max: 1s}",
            "servers[0].backoff.max: expected a duration >= backoff.initial (2s), got 1s",
        ),
        (
            "backoff: {initial: 1m}",
            "servers[0].backoff.max: expected a duration >= backoff.initial (60s), got 5s (the default)",
        ),
        (
            "backoff: fast",
            "servers[0].backoff: expected a mapping with keys initial, factor, max, jitter, reset_after, got 'fast'",
        ),
        ("options: [a, b]", "servers[0].options: expected a mapping of option names to values, got ['a', 'b']"),
        ("options: {1: a}", "servers[0].options: expected a mapping of option names to values, got {1: 'a'}"),
        ("options:", "servers[0].options: expected a mapping of option names to values, got null"),
        ("after: [1]", "servers[0].after: expected a list of server names, got [1]"),
        ("after: {a: b}", "servers[0].after: expected a list of server names, got {'a': 'b'}"),
    ],
)
def test_wrong_server_values(tmp_path: Path, line: str, expected: str) -> None:
    assert one_problem(tmp_path, server_with(line)) == f"5: {expected}"


@pytest.mark.parametrize(
    ("value", "got"),
    [("http", "'http'"), ("70000", "70000"), ("-1", "-1"), ("true", "true"), ("8080.0", "8080.0"), ("", "null")],
)
def test_port_must_be_an_integer_0_65535(tmp_path: Path, value: str, got: str) -> None:
    text = f"servers:\n  - name: ok\n    handler: {ECHO}\n    port: 1\n  - name: bad\n    handler: {ECHO}\n"
    text += f"    port: {value}\n"
    assert one_problem(tmp_path, text) == f"7: servers[1].port: expected an integer 0-65535, got {got}"


def test_the_example_from_the_issue(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        # line 1
        supervisor:
          strategy: one_for_one
        metrics: {{port: 9100}}
        console: {{port: 20101}}
        servers:
          - name: echo
            handler: {ECHO}
            port: 8888

          - name: web
            port: http
            handler: {ECHO}
        """,
    )
    assert problems_of(path) == [f"{path}:12: servers[1].port: expected an integer 0-65535, got 'http'"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("echo server", "expected a name of letters, digits, '_', '.', '-' (at most 63), got 'echo server'"),
        ("-echo", "expected a name of letters, digits, '_', '.', '-' (at most 63), got '-echo'"),
        ("e" * 64, f"expected a name of letters, digits, '_', '.', '-' (at most 63), got '{'e' * 64}'"),
        ("5", "expected a name of letters, digits, '_', '.', '-' (at most 63), got 5"),
    ],
)
def test_server_names(tmp_path: Path, value: str, expected: str) -> None:
    text = f"servers:\n  - name: {value}\n    handler: {ECHO}\n    port: 1\n"
    assert one_problem(tmp_path, text) == f"2: servers[0].name: {expected}"


def test_longest_name_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, f"servers:\n  - name: {'e' * 63}\n    handler: {ECHO}\n    port: 1\n")
    assert load_config(path).servers[0].name == "e" * 63


@pytest.mark.parametrize("value", ["nope", "a:b:c", "1mod:handle", "mod:", ":handle", "mod handle:x"])
def test_handler_must_be_module_colon_attribute(tmp_path: Path, value: str) -> None:
    text = f"servers:\n  - name: a\n    handler: '{value}'\n    port: 1\n"
    assert one_problem(tmp_path, text) == (
        f"3: servers[0].handler: expected 'module:attribute', e.g. supervisor.handlers.echo:handle, got '{value}'"
    )


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "supervisor: {strategy: one_for_al}",
            "supervisor.strategy: expected one of one_for_one | one_for_all | rest_for_one "
            "(did you mean 'one_for_all'?), got 'one_for_al'",
        ),
        ("supervisor: {max_restarts: -1}", "supervisor.max_restarts: expected an integer 0-1000000, got -1"),
        ("supervisor: {max_restarts: ten}", "supervisor.max_restarts: expected an integer 0-1000000, got 'ten'"),
        ("supervisor: {restart_window: 0}", "supervisor.restart_window: expected a duration > 0, got 0"),
        (
            "supervisor: {restart_window: 1" + "0" * 400 + "}",
            "supervisor.restart_window: expected a finite duration, got 1" + "0" * 79 + "…",  # clipped
        ),
        ("supervisor: {shutdown_timeout: 0s}", "supervisor.shutdown_timeout: expected a duration > 0, got '0s'"),
        ("supervisor: {loop: tokio}", "supervisor.loop: expected one of asyncio | uvloop, got 'tokio'"),
        (
            "supervisor: [a]",
            "supervisor: expected a mapping with keys " + "strategy, max_restarts, "
            "restart_window, shutdown_timeout, loop, max_loop_lag, workers, got a list",
        ),
        ("metrics: {enabled: maybe}", "metrics.enabled: expected true or false, got 'maybe'"),
        ("metrics: {enabled: 1}", "metrics.enabled: expected true or false, got 1"),
        ("metrics: {port: 65536}", "metrics.port: expected an integer 0-65535, got 65536"),
        ("metrics: {host: ' '}", "metrics.host: expected a host name or IP address such as 127.0.0.1, got ' '"),
        ("metrics:", "metrics: expected a mapping with keys enabled, host, port, got null"),
        ("console: {port: 0}", "console.port: expected an integer 1-65534, got 0"),
        ("console: {port: 65535}", "console.port: expected an integer 1-65534, got 65535"),
        ("console: {allow_remote: 'yes'}", "console.allow_remote: expected true or false, got 'yes'"),
        ("console: {repl: null}", "console.repl: expected true or false, got null"),
    ],
)
def test_wrong_section_values(tmp_path: Path, section: str, expected: str) -> None:
    text = f"{section}\nservers: [{{name: a, handler: '{ECHO}', port: 1}}]\n"
    assert one_problem(tmp_path, text) == f"1: {expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("servers: []\n", "1: servers: expected a non-empty list of servers, got an empty list"),
        ("metrics: {}\nservers:\n", "2: servers: expected a non-empty list of servers, got null"),
        ("servers: echo\n", "1: servers: expected a non-empty list of servers, got 'echo'"),
        ("servers: {name: echo}\n", "1: servers: expected a non-empty list of servers, got a mapping"),
        ("# a\n# b\nmetrics: {port: 1}\n", "3: servers: missing; declare at least one server (name, handler, port)"),
    ],
)
def test_servers_must_be_a_non_empty_list(tmp_path: Path, text: str, expected: str) -> None:
    assert one_problem(tmp_path, text) == expected


def test_server_entries_must_be_mappings_with_required_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        servers:
          - echo
          - handler: {ECHO}
          - {{}}
        """,
    )
    keys = (
        "name, handler, port, kind, host, unix, mode, tls, restart, on_handler_error, backoff, shutdown_timeout, "
        "backlog, "
        "max_connections, "
        "idle_timeout, read_limit, max_write_buffer, start_timeout, start_retries, after, options"
    )
    assert problems_of(path) == [
        f"{path}:2: servers[0]: expected a mapping with keys {keys}, got 'echo'",
        f"{path}:3: servers[1].name: missing; every server needs name, handler and port (or unix: a path)",
        f"{path}:3: servers[1].port: missing; every server needs name, handler and port (or unix: a path)",
        f"{path}:4: servers[2].name: missing; every server needs name, handler and port (or unix: a path)",
        f"{path}:4: servers[2].handler: missing; every server needs name, handler and port (or unix: a path)",
        f"{path}:4: servers[2].port: missing; every server needs name, handler and port (or unix: a path)",
    ]


def test_every_problem_is_reported_top_of_the_file_first(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        supervisor:
          loop: tokio
        servers:
          - name: echo
            hostt: x
            port: http
            handler: {ECHO}
            restart: sometimes
          - name: b
            handler: nope
            port: 1
        console: {{port: 0}}
        """,
    )
    assert problems_of(path) == [
        f"{path}:2: supervisor.loop: expected one of asyncio | uvloop, got 'tokio'",
        f"{path}:5: servers[0].hostt: unknown key; did you mean 'host'?",
        f"{path}:6: servers[0].port: expected an integer 0-65535, got 'http'",
        f"{path}:8: servers[0].restart: expected one of permanent | transient | temporary, got 'sometimes'",
        f"{path}:10: servers[1].handler: expected 'module:attribute', e.g. supervisor.handlers.echo:handle, got 'nope'",
        f"{path}:12: console.port: expected an integer 1-65534, got 0",
    ]


def test_problems_in_a_block_value_point_at_its_key(tmp_path: Path) -> None:
    text = server_with("options:\n      - a\n      - b")
    assert one_problem(tmp_path, text) == (
        "5: servers[0].options: expected a mapping of option names to values, got ['a', 'b']"
    )


def test_problems_in_an_aliased_value_point_at_each_use(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        servers:
          - name: a
            handler: {ECHO}
            port: 1
            shutdown_timeout: &t nope
          - name: b
            handler: {ECHO}
            port: 2
            shutdown_timeout: *t
        """,
    )
    expected = "shutdown_timeout: expected a duration like 250ms, 10s, 2m or a number of seconds, got 'nope'"
    assert problems_of(path) == [f"{path}:5: servers[0].{expected}", f"{path}:9: servers[1].{expected}"]


# -- values YAML composes but cannot construct: problems, never a traceback ------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "shutdown_timeout: 2020-13-45",
            "servers[0].shutdown_timeout: expected a duration like 250ms, 10s, 2m or a number of seconds, "
            "got '2020-13-45', which YAML cannot read (month must be in 1..12)",
        ),
        (
            "backlog: !custom 5",
            "servers[0].backlog: expected an integer 1-65535, got '!custom 5', which YAML cannot read "
            "(could not determine a constructor for the tag '!custom')",
        ),
        (
            "backlog: !!int many",
            "servers[0].backlog: expected an integer 1-65535, got 'many', which YAML cannot read "
            "(invalid literal for int() with base 10: 'many')",
        ),
        (
            "options: {when: 2020-02-30}",
            "servers[0].options: expected a mapping of option names to values, got a mapping, which YAML "
            "cannot read (day is out of range for month)",
        ),
        (
            "options: &o {self: *o}",
            "servers[0].options: contains itself through an alias (*name inside &name); remove that alias",
        ),
        (
            "after: [!python/name:os.system x]",
            "servers[0].after: expected a list of server names, got a list, which YAML cannot read "
            "(could not determine a constructor for the tag '!python/name:os.system')",
        ),
    ],
    ids=["bad-date", "unknown-tag", "bad-int", "bad-date-in-options", "recursive-options", "python-tag"],
)
def test_unconstructable_values_are_problems(tmp_path: Path, line: str, expected: str) -> None:
    assert one_problem(tmp_path, server_with(line)) == f"5: {expected}"


def test_reading_goes_on_after_an_unconstructable_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        servers:
          - name: a
            handler: {ECHO}
            port: 1
            options: &o {{self: *o}}
          - name: b
            handler: {ECHO}
            port: 2
            options: {{ok: true}}
            backlog: huge
        """,
    )
    problems = problems_of(path)
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}:5: servers[0].options: ")
    assert problems[1] == f"{path}:10: servers[1].backlog: expected an integer 1-65535, got 'huge'"


# -- hostile or broken input: bounded in depth, size, time and memory, and never a traceback -------------------------


def bounded(run: Callable[[], str], seconds: float = 1.0, mib: float | None = 8.0) -> str:
    """``run()``, asserting it took under ``seconds`` and ``mib`` MiB of memory at its peak (None: not traced)."""
    if mib is None:
        started = time.perf_counter()
        result = run()
        assert time.perf_counter() - started < seconds
        return result
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = run()
        elapsed, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < seconds, f"took {elapsed:.2f}s"
    assert peak < mib * 2**20, f"peak {peak / 2**20:.1f} MiB"
    return result


@pytest.mark.parametrize(
    "value",
    ["[" * 500 + "]" * 500, "{a: " * 500 + "1" + "}" * 500, "[{a: " * 250 + "1" + "}]" * 250],
    ids=["lists", "mappings", "both"],
)
def test_deep_nesting_is_refused_before_it_is_built(tmp_path: Path, value: str) -> None:
    # used to be a RecursionError traceback, exit 1
    problem = bounded(lambda: one_problem(tmp_path, server_with(f"options: {{x: {value}}}")))
    assert problem == "5: servers[0].options.x…: nested more than 64 levels deep; flatten this value"


def test_deep_block_nesting_names_the_line(tmp_path: Path) -> None:
    keys = "".join(f"{'  ' * (i + 3)}k{i}:\n" for i in range(100))
    problem = one_problem(tmp_path, server_with(f"options:\n{keys}{'  ' * 103}1"))
    assert problem == "66: servers[0].options.k0…: nested more than 64 levels deep; flatten this value"


def test_deep_nesting_at_the_top_level(tmp_path: Path) -> None:
    assert (
        one_problem(tmp_path, "[" * 1000 + "]" * 1000)
        == "1: [0][0][0][0]…: nested more than 64 levels deep; flatten this value"
    )


def test_nesting_up_to_the_bound_is_read(tmp_path: Path) -> None:
    # the document's 64th level is the deepest read: root, servers, the entry, options, then 60 lists
    value = "[" * 60 + "]" * 60
    config = load_config(write(tmp_path, server_with(f"options: {{x: {value}}}")))
    inner = config.servers[0].options["x"]
    for _ in range(59):
        (inner,) = inner
    assert inner == []
    assert one_problem(tmp_path, server_with(f"options: {{x: [{value}]}}")).endswith(
        "nested more than 64 levels deep; flatten this value"
    )


def test_aliases_cannot_nest_deeper_than_the_bound(tmp_path: Path) -> None:
    # each anchor is 40 levels deep and holds the one before: 800 levels once expanded, 42 as written
    anchors = "".join(f"      k{i}: &x{i} {'[' * 40}{f'[*x{i - 1}]' if i else '[]'}{']' * 40}\n" for i in range(20))
    problem = one_problem(tmp_path, server_with(f"options:\n{anchors}"))
    assert problem == "5: servers[0].options: nested more than 64 levels deep (aliases expanded); flatten this value"


def test_a_nearly_full_stack_is_a_problem_not_a_recursion_error(tmp_path: Path) -> None:
    text = server_with(f"options: {{x: {'[' * 50}{']' * 50}}}")
    frames, frame = 0, sys._getframe()
    while frame.f_back is not None:
        frames, frame = frames + 1, frame.f_back
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(frames + 90)  # room for the call, not for composing 55 levels
    try:
        with pytest.raises(ConfigError) as info:
            parse_config(text, Path("deep.yaml"))
    finally:
        sys.setrecursionlimit(limit)
    # libyaml composes it without the Python stack; building the value then meets the limit: still a located
    # problem (the pure-Python composer, used for files the fast path refuses, says "nested too deeply")
    (problem,) = info.value.problems
    assert problem.startswith("deep.yaml:5: servers[0].options: ")
    assert problem.endswith("(maximum recursion depth exceeded)")


def alias_bomb(levels: int, indent: str = "      - ") -> str:
    """'Billion laughs': each anchor is a list of 9 aliases of the one before, so ``levels`` stand for 9**levels."""
    items = ["&l0 [x, x, x, x, x, x, x, x, x]"]
    items += [f"&l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, levels)]
    return "".join(f"{indent}{item}\n" for item in items)


@pytest.mark.parametrize("key", ["options", "after"])
def test_an_alias_bomb_is_refused_before_it_is_built(tmp_path: Path, key: str) -> None:
    # 7 levels (4.8 million values) used to be built and echoed in full: 28 MB of message, 80 MB, 0.7 s;
    # 10 levels ran out of memory
    problem = bounded(lambda: one_problem(tmp_path, server_with(f"{key}:\n{alias_bomb(7)}")))
    assert problem == f"5: servers[0].{key}: holds more than 10000 values with its aliases expanded; make it smaller"


def test_an_alias_bomb_is_refused_even_where_sharing_makes_it_cheap(tmp_path: Path) -> None:
    # as mapping values the aliases are built once and shared, but a handler walking its options would not be
    bomb = alias_bomb(10, indent="      ").replace("&l", "l_: &l").split("\n")
    text = server_with("options:\n" + "\n".join(line.replace("l_", f"k{i}") for i, line in enumerate(bomb)))
    problem = bounded(lambda: one_problem(tmp_path, text))
    assert problem == "5: servers[0].options: holds more than 10000 values with its aliases expanded; make it smaller"


def test_values_up_to_the_bound_are_read(tmp_path: Path) -> None:
    # 1 mapping + 4 * 2 keys and lists + 4 * 1248 items = 5001 values with the aliases expanded
    text = server_with(f"options: {{a: &l [{', '.join(['1'] * 1248)}], b: *l, c: *l, d: *l}}")
    assert len(load_config(write(tmp_path, text)).servers[0].options["d"]) == 1248


def test_a_value_containing_itself_is_refused(tmp_path: Path) -> None:
    # a recursive list used to be built (and repr()'d as [[...]]); it cannot be meant
    assert one_problem(tmp_path, server_with("after: &x [*x]")) == (
        "5: servers[0].after: contains itself through an alias (*name inside &name); remove that alias"
    )


def test_echoed_values_are_clipped(tmp_path: Path) -> None:
    # 1,000 aliases of one 10,000-character string: echoed in full, that was 10 MB in one line
    text = server_with(f"options: [&s {'x' * 10_000}, {', '.join(['*s'] * 1000)}]")
    problem = bounded(lambda: one_problem(tmp_path, text))
    assert problem == f"5: servers[0].options: expected a mapping of option names to values, got ['{'x' * 78}…"
    assert len(one_problem(tmp_path, server_with(f"name: {'n' * 5000}"))) < 200


def test_an_integer_too_long_to_print_is_a_problem(tmp_path: Path) -> None:
    # int's repr refuses 4,300+ digits: that ValueError used to escape from the message itself
    assert one_problem(tmp_path, server_with(f"backlog: 0x{'f' * 6000}")) == (
        "5: servers[0].backlog: expected an integer 1-65535, got an integer of 24000 bits"
    )


def test_keys_are_echoed_on_one_line(tmp_path: Path) -> None:
    problem = one_problem(tmp_path, server_with('"zz\\nzz\\u2028": 1'))
    assert problem.startswith("5: servers[0].zz\\nzz\\u2028: unknown key; ")
    assert len(problem.splitlines()) == 1


def test_problems_are_capped_at_100_lines(tmp_path: Path) -> None:
    keys = "".join(f"    zz{i}: 1\n" for i in range(300))
    path = write(tmp_path, server_with("backlog: 1") + keys)
    problems = problems_of(path)
    assert len(problems) == 100
    assert problems[98].startswith(f"{path}:104: servers[0].zz98: unknown key; ")
    assert problems[99] == f"{path}:105: and 201 more; fix these and check again"


def test_a_file_of_too_many_values_is_refused(tmp_path: Path) -> None:
    text = server_with(f"options: {{x: [{', '.join(['1'] * 60_000)}]}}")
    problem = bounded(lambda: one_problem(tmp_path, text), seconds=5.0, mib=None)  # ~1 s: PyYAML is pure Python
    assert problem == "5: the config holds more than 50000 values; it cannot be meant as one"


def test_a_file_larger_than_1_mib_is_refused(tmp_path: Path) -> None:
    config = server_with("backlog: 1")
    path = write(tmp_path, config + "#" * (2**20 - len(config) - 1) + "\n")
    assert path.stat().st_size == 2**20
    assert load_config(path).servers[0].backlog == 1  # 1 MiB exactly is read
    path.write_text(config + "#" * 2**20)
    assert problems_of(path) == [
        f"{path}: the config file is larger than 1 MiB; check the path (a config is a few KiB)"
    ]


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_dev_zero_is_not_a_config(tmp_path: Path) -> None:
    # used to read until MemoryError
    expected = "cannot read the config file: it is a character device; name a regular file"
    assert problems_of(Path("/dev/zero")) == [f"/dev/zero: {expected}"]
    (tmp_path / "link.yaml").symlink_to("/dev/zero")
    assert problems_of(tmp_path / "link.yaml") == [f"{tmp_path / 'link.yaml'}: {expected}"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    # opening a pipe for reading used to block until something wrote to it: forever, for `check`
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)

    unblock_fifo_later(fifo)
    started = time.perf_counter()
    assert problems_of(fifo) == [f"{fifo}: cannot read the config file: it is a named pipe; name a regular file"]
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("name", '"echo\\n"', "expected a name of letters, digits, '_', '.', '-' (at most 63), got 'echo\\n'"),
        ("handler", f'"{ECHO}\\n"', f"expected 'module:attribute', e.g. {ECHO}, got '{ECHO}\\n'"),
        ("handler", "pkg..mod:make", f"expected 'module:attribute', e.g. {ECHO}, got 'pkg..mod:make'"),
        ("host", '"127.0.0.1\\n"', "expected a host name or IP address such as 127.0.0.1, got '127.0.0.1\\n'"),
        ("host", '"a\\tb"', "expected a host name or IP address such as 127.0.0.1, got 'a\\tb'"),
        ("host", "h" * 254, f"expected a host name or IP address such as 127.0.0.1, got '{'h' * 79}…"),
    ],
    ids=["name-newline", "handler-newline", "handler-empty-part", "host-newline", "host-tab", "host-too-long"],
)
def test_a_trailing_newline_or_control_character_is_not_a_value(
    tmp_path: Path, key: str, value: str, expected: str
) -> None:
    # the patterns ended in "$", which also matches before a trailing newline: 'echo\n' was a valid name
    fields = {"name": "echo", "handler": ECHO, "port": "1", key: value}
    text = "servers:\n  - " + "\n    ".join(f"{k}: {v}" for k, v in fields.items()) + "\n"
    assert one_problem(tmp_path, text) == f"{2 + list(fields).index(key)}: servers[0].{key}: {expected}"


def test_durations_and_sizes_still_allow_surrounding_spaces(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, server_with('shutdown_timeout: " 2s\\n"\n    read_limit: "8KiB\\n"')))
    assert (config.servers[0].shutdown_timeout, config.servers[0].read_limit) == (2.0, 8192)


def test_a_size_of_thousands_of_digits_is_a_problem_not_a_python_limit(tmp_path: Path) -> None:
    # int() refuses 4,300+ digits: its own message ("Exceeds the limit ...") used to be the problem's text
    assert one_problem(tmp_path, server_with(f"read_limit: {'1' * 5000}KiB")) == (
        f"5: servers[0].read_limit: expected a size like 65536, 64KiB or 8MiB, got '{'1' * 79}…"
    )


def _outcome(text: str) -> str:
    try:
        parse_config(text, Path("same.yaml"))
    except ConfigError as exc:
        return "\n".join(exc.problems)
    return "OK"


@pytest.mark.parametrize(
    "text",
    [
        *(server_with(f"options: {{x: {'[' * n}1{']' * n}}}") for n in range(58, 66)),  # around MAX_DEPTH
        *(server_with(f"options: {{x: {'[' * n}{']' * n}}}") for n in range(58, 66)),
        server_with("options: {x: 1}") + "\ufeff\n",  # libyaml skips a BOM at a line start, PyYAML refuses it
        "\ufeff" + server_with("options: {x: 1}"),  # a BOM at the very start is fine for both
        server_with("options: {x: 1}") + "...\t#\n",
    ],
)
def test_the_libyaml_fast_path_agrees_with_the_bounded_reader(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: the fast path must accept or refuse exactly what the bounded pure-Python reader does."""
    fast = _outcome(text)
    monkeypatch.setattr("supervisor.config.compose_fast", lambda _text: None)
    assert fast == _outcome(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, "got 0"), ("many", "got 'many'"), (True, "got true"), (257, "got 257")],
)
def test_workers_must_be_a_count_or_auto(tmp_path: Path, value: object, expected: str) -> None:
    shown = "true" if value is True else repr(value) if isinstance(value, str) else value
    text = f"supervisor: {{workers: {shown}}}\nservers: [{{name: a, handler: '{ECHO}', port: 1}}]\n"
    problem = one_problem(tmp_path, text)
    assert problem.startswith("1: supervisor.workers: expected an integer 1-256 or 'auto'"), problem
    assert expected in problem, problem


def test_workers_auto_is_one_per_usable_cpu(tmp_path: Path) -> None:
    path = write(tmp_path, f"supervisor: {{workers: auto}}\nservers: [{{name: a, handler: '{ECHO}', port: 1}}]\n")
    assert load_config(path).supervisor.workers == cpus.auto()[0]  # the affinity, capped by a CPU quota


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("{level: LOUD}", "1: logging.level: expected one of DEBUG | INFO | WARNING | ERROR"),
        ("{format: yaml}", "1: logging.format: expected one of text | json"),
        ("{dict_config: [1]}", "1: logging.dict_config: expected a logging.config.dictConfig mapping, got [1]"),
        ("{dict_config: {root: {}}}", "1: logging.dict_config: expected 'version: 1' in it"),
        ("{format: json, dict_config: {version: 1}}", "1: logging.format: not with dict_config: its loggers, handlers"),
        ("{levle: INFO}", "1: logging.levle: unknown key; did you mean 'level'?"),
    ],
)
def test_the_logging_section_is_checked_at_its_line(tmp_path: Path, section: str, expected: str) -> None:
    problem = one_problem(tmp_path, f"logging: {section}\nservers: [{{name: a, handler: '{ECHO}', port: 1}}]\n")
    assert problem.startswith(expected), problem


def test_the_logging_section_reads_level_format_and_a_dict_config(tmp_path: Path) -> None:
    plain = write(
        tmp_path, f"logging: {{level: DEBUG, format: json}}\nservers: [{{name: a, handler: '{ECHO}', port: 1}}]\n"
    )
    spec = load_config(plain).logging
    assert (spec.level, spec.format, spec.dict_config) == ("DEBUG", "json", {})
    own = write(
        tmp_path,
        "logging:\n  dict_config: {version: 1, root: {level: WARNING}}\n"
        f"servers: [{{name: a, handler: '{ECHO}', port: 1}}]\n",
    )
    spec = load_config(own).logging
    assert spec.dict_config == {"version": 1, "root": {"level": "WARNING"}}
    assert spec.where == f"{own}:2: logging.dict_config"  # where run points if dictConfig then refuses it
