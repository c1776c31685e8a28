"""The firmware's config.json loading and checks (firmware/config.py, config.update in
methods.py), the flash log's bounds (flashlog.py) and the telemetry loop's resilience
(app.py), without a room.

Runs under CPython and MicroPython; files are made in the working directory with a
per-test prefix and removed afterwards (the flash log is pointed at a prefixed file).
"""
import binascii
import json
import os

MP_HEAPSIZE = "320K"  # the firmware runs from source here; the flash log test needs a 30 KB block

import firmware_path  # noqa: E402,F401  (firmware/ on sys.path)

import config  # noqa: E402
import flashlog  # noqa: E402
import methods  # noqa: E402
from lkedge.rpc import RpcError  # noqa: E402
from telemetry_helpers import FlakyTelemetry  # noqa: E402

# A name of its own per run: the suite runs this module in parallel workers and
# under MicroPython at the same time, all in one working directory.
PREFIX = "fwconfig_test_%s_" % binascii.hexlify(os.urandom(3)).decode()


_rm = firmware_path.rm


class FlashLog:
    """flashlog writes to prefixed files for the test (use with `with`); .text() reads it."""

    def __enter__(self):
        self.saved = (flashlog.LOG, flashlog.OLD)
        flashlog.LOG, flashlog.OLD = PREFIX + "log.txt", PREFIX + "log.old"
        _rm(flashlog.LOG, flashlog.OLD)
        return self

    def __exit__(self, *exc):
        _rm(flashlog.LOG, flashlog.OLD)
        flashlog.LOG, flashlog.OLD = self.saved

    def text(self):
        try:
            with open(flashlog.LOG) as f:
                return f.read()
        except OSError:
            return ""


def _load(text):
    path = PREFIX + "config.json"
    with open(path, "w") as f:
        f.write(text)
    try:
        return config.load(path)
    finally:
        _rm(path)


def test_a_malformed_config_file_gives_the_defaults_and_says_why():
    with FlashLog() as log:
        for text, why in (('{"relay": "tcp://h:1", ', "not valid JSON"), ("[1, 2]", "JSON object"),
                          ("\xff\xfe", "")):
            assert _load(text) == config.DEFAULTS, text
            assert why in log.text(), (text, log.text())
        assert config.load(PREFIX + "missing.json") == config.DEFAULTS


def test_bad_keys_fall_back_to_their_defaults_one_by_one():
    text = ('{"relay": "nonsense", "token": 5, "wifi": {"ssid": 5}, "telemetry_interval_s": 1e400,'
            ' "rejoin_s": 0, "revert_after_s": 1e6, "telemetry_to": "collector", "name": "pump-7",'
            ' "newer_key": [1]}')
    with FlashLog() as log:
        cfg = _load(text)
        assert cfg["telemetry_to"] == "collector" and cfg["name"] == "pump-7" and cfg["newer_key"] == [1]
        for k in ("relay", "token", "wifi", "telemetry_interval_s", "rejoin_s", "revert_after_s"):
            assert cfg[k] == config.DEFAULTS[k], k
            assert "'%s'" % k in log.text() or k + " must" in log.text(), (k, log.text())
    # what a good deploy writes comes through whole
    good = {"relay": "tcp://10.0.0.2:7880", "token": "t", "wifi": {"ssid": "s", "password": "p"},
            "telemetry_to": "", "telemetry_interval_s": 0.5, "rejoin_s": 5, "revert_after_s": 600, "name": "b"}
    assert _load(json.dumps(good)) == good


def _code(payload):
    try:
        r = methods._config_patch(payload)
    except RpcError as e:
        return e.code
    raise AssertionError("config.update %s was accepted: %r" % (payload, r))


