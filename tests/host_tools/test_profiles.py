"""Board profiles (boards/*.json): contents, validation errors, and the toolchain facts
they state, checked against the real mpy-cross and micropython binaries."""
import copy
import json
import os
import subprocess
import sys

import pytest

from lkedge.config import RoomOptions
from lkedge_host import profiles

BIN = os.path.dirname(sys.executable)


def _bad(tmp_path, mutate, base="esp32"):
    p = copy.deepcopy(profiles.load(base))
    mutate(p)
    path = tmp_path / (p["name"] + ".json")
    path.write_text(json.dumps(p))
    with pytest.raises(profiles.ProfileError) as e:
        profiles.load(str(path))
    return str(e.value)


def test_the_five_boards_exist_and_validate():
    assert profiles.names() == ["esp32", "esp32s3", "picow", "picow-romfs", "unix"]
    for name in profiles.names():
        assert profiles.load(name)["name"] == name


def test_heaps_are_realistic_for_each_board():
    heap = dict((n, profiles.load(n)["heap"]) for n in profiles.names())
    assert 100 * 1024 <= heap["esp32"] <= 120 * 1024      # ESP32 without PSRAM
    assert heap["esp32s3"] >= 2 * 1024 * 1024              # PSRAM: several MiB
    assert 150 * 1024 <= heap["picow"] <= 170 * 1024       # RP2040
    assert heap["picow-romfs"] == heap["picow"]             # the same board, another firmware
    assert heap["unix"] == 1024 * 1024


def test_compression_is_advertised_only_where_the_inflate_window_fits():
    assert profiles.load("esp32")["link"]["advertise_compression"] is False
    for name in profiles.names():
        p = profiles.load(name)
        if p["link"]["advertise_compression"]:
            assert p["heap"] >= profiles.MIN_HEAP_FOR_INFLATE


def test_advertising_compression_on_a_tight_heap_is_rejected(tmp_path):
    msg = _bad(tmp_path, lambda p: p["link"].update(advertise_compression=True))
    assert "advertise_compression" in msg and "inflate" in msg and "esp32.json" in msg


def test_missing_and_wrong_keys_name_the_key_and_file(tmp_path):
    msg = _bad(tmp_path, lambda p: p.pop("heap"))
    assert "'heap' must be an integer" in msg and "esp32.json" in msg
    assert "'mpy.march'" in _bad(tmp_path, lambda p: p["mpy"].update(march="z80"))
    assert "'client_protocol'" in _bad(tmp_path, lambda p: p["link"].update(client_protocol=5))
    assert "needs 'pin'" in _bad(tmp_path, lambda p: p["sensors"].append({"name": "x", "kind": "adc"}))
    assert "duplicate sensor" in _bad(tmp_path, lambda p: p["sensors"].append(dict(p["sensors"][0])))
    assert "below the minimum" in _bad(tmp_path, lambda p: p.update(heap=1000))
    assert "RP2040 watchdog" in _bad(tmp_path, lambda p: p.update(watchdog_ms=9000), base="picow")


def test_name_must_match_the_file(tmp_path):
    p = profiles.load("esp32")
    path = tmp_path / "other.json"
    path.write_text(json.dumps(p))
    with pytest.raises(profiles.ProfileError, match="'name' is 'esp32' but the file is other.json"):
        profiles.load(str(path))


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(profiles.ProfileError, match="no board profile 'esp8266'.*esp32, esp32s3, picow, picow-romfs, unix"):
        profiles.load("esp8266")


