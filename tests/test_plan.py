"""Config -> Plan: start order, address clashes, handler resolution; every problem at file:line: key.path."""

from __future__ import annotations

import itertools
import re
import socket
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from supervisor import plan_checks
from supervisor.config import BackoffSpec, Config, MetricsSpec, ServerSpec, SupervisorSpec, load_config
from supervisor.errors import ConfigError
from supervisor.handlers import chat, echo, http
from supervisor.plan import Plan, make_plan
from supervisor.restart import Backoff, Intensity

PROD = Path(__file__).resolve().parents[1] / "configs" / "prod.yaml"
ECHO = "supervisor.handlers.echo:handle"
HTTP = "supervisor.handlers.http:make"
_counter = itertools.count()


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """make_plan puts the config's folder on sys.path: keep that from leaking into other tests."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture
def module(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Write a handler module next to the config under a fresh name (sys.modules caches by name)."""
    names: list[str] = []

    def make(source: str) -> str:
        name = f"plan_handlers_{next(_counter)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source).lstrip("\n"), encoding="utf-8")
        names.append(name)
        return name

    yield make
    for name in names:
        sys.modules.pop(name, None)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "supervisor.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def plan_of(tmp_path: Path, text: str) -> Plan:
    return make_plan(load_config(write(tmp_path, text)))


def problems_of(tmp_path: Path, text: str) -> list[str]:
    """The plan's problems with the ``<file>:`` prefix removed (the config itself must be valid)."""
    path = write(tmp_path, text)
    config = load_config(path)
    with pytest.raises(ConfigError) as info:
        make_plan(config)
    for problem in info.value.problems:
        assert problem.startswith(f"{path}:"), problem
    return [p.removeprefix(f"{path}:") for p in info.value.problems]


def servers(*entries: str) -> str:
    """A config with metrics and console off (so only the servers' ports matter) and one line per server."""
    body = "".join(f"  - {{{e}}}\n" for e in entries)
    return f"metrics: {{enabled: false}}\nconsole: {{enabled: false}}\nservers:\n{body}"


def order(plan: Plan) -> list[str]:
    return [s.name for s in plan.servers]


# -- the shipped config ---------------------------------------------------------------------------------------------


def test_prod_config_loads_and_plans() -> None:
    config = load_config(PROD)
    assert [s.name for s in config.servers] == ["echo", "http", "chat"]
    plan = make_plan(config)
    assert order(plan) == ["echo", "http", "chat"]
    assert [s.rank for s in plan.servers] == [0, 1, 2]
    ranks = {s.name: s.rank for s in plan.servers}
    for server in plan.servers:
        for dep in server.after:
            assert ranks[dep] < server.rank, f"{server.name} starts before {dep}"
    by_name = {s.name: s for s in plan.servers}
    assert by_name["chat"].after == ("echo",)
    assert by_name["echo"].target is echo.handle
    assert by_name["echo"].direct is True
    assert by_name["http"].target is http.make
    assert by_name["http"].direct is False
    assert by_name["http"].options["body"] == "hello from supervisor\n"
    assert by_name["chat"].target is chat.room
    assert by_name["chat"].direct is False
    assert (by_name["echo"].host, by_name["echo"].port) == ("127.0.0.1", 8888)
    assert by_name["echo"].backoff.initial == 0.1
    assert by_name["http"].shutdown_timeout == 10.0
    assert plan.supervisor.restart_window == 60.0
    assert plan.source == str(PROD)


def test_prod_table() -> None:
    assert make_plan(load_config(PROD)).table()[:7] == [
        "#  server  address         restart    on_error  backoff        drain  after  handler",
        "1  echo    127.0.0.1:8888  permanent  log       0.1s x2 <= 5s  5s     -      supervisor.handlers.echo:handle",
        "2  http    127.0.0.1:8080  permanent  log       0.1s x2 <= 5s  10s    -      supervisor.handlers.http:make",
        "3  chat    127.0.0.1:7777  permanent  log       0.1s x2 <= 5s  5s     echo   supervisor.handlers.chat:room",
        "strategy one_for_one, at most 10 restarts in 60s, shutdown within 30s, loop asyncio",
        "metrics http://127.0.0.1:9100/metrics",
        "console telnet 127.0.0.1 20101",
    ]


