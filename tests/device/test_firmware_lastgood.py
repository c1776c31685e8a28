"""Keep the last good config (firmware/lastgood.py and its use in app.py, config.update
in methods.py), without a room: the app's own Wi-Fi and join steps run against a named
fake of the board's `network` module (FakeNetwork: SSIDs listed as absent never
connect) and a fake room whose connect() fails until told otherwise.

Runs under CPython and MicroPython; files are made in the temporary folder with a
per-run prefix (config.PATH, lastgood.GOOD, ... and the flash log are pointed at them)
and removed afterwards.
"""
import binascii
import json
import os
import sys

MP_HEAPSIZE = "256K"

import firmware_path  # noqa: E402,F401  (firmware/ on sys.path)

import app  # noqa: E402
import config  # noqa: E402
import flashlog  # noqa: E402
import lastgood  # noqa: E402
import methods  # noqa: E402
from lkedge.room import ConnectError  # noqa: E402

# unique per run: two runs at once must not share files; in the temporary folder, so a
# run cut short leaves nothing in the checkout
PREFIX = "%s/lastgood_test_%s_" % ((os.getenv("TMPDIR") or "/tmp").rstrip("/"), binascii.hexlify(os.urandom(3)).decode())
_rm = firmware_path.rm
GOOD_CFG = dict(config.DEFAULTS, relay="tcp://10.0.0.2:7880", token="tok-good",
                wifi={"ssid": "home", "password": "pw"}, name="pump-7")


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _home(name):
    return config if name == "PATH" else lastgood


class Flash:
    """config.json and its companions, and the flash log, as prefixed files (use with
    `with`); a fake `network` module installed meanwhile (FakeNetwork)."""
    NAMES = ("PATH", "GOOD", "REJECTED", "TRIAL")  # config.PATH, lastgood.GOOD, ...

    def __init__(self, absent=(), wifi_ms=30):
        self.network = FakeNetwork(absent)
        self.wifi_ms = wifi_ms  # app.WIFI_TIMEOUT_MS meanwhile (it polls every 200 ms)

    def __enter__(self):
        self.saved = [getattr(_home(n), n) for n in self.NAMES] + [flashlog.LOG, flashlog.OLD, app.WIFI_TIMEOUT_MS,
                                                                  app.RETRY_MIN_MS, app.RETRY_MAX_MS]
        for n in self.NAMES:
            setattr(_home(n), n, PREFIX + getattr(_home(n), n))
        flashlog.LOG, flashlog.OLD = PREFIX + "log.txt", PREFIX + "log.old"
        app.WIFI_TIMEOUT_MS, app.RETRY_MIN_MS, app.RETRY_MAX_MS = self.wifi_ms, 5, 20
        self._clean()
        self.had_network = sys.modules.get("network")
        sys.modules["network"] = self.network
        return self

    def _clean(self):
        for n in self.NAMES:
            p = getattr(_home(n), n)
            _rm(p, p + ".tmp")
        _rm(flashlog.LOG, flashlog.OLD)

    def __exit__(self, *exc):
        self._clean()
        if self.had_network is None:
            sys.modules.pop("network", None)
        else:
            sys.modules["network"] = self.had_network
        for n, v in zip(self.NAMES, self.saved):
            setattr(_home(n), n, v)
        flashlog.LOG, flashlog.OLD, app.WIFI_TIMEOUT_MS, app.RETRY_MIN_MS, app.RETRY_MAX_MS = self.saved[4:]

    def log(self):
        return (_read(flashlog.LOG) or b"").decode()

    def write(self, name, text):
        with open(getattr(_home(name), name), "w") as f:
            f.write(text)

    def exists(self, name):
        return _read(getattr(_home(name), name)) is not None


class FakeNetwork:
    """FAKE of the board's `network` module (the unix port has none): a WLAN that
    connects at once, except to the SSIDs in `absent`, whose status stays
    STAT_NO_AP_FOUND (ESP32 numbering)."""
    STA_IF = 0
    STAT_IDLE = 1000
    STAT_NO_AP_FOUND = 201
    STAT_GOT_IP = 1010

    def __init__(self, absent):
        self.absent = list(absent)
        self.connects = []

    def WLAN(self, interface):
        return _FakeWlan(self)


