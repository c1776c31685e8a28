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
        self._held = None     # a cancel that came inside the frame being written (_finish)
        self._went = None     # the last such cancel, raised once its frame was out (_went_out)
        self._t = None        # the transport of the frame being written

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
            # Room's deadline passed while it wrote its last frame (on a transport that
            # cannot finish a frame a cancel lands in): it stops here, before a byte of
            # this one, where its caller knows what went out (a stream cut short gets
            # its trailer)
            self._stop_after_frame = None
            raise asyncio.CancelledError
        await self._lock.acquire()
        self._in_frame = me
        self._t = t
        self._went = None   # its callers have asked by now (it holds a traceback)
        begun = wrote = False
        try:
            n = link.put_frame_header(buf, ftype, total)
            begun = True
            i = 0
            x = None  # what is being written: buf's bytes, or a segment bigger than buf
            while True:
                if x is None:
                    if i == len(segs):
                        if not n:
                            break
                        x = buf[:n]
                        n = 0
                    else:
                        s = segs[i]
                        if hasattr(s, "write_to"):  # a Blob streams itself through the buffer
                            if n:
                                x = buf[:n]
                                n = 0
                            else:
                                await s.write_to(self._write_whole, buf)
                                i += 1
                                continue
                        else:
                            k = len(s)
                            if n + k <= size:
                                buf[n:n + k] = s
                                n += k
                                i += 1
                                continue
                            if n:
                                x = buf[:n]
                                n = 0
                            else:  # bigger than buf: written from where it is
                                x = s
                                i += 1
                try:
                    await t.write(x)
                except asyncio.CancelledError as e:
                    await self._finish(t, x, e)
                wrote = True
                x = None
            begun = False
        except BaseException:
            # Failed with part of the frame out (a transport cannot take a write back):
            # the next frame would follow half of this one and the relay would read
            # garbage. End the link instead; the Room sees it and reconnects. (Not when
            # no byte of it went out: a transport not connected yet is being connected.)
            if begun and (wrote or getattr(t, "sent", 1)):
                if self.transport is t:
                    self.transport = None
                try:
                    await t.close()
                except Exception:
                    pass
            if self._held is not None:
                raise self._held   # cancelled: the link that failed meanwhile is the Room's
            raise
        finally:
            self._in_frame = self._t = None
            self._lock.release()
            held, self._held = self._held, None
            if held is not None:
                _hold(t, False)
        if held is not None:
            # The frame is out whole: now the cancel, as asyncio.timeout and wait_for
            # expect it. Its callers ask _went_out(e) whether this packet went out.
            self._went = held
            raise held

    def _went_out(self, e):
        """Whether CancelledError e came after its packet went out whole (a stream whose
        header that was must still be ended)."""
        return e is self._went

    async def _write_whole(self, data):
        """t.write(data) for a Blob: whole, even when cancelled meanwhile."""
        t = self._t
        try:
            await t.write(data)
        except asyncio.CancelledError as e:
            await self._finish(t, data, e)

    async def _finish(self, t, data, e):
        """Cancel e landed in the write of data: the frame is finished (half of it would
        end the link for every call and stream), and e raised once it is out. A link
        that takes the transport's timeout_ms for it is closed (the transport's guard)."""
        if getattr(t, "sent", None) is None:  # a transport that cannot tell what went out
            raise e
        if self._held is None:
            self._held = e
            _hold(t, True)
        data = memoryview(data)[t.sent:]   # (no copy of a big bytes segment)
        while data:
            try:
                await t.write(data)
                return
            except asyncio.CancelledError:   # asked again: still one cancel
                data = data[t.sent:]


def _hold(t, on):
    try:
        t._hold(on)
    except AttributeError:  # a transport of its own without the guard (tests)
        pass
