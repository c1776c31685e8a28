"""The firmware on the emulated ESP32, through the real relay: telemetry across a relay
restart and a board reboot, config.update + reboot, handler errors, and keeping the
last good config (a config whose Wi-Fi cannot connect goes back to the one that
joined; a relay outage does not).

One rig per module (relay, emulated esp32 board, firmware deployed with the real
mpy-cross and mpremote); every test talks to the board from host participants that
use the same lkedge library.
"""
import asyncio
import base64
import json
import os
import re
import signal
import time

import pytest

from lkedge.rpc import RpcError
from lkedge_host import board as board_mod
from lkedge_host import demo
from lkedge_host.relay.process import RelayProcess

ROOM = "fw-test"
BOARD = "fw-board"
COLLECTOR = "collector"
ABSENT_AP = "absent-ap"  # the emulated board never finds this access point


class Rig:
    def __init__(self, tmp):
        self.relay = RelayProcess().start()
        self.url = self.relay.url
        self.port = self.relay.port
        self.board = None
        self.flash = os.path.join(tmp, "flash")
        # emulation/network.py: the board never finds this access point
        self.board, self.pty = board_mod.launch("esp32", self.flash, env={"LKEDGE_EMULATED_NO_AP": ABSENT_AP})
        demo.deploy(self.pty, "esp32", self.url, identity=BOARD, room=ROOM)

    def flash_json(self, name):
        """A JSON file on the board's flash (the emulated flash is a host folder), or None."""
        try:
            with open(os.path.join(self.flash, name)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def flash_log(self):
        with open(os.path.join(self.flash, "log.txt")) as f:
            return f.read()

    def crash_relay(self, hang_s, down_s):
        """The relay hangs (SIGSTOP: connections stay open, the kernel still accepts
        bytes), then crashes (SIGKILL: whatever it had accepted is gone), and a new
        relay comes up on the same port after `down_s`."""
        self.relay.proc.send_signal(signal.SIGSTOP)
        time.sleep(hang_s)
        self.relay.kill()
        time.sleep(down_s)
        self.relay = RelayProcess(port=self.port).start()
        assert self.relay.url == self.url

    def stop(self):
        demo._stop(self.board)
        self.relay.stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(str(tmp_path_factory.mktemp("fw")))
    yield r
    r.stop()


async def _host(rig, identity="fw-host", **opts):
    room = await demo.join(rig.url, identity=identity, room=ROOM, **opts)
    await demo.wait_for_participant(room, BOARD, 30)
    return room


async def _call(room, method, payload=""):
    return await room.local_participant.perform_rpc(destination_identity=BOARD, method=method,
                                                    payload=payload, response_timeout=10)


async def _info(room):
    return json.loads(await _call(room, "device.info"))


async def _until(pred, timeout, what):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out after %s s waiting for %s" % (timeout, what)
        await asyncio.sleep(0.05)


async def _reboot_and_rejoin(room):
    """reboot, see the board leave, and wait until it is back in the room."""
    assert json.loads(await _call(room, "reboot"))["rebooting"] is True
    await _until(lambda: BOARD not in room.remote_participants, 10, "the board to leave")
    await demo.wait_for_participant(room, BOARD, 30)


async def test_a_failing_handler_answers_an_error_and_the_board_keeps_serving(rig):
    room = await _host(rig)
    try:
        before = (await _info(room))["calls"]
        for payload, code in ((json.dumps({"path": "no-such-file"}), 4004), ("not json", 4000),
                              (json.dumps({"path": "../up"}), 4002)):
            try:
                await _call(room, "file.stat", payload)
            except RpcError as e:
                assert e.code == code, (payload, e)
            else:
                raise AssertionError("file.stat %s answered instead of failing" % payload)
        try:
            await _call(room, "config.update", '{"no_such_key": 1}')
        except RpcError as e:
            assert e.code == 4005 and "no_such_key" in e.message
        info = await _info(room)
        assert info["calls"] == before + 5 and info["identity"] == BOARD
    finally:
        await room.disconnect()


async def test_config_update_takes_effect_after_reboot(rig):
    room = await _host(rig)
    try:
        name = "pump-%d" % (time.time() * 1000 % 100000)
        r = json.loads(await _call(room, "config.update", json.dumps({"name": name})))
        assert r == {"updated": ["name"], "effective": "after reboot", "on_trial": False, "revert_after_s": 300}
        assert (await _info(room))["name"] != name, "applied before the reboot"
        await _reboot_and_rejoin(room)
        info = await _info(room)
        assert info["name"] == name and info["reset_cause"] == "SOFT_RESET"
        assert info["uptime_ms"] < 20000
    finally:
        await room.disconnect()


async def test_telemetry_survives_a_relay_restart_and_a_board_reboot(rig):
    # the collector: a host participant that reconnects quickly and drops repeats by seq
    col = await _host(rig, COLLECTOR, auto_reconnect=True, reconnect_min_ms=100, reconnect_max_ms=500)
    unique, repeats, bad = [], [0], []

    async def on_telemetry(reader, sender):
        import cbor2  # the CBOR oracle, not the library's own decoder
        if sender != BOARD:
            bad.append(("sender", sender))
        for sample in cbor2.loads(await reader.read_all()):
            if unique and sample["seq"] <= unique[-1]:
                repeats[0] += 1
                continue
            unique.append(sample["seq"])
            if not set(sample["v"]) >= {"chip_temp_c", "light_v", "button"} or not isinstance(sample["t"], int):
                bad.append(sample)
    col.register_byte_stream_handler("telemetry", on_telemetry)
    # the confirmation (firmware/telemetry.py): without it the board keeps every batch
    col.local_participant.register_rpc_method("telemetry.sync", lambda data: data.payload)
    try:
        await _call(col, "config.update", json.dumps({"telemetry_to": COLLECTOR, "telemetry_interval_s": 0.2}))
        await _reboot_and_rejoin(col)
        await _until(lambda: len(unique) >= 3, 15, "the first samples")
        first = unique[0]

        # the relay hangs and crashes with samples in flight, and is back after a while:
        # meanwhile the board keeps sampling to flash
        at_stop = unique[-1]
        rig.crash_relay(hang_s=1.0, down_s=1.0)
        await _until(lambda: unique[-1] >= at_stop + 12, 30, "samples after the relay restart")

        # the board reboots: the sequence continues from flash
        at_reboot = unique[-1]
        await _reboot_and_rejoin(col)
        await _until(lambda: unique[-1] >= at_reboot + 8, 30, "samples after the reboot")
        info = await _info(col)
        assert info["telemetry"]["to"] == COLLECTOR and info["telemetry"]["dropped"] == 0
    finally:
        await col.disconnect()
    assert not bad, bad
    assert unique == list(range(first, unique[-1] + 1)), "lost samples: %s" % (
        sorted(set(range(first, unique[-1] + 1)) - set(unique)))
    # outages make the board resend unconfirmed batches; the receiver dropped them
    print("telemetry: %d samples, seq %d..%d, %d repeats dropped" % (len(unique), first, unique[-1], repeats[0]))


async def test_log_tail_streams_the_end_of_the_flash_log_in_whole_lines(rig):
    room = await _host(rig)
    try:
        reader = await room.local_participant.perform_rpc_stream(
            destination_identity=BOARD, method="log.tail", payload=json.dumps({"bytes": 300}), response_timeout=10)
        text = await reader.read_all()
        assert 0 < len(text) <= 300 and text.endswith("\n")
        for line in text.strip().split("\n"):
            t, level, _ = line.split(" ", 2)
            assert t.isdigit() and level in ("INFO", "ERROR"), line
        try:
            await _call(room, "log.tail", json.dumps({"bytes": -1}))
        except RpcError as e:
            assert e.code == 4000 and "bytes" in e.message
        else:
            raise AssertionError("log.tail with a negative size answered")
    finally:
        await room.disconnect()


async def test_bad_inputs_are_rpc_errors_and_leave_the_board_serving_without_a_leak(rig):
    # a field user's mistakes, over and over: each is an RpcError naming the cause, the
    # board keeps answering, and its free heap does not go down call after call
    room = await _host(rig)
    bad = ((("file.stat", json.dumps({"path": "lib"})), 4004), (("file.stat", json.dumps({"path": "a\u0000b"})), 4002),
           (("file.stat", "[]"), 4000), (("file.stat", "{}"), 4001),
           (("config.update", json.dumps({"telemetry_interval_s": 1e300})), 4005),
           (("config.update", json.dumps({"wifi": {"ssid": 5}})), 4005),
           (("config.update", json.dumps({"relay": "nonsense"})), 4005),
           (("log.tail", json.dumps({"bytes": "all"})), 4000))
    try:
        free = []
        for rnd in range(12):
            for (method, payload), code in bad:
                try:
                    await _call(room, method, payload)
                except RpcError as e:
                    assert e.code == code, (method, payload, e)
                else:
                    raise AssertionError("%s %s answered instead of failing" % (method, payload))
            free.append((await _info(room))["mem_free"])
        print("mem_free over the rounds:", free)
        assert min(free[4:]) >= free[3] - 2048, "the free heap shrinks call after call: %s" % free
    finally:
        await room.disconnect()


async def _put(room, text):
    """file.put with the request text `text` (header line and body) -> the answer."""
    reader = await room.local_participant.perform_rpc_stream(
        destination_identity=BOARD, method="file.put", payload=text, response_timeout=10)
    return json.loads(await reader.read_all())


async def _refused(aw, code, *words):
    try:
        r = await aw
    except RpcError as e:
        assert e.code == code and all(w in e.message for w in words), (code, words, e.code, e.message)
        return e.message
    raise AssertionError("answered %r instead of failing with %d" % (r, code))


async def test_file_list_finds_what_fills_the_flash_and_file_delete_removes_it(rig):
    # docs/firmware.md: "Find what is large with file.list, and file.delete what you no
    # longer need (also a .put-N.tmp ...)": file.list answered 1400, file.stat of "/" 4002
    with open(os.path.join(rig.flash, ".put-0.tmp"), "wb") as f:
        f.write(os.urandom(3000))   # what a reset in the middle of an upload leaves
    room = await _host(rig)
    try:
        entries, start = [], 0
        while start is not None:
            page = json.loads(await _call(room, "file.list", json.dumps({"start": start})))
            assert page["path"] == "/" and len(page["entries"]) <= 40 and page["free"] > 0, page
            entries += page["entries"]
            start = page["next"]
        by_name = dict((e["name"], e) for e in entries)
        assert by_name[".put-0.tmp"] == {"name": ".put-0.tmp", "size": 3000}, by_name
        assert by_name["lib"] == {"name": "lib", "dir": True}
        assert by_name["config.json"]["size"] == os.path.getsize(os.path.join(rig.flash, "config.json"))
        lib = json.loads(await _call(room, "file.list", '{"path": "lib/lkedge"}'))
        assert "room.mpy" in [e["name"] for e in lib["entries"]] or lib["next"] is not None, lib
        assert json.loads(await _call(room, "file.delete", '{"path": ".put-0.tmp"}'))["size"] == 3000
        await _refused(_call(room, "file.stat", '{"path": "/"}'), 4002, "file.list")
        await _refused(_call(room, "file.list", '{"path": "config.json"}'), 4004, "not a folder")
    finally:
        await room.disconnect()


async def test_config_update_refuses_a_token_for_another_identity_or_an_expired_one(rig):
    # it took any token: after a reboot the board rejoined as field-9 (its name still
    # field-1), and nothing reverted it, since the join worked
    from lkedge_host.relay import auth
    before = rig.flash_json("config.json")["token"]
    room = await _host(rig)
    try:
        for token, words in ((auth.mint_token(rig.relay.key, rig.relay.secret, "field-9", ROOM, 3600),
                              ("'field-9'", "not this board's '%s'" % BOARD)),
                             (auth.mint_token(rig.relay.key, rig.relay.secret, BOARD, ROOM, -60), ("expired",)),
                             ("abc", ("not a JWT",)), ("", ("not a JWT",))):
            await _refused(_call(room, "config.update", json.dumps({"token": token})), 4005, *words)
        assert rig.flash_json("config.json")["token"] == before
    finally:
        await room.disconnect()


async def test_file_and_config_requests_the_board_cannot_keep_are_refused(rig):
    # a black-box user's findings: each was written or saved (or answered with text
    # that was not UTF-8, which dropped the board); now each is an RpcError
    room = await _host(rig)
    try:
        r1, r2 = os.urandom(1000), os.urandom(1000)
        two = base64.b64encode(r1).decode() + base64.b64encode(r2).decode()  # '==' mid-text
        for body, offset in ((two, 1336), ("aGk=QUJD", 4), ("QU JD", 2)):
            await _refused(_put(room, '{"path": "t1.bin"}\n' + body), 4006, "offset %d" % offset)
        await _refused(_call(room, "file.stat", '{"path": "t1.bin"}'), 4004)
        for payload in ('{"path": "\\ud800"}', '{"path": "a\\u007fb"}'):
            await _refused(_call(room, "file.stat", payload), 4002)
            await _refused(_put(room, payload + "\nQUJD"), 4002)
        await _refused(_put(room, '{"path": "nodir/t1.txt"}\nQUJD'), 4004, "folder nodir does not exist")
        await _refused(_call(room, "config.update", '{"name": "\\ud800"}'), 4005, "'name'")
        assert (await _put(room, '{"path": "%s"}\nQUJD' % ("n" * 252)))["size"] == 3
        info = await _info(room)   # still in the room, its name unchanged
        assert info["identity"] == BOARD and "\ud800" not in info["name"], info
        left = [n for n in os.listdir(rig.flash) if n.startswith((".put-", "t1", "a\x7f"))]
        assert not left and rig.flash_json("config.json")["name"] == info["name"], left
    finally:
        await room.disconnect()
        try:
            os.remove(os.path.join(rig.flash, "n" * 252))
        except FileNotFoundError:
            pass


async def test_file_delete_removes_a_users_file_and_refuses_the_firmwares_own(rig):
    room = await _host(rig)
    try:
        assert (await _put(room, '{"path": "del.bin"}\nQUJD'))["size"] == 3
        r = json.loads(await _call(room, "file.delete", '{"path": "del.bin"}'))
        assert r["path"] == "del.bin" and r["size"] == 3 and isinstance(r["free"], int) and r["free"] > 0, r
        assert not os.path.exists(os.path.join(rig.flash, "del.bin"))
        await _refused(_call(room, "file.delete", '{"path": "del.bin"}'), 4004)
        for own in ("config.json", "app.mpy", "main.py", "lib/lkedge/room.mpy", "log.txt", "telemetry.st"):
            await _refused(_call(room, "file.delete", json.dumps({"path": own})), 4009, "the firmware's own file")
        await _refused(_call(room, "file.delete", '{"path": "../x"}'), 4002)
        assert os.path.exists(os.path.join(rig.flash, "app.mpy"))
        info = await _info(room)
        assert info["telemetry"]["unsaved"] is False, info
    finally:
        await room.disconnect()
    assert "file.delete by fw-host: del.bin (3 bytes)" in rig.flash_log()


async def test_log_tail_reads_on_into_log_old_after_a_rotation(rig):
    # right after a rotation log.txt holds a line or two: the tail went no further
    old = os.path.join(rig.flash, "log.old")
    had = os.path.exists(old)
    if not had:
        with open(old, "w") as f:
            f.writelines("%d INFO rotated-out line %d\n" % (1000 + i, i) for i in range(200))
    room = await _host(rig)
    try:
        with open(os.path.join(rig.flash, "log.txt")) as f:
            first = f.readline()
        reader = await room.local_participant.perform_rpc_stream(
            destination_identity=BOARD, method="log.tail", payload=json.dumps({"bytes": 40000}), response_timeout=10)
        text = await reader.read_all()
        with open(old) as f:
            tail_of_old = f.read()[-500:].split("\n", 1)[1]
        assert tail_of_old + first in text, text[-3000:]
    finally:
        await room.disconnect()
        if not had:
            os.remove(old)


async def test_a_board_pushed_out_by_its_own_identity_joins_again(rig):
    # someone joins with the board's identity: the relay drops the board (a final
    # LEAVE, the room gives up); rejoin_s later the board joins again (and, the newer
    # connection winning, pushes the impostor out in turn)
    room = await _host(rig)
    try:
        await _call(room, "config.update", json.dumps({"rejoin_s": 2}))  # 60 s by default
        await _reboot_and_rejoin(room)
        twin = await demo.join(rig.url, identity=BOARD, room=ROOM)
        t0 = time.monotonic()
        await _until(lambda: twin.connection_state == "disconnected", 20, "the board to come back")
        assert time.monotonic() - t0 < 15, "rejoin_s 2 was not taken"
        await demo.wait_for_participant(room, BOARD, 10)
        assert (await _info(room))["identity"] == BOARD   # the board itself answers
        await twin.disconnect()
    finally:
        await room.disconnect()


def _join_keys(cfg):
    w = cfg.get("wifi") or {}
    return [w.get("ssid", ""), w.get("password", ""), cfg["relay"], cfg["token"]]


async def test_a_config_that_joined_is_the_last_good_one_and_an_outage_does_not_revert_it(rig):
    # the deployed config joined: it is recorded as the last good one, a moment after the
    # host sees the board (this test may be the first of the module on its worker, the
    # board just deployed)
    room = await _host(rig)
    try:
        await _until(lambda: rig.flash_json("config.good.json") is not None, 10,
                     "the deployed config to be recorded as the last good one")
        good = rig.flash_json("config.good.json")
        assert _join_keys(good) == _join_keys(rig.flash_json("config.json")), good
        r = json.loads(await _call(room, "config.update", json.dumps({"revert_after_s": 1})))
        assert r["on_trial"] is False and r["revert_after_s"] == 1, r  # Wi-Fi, relay, token unchanged
        await _reboot_and_rejoin(room)
        # recorded once the board's connect() returned: a moment after the host sees it
        await _until(lambda: (rig.flash_json("config.good.json") or {}).get("revert_after_s") == 1, 10,
                     "the new config to be recorded as the last good one")
        # the board boots while the relay is down, far longer than revert_after_s
        assert json.loads(await _call(room, "reboot"))["rebooting"] is True
        rig.relay.kill()
    finally:
        await room.disconnect()
    await asyncio.sleep(4)   # the relay down 4 times revert_after_s
    rig.relay = RelayProcess(port=rig.port).start()
    room = await _host(rig)
    try:
        info = await _info(room)
        assert info["uptime_ms"] > 6000 and info["config_reverted"] is None, info
    finally:
        await room.disconnect()
    log = rig.flash_log()
    # the same failure, again and again: the first is logged, then a count once joined
    assert re.search(r"connect to %s failed: [^\n]*: \d+ more times, not logged" % re.escape(rig.url), log), log[-3000:]
    assert "could not reach the room" not in log and rig.flash_json("config.rejected.json") is None
    assert rig.flash_json("config.json")["revert_after_s"] == 1


async def test_a_config_whose_wifi_cannot_connect_goes_back_to_the_last_good_one(rig):
    room = await _host(rig)
    try:
        name = (await _info(room))["name"]
        patch = {"wifi": {"ssid": ABSENT_AP, "password": "pw"}, "name": "stranded", "revert_after_s": 5,
                 "wifi_timeout_s": 3}
        r = json.loads(await _call(room, "config.update", json.dumps(patch)))
        assert r["on_trial"] is True and r["revert_after_s"] == 5, r
        # the board tries the Wi-Fi (3 s an attempt) until past revert_after_s, goes back, resets
        assert json.loads(await _call(room, "reboot"))["rebooting"] is True
        await _until(lambda: BOARD not in room.remote_participants, 10, "the board to leave")
        t0 = time.monotonic()
        await demo.wait_for_participant(room, BOARD, 60)
        assert time.monotonic() - t0 > 5, "back before the Wi-Fi attempts could time out"
        info = await _info(room)
        assert info["name"] == name and "absent-ap" in info["config_reverted"], info
    finally:
        await room.disconnect()
    rejected = rig.flash_json("config.rejected.json")
    assert rejected["wifi"]["ssid"] == ABSENT_AP and rejected["name"] == "stranded", rejected
    assert rig.flash_json("config.json") == rig.flash_json("config.good.json")
    log = rig.flash_log()
    assert "Wi-Fi 'absent-ap': no connection after 3 s (STAT_NO_AP_FOUND)" in log, log[-3000:]
    assert "could not reach the room" in log and "config.rejected.json" in log, log[-3000:]
    # a newer config (the same Wi-Fi, relay and token) joins: config_reverted ends
    room = await _host(rig)
    try:
        await _call(room, "config.update", json.dumps({"name": "after-revert"}))
        await _reboot_and_rejoin(room)
        info = await _info(room)
        assert info["name"] == "after-revert" and info["config_reverted"] is None, info
    finally:
        await room.disconnect()
    assert rig.flash_json("config.trial.json") is None


@pytest.mark.parametrize("profile", ["esp32", "picow"])
def test_a_board_without_the_library_frozen_says_its_memory_error(tmp_path, profile):
    # README "Boards": on stock firmware the library's bytecode sits in the heap, which
    # the esp32 and picow heaps do not have. The esp32 fails importing the library and
    # logs it to flash; the picow fails past it, importing its own modules, with so
    # little heap left that the flash log may not take the line: it reset every 5 s
    # saying nothing anywhere (flashlog never raises, so main.py's fallback never ran).
    import serial
    from lkedge_host import profiles
    p = profiles.load(profile)
    p.pop("frozen", None)
    p["name"] = "my-" + profile
    path = tmp_path / ("my-%s.json" % profile)
    path.write_text(json.dumps(p))
    flash = str(tmp_path / "flash")
    with RelayProcess() as relay:
        proc, pty = board_mod.launch(str(path), flash)
        try:
            demo.deploy(pty, str(path), relay.url, identity="unfrozen", room=ROOM)
            console = b""
            with serial.Serial(pty, 115200, timeout=0.5) as line:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and console.count(b"MemoryError") < 2:
                    console += line.read(4096)
                    with open(os.path.join(flash, "log.txt")) as f:
                        log = f.read()
                    if log.count("MemoryError") >= 2:
                        break
        finally:
            demo._stop(proc)
    text = console.decode(errors="replace")
    # the failure is said at every boot: in the flash log, or on the console when the
    # flash log cannot take it
    assert log.count("MemoryError") >= 2 or text.count("MemoryError") >= 2, (log[-1000:], text[-1000:])
    if profile == "esp32":
        assert "ERROR fatal:" in log and "lkedge" in log and "MemoryError" in log, log[-1500:]