def test_config_update_refuses_values_the_board_could_not_boot_with():
    for payload in ('{"telemetry_interval_s": 1e400}', '{"telemetry_interval_s": 1e9}',
                    '{"wifi": {"ssid": 5}}', '{"wifi": {"ssid": "x", "pw": "y"}}',
                    '{"relay": "nonsense"}', '{"relay": "tcp://host"}', '{"revert_after_s": 0.5}'):
        assert _code(payload) == methods.E_BAD_CONFIG, payload
    assert methods._config_patch('{"wifi": {"ssid": "x", "password": "y"}, "relay": "ws://h:80/x"}') == {
        "wifi": {"ssid": "x", "password": "y"}, "relay": "ws://h:80/x"}


def test_the_flash_log_stays_bounded_one_line_per_message():
    with FlashLog() as log:
        flashlog.error("x" * 30000)  # (not 100000: in a 256K heap that fails for want of a free block)
        flashlog.info("two\nlines\r\x00" + "\u00e9" * 2000)
        lines = log.text().split("\n")
        assert len(lines) == 3 and lines[2] == "", lines[2:]
        for line in lines[:2]:
            assert len(line) <= flashlog.LINE_MAX and line.endswith("..."), len(line)
        assert "two\\u000alines" in lines[1]
        # line breaks and tabs alone are escaped too: a caller's identity in a logged
        # message cannot forge a line (mutation review)
        flashlog.info("by eve\n2026-12-06 ERROR forged line")
        flashlog.info("tab\there")
        last = log.text().split("\n")[-3:]
        assert "by eve\\u000a2026-12-06 ERROR forged line" in last[0] and "tab\\u0009here" in last[1], last
        for i in range(200):
            flashlog.info("%d %s" % (i, "y" * 500))
        for p in (flashlog.LOG, flashlog.OLD):
            assert 0 < os.stat(p)[6] <= flashlog.LOG_MAX, p


async def test_the_telemetry_loop_keeps_going_after_a_sample_fails():
    import asyncio
    import app
    tel = FlakyTelemetry(3)
    with FlashLog() as log:
        task = asyncio.create_task(app._telemetry_loop(tel, {"sensors": []}, 1))
        # three failed samples, then two: each of the five turns starts a flush (as a
        # task of its own: the last may start after this test next wakes, so wait for it)
        for _ in range(200):
            if tel.samples >= 2 and tel.flushes >= 5:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        assert tel.samples >= 2 and tel.flushes >= 5, (tel.samples, tel.flushes)
        assert log.text().count("telemetry sample not queued") == 1, log.text()


class _FakeRoom:
    """A room as the app sees it: between two of its own retries it is "disconnected"
    with no final LEAVE code; after a final LEAVE it has given up."""

    def __init__(self):
        self.connection_state = "disconnected"
        self.leave_code = None
        self.last_error = "cannot reach the relay"
        self.name = "r"
        self.connects = 0

    async def connect(self, url, token):
        self.connects += 1
        self.connection_state = "connected"
        self.leave_code = None


async def test_the_app_rejoins_only_a_room_that_gave_up():
    # The Room retries by itself after a link loss and is "disconnected" while it waits
    # between attempts: a second connect() from the app then would race the Room's own
    # (two links, or "already connected" retried forever). Only a final LEAVE is the
    # app's to repair.
    import asyncio
    import app
    room = _FakeRoom()
    with FlashLog() as log:
        task = asyncio.create_task(app._stay_joined(room, {"rejoin_s": 0.02, "relay": "tcp://h:1", "token": "t"}))
        await asyncio.sleep(0.2)
        assert room.connects == 0, "connected over the Room's own retries"
        room.leave_code = 3   # the relay refused the token: the Room gave up
        for _ in range(100):
            if room.connects:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        assert room.connects == 1 and room.connection_state == "connected", room.connects
        assert "joining again" in log.text(), log.text()


