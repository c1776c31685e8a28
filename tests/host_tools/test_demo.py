"""`make demo` end to end: the same function the make target runs (lkedge_host.demo),
with the real relay, the emulated ESP32 (MicroPython unix port with the profile's
heap), the real mpremote and mpy-cross, and the firmware from firmware/."""
import hashlib
import io

from lkedge_host import board, demo, profiles


def test_make_demo_moves_a_mebibyte_both_ways_on_the_esp32_profile():
    out = io.StringIO()
    res = demo.run_demo("esp32", 1 << 20, out)
    text = out.getvalue()
    prof = profiles.load("esp32")
    # the board ran the firmware under the esp32 profile with that profile's heap
    assert res.info["board"] == "esp32" and res.info["identity"] == demo.BOARD_IDENTITY
    total = res.info["mem_free"] + res.info["mem_alloc"]
    assert res.interpreter_heap == board.interpreter_heapsize(prof["heap"], prof["frozen"])
    assert 0.95 * res.interpreter_heap <= total <= res.interpreter_heap, (total, res.interpreter_heap)
    assert 0 < res.mem_free_start <= prof["heap"]
    assert res.info["firmware"] and res.info["micropython"].startswith("1.")
    # the sensors of the profile, read through the emulated machine/esp32 modules
    assert set(res.sensors) == set(s["name"] for s in prof["sensors"])
    assert all(isinstance(res.sensors[s], (int, float)) for s in res.sensors)
    # file.get: the deterministic MiB as written, as on the board, as received
    expect_get = hashlib.sha256(demo.test_bytes(1 << 20)).hexdigest()
    assert res.file_size == 1 << 20
    assert res.sha_local == res.sha_board_get == res.sha_pulled == expect_get
    # file.put: as sent, as the board counted it, as file.stat reads it back
    expect_put = hashlib.sha256(demo.test_bytes(1 << 20, seed=b"lkedge-demo-upload")).hexdigest()
    assert res.sha_pushed == res.sha_put == res.sha_board_put == expect_put
    names = [s[0] for s in res.steps]
    assert names == ["device.info", "sensors.read", "file.get", "file.put", "file.stat", "file.stat"]
    for name, seconds, free, low, summary in res.steps:
        assert seconds > 0 and 0 < free <= prof["heap"], (name, free)
    lows = dict((s[0], s[3]) for s in res.steps)
    assert lows["file.get"] and lows["file.put"], "heap sampled during both transfers"
    assert "all" in text and "mem_free" in text and expect_get[:16] in text


def test_demo_result_checks_catch_a_sha_mismatch():
    res = demo.DemoResult()
    res.profile_name = "esp32"
    res.info = {"board": "esp32"}
    res.file_size = 10
    res.sha_local = res.sha_board_get = res.sha_pulled = "a"
    res.sha_pushed = res.sha_put = "b"
    res.sha_board_put = "c"
    try:
        demo.check(res, 10)
    except demo.DemoError as e:
        assert "file.put SHA-256 mismatch" in str(e)
    else:
        raise AssertionError("a mismatching file.put hash passed the demo's check")