def test_table_with_metrics_and_console_off(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path, servers(f"name: a, handler: '{ECHO}', port: 1, after: [b]", f"name: b, handler: '{ECHO}', port: 2")
    )
    lines = plan.table()
    assert lines[1].split()[:2] == ["1", "b"]
    assert lines[2].split()[:2] == ["2", "a"]
    assert lines[2].split()[-2] == "b"
    assert lines[4:6] == ["metrics off", "console off"]


# -- start order ----------------------------------------------------------------------------------------------------


def test_file_order_without_after(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, servers(*(f"name: s{i}, handler: '{ECHO}', port: {i}" for i in range(1, 6))))
    assert order(plan) == ["s1", "s2", "s3", "s4", "s5"]


def test_dependencies_start_first_otherwise_file_order(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        servers(
            f"name: a, handler: '{ECHO}', port: 1, after: [c]",
            f"name: b, handler: '{ECHO}', port: 2",
            f"name: c, handler: '{ECHO}', port: 3",
            f"name: d, handler: '{ECHO}', port: 4, after: [a, b]",
        ),
    )
    assert order(plan) == ["b", "c", "a", "d"]
    assert [s.rank for s in plan.servers] == [0, 1, 2, 3]


def test_a_chain_starts_from_its_end(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        servers(
            f"name: a, handler: '{ECHO}', port: 1, after: b",
            f"name: b, handler: '{ECHO}', port: 2, after: c",
            f"name: c, handler: '{ECHO}', port: 3",
        ),
    )
    assert order(plan) == ["c", "b", "a"]


def test_unknown_after_target_suggests_the_closest(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path,
        servers(
            f"name: echo, handler: '{ECHO}', port: 1",
            f"name: chat, handler: '{ECHO}', port: 2, after: [ecko]",
        ),
    ) == ["5: servers[1].after: unknown server 'ecko'; did you mean 'echo'?"]


def test_unknown_after_target_lists_the_servers(tmp_path: Path) -> None:
    text = f"""
        servers:
          - name: echo
            handler: {ECHO}
            port: 1
          - name: chat
            handler: {ECHO}
            port: 2
            after:
              - echo
              - zzz
        """
    assert problems_of(tmp_path, text) == ["8: servers[1].after: unknown server 'zzz'; known servers: echo, chat"]


def test_a_server_cannot_wait_for_itself(tmp_path: Path) -> None:
    assert problems_of(tmp_path, servers(f"name: a, handler: '{ECHO}', port: 1, after: [a]")) == [
        "4: servers[0].after: server 'a' cannot wait for itself"
    ]


def test_two_server_cycle(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path,
        servers(
            f"name: a, handler: '{ECHO}', port: 1, after: [b]",
            f"name: b, handler: '{ECHO}', port: 2, after: [a]",
        ),
    ) == ["4: servers[0].after: dependency cycle a -> b -> a; remove one 'after' entry"]


def test_cycle_reached_through_a_server_outside_it(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path,
        servers(
            f"name: top, handler: '{ECHO}', port: 1, after: [x]",
            f"name: ok, handler: '{ECHO}', port: 2",
            f"name: x, handler: '{ECHO}', port: 3, after: [y]",
            f"name: y, handler: '{ECHO}', port: 4, after: [ok, z]",
            f"name: z, handler: '{ECHO}', port: 5, after: [x]",
        ),
    ) == ["6: servers[2].after: dependency cycle x -> y -> z -> x; remove one 'after' entry"]


def test_every_cycle_is_reported(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path,
        servers(
            f"name: a, handler: '{ECHO}', port: 1, after: [b]",
            f"name: b, handler: '{ECHO}', port: 2, after: [a]",
            f"name: c, handler: '{ECHO}', port: 3, after: [d]",
            f"name: d, handler: '{ECHO}', port: 4, after: [c]",
        ),
    ) == [
        "4: servers[0].after: dependency cycle a -> b -> a; remove one 'after' entry",
        "6: servers[2].after: dependency cycle c -> d -> c; remove one 'after' entry",
    ]