def test_invalid_json_is_reported(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{nope")
    with pytest.raises(profiles.ProfileError, match="not valid JSON"):
        profiles.load(str(path))


def test_architectures_match_the_chips():
    march = dict((n, profiles.load(n)["mpy"]["march"]) for n in profiles.names())
    assert march == {"esp32": "xtensawin", "esp32s3": "xtensawin", "picow": "armv6m", "picow-romfs": "armv6m",
                     "unix": "host"}


def test_mpy_version_matches_mpy_cross_and_the_interpreter(tmp_path):
    from lkedge_host.deploy import mpy_cross_version
    emitted = mpy_cross_version(os.path.join(BIN, "mpy-cross"))
    r = subprocess.run([os.path.join(BIN, "micropython"), "-c",
                        "import sys; print(sys.implementation._mpy & 0xff)"], capture_output=True, text=True)
    assert int(r.stdout) == emitted
    src = tmp_path / "m.py"
    src.write_text("@micropython.native\ndef f(x):\n    return x + 1\n")
    for name in profiles.names():
        p = profiles.load(name)
        assert p["mpy"]["version"] == emitted
        out = tmp_path / (name + ".mpy")
        r = subprocess.run([os.path.join(BIN, "mpy-cross")] + profiles.mpy_cross_args(p) + ["-o", str(out), str(src)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr  # native code needs a real architecture
        assert out.read_bytes()[:2] == b"M" + bytes([emitted])


def test_board_json_is_the_profile_and_configures_room_options():
    for name in profiles.names():
        p = profiles.load(name)
        on_board = json.loads(profiles.board_json(p))
        assert on_board == p
        opts = RoomOptions.for_board(on_board)
        assert opts.read_buffer == p["link"]["read_buffer"]
        assert opts.max_streams == p["link"]["max_streams"]
        assert opts.advertise_compression == p["link"]["advertise_compression"]


@pytest.mark.parametrize("key", ["max_values", "max_rpc_payload"])
def test_optional_int_link_keys_are_checked_and_reach_room_options(tmp_path, key):
    # max_rpc_payload: what a board's heap can gather for a buffered handler differs by
    # board (README, "max_rpc_payload"), so a profile says it
    import json
    from lkedge.config import RoomOptions
    p = profiles.load("esp32")
    p["link"][key] = 12000
    f = tmp_path / "esp32.json"
    f.write_text(json.dumps(p))
    assert getattr(RoomOptions.for_board(profiles.load(str(f))), key) == 12000
    for bad in (0, "12K", 1.5, None):
        p["link"][key] = bad
        f.write_text(json.dumps(p))
        with pytest.raises(profiles.ProfileError) as e:
            profiles.load(str(f))
        assert key in str(e.value)


@pytest.mark.parametrize("key, board_default, good, bad", [
    ("evict_idle_ms", 60000, 5000, (0, "60s", 1.5)),
    ("max_attributes", 16384, 4096, (-1, "16k", 1.5)),
    ("max_participants", 24, 8, (0, "24", 1.5)),   # the board read it; nothing checked it
    # a board inflates inside its one link reader: a 255 KB bomb claiming 256 MiB held
    # it (every call 1501) for 99 s; hosts take up to 1 GiB
    ("max_inflated", 16 << 20, 1 << 20, (0, "16M", 1.5)),
    # and 16 KB of deflated zeros held it 6.3 s: the work per compressed byte is bounded
    ("max_inflate_ratio", 100, 40, (0, "100x", 2.5)),
])
def test_optional_int_or_null_link_keys_are_checked_and_reach_room_options(tmp_path, key, board_default,
                                                                           good, bad):
    import json
    from lkedge.config import RoomOptions
    p = profiles.load("esp32")
    assert getattr(RoomOptions.for_board(p), key) == board_default   # the default without the key
    if key == "max_attributes":
        assert RoomOptions().max_attributes is None                   # a host's: no cap
    if key == "max_inflated":
        assert RoomOptions().max_inflated == (1 << 30) - 1
    if key == "max_inflate_ratio":
        assert RoomOptions().max_inflate_ratio is None                # a host's: no cap
    f = tmp_path / "esp32.json"
    for value in (good, None):
        p["link"][key] = value
        f.write_text(json.dumps(p))
        assert getattr(RoomOptions.for_board(profiles.load(str(f))), key) == value
    for value in bad:
        p["link"][key] = value
        f.write_text(json.dumps(p))
        with pytest.raises(profiles.ProfileError) as e:
            profiles.load(str(f))
        assert key in str(e.value)


@pytest.mark.parametrize("key, value, words", [
    ("max_strems", 2, "unknown RoomOptions setting 'max_strems'"),   # was ignored: the board kept its 4
    ("ping_interval_ms", 0, "RoomOptions.ping_interval_ms is an int over 0, got 0"),
    ("compress", "yes", "RoomOptions.compress is True or False"),
])
def test_a_link_key_the_board_would_refuse_is_refused_when_the_profile_is_loaded(tmp_path, key, value, words):
    import json
    from lkedge.config import RoomOptions
    p = profiles.load("esp32")
    p["link"][key] = value
    f = tmp_path / "esp32.json"
    f.write_text(json.dumps(p))
    with pytest.raises(profiles.ProfileError) as e:
        profiles.load(str(f))
    assert words in str(e.value) and "esp32.json link" in str(e.value), str(e.value)
    with pytest.raises((TypeError, ValueError)) as e:   # and by the board's own RoomOptions
        RoomOptions.for_board(p)
    assert words in str(e.value)
    p["link"][key] = {"max_strems": 4, "ping_interval_ms": 5000, "compress": False}[key]
    if key != "max_strems":   # a RoomOptions setting other than the usual link keys is taken
        f.write_text(json.dumps(p))
        assert getattr(RoomOptions.for_board(profiles.load(str(f))), key) == p["link"][key]


def test_only_picow_romfs_has_a_romfs_partition_and_it_freezes_nothing():
    has = dict((n, profiles.load(n).get("romfs_bytes", 0)) for n in profiles.names())
    assert has == {"esp32": 0, "esp32s3": 0, "picow": 0, "picow-romfs": 256 * 1024, "unix": 0}
    # the library goes to the partition instead of being frozen into the firmware
    assert "frozen" not in profiles.load("picow-romfs") and profiles.load("picow")["frozen"]


def test_a_romfs_partition_is_whole_flash_blocks_of_a_sane_size(tmp_path):
    assert "multiple of 4096" in _bad(tmp_path, lambda p: p.update(romfs_bytes=5000))
    assert "below the minimum 4096" in _bad(tmp_path, lambda p: p.update(romfs_bytes=-4096))
    assert "above the maximum" in _bad(tmp_path, lambda p: p.update(romfs_bytes=32 * 1024 * 1024))
    assert "'romfs_bytes' must be an integer" in _bad(tmp_path, lambda p: p.update(romfs_bytes="256K"))
