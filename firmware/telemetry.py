"""Telemetry: samples in a bounded on-flash queue, sent as CBOR byte streams.

Every sample gets a sequence number that survives reboots. Samples are appended to
telemetry.q as length-prefixed CBOR maps {"seq", "t", "v"}; telemetry.st holds the
next seq and the offset of the oldest unconfirmed sample. The sender sends the oldest
samples as ONE CBOR array (a byte stream, topic "telemetry", to the configured
identity) and then makes a round trip to the receiver: an RPC "telemetry.sync" with
the last seq. ANY answer, "unsupported method" (1400) included, proves that the
receiver's client has the whole batch (the link and the relay keep each sender's
packets in order); only then does the queue head advance. A batch cut off by a link
or relay failure is therefore sent again: delivery is at-least-once and ordered, and
receivers drop repeats by `seq`. While the receiver is unreachable the queue keeps
up to `max_bytes` of samples; beyond that the oldest are dropped and counted.

The file format, per record: 2-byte big-endian length, then the CBOR map. A record
torn by a power cut is cut off at the next boot (recover()).
"""
import json
import os

from lkedge import cbor

QUEUE = "telemetry.q"
STATE = "telemetry.st"
TOPIC = "telemetry"
SYNC_METHOD = "telemetry.sync"
BATCH_BYTES = 2048   # CBOR bytes per stream: one small buffer on the board
SYNC_TIMEOUT_S = 5
_UNSUPPORTED_METHOD = 1400


def _next_record(f, room=None):
    """The next length-prefixed record at f's position, or None at the end, at a torn
    record (its length says more than the file holds), or when it is longer than
    `room` bytes (then it is not read at all)."""
    h = f.read(2)
    if len(h) < 2:
        return None
    n = h[0] << 8 | h[1]
    if room is not None and n > room:
        return None
    rec = f.read(n)
    return rec if len(rec) == n else None


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def _cbor_array_header(n):
    if n < 24:
        return bytes((0x80 | n,))
    if n < 256:
        return bytes((0x98, n))
    return bytes((0x99, n >> 8, n & 255))