def test_cycle_beside_a_duplicate_name_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    # used to raise StopIteration: the cycle search looked the duplicate up by name and found the wrong one
    assert problems_of(
        tmp_path,
        servers(
            f"name: a, handler: '{ECHO}', port: 1, after: [c]",
            f"name: a, handler: '{ECHO}', port: 2",
            f"name: c, handler: '{ECHO}', port: 3, after: [d]",
            f"name: d, handler: '{ECHO}', port: 4, after: [c]",
        ),
    ) == [
        "5: servers[1].name: duplicate server name 'a' (first at line 4)",
        "6: servers[2].after: dependency cycle c -> d -> c; remove one 'after' entry",
    ]


# -- names and addresses ------------------------------------------------------------------------------------------


def test_duplicate_names(tmp_path: Path) -> None:
    text = f"""
        servers:
          - name: echo
            handler: {ECHO}
            port: 1
          - name: other
            handler: {ECHO}
            port: 2
          - name: echo
            handler: {ECHO}
            port: 3
        """
    assert problems_of(tmp_path, text) == ["8: servers[2].name: duplicate server name 'echo' (first at line 2)"]


@pytest.mark.parametrize(
    ("first", "second", "clash"),
    [
        ("127.0.0.1", "127.0.0.1", "127.0.0.1:8000"),
        ("0.0.0.0", "127.0.0.1", "127.0.0.1:8000"),
        ("127.0.0.1", "0.0.0.0", "0.0.0.0:8000"),
        ("::", "::1", "::1:8000"),
        ("::1", "::", ":::8000"),
    ],
)
def test_duplicate_host_and_port(tmp_path: Path, first: str, second: str, clash: str) -> None:
    assert problems_of(
        tmp_path,
        servers(
            f"name: a, handler: '{ECHO}', host: '{first}', port: 8000",
            f"name: b, handler: '{ECHO}', host: '{second}', port: 8000",
        ),
    ) == [f"5: servers[1].port: {clash} is already used by server 'a'; pick another port"]


def test_same_port_on_different_hosts_and_port_zero_are_fine(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        servers(
            f"name: a, handler: '{ECHO}', host: 127.0.0.1, port: 8000",
            f"name: b, handler: '{ECHO}', host: 127.0.0.2, port: 8000",
            f"name: c, handler: '{ECHO}', port: 0",
            f"name: d, handler: '{ECHO}', port: 0",
            f"name: e, handler: '{ECHO}', host: '::1', port: 8000",
        ),
    )
    assert order(plan) == ["a", "b", "c", "d", "e"]


def test_server_port_taken_by_metrics_or_console(tmp_path: Path) -> None:
    text = f"""
        metrics: {{port: 9100}}
        console: {{port: 20101}}
        servers:
          - {{name: a, handler: '{ECHO}', port: 9100}}
          - {{name: b, handler: '{ECHO}', port: 20101}}
          - {{name: c, handler: '{ECHO}', port: 20102}}
          - {{name: d, handler: '{ECHO}', host: 10.1.1.1, port: 9100}}
        """
    assert problems_of(tmp_path, text) == [
        "4: servers[0].port: 127.0.0.1:9100 is already used by metrics; pick another port",
        "5: servers[1].port: 127.0.0.1:20101 is already used by the console (telnet, console.port); pick another port",
        "6: servers[2].port: 127.0.0.1:20102 is already used by the console (web UI, console.port + 1); "
        "pick another port",
    ]


def test_metrics_and_console_clash_is_located(tmp_path: Path) -> None:
    text = f"""
        metrics:
          port: 7000
        console:
          enabled: true
          port: 6999
        servers:
          - {{name: a, handler: '{ECHO}', port: 1}}
        """
    # console.port + 1 is the metrics port; the problem names the line of console.port (it used to have none)
    assert problems_of(tmp_path, text) == [
        "5: console.port: 127.0.0.1:7000 is already used by metrics; pick another port"
    ]


def test_disabled_metrics_and_console_claim_nothing(tmp_path: Path) -> None:
    text = f"""
        metrics: {{enabled: false, port: 9100}}
        console: {{enabled: false, port: 20101}}
        servers:
          - {{name: a, handler: '{ECHO}', port: 9100}}
          - {{name: b, handler: '{ECHO}', port: 20102}}
        """
    assert order(plan_of(tmp_path, text)) == ["a", "b"]


