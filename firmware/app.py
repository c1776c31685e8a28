"""The board application: config, network, join the room, serve methods, telemetry.

Started by main.py. Everything long-running is an asyncio task. A failed task is
logged to flash by the loop's exception handler; a MemoryError there resets the board
(a heap that ran dry once is not trusted to recover). The watchdog (profile
"watchdog_ms") is fed from its own task, so a stalled event loop resets the board.
The room reconnects by itself after a link loss; telemetry queued meanwhile is sent
after the reconnect (telemetry.py). Should the room give up (a final LEAVE: the
board's identity joined from elsewhere, its token refused), the app joins again a
minute later (config "rejoin_s"), and keeps trying.

A config that cannot reach the room is not kept for ever (lastgood.py): once joined,
the config is recorded as the last good one; a config whose Wi-Fi, relay or token
never joined is on trial, and after "revert_after_s" (300) seconds of failing to
bring the Wi-Fi up or to join in ways its change could explain (summed across resets;
an outage does not count: lastgood.py has the rules) the app goes back to the last
good config and resets into it. A Wi-Fi that does not come up within 20 s still ends
in a reset (main.py), as it always did.
"""
import asyncio
import time

import config
import flashlog
import telemetry
from lkedge.clock import now_ms
from methods import App, reset_cause_name

WIFI_TIMEOUT_MS = 20000
WDT_FEED_MS = 1000
RETRY_MIN_MS = 1000   # relay connect retries: doubling from here ...
RETRY_MAX_MS = 30000  # ... up to this


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


def _network_up(cfg, wdt):
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
        if now_ms() - t0 > WIFI_TIMEOUT_MS:
            from lastgood import wifi_status
            raise OSError("Wi-Fi %r: no connection after %g s (%s)"
                          % (wifi["ssid"], WIFI_TIMEOUT_MS / 1000, wifi_status(network, wlan)))
        if wdt is not None:
            wdt.feed()
        time.sleep_ms(200) if hasattr(time, "sleep_ms") else time.sleep(0.2)
    flashlog.info("wifi up: %s" % (wlan.ifconfig()[0],))


def _wifi(cfg, wdt, trial, machine):
    """_network_up; a failure counts against a config whose Wi-Fi is on trial (and may
    revert it) as at least one whole attempt, even one that failed at once."""
    try:
        _network_up(cfg, wdt)
    except Exception as e:  # an OSError, or whatever else the port's WLAN raises
        _failed(trial, str(e), machine, "wifi", WIFI_TIMEOUT_MS)
        raise  # main.py logs it and resets the board, as without a last good config


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
    """Join, retrying with backoff; each failure is also told to `failed(why, e)`."""
    from lkedge.room import ConnectError
    delay = RETRY_MIN_MS
    while True:
        try:
            await room.connect(cfg["relay"], cfg["token"])
            return
        except (ConnectError, OSError) as e:
            why = "connect to %s failed: %s" % (cfg["relay"], e)
            flashlog.error(why)
            if failed is not None:
                failed(why, e)
        await _sleep_ms(delay)
        delay = min(delay * 2, RETRY_MAX_MS)


async def _telemetry_loop(tel, profile, interval_ms):
    import sensors
    failing = False
    while True:
        try:
            await tel.sample(sensors.read_all(profile), int(time.time()))
            failing = False
        except MemoryError:
            raise  # the exception handler resets the board
        except Exception as e:  # a full flash: keep sending what is queued, sample again later
            if not failing:  # once per failing spell, not once per sample
                flashlog.error("telemetry sample not queued: %r (sampling goes on)" % (e,))
            failing = True
        await _flush(tel)
        await _sleep_ms(interval_ms)


async def _flush(tel):
    try:
        await tel.flush()
    except Exception as e:  # the link dropped mid-batch: the batch is sent again later
        flashlog.error("telemetry send failed: %r" % (e,))


def _telemetry(room, cfg, profile):
    queue = telemetry.TelemetryQueue(profile.get("telemetry_queue_bytes", 8192))
    tel = telemetry.Telemetry(room, queue, cfg.get("telemetry_to") or "", "")

    def kick(*_):
        asyncio.create_task(_flush(tel))

    room.on("reconnected", kick)
    room.on("participant_connected", lambda p: p.identity == tel.destination and kick())
    return tel


async def run():
    import machine
    from lkedge.config import RoomOptions
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
    _wifi(cfg, wdt, trial, machine)
    room = Room(RoomOptions.for_board(profile))
    tel = _telemetry(room, cfg, profile)
    app = App(room, cfg, profile, machine, started, tel)
    app.config_reverted = trial.reverted
    app.register()
    await _connect_forever(room, cfg, lambda why, e: _failed(trial, why, machine, lastgood.failure_kind(e)))
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
        interval_ms = int(cfg["telemetry_interval_s"] * 1000)  # 0.1 .. 86400 s (config.load)
        asyncio.create_task(_telemetry_loop(tel, profile, interval_ms))
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
