import asyncio


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:  # handler: echo:handle
    while line := await reader.readline():  # b"" at end-of-stream: the client left, or we are draining
        writer.write(line)
        await writer.drain()
    writer.close()
