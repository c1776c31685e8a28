"""Board profiles (boards/<name>.json): load, validate, and derive what the tools need.

A profile is plain JSON data read by the firmware (deployed as /profile.json) and by the
host tools (emulator heap, mpy-cross architecture). Keys:

    name          the file's base name ("esp32")
    description   one line for people
    port          "esp32" | "rp2" | "unix" (which emulated built-ins the board has)
    chip          optional: the chip a real board names last in sys.implementation._machine
                  ("Generic ESP32S3 module with ESP32S3" -> "ESP32S3"); `lkedge deploy`
                  refuses a board of another chip (same port, other pins and heap)
    heap          free MicroPython heap in bytes that the firmware sees after boot
    cpu_hz        machine.freq()
    mpy           {"march": mpy-cross -march value, "version": .mpy major version}
    link          lkedge.config.RoomOptions.for_board() settings: read_buffer,
                  piece_size, max_field, max_frame, max_streams (ints > 0), optional
                  max_values (int > 0; default RoomOptions.for_board()'s),
                  max_rpc_payload (int > 0: the largest request a buffered handler
                  takes, UTF-8 bytes; default RoomOptions.for_board()'s 16384),
                  evict_idle_ms (int > 0, or null: streams never give way; default
                  RoomOptions' 60000), max_attributes (int > 0, or null: no cap;
                  default RoomOptions.for_board()'s 16384), max_participants (int >
                  0, or null: no cap; default RoomOptions.for_board()'s 24),
                  max_inflated (int > 0, or null: a compressed stream is held to its
                  total_length alone; default RoomOptions.for_board()'s 16 MiB),
                  max_inflate_ratio (int > 0, or
                  null: no cap; default RoomOptions.for_board()'s 100),
                  advertise_compression (bool), client_protocol (0..2); any other
                  key must be a RoomOptions setting too (checked as RoomOptions
                  checks it: a misspelled key would otherwise go unnoticed)
    pins          {"led": 2, ...} role -> pin id (int, or str such as "LED")
    sensors       [{"name", "kind": "adc"|"internal_temp"|"pin", "pin", "scale", "offset"}]
    watchdog_ms   0 = no watchdog, else the machine.WDT timeout the firmware arms
    telemetry_queue_bytes   bound of the firmware's telemetry queue
    frozen        [module, ...] modules frozen into this board's firmware (manifest.py):
                  their bytecode lives in flash, not in the heap. The emulated board
                  loads them before it measures the heap it hands to user code.
    romfs_bytes   optional: the size of the firmware's ROMFS partition (MicroPython 1.25+
                  built with MICROPY_VFS_ROM; a multiple of 4096), where `lkedge deploy
                  --romfs` puts the library so that its bytecode runs from flash; absent
                  or 0: no partition. The emulated board keeps it in FLASH.romfs.

API: load(name_or_path) -> dict, names() -> list, path_of(name) -> str,
board_json(profile) -> bytes (the /profile.json payload), mpy_cross_args(profile) ->
list, ProfileError (ValueError).
"""
import json
import os

from lkedge_host import ROOT

BOARDS_DIR = os.path.join(ROOT, "boards")

PORTS = ("esp32", "rp2", "unix")
MARCHES = ("x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
           "xtensa", "xtensawin", "rv32imc", "rv64imc", "host", "debug")