def test_default_ports_of_metrics_and_console_are_located_at_the_top(tmp_path: Path) -> None:
    text = f"servers:\n  - {{name: a, handler: '{ECHO}', port: 20101}}\n"
    assert problems_of(tmp_path, text) == [
        "2: servers[0].port: 127.0.0.1:20101 is already used by the console (telnet, console.port); pick another port"
    ]
    config = load_config(tmp_path / "supervisor.yaml")
    assert str(config.where("console.port")) == f"{tmp_path / 'supervisor.yaml'}:1: console.port"


# -- handlers -----------------------------------------------------------------------------------------------------


def test_handler_next_to_the_config(tmp_path: Path, module: Callable[[str], str]) -> None:
    name = module(
        """
        import asyncio
        from collections.abc import Mapping
        from typing import Any

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        def make(options: Mapping[str, Any]):
            return handle

        async def amake(options):
            return handle

        class Holder:
            class Inner:
                @staticmethod
                def make(options):
                    return handle
        """
    )
    plan = plan_of(
        tmp_path,
        servers(
            f"name: direct, handler: '{name}:handle', port: 1",
            f"name: factory, handler: '{name}:make', port: 2, options: {{x: 1}}",
            f"name: async_factory, handler: '{name}:amake', port: 3",
            f"name: nested, handler: '{name}:Holder.Inner.make', port: 4, options: {{}}",
        ),
    )
    mod = sys.modules[name]
    got = {s.name: (s.target, s.direct, s.handler_path) for s in plan.servers}
    assert got == {
        "direct": (mod.handle, True, f"{name}:handle"),
        "factory": (mod.make, False, f"{name}:make"),
        "async_factory": (mod.amake, False, f"{name}:amake"),
        "nested": (mod.Holder.Inner.make, False, f"{name}:Holder.Inner.make"),
    }
    assert plan.servers[1].options == {"x": 1}
    assert str(tmp_path) in sys.path


def test_module_that_does_not_exist(tmp_path: Path) -> None:
    assert problems_of(tmp_path, servers("name: a, handler: 'no_such_module_xyz:handle', port: 1")) == [
        "4: servers[0].handler: cannot import module 'no_such_module_xyz' (No module named 'no_such_module_xyz'); "
        "check the name, and that it is on PYTHONPATH or next to the config file"
    ]


def test_submodule_that_does_not_exist(tmp_path: Path) -> None:
    assert problems_of(tmp_path, servers("name: a, handler: 'supervisor.handlers.nope:handle', port: 1")) == [
        "4: servers[0].handler: cannot import module 'supervisor.handlers.nope' "
        "(No module named 'supervisor.handlers.nope'); "
        "check the name, and that it is on PYTHONPATH or next to the config file"
    ]


def test_module_whose_own_import_is_missing(tmp_path: Path, module: Callable[[str], str]) -> None:
    name = module("import no_such_dependency_xyz\n")
    assert problems_of(tmp_path, servers(f"name: a, handler: '{name}:handle', port: 1")) == [
        f"4: servers[0].handler: importing '{name}' raised ModuleNotFoundError: "
        "No module named 'no_such_dependency_xyz'"
    ]


@pytest.mark.parametrize(
    ("source", "raised"),
    [
        ("raise RuntimeError('no database')\n", "RuntimeError: no database"),
        ("def broken(:\n", "SyntaxError: invalid syntax"),
        ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
        ("x = {}\nx.nope\n", "AttributeError: 'dict' object has no attribute 'nope'"),
        ("from os import no_such_name\n", "ImportError: cannot import name 'no_such_name' from 'os'"),
    ],
    ids=["raises", "syntax-error", "sys-exit", "attribute-error-inside", "import-error"],
)
def test_module_that_fails_to_import(tmp_path: Path, module: Callable[[str], str], source: str, raised: str) -> None:
    name = module(source)
    [problem] = problems_of(tmp_path, servers(f"name: a, handler: '{name}:handle', port: 1"))
    assert problem.startswith(f"4: servers[0].handler: importing '{name}' raised {raised}"), problem


def test_missing_attribute_suggests_the_closest(tmp_path: Path) -> None:
    assert problems_of(tmp_path, servers("name: a, handler: 'supervisor.handlers.echo:handel', port: 1")) == [
        "4: servers[0].handler: module 'supervisor.handlers.echo' has no attribute 'handel'; did you mean 'handle'?"
    ]


