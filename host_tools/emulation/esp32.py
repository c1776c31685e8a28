"""EMULATION: the part of MicroPython's `esp32` module the firmware reads (chip
temperature), loaded by the emulated board's ROM only for profiles with port "esp32".
Readings are deterministic: the k-th reading is always the same value.
"""
_reads = [0]


def raw_temperature():
    """Chip temperature in degrees Fahrenheit, as the ESP32's legacy sensor reports it."""
    k = _reads[0]
    _reads[0] = k + 1
    return 113 + (k % 6)


def mcu_temperature():
    """Chip temperature in degrees Celsius (the newer ESP32-S2/S3/C3 API)."""
    return int((raw_temperature() - 32) / 1.8)
