"""Fuzzing the real loading path: every config, however broken or hostile, is accepted (exit 0) or refused
(exit 2) with located lines; never another exception, never a traceback, and each within 2 s and 50 MB.

Configs start from the shipped and test configs and are mutated twice: as data (keys dropped or added, values of
the wrong type, huge, unicode, control characters, extra or duplicate servers) and as text (lines duplicated,
characters inserted, the text cut short, deep nesting, alias bombs, self-references, tags). Host names are
resolved by a fake resolver (only localhost and IP literals resolve), so no example waits on DNS.
"""

from __future__ import annotations

import contextlib
import copy
import io
import ipaddress
import re
import socket
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from supervisor import cli

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [
    ROOT / "configs" / "prod.yaml",
    ROOT / "configs" / "kubernetes.yaml",
    *sorted((ROOT / "tests" / "data").glob("*.yaml")),
]
SEED_DATA = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in SEEDS]
SECONDS = 2.0  # per example: generous for a noisy CI machine, far below a hang
PEAK = 50 * 2**20  # bytes traced at the peak of one example

KEYS = [
    "supervisor", "metrics", "console", "servers", "name", "handler", "host", "port", "restart", "on_handler_error",
    "backoff", "shutdown_timeout", "backlog", "max_connections", "idle_timeout", "read_limit", "max_write_buffer",
    "start_timeout", "start_retries", "after", "options", "initial", "factor", "max", "jitter", "reset_after",
    "strategy", "max_restarts", "restart_window", "loop", "max_loop_lag", "enabled", "allow_remote", "repl",
]  # fmt: skip
WORDS = [
    "", " ", "~", "null", "yes", "no", "0", "-1", "1.5", "1e400", "-0", "0x1F", "0o17", ".nan", ".inf", "10s", "250ms",
    "2m", "1h", "10x", "8KiB", "64MiB", "1 5s", "permanent", "transient", "temporary", "one_for_all", "uvloop",
    "log", "restart", "127.0.0.1", "0.0.0.0", "::", "::1", "[::1]", "localhost", "no-such-host.invalid",
    "echo", "http", "chat", "echo\n", "web", "supervisor.handlers.echo:handle", "supervisor.handlers.http:make",
    "supervisor.handlers.chat:room", "supervisor.handlers.echo:nope", "no_such_module_fuzz:x", "x:y",
    "supervisor.config:Config", "supervisor.config:parse_duration", "a..b:c", "é", "名前", "\u2028", "\x85", "\t",
]  # fmt: skip
# inserted as text: what a YAML reader must survive
SNIPPETS = [
    "\x00", "\x01", "\x1b[31m", "\ufeff", "\r", "\r\n", "\t", "\u2029", "\ud7ff", "'", '"', "[", "]", "{", "}", ",",
    ": ", "- ", "? ", "&a ", "*a", "*undefined", "!!python/object:os.system ", "!custom ", "!!binary ", "<<: ",
    "%YAML 1.1\n", "---\n", "...\n", "#", "|\n", ">-\n", "\n  ", "\n\t",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),
    st.sampled_from(WORDS),
    st.text(max_size=20),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def flow_bomb(levels: int, tag: str) -> str:
    """'Billion laughs' in one flow list: anchor n holds 9 aliases of anchor n - 1."""
    parts = [f"&{tag}0 [x, x, x, x, x, x, x, x, x]"]
    parts += [f"&{tag}{n} [{', '.join([f'*{tag}{n - 1}'] * 9)}]" for n in range(1, levels)]
    return f"[{', '.join(parts)}]"


SPECIALS = ["deep-list", "deep-map", "bomb", "self", "self-map", "long", "many-aliases", "tag"]