class _FakeWlan:
    def __init__(self, net):
        self.net = net
        self.up = False
        self.ssid = None

    def active(self, on=None):
        return True

    def connect(self, ssid, password):
        self.net.connects.append(ssid)
        self.ssid = ssid
        self.up = ssid not in self.net.absent

    def isconnected(self):
        return self.up

    def status(self):
        if self.up:
            return FakeNetwork.STAT_GOT_IP
        return FakeNetwork.STAT_NO_AP_FOUND if self.ssid in self.net.absent else FakeNetwork.STAT_IDLE

    def ifconfig(self):
        return ("10.0.0.9", "255.255.255.0", "10.0.0.1", "10.0.0.1")


class _Reset(Exception):
    pass


class FakeMachine:
    """machine.reset() raises _Reset (a board would restart)."""

    @staticmethod
    def reset():
        raise _Reset()


class FailingRoom:
    """A room whose connect() fails until `ok` is set."""

    def __init__(self, leave_code=None):
        self.ok = False
        self.attempts = 0
        self.leave_code = leave_code  # None: unreachable; 3: the token is refused

    async def connect(self, url, token):
        self.attempts += 1
        if self.ok:
            return
        if self.leave_code is None:
            raise ConnectError("cannot reach the relay at %s: connection refused" % url)
        raise ConnectError("the relay refused to join: LEAVE %d token expired" % self.leave_code,
                           self.leave_code)


def _cfg(**kw):
    c = dict(GOOD_CFG)
    c.update(kw)
    return c


def _boot(flash):
    """What run() does before the room: load config.json, start a trial, bring the
    Wi-Fi up. Returns (cfg, trial); raises OSError when the Wi-Fi fails (main.py then
    resets the board) or _Reset when the config was reverted."""
    cfg = config.load()
    trial = lastgood.Trial(cfg)
    app._wifi(cfg, None, trial, FakeMachine)
    return cfg, trial


def _connect(room, cfg, trial):
    """What run() does next: join, each failure counted against a config on trial."""
    return app._connect_forever(room, cfg, lambda why, e: app._failed(trial, why, FakeMachine,
                                                                       lastgood.failure_kind(e)))


def _boot_fails(flash):
    try:
        _boot(flash)
    except OSError as e:
        return str(e)
    raise AssertionError("the Wi-Fi came up")


def _boot_resets(flash):
    try:
        _boot(flash)
    except _Reset:
        return
    raise AssertionError("the board did not reset into the last good config")


# A config.json as a person or an old deploy might have written it: its bytes must be
# kept exactly in config.rejected.json.
BAD_TEXT = '{ "wifi": {"ssid": "absent-ap", "password": "pw"},\n  "relay": "tcp://10.0.0.2:7880",' \
           ' "token": "tok-good", "revert_after_s": 1, "name": "pump-7" }\n'


def test_a_config_that_joined_becomes_the_last_good_one():
    with Flash() as flash:
        config.save(_cfg())
        cfg, trial = _boot(flash)
        assert not trial.on and not flash.exists("GOOD")  # nothing to go back to yet
        trial.joined()
        assert lastgood.load_good() == cfg and "recorded as the last good config" in flash.log()
        # joined again with the same config: the file is not written again (flash wear)
        flash.write("GOOD", json.dumps(cfg) + "\n\n")
        _boot(flash)[1].joined()
        assert _read(lastgood.GOOD).endswith(b"\n\n"), "config.good.json written again"
        # a new config that joins replaces it, and ends its trial
        config.save(_cfg(token="tok-2"))
        cfg2, trial = _boot(flash)
        assert trial.on
        trial.failed("connect to x failed: refused", lastgood.TOKEN)
        assert flash.exists("TRIAL")
        trial.joined()
        assert lastgood.load_good() == cfg2 and not flash.exists("TRIAL")


def test_a_config_with_a_bad_ssid_goes_back_to_the_last_good_one():
    with Flash(absent=["absent-ap"], wifi_ms=1000) as flash:
        config.save(GOOD_CFG, lastgood.GOOD)
        flash.write("PATH", BAD_TEXT)
        _boot_resets(flash)  # the first failure (1.2 s) is past revert_after_s (1 s)
        assert flash.network.connects == ["absent-ap"]
        assert config.load() == GOOD_CFG, "config.json is not the last good config"
        assert _read(lastgood.REJECTED) == BAD_TEXT.encode(), "the rejected config was not kept as it was"
        log = flash.log()
        assert "could not reach the room" in log and "'absent-ap'" in log and "STAT_NO_AP_FOUND" in log, log
        assert "config.good.json" in log and "config.rejected.json" in log and "resetting" in log, log
        # the next boot: the good config, not on trial, and it says it was reverted
        cfg, trial = _boot(flash)
        assert flash.network.connects == ["absent-ap", "home"]
        assert not trial.on and "'absent-ap'" in trial.reverted
        trial.joined()
        assert lastgood.Trial(cfg).reverted == trial.reverted, "the revert note did not outlive the join"
        assert _read(lastgood.REJECTED) == BAD_TEXT.encode()


