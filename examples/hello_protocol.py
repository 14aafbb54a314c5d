import asyncio
from typing import cast


class Hello(asyncio.Protocol):  # kind: protocol, handler: hello_protocol:Hello
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.head = b""  # a request head may come in several segments, or with the next one

    def data_received(self, data: bytes) -> None:
        self.head += data
        while b"\r\n\r\n" in self.head:
            _, self.head = self.head.split(b"\r\n\r\n", 1)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n")
        if len(self.head) > 8192:  # a head that never ends: yours to bound, as in any Protocol server
            self.transport.close()

    def drain(self) -> None:  # optional: called once when this generation drains
        self.transport.close()  # idle: close now (mid-request: answer first, then close)