def test_missing_attribute_without_a_close_name(tmp_path: Path, module: Callable[[str], str]) -> None:
    name = module("def make(options):\n    return None\n")
    assert problems_of(tmp_path, servers(f"name: a, handler: '{name}:zzz', port: 1")) == [
        f"4: servers[0].handler: module '{name}' has no attribute 'zzz'"
    ]


def test_missing_nested_attribute_names_the_part(tmp_path: Path, module: Callable[[str], str]) -> None:
    name = module("class Holder:\n    def make(self, options):\n        return None\n")
    assert problems_of(tmp_path, servers(f"name: a, handler: '{name}:Holder.mkae', port: 1")) == [
        f"4: servers[0].handler: '{name}:Holder' has no attribute 'mkae'; did you mean 'make'?"
    ]


@pytest.mark.parametrize(
    ("source", "kind"),
    [("handle = 42\n", "int"), ("handle = 'text'\n", "str"), ("handle = None\n", "NoneType")],
)
def test_handler_that_is_not_callable(tmp_path: Path, module: Callable[[str], str], source: str, kind: str) -> None:
    name = module(source)
    assert problems_of(tmp_path, servers(f"name: a, handler: '{name}:handle', port: 1")) == [
        f"4: servers[0].handler: '{name}:handle' is not callable (it is of type {kind}); "
        "name an async def handle(reader, writer) or a factory taking options"
    ]


def test_sync_handler_is_caught_at_check_time(tmp_path: Path, module: Callable[[str], str]) -> None:
    name = module("def handle(reader, writer):\n    writer.close()\n")
    assert problems_of(tmp_path, servers(f"name: a, handler: '{name}:handle', port: 1")) == [
        f"4: servers[0].handler: '{name}:handle' takes (reader, writer) but is not a coroutine function; "
        "declare it with async def"
    ]


def test_plain_handler_given_options(tmp_path: Path) -> None:
    text = f"""
        servers:
          - name: echo
            handler: {ECHO}
            port: 1
            options:
              greeting: hi
        """
    assert problems_of(tmp_path, text) == [
        f"5: servers[0].options: '{ECHO}' is a plain handler and takes no options; "
        "remove 'options' or point 'handler' at a factory"
    ]


def test_plain_handler_with_empty_options_is_fine(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, servers(f"name: a, handler: '{ECHO}', port: 1, options: {{}}"))
    assert plan.servers[0].direct is True


def test_every_handler_problem_is_reported(tmp_path: Path, module: Callable[[str], str]) -> None:
    name = module("value = 1\n")
    assert problems_of(
        tmp_path,
        servers(
            f"name: a, handler: '{name}:value', port: 1",
            "name: b, handler: 'missing_mod_abc:x', port: 1",
            f"name: c, handler: '{ECHO}', port: 2, after: [q]",
        ),
    ) == [  # top of the file first; on one line, in the order checked
        f"4: servers[0].handler: '{name}:value' is not callable (it is of type int); "
        "name an async def handle(reader, writer) or a factory taking options",
        "5: servers[1].port: 127.0.0.1:1 is already used by server 'a'; pick another port",
        "5: servers[1].handler: cannot import module 'missing_mod_abc' (No module named 'missing_mod_abc'); "
        "check the name, and that it is on PYTHONPATH or next to the config file",
        "6: servers[2].after: unknown server 'q'; known servers: a, b, c",
    ]


# -- configs built in code ------------------------------------------------------------------------------------------


def test_config_built_in_code_plans(tmp_path: Path) -> None:
    config = Config(
        path=tmp_path / "inline.yaml",
        servers=(ServerSpec(name="b", handler=ECHO, port=2, after=("a",)), ServerSpec(name="a", handler=HTTP, port=1)),
        metrics=MetricsSpec(enabled=False),
    )
    plan = make_plan(config)
    assert order(plan) == ["a", "b"]
    assert plan.servers[0].target is http.make


def test_config_built_in_code_reports_without_locations(tmp_path: Path) -> None:
    config = Config(
        path=tmp_path / "inline.yaml",
        servers=(ServerSpec(name="a", handler="supervisor.handlers.echo:nope", port=1),),
    )
    with pytest.raises(ConfigError) as info:
        make_plan(config)
    assert info.value.problems == [
        "<config>:0: server 'a'.handler: module 'supervisor.handlers.echo' has no attribute 'nope'"
    ]


