"""The board application: config, network, join the room, serve methods, telemetry.

Started by main.py. Everything long-running is an asyncio task. A failed task is
logged to flash by the loop's exception handler; a MemoryError there resets the board
(a heap that ran dry once is not trusted to recover). The watchdog (profile
"watchdog_ms") is fed from its own task, so a stalled event loop resets the board.
The room reconnects by itself after a link loss; telemetry queued meanwhile is sent
after the reconnect (telemetry.py). Should the room give up (a final LEAVE: the
board's identity joined from elsewhere, its token refused), the app joins again a
minute later (config "rejoin_s"), and keeps trying.
"""
import asyncio
import time

import config
import flashlog
import telemetry
from methods import App, reset_cause_name

WIFI_TIMEOUT_MS = 20000
WDT_FEED_MS = 1000


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
    t0 = time.ticks_ms()
    while not wlan.isconnected():
        if time.ticks_diff(time.ticks_ms(), t0) > WIFI_TIMEOUT_MS:
            raise OSError("Wi-Fi %r: no connection after %d s" % (wifi["ssid"], WIFI_TIMEOUT_MS // 1000))
        if wdt is not None:
            wdt.feed()
        time.sleep_ms(200)
    flashlog.info("wifi up: %s" % (wlan.ifconfig()[0],))


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


async def _connect_forever(room, cfg):
    from lkedge.room import ConnectError
    delay = 1000
    while True:
        try:
            await room.connect(cfg["relay"], cfg["token"])
            return
        except (ConnectError, OSError) as e:
            flashlog.error("connect to %s failed: %s" % (cfg["relay"], e))
        await _sleep_ms(delay)
        delay = min(delay * 2, 30000)


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
    wdt = _start_watchdog(profile, machine)
    if wdt is not None:
        asyncio.create_task(_feed_watchdog(wdt))
    _network_up(cfg, wdt)
    room = Room(RoomOptions.for_board(profile))
    tel = _telemetry(room, cfg, profile)
    App(room, cfg, profile, machine, started, tel).register()
    await _connect_forever(room, cfg)
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
