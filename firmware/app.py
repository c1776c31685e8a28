"""The board application: config, network, join the room, serve methods, telemetry.

Started by main.py. Everything long-running is an asyncio task. A failed task is
logged to flash by the loop's exception handler; a MemoryError there resets the board
(a heap that ran dry once is not trusted to recover). The watchdog (profile
"watchdog_ms") is fed from its own task, so a stalled event loop resets the board.

Telemetry sampling starts at boot, before the Wi-Fi and the room: samples go to the
flash queue whatever the link does, and are sent once the receiver is reachable
(telemetry.py). A Wi-Fi that does not come up is tried again with backoff (up to
WIFI_RETRY_MAX_MS between attempts), the board sampling meanwhile; once it is up, the
clock is set by NTP where the port has ntptime (best effort, once). The room
reconnects by itself after a link loss; telemetry queued meanwhile is sent after the
reconnect. Should the room give up (a final LEAVE: the board's identity joined from
elsewhere, its token refused), the app joins again a minute later (config
"rejoin_s"), and keeps trying. Failures to join go to the flash log once, then at
most hourly while they stay the same (_connect_forever); a refused token is retried
every 5 minutes, not every 30 s.

A config that cannot reach the room is not kept for ever (lastgood.py): once joined,
the config is recorded as the last good one; a config whose Wi-Fi, relay or token
never joined is on trial, and after "revert_after_s" (300) seconds of failing to
bring the Wi-Fi up or to join in ways its change could explain (summed across resets;
an outage does not count: lastgood.py has the rules) the app goes back to the last
good config and resets into it.
"""
import asyncio
import time

import config
import flashlog
import telemetry
from lkedge.clock import now_ms
from methods import App, reset_cause_name

WIFI_TIMEOUT_MS = 20000  # one Wi-Fi attempt
WIFI_RETRY_MIN_MS = 5000   # Wi-Fi retries: doubling from here ...
WIFI_RETRY_MAX_MS = 300000  # ... up to this
NTP_TIMEOUT_S = 2
WDT_FEED_MS = 1000
RETRY_MIN_MS = 1000   # relay connect retries: doubling from here ...
RETRY_MAX_MS = 30000  # ... up to this
UNAUTHORIZED_RETRY_MS = 300000  # a refused token (LEAVE 3): a person must deploy a new one
CONNECT_LOG_EVERY_MS = 3600000  # the same connect failure goes to the flash log this often


def main():
    asyncio.run(run())


def _sleep_ms(ms):
    return asyncio.sleep_ms(ms) if hasattr(asyncio, "sleep_ms") else asyncio.sleep(ms / 1000)


def _mem_free():
    import gc
    gc.collect()
    return gc.mem_free()


def _start_watchdog(profile, machine):
    ms = profile.get("watchdog_ms", 0)
    if not ms:
        return None
    try:
        return machine.WDT(timeout=ms)
    except Exception as e:
        flashlog.error("watchdog unavailable: %r" % (e,))
        return None


async def _feed_watchdog(wdt):
    while True:
        wdt.feed()
        await _sleep_ms(WDT_FEED_MS)


def _wifi_timeout_ms(cfg):
    """One Wi-Fi attempt's limit: the config's wifi_timeout_s, else WIFI_TIMEOUT_MS."""
    t = cfg.get("wifi_timeout_s")
    return int(t * 1000) if t else WIFI_TIMEOUT_MS


def _wifi_steps(cfg):
    """One Wi-Fi attempt, as a generator of the milliseconds to wait between polls
    (run blocking by _network_up, or awaited by _wifi_forever); raises OSError when no
    connection came within _wifi_timeout_ms(cfg)."""
    try:
        import network
    except ImportError:
        return  # a port without a network module: the network is the host's
    wifi = cfg.get("wifi") or {}
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if wlan.isconnected() or not wifi.get("ssid"):
        return
    wlan.connect(wifi["ssid"], wifi.get("password", ""))
    t0 = now_ms()
    while not wlan.isconnected():
        if now_ms() - t0 > _wifi_timeout_ms(cfg):
            from lastgood import wifi_status
            why = "Wi-Fi %r: no connection after %g s (%s)" % (wifi["ssid"], _wifi_timeout_ms(cfg) / 1000,
                                                                wifi_status(network, wlan))
            try:
                wlan.disconnect()  # the next attempt starts afresh
            except Exception:
                pass
            raise OSError(why)
        yield 200
    flashlog.info("wifi up: %s" % (wlan.ifconfig()[0],))


def _network_up(cfg, wdt):
    """One blocking Wi-Fi attempt (feeding the watchdog)."""
    for ms in _wifi_steps(cfg):
        if wdt is not None:
            wdt.feed()
        time.sleep_ms(ms) if hasattr(time, "sleep_ms") else time.sleep(ms / 1000)


def _wifi(cfg, wdt, trial, machine):
    """One blocking attempt (_network_up); a failure counts against a config whose Wi-Fi
    is on trial (and may revert it) as at least one whole attempt, even one that
    failed at once, and is raised."""
    try:
        _network_up(cfg, wdt)
    except Exception as e:  # an OSError, or whatever else the port's WLAN raises
        _failed(trial, str(e), machine, "wifi", _wifi_timeout_ms(cfg))
        raise