def test_time_on_trial_adds_up_across_resets():
    # each failed Wi-Fi attempt is followed by a reset: the time tried is kept on flash
    with Flash(absent=["absent-ap"], wifi_ms=500) as flash:
        config.save(GOOD_CFG, lastgood.GOOD)
        config.save(_cfg(wifi={"ssid": "absent-ap"}, revert_after_s=1))
        assert "STAT_NO_AP_FOUND" in _boot_fails(flash)  # ~0.6 s tried: not yet
        note = json.loads(_read(lastgood.TRIAL))
        assert 500 <= note["tried_ms"] < 1000 and "absent-ap" in note["why"], note
        assert config.load()["wifi"]["ssid"] == "absent-ap" and not flash.exists("REJECTED")
        _boot_resets(flash)  # ~1.2 s in all
        assert config.load() == GOOD_CFG


async def _resets(aw):
    """Await `aw` (joining), which must end in a reset into the last good config."""
    try:
        await aw
    except _Reset:
        return
    raise AssertionError("joined")


def _on_trial(flash, **changes):
    """Boot on a config differing from the last good one by `changes` (revert_after_s 1)."""
    config.save(GOOD_CFG, lastgood.GOOD)
    config.save(_cfg(revert_after_s=1, **changes))
    return _boot(flash)


async def test_a_config_that_cannot_reach_its_relay_goes_back_to_the_last_good_one():
    with Flash() as flash:
        cfg, trial = _on_trial(flash, relay="tcp://10.0.0.3:7880")
        assert trial.on and trial.changed == [lastgood.RELAY]
        room = FailingRoom()
        await _resets(_connect(room, cfg, trial))
        assert room.attempts >= 10, room.attempts  # 5, 10, 20, 20, ... ms apart for 1 s
        assert config.load() == GOOD_CFG
        assert json.loads(_read(lastgood.REJECTED))["relay"] == "tcp://10.0.0.3:7880"
        assert "connection refused" in flash.log()


async def test_a_new_token_is_not_reverted_for_an_outage_only_when_the_relay_refuses_it():
    # a rotated token during a relay outage: going back to the old token (which may
    # have expired meanwhile) would strand the board; only a refusal counts
    with Flash() as flash:
        cfg, trial = _on_trial(flash, token="tok-new")
        assert trial.on and trial.changed == [lastgood.TOKEN]
        room = FailingRoom()
        task = app.asyncio.create_task(_connect(room, cfg, trial))
        await app._sleep_ms(1300)   # unreachable for longer than revert_after_s
        assert not task.done() and not flash.exists("TRIAL") and not flash.exists("REJECTED")
        room.leave_code = 3   # the relay is back, and refuses the new token
        await _resets(task)
        assert config.load() == GOOD_CFG and json.loads(_read(lastgood.REJECTED))["token"] == "tok-new"
        assert "LEAVE 3" in flash.log()


async def test_only_failures_that_the_change_explains_count():
    with Flash() as flash:
        # only the Wi-Fi changed: a refused token is not its doing (the good config has it too)
        cfg, trial = _on_trial(flash, wifi={"ssid": "home2", "password": "pw"})
        assert trial.changed == [lastgood.WIFI]
        room = FailingRoom(leave_code=3)
        task = app.asyncio.create_task(_connect(room, cfg, trial))
        await app._sleep_ms(1300)
        assert not task.done() and not flash.exists("REJECTED")
        room.leave_code = None   # but a relay it cannot reach may be the new network's doing
        await _resets(task)
        assert config.load() == GOOD_CFG