class TelemetryQueue:
    """The on-flash queue. Not async: the caller serialises access (Telemetry.lock)."""

    def __init__(self, max_bytes=8192, prefix=""):
        self.q = prefix + QUEUE
        self.st = prefix + STATE
        self.max_bytes = max_bytes
        self.seq = 0        # next sequence number to assign
        self.head = 0       # file offset of the oldest unconfirmed sample
        self.dropped = 0    # samples dropped because the queue was full
        self._load()
        self.recover()

    def _load(self):
        try:
            with open(self.st) as f:
                d = json.load(f)
            self.seq, self.head, self.dropped = d["seq"], d["head"], d.get("dropped", 0)
        except (OSError, ValueError, KeyError):
            pass  # first boot or a damaged state file: recover() rebuilds what it can

    def _save(self):
        tmp = self.st + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"seq": self.seq, "head": self.head, "dropped": self.dropped}, f)
        os.rename(tmp, self.st)  # a power cut leaves the old state or the new one

    def recover(self):
        """Walk the queue from head: cut off a torn last record, and make the next seq
        follow the last record written (its append may have beaten the state save)."""
        size = _size(self.q)
        if self.head > size:
            self.head = size
        off = self.head
        last = None
        if size:
            with open(self.q, "rb") as f:
                f.seek(off)
                while True:
                    rec = _next_record(f)
                    if rec is None:
                        break
                    n = len(rec)
                    try:
                        last = cbor.loads(rec)["seq"]
                    except (ValueError, KeyError, TypeError):
                        break  # garbage from here on: keep what came before
                    off += 2 + n
        if off < size:
            self._truncate(off)
        if last is not None and last + 1 > self.seq:
            self.seq = last + 1
        self._save()

    def _truncate(self, end):
        # MicroPython files have no truncate(): copy the good part through one buffer.
        self._copy_from(0, end)

    def _copy_from(self, start, end=None):
        tmp = self.q + ".tmp"
        buf = bytearray(256)
        mv = memoryview(buf)
        with open(self.q, "rb") as src, open(tmp, "wb") as dst:
            src.seek(start)
            left = (end - start) if end is not None else -1
            while left:
                n = src.readinto(mv if left < 0 else mv[:min(left, len(buf))])
                if not n:
                    break
                dst.write(mv[:n])
                if left > 0:
                    left -= n
        os.rename(tmp, self.q)

    def pending(self):
        """Bytes of unconfirmed samples."""
        return _size(self.q) - self.head

    def add(self, values, t):
        """Queue one sample {seq, t, v}; returns its sequence number."""
        rec = cbor.dumps({"seq": self.seq, "t": t, "v": values})
        if len(rec) > 0xFFFF:
            raise ValueError("telemetry sample of %d bytes is over the 65535-byte record limit" % len(rec))
        while self.pending() and self.pending() + len(rec) + 2 > self.max_bytes:
            self._skip_one()
        if self.head > self.max_bytes:
            self._compact()
        with open(self.q, "ab") as f:
            f.write(bytes((len(rec) >> 8, len(rec) & 255)))
            f.write(rec)
        self.seq += 1
        self._save()
        return self.seq - 1

    def _compact(self):
        # Confirmed and dropped samples before head are cut off, so the file stays
        # within about twice max_bytes.
        self._copy_from(self.head)
        self.head = 0
        self._save()

    def _skip_one(self):
        with open(self.q, "rb") as f:
            f.seek(self.head)
            h = f.read(2)
        self.head += 2 + (h[0] << 8 | h[1])
        self.dropped += 1

    def batch(self, max_bytes=BATCH_BYTES):
        """(cbor_array_bytes, count, last_seq, end_offset) of the oldest samples;
        (None, 0, None, head) when nothing is pending."""
        recs = []
        total = 0
        off = self.head
        if self.pending() <= 0:
            return None, 0, None, off
        with open(self.q, "rb") as f:
            f.seek(off)
            while True:
                rec = _next_record(f, max_bytes - total if recs else None)
                if rec is None:
                    break
                n = len(rec)
                recs.append(rec)
                total += n
                off += 2 + n
        if not recs:
            return None, 0, None, off
        last = cbor.loads(recs[-1])["seq"]
        return _cbor_array_header(len(recs)) + b"".join(recs), len(recs), last, off

    def commit(self, end_offset):
        """Samples up to `end_offset` were confirmed: advance; drop the file when empty."""
        self.head = end_offset
        if self.head >= _size(self.q):
            try:
                os.remove(self.q)
            except OSError:
                pass
            self.head = 0
        self._save()


class Telemetry:
    """Sampling and sending, one at a time (an asyncio.Lock): a reconnect-triggered
    flush and the periodic loop never interleave their queue updates."""

    def __init__(self, room, queue, destination, device):
        import asyncio
        self.room = room
        self.queue = queue
        self.destination = destination
        self.device = device
        self.lock = asyncio.Lock()
        self.sent = 0

    async def sample(self, values, t):
        async with self.lock:
            return self.queue.add(values, t)

    async def flush(self):
        """Send every pending sample the receiver confirms. Returns how many."""
        if not self.destination:
            return 0
        async with self.lock:
            n = 0
            while self._reachable():
                data, count, last, end = self.queue.batch()
                if not count:
                    break
                if not await self._send(data, count, last):
                    break
                self.queue.commit(end)
                n += count
            self.sent += n
            return n

    def _reachable(self):
        r = self.room
        return r.connection_state == "connected" and self.destination in r.remote_participants

    async def _send(self, data, count, last):
        from lkedge.rpc import RpcError
        lp = self.room.local_participant
        await lp.send_bytes(data, name="telemetry.cbor", mime_type="application/cbor", topic=TOPIC,
                            destination_identities=[self.destination],
                            attributes={"device": self.device, "count": str(count), "last_seq": str(last)})
        try:
            await lp.perform_rpc(destination_identity=self.destination, method=SYNC_METHOD,
                                 payload=str(last), response_timeout=SYNC_TIMEOUT_S)
        except RpcError as e:
            # the receiver answered "no such method": it still got the batch first
            return e.code == _UNSUPPORTED_METHOD
        return True
