"""The telemetry queue (firmware/telemetry.py) under faults: a full flash mid-append,
damaged queue files (also as an older firmware left them), power cuts inside a
compaction, a lost state file; and the sender against a slow receiver.

Faults are injected by replacing the module's `open` and `os` with wrappers: a write
past a byte budget writes what fits and raises OSError(28) (ENOSPC), as a full flash
does; a power cut is an exception raised at the chosen point, after which the test
"reboots" by making a new TelemetryQueue on the same files. Runs under CPython and
MicroPython; files are made in the working directory with a per-test prefix.
"""
import os
import time

MP_HEAPSIZE = "512K"  # two Rooms (board and collector) in one interpreter

import firmware_path  # noqa: E402,F401  (firmware/ on sys.path)

import telemetry  # noqa: E402
from telemetry_helpers import collector_pair  # noqa: E402
from lkedge import cbor  # noqa: E402

_real_open = open
_real_os = os


class Flash:
    """A fresh queue file pair for one test (use with `with`); restores the module's
    open and os afterwards."""

    def __init__(self, name):
        self.prefix = "tf_test_%s_" % name

    def _clean(self):
        for name in (telemetry.QUEUE, telemetry.STATE, telemetry.BOOT):
            for suffix in ("", ".tmp"):
                try:
                    os.remove(self.prefix + name + suffix)
                except OSError:
                    pass

    def __enter__(self):
        self._clean()
        return self

    def __exit__(self, *exc):
        telemetry.open = _real_open
        telemetry.os = _real_os
        self._clean()

    def queue(self, max_bytes=8192, boot=1):
        return telemetry.TelemetryQueue(max_bytes, prefix=self.prefix, boot=boot)

    def path(self, name=telemetry.QUEUE):
        return self.prefix + name

    def read(self, name=telemetry.QUEUE):
        with open(self.path(name), "rb") as f:
            return f.read()

    def write(self, data, name=telemetry.QUEUE):
        with open(self.path(name), "wb") as f:
            f.write(data)


class _FullFile:
    def __init__(self, f, flash):
        self.f = f
        self.flash = flash

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def close(self):
        self.f.close()

    def write(self, data):
        room = self.flash.budget
        if len(data) <= room:
            self.flash.budget -= len(data)
            return self.f.write(data)
        if room > 0:
            self.f.write(bytes(data[:room]))  # what fits is written: a torn record
        self.flash.budget = 0
        raise OSError(28)

    def __getattr__(self, name):
        return getattr(self.f, name)


class FullFlash:
    """Writes through telemetry's open() get `budget` more bytes, then ENOSPC."""

    def __init__(self, budget):
        self.budget = budget

    def __enter__(self):
        def full_open(path, mode="r"):
            f = _real_open(path, mode)
            return _FullFile(f, self) if ("w" in mode or "a" in mode) else f
        telemetry.open = full_open
        return self

    def __exit__(self, *exc):
        telemetry.open = _real_open


class PowerCut(Exception):
    pass


class _CutOs:
    """os for telemetry.py that raises PowerCut right after (or before) renaming
    `name` into place, once."""

    def __init__(self, name, after=True):
        self.name = name
        self.after = after
        self.armed = True

    def rename(self, a, b):
        cut = self.armed and a == self.name
        if cut and not self.after:
            self.armed = False
            raise PowerCut("power cut before %s replaced %s" % (a, b))
        _real_os.rename(a, b)
        if cut:
            self.armed = False
            raise PowerCut("power cut after %s replaced %s" % (a, b))

    def __getattr__(self, name):
        return getattr(_real_os, name)


def _drain(q, confirm=True):
    """Every pending seq, in order (committing each batch when `confirm`)."""
    seqs = []
    while True:
        data, count, last, end = q.batch(max_bytes=200 if confirm else 100000)
        if not count:
            return seqs
        got = cbor.loads(data)
        assert len(got) == count and got[-1]["seq"] == last
        seqs += [s["seq"] for s in got]
        if not confirm:
            return seqs
        q.commit(end, last)


def _record(seq, v=0):
    rec = cbor.dumps({"seq": seq, "t": None, "v": {"x": v}, "boot": 1, "ms": 0})
    return bytes((len(rec) >> 8, len(rec) & 255)) + rec


