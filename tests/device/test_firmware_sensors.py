"""sensors.read's values (firmware/sensors.py): a reading that is not a finite number
(NaN, infinity) is reported like a failed sensor, None plus "<name>.error", so the
answer stays valid JSON. The ADC is a named fake of the board's `machine` module.

Runs under CPython and MicroPython.
"""
import json
import sys

import firmware_path  # noqa: F401  (firmware/ on sys.path)

import sensors  # noqa: E402


class FakeMachine:
    """FAKE of the board's `machine` module: every ADC reads 1000, every Pin 1."""

    class Pin:
        IN = 1

        def __init__(self, pin, mode=None):
            self.pin = pin

        def value(self):
            return 1

    class ADC:
        def __init__(self, pin):
            self.pin = pin

        def read_u16(self):
            return 1000


def _read_all(profile):
    saved = sys.modules.get("machine")
    sys.modules["machine"] = FakeMachine
    try:
        return sensors.read_all(profile)
    finally:
        if saved is None:
            sys.modules.pop("machine", None)
        else:
            sys.modules["machine"] = saved


def test_a_reading_that_is_not_a_finite_number_is_null_with_an_error_naming_the_sensor():
    nan, inf = float("nan"), float("inf")
    out = _read_all({"sensors": [
        {"name": "light_v", "kind": "adc", "pin": 34, "scale": 0.001},
        {"name": "floating", "kind": "adc", "pin": 35, "scale": nan},
        {"name": "hot", "kind": "adc", "pin": 36, "scale": inf},
        {"name": "cold", "kind": "adc", "pin": 37, "offset": -inf},
        {"name": "button", "kind": "pin", "pin": 0},
        {"name": "odd", "kind": "nope"},
    ]})
    assert out["light_v"] == 1.0 and out["button"] == 1 and "light_v.error" not in out, out
    for name, shown in (("floating", "nan"), ("hot", "inf"), ("cold", "-inf")):
        assert out[name] is None, (name, out)
        assert out[name + ".error"] == "%s read %s, not a finite number" % (name, shown), out
    assert out["odd"] is None and "unknown sensor kind" in out["odd.error"]
    # the answer is JSON every peer accepts (NaN and Infinity are not JSON)
    text = json.dumps(out)
    assert "NaN" not in text and "Infinity" not in text and json.loads(text) == out, text
