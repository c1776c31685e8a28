"""Writes DataPackets onto the link, streaming big fields from their sources.

A packet is serialized with proto.encode_segments: the small parts as bytes, big
values as they are, a Blob's bytes written straight from where they live (a slice of a
payload in memory, or a file read through the buffer: lkedge.sending.ReadBlob). The
frame goes out through one preallocated buffer: its header and the segments are copied
in and written when it is full, and a segment larger than the buffer is written from
where it is. So a 15000-byte chunk of a file never sits in RAM whole, a chunk of a
stream costs one transport write, and sending allocates no frame of its own. One lock
per packet keeps frames whole on the link while letting RPC acks slip in between the
chunks of a long stream.
"""
import asyncio

from . import link, proto

# Room of the buffer beyond the piece size: the frame and DataPacket headers of a
# chunk (identities, stream id), so that a piece-sized chunk goes out in one write.
HEADER_ROOM = 256


def _seg_len(s):
    return s.size if hasattr(s, "write_to") else len(s)


class PacketSender:
    """Serializes DataPackets to LINK DATA frames on one transport."""

    def __init__(self, buf_size=512):
        self._lock = asyncio.Lock()   # fair: a waiting ack gets the link next
        self._buf = memoryview(bytearray(max(buf_size, 64)))
        self.transport = None
        self.packets = 0
        # JOINED's max_frame: a larger DATA frame would make the relay end the link
        # (LEAVE 4), failing everything else in flight, so send() refuses it instead.
        self.max_frame = None
        # The task writing a frame now: Room's handler deadline does not cancel while
        # one is (a cancel inside a frame would end the link for everyone); a handler
        # caught in its own frame is stopped at the start of its next one instead.
        self._in_frame = self._stop_after_frame = None

    # send() and send_frame() are plain functions returning the one coroutine that
    # writes (`await sender.send(pkt)` as usual): a coroutine of their own per packet
    # would be garbage a board has to collect.
    def send(self, pkt):
        """The awaitable that writes DataPacket pkt as a DATA frame (encoding errors are
        raised here, at the call)."""
        segs = proto.encode_segments(proto.DATA_PACKET, pkt)
        total = 0
        for s in segs:
            total += _seg_len(s)
        if self.max_frame is not None and 1 + total > self.max_frame:
            raise ValueError("DATA frame of %d bytes (type byte + DataPacket) is over the relay's "
                             "max_frame %d: not sent" % (1 + total, self.max_frame))
        self.packets += 1
        return self.send_frame_segments(link.DATA, segs, total)

    def send_frame(self, ftype, body):
        return self.send_frame_segments(ftype, (body,), len(body))

    async def send_frame_segments(self, ftype, segs, total):
        t = self.transport
        if t is None:
            raise OSError("not connected to a relay")
        buf = self._buf
        size = len(buf)
        me = asyncio.current_task()
        if me is self._stop_after_frame is not None:
            # Room's deadline passed while it wrote its last frame: stopped here, before
            # a byte of this one, where its caller knows what went out (a stream cut
            # short gets its trailer)
            self._stop_after_frame = None
            raise asyncio.CancelledError
        await self._lock.acquire()
        self._in_frame = me
        n = -1  # no byte of this frame handed to the transport yet
        try:
            n = link.put_frame_header(buf, ftype, total)
            for s in segs:
                if hasattr(s, "write_to"):  # a Blob streams itself through the buffer
                    if n:
                        await t.write(buf[:n])
                        n = 0
                    await s.write_to(t.write, buf)
                    continue
                k = len(s)
                if n + k > size:
                    if n:
                        await t.write(buf[:n])
                        n = 0
                    if k > size:
                        await t.write(s)
                        continue
                buf[n:n + k] = s
                n += k
            if n:
                await t.write(buf[:n])
            n = -1
        except BaseException:
            # Cancelled or failed with part of the frame out (a transport cannot take a
            # write back): the next frame would follow half of this one and the relay
            # would read garbage. End the link instead; the Room sees it and reconnects.
            if n >= 0:
                if self.transport is t:
                    self.transport = None
                try:
                    await t.close()
                except Exception:
                    pass
            raise
        finally:
            self._in_frame = None
            self._lock.release()