async def test_a_failing_network_does_not_revert_a_config_that_joined():
    # the last good config itself, or one that differs only in keys that do not decide
    # joining (here its name): an outage of any length is waited out
    with Flash(absent=["home"], wifi_ms=1000) as flash:
        config.save(GOOD_CFG, lastgood.GOOD)
        config.save(_cfg(name="pump-8", revert_after_s=1))
        for _ in range(2):
            assert "'home'" in _boot_fails(flash)  # 1.2 s each, past revert_after_s
        flash.network.absent = []
        cfg, trial = _boot(flash)
        assert not trial.on
        room = FailingRoom()
        task = app.asyncio.create_task(_connect(room, cfg, trial))
        await app._sleep_ms(1200)
        room.ok = True
        await task  # no _Reset
        assert room.attempts >= 10, room.attempts
        trial.joined()
        assert config.load()["name"] == "pump-8" and lastgood.load_good()["name"] == "pump-8"
        assert not flash.exists("REJECTED") and not flash.exists("TRIAL")
        assert "went back" not in flash.log()


async def test_with_no_last_good_config_the_board_keeps_retrying():
    with Flash(absent=["absent-ap"], wifi_ms=1000) as flash:
        config.save(_cfg(wifi={"ssid": "absent-ap"}, revert_after_s=1))
        for _ in range(2):
            _boot_fails(flash)
        assert not flash.exists("TRIAL") and not flash.exists("REJECTED"), "flash written for nothing"
        flash.network.absent = []
        cfg, trial = _boot(flash)
        room = FailingRoom()
        task = app.asyncio.create_task(_connect(room, cfg, trial))
        await app._sleep_ms(1200)
        room.ok = True
        await task
        trial.joined()
        assert lastgood.load_good() == cfg and not flash.exists("REJECTED")


def test_a_wifi_attempt_that_fails_at_once_still_counts_as_a_whole_attempt():
    # e.g. wlan.connect() raising at once for a password the port refuses: without a
    # minimum each boot would add ~0 ms and the board would reset for ever
    class Refusing(FakeNetwork):
        def WLAN(self, interface):
            w = _FakeWlan(self)

            def connect(ssid, password):
                raise RuntimeError("Wifi Invalid Password")   # not even an OSError
            w.connect = connect
            return w
    with Flash(wifi_ms=600) as flash:
        flash.network = Refusing([])
        sys.modules["network"] = flash.network
        config.save(GOOD_CFG, lastgood.GOOD)
        config.save(_cfg(wifi={"ssid": "home", "password": "x"}, revert_after_s=1))
        try:
            _boot(flash)
        except RuntimeError:
            pass
        assert json.loads(_read(lastgood.TRIAL))["tried_ms"] >= 600
        _boot_resets(flash)   # the second attempt: 1.2 s counted, past 1 s
        assert config.load() == GOOD_CFG


def test_when_the_good_config_cannot_be_written_the_trial_note_stays():
    with Flash() as flash:
        config.save(GOOD_CFG, lastgood.GOOD)
        config.save(_cfg(token="tok-2", revert_after_s=100))
        cfg, trial = _boot(flash)
        trial.failed("the relay refused to join: LEAVE 3", lastgood.TOKEN)
        assert flash.exists("TRIAL")
        save = config.save

        def full(c, path=None):
            if path == lastgood.GOOD:
                raise OSError(28, "ENOSPC")
            return save(c, path)
        config.save = full
        try:
            trial.joined()
        finally:
            config.save = save
        assert flash.exists("TRIAL") and lastgood.load_good() == GOOD_CFG
        assert "not written" in flash.log()


def test_a_malformed_trial_note_or_good_file_does_not_stop_the_board():
    with Flash() as flash:
        flash.write("GOOD", "[1, 2")
        flash.write("TRIAL", '{"keys": 5, "tried_ms": "x"}')
        config.save(_cfg())
        cfg, trial = _boot(flash)
        assert not trial.on and trial.reverted is None
        assert "config.good.json is not valid JSON" in flash.log().replace(PREFIX, "")
        config.save(GOOD_CFG, lastgood.GOOD)
        flash.write("TRIAL", json.dumps({"keys": lastgood.join_keys(_cfg(token="t2")), "tried_ms": "x"}))
        config.save(_cfg(token="t2"))
        trial = _boot(flash)[1]
        assert trial.on and trial.base == 0


class _Data:
    def __init__(self, payload):
        self.payload = payload
        self.caller_identity = "ops"


