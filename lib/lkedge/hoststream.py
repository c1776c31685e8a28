"""asyncio's (StreamReader, StreamWriter) pair as the one stream object transport.py
drives: the interface of MicroPython's asyncio.Stream (readinto, readline, write +
drain, close + wait_closed).

Imported by transport.py on CPython only (and on a MicroPython so old that its Stream
has no readinto), so a board does not load it.

    s = await open_stream(host, port, ssl_context_or_None, server_hostname_or_None)
"""
import asyncio

from .clock import wait_for

CLOSE_WAIT_S = 2


async def open_stream(host, port, ctx, server_hostname):
    r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=server_hostname)
    return Stream(r, w)


class Stream:
    def __init__(self, reader, writer):
        self.r = reader
        self.w = writer

    async def readinto(self, buf):
        data = await self.r.read(len(buf))  # new bytes, copied into buf
        n = len(data)
        buf[:n] = data
        return n

    async def readline(self):
        return await self.r.readline()

    def write(self, data):
        # CPython transports keep a reference to what they get: never a caller's buffer.
        self.w.write(data if isinstance(data, bytes) else bytes(data))

    async def drain(self):
        await self.w.drain()

    def close(self):
        self.w.close()

    async def wait_closed(self):
        # A graceful close waits until what is queued is written: never, on a link
        # that stopped draining (Room ends such a link). Then the connection is reset.
        try:
            await wait_for(self.w.wait_closed(), CLOSE_WAIT_S)
        except (asyncio.TimeoutError, OSError):
            self.w.transport.abort()
