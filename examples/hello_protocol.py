import asyncio
from typing import cast


class Hello(asyncio.Protocol):  # kind: protocol, handler: hello_protocol:Hello
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n")

    def drain(self) -> None:  # optional: called once when this generation drains
        self.transport.close()  # idle: close now (mid-request: answer first, then close)