# ------------------------------------------------------------------ full flash
def test_a_full_flash_mid_append_leaves_no_torn_record_and_counts_every_lost_sample():
    with Flash("full") as fl:
        q = fl.queue()
        for i in range(10):
            q.add({"i": i}, i)
        failed = 0
        with FullFlash(budget=7):  # the next append writes its header and 5 bytes, then ENOSPC
            for i in range(10, 40):
                try:
                    q.add({"i": i}, i)
                except OSError:
                    failed += 1
        assert failed == 30 and q.dropped == 30, (failed, q.dropped)
        for i in range(40, 50):  # the flash has room again
            q.add({"i": i}, i)
        assert os.stat(fl.path())[6] == q.end
        again = fl.queue()  # a reboot reads the same
        assert _drain(again, confirm=False) == list(range(20))
        seqs = _drain(q)
        assert seqs == list(range(20)), seqs  # a failed sample takes no seq: no gap for receivers
        assert len(seqs) + q.dropped == 50
        assert fl.queue().dropped == 30, "the count did not survive a reboot"


def test_a_failed_append_is_cut_off_before_the_next_even_when_the_cut_failed_too():
    with Flash("fullcut") as fl:
        q = fl.queue()
        q.add({"a": 1}, 1)
        with FullFlash(budget=4):  # the append tears, and cutting it off (a rewrite) fails too
            try:
                q.add({"a": 2}, 2)
            except OSError:
                pass
        assert os.stat(fl.path())[6] > q.end, "the torn bytes should still be there"
        assert q.add({"a": 3}, 3) == 1  # cut off first, then appended
        assert _drain(fl.queue(), confirm=False) == [0, 1] and q.dropped == 1


def test_a_full_flash_for_the_state_file_does_not_lose_the_sample():
    with Flash("fullstate") as fl:
        q = fl.queue()
        q.add({}, 0)
        rec = len(_record(1, 1))

        with FullFlash(budget=rec):  # the record fits, its state save does not
            assert q.add({"x": 1}, None, 0) == 1
        assert q.dropped == 0
        q2 = fl.queue()  # seq follows the queue file at the next boot
        assert q2.seq == 2 and _drain(q2) == [0, 1]


# ------------------------------------------------------------ damaged files
def test_garbage_in_the_middle_is_skipped_to_the_next_good_record_and_counted():
    with Flash("garbage") as fl:
        q = fl.queue()
        for i in range(10):
            q.add({"x": i}, None, 0)  # as _record(i, i): all of one size
        raw = bytearray(fl.read())
        at = len(_record(0)) * 3  # record 3: a length of 65535 (the old reader allocated it)
        raw[at], raw[at + 1], raw[at + 2] = 0xFF, 0xFF, 0x13
        fl.write(bytes(raw))
        q = fl.queue()
        assert q.dropped == 1 and any("damaged" in n for n in q.notes), q.notes
        assert _drain(q) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
        assert q.add({}, 0) == 10
        assert fl.queue().dropped == 1, "counted twice"


def test_a_torn_record_an_older_firmware_appended_after_is_recovered_without_loss():
    # the old firmware: a failed append tore record 3, later appends (3, 4: the seq was
    # not used up) went after it; its reader cut everything off from the torn record
    with Flash("oldtorn") as fl:
        fl.write(_record(0) + _record(1) + _record(2) + b"\x00\x30\xa5cse" + _record(3) + _record(4))
        fl.write(b'{"seq": 5, "head": 0, "dropped": 0}', telemetry.STATE)
        q = fl.queue()
        assert q.seq == 5 and q.dropped == 0
        assert _drain(q) == [0, 1, 2, 3, 4]


def test_an_all_garbage_queue_file_is_dropped_and_counted():
    with Flash("allgarbage") as fl:
        q = fl.queue()
        for i in range(4):
            q.add({}, i)
        fl.write(b"\xff" * 300)
        q = fl.queue()
        assert q.dropped == 4 and q.pending() == 0 and q.seq == 4
        assert q.add({}, 0) == 4 and _drain(q) == [4]


def test_a_lost_state_file_is_said_and_records_carry_the_boot_counter():
    with Flash("seqreset") as fl:
        q = fl.queue(boot=telemetry.next_boot(fl.prefix))
        for i in range(5):
            q.add({"x": i}, 0)
        _drain(q)
        fl.write(b'{"seq": 5, "he', telemetry.STATE)  # damaged
        boot = telemetry.next_boot(fl.prefix)
        q = fl.queue(boot=boot)
        assert q.seq == 0, "nothing left to rebuild seq from"
        assert any("seq starts again at 0" in n and "boot %d" % boot in n for n in q.notes), q.notes
        q.add({}, 0)
        assert cbor.loads(q.batch()[0])[0]["boot"] == boot == 2
        os.remove(fl.path(telemetry.STATE))  # lost
        assert any("missing" in n for n in fl.queue(boot=3).notes)
        for name in (telemetry.STATE, telemetry.QUEUE):
            os.remove(fl.path(name))
        assert fl.queue(boot=1).notes == []  # the first boot: nothing to say


