"""The RPC methods a field user needs. Each takes RpcInvocationData, returns a str
(or, for the streamed ones, an async iterable of str pieces).

    device.info    {firmware, lkedge, micropython, board, name, identity, unique_id,
                    uptime_ms, mem_free, mem_alloc, reset_cause, calls, telemetry,
                    config_reverted}: config_reverted is null, or why the board went back
                    to its last good config (lastgood.py) and runs it now. mem_free and
                    mem_alloc are gc's, after a collection: on a board they add up to its
                    heap; on the emulated board mem_alloc also holds what a board keeps in
                    flash (the frozen modules, the ROM's share, and the ballast block that
                    leaves the profile's heap free: ~440 KB on the esp32 profile's
                    110 KiB), so only mem_free compares with a board
    sensors.read   the profile's sensors, as JSON
    log.tail       streamed tail of the on-flash log, log.old then log.txt (request JSON
                   {"bytes": N}, optional)
    file.get / file.put / file.stat    see files.py
    file.delete    see filedelete.py
    file.list      a folder's entries (names, sizes, folders), a bounded page at a time:
                   see filelist.py
    config.update  JSON patch of config.json (keys and checks: config.py; a token's:
                   tokencheck.py, a JWT for the board's identity, not expired); effective after
                   reboot. Answers {"updated": [keys], "effective": "after reboot",
                   "on_trial": bool, "revert_after_s": N}. on_trial: the new config's
                   Wi-Fi, relay or token differ from the last good config's (the last one
                   that joined the room), so if it cannot reach the room within N seconds
                   of trying after the reboot, in ways the change explains (an outage does
                   not count; lastgood.py), the board goes back to the last good config
                   by itself (the rejected one is kept in config.rejected.json). false:
                   nothing to go back to (no config has joined yet: a wrong Wi-Fi, relay
                   or token then needs a person with USB), or nothing that decides
                   joining changed.
    reboot         answers, leaves the room, then resets the board
"""
import gc
import json
import time

import files
import flashlog

FIRMWARE_VERSION = "0.2.0"
E_BAD_CONFIG = 4005
LOG_TAIL_DEFAULT = 4096
REBOOT_DELAY_MS = 200


def _sleep_ms(ms):
    import asyncio
    return asyncio.sleep_ms(ms) if hasattr(asyncio, "sleep_ms") else asyncio.sleep(ms / 1000)


def reap_tasks(room):
    """Drop finished tasks from Room._tasks. lkedge.room's Room._spawn already drops
    them at every spawn (each finished RPC task holds ~3 KB on MicroPython), so this
    only frees, before a method runs, those that finished since the last spawn; it is
    kept for libraries older than that (which pruned only past 64 tasks)."""
    ts = getattr(room, "_tasks", None)
    if ts:
        room._tasks = [t for t in ts if not t.done()]


