"""Telemetry: samples in a bounded on-flash queue, sent as CBOR byte streams.

Every sample is a CBOR map {"seq", "t", "v", "boot", "ms"}:
    seq   its sequence number, counting on across reboots (telemetry.st)
    t     Unix time in whole seconds, or null while the board's clock is not set
          (a board without network time; wall_time())
    v     the values (sensors.read_all)
    boot  the boot counter (telemetry.boot, +1 at every boot: next_boot())
    ms    milliseconds since that boot (lkedge.clock.now_ms, never wraps)
Records of one boot share one uptime clock: a host that knows the real time of any
one of them can date the others by "ms" (docs/firmware.md, "Telemetry").

Sending: the oldest samples go as ONE CBOR array (a byte stream, topic "telemetry",
to the configured identity), then the sender calls the receiver's RPC method
"telemetry.sync" with the last seq of the batch as its payload. The contract: the
receiver registers "telemetry.sync" and answers it (with anything) once it holds the
batch; as the link and the relay keep each sender's packets in order, that answer
comes after the stream's end. Only that positive answer confirms the batch and
advances the queue head. An error answer, a timeout, or 1400 "unsupported method" (a
participant with that identity that does not take telemetry, e.g. a CLI) confirms
nothing: the samples stay queued and are sent again later. Delivery is therefore
at-least-once and ordered; receivers drop repeats by `seq` (and notice a restarted
seq by a higher `boot`). While the receiver is unreachable the queue keeps up to
`max_bytes` of samples; beyond that the oldest are dropped and counted in `dropped`
(telemetry.st, device.info), as is a sample that could not be queued at all (a full
flash) or that was lost to a damaged queue file.

The queue file telemetry.q, per record: 2-byte big-endian length, then the CBOR map.
telemetry.st holds {"seq": next seq, "first": oldest unconfirmed seq, "dropped": N,
"boot": the boot that wrote it}. A state the flash refuses (full) stays in RAM and is
saved again with each sample, said once in the log; meanwhile no queue file is
removed, since its records then hold the newest seq and boot for a reboot.
The head (file offset of the oldest unconfirmed record) is found at boot by walking
the file for "first", so no file rewrite can leave the state pointing into the wrong
file: a power cut between a compaction's rename and its state save loses nothing.
A failed append is cut off again before anything else is appended; at boot
(recover()) every record is checked (length bounded by RECORD_MAX and by what the
file holds, a CBOR map with an int seq, seqs increasing): a torn or garbage stretch is
skipped to the next good record, the file rebuilt without it, and the samples it held
counted in `dropped`.
"""
import json
import os
import time

from lkedge import cbor

QUEUE = "telemetry.q"
STATE = "telemetry.st"
BOOT = "telemetry.boot"
TOPIC = "telemetry"
SYNC_METHOD = "telemetry.sync"
BATCH_BYTES = 2048   # CBOR bytes per stream: one small buffer on the board
RECORD_MAX = 1024    # one sample's CBOR; a longer length field is garbage
SYNC_TIMEOUT_S = 5   # the confirmation timeout: this, plus 1 s per KiB of the batch,
SYNC_TIMEOUT_MAX_S = 60  # doubled after each timeout up to this, back after a success
RETRY_MIN_MS = 1000  # a failed send is retried after this, doubling ...
RETRY_MAX_MS = 60000  # ... up to this (a reconnect or the receiver joining resets it)
LOG_EVERY_MS = 600000  # persistent send failures are logged at most this often
_UNSUPPORTED_METHOD = 1400
_RESPONSE_TIMEOUT = 1502
_CLOCK_SET_YEAR = 2024  # a clock before this year was never set
try:
    _EPOCH = 946684800 if time.gmtime(0)[0] == 2000 else 0  # ports with the 2000 epoch
except Exception:
    _EPOCH = 0


def wall_time():
    """Unix time in whole seconds, or None while the board's clock is not set."""
    t = time.time()
    try:
        if time.gmtime(int(t))[0] < _CLOCK_SET_YEAR:
            return None
    except Exception:
        return None
    return int(t) + _EPOCH


def next_boot(prefix="", notes=None):
    """Count this boot in `prefix`telemetry.boot; returns the new count (1 at the first),
    never one an earlier boot used (telemetry_recover.next_boot)."""
    return _boot_code().next_boot(prefix, notes)


def _boot_code():
    """telemetry_recover, imported for one use: its bytecode leaves the heap after."""
    import sys
    import telemetry_recover
    sys.modules.pop("telemetry_recover", None)
    return telemetry_recover