def test_the_repl_port_is_claimed_when_the_repl_is_on(tmp_path: Path) -> None:
    text = f"""
        console: {{port: 20101, repl: true}}
        servers:
          - {{name: a, handler: {ECHO}, port: 20103}}
        """
    (problem,) = problems_of(tmp_path, text)
    assert problem.endswith(
        "servers[0].port: 127.0.0.1:20103 is already used by the console (Python REPL, console.port + 2); "
        "pick another port"
    )
    assert [s.port for s in plan_of(tmp_path, text.replace("repl: true", "repl: false")).servers] == [20103]


# -- hosts: resolved at plan time, and compared by address ----------------------------------------------------------


def first_address(host: str) -> str:
    """The address a listener binds for ``host`` (the first getaddrinfo answer), as the plan compares them."""
    return str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][4][0])


def test_a_host_that_does_not_resolve(tmp_path: Path) -> None:
    # passed check, then failed at bind time in `run` (.invalid never resolves: RFC 6761)
    (problem,) = problems_of(tmp_path, servers(f"name: a, handler: '{ECHO}', host: no-such-host.invalid, port: 0"))
    assert re.fullmatch(
        r"4: servers\[0\]\.host: cannot resolve host 'no-such-host\.invalid' \(.+\); "
        r"use an IP address, or a name this machine resolves",
        problem,
    ), problem


def test_metrics_and_console_hosts_are_resolved_too(tmp_path: Path) -> None:
    text = f"""
        metrics: {{host: nope.invalid}}
        console: {{host: nope2.invalid, allow_remote: true}}
        servers:
          - {{name: a, handler: '{ECHO}', host: '[::1]', port: 1}}
        """
    problems = [p.split(" (")[0] for p in problems_of(tmp_path, text)]
    assert problems == [
        "1: metrics.host: cannot resolve host 'nope.invalid'",
        "2: console.host: cannot resolve host 'nope2.invalid'",
        "4: servers[0].host: cannot resolve host '[::1]'",
    ]
    assert problems_of(tmp_path, text)[2].endswith(
        "; write an IPv6 address without brackets, or a name this machine resolves"
    )


def test_a_slow_resolver_cannot_hang_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def stuck(*args: object, **kwargs: object) -> object:
        time.sleep(5)
        raise OSError("too late")

    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    monkeypatch.setattr(plan_checks, "RESOLVE_TIMEOUT", 0.2)
    started = time.monotonic()
    text = servers(*(f"name: s{i}, handler: '{ECHO}', host: slow{i}.example, port: 0" for i in range(3)))
    problems = problems_of(tmp_path, text)
    assert time.monotonic() - started < 1.0  # the names are looked up together, within the one timeout
    assert problems == [
        f"{4 + i}: servers[{i}].host: cannot resolve host 'slow{i}.example' (no answer within 0.2s); "
        "use an IP address, or a name this machine resolves"
        for i in range(3)
    ]


def test_the_same_address_written_two_ways_clashes(tmp_path: Path) -> None:
    ip = first_address("localhost")
    assert problems_of(
        tmp_path,
        servers(
            f"name: a, handler: '{ECHO}', host: '{ip}', port: 8000",
            f"name: b, handler: '{ECHO}', host: localhost, port: 8000",
        ),
    ) == [
        f"5: servers[1].port: localhost:8000 is already used by server 'a' (as {ip}:8000; both are {ip}); "
        "pick another port"
    ]


def test_ipv6_spellings_clash(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path,
        servers(
            f"name: a, handler: '{ECHO}', host: '::1', port: 8000",
            f"name: b, handler: '{ECHO}', host: '0:0:0:0:0:0:0:1', port: 8000",
        ),
    ) == [
        "5: servers[1].port: 0:0:0:0:0:0:0:1:8000 is already used by server 'a' (as ::1:8000; both are ::1); "
        "pick another port"
    ]


def test_metrics_on_localhost_clashes_with_a_server_on_its_address(tmp_path: Path) -> None:
    ip = first_address("localhost")
    text = f"""
        metrics: {{host: localhost, port: 9100}}
        console: {{enabled: false}}
        servers:
          - {{name: a, handler: '{ECHO}', host: '{ip}', port: 9100}}
          - {{name: b, handler: '{ECHO}', host: localhost, port: 0}}
          - {{name: c, handler: '{ECHO}', host: localhost, port: 0}}
        """
    assert problems_of(tmp_path, text) == [
        f"4: servers[0].port: {ip}:9100 is already used by metrics (as localhost:9100; both are {ip}); "
        "pick another port"
    ]