def test_config_text_that_is_not_utf8_is_refused_and_never_echoed():
    # MicroPython's json makes a str of "\ud800" that is not UTF-8: a name saved so made
    # every device.info answer invalid, for good (it was even kept as the last good config)
    for payload in ('{"name": "\\ud800"}', '{"name": "pump-\\udfff"}', '{"token": "a\\ud83db"}',
                    '{"telemetry_to": "\\ud800"}', '{"wifi": {"ssid": "\\ud800", "password": "p"}}',
                    '{"wifi": {"ssid": "s", "\\ud800": "p"}}', '{"\\ud800": 1}'):
        try:
            methods._config_patch(payload)
        except RpcError as e:
            assert e.code == methods.E_BAD_CONFIG and config.is_text(e.message), (payload, e.message)
        else:
            raise AssertionError("config.update %s was accepted" % payload)
    assert methods._config_patch('{"name": "pump-\\u00e9\U0001f600"}') == {"name": "pump-\u00e9\U0001f600"}


def test_a_config_file_with_text_that_is_not_utf8_falls_back_key_by_key():
    with FlashLog() as log:
        cfg = _load('{"name": "\\ud800", "token": "t", "wifi": {"ssid": "\\udc00"}}')
        assert cfg["name"] == "" and cfg["wifi"] == {} and cfg["token"] == "t", cfg
        assert "'name'" in log.text() and "'wifi'" in log.text() and config.is_text(log.text()), log.text()


def test_a_save_the_flash_refuses_leaves_the_old_file_and_no_tmp_behind():
    # config.save, the lastgood copies and the telemetry files write through a .tmp;
    # a failed one left its .tmp, which file.delete then refused as the firmware's own
    folder = PREFIX + "dir"
    os.mkdir(folder)   # a rename onto a folder fails, as a full flash fails the write
    try:
        try:
            config.save({"name": "x"}, folder)
            raise AssertionError("saved onto a folder")
        except OSError:
            pass
        assert not firmware_path.exists(folder + ".tmp")
        good = PREFIX + "good.json"
        config.replace(good, b'{"name": "b"}')
        with open(good) as f:
            assert json.load(f) == {"name": "b"}
    finally:
        firmware_path.rm(PREFIX + "good.json", folder + ".tmp")
        os.rmdir(folder)


def test_each_numeric_key_takes_its_bounds_and_refuses_just_past_them():
    bounds = {"telemetry_interval_s": (0.1, 86400), "wifi_timeout_s": (1, 300),
              "rejoin_s": (1, 86400), "revert_after_s": (1, 86400)}
    for key, (low, high) in bounds.items():
        for ok in (low, high, (low + high) / 2):
            assert config.problem(key, ok) is None, (key, ok)
        for bad in (low - 0.01, high + 0.01, float("nan")):
            said = config.problem(key, bad)
            assert said is not None and key in said and ("%r" % (bad,)) in said, (key, bad, said)
        assert "wrong type" in config.problem(key, True)


def test_a_profile_whose_link_the_library_refuses_is_logged_and_the_board_runs_with_its_defaults():
    import app
    with FlashLog() as log:
        opts = app._room_options({"name": "x", "link": {"read_buffer": 1024, "ping_interval_ms": 0}})
        assert opts.ping_interval_ms > 0 and opts.read_buffer == 512   # the board defaults, whole
        assert "profile.json link: RoomOptions.ping_interval_ms" in log.text()
        assert "running with the board defaults" in log.text()
    with FlashLog() as log:
        assert app._room_options({"name": "x", "link": {"read_buffer": 1024}}).read_buffer == 1024
        assert app._room_options({"name": "x", "heap": 1}).read_buffer == 512   # no "link": nothing changes
        assert "profile.json" not in log.text()

def _jwt(claims):
    """A JWT of `claims` as the board sees one: it reads the payload, cannot check the
    signature (it has no secret), so the signature here is a stand-in."""
    def part(b):
        return binascii.b2a_base64(b).decode().strip().rstrip("=").replace("+", "-").replace("/", "_")
    return part(b'{"alg":"HS256","typ":"JWT"}') + "." + part(json.dumps(claims).encode()) + ".c2ln"


def _token_said(payload, identity="field-1", now=1800000000, token=None):
    try:
        r = methods._config_patch(payload, identity, now, token)
    except RpcError as e:
        assert e.code == methods.E_BAD_CONFIG, (payload, e.code, e.message)
        return e.message
    raise AssertionError("config.update %s was accepted: %r" % (payload, r))


