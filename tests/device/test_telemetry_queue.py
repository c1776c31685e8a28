"""The firmware's telemetry queue (firmware/telemetry.py) on the real flash API.

Runs under CPython and MicroPython. Files are made in the working directory with a
per-test prefix and removed afterwards. The sender half (Telemetry) runs against an
in-memory room (lkedge.memroom, real LINK frames) with a collector participant.
"""
import asyncio
import os
import time

MP_HEAPSIZE = "512K"  # two Rooms (board and collector) in one interpreter

import firmware_path  # noqa: E402,F401  (firmware/ on sys.path)

import telemetry  # noqa: E402
from telemetry_helpers import collector_pair  # noqa: E402
from lkedge import cbor  # noqa: E402


def _clean(prefix):
    for name in (telemetry.QUEUE, telemetry.STATE, telemetry.BOOT, telemetry.QUEUE + ".tmp", telemetry.STATE + ".tmp",
                 telemetry.BOOT + ".tmp"):
        try:
            os.remove(prefix + name)
        except OSError:
            pass


class Flash:
    """A fresh queue file pair for one test (use with `with`)."""

    def __init__(self, name):
        self.prefix = "tq_test_%s_" % name

    def __enter__(self):
        _clean(self.prefix)
        return self

    def __exit__(self, *exc):
        _clean(self.prefix)

    def queue(self, max_bytes=8192):
        return telemetry.TelemetryQueue(max_bytes, prefix=self.prefix)


def _seqs(batch_bytes):
    return [s["seq"] for s in cbor.loads(batch_bytes)]


def test_sequence_numbers_continue_after_a_reboot():
    with Flash("reboot") as fl:
        q = fl.queue()
        assert [q.add({"x": i}, 100 + i) for i in range(3)] == [0, 1, 2]
        q2 = fl.queue()  # a new boot reads the state from flash
        assert q2.add({"x": 3}, 103) == 3
        data, count, last, end = q2.batch()
        assert count == 4 and last == 3 and _seqs(data) == [0, 1, 2, 3]


def test_batch_is_a_cbor_array_of_the_samples_in_order():
    with Flash("cbor") as fl:
        q = fl.queue()
        q.add({"temp": 21.5, "ok": True}, 1700000000)
        q.add({"temp": None}, 1700000001)
        data, count, last, end = q.batch()
        got = cbor.loads(data)
        for s in got:
            assert s.pop("boot") == 0 and isinstance(s.pop("ms"), int)
        assert got == [{"seq": 0, "t": 1700000000, "v": {"temp": 21.5, "ok": True}},
                       {"seq": 1, "t": 1700000001, "v": {"temp": None}}]


def test_records_carry_the_boot_counter_and_the_uptime():
    with Flash("boot") as fl:
        n = telemetry.next_boot(fl.prefix)
        assert telemetry.next_boot(fl.prefix) == n + 1  # persisted: +1 at every boot
        q = telemetry.TelemetryQueue(8192, prefix=fl.prefix, boot=n + 1)
        q.add({}, None, 1234)
        assert cbor.loads(q.batch()[0]) == [{"seq": 0, "t": None, "v": {}, "boot": n + 1, "ms": 1234}]
        t = telemetry.wall_time()  # the host's clock is set
        assert isinstance(t, int) and abs(t - time.time()) < 5


def test_commit_advances_and_an_unconfirmed_batch_comes_again_after_reboot():
    with Flash("commit") as fl:
        q = fl.queue()
        for i in range(5):
            q.add({"i": i}, i)
        data, count, last, end = q.batch(max_bytes=40)
        assert 0 < count < 5 and _seqs(data) == list(range(count))
        # not committed (the receiver never confirmed): a reboot sends it again
        q = fl.queue()
        again, count2, last2, end2 = q.batch(max_bytes=40)
        assert again == data and end2 == end
        q.commit(end)
        rest, n, last, end = q.batch()
        assert _seqs(rest) == list(range(count, 5)) and last == 4
        q.commit(end)
        assert q.pending() == 0 and q.batch()[1] == 0
        assert not firmware_path.exists(fl.prefix + telemetry.QUEUE)  # all sent: the file is gone
        assert fl.queue().add({}, 0) == 5  # and the numbering still continues