async def _wifi_forever(cfg, trial, machine):
    """Bring the Wi-Fi up, trying again with backoff (WIFI_RETRY_MIN_MS doubling up to
    WIFI_RETRY_MAX_MS) until it is: no reset loop. Each failed attempt counts as in
    _wifi. The event loop runs meanwhile: sampling goes on, the watchdog task feeds."""
    delay = WIFI_RETRY_MIN_MS
    seen = [None, 0, 0]   # as a join's: the same failure to the flash log hourly (_log_connect)
    while True:
        try:
            for ms in _wifi_steps(cfg):
                await _sleep_ms(ms)
            _log_connect(None, seen)   # how many went unlogged, if any
            return
        except MemoryError:
            raise
        except Exception as e:  # an OSError, or whatever else the port's WLAN raises
            why = str(e) or repr(e)
        _log_connect("%s; trying again with backoff, at most every %d s (sampling goes on)"
                     % (why, WIFI_RETRY_MAX_MS // 1000), seen)
        _failed(trial, why, machine, "wifi", _wifi_timeout_ms(cfg))
        await _sleep_ms(delay)
        delay = min(delay * 2, WIFI_RETRY_MAX_MS)


def _set_clock():
    """Set the clock by NTP once, where the port has ntptime (esp32, rp2); skipped
    quietly where it has not (the emulated board: its clock is the host's). Blocks for
    at most about NTP_TIMEOUT_S (DNS aside); a failure is logged, never raised."""
    try:
        import ntptime
    except ImportError:
        return False
    try:
        ntptime.timeout = NTP_TIMEOUT_S
        ntptime.settime()
        flashlog.info("clock set by NTP")
        return True
    except Exception as e:
        flashlog.error("clock not set by NTP: %r (telemetry records carry boot and ms)" % (e,))
        return False


def _failed(trial, why, machine, kind, at_least_ms=0):
    """A failure to reach the room (lastgood.WIFI, RELAY or TOKEN); a config on trial
    past its time is reverted and the board resets into the last good one."""
    if trial is not None and trial.failed(why, kind, at_least_ms):
        flashlog.error("resetting into the last good config")
        machine.reset()


def _make_exception_handler(machine):
    def handler(loop, context):
        e = context.get("exception")
        if e is None:
            flashlog.error("task failed: %s" % context.get("message"))
            return
        flashlog.exception("task failed", e)
        if isinstance(e, MemoryError):
            flashlog.error("out of memory in a task: resetting")
            machine.reset()
    return handler


async def _connect_forever(room, cfg, failed=None):
    """Join, retrying with backoff; each failure is also told to `failed(why, e)`. A
    refused token (LEAVE 3: expired, unauthorized) is retried only every
    UNAUTHORIZED_RETRY_MS (or revert_after_s, if shorter: a config on trial is still
    judged in time): it is no outage, a person must deploy a new token. The flash log
    gets a failure once, then the same failure at most once per CONNECT_LOG_EVERY_MS
    with a count (_log_connect): an expired token would otherwise fill the 64 KiB log in
    hours, pushing out its history."""
    from lkedge.room import ConnectError
    delay = RETRY_MIN_MS
    seen = [None, 0, 0]  # the failure last logged, when, how many like it since
    while True:
        try:
            await room.connect(cfg["relay"], cfg["token"])
            _log_connect(None, seen)
            return
        except (ConnectError, OSError) as e:
            why = "connect to %s failed: %s" % (cfg["relay"], e)
            _log_connect(why, seen)
            if failed is not None:
                failed(why, e)
            wait = delay
            if getattr(e, "leave_code", None) == 3:
                wait = max(delay, min(UNAUTHORIZED_RETRY_MS, int(cfg["revert_after_s"] * 1000)))
        await _sleep_ms(wait)
        delay = min(delay * 2, RETRY_MAX_MS)


def _log_connect(why, seen):
    """Log a failure to join (None: joined) unless it is the one logged last, less than
    CONNECT_LOG_EVERY_MS ago (then only the console gets it); the next line written says
    how many were not."""
    last, at, quiet = seen
    if why is not None and why == last and now_ms() - at < CONNECT_LOG_EVERY_MS:
        print(why)
        seen[2] += 1
        return
    if quiet and why != last:
        flashlog.error("%s: %d more times, not logged" % (last, quiet))
        quiet = 0
    if why is not None:
        flashlog.error(why + (" (%d more times since the last line, not logged)" % quiet if quiet else ""))
    seen[0], seen[1], seen[2] = why, now_ms(), 0


async def _telemetry_loop(tel, profile, interval_ms):
    """Sample every interval_ms, whatever the link does (samples go to the flash queue),
    and start a flush when the receiver may be reachable: a flush runs as a task of its
    own, so a slow receiver never delays the next sample."""
    import sensors
    failing = False
    due = now_ms()
    while True:
        try:
            await tel.sample(sensors.read_all(profile), telemetry.wall_time())
            failing = False
        except MemoryError:
            raise  # the exception handler resets the board
        except Exception as e:  # a full flash: keep sending what is queued, sample again later
            if not failing:  # once per failing spell, not once per sample
                flashlog.error("telemetry sample not queued: %s (sampling goes on; counted as dropped)" % _why(e))
            failing = True
        if not getattr(tel, "flushing", False):  # flush() returns at once when there is nothing to do
            asyncio.create_task(tel.flush())
        due += interval_ms
        wait = due - now_ms()
        if wait < 0:  # late (a long collection, a blocking call): skip, do not catch up
            due = now_ms()
            wait = 0
        await _sleep_ms(wait)


def _why(e):
    """What a failed sample says: a full flash (OSError 28, ENOSPC) with how to free it."""
    if isinstance(e, OSError) and e.args and e.args[0] == 28:
        return ("the flash is full (OSError 28, ENOSPC): free some with file.list (what is large) and "
                "file.delete (your files, a .put-N.tmp an upload cut short left)")
    return repr(e)


def _telemetry(room, cfg, profile):
    notes = []
    boot = telemetry.next_boot(notes=notes)
    queue = telemetry.TelemetryQueue(profile.get("telemetry_queue_bytes", 8192), boot=boot)
    # a boot counter not written, a lost state file (seq starts again), a damaged queue file
    for note in notes + queue.notes:
        flashlog.error(note)
    queue.notes = []
    tel = telemetry.Telemetry(room, queue, cfg.get("telemetry_to") or "", "")

    def kick(*_):
        tel.kicked()
        asyncio.create_task(tel.flush())

    room.on("reconnected", kick)
    room.on("participant_connected", lambda p: p.identity == tel.destination and kick())
    return tel


def _room_options(profile):
    """The Room's settings from the profile's link keys. One the library refuses (a
    hand-edited profile.json) is logged and the board runs with the board defaults:
    it still joins, so it can be redeployed, instead of failing at every boot."""
    from lkedge.config import RoomOptions
    try:
        return RoomOptions.for_board(profile)
    except (TypeError, ValueError) as e:
        flashlog.error("profile.json link: %s: running with the board defaults" % (e,))
        return RoomOptions.for_board()


async def run():
    import machine
    from lkedge.room import Room

    started = time.ticks_ms()
    cfg = config.load()
    profile = config.load_profile()
    asyncio.get_event_loop().set_exception_handler(_make_exception_handler(machine))
    flashlog.info("boot: firmware on %s, reset cause %s" % (profile.get("name"), reset_cause_name(machine)))
    if not cfg.get("token"):
        flashlog.error("config.json has no token: run `lkedge deploy` to write one")
    import lastgood
    trial = lastgood.Trial(cfg)
    wdt = _start_watchdog(profile, machine)
    if wdt is not None:
        asyncio.create_task(_feed_watchdog(wdt))
    room = Room(_room_options(profile))
    tel = _telemetry(room, cfg, profile)
    app = App(room, cfg, profile, machine, started, tel)
    app.config_reverted = trial.reverted
    app.register()
    if tel.destination:  # sampling starts now, not once joined: the queue is on flash
        interval_ms = int(cfg["telemetry_interval_s"] * 1000)  # 0.1 .. 86400 s (config.load)
        asyncio.create_task(_telemetry_loop(tel, profile, interval_ms))
    else:
        flashlog.info("telemetry off (config telemetry_to is empty)")
    await _wifi_forever(cfg, trial, machine)
    if wdt is not None:
        wdt.feed()
    _set_clock()
    await _connect_forever(room, cfg, lambda why, e: _failed(trial, why, machine, lastgood.failure_kind(e)))  # noqa: F821 (lastgood: deleted below, once joined)
    trial.joined()
    app.config_reverted = trial.reverted  # None once a newer config than the one gone back to joined
    trial = None
    import sys
    sys.modules.pop("lastgood", None)  # boot-time code: its heap is the methods' now
    del lastgood
    tel.device = room.local_participant.identity
    print("lkedge app: joined room %s as %s (mem_free %d)" % (room.name, tel.device, _mem_free()))
    flashlog.info("joined room %s as %s" % (room.name, tel.device))
    if tel.destination:
        tel.kicked()
        asyncio.create_task(tel.flush())
    await _stay_joined(room, cfg)


async def _stay_joined(room, cfg):
    """The room reconnects by itself after a link loss, but gives up after a final
    LEAVE (its identity joined elsewhere, its token refused): a board in the field must
    not stay out for good, so it joins again cfg["rejoin_s"] later."""
    while True:
        await _sleep_ms(int(cfg["rejoin_s"] * 1000))
        if _gave_up(room):
            flashlog.error("out of the room (%s): joining again" % (room.last_error,))
            await _connect_forever(room, cfg)
            flashlog.info("joined room %s again" % (room.name,))


def _gave_up(room):
    """True once the room stopped rejoining by itself (a final LEAVE): a connect()
    from here while it retries would race its own retries."""
    from lkedge import link
    return room.connection_state == "disconnected" and room.leave_code in link.FINAL_LEAVE
