"""Reads the sensors a board profile lists (profile.json "sensors").

Each sensor: {"name": "temp", "kind": "adc", "pin": 34, "scale": 0.1, "offset": -40}
or {"kind": "internal_temp"} (the RP2040's ADC channel 4 / the ESP32's
esp32.raw_temperature()). Values are floats; a sensor that fails reads as None
with its error, so one broken sensor never hides the others.
"""


def _read(s):
    import machine
    kind = s.get("kind", "adc")
    if kind == "adc":
        raw = machine.ADC(machine.Pin(s["pin"])).read_u16()
        return raw * s.get("scale", 1.0) + s.get("offset", 0.0)
    if kind == "internal_temp":
        try:
            import esp32
            return (esp32.raw_temperature() - 32) / 1.8
        except ImportError:
            raw = machine.ADC(4).read_u16() * 3.3 / 65535
            return 27 - (raw - 0.706) / 0.001721
    if kind == "pin":
        return machine.Pin(s["pin"], machine.Pin.IN).value()
    raise ValueError("unknown sensor kind %r" % kind)


def read_all(profile):
    out = {}
    for s in profile.get("sensors", ()):
        name = s.get("name", "?")
        try:
            out[name] = _read(s)
        except Exception as e:
            out[name] = None
            out[name + ".error"] = str(e)
    return out