class App:
    """State the methods need: the room, config, profile, machine, start time."""

    def __init__(self, room, config, profile, machine, started_ms, telemetry=None):
        self.room = room
        self.config = config
        self.profile = profile
        self.machine = machine
        self.started_ms = started_ms
        self.telemetry = telemetry
        self.calls = 0
        self.config_reverted = None  # set by the app (lastgood.Trial.reverted)
        # file.put keeps this much flash for the firmware's own files (files.py)
        files.reserve = files.RESERVE_MIN + 3 * profile.get("telemetry_queue_bytes", 8192)

    def register(self):
        reg = self.room.local_participant.register_rpc_method
        reg("device.info", self._counted(self.device_info))
        reg("sensors.read", self._counted(self.sensors_read))
        reg("log.tail", self._counted(self.log_tail), streaming=True)
        reg("file.get", self._counted(files.file_get), streaming=True)
        reg("file.put", self._counted(files.file_put), streaming=True)
        reg("file.stat", self._counted(files.file_stat))
        reg("file.delete", self._counted(_file_delete))
        reg("file.list", self._counted(_file_list))
        reg("config.update", self._counted(self.config_update))
        reg("reboot", self._counted(self.reboot))

    def _counted(self, fn):
        def call(data):
            self.calls += 1
            reap_tasks(self.room)
            return fn(data)
        return call

    # ------------------------------------------------------------- methods
    def device_info(self, data):
        import sys
        from lkedge import __version__
        gc.collect()
        return json.dumps({
            "firmware": FIRMWARE_VERSION, "lkedge": __version__,
            "micropython": ".".join(str(x) for x in sys.implementation.version[:3]),
            "board": self.profile.get("name", "?"), "name": self.config.get("name", ""),
            "identity": self.room.local_participant.identity, "unique_id": _unique_id(self.machine),
            "uptime_ms": time.ticks_diff(time.ticks_ms(), self.started_ms),
            "mem_free": gc.mem_free(), "mem_alloc": gc.mem_alloc(),
            "reset_cause": reset_cause_name(self.machine), "calls": self.calls,
            "telemetry": self._telemetry_info(), "config_reverted": self.config_reverted,
        })

    def _telemetry_info(self):
        t = self.telemetry
        if t is None:
            return None
        q = t.queue
        return {"to": t.destination, "next_seq": q.seq, "pending_bytes": q.pending(),
                "dropped": q.dropped, "sent": t.sent, "boot": q.boot, "failures": t.failures,
                "last_error": t.last_error, "unsaved": q.unsaved}

    def sensors_read(self, data):
        import sensors
        return json.dumps(sensors.read_all(self.profile))

    async def log_tail(self, data):
        text = await files.read_request(data.reader, 256, "log.tail")
        n = files.request(text, None).get("bytes", LOG_TAIL_DEFAULT)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise files.rpc_error(files.E_NOT_JSON, "log.tail: \"bytes\" must be a non-negative int")
        return flashlog.TailSource(n)

    def config_update(self, data):
        import config
        cfg = config.load()
        # the board's identity: the room's once joined, else the one its token names
        lp = getattr(self.room, "local_participant", None)
        patch = _config_patch(data.payload, getattr(lp, "identity", None), token=cfg["token"])
        cfg.update(patch)
        config.save(cfg)
        import lastgood
        on_trial = lastgood.on_trial(cfg)
        flashlog.info("config updated by %s: %s%s" % (data.caller_identity, ",".join(sorted(patch)),
                                                     " (on trial after the reboot)" if on_trial else ""))
        return json.dumps({"updated": sorted(patch), "effective": "after reboot", "on_trial": on_trial,
                           "revert_after_s": cfg["revert_after_s"]})

    def reboot(self, data):
        import asyncio
        flashlog.info("reboot requested by %s" % data.caller_identity)
        asyncio.create_task(self._reboot_later())
        return json.dumps({"rebooting": True, "in_ms": REBOOT_DELAY_MS})

    async def _reboot_later(self):
        import asyncio
        await _sleep_ms(REBOOT_DELAY_MS)  # the answer goes out first
        try:
            await asyncio.wait_for(self.room.disconnect(), 2)
        except Exception as e:  # leaving cleanly is a courtesy; the reset happens anyway
            flashlog.error("reboot: leaving the room failed: %r" % (e,))
        self.machine.reset()


def _file_delete(data):
    """file.delete (filedelete.py), imported for the call: its bytecode leaves the heap after."""
    import sys
    import filedelete
    sys.modules.pop("filedelete", None)
    return filedelete.file_delete(data)


def _file_list(data):
    """file.list (filelist.py), imported for the call: its bytecode leaves the heap after."""
    import sys
    import filelist
    sys.modules.pop("filelist", None)
    return filelist.file_list(data)


_CLOCK = "clock"


def _config_patch(payload, identity=None, now=_CLOCK, token=None):
    """The checked patch of config.update's `payload` (RpcError E_BAD_CONFIG naming what
    is wrong). A "token" is also checked against the board's `identity` (else the one
    the current `token` names; neither: any identity goes) and, while the clock is set
    (`now`: Unix seconds, None: not set; by default the board's), its expiry:
    tokencheck.py."""
    import config
    try:
        patch = json.loads(payload)
    except ValueError:
        patch = None
    if not isinstance(patch, dict):
        raise files.rpc_error(files.E_NOT_JSON, "config.update needs a JSON object", (payload or "")[:100])
    for k in patch:
        why = config.problem(k, patch[k])
        if why is not None:
            raise files.rpc_error(E_BAD_CONFIG, why)
    if "token" in patch:
        import sys
        import tokencheck
        sys.modules.pop("tokencheck", None)  # its bytecode leaves the heap after the call
        identity = identity or tokencheck.identity_of(token)
        if now == _CLOCK:
            import telemetry
            now = telemetry.wall_time()
        why = tokencheck.problem(patch["token"], identity, now)
        if why is not None:
            raise files.rpc_error(E_BAD_CONFIG, why)
    return patch


def _unique_id(m):
    import binascii
    try:
        return binascii.hexlify(m.unique_id()).decode()
    except Exception:
        return ""


def reset_cause_name(m):
    try:
        c = m.reset_cause()
    except Exception:
        return "unknown"
    for n in ("PWRON_RESET", "HARD_RESET", "WDT_RESET", "DEEPSLEEP_RESET", "SOFT_RESET"):
        if getattr(m, n, None) == c:
            return n
    return str(c)
