"""EMULATION: stand-in for MicroPython's `machine` module on the emulated board.

Runs inside the MicroPython unix port, loaded by the emulated board's ROM (rom.py)
before the flash is mounted, so `import machine` on the board finds this module. It
behaves like the ESP32/RP2 module where the firmware can observe it; what a real board
does with hardware is emulated deterministically:

- reset() restarts the interpreter (the host supervisor keeps the flash and the serial
  port); soft_reset() is a soft reboot; reset_cause() reports why the board started.
- ADC.read_u16() returns a deterministic slow triangle wave per pin (the k-th read of
  a pin is always the same value); Pin inputs read `emulated_inputs[pin]` (default: 1
  with PULL_UP, else 0); outputs read back what was written.
- WDT(timeout=ms) arms a watchdog kept by the host supervisor: if feed() is not called
  within the timeout the interpreter is killed and restarted with WDT_RESET.
- RTC keeps an offset to the host clock; RTC memory lives until the next reset.

Extras that exist only here (for tests): `emulated_inputs` (pin -> level) and
`emulate_input(pin, level)` (sets a level and runs a matching Pin.irq handler).
"""
import time

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

# Exit codes the host supervisor (lkedge_host.board) understands.
EXIT_RESET = 100
EXIT_SOFT_FRIENDLY = 101
EXIT_SOFT_RAW = 102
EXIT_DEEPSLEEP = 103

_board = {"cause": PWRON_RESET, "uid": b"\x00" * 6, "freq": 240000000, "ctl": None, "port": "esp32",
          "chip": ""}
emulated_inputs = {}
_pins = {}
_adc_reads = {}


class ResetRequest(BaseException):
    """Raised by reset()/deepsleep(); the ROM turns it into the interpreter's exit code.

    A BaseException so that the firmware's `except Exception` does not swallow it, as a
    real reset cannot be caught either.
    """

    def __init__(self, code):
        super().__init__(code)
        self.code = code


def _configure(cause, uid, freq_hz, ctl, port, chip=""):
    """Called once by the ROM at boot. chip: the profile's (what a real board names after
    " with " in sys.implementation._machine), for `lkedge deploy`'s check."""
    _board["cause"] = cause
    _board["uid"] = uid
    _board["freq"] = freq_hz
    _board["ctl"] = ctl
    _board["port"] = port
    _board["chip"] = chip


def _ctl(msg):
    f = _board["ctl"]
    if f is not None:
        f.write(msg)


def unique_id():
    return _board["uid"]


def reset():
    raise ResetRequest(EXIT_RESET)


def soft_reset():
    raise SystemExit  # as on a board: a soft reboot is a SystemExit seen by the REPL


def reset_cause():
    return _board["cause"]


def freq(hz=None):
    if hz is None:
        return _board["freq"]
    if hz <= 0:
        raise ValueError("frequency must be positive, got %d" % hz)
    _board["freq"] = hz


def idle():
    time.sleep_ms(1)


def lightsleep(ms=None):
    if ms is None:
        while True:
            time.sleep(3600)
    time.sleep_ms(ms)


def deepsleep(ms=None):
    lightsleep(ms)
    raise ResetRequest(EXIT_DEEPSLEEP)


def disable_irq():
    return 0  # the emulator has no interrupts to mask: the state is a token


def enable_irq(state=0):
    return None


def _pin_key(pin):
    return pin.id if isinstance(pin, Pin) else pin


def _pin_seed(key):
    if isinstance(key, str):
        n = 0
        for ch in key:
            n = (n * 31 + ord(ch)) & 0xFFFF
        return n
    return (key * 40503) & 0xFFFF


