"""The README's handler examples, run as written: copied out of README.md into a module and served."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from supervisor.state import ChildState
from tests.helpers import DEADLINE, ask, eventually, plan_from, port_of, running, wait_state
from tests.proc import REPO

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def example(containing: str, tmp_path: Path, module: str) -> None:
    (block,) = [b for b in BLOCKS if containing in b]
    (tmp_path / f"{module}.py").write_text(block if "import" in block else f"import asyncio\n\n{block}")


async def test_the_plain_handler_example(tmp_path: Path) -> None:
    example("async def handle(reader: asyncio.StreamReader", tmp_path, "readme_echo")
    plan = plan_from(tmp_path, "servers: [{name: e, handler: 'readme_echo:handle', port: 0}]")
    async with running(plan) as sup:
        assert await ask(port_of(sup, "e"), b"as written") == b"as written\n"


async def test_the_lifespan_example_restarts_and_stops_promptly(tmp_path: Path) -> None:
    example("async def room(options)", tmp_path, "readme_chat")
    plan = plan_from(
        tmp_path,
        """
        supervisor: {shutdown_timeout: 30s}
        servers: [{name: chat, handler: "readme_chat:room", port: 0, shutdown_timeout: 20s, options: {every: 0.05}}]
        """,
    )
    loop = asyncio.get_running_loop()
    async with running(plan) as sup:
        port = port_of(sup, "chat")
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(DEADLINE):
            assert await r1.readline() == b"* ping\n"  # the heartbeat runs
            w1.write(b"hi\n")  # both have spoken: neither is a just-connected client the restart would wait for
            while (line := await r2.readline()) == b"* ping\n":
                pass
            assert line == b"hi\n"
            w2.write(b"hello\n")
            while (line := await r1.readline()) == b"* ping\n":
                pass
        assert line == b"hello\n"
        started = loop.time()
        await sup.control("restart", "chat")
        async with asyncio.timeout(DEADLINE):
            while (line := await r1.readline()) == b"* ping\n":
                pass
        assert line == b"* server shutting down, goodbye\n"
        child = sup.children[0]
        await eventually(lambda: len(child.live) == 1)  # the old generation is gone, heartbeat and all
        assert loop.time() - started < 1.0  # not the 20 s drain budget
        await wait_state(sup, "chat", ChildState.RUNNING, generation=2)
        w1.close()
        w2.close()
        stopping = loop.time()
    assert loop.time() - stopping < 1.0  # shutdown, likewise


def test_the_config_reference_is_valid_and_shows_the_defaults(tmp_path: Path) -> None:
    """README's "Every key, with its default" block: a config `check` accepts, whose values are the defaults."""
    import dataclasses

    from supervisor.config import load_config
    from supervisor.spec import ConsoleSpec, LoggingSpec, MetricsSpec, ServerSpec, SupervisorSpec

    text = (REPO / "README.md").read_text()
    (block,) = re.findall(r"Every key, with its default.*?```yaml\n(.*?)```", text, re.S)
    path = tmp_path / "reference.yaml"
    path.write_text(block)
    config = load_config(path)
    sections = (SupervisorSpec(), MetricsSpec(), ConsoleSpec(), LoggingSpec())
    assert (config.supervisor, config.metrics, config.console, config.logging) == sections
    (server,) = config.servers
    example = {"name", "handler", "port", "options", "locations"}  # what every server writes for itself
    defaults = ServerSpec(name="", handler="", port=0)
    for f in dataclasses.fields(ServerSpec):
        if f.name not in example:
            assert getattr(server, f.name) == getattr(defaults, f.name), f"README shows {f.name} with another value"
    documented = set(re.findall(r"^\s+(?:- |# ?)?(\w+):", block, re.M))
    assert {f.name for f in dataclasses.fields(ServerSpec)} - {"locations"} <= documented  # every key is shown