def special(kind: str, n: int, tag: str) -> str:
    """Text a mutation puts where a value was."""
    if kind == "deep-list":
        return "[" * n + "]" * n
    if kind == "deep-map":
        return "{a: " * n + "1" + "}" * n
    if kind == "bomb":
        return flow_bomb(min(n, 12), tag)
    if kind == "self":
        return f"&{tag} [*{tag}]"
    if kind == "self-map":
        return f"&{tag} {{a: *{tag}}}"
    if kind == "long":
        return "'" + "x" * (n * 100) + "'"
    if kind == "many-aliases":
        return f"[&{tag} '{'y' * 1000}', " + ", ".join([f"*{tag}"] * (n * 10)) + "]"
    return "!!python/object/apply:builtins.print ['never run']"


# -- mutations of the data -------------------------------------------------------------------------------------------


def places(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside ``node`` (mapping keys and list indexes)."""
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from places(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from places(value, (*path, i))


def get(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


DATA_OPS = ["replace", "replace", "word", "word", "drop", "drop", "add", "duplicate", "special", "server", "server"]
DATA_OPS.append("servers")  # all servers replaced: rarely, it ends most stories at the first check


def mutate_data(data: st.DataObject, config: Any) -> Any:
    hostile = data.draw(st.sampled_from(SPECIALS) if data.draw(st.integers(0, 3)) == 0 else st.none(), label="hostile")
    if hostile and isinstance(config, dict) and isinstance(config.get("servers"), list) and config["servers"]:
        entry = data.draw(st.sampled_from(config["servers"]), label="hostile server")
        if isinstance(entry, dict):  # the values that are built whole: options and after
            key = data.draw(st.sampled_from(["options", "after", "options", "after", "port", "backoff"]))
            entry[key] = f"@@{hostile}:{data.draw(st.integers(1, 300), label='size')}@@"
    for _ in range(data.draw(st.sampled_from([0, 1, 1, 1, 2, 2, 3]), label="data mutations")):
        spots = list(places(config))
        path = data.draw(st.sampled_from(spots), label="where")
        op = data.draw(st.sampled_from(DATA_OPS), label="op")
        if op == "servers" and isinstance(config, dict):
            config["servers"] = data.draw(st.lists(values, max_size=3) | values, label="servers")
            continue
        if op == "server" and isinstance(config, dict) and isinstance(config.get("servers"), list):
            entries = [s for s in config["servers"] if isinstance(s, dict)]
            if entries:  # one key of one server: where options, after, hosts and handlers are checked
                entry = data.draw(st.sampled_from(entries), label="server")
                key = data.draw(st.sampled_from(["options", "after", "host", "handler", "port", "name", "backoff"]))
                marker = st.sampled_from(SPECIALS).map(lambda kind: f"@@{kind}:{data.draw(st.integers(1, 300))}@@")
                new = marker if key in ("options", "after") else st.sampled_from(WORDS) | st.integers(0, 70000)
                entry[key] = data.draw(new | values, label="new")
            continue
        if not path:
            if op == "replace":
                config = data.draw(values, label="top")
            continue
        parent, last = get(config, path[:-1]), path[-1]
        if op == "replace":
            parent[last] = data.draw(values, label="value")
        elif op == "word":  # often valid, so that a mutant also gets as far as the plan
            parent[last] = data.draw(st.sampled_from(WORDS) | st.integers(0, 70000), label="word")
        elif op == "drop":
            del parent[last]
        elif op == "add" and isinstance(parent, dict):
            parent[data.draw(st.sampled_from(KEYS) | st.text(max_size=6), label="key")] = data.draw(values, label="v")
        elif op == "add" and isinstance(parent, list):
            parent.insert(last, data.draw(values, label="item"))
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))  # a second server by the same name, port, ...
        elif op == "special":
            kind = data.draw(st.sampled_from(SPECIALS))
            parent[last] = f"@@{kind}:{data.draw(st.integers(1, 300), label='n')}@@"
    return config


# -- mutations of the text -------------------------------------------------------------------------------------------


def mutate_text(data: st.DataObject, text: str) -> str:
    for _ in range(data.draw(st.sampled_from([0, 0, 0, 1, 1, 2]), label="text mutations")):
        lines = text.split("\n")
        op = data.draw(st.sampled_from(["duplicate-line", "insert", "cut", "swap-lines"]), label="text op")
        i = data.draw(st.integers(0, max(0, len(lines) - 1)), label="line")
        if op == "duplicate-line":  # a duplicate key, most of the time
            lines.insert(i, lines[i])
        elif op == "swap-lines" and len(lines) > 1:
            j = data.draw(st.integers(0, len(lines) - 1), label="other line")
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "insert":
            at = data.draw(st.integers(0, len(lines[i])), label="column")
            what = data.draw(st.sampled_from(SNIPPETS) | st.text(max_size=5), label="snippet")
            lines[i] = lines[i][:at] + what + lines[i][at:]
        elif op == "cut":
            at = data.draw(st.integers(0, len(text)), label="cut at")
            return text[:at]
        text = "\n".join(lines)
    return text


def render(config: Any) -> str:
    text = yaml.safe_dump(config, allow_unicode=True, sort_keys=False, default_flow_style=None, width=100)
    count = iter(range(10_000))
    return re.sub(
        r"'?@@([a-z-]+):(\d+)@@'?",
        lambda m: special(m.group(1), int(m.group(2)), f"z{next(count)}"),
        text,
    )


# -- the property ----------------------------------------------------------------------------------------------------


_real_getaddrinfo = socket.getaddrinfo


def fake_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    """localhost and IP literals resolve as usual; every other name fails at once (no DNS from the fuzzer)."""
    name = "127.0.0.1" if host == "localhost" else host
    try:
        ipaddress.ip_address(str(name).partition("%")[0])
    except ValueError:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
    return _real_getaddrinfo(name, port, *args, **kwargs)


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "fuzz.yaml"


def check(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["check", str(path)])
    return rc, out.getvalue(), err.getvalue()


@settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,  # timed below, with a bound a noisy CI machine can keep
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_every_config_is_accepted_or_refused_with_located_lines(config_path: Path, data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from([0, 0, 0, 1, 1, *range(len(SEEDS))]), label="seed")  # mostly good configs
    text = mutate_text(data, render(mutate_data(data, copy.deepcopy(SEED_DATA[seed]))))
    config_path.write_text(text, encoding="utf-8")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", fake_getaddrinfo)
        mp.setattr(sys, "path", list(sys.path))  # make_plan adds the config's folder
        tracemalloc.start()
        started = time.perf_counter()
        try:
            rc, out, err = check(config_path)
            elapsed, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert elapsed < SECONDS, f"took {elapsed:.2f}s"
    assert peak < PEAK, f"peak {peak / 2**20:.1f} MiB"
    assert "Traceback" not in out + err
    event(f"exit {rc}")  # pytest --hypothesis-show-statistics: how the examples split
    if rc == cli.EXIT_OK:
        assert err == ""
        assert re.search(rf"^{re.escape(str(config_path))}: OK, \d+ server\(s\)\n\Z", out, re.M), out
        return
    assert rc == cli.EXIT_USAGE, (rc, err)
    assert out == ""
    *lines, summary = err.splitlines()
    assert lines
    located = re.compile(rf"{re.escape(str(config_path))}:\d+: \S")
    for line in lines:
        assert located.match(line), line
        event(re.sub(r"'.*|\d+|\[.*", "", line.split(": ", 2)[-1])[:40])
        assert len(line) < 1000, line
    assert (
        summary
        == f"supervisor: {len(lines)} problem{'s' if len(lines) > 1 else ''} in {config_path}; nothing was started"
    )


def test_the_seeds_are_read_as_they_are(config_path: Path) -> None:
    """The unmutated seeds: the shipped configs pass, the test data fails with located lines."""
    results = {}
    for seed in SEEDS:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "path", list(sys.path))
            results[seed.name] = check(seed)[0]
    assert results == {"prod.yaml": 0, "kubernetes.yaml": 0, "bad.yaml": 2, "unplannable.yaml": 2}