def test_a_partly_committed_queue_resumes_after_the_confirmed_part_after_a_reboot():
    # commit(end, last) of a batch that is not all of the queue: the state's "first"
    # names the next seq, so a reboot sends on from there, not the confirmed part again
    with Flash("partial") as fl:
        q = fl.queue()
        for i in range(8):
            q.add({"i": i}, i)
        data, count, last, end = q.batch(max_bytes=40)
        assert 0 < count < 8 and last == count - 1
        q.commit(end, last)
        q = fl.queue()                        # a reboot
        rest, n, last2, end2 = q.batch()
        assert _seqs(rest) == list(range(count, 8)) and n == 8 - count and last2 == 7


def test_a_torn_last_record_is_cut_off_at_boot():
    with Flash("torn") as fl:
        q = fl.queue()
        q.add({"a": 1}, 1)
        with open(fl.prefix + telemetry.QUEUE, "ab") as f:
            f.write(b"\x00\x30\xa3cse")  # a power cut in the middle of a record
        q = fl.queue()
        assert q.add({"a": 2}, 2) == 1
        data, count, last, end = q.batch()
        assert _seqs(data) == [0, 1], "the record after the torn one must be readable"


def test_seq_follows_the_queue_when_the_state_file_is_stale():
    with Flash("stale") as fl:
        q = fl.queue()
        q.add({}, 0)
        with open(fl.prefix + telemetry.STATE) as f:
            old_state = f.read()
        q.add({}, 1)  # appended; now pretend the power went before the state save
        with open(fl.prefix + telemetry.STATE, "w") as f:
            f.write(old_state)
        q = fl.queue()
        assert q.seq == 2, "a reused seq would be dropped as a repeat by receivers"
        assert q.add({}, 2) == 2


def test_a_full_queue_drops_the_oldest_and_counts_them():
    with Flash("full") as fl:
        q = fl.queue(max_bytes=200)
        for i in range(40):
            q.add({"i": i}, i)
        assert q.pending() <= 200 and q.dropped > 0
        got = []
        while True:
            data, count, last, end = q.batch(max_bytes=64)
            if not count:
                break
            got += _seqs(data)
            q.commit(end)
        assert got == list(range(40 - len(got), 40)), got
        assert len(got) + q.dropped == 40


def test_the_file_stays_bounded_while_offline_for_long():
    with Flash("bounded") as fl:
        q = fl.queue(max_bytes=256)
        for i in range(300):
            q.add({"i": i}, i)
        assert os.stat(fl.prefix + telemetry.QUEUE)[6] <= 2 * 256 + 64
        data, count, last, end = q.batch()
        assert last == 299


def test_a_bad_state_file_is_survived():
    with Flash("badstate") as fl:
        q = fl.queue()
        q.add({}, 0)
        with open(fl.prefix + telemetry.STATE, "w") as f:
            f.write("{not json")
        q = fl.queue()
        assert q.seq == 1 and q.batch()[1] == 1


# --------------------------------------------------------------- the sender
def _sender(board, q, to="collector"):
    logged = []
    tel = telemetry.Telemetry(board, q, to, "board", log=logged.append)
    tel.logged = logged
    return tel


async def test_flush_sends_everything_and_commits_on_the_receivers_answer():
    from room_helpers import close, settle
    with Flash("flush") as fl:
        mem, board, col, got = await collector_pair()
        try:
            q = fl.queue()
            tel = _sender(board, q)
            for i in range(30):
                await tel.sample({"i": i}, i)
            assert await tel.flush() == 30
            await settle(lambda: len(got) == 30)
            assert got == list(range(30)) and q.pending() == 0 and tel.sent == 30
            assert not tel.logged
        finally:
            await close(board, col)


async def test_telemetry_goes_to_its_receiver_alone_not_to_the_room():
    # the library's default destination is everyone (mutation review: dropping
    # destination_identities went unnoticed)
    from room_helpers import close, join, settle
    with Flash("dest") as fl:
        mem, board, col, got = await collector_pair()
        eve = await join(mem, "eve")
        overheard = []

        async def on_stream(reader, sender):
            overheard.append(await reader.read_all())
        eve.register_byte_stream_handler("telemetry", on_stream)
        try:
            await settle(lambda: "eve" in board.remote_participants)
            tel = _sender(board, fl.queue())
            for i in range(3):
                await tel.sample({"i": i}, i)
            assert await tel.flush() == 3
            await settle(lambda: len(got) == 3)
            for _ in range(20):   # what eve would get has had time to come
                await asyncio.sleep(0.01)
            assert got == [0, 1, 2] and overheard == [], overheard
        finally:
            await close(board, col, eve)