def emulate_input(pin, level):
    """EMULATION ONLY: drive an input pin; runs its irq handler on a matching edge."""
    key = _pin_key(pin)
    old = emulated_inputs.get(key)
    emulated_inputs[key] = 1 if level else 0
    p = _pins.get(key)
    if p is not None and p._irq is not None and old != emulated_inputs[key]:
        rising = emulated_inputs[key] == 1
        if p._trigger & (Pin.IRQ_RISING if rising else Pin.IRQ_FALLING):
            p._irq(p)


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1
    IRQ_FALLING = 2
    IRQ_RISING = 1

    def __init__(self, id, mode=-1, pull=-1, value=None, **kw):
        self.id = id
        self._mode = Pin.IN
        self._pull = None
        self._out = 0
        self._irq = None
        self._trigger = 0
        _pins[id] = self
        self.init(mode, pull, value=value)

    def init(self, mode=-1, pull=-1, value=None, **kw):
        if mode != -1:
            if mode not in (Pin.IN, Pin.OUT, Pin.OPEN_DRAIN):
                raise ValueError("invalid pin mode %r" % (mode,))
            self._mode = mode
        if pull != -1:
            self._pull = pull
        if value is not None:
            self._out = 1 if value else 0

    def value(self, x=None):
        if x is not None:
            self._out = 1 if x else 0
            return None
        if self._mode == Pin.OUT:
            return self._out
        return emulated_inputs.get(self.id, 1 if self._pull == Pin.PULL_UP else 0)

    def __call__(self, x=None):
        return self.value(x)

    def on(self):
        self._out = 1

    def off(self):
        self._out = 0

    high = on
    low = off

    def toggle(self):
        self._out ^= 1

    def mode(self, m=None):
        if m is None:
            return self._mode
        self.init(m)

    def pull(self, p=None):
        if p is None:
            return self._pull
        self._pull = p

    def irq(self, handler=None, trigger=IRQ_FALLING | IRQ_RISING, **kw):
        self._irq = handler
        self._trigger = trigger
        return self

    def __repr__(self):
        return "Pin(%r)" % (self.id,)


class Signal:
    def __init__(self, pin, invert=False):
        self.pin = pin
        self.invert = invert

    def value(self, x=None):
        if x is None:
            return self.pin.value() ^ self.invert
        self.pin.value(bool(x) ^ self.invert)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_9BIT = 9
    WIDTH_10BIT = 10
    WIDTH_11BIT = 11
    WIDTH_12BIT = 12
    CORE_TEMP = 4  # RP2040: ADC channel 4 is the internal temperature sensor

    def __init__(self, pin, atten=None):
        self.key = _pin_key(pin)
        self._atten = ADC.ATTN_11DB if atten is None else atten

    def read_u16(self):
        k = _adc_reads.get(self.key, 0)
        _adc_reads[self.key] = k + 1
        if self.key == ADC.CORE_TEMP and _board["port"] == "rp2":
            # 0.706 V is 27 C on the RP2040 sensor; about -1.7 mV per degree
            return 14021 - (k % 8) * 17
        base = 12000 + _pin_seed(self.key) % 40000
        tri = k % 64
        return base + (tri if tri < 32 else 64 - tri) * 200

    def read(self):
        return self.read_u16() >> 4  # the ESP32's legacy 12-bit reading

    def read_uv(self):
        return self.read_u16() * 3300000 // 65535

    def atten(self, a):
        self._atten = a

    def width(self, w):
        if w not in (9, 10, 11, 12):
            raise ValueError("invalid ADC width %r" % (w,))


class WDT:
    """Armed on the host side: the supervisor restarts the board when feeds stop."""

    def __init__(self, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("watchdog timeout must be at least 1 ms, got %d" % timeout)
        if _board["port"] == "rp2" and timeout > 8388:
            raise ValueError("timeout %d ms is above the RP2040 watchdog limit 8388 ms" % timeout)
        _ctl(b"W%d\n" % timeout)

    def feed(self):
        _ctl(b"F\n")


class RTC:
    _offset = 0
    _memory = b""

    def __init__(self, id=0):
        pass

    def init(self, dt):
        self.datetime(dt)

    def datetime(self, dt=None):
        if dt is None:
            t = time.localtime(time.time() + RTC._offset)
            # RTC order: year, month, day, weekday, hours, minutes, seconds, subseconds
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
        secs = time.mktime((dt[0], dt[1], dt[2], dt[4], dt[5], dt[6], 0, 0))
        RTC._offset = secs - int(time.time())

    def memory(self, data=None):
        if data is None:
            return RTC._memory
        if len(data) > 2048:
            raise ValueError("RTC memory holds 2048 bytes, got %d" % len(data))
        RTC._memory = bytes(data)
