"""A chat room: every line a client sends goes to every other client of the same server.

A stateful server written as a factory with a lifespan: the room lives as long as one server
generation, and when the server drains (shutdown or restart) each client is told goodbye.

    servers:
      - name: chat
        handler: supervisor.handlers.chat:room
        port: 7777
        options: {greeting: "welcome to the chat"}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from supervisor.handler import Handler, current_server

LOGGER = logging.getLogger("supervisor.chat")
GOODBYE = b"* server shutting down, goodbye\n"


class Room:
    def __init__(self, greeting: str) -> None:
        self.greeting = greeting.encode() + b"\n"
        self.members: dict[asyncio.StreamWriter, str] = {}

    def broadcast(self, line: bytes, sender: asyncio.StreamWriter | None = None) -> None:
        for member in self.members:
            if member is not sender and not member.is_closing():
                member.write(line)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        nick = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "guest"
        self.members[writer] = nick
        try:
            writer.write(self.greeting)
            self.broadcast(f"* {nick} joined\n".encode(), writer)
            while line := await reader.readline():
                self.broadcast(f"{nick}: ".encode() + line, writer)
                await writer.drain()
            if current_server().draining.is_set():
                writer.write(GOODBYE)
                await writer.drain()
        finally:
            del self.members[writer]
            self.broadcast(f"* {nick} left\n".encode())
            writer.close()


@contextlib.asynccontextmanager
async def room(options: Mapping[str, Any]) -> AsyncIterator[Handler]:
    chat = Room(str(options.get("greeting", "welcome to the chat")))
    LOGGER.info("chat room open")
    try:
        yield chat.handle
    finally:
        LOGGER.info("chat room closed (%d members left)", len(chat.members))