def test_config_update_says_whether_the_new_config_is_on_trial():
    with Flash() as flash:
        config.save(GOOD_CFG)
        a = methods.App(None, GOOD_CFG, {}, None, 0)
        # no config has joined yet: nothing to go back to
        r = json.loads(a.config_update(_Data('{"wifi": {"ssid": "x", "password": "y"}}')))
        assert r == {"updated": ["wifi"], "effective": "after reboot", "on_trial": False, "revert_after_s": 300}, r
        config.save(GOOD_CFG)
        config.save(GOOD_CFG, lastgood.GOOD)
        r = json.loads(a.config_update(_Data('{"name": "pump-9", "revert_after_s": 60}')))
        assert r["on_trial"] is False and r["revert_after_s"] == 60, r
        # (a token: config.update reads its payload, not its signature; GOOD_CFG's names no identity)
        token = ".".join(binascii.b2a_base64(b).decode().strip().rstrip("=")
                         for b in (b'{"alg":"HS256"}', b'{"sub":"pump-7","exp":4000000000}', b"sig"))
        for patch in ('{"wifi": {"ssid": "x", "password": "y"}}', '{"relay": "tcp://10.0.0.3:7880"}',
                      '{"token": "%s"}' % token):
            config.save(GOOD_CFG)
            r = json.loads(a.config_update(_Data(patch)))
            assert r["on_trial"] is True and r["revert_after_s"] == 300, (patch, r)
        assert "on trial after the reboot" in flash.log()
        for bad in ('{"revert_after_s": 0}', '{"revert_after_s": 1e9}', '{"revert_after_s": "5"}'):
            try:
                methods._config_patch(bad)
            except Exception as e:
                assert getattr(e, "code", None) == methods.E_BAD_CONFIG, (bad, e)
            else:
                raise AssertionError("config.update %s accepted" % bad)


def test_device_info_shows_a_reverted_config():
    if sys.implementation.name != "micropython":
        return  # device.info reads gc.mem_free() and time.ticks_ms(): a board's API only
    class _Room:
        class local_participant:
            identity = "b"
    a = methods.App(_Room(), GOOD_CFG, {}, FakeMachine, 0)
    assert json.loads(a.device_info(None))["config_reverted"] is None
    a.config_reverted = "config.json could not reach the room"
    assert json.loads(a.device_info(None))["config_reverted"] == "config.json could not reach the room"


def test_the_revert_note_goes_once_a_newer_config_joins():
    # after going back, a config.update that keeps the Wi-Fi, relay and token (a new
    # name) and joins is newer than the config gone back to: config_reverted ends there
    with Flash(absent=["absent-ap"], wifi_ms=1000) as flash:
        config.save(GOOD_CFG, lastgood.GOOD)
        flash.write("PATH", BAD_TEXT)
        _boot_resets(flash)
        cfg, trial = _boot(flash)
        trial.joined()   # the config gone back to joined: the note stays
        assert trial.reverted and lastgood.Trial(cfg).reverted == trial.reverted
        config.save(_cfg(name="pump-9"))
        cfg, trial = _boot(flash)
        assert not trial.on and trial.reverted, "shown until the new config has joined"
        trial.joined()
        assert trial.reverted is None and not flash.exists("TRIAL")
        assert lastgood.Trial(cfg).reverted is None and lastgood.load_good()["name"] == "pump-9"


# ------------------------------------------- joining: the flash log and the backoff
def _connect_lines(log):
    return [line for line in log.split("\n") if "connect to tcp://10.0.0.2:7880 failed" in line]


async def test_the_same_connect_failure_goes_to_the_flash_log_once_then_hourly_with_a_count():
    # an expired token retried for ever wrote one line per attempt: ~290 KB a day into a
    # 64 KiB log, its history gone in hours
    saved = app.CONNECT_LOG_EVERY_MS, app.UNAUTHORIZED_RETRY_MS
    app.UNAUTHORIZED_RETRY_MS = 20
    try:
        with Flash() as flash:
            room = FailingRoom()
            task = app.asyncio.create_task(app._connect_forever(room, _cfg()))
            await app._sleep_ms(300)   # 5, 10, 20, 20, ... ms apart: ~15 attempts
            assert room.attempts >= 8 and len(_connect_lines(flash.log())) == 1, flash.log()
            n = room.attempts
            room.leave_code = 3   # another failure: logged at once, with the count of the first
            await app._sleep_ms(100)
            lines = _connect_lines(flash.log())
            assert lines[1].endswith("connection refused: %d more times, not logged" % (n - 1)), lines
            assert "LEAVE 3 token expired" in lines[2], lines
            assert len(lines) == 3, lines   # those since: the console's only
            app.CONNECT_LOG_EVERY_MS = 0   # an hour has passed: the same failure again, with a count
            quiet = room.attempts - n - 1
            assert quiet >= 2, quiet
            await app._sleep_ms(60)
            lines = _connect_lines(flash.log())
            assert lines[3].endswith("LEAVE 3 token expired (%d more times since the last line, not logged)" % quiet), \
                lines
            room.ok = True
            await task
    finally:
        app.CONNECT_LOG_EVERY_MS, app.UNAUTHORIZED_RETRY_MS = saved