def test_config_update_refuses_a_token_that_cannot_be_the_boards():
    # It took any token: one for another identity made the board rejoin as that one
    # (and the trial never reverted: the join worked), an expired one locked it out.
    good = _jwt({"sub": "field-1", "exp": 1800000600, "video": {"room": "lkedge", "roomJoin": True}})
    assert methods._config_patch(json.dumps({"token": good}), "field-1", 1800000000) == {"token": good}
    # the payload is base64url: '-' and '_' where base64 has '+' and '/'
    odd = _jwt({"sub": "field-1", "exp": 1800000600, "name": "\u00ff\u00fe>>>?"})
    assert "-" in odd.split(".")[1] or "_" in odd.split(".")[1], odd
    assert methods._config_patch(json.dumps({"token": odd}), "field-1", 1800000000) == {"token": odd}
    for token, said in (("abc", "not a JWT"), ("", "not a JWT"), ("a.b", "not a JWT"),
                        ("a.!!!!.c", "not base64url JSON"), (_jwt([1, 2]), "not a JSON object"),
                        ("x" * 5000, "more than a token's"),
                        (_jwt({"exp": 1800000600}), 'no "sub"'), (_jwt({"sub": "field-1"}), 'no number "exp"'),
                        (_jwt({"sub": "field-1", "exp": "1800000600"}), 'no number "exp"'),
                        (_jwt({"sub": "field-9", "exp": 1800000600}), "for identity 'field-9', not this board's "
                                                                       "'field-1'"),
                        (_jwt({"sub": "field-1", "exp": 1799999990}), "expired 10 s ago")):
        msg = _token_said(json.dumps({"token": token}))
        assert msg.startswith("config key 'token'") and said in msg, (token[:40], msg)
    # the clock not set (None): an expiry cannot be judged, the rest still is
    old = _jwt({"sub": "field-1", "exp": 1000})
    assert methods._config_patch(json.dumps({"token": old}), "field-1", None) == {"token": old}
    # not joined yet: the board's identity is the one its current token names
    assert "not this board's 'field-1'" in _token_said(json.dumps({"token": _jwt({"sub": "x", "exp": 1800000600})}),
                                                       None, token=good)
    # no identity known at all (a board deployed without a token): any sub goes
    other = _jwt({"sub": "x", "exp": 1800000600})
    assert methods._config_patch(json.dumps({"token": other}), None, 1800000000, "") == {"token": other}


def test_config_update_checks_a_token_against_the_room_identity_and_the_boards_clock():
    import telemetry

    class _Room:
        class local_participant:
            identity = "field-1"

    path = PREFIX + "config.json"
    saved = config.PATH
    config.PATH = path
    try:
        config.save(dict(config.DEFAULTS, token=_jwt({"sub": "field-1", "exp": 1})))
        a = methods.App(_Room(), config.load(), {}, None, 0)
        with FlashLog():
            for claims, said in (({"sub": "field-9", "exp": 4000000000}, "not this board's 'field-1'"),
                                 ({"sub": "field-1", "exp": 1000}, "expired")):
                try:
                    a.config_update(methods_data(json.dumps({"token": _jwt(claims)})))
                except RpcError as e:
                    assert e.code == methods.E_BAD_CONFIG and said in e.message, e.message
                else:
                    raise AssertionError("config.update took %r" % claims)
            assert config.load()["token"] == _jwt({"sub": "field-1", "exp": 1}), "a refused token was saved"
            assert telemetry.wall_time() is not None  # the host's clock is set: expiry was judged by it
            fresh = _jwt({"sub": "field-1", "exp": 4000000000})
            assert json.loads(a.config_update(methods_data(json.dumps({"token": fresh}))))["updated"] == ["token"]
            assert config.load()["token"] == fresh
    finally:
        config.PATH = saved
        _rm(path, path + ".tmp")


class methods_data:
    caller_identity = "tester"

    def __init__(self, payload):
        self.payload = payload