# --------------------------------------------------------------- power cuts
def _fill_until_cut(q, cut):
    """Add samples (link down: nothing confirmed) until the power cut; returns the
    queue's (seq, dropped) just before the add that was cut."""
    telemetry.os = cut
    i = 0
    try:
        while True:
            before = (q.seq, q.dropped)
            q.add({"temp": 20.5, "n": i}, 1000 + i)
            i += 1
            assert i < 1000, "no compaction happened"
    except PowerCut:
        pass
    telemetry.os = _real_os
    return before


def test_a_power_cut_after_the_compaction_rename_loses_nothing():
    # the reviewer's sim/crash_compact.py: cut between the rename and the state save
    with Flash("cutafter") as fl:
        q = fl.queue(max_bytes=1024)
        seq, dropped = _fill_until_cut(q, _CutOs(fl.path() + ".tmp"))
        q2 = fl.queue(max_bytes=1024)  # reboot
        seqs = _drain(q2)
        assert seqs and seqs[-1] == seq - 1 and seqs == list(range(seqs[0], seq)), seqs
        assert len(seqs) + q2.dropped == seq, (len(seqs), q2.dropped, seq, dropped)
        assert q2.dropped >= dropped


def test_a_power_cut_before_the_compaction_rename_loses_nothing():
    with Flash("cutbefore") as fl:
        q = fl.queue(max_bytes=1024)
        seq, dropped = _fill_until_cut(q, _CutOs(fl.path() + ".tmp", after=False))
        q2 = fl.queue(max_bytes=1024)
        assert not firmware_path.exists(fl.path() + ".tmp")
        seqs = _drain(q2)
        assert seqs == list(range(seqs[0], seq)) and len(seqs) + q2.dropped == seq


def test_a_power_cut_between_state_saves_never_loses_a_confirmed_or_pending_sample():
    # cut at every state save in turn while adding, confirming and compacting
    for n in range(1, 40):
        with Flash("cutstate") as fl:
            q = fl.queue(max_bytes=300)
            cut = _CutOs(fl.path(telemetry.STATE) + ".tmp")
            saves = [0]
            real_rename = cut.rename

            def rename(a, b):
                if a == cut.name:
                    saves[0] += 1
                    cut.armed = saves[0] == n
                return real_rename(a, b)
            cut.rename = rename
            telemetry.os = cut
            confirmed = -1
            try:
                for i in range(30):
                    q.add({"i": i}, i)
                    if i % 7 == 6:
                        data, count, last, end = q.batch()
                        confirmed = last  # delivered, whether the commit gets saved or not
                        q.commit(end, last)
            except PowerCut:
                pass
            telemetry.os = _real_os
            q2 = fl.queue(max_bytes=300)
            seqs = _drain(q2)
            # after the cut: what was pending is pending (repeats of confirmed ones are
            # allowed: at least once), nothing unconfirmed is lost without a count
            assert not seqs or seqs == list(range(seqs[0], q2.seq)), (n, seqs)
            assert (seqs[0] if seqs else q2.seq) <= confirmed + 1 + q2.dropped, (n, seqs, confirmed, q2.dropped)


def test_a_commit_after_drops_and_a_compaction_commits_only_what_was_sent():
    with Flash("snapshot") as fl:
        q = fl.queue(max_bytes=256)
        for i in range(5):
            q.add({"i": i}, i)
        data, count, last, end = q.batch()  # sent; the confirmation takes a while ...
        for i in range(5, 45):  # ... while sampling goes on: drops and compactions
            q.add({"i": i}, i)
        q.commit(end, last)
        seqs = _drain(q)
        assert seqs == list(range(seqs[0], 45)) and seqs[0] > last
        assert len(seqs) + q.dropped + count >= 45


# --------------------------------------------------------------- the sender
async def _pair(delay_s):
    """A collector whose telemetry.sync answers after delay_s[0] seconds."""
    import asyncio

    async def sync(data):
        await asyncio.sleep(delay_s[0])
        return data.payload
    _, board, col, got = await collector_pair(sync)
    return board, col, got


