"""The board's config file, config.json on flash (written by `lkedge deploy`).

    {"relay": "tcp://192.168.1.10:7880",   link URL of the relay
     "token": "<LiveKit access token>",    identity and room come from it
     "wifi": {"ssid": "...", "password": "..."},
     "telemetry_to": "collector",          identity that receives telemetry ("" = off)
     "telemetry_interval_s": 10,           0.1 .. 86400
     "rejoin_s": 60,                       1 .. 86400: how soon to join again after the
                                           room gave up (a final LEAVE)
     "revert_after_s": 300,                1 .. 86400: how long a config whose Wi-Fi,
                                           relay or token never joined may try to reach
                                           the room before the board goes back to the
                                           last good one (lastgood.py)
     "name": "pump-7",                     a label shown by device.info
     "wifi_timeout_s": 20}                 optional, 1 .. 300: how long one Wi-Fi attempt
                                           waits to associate (slow access points)

load() never raises: a missing file gives the defaults; a malformed one, or a key of
the wrong type, out of range or holding text that is not UTF-8, is named in the flash
log and replaced by its default, so a bad config can never put the board into a reset
loop (the app keeps running and retrying, and mpremote or config.update can fix it).
config.update checks each key with problem() before anything is written.

Next to it (lastgood.py): config.good.json, the last config the board joined the room
with; config.rejected.json, a config that could not reach the room and was reverted;
config.trial.json, the bookkeeping of a config on trial.
"""
import json

PATH = "config.json"
DEFAULTS = {"relay": "tcp://127.0.0.1:7880", "token": "", "wifi": {}, "telemetry_to": "",
            "telemetry_interval_s": 10, "rejoin_s": 60, "revert_after_s": 300, "name": ""}
TYPES = {"relay": str, "token": str, "wifi": dict, "telemetry_to": str,
         "telemetry_interval_s": (int, float), "rejoin_s": (int, float),
         "revert_after_s": (int, float), "name": str, "wifi_timeout_s": (int, float)}
INTERVAL_MAX_S = 86400
# MicroPython's json keeps a \ud800-\udfff escape as is, even a pair that CPython joins
NOT_TEXT = " (a \\ud800-\\udfff escape? send characters past U+FFFF unescaped)"


def is_text(s):
    """Whether str `s` is valid UTF-8 text. MicroPython's json makes a str of a JSON
    escape such as "\\ud800" that is not: such a str must not name a file, be stored
    or be echoed in an answer (the answer would not be valid UTF-8 either)."""
    from lkedge.utf8 import encoded, text
    try:
        text(encoded(s))
        return True
    except ValueError:  # UnicodeError is one (CPython: encoded() raises it)
        return False


def _bad_text(value):
    """True when `value` is, or a dict holding as a key or value, a str that is not
    valid UTF-8 text."""
    if isinstance(value, dict):
        for k in value:
            if _bad_text(k) or _bad_text(value[k]):
                return True
        return False
    return isinstance(value, str) and not is_text(value)


def _json_type(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true/false"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "string", dict: "object", list: "array"}.get(type(v), type(v).__name__)


def problem(key, value):
    """Why `value` cannot be config key `key` (a message), or None when it can."""
    if _bad_text(key):
        return "a config key is not UTF-8 text" + NOT_TEXT
    want = TYPES.get(key)
    if want is None:
        return "unknown config key %r; known: %s" % (key, ", ".join(sorted(TYPES)))
    if not isinstance(value, want) or isinstance(value, bool):
        return "config key %r has the wrong type %s: it takes %s" % (
            key, _json_type(value), "a string" if want is str else "an object" if want is dict else "a number")
    if _bad_text(value):
        return "config key %r: its text is not UTF-8" % (key,) + NOT_TEXT
    if key == "telemetry_interval_s" and not 0.1 <= value <= INTERVAL_MAX_S:  # also NaN
        return "telemetry_interval_s must be between 0.1 and %d, got %r" % (INTERVAL_MAX_S, value)
    if key == "wifi_timeout_s" and not 1 <= value <= 300:
        return "wifi_timeout_s must be between 1 and 300, got %r" % (value,)
    if key in ("rejoin_s", "revert_after_s") and not 1 <= value <= INTERVAL_MAX_S:
        return "%s must be between 1 and %d, got %r" % (key, INTERVAL_MAX_S, value)
    if key == "wifi":
        for k in value:
            if k not in ("ssid", "password") or not isinstance(value[k], str):
                return "config key 'wifi' takes {\"ssid\": str, \"password\": str}, not %r: %r" % (k, value[k])
    if key == "relay":
        from lkedge.transport import parse_url
        try:
            parse_url(value)
        except OSError as e:
            return "config key 'relay': %s" % (e,)
    return None


def _log(msg):
    import flashlog
    flashlog.error(msg)


def read(path, instead):
    """The JSON object in `path`, or None: a missing file silently, a malformed one
    named in the flash log ("...: `instead`")."""
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError:
        return None
    except ValueError as e:  # also a UnicodeError
        _log("%s is not valid JSON (%s): %s" % (path, e, instead))
        return None
    if not isinstance(d, dict):
        _log("%s must hold a JSON object, not %s: %s" % (path, type(d).__name__, instead))
        return None
    return d


def load(path=None):
    path = path or PATH
    return checked(read(path, "running on the defaults"), path)


def checked(d, path):
    """Config dict `d` (read from `path`) with the defaults filled in and bad keys
    replaced by their defaults (each named in the flash log)."""
    cfg = dict(DEFAULTS)
    if d is None:
        return cfg  # no config yet: defaults, the app reports the missing token
    for k in d:
        why = problem(k, d[k])
        if why is None or k not in TYPES:
            cfg[k] = d[k]  # unknown keys are kept (a newer deploy may write them)
        else:
            _log("%s: %s: using the default %r" % (path, why, DEFAULTS.get(k, "built in")))
    return cfg


def save(cfg, path=None):
    replace(path or PATH, json.dumps(cfg))


def replace(path, data):
    """Write `data` (str or bytes) to `path` through path.tmp and a rename, so a power
    cut leaves the old file or the new one; a write the flash refuses (full) raises its
    OSError and leaves no .tmp behind (file.delete keeps those: the firmware's own)."""
    import os
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.rename(tmp, path)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def load_profile(path="profile.json"):
    try:
        with open(path) as f:
            p = json.load(f)
        if isinstance(p, dict):
            return p
        _log("%s must hold a JSON object: running without pins or sensors" % path)
    except OSError:
        pass
    except ValueError as e:
        _log("%s is not valid JSON (%s): running without pins or sensors" % (path, e))
    return {"name": "unknown", "link": {}, "sensors": []}
