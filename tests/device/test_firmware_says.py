"""What the firmware says when a field user gets something wrong, or the flash is full:
each message names the cause and what to do (firmware/files.py, config.py, app.py).
Apart from test_firmware_files.py: under MicroPython a test module's bytecode is in
the heap, and that module's log.tail test needs a 32 KB block.

Runs under CPython and MicroPython; files are made in the working directory with a
per-test prefix and removed afterwards.
"""
import binascii
import os

MP_HEAPSIZE = "256K"

import firmware_path  # noqa: E402,F401  (firmware/ on sys.path)

import config  # noqa: E402
import files  # noqa: E402
import methods  # noqa: E402
from lkedge.rpc import RpcError  # noqa: E402
from telemetry_helpers import FlakyTelemetry  # noqa: E402
from test_firmware_files import _content, _Flash, _put_body, _put_error, _tmp, _absent  # noqa: E402

PREFIX = "fwsays_test_%s_" % binascii.hexlify(os.urandom(3)).decode()
_rm = firmware_path.rm


def _patch_error(payload):
    try:
        r = methods._config_patch(payload)
    except RpcError as e:
        return e
    raise AssertionError("config.update %s was accepted: %r" % (payload, r))


def test_a_config_value_of_the_wrong_type_says_what_the_key_takes():
    # it said "config key 'token' has the wrong type NoneType"
    assert config.problem("token", None) == "config key 'token' has the wrong type null: it takes a string"
    for payload, said in (('{"token": null}', "'token' has the wrong type null: it takes a string"),
                          ('{"wifi": []}', "'wifi' has the wrong type array: it takes an object"),
                          ('{"rejoin_s": "5"}', "'rejoin_s' has the wrong type string: it takes a number"),
                          ('{"telemetry_to": false}', "'telemetry_to' has the wrong type true/false: it takes a "
                                                      "string"),
                          ('{"telemetry_interval_s": {}}', "has the wrong type object: it takes a number")):
        e = _patch_error(payload)
        assert e.code == methods.E_BAD_CONFIG and said in e.message, (payload, e.message)


async def test_a_put_without_its_header_line_says_so():
    # `base64 up.bin | lkedge call BOARD file.put -`: the first line is base64, and it was
    # refused as 4000 "the request must be a JSON object"
    body = binascii.b2a_base64(_content(200))   # base64 wraps: several lines
    for text in (body, b"\n" + body, b"  QUJD\n"):
        e = await _put_error(text)
        assert e.code == files.E_NO_HEADER and "no header line" in e.message and "{\"path\": ...}" in e.message, \
            e.message
    assert repr(body[:16].decode()) in (await _put_error(body)).message
    # a header that is JSON, but broken, is still "not JSON"
    assert (await _put_error(b'{"path": \nQUJD')).code == files.E_NOT_JSON


async def test_a_put_that_finds_no_space_says_how_much_it_needed_and_whether_an_old_file_was_kept():
    # it said "(the old file is kept)" when there was none, and not what the upload needed
    name = PREFIX + "big.bin"
    try:
        with _Flash(free=4096 + 3000 + 4):
            e = await _put_error(_put_body(name, _content(5000)), 500)
            assert e.code == files.E_WRITE and "no space for %s after " % name in e.message, e.message
            needed = int(e.message.split("needs at least ")[1].split(" ")[0])
            assert 3004 < needed <= 5000 and "file.delete makes room" in e.message, e.message
            assert len(e.message.encode()) < 256, e.message   # RpcError cuts a message there
            assert e.data == "nothing is written: there was no %s before" % name, e.data
            assert "old" not in e.message
            _absent(name, _tmp(name))
        with open(name, "wb") as f:
            f.write(b"good")
        with _Flash(free=4096 + 3000 + 4):
            e = await _put_error(_put_body(name, _content(5000)), 500)
            assert e.data.startswith("the old %s (4 bytes) is kept" % name) and "file.delete it first" in e.data, \
                e.data
            with open(name, "rb") as f:
                assert f.read() == b"good"
    finally:
        _rm(name, _tmp(name))
    assert not files._writing


async def test_a_sample_the_full_flash_refused_says_the_flash_is_full_and_how_to_free_it():
    # it said "telemetry sample not queued: OSError(28,)"
    import asyncio
    import app
    import flashlog
    saved = flashlog.LOG, flashlog.OLD
    flashlog.LOG, flashlog.OLD = PREFIX + "log.txt", PREFIX + "log.old"
    tel = FlakyTelemetry(2)
    try:
        task = asyncio.create_task(app._telemetry_loop(tel, {"sensors": []}, 1))
        for _ in range(200):
            if tel.samples:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with open(flashlog.LOG) as f:
            log = f.read()
        assert "telemetry sample not queued: the flash is full (OSError 28, ENOSPC)" in log, log
        assert "file.list" in log and "file.delete" in log and "counted as dropped" in log, log
        assert "ValueError" in app._why(ValueError("x")) and "full" not in app._why(OSError(5))
    finally:
        _rm(flashlog.LOG, flashlog.OLD)
        flashlog.LOG, flashlog.OLD = saved