async def test_a_slow_receiver_neither_delays_sampling_nor_gets_the_same_batch_for_ever():
    import asyncio
    from room_helpers import close, settle
    saved = telemetry.SYNC_TIMEOUT_S
    telemetry.SYNC_TIMEOUT_S = 1
    delay = [1.5]  # slower than the first timeout
    with Flash("slow") as fl:
        board, col, got = await _pair(delay)
        try:
            q = fl.queue()
            logged = []
            tel = telemetry.Telemetry(board, q, "collector", "board", log=logged.append)
            for i in range(5):
                await tel.sample({"i": i}, i)
            flush = asyncio.create_task(tel.flush())
            await asyncio.sleep(0.3)  # the flush waits for the confirmation now
            assert tel.flushing
            t0 = time.time()
            for i in range(5, 10):
                await tel.sample({"i": i}, i)
            assert time.time() - t0 < 0.5, "sampling waited for the network"
            assert await flush == 0 and q.pending() > 0  # timed out: kept, logged, backed off
            assert len(logged) == 1 and "did not confirm" in logged[0], logged
            assert tel.timeout_s == 2 and not tel.due()
            tel.kicked()
            assert await tel.flush() == 10 and q.pending() == 0  # the longer timeout fits
            assert tel.timeout_s == 1 and "confirms again" in logged[-1]
            await settle(lambda: got[-1] == 9)
        finally:
            telemetry.SYNC_TIMEOUT_S = saved
            await close(board, col)


def test_send_failures_are_logged_at_most_once_per_period():
    logged = []
    tel = telemetry.Telemetry(None, None, "collector", "board", log=logged.append)
    tel.log("telemetry send failed: a")
    tel.log("telemetry send failed: b")
    assert logged == ["telemetry send failed: a"]
    saved = telemetry.LOG_EVERY_MS
    telemetry.LOG_EVERY_MS = -1
    try:
        tel.log("telemetry send failed: c")
    finally:
        telemetry.LOG_EVERY_MS = saved
    assert logged[-1] == "telemetry send failed: c (1 more failures not logged since the last line)"


class _ClockAt:
    """lkedge.clock.now_ms read from self.ms while in use (with)."""

    def __init__(self, ms):
        self.ms = ms

    def __enter__(self):
        import lkedge.clock
        self.saved = lkedge.clock.now_ms
        lkedge.clock.now_ms = lambda: self.ms
        return self

    def __exit__(self, *exc):
        import lkedge.clock
        lkedge.clock.now_ms = self.saved


def test_a_failed_send_backs_off_doubling_to_its_cap_and_a_kick_or_success_ends_it():
    tel = telemetry.Telemetry(None, None, "collector", "board", log=lambda msg: None)
    with _ClockAt(10000) as clock:
        assert tel.due()
        waits = []
        for _ in range(9):
            tel._failed("x")
            waits.append(tel.retry_ms)
            assert tel.retry_at == clock.ms + tel.retry_ms
            clock.ms = tel.retry_at - 1
            assert not tel.due()
            clock.ms = tel.retry_at           # due again exactly at retry_at
            assert tel.due()
        assert waits == [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000], waits
        assert tel.failures == 9
        tel.kicked()                          # the receiver joined: at once, from the start
        assert tel.due() and tel.retry_ms == 0
        tel._failed("x")
        assert tel.retry_ms == 1000
        tel._succeeded()
        assert tel.due() and tel.retry_ms == 0 and tel.failures == 0
        tel._failed("x")
        assert tel.retry_ms == 1000


class _NeverConfirms:
    """A named fake of the room's local participant: the stream goes out, and every
    telemetry.sync times out (1502), recording the response_timeout it was given."""

    def __init__(self):
        self.identity = "board"
        self.timeouts = []

    async def send_bytes(self, data, **kw):
        pass

    async def perform_rpc(self, destination_identity, method, payload, response_timeout):
        from lkedge.rpc import RpcError
        self.timeouts.append(response_timeout)
        raise RpcError(1502, "Response timeout")


async def test_the_confirmation_timeout_grows_with_the_batch_doubles_after_each_timeout_and_is_capped():
    class Room:
        local_participant = _NeverConfirms()
    tel = telemetry.Telemetry(Room(), None, "collector", "board", log=lambda msg: None)
    batch = b"x" * 3000                       # 2 whole KiB: 2 s more than the base
    for _ in range(6):
        assert await tel._send(batch, 10, 9) is False
    assert Room.local_participant.timeouts == [7, 12, 22, 42, 60, 60], Room.local_participant.timeouts
    assert tel.timeout_s == telemetry.SYNC_TIMEOUT_MAX_S
    tel._succeeded()                          # a confirmation: back to the base
    assert tel.timeout_s == telemetry.SYNC_TIMEOUT_S
    assert await tel._send(b"x" * 100, 1, 0) is False
    assert Room.local_participant.timeouts[-1] == telemetry.SYNC_TIMEOUT_S