async def test_unsupported_method_is_no_confirmation_and_is_logged_once():
    # a participant with the receiver's identity that does not take telemetry (the CLI
    # joined as it): its 1400 answer must not count as delivered
    from room_helpers import close
    with Flash("nosync") as fl:
        mem, board, col, got = await collector_pair(sync=False)
        try:
            q = fl.queue()
            tel = _sender(board, q)
            for i in range(5):
                await tel.sample({"i": i}, i)
            before = q.pending()
            for _ in range(3):
                assert await tel.flush() == 0
            assert q.pending() == before and tel.sent == 0 and q.dropped == 0
            assert len(tel.logged) == 1 and "does not take telemetry" in tel.logged[0], tel.logged
            assert not tel.due()  # backs off ...
            tel.kicked()          # ... until the receiver joins again
            assert tel.due()
            # a real receiver now: everything is still there, in order
            col.local_participant.register_rpc_method(telemetry.SYNC_METHOD, lambda data: data.payload)
            del got[:]
            assert await tel.flush() == 5 and q.pending() == 0
            assert "confirms again" in tel.logged[-1]
        finally:
            await close(board, col)


async def test_nothing_is_committed_while_the_receiver_is_away():
    from room_helpers import close
    with Flash("away") as fl:
        mem, board, col, got = await collector_pair()
        try:
            q = fl.queue()
            tel = _sender(board, q, "nobody")
            await tel.sample({}, 0)
            assert await tel.flush() == 0 and q.pending() > 0
        finally:
            await close(board, col)


async def test_a_receiver_error_other_than_unsupported_method_is_no_confirmation():
    from room_helpers import close
    from lkedge.rpc import RpcError
    with Flash("refuse") as fl:
        mem, board, col, got = await collector_pair(sync=False)

        def refuse(data):
            raise RpcError(4999, "not now")
        col.local_participant.register_rpc_method(telemetry.SYNC_METHOD, refuse)
        try:
            q = fl.queue()
            tel = _sender(board, q)
            await tel.sample({}, 0)
            assert await tel.flush() == 0 and q.pending() > 0
            assert "4999" in tel.logged[0]
        finally:
            await close(board, col)


def test_a_state_file_with_a_count_that_is_no_count_is_damaged_and_the_queue_is_followed():
    bad = ('{"seq": "5", "first": 0, "dropped": 0, "boot": 1}', '{"seq": -1, "first": 0, "dropped": 0, "boot": 1}',
           '{"seq": true, "first": 0, "dropped": 0, "boot": 1}', '{"seq": 5, "first": 0, "dropped": -2, "boot": 1}',
           '{"seq": 5, "first": 0, "dropped": 1.5, "boot": 1}', '{"seq": 5, "first": "0", "dropped": 0, "boot": 1}',
           '{"seq": 5, "first": -1, "dropped": 0, "boot": 1}', '{"seq": 5, "first": false, "dropped": 0, "boot": 1}',
           '{"first": 0, "dropped": 0, "boot": 1}', '[5, 0, 0]', '5')
    for text in bad:
        with Flash("countstate") as fl:
            q = fl.queue()
            for i in range(3):
                q.add({"i": i}, i)
            with open(fl.prefix + telemetry.STATE, "w") as f:
                f.write(text)
            q = fl.queue()
            said = [n for n in q.notes if "damaged: seq follows the queue file" in n]
            assert said and q.seq == 3 and q.batch()[1] == 3, (text, q.seq, q.notes)
            assert isinstance(q.dropped, int) and not isinstance(q.dropped, bool) and q.dropped >= 0, text
    with Flash("countstate") as fl:     # the counts at their least are good ones
        q = fl.queue()
        for i in range(3):
            q.add({"i": i}, i)
        with open(fl.prefix + telemetry.STATE, "w") as f:
            f.write('{"seq": 3, "first": 0, "dropped": 0, "boot": 1}')
        q = fl.queue()
        assert not [n for n in q.notes if "damaged" in n] and q.seq == 3 and q.batch()[1] == 3, q.notes