SENSOR_KINDS = ("adc", "internal_temp", "pin")
LINK_INTS = ("read_buffer", "piece_size", "max_field", "max_frame", "max_streams")
MIN_HEAP = 16 * 1024
# Inflating a raw-deflate stream holds a 32 KiB window plus state (~33 KiB, WIRE.md).
# Advertising CAP_COMPRESSION_DEFLATE_RAW is only sane when that is at most a quarter
# of the free heap, so a fragmented heap still has a contiguous block for it.
INFLATE_BYTES = 33 * 1024
MIN_HEAP_FOR_INFLATE = 4 * INFLATE_BYTES
RP2_MAX_WATCHDOG_MS = 8388  # the RP2040 watchdog counter's limit
ROMFS_BLOCK = 4096  # a flash erase block: a ROMFS partition is a whole number of them
MAX_ROMFS = 16 * 1024 * 1024  # the largest flash of the boards we know


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the key."""


def names():
    """Profile names available in boards/, sorted."""
    return sorted(f[:-5] for f in os.listdir(BOARDS_DIR) if f.endswith(".json"))


def path_of(name_or_path):
    """A profile name ("esp32") or a path to a .json file -> the file path."""
    if os.sep in name_or_path or name_or_path.endswith(".json"):
        return name_or_path
    return os.path.join(BOARDS_DIR, name_or_path + ".json")


def load(name_or_path):
    """Read and validate a profile; raises ProfileError with the reason."""
    path = path_of(name_or_path)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ProfileError("no board profile %r (%s); known profiles: %s"
                           % (name_or_path, path, ", ".join(names()))) from None
    except json.JSONDecodeError as e:
        raise ProfileError("%s is not valid JSON: %s" % (path, e)) from None
    validate(data, path)
    return data


def _need(cond, where, msg):
    if not cond:
        raise ProfileError("%s: %s" % (where, msg))


def _int(d, key, where, lo=None, hi=None):
    v = d.get(key)
    _need(isinstance(v, int) and not isinstance(v, bool), where,
          "%r must be an integer, got %r" % (key, v))
    _need(lo is None or v >= lo, where, "%r = %d is below the minimum %d" % (key, v, lo or 0))
    _need(hi is None or v <= hi, where, "%r = %d is above the maximum %d" % (key, v, hi or 0))
    return v


def validate(p, where="profile"):
    """Check every key the tools and the firmware rely on (see the module docstring)."""
    _need(isinstance(p, dict), where, "a profile is a JSON object, got %s" % type(p).__name__)
    base = os.path.basename(where)
    _need(isinstance(p.get("name"), str) and p["name"], where, "'name' must be a non-empty string")
    _need(not base.endswith(".json") or base[:-5] == p["name"], where,
          "'name' is %r but the file is %s: a profile is known by its name, so a copy names "
          "itself as its file does (\"name\": %s)" % (p["name"], base, json.dumps(base[:-5])))
    _need(p.get("port") in PORTS, where, "'port' must be one of %s, got %r" % (PORTS, p.get("port")))
    _need("chip" not in p or isinstance(p["chip"], str) and p["chip"] and " " not in p["chip"], where,
          "'chip' must be one word such as \"ESP32S3\" (the end of the board's "
          "sys.implementation._machine), got %r" % (p.get("chip"),))
    heap = _int(p, "heap", where, lo=MIN_HEAP)
    _int(p, "cpu_hz", where, lo=1)
    _validate_mpy(p.get("mpy"), where)
    _validate_link(p.get("link"), heap, where)
    _validate_pins(p.get("pins", {}), where)
    _validate_sensors(p.get("sensors", []), where)
    wd = _int(p, "watchdog_ms", where, lo=0)
    _need(p["port"] != "rp2" or wd <= RP2_MAX_WATCHDOG_MS, where,
          "'watchdog_ms' = %d exceeds the RP2040 watchdog limit of %d ms" % (wd, RP2_MAX_WATCHDOG_MS))
    _int(p, "telemetry_queue_bytes", where, lo=256, hi=heap)
    frozen = p.get("frozen", [])
    _need(isinstance(frozen, list) and all(isinstance(m, str) and m for m in frozen), where,
          "'frozen' must be a list of module names, got %r" % (frozen,))
    if p.get("romfs_bytes"):
        romfs = _int(p, "romfs_bytes", where, lo=ROMFS_BLOCK, hi=MAX_ROMFS)
        _need(romfs % ROMFS_BLOCK == 0, where, "'romfs_bytes' = %d must be a multiple of %d (the flash's "
              "erase block)" % (romfs, ROMFS_BLOCK))


def _validate_mpy(mpy, where):
    _need(isinstance(mpy, dict), where, "'mpy' must be an object {\"march\", \"version\"}")
    _need(mpy.get("march") in MARCHES, where,
          "'mpy.march' must be an mpy-cross -march value (%s), got %r" % (", ".join(MARCHES), mpy.get("march")))
    _int(mpy, "version", where + " mpy", lo=1)


def _validate_link(link, heap, where):
    _need(isinstance(link, dict), where, "'link' must be an object")
    for key in LINK_INTS:
        _int(link, key, where + " link", lo=1)
    for key in ("max_values", "max_rpc_payload"):   # optional ints
        if key in link:
            _int(link, key, where + " link", lo=1)
    for key in ("evict_idle_ms", "max_attributes", "max_participants", "max_inflated",
                "max_inflate_ratio"):   # optional: an int, or null for none
        if link.get(key) is not None:
            _int(link, key, where + " link", lo=1)
    _need(link["read_buffer"] + link["piece_size"] <= heap // 4, where,
          "link read_buffer + piece_size (%d) must stay under a quarter of the heap (%d)"
          % (link["read_buffer"] + link["piece_size"], heap // 4))
    _int(link, "client_protocol", where + " link", lo=0, hi=2)
    adv = link.get("advertise_compression")
    _need(isinstance(adv, bool), where, "'link.advertise_compression' must be true or false")
    _need(not adv or heap >= MIN_HEAP_FOR_INFLATE, where,
          "advertise_compression needs ~%d bytes for the 32 KiB inflate window; with heap %d "
          "the profile must not advertise it (minimum heap %d)" % (INFLATE_BYTES, heap, MIN_HEAP_FOR_INFLATE))
    _need(not adv or link["client_protocol"] >= 2, where,
          "advertise_compression needs client_protocol 2 (STREAMS.md)")
    from lkedge.config import RoomOptions
    try:   # the rest as the board checks it: every key a RoomOptions setting, of its type
        RoomOptions.for_board({"link": link})
    except (TypeError, ValueError) as e:
        raise ProfileError("%s link: %s" % (where, e)) from None


def _validate_pins(pins, where):
    _need(isinstance(pins, dict), where, "'pins' must be an object of role -> pin")
    for role, pin in pins.items():
        _need(isinstance(pin, (int, str)) and not isinstance(pin, bool), where,
              "pin %r must be an integer or a name, got %r" % (role, pin))


def _validate_sensors(sensors, where):
    _need(isinstance(sensors, list), where, "'sensors' must be a list")
    seen = set()
    for i, s in enumerate(sensors):
        at = "%s sensors[%d]" % (where, i)
        _need(isinstance(s, dict), at, "a sensor is an object")
        _need(isinstance(s.get("name"), str) and s["name"], at, "'name' must be a non-empty string")
        _need(s["name"] not in seen, at, "duplicate sensor name %r" % s["name"])
        seen.add(s["name"])
        _need(s.get("kind") in SENSOR_KINDS, at, "'kind' must be one of %s, got %r" % (SENSOR_KINDS, s.get("kind")))
        if s["kind"] in ("adc", "pin"):
            _need(isinstance(s.get("pin"), (int, str)) and not isinstance(s.get("pin"), bool), at,
                  "a %s sensor needs 'pin'" % s["kind"])
        for k in ("scale", "offset"):
            _need(k not in s or isinstance(s[k], (int, float)) and not isinstance(s[k], bool), at,
                  "%r must be a number" % k)


def board_json(profile):
    """The /profile.json written to the board: the profile itself, compact, key-sorted."""
    return json.dumps(profile, sort_keys=True, separators=(",", ":")).encode()


def mpy_cross_args(profile):
    """mpy-cross options for this board's architecture (native code needs the right one)."""
    return ["-march=" + profile["mpy"]["march"]]