async def test_a_refused_token_is_retried_less_often_than_an_unreachable_relay():
    saved = app.UNAUTHORIZED_RETRY_MS
    app.UNAUTHORIZED_RETRY_MS = 200   # 300 s on a board
    try:
        with Flash():
            counts = []
            for leave_code in (None, 3):
                room = FailingRoom(leave_code)
                task = app.asyncio.create_task(app._connect_forever(room, _cfg()))
                await app._sleep_ms(500)
                counts.append(room.attempts)
                room.ok = True
                await task
            assert counts[0] >= 15 and counts[1] <= 4, counts   # RETRY_MAX_MS is 20 here
            # a config on trial is judged within revert_after_s all the same (above, 1 s)
            room = FailingRoom(3)
            task = app.asyncio.create_task(app._connect_forever(room, _cfg(revert_after_s=0.1)))
            await app._sleep_ms(500)
            assert room.attempts >= 4, room.attempts
            room.ok = True
            await task
    finally:
        app.UNAUTHORIZED_RETRY_MS = saved


async def test_a_wifi_that_stays_down_goes_to_the_flash_log_once_then_with_a_count():
    # one line per attempt (every 5 min at most): a week without its access point
    # wrote ~200 KB into the 64 KiB log, its history gone
    saved = app.WIFI_RETRY_MIN_MS, app.WIFI_RETRY_MAX_MS
    app.WIFI_RETRY_MIN_MS, app.WIFI_RETRY_MAX_MS = 5, 20
    try:
        with Flash(absent=["home"], wifi_ms=5) as flash:
            task = app.asyncio.create_task(app._wifi_forever(_cfg(wifi={"ssid": "home"}), None, FakeMachine()))
            await app._sleep_ms(1000)   # each attempt: ~200 ms of polling, then 5, 10, 20 ms
            tries = len(flash.network.connects)
            lines = [ln for ln in flash.log().split("\n") if "Wi-Fi 'home': no connection" in ln]
            assert tries >= 3 and len(lines) == 1, (tries, flash.log())
            flash.network.absent = []   # the access point is back (an attempt under way may still fail)
            await task
            lines = [ln for ln in flash.log().split("\n") if "Wi-Fi 'home': no connection" in ln]
            assert len(lines) <= 4 and [ln for ln in lines if "more times, not logged" in ln], lines
            assert "(STAT_NO_AP_FOUND); trying again with backoff" in lines[0], lines
    finally:
        app.WIFI_RETRY_MIN_MS, app.WIFI_RETRY_MAX_MS = saved


def _trial_at(changed_cfg, clock):
    """A Trial of changed_cfg against GOOD_CFG, with lastgood's clock read from clock[0]."""
    config.save(GOOD_CFG, lastgood.GOOD)
    saved = lastgood.now_ms
    lastgood.now_ms = lambda: clock[0]
    try:
        return lastgood.Trial(changed_cfg), saved
    except BaseException:
        lastgood.now_ms = saved
        raise


def test_only_failures_that_what_changed_can_explain_count_against_a_config_on_trial():
    # the table in lastgood's docstring, each change against each failure kind
    W, R, T = lastgood.WIFI, lastgood.RELAY, lastgood.TOKEN
    changes = {W: {"wifi": {"ssid": "other", "password": "pw"}}, R: {"relay": "tcp://10.0.0.9:7880"},
               T: {"token": "tok-new"}}
    counts = {W: (W, R), R: (R, T), T: (T,)}   # change -> the failure kinds that count
    for change, kw in changes.items():
        for kind in (W, R, T):
            with Flash():
                clock = [1000]
                trial, saved = _trial_at(_cfg(revert_after_s=3600, **kw), clock)
                try:
                    assert trial.on and trial.changed == [change]
                    clock[0] = 1700
                    assert trial.failed("why", kind) is False
                    counted = kind in counts[change]
                    assert trial.base == (700 if counted else 0), (change, kind, trial.base)
                    note = json.loads(_read(lastgood.TRIAL) or b"{}")
                    assert note.get("tried_ms") == (700 if counted else None), (change, kind, note)
                finally:
                    lastgood.now_ms = saved


