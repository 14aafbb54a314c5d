import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from supervisor import current_server
from supervisor.handler import Handler


@contextlib.asynccontextmanager
async def room(options: Mapping[str, Any]) -> AsyncIterator[Handler]:  # handler: chat:room
    members: set[asyncio.StreamWriter] = set()
    draining = current_server().draining  # set when this generation stops accepting

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        members.add(writer)
        try:
            while line := await reader.readline():
                for m in members - {writer}:
                    m.write(line)
            if draining.is_set():  # end-of-stream because we are shutting down or restarting
                writer.write(b"* server shutting down, goodbye\n")
        finally:
            members.discard(writer)
            writer.close()

    async def heartbeat(every: float) -> None:  # a background task: it ends when the generation drains
        while not draining.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(draining.wait(), every)
            for m in members:
                m.write(b"* ping\n")

    async with asyncio.TaskGroup() as tg:
        tg.create_task(heartbeat(float(options.get("every", 30))))  # its failure restarts the server
        yield handle
        # after the yield: every connection of this generation has drained, and the heartbeat has ended
