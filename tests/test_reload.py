"""Reload in process: what a reload does to each server (unchanged, changed, moved, removed, added), make before
break, a failed new generation, an invalid file, one reload at a time, and a stop in the middle of one."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from supervisor.collector import make_registry
from supervisor.commands import Command
from supervisor.errors import GaveUp
from supervisor.plandiff import diff
from supervisor.state import ChildState
from supervisor.status import status_json, status_table
from tests import apps
from tests.e2e_util import free_port
from tests.helpers import (
    DEADLINE,
    ask,
    assert_not_served,
    plan_from,
    port_of,
    running,
    write_config_file,
)

BASE = """
servers:
  - {name: keep, handler: "tests.apps:lines", port: 0}
  - {name: edit, handler: "tests.apps:gated", port: 0, options: {greeting: one, from_generation: 2}}
  - {name: gone, handler: "tests.apps:lines", port: 0}
"""


async def converse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> bytes:
    writer.write(line + b"\n")
    await writer.drain()
    async with asyncio.timeout(DEADLINE):
        return await reader.readline()


@pytest.fixture(autouse=True)
def _fresh_gates() -> None:
    apps.GATES.clear()


async def test_a_reload_leaves_unchanged_servers_alone_and_applies_the_rest(tmp_path: Path) -> None:
    """One client stays connected to ``keep`` and keeps getting answers while ``edit`` changes (make before
    break: its old generation serves until the new one is ready), ``gone`` is removed and ``new`` is added."""
    async with running(plan_from(tmp_path, BASE)) as sup:
        keep, edit, gone = port_of(sup, "keep"), port_of(sup, "edit"), port_of(sup, "gone")
        reader, writer = await asyncio.open_connection("127.0.0.1", keep)
        assert await converse(reader, writer, b"who") == b"keep#1\n"
        in_flight = await asyncio.open_connection("127.0.0.1", edit)
        assert await converse(*in_flight, b"work 0.3") == b"working\n"  # a request on edit#1 in flight
        before = sup.counters()["keep"].total
        write_config_file(
            tmp_path,
            BASE.replace("greeting: one", "greeting: two").replace(
                '  - {name: gone, handler: "tests.apps:lines", port: 0}\n', ""
            )
            + '  - {name: new, handler: "tests.apps:lines", port: 0, after: [edit]}\n',
        )
        reload = asyncio.create_task(sup.reload("test"))
        async with asyncio.timeout(DEADLINE):  # edit#2 waits at its gate: edit#1 still serves, new waits for it
            while (c := sup.snapshot().child("edit")) is None or c.generation < 2:
                await sup.changed()
        assert await ask(edit, b"who") == b"edit#1\n"
        assert await ask(edit, b"opt greeting") == b"one\n"
        new = sup.snapshot().child("new")
        assert new is not None
        assert new.state is ChildState.STARTING  # added after edit: it waits until edit's new generation serves
        assert await converse(reader, writer, b"who") == b"keep#1\n"
        apps.GATES.setdefault("edit", asyncio.Event()).set()
        result = await asyncio.wait_for(reload, DEADLINE)
        assert result.ok, result.text
        assert await ask(edit, b"who") == b"edit#2\n"
        assert await ask(edit, b"opt greeting") == b"two\n"
        async with asyncio.timeout(DEADLINE):
            assert await in_flight[0].readline() == b"done\n"  # edit#1 drained its request
        in_flight[1].close()
        assert await ask(port_of(sup, "new"), b"who") == b"new#1\n"
        await assert_not_served(gone)
        assert await converse(reader, writer, b"who") == b"keep#1\n"  # the same connection, the same generation
        writer.close()
        snap = sup.snapshot()
        assert [c.name for c in snap.children] == ["keep", "edit", "new"]
        assert snap.child("keep").generation == 1  # type: ignore[union-attr]
        assert sup.counters()["keep"].total == before
        assert snap.config.last_reload_ok
        assert dict(snap.config.reloads)["success"] == 1
        assert "server gone removed" in result.text
        assert "2 server(s) unchanged" not in result.text
        assert "1 server(s) unchanged" in result.text
        assert "server edit changed (options): generation 2 serving, generation 1 draining" in result.text


async def test_a_new_generation_that_fails_to_start_leaves_the_old_one_serving(tmp_path: Path) -> None:
    text = """
    servers:
      - {name: s, handler: "tests.apps:journaled", port: 0, options: {v: 1}}
    """
    async with running(plan_from(tmp_path, text)) as sup:
        port = port_of(sup, "s")
        write_config_file(tmp_path, text.replace("{v: 1}", "{v: 2, fail_enter: true}"))
        result = await sup.reload("test")
        assert not result.ok
        assert not result.invalid
        failure = "server s changed (options): the new generation failed to start: RuntimeError: lifespan enter failed"
        assert failure in result.text
        assert "generation 1 keeps serving" in result.text
        assert await ask(port, b"who") == b"s#1\n"
        snap = sup.snapshot()
        assert snap.child("s").state is ChildState.RUNNING  # type: ignore[union-attr]
        assert not snap.config.last_reload_ok
        assert dict(snap.config.reloads)["failure"] == 1
        assert sup.counters()["s"].restarts.total() == 0  # a failed reload is not a restart
        # the next reload diffs against what runs (the old plan), so a fixed file is applied
        write_config_file(tmp_path, text.replace("{v: 1}", "{v: 3}"))
        assert (await sup.reload("test")).ok
        assert await ask(port, b"opt v") == b"3\n"
        assert sup.snapshot().config.last_reload_ok


async def test_an_invalid_file_changes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with running(plan_from(tmp_path, BASE)) as sup:
        before = sup.snapshot()
        path = write_config_file(tmp_path, BASE.replace("port: 0}", "port: http}", 1))
        with caplog.at_level(logging.ERROR, "supervisor"):
            result = await sup.reload("test")
        assert result.invalid
        assert not result.ok
        expected = f"{path}:5: servers[0].port: expected an integer 0-65535, got 'http'"
        assert expected in result.text
        assert f"reload: {expected}" in caplog.messages
        assert f"reload: supervisor: 1 problem in {path}; the running config is unchanged" in caplog.messages
        after = sup.snapshot()
        assert after.children == before.children
        assert after.config.digest == before.config.digest
        assert dict(after.config.reloads)["invalid"] == 1
        assert not after.config.last_reload_ok
        assert await ask(port_of(sup, "gone"), b"who") == b"gone#1\n"


async def test_a_moved_server_binds_its_new_port_first_and_closes_the_old(tmp_path: Path) -> None:
    text = """
    servers:
      - {name: m, handler: "tests.apps:lines", port: 0}
    """
    async with running(plan_from(tmp_path, text)) as sup:
        old = port_of(sup, "m")
        held = await asyncio.open_connection("127.0.0.1", old)
        assert await converse(*held, b"who") == b"m#1\n"
        new = free_port()
        write_config_file(tmp_path, text.replace("port: 0", f"port: {new}"))
        result = await sup.reload("test")
        assert result.ok, result.text
        assert f"generation 2 serving on 127.0.0.1:{new}" in result.text
        assert port_of(sup, "m") == new
        assert await ask(new, b"who") == b"m#2\n"
        await assert_not_served(old)
        async with asyncio.timeout(DEADLINE):  # the old generation drained its connection: given EOF
            assert await held[0].read() == b""
        held[1].close()


async def test_a_port_that_cannot_be_bound_aborts_the_whole_reload(tmp_path: Path) -> None:
    text = """
    servers:
      - {name: a, handler: "tests.apps:journaled", port: 0, options: {v: 1}}
      - {name: m, handler: "tests.apps:lines", port: 0}
    """
    async with running(plan_from(tmp_path, text)) as sup:
        taken = port_of(sup, "a")  # our own: the bind fails with EADDRINUSE, the plan's checks cannot know
        write_config_file(tmp_path, text.replace("{v: 1}", "{v: 2}").replace("port: 0}", f"port: {taken}}}"))
        result = await sup.reload("test")
        assert not result.ok
        assert not result.invalid
        assert result.text.startswith("reload: server m: Address already in use")
        assert "nothing changed" in result.text
        assert await ask(port_of(sup, "a"), b"opt v") == b"1\n"  # a's change was not applied either
        assert sup.snapshot().child("a").generation == 1  # type: ignore[union-attr]


async def test_one_reload_at_a_time(tmp_path: Path) -> None:
    async with running(plan_from(tmp_path, BASE)) as sup:
        write_config_file(tmp_path, BASE.replace("greeting: one", "greeting: two"))
        first = asyncio.create_task(sup.reload("first"))
        async with asyncio.timeout(DEADLINE):  # edit's new generation waits at its gate
            while (c := sup.snapshot().child("edit")) is None or c.generation < 2:
                await sup.changed()
        second = await sup.reload("second")
        assert not second.ok
        assert "a reload (first) is under way" in second.text
        refused = await sup.control(Command.RESTART, "edit")  # the server the reload is changing
        assert not refused.ok
        assert "edit is being reloaded" in refused.text
        apps.GATES.setdefault("edit", asyncio.Event()).set()
        assert (await asyncio.wait_for(first, DEADLINE)).ok
        assert not sup.snapshot().config.reloading


async def test_a_stop_during_a_reload_ends_it_and_the_shutdown_completes(tmp_path: Path) -> None:
    async with running(plan_from(tmp_path, BASE)) as sup:
        write_config_file(tmp_path, BASE.replace("greeting: one", "greeting: two"))
        reload = asyncio.create_task(sup.reload("test"))
        async with asyncio.timeout(DEADLINE):
            while (c := sup.snapshot().child("edit")) is None or c.generation < 2:
                await sup.changed()
        sup.request_stop("test")
        result = await asyncio.wait_for(reload, DEADLINE)
        assert not result.ok
        assert "interrupted" in result.text


async def test_supervisor_section_changes_apply_from_then_on(tmp_path: Path) -> None:
    text = """
    supervisor: {max_restarts: 5, restart_window: 60s}
    servers:
      - {name: s, handler: "tests.apps:lines", port: 0, backoff: {initial: 0}, on_handler_error: restart}
    """
    with pytest.raises(GaveUp, match="more than 0 restarts within 60s"):  # noqa: PT012 - raised at the block's end
        async with running(plan_from(tmp_path, text)) as sup:
            write_config_file(tmp_path, text.replace("max_restarts: 5", "max_restarts: 0"))
            result = await sup.reload("test")
            assert result.ok
            assert "supervisor: max_restarts changed" in result.text
            assert sup.snapshot().child("s").generation == 1  # type: ignore[union-attr]
            assert sup.plan.supervisor.max_restarts == 0
            await ask(port_of(sup, "s"), b"crash")  # one restart is more than 0 now: the supervisor gives up
            async with asyncio.timeout(DEADLINE):
                while not sup.snapshot().shutting_down:
                    await sup.changed()


async def test_a_server_given_up_on_gets_its_chance_with_a_changed_config(tmp_path: Path) -> None:
    text = """
    servers:
      - {name: ok, handler: "tests.apps:lines", port: 0}
      - {name: s, handler: "tests.apps:journaled", port: 0, restart: transient, start_retries: 0,
         backoff: {initial: 0}, options: {fail_enter: true}}
    """
    async with running(plan_from(tmp_path, text.replace("fail_enter: true", "fail_enter: false"))) as sup:
        await ask(port_of(sup, "ok"), b"hi")
        write_config_file(tmp_path, text)
        failed = await sup.reload("test")
        assert not failed.ok  # the new generation failed: s#1 keeps serving
        assert sup.snapshot().child("s").state is ChildState.RUNNING  # type: ignore[union-attr]
        await sup.control(Command.STOP, "s")
        write_config_file(tmp_path, text.replace("fail_enter: true", "fail_enter: false, v: 2"))
        result = await sup.reload("test")
        assert result.ok, result.text
        assert "stopped, its next start uses the new config" in result.text
        assert sup.snapshot().child("s").state is ChildState.STOPPED  # type: ignore[union-attr]
        assert (await sup.control(Command.START, "s")).ok
        assert await ask(port_of(sup, "s"), b"opt v") == b"2\n"


async def test_removed_servers_drain_within_their_budget(tmp_path: Path) -> None:
    text = """
    servers:
      - {name: keep, handler: "tests.apps:lines", port: 0}
      - {name: gone, handler: "tests.apps:lines", port: 0, shutdown_timeout: 5s}
    """
    async with running(plan_from(tmp_path, text)) as sup:
        conn = await asyncio.open_connection("127.0.0.1", port_of(sup, "gone"))
        assert await converse(*conn, b"work 0.3") == b"working\n"
        write_config_file(tmp_path, text.replace("  - {name: gone", "  # - {name: gone"))
        result = await sup.reload("test")
        assert "server gone removed: port closed, 1 connection(s) draining" in result.text
        async with asyncio.timeout(DEADLINE):
            assert await conn[0].readline() == b"done\n"
        conn[1].close()


async def test_reloads_are_visible_in_metrics_and_status(tmp_path: Path) -> None:
    text = """
    servers:
      - {name: s, handler: "tests.apps:journaled", port: 0, options: {v: 1}}
    """
    async with running(plan_from(tmp_path, text)) as sup:
        registry = make_registry(sup, "asyncio")
        digest = sup.snapshot().config.digest
        assert registry.get_sample_value("supervisor_config_info", {"file": sup.plan.source, "sha256": digest}) == 1
        assert registry.get_sample_value("supervisor_config_last_reload_successful") == 1
        write_config_file(tmp_path, text.replace("port: 0", "port: -1"))
        assert (await sup.reload("test")).invalid
        assert registry.get_sample_value("supervisor_config_last_reload_successful") == 0
        assert registry.get_sample_value("supervisor_config_reloads_total", {"result": "invalid"}) == 1
        assert "reloads: 1 invalid (the last one failed: see the log)" in status_table(sup)[-2]
        write_config_file(tmp_path, text.replace("{v: 1}", "{v: 2}"))
        assert (await sup.reload("test")).ok
        assert registry.get_sample_value("supervisor_config_last_reload_successful") == 1
        assert registry.get_sample_value("supervisor_config_reloads_total", {"result": "success"}) == 1
        new = sup.snapshot().config.digest
        assert new != digest
        assert registry.get_sample_value("supervisor_config_info", {"file": sup.plan.source, "sha256": new}) == 1
        assert json.loads(status_json(sup))["config"]["sha256"] == new


def test_the_diff_compares_what_the_user_wrote_not_the_start_order(tmp_path: Path) -> None:
    old = plan_from(
        tmp_path,
        """
        servers:
          - {name: a, handler: "tests.apps:lines", port: 0}
          - {name: b, handler: "tests.apps:lines", port: 0, after: [a]}
          - {name: c, handler: "tests.apps:journaled", port: 0, options: {v: 1}}
        """,
    )
    new = plan_from(
        tmp_path,
        """
        supervisor: {max_restarts: 9}
        servers:
          - {name: first, handler: "tests.apps:lines", port: 0}
          - {name: a, handler: "tests.apps:lines", port: 0}
          - {name: b, handler: "tests.apps:lines", port: 0, after: [a]}
          - {name: c, handler: "tests.apps:journaled", port: 1, options: {v: 2}}
        """,
    )
    d = diff(old.servers, old, new)
    assert [p.rank for p in new.servers if p.name == "b"] != [p.rank for p in old.servers if p.name == "b"]
    assert d.unchanged == ("a", "b")  # inserting "first" moved their rank, nothing they wrote
    assert d.changed == {"c": ("port", "options")}
    assert d.moved == ("c",)
    assert d.added == ("first",)
    assert d.supervisor == ("max_restarts",)
    assert diff(new.servers, new, old).removed == ("first",)


@pytest.mark.parametrize(
    ("section", "said"),
    [
        ("supervisor: {workers: 3}", "reload: supervisor.workers changed to 3: it applies when the supervisor is "
         "restarted (this process serves on alone)"),
        ("logging: {format: json}", "reload: logging: changed: it applies when the supervisor is restarted (the "
         "metrics endpoint and the console keep their address, the log its handlers)"),
    ],
)  # fmt: skip
async def test_a_change_that_needs_a_restart_waits_for_one_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, section: str, said: str
) -> None:
    async with running(plan_from(tmp_path, BASE)) as sup:
        write_config_file(tmp_path, f"{section}\n{BASE}")
        with caplog.at_level(logging.WARNING, "supervisor"):
            assert (await sup.reload("test")).ok
        assert said in caplog.messages
