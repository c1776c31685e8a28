"""Writes DataPackets onto the link, streaming big fields from their sources.

A packet is serialized with proto.encode_segments: the small parts as bytes, the big
field as a Blob whose bytes are written straight from where they live (a slice of a
payload in memory, or a file read through one fixed buffer: lkedge.sending.ReadBlob).
So a 15000-byte chunk of a file never sits in RAM whole. One lock per packet keeps frames whole on the link
while letting RPC acks slip in between the chunks of a long stream.
"""
import asyncio

from . import link, proto


def _seg_len(s):
    return s.size if hasattr(s, "write_to") else len(s)


class PacketSender:
    """Serializes DataPackets to LINK DATA frames on one transport."""

    def __init__(self, buf_size=512):
        self._lock = asyncio.Lock()
        self._buf = memoryview(bytearray(buf_size))
        self.transport = None
        self.packets = 0

    async def send(self, pkt):
        segs = proto.encode_segments(proto.DATA_PACKET, pkt)
        total = 0
        for s in segs:
            total += _seg_len(s)
        await self.send_frame_segments(link.DATA, segs, total)
        self.packets += 1

    async def send_frame(self, ftype, body):
        await self.send_frame_segments(ftype, (body,), len(body))

    async def send_frame_segments(self, ftype, segs, total):
        t = self.transport
        if t is None:
            raise OSError("not connected to a relay")
        await self._lock.acquire()
        try:
            # Small segments are joined into one write; big ones stream from their source.
            pending = [link.frame_header(ftype, total)]
            for s in segs:
                if hasattr(s, "write_to"):
                    await t.write(b"".join(pending))
                    pending = []
                    await s.write_to(t.write, self._buf)
                else:
                    pending.append(s)
            if pending:
                await t.write(b"".join(pending) if len(pending) > 1 else pending[0])
        finally:
            self._lock.release()
