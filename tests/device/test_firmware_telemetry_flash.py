"""The telemetry bookkeeping on a full flash (firmware/telemetry.py,
telemetry_recover.py): the boot counter and the state file (seq, dropped, boot) that
the flash refuses. No boot number is used twice, the state stays in RAM and is saved
again later, the failure is said once, a queue file is not removed while the state
that would replace it is unsaved, and no .tmp file is left.

Faults are injected as in test_telemetry_faults.py: telemetry's `open` is replaced by
one whose writes fail with OSError(28) (ENOSPC) as a full flash's do. Runs under CPython
and MicroPython; files are made in the working directory with a per-run prefix.
"""
import binascii
import os

MP_HEAPSIZE = "256K"

import firmware_path  # noqa: E402,F401  (firmware/ on sys.path)

import telemetry  # noqa: E402
from lkedge import cbor  # noqa: E402

_real_open = open
RUN = binascii.hexlify(os.urandom(3)).decode()


class Flash:
    """A queue, state and boot counter of their own (use with `with`); `full(which)`
    makes writes to the files whose names end in one of `which` fail with ENOSPC (None:
    every write), `full(())` ends it."""

    def __init__(self, name):
        self.prefix = "tfl_test_%s_%s_" % (RUN, name)

    def _clean(self):
        for name in (telemetry.QUEUE, telemetry.STATE, telemetry.BOOT):
            firmware_path.rm(self.prefix + name, self.prefix + name + ".tmp")

    def __enter__(self):
        self._clean()
        return self

    def __exit__(self, *exc):
        telemetry.open = _real_open
        self._clean()

    def full(self, which=None):
        def full_open(path, mode="r"):
            if ("w" in mode or "a" in mode) and (which is None or path.endswith(tuple(which))):
                if "w" in mode:
                    _real_open(path, mode).close()  # as on a board: the file is made, the write fails
                raise OSError(28)
            return _real_open(path, mode)
        telemetry.open = _real_open if which == () else full_open

    def queue(self, boot, max_bytes=8192):
        return telemetry.TelemetryQueue(max_bytes, prefix=self.prefix, boot=boot)

    def path(self, name):
        return self.prefix + name


def _boots(q):
    return [r["boot"] for r in cbor.loads(q.batch()[0])]


def test_a_boot_counter_the_flash_refuses_is_not_used_again_at_the_next_boot():
    with Flash("boot") as fl:
        assert telemetry.next_boot(fl.prefix) == 1
        fl.full()  # the flash is full at boot 2: the counter is not written
        notes = []
        assert telemetry.next_boot(fl.prefix, notes) == 2
        assert len(notes) == 1 and "boot counter" in notes[0] and "not written" in notes[0], notes
        assert not firmware_path.exists(fl.path(telemetry.BOOT + ".tmp")), "an empty .tmp was left"
        with open(fl.path(telemetry.BOOT)) as f:
            assert f.read() == "1"
        fl.full(())  # a file was deleted: boot 2 queues samples, its state saved
        q = fl.queue(boot=2)
        q.add({"x": 1}, None, 0)
        # the old firmware read the counter alone: boot 2 again, and a receiver took the
        # new boot's samples for the old boot's, dating them by the wrong uptime
        assert telemetry.next_boot(fl.prefix) == 3


def test_a_boot_whose_state_and_counter_were_refused_is_known_by_its_queued_sample():
    with Flash("bootq") as fl:
        telemetry.next_boot(fl.prefix)
        fl.full()
        boot = telemetry.next_boot(fl.prefix, [])
        q = fl.queue(boot=boot)
        fl.full((telemetry.STATE + ".tmp",))  # the sample is appended, its state save refused
        q.add({"x": 1}, None, 0)
        assert q.unsaved and _boots(q) == [boot]
        fl.full(())
        assert telemetry.next_boot(fl.prefix) == boot + 1


def test_a_leftover_tmp_is_removed_at_the_next_boot():
    with Flash("tmp") as fl:
        for name in (telemetry.BOOT, telemetry.STATE):
            with open(fl.path(name + ".tmp"), "w"):
                pass  # empty, as a write the flash refused left it
        fl.full()  # still full at this boot
        telemetry.next_boot(fl.prefix, [])
        fl.queue(boot=1)
        for name in (telemetry.BOOT, telemetry.STATE):
            assert not firmware_path.exists(fl.path(name + ".tmp")), name


def test_a_state_the_flash_refuses_stays_in_ram_is_said_once_and_saved_again_later():
    with Flash("state") as fl:
        q = fl.queue(boot=1, max_bytes=120)
        logged = []
        tel = telemetry.Telemetry(None, q, "", "board", log=logged.append)
        fl.full((telemetry.STATE + ".tmp",))
        import asyncio

        async def sample(n):
            for i in range(n):
                await tel.sample({"i": i}, None, 0)
        asyncio.run(sample(20))  # the queue is full: the oldest are dropped, counted in RAM
        dropped = q.dropped
        assert dropped > 0 and q.unsaved
        assert len(logged) == 1 and "state not saved" in logged[0] and "kept in RAM" in logged[0], logged
        assert not firmware_path.exists(fl.path(telemetry.STATE + ".tmp"))
        fl.full(())
        asyncio.run(sample(1))  # saved with the next sample
        assert not q.unsaved and len(logged) == 2 and "saved to" in logged[1] and "again" in logged[1], logged
        q2 = fl.queue(boot=2, max_bytes=120)  # a reboot: what RAM held survived
        assert q2.dropped == q.dropped and q2.seq == q.seq == 21, (q2.dropped, q.dropped, q2.seq)


def test_confirmed_samples_stay_on_flash_until_the_state_says_so():
    # all confirmed while the state cannot be saved: the old firmware removed the queue
    # file anyway, and after a reboot seq went back to the stale state's and `dropped`
    # counted the confirmed samples as lost
    with Flash("commit") as fl:
        q = fl.queue(boot=1)
        q.add({"i": 0}, None, 0)
        fl.full((telemetry.STATE + ".tmp",))
        for i in range(1, 5):
            q.add({"i": i}, None, 0)
        data, count, last, end = q.batch()
        assert count == 5
        q.commit(end, last)
        assert q.pending() == 0 and firmware_path.exists(fl.path(telemetry.QUEUE))
        q2 = fl.queue(boot=2)  # a reboot before any save succeeded
        assert q2.seq == 5 and q2.dropped == 0, (q2.seq, q2.dropped)
        fl.full(())
        assert q2.add({}, None, 0) == 5