def test_a_wildcard_clashes_with_a_name_on_its_port(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path,
        servers(
            f"name: a, handler: '{ECHO}', host: localhost, port: 8000",
            f"name: b, handler: '{ECHO}', host: 0.0.0.0, port: 8000",
        ),
    ) == ["5: servers[1].port: 0.0.0.0:8000 is already used by server 'a'; pick another port"]


# -- handlers: called the way the server will call them -------------------------------------------------------------


SHAPES = """
    import asyncio

    async def handle(reader, writer):
        writer.close()

    async def three(reader, writer, extra):
        pass

    def make(options):
        return handle

    def nothing():
        return handle

    def needs_a_keyword(options, *, key):
        return handle

    def keyword_extra(options, *, extra=1):
        return handle

    class Plain:
        def __init__(self, options):
            self.options = options

    class Lifespan:
        def __init__(self, options):
            pass

        async def __aenter__(self):
            return handle

        async def __aexit__(self, *exc):
            return None

    class Connection:
        def __init__(self, options):
            pass

        async def __call__(self, reader, writer):
            writer.close()

    class SyncCall:
        def __init__(self, options):
            pass

        def __call__(self, reader, writer):
            writer.close()

    class LifespanWithoutOptions:
        async def __aenter__(self):
            return handle

        async def __aexit__(self, *exc):
            return None

    handler_object = Connection({})
"""
NOT_A_FACTORY_CLASS = (
    "is a class, so it is used as a factory, but its instances are neither async context managers nor have an "
    "async def __call__(self, reader, writer); add one of those, or name a function"
)


@pytest.mark.parametrize(
    ("attr", "problem"),
    [
        ("Plain", NOT_A_FACTORY_CLASS),
        ("SyncCall", NOT_A_FACTORY_CLASS),
        (
            "LifespanWithoutOptions",
            "is a class, so it is called with the server's options, but it cannot take them (its signature is ()); "
            "give its __init__ an options parameter",
        ),
        (
            "nothing",
            "is called with one argument, the server's options, but cannot take it (its signature is ()); "
            "make it def make(options) (a factory) or async def handle(reader, writer)",
        ),
        (
            "needs_a_keyword",
            "is called with one argument, the server's options, but cannot take it (its signature is "
            "(options, *, key)); make it def make(options) (a factory) or async def handle(reader, writer)",
        ),
        (
            "handler_object",
            "is called with one argument, the server's options, but cannot take it (its signature is "
            "(reader, writer)); make it def make(options) (a factory) or async def handle(reader, writer)",
        ),
        ("three", "cannot take (reader, writer) (its signature is (reader, writer, extra)); fix its parameters"),
    ],
)
def test_a_handler_that_cannot_be_called_so_is_a_problem(
    tmp_path: Path, module: Callable[[str], str], attr: str, problem: str
) -> None:
    # each passed check, then failed in `run`, at every start or on every connection
    name = module(SHAPES)
    assert problems_of(tmp_path, servers(f"name: a, handler: '{name}:{attr}', port: 1")) == [
        f"4: servers[0].handler: '{name}:{attr}' {problem}"
    ]


def test_handlers_the_server_can_call(tmp_path: Path, module: Callable[[str], str]) -> None:
    name = module(SHAPES)
    attrs = ["handle", "make", "keyword_extra", "Lifespan", "Connection"]
    plan = plan_of(tmp_path, servers(*(f"name: {a}, handler: '{name}:{a}', port: 0" for a in attrs)))
    assert [(s.name, s.direct) for s in plan.servers] == [(a, a == "handle") for a in attrs]


# -- warnings: valid, but the supervisor would never give up -----------------------------------------------------------