def _seq_of(rec):
    """The seq of record bytes `rec` when they are a well-formed sample, else None."""
    if not rec or not 0xA0 <= rec[0] <= 0xB7:  # a CBOR map of up to 23 pairs
        return None
    try:
        d = cbor.loads(rec)
        s = d["seq"]
    except (ValueError, KeyError, TypeError, IndexError, MemoryError):
        return None
    if not isinstance(s, int) or isinstance(s, bool) or s < 0:
        return None
    return s


def _read_record(f, off, limit):
    """(record bytes, seq) of a good record at `off`, or (None, None)."""
    if off + 2 > limit:
        return None, None
    f.seek(off)
    h = f.read(2)
    if len(h) < 2:
        return None, None
    n = h[0] << 8 | h[1]
    if not 0 < n <= RECORD_MAX or off + 2 + n > limit:
        return None, None
    rec = f.read(n)
    if len(rec) < n:
        return None, None
    s = _seq_of(rec)
    return (rec, s) if s is not None else (None, None)


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _replace(path, text):
    """Write `text` to `path` through path.tmp and a rename, so a power cut leaves the
    old file or the new one. -> None, or the OSError when the flash refused it (a full
    flash; the .tmp, which the failed write may have left empty, is removed)."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, path)
        return None
    except OSError as e:
        _remove(tmp)
        return e


def _cbor_array_header(n):
    if n < 24:
        return bytes((0x80 | n,))
    if n < 256:
        return bytes((0x98, n))
    return bytes((0x99, n >> 8, n & 255))


class TelemetryQueue:
    """The on-flash queue. Not async: the caller serialises access (Telemetry.lock).

    Offsets handed out by batch() are logical (file offset + `base`): a compaction
    moves the records in the file, and a commit() for a batch taken before it still
    lands on the right record, or is ignored when the file was rebuilt meanwhile."""

    def __init__(self, max_bytes=8192, prefix="", boot=0):
        self.q = prefix + QUEUE
        self.st = prefix + STATE
        self.max_bytes = max_bytes
        self.boot = boot
        self.seq = 0        # next sequence number to assign
        self.first = None   # lowest seq not yet confirmed (None: unknown, a lost state)
        self.head = 0       # file offset of the oldest unconfirmed sample
        self.end = 0        # file offset where the good records end
        self.base = 0       # logical offset of file offset 0
        self.dropped = 0    # samples lost: dropped when full, not queued, or damaged
        self.notes = []     # what recover() found wrong, for the app's log
        self.state_problem = None  # "missing" or "damaged" while _load() to recover()
        self.unsaved = False  # the last state save failed (a full flash): the state is in RAM only
        code = _boot_code()
        code.load(self)
        code.recover(self)

    def _save(self):
        """Write the state (with the boot number: next_boot() never reuses one a state
        names). A flash that refuses it (full) loses nothing yet: seq, dropped and boot
        stay in RAM, every later save tries again, and `notes` says so once (and once
        more when a save succeeds again). -> whether it was saved."""
        e = _replace(self.st, json.dumps({"seq": self.seq, "first": self.seq if self.first is None else self.first,
                                          "dropped": self.dropped, "boot": self.boot}))
        if (e is not None) != self.unsaved:  # rare: its note's code stays out of the heap
            _boot_code().saved(self, e)
        return e is None

    def recover(self):
        """Walk the whole queue file and check every record; skip damaged stretches to
        the next good record (counting the samples they held as dropped), rebuild the
        file when anything was wrong, find the head by `first`, and make the next seq
        follow the last record written (telemetry_recover.recover)."""
        _boot_code().recover(self)

    def _rewrite(self, ranges):
        """Replace the queue file with the given [start, end) byte ranges of it, copied
        through one small buffer (MicroPython files have no truncate())."""
        tmp = self.q + ".tmp"
        buf = bytearray(256)
        mv = memoryview(buf)
        try:
            with open(self.q, "rb") as src, open(tmp, "wb") as dst:
                for start, end in ranges:
                    src.seek(start)
                    left = end - start
                    while left > 0:
                        n = src.readinto(mv[:min(left, len(buf))])
                        if not n:
                            break
                        dst.write(mv[:n])
                        left -= n
            os.rename(tmp, self.q)
        except OSError:
            _remove(tmp)
            raise

    def pending(self):
        """Bytes of unconfirmed samples."""
        return self.end - self.head

    def add(self, values, t, ms=None):
        """Queue one sample {seq, t, v, boot, ms}; returns its sequence number. A sample
        that cannot be queued (a full flash) raises and is counted in `dropped`; the
        file is left as it was (what the failed write left is cut off)."""
        if ms is None:
            from lkedge.clock import now_ms
            ms = now_ms()
        rec = cbor.dumps({"seq": self.seq, "t": t, "v": values, "boot": self.boot, "ms": ms})
        if len(rec) > RECORD_MAX:
            raise ValueError("telemetry sample of %d bytes is over the %d-byte record limit" % (len(rec), RECORD_MAX))
        while self.pending() > 0 and self.pending() + len(rec) + 2 > self.max_bytes:
            self._skip_one()
        try:
            if self.head > self.max_bytes or _size(self.q) != self.end:
                self._compact()  # also cuts off what a failed append left
            if self.first is None or self.pending() <= 0:
                self.first = self.seq
            with open(self.q, "ab") as f:
                f.write(bytes((len(rec) >> 8, len(rec) & 255)))
                f.write(rec)
        except OSError:
            self.dropped += 1
            try:
                if _size(self.q) != self.end:
                    self._compact()
            except OSError:
                pass  # the next add tries again before it appends anything
            self._save()
            raise
        self.end += 2 + len(rec)
        self.seq += 1
        self._save()
        return self.seq - 1

    def _compact(self):
        # Confirmed and dropped samples before head are cut off, so the file stays
        # within about twice max_bytes. The state names the head by seq ("first"),
        # valid for the old file and the new one alike.
        if self.head >= self.end:
            self.first = self.seq
            if not self._save():  # the file goes only once the state holds seq and boot
                if _size(self.q) != self.end:
                    raise OSError(28)  # torn bytes that only this compaction would cut off
                return
            _remove(self.q)
        else:
            self._rewrite([(self.head, self.end)])
        self.base += self.head
        self.end -= self.head
        self.head = 0
        self._save()

    def _skip_one(self):
        with open(self.q, "rb") as f:
            rec, s = _read_record(f, self.head, self.end)
        if rec is None:  # damaged since boot: walk the file again
            self.recover()
            return
        self.head += 2 + len(rec)
        self.first = s + 1
        self.dropped += 1

    def batch(self, max_bytes=BATCH_BYTES):
        """(cbor_array_bytes, count, last_seq, end) of the oldest samples, `end` a
        logical offset for commit(); (None, 0, None, end) when nothing is pending."""
        for _ in range(2):
            recs = []
            total = 0
            off = self.head
            last = None
            bad = False
            if self.pending() > 0:
                with open(self.q, "rb") as f:
                    f.seek(off)
                    while off < self.end:
                        h = f.read(2)
                        n = h[0] << 8 | h[1] if len(h) == 2 else 0
                        if not 0 < n <= RECORD_MAX or off + 2 + n > self.end:
                            bad = True
                            break
                        if recs and total + n > max_bytes:
                            break
                        rec = f.read(n)
                        if len(rec) < n or not 0xA0 <= rec[0] <= 0xB7:
                            bad = True
                            break
                        recs.append(rec)
                        total += n
                        off += 2 + n
                if recs:
                    last = _seq_of(recs[-1])
                    bad = bad or last is None
            if not bad:
                break
            recs = None
            self.recover()  # damaged since boot: rebuild, then read again
        if not recs or last is None:
            return None, 0, None, self.base + off
        return _cbor_array_header(len(recs)) + b"".join(recs), len(recs), last, self.base + off

    def commit(self, end, last=None):
        """The samples up to logical offset `end` (a batch() answer; `last` its last
        seq) were confirmed: advance; drop the file when empty. A batch overtaken by
        drops or a rebuild is committed as far as it still applies."""
        at = end - self.base
        if at <= self.head:
            return
        self.head = min(at, self.end)
        if last is not None:
            self.first = last + 1
        if self.head >= self.end:  # all confirmed: the state says so first, then the file goes
            self.first = self.seq
            if self._save():  # unsaved: the file stays, its records keep seq and boot for a reboot
                self.base += self.end
                self.head = self.end = 0
                _remove(self.q)
            return
        self._save()


class Telemetry:
    """Sampling and sending. `lock` serialises the queue's updates and is held only
    for them, never across the network: a slow receiver never delays sampling. One
    flush at a time sends a batch (a snapshot), waits for the receiver's confirmation,
    and commits what is still pending of it."""

    def __init__(self, room, queue, destination, device, log=None):
        import asyncio
        self.room = room
        self.queue = queue
        self.destination = destination
        self.device = device
        self.lock = asyncio.Lock()
        self.sent = 0
        self.flushing = False
        self.timeout_s = SYNC_TIMEOUT_S  # grows after timeouts
        self.retry_ms = 0      # backoff after a failed send
        self.retry_at = None   # now_ms() before which the loop does not send again
        self.failures = 0      # failed sends since the last confirmed one
        self.last_error = None
        self._log = log
        self._logged_at = None
        self._unlogged = 0
        self._refused = False  # the destination answered 1400 (logged once)

    def log(self, msg):
        """Log a send failure: at most once per LOG_EVERY_MS, saying how many were not."""
        from lkedge.clock import now_ms
        t = now_ms()
        if self._logged_at is not None and t - self._logged_at < LOG_EVERY_MS:
            self._unlogged += 1
            return
        if self._unlogged:
            msg += " (%d more failures not logged since the last line)" % self._unlogged
        self._logged_at, self._unlogged = t, 0
        self._write(msg)

    def _write(self, msg):
        if self._log is not None:
            self._log(msg)
            return
        import flashlog
        flashlog.error(msg)

    async def sample(self, values, t, ms=None):
        async with self.lock:
            try:
                return self.queue.add(values, t, ms)
            finally:
                self._notes()

    def _notes(self):
        """Log what the queue noted (damage found, a state save that failed or works
        again); no allocation when there is nothing to say, as after most samples."""
        notes = self.queue.notes
        while notes:
            self._write(notes.pop(0))

    def kicked(self):
        """The receiver joined or the link came back: send at once, whatever the backoff."""
        self.retry_at = None
        self.retry_ms = 0
        self._refused = False

    def due(self):
        from lkedge.clock import now_ms
        return self.retry_at is None or now_ms() - self.retry_at >= 0

    async def flush(self):
        """Send every pending sample the receiver confirms. Returns how many (0 at once
        when another flush runs, nothing is pending, the receiver is not in the room,
        or a failed send's backoff has not passed: kicked() ends it). A failure is
        logged (rate limited) and backs off."""
        if not self.destination or self.flushing or not self.due() or self.queue.pending() <= 0:
            return 0
        self.flushing = True
        n = 0
        try:
            while self._reachable():
                async with self.lock:
                    data, count, last, end = self.queue.batch()
                    self._notes()  # damage found since boot
                if not count:
                    break
                ok = await self._send(data, count, last)
                data = None
                if not ok:
                    break
                async with self.lock:
                    self.queue.commit(end, last)
                n += count
                self._succeeded()
        except MemoryError:
            raise
        except Exception as e:  # the link dropped mid-batch: the batch is sent again later
            self._failed("telemetry send failed: %r" % (e,))
        finally:
            self.flushing = False
            self.sent += n
        return n

    def _reachable(self):
        r = self.room
        return r.connection_state == "connected" and self.destination in r.remote_participants

    def _succeeded(self):
        if self.failures:
            self._write("telemetry: %s confirms again after %d failed sends" % (self.destination, self.failures))
        self.failures = 0
        self.retry_at = None
        self.retry_ms = 0
        self.timeout_s = SYNC_TIMEOUT_S
        self._refused = False
        self._logged_at = None

    def _failed(self, why):
        from lkedge.clock import now_ms
        self.failures += 1
        self.last_error = why
        self.retry_ms = min(self.retry_ms * 2, RETRY_MAX_MS) if self.retry_ms else RETRY_MIN_MS
        self.retry_at = now_ms() + self.retry_ms
        self.log(why + " (samples kept; %d failed sends in a row, next try in %d s)"
                 % (self.failures, self.retry_ms // 1000))

    async def _send(self, data, count, last):
        from lkedge.rpc import RpcError
        lp = self.room.local_participant
        await lp.send_bytes(data, name="telemetry.cbor", mime_type="application/cbor", topic=TOPIC,
                            destination_identities=[self.destination],
                            attributes={"device": self.device or lp.identity or "", "count": str(count),
                                        "last_seq": str(last)})
        timeout = min(self.timeout_s + len(data) // 1024, SYNC_TIMEOUT_MAX_S)
        try:
            await lp.perform_rpc(destination_identity=self.destination, method=SYNC_METHOD,
                                 payload=str(last), response_timeout=timeout)
        except RpcError as e:
            if e.code == _UNSUPPORTED_METHOD:
                # a participant with that identity that does not take telemetry (a CLI
                # that joined as it): nothing is confirmed, the samples stay queued
                why = ("telemetry: %s has no %s method: it does not take telemetry, samples kept until it "
                       "confirms" % (self.destination, SYNC_METHOD))
                if not self._refused:
                    self._refused = True
                    self._logged_at = None  # said once per such participant, at once
                self._failed(why)
                return False
            if e.code == _RESPONSE_TIMEOUT:
                why = "telemetry: %s did not confirm %d samples within %d s" % (self.destination, count, timeout)
                self.timeout_s = min(self.timeout_s * 2, SYNC_TIMEOUT_MAX_S)
            else:
                why = "telemetry: %s answered %s with error %d %s" % (self.destination, SYNC_METHOD, e.code, e.message)
            self._failed(why)
            return False
        return True