def test_trial_time_counts_from_the_previous_failure_and_at_least_the_attempts_minimum():
    with Flash():
        clock = [1000]
        trial, saved = _trial_at(_cfg(relay="tcp://10.0.0.9:7880", revert_after_s=3600), clock)
        try:
            clock[0] = 1500
            trial.failed("refused", lastgood.RELAY)             # 500 since the boot
            assert trial.base == 500
            clock[0] = 1600
            trial.failed("no wifi", lastgood.WIFI, at_least_ms=20000)  # an outage: not counted
            assert trial.base == 500
            clock[0] = 1650
            trial.failed("refused", lastgood.RELAY)             # 50 since the outage, not 150
            assert trial.base == 550
            clock[0] = 1700
            trial.failed("refused", lastgood.RELAY, at_least_ms=2000)  # 50 took, 2000 counted
            assert trial.base == 2550
            assert json.loads(_read(lastgood.TRIAL))["tried_ms"] == 2550
        finally:
            lastgood.now_ms = saved


class _Waits:
    """app._sleep_ms recording its waits and returning at once (use with `with`)."""

    def __enter__(self):
        self.saved = app._sleep_ms
        self.ms = []

        async def sleep_ms(ms):
            self.ms.append(ms)
        app._sleep_ms = sleep_ms
        return self

    def __exit__(self, *exc):
        app._sleep_ms = self.saved


async def test_the_wifi_is_tried_again_doubling_the_wait_up_to_its_cap_and_a_memory_error_is_raised():
    fails = [9]

    def steps(cfg):
        if fails[0]:
            fails[0] -= 1
            raise OSError("no AP")
        return [250]                          # the attempt that works: one poll
    saved = app._wifi_steps
    app._wifi_steps = steps
    try:
        with Flash(), _Waits() as waits:
            await app._wifi_forever(_cfg(), None, FakeMachine())
            assert waits.ms == [5000, 10000, 20000, 40000, 80000, 160000, 300000, 300000, 300000, 250], waits.ms

            class Retried(BaseException):
                pass
            calls = []

            def no_heap(cfg):
                calls.append(1)
                raise MemoryError() if len(calls) == 1 else Retried()
            app._wifi_steps = no_heap
            try:
                await app._wifi_forever(_cfg(), None, FakeMachine())
            except MemoryError:
                pass                          # main.py's handler resets the board
            except Retried:
                raise AssertionError("a MemoryError must not be retried as a Wi-Fi failure")
            assert calls == [1] and waits.ms[-1] == 250
    finally:
        app._wifi_steps = saved


async def test_joining_is_tried_again_doubling_up_to_its_cap_and_a_refused_token_waits_longer():
    class Refusing:
        def __init__(self, codes):
            self.codes = codes

        async def connect(self, url, token):
            if self.codes:
                raise ConnectError("refused", self.codes.pop(0))
    with Flash(), _Waits() as waits:
        app.RETRY_MIN_MS, app.RETRY_MAX_MS = 1000, 30000   # the firmware's (Flash shortens them)
        await app._connect_forever(Refusing([None] * 7), _cfg())
        assert waits.ms == [1000, 2000, 4000, 8000, 16000, 30000, 30000], waits.ms
        del waits.ms[:]
        # LEAVE 3: a person must deploy a new token; the wait is UNAUTHORIZED_RETRY_MS,
        # or revert_after_s when shorter, and never less than the backoff
        await app._connect_forever(Refusing([3, None, 3]), _cfg(revert_after_s=3600))
        await app._connect_forever(Refusing([None, None, 3]), _cfg(revert_after_s=1))
        assert waits.ms == [app.UNAUTHORIZED_RETRY_MS, 2000, app.UNAUTHORIZED_RETRY_MS,
                            1000, 2000, 4000], waits.ms