def warnings_of(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    warnings = make_plan(load_config(path)).warnings
    for warning in warnings:
        assert warning.startswith(f"{path}:"), warning
    return [w.removeprefix(f"{path}:") for w in warnings]


def test_a_backoff_too_slow_for_the_restart_window_is_a_warning(tmp_path: Path) -> None:
    # max 30 s: 0.09 + 0.18 + ... + 23.04 + 27 s (jitter at its low end) = 73 s for 10 restarts, over 60 s
    text = servers(
        f"name: fits, handler: '{ECHO}', port: 0, backoff: {{max: 2s}}",
        f"name: taken, handler: '{ECHO}', port: 0, backoff: {{max: 30s}}",
        f"name: slow, handler: '{ECHO}', port: 0, backoff: {{initial: 10s, max: 10s, jitter: 0}}",
        f"name: once, handler: '{ECHO}', port: 0, backoff: {{initial: 1m, max: 1m}}, restart: temporary",
    )
    assert warnings_of(tmp_path, text) == [
        "5: servers[1].backoff: with this backoff at most 10 restarts fit in restart_window (60s), so more than "
        "max_restarts (10) never happens and the supervisor would never give up on 'taken'; "
        "lower backoff.max or raise restart_window above 72.99s",
        "6: servers[2].backoff: with this backoff at most 6 restarts fit in restart_window (60s), so more than "
        "max_restarts (10) never happens and the supervisor would never give up on 'slow'; "
        "lower backoff.max or raise restart_window above 100s",
    ]


def test_the_warning_is_in_the_table(tmp_path: Path) -> None:
    path = write(tmp_path, servers(f"name: taken, handler: '{ECHO}', port: 0, backoff: {{max: 30s}}"))
    lines = make_plan(load_config(path)).table()
    assert lines[-2:] == [
        "warnings (the config is valid and runs as it is):",
        f"{path}:4: servers[0].backoff: with this backoff at most 10 restarts fit in restart_window (60s), so more "
        "than max_restarts (10) never happens and the supervisor would never give up on 'taken'; "
        "lower backoff.max or raise restart_window above 72.99s",
    ]


@pytest.mark.parametrize(
    "supervisor",
    ["{max_restarts: 0}", "{restart_window: 2m}", "{max_restarts: 3}", "{max_restarts: 1000000, restart_window: 1h}"],
)
def test_no_warning_when_the_give_up_rule_can_be_reached(tmp_path: Path, supervisor: str) -> None:
    text = f"supervisor: {supervisor}\n" + servers(
        f"name: a, handler: '{ECHO}', port: 0",
        f"name: b, handler: '{ECHO}', port: 0, backoff: {{initial: 0}}",
        f"name: c, handler: '{ECHO}', port: 0, backoff: {{jitter: 1}}",
    )
    expected = ["servers[0]"] if "1000000" in supervisor else []
    assert [w.split(".backoff")[0].split(": ")[1] for w in warnings_of(tmp_path, text)] == expected


def gives_up(backoff: BackoffSpec, max_restarts: int, window: float) -> bool:
    """Whether the supervisor's own rule gives up on a server failing as soon as it starts, delays at their shortest."""
    now = [0.0]
    delays = Backoff(backoff, rand=lambda: 0.0)
    intensity = Intensity(max_restarts, window, lambda: now[0])
    for _ in range(max_restarts + 1):  # the delays never shrink, so the first window is the fullest
        if not intensity.record():
            return True
        now[0] += delays.next_delay(0.0)
    return False


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    initial=st.floats(0.001, 60),
    factor=st.floats(1, 10),
    top=st.floats(1, 1000),
    jitter=st.floats(0, 0.99),
    reset_after=st.sampled_from([0.0, 10.0]),
    max_restarts=st.integers(0, 60),
    window=st.floats(0.01, 3600),
)
def test_the_warning_agrees_with_the_restart_policy(
    initial: float, factor: float, top: float, jitter: float, reset_after: float, max_restarts: int, window: float
) -> None:
    backoff = BackoffSpec(initial=initial, factor=factor, max=initial * top, jitter=jitter, reset_after=reset_after)
    span = plan_checks.shortest_delays(backoff, max_restarts)
    assume(abs(span - window) > 1e-9 * window)  # a restart exactly on the window's edge: float rounding decides
    spec = ServerSpec(name="s", handler=ECHO, port=0, backoff=backoff)
    warned = plan_checks.never_gives_up(spec, SupervisorSpec(max_restarts=max_restarts, restart_window=window))
    assert (warned is None) == gives_up(backoff, max_restarts, window)
