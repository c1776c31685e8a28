"""Reads the sensors a board profile lists (profile.json "sensors").

Each sensor: {"name": "temp", "kind": "adc", "pin": 34, "scale": 0.1, "offset": -40}
or {"kind": "internal_temp"} (the RP2040's ADC channel 4 / the ESP32's
esp32.raw_temperature()). Values are numbers; a sensor that fails reads as None
with its error under "<name>.error", so one broken sensor never hides the others. A
reading that is not a finite number (NaN or infinity: a floating ADC, a broken
scale) counts as a failure too: None, with "<name>.error" saying "<name> read nan, not
a finite number" (JSON has no NaN: most peers would refuse the whole answer).
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
            v = _read(s)
            if isinstance(v, float) and v - v != 0:  # NaN and +-inf (finite: v - v == 0)
                raise ValueError("%s read %r, not a finite number" % (name, v))
            out[name] = v
        except Exception as e:
            out[name] = None
            out[name + ".error"] = str(e)
    return out
