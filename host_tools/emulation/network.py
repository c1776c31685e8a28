"""EMULATION: stand-in for MicroPython's `network` module on the emulated board.

The emulated board's traffic uses the host's own network stack, so a WLAN "connects"
instantly to an emulated access point and reports the loopback address. Status codes
follow the port of the board profile (ESP32 or the Pico W's CYW43).

Every SSID is in range except those listed, comma-separated, in the environment
variable LKEDGE_EMULATED_NO_AP of `lkedge board` (read at each boot of the emulated
board): connecting to one of those never succeeds and status() reports
STAT_NO_AP_FOUND, as a board out of reach of its access point does (tests use it to
give the firmware a Wi-Fi config that cannot work).
"""
import os

import machine

STA_IF = 0
AP_IF = 1
AUTH_OPEN = 0
AUTH_WPA2_PSK = 3

_ESP32 = {"idle": 1000, "connecting": 1001, "got_ip": 1010, "no_ap": 201, "wrong_password": 202}
_CYW43 = {"idle": 0, "connecting": 1, "got_ip": 3, "no_ap": -2, "wrong_password": -3}
_EMULATED_AP = "lkedge-emulated"
_NO_AP = [s.strip() for s in (os.getenv("LKEDGE_EMULATED_NO_AP") or "").split(",") if s.strip()]
_ADDR = ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
_hostname = ["lkedge"]


def _codes():
    return _CYW43 if machine._board["port"] == "rp2" else _ESP32


STAT_IDLE = _ESP32["idle"]
STAT_CONNECTING = _ESP32["connecting"]
STAT_GOT_IP = _ESP32["got_ip"]
STAT_NO_AP_FOUND = _ESP32["no_ap"]
STAT_WRONG_PASSWORD = _ESP32["wrong_password"]


def _sync_status_constants():
    g = globals()
    c = _codes()
    g["STAT_IDLE"], g["STAT_CONNECTING"], g["STAT_GOT_IP"] = c["idle"], c["connecting"], c["got_ip"]
    g["STAT_NO_AP_FOUND"], g["STAT_WRONG_PASSWORD"] = c["no_ap"], c["wrong_password"]


def hostname(name=None):
    if name is None:
        return _hostname[0]
    _hostname[0] = name


def country(code=None):
    return "XX" if code is None else None


class WLAN:
    _state = {}

    def __init__(self, interface=STA_IF):
        if interface not in (STA_IF, AP_IF):
            raise ValueError("invalid WLAN interface %r" % (interface,))
        self.interface = interface
        st = WLAN._state.setdefault(interface, {"active": False, "ssid": "", "connected": False, "no_ap": False})
        self._s = st

    def active(self, on=None):
        if on is None:
            return self._s["active"]
        self._s["active"] = bool(on)
        if not on:
            self._s["connected"] = False

    def connect(self, ssid=None, key=None, **kw):
        if not self._s["active"]:
            raise OSError("Wifi Not Started: call WLAN.active(True) first")
        self._s["ssid"] = ssid or self._s["ssid"]
        self._s["no_ap"] = self._s["ssid"] in _NO_AP
        self._s["connected"] = not self._s["no_ap"]

    def disconnect(self):
        self._s["connected"] = False
        self._s["no_ap"] = False

    def isconnected(self):
        if self.interface == AP_IF:
            return self._s["active"]
        return self._s["active"] and self._s["connected"]

    def status(self, param=None):
        if param == "rssi":
            return -40
        if param is not None:
            raise ValueError("unknown status parameter %r" % (param,))
        c = _codes()
        if self.isconnected():
            return c["got_ip"]
        return c["no_ap"] if self._s["no_ap"] and self._s["active"] else c["idle"]

    def scan(self):
        bssid = b"\x02" + machine.unique_id()[:5]
        return [(_EMULATED_AP.encode(), bssid, 6, -40, AUTH_WPA2_PSK, False)]

    def ifconfig(self, config=None):
        if config is None:
            return _ADDR if self.isconnected() else ("0.0.0.0",) * 4
        return None

    def ipconfig(self, key):
        if key == "addr4":
            return (_ADDR[0], _ADDR[1]) if self.isconnected() else ("0.0.0.0", "0.0.0.0")
        if key == "gw4":
            return _ADDR[2]
        raise ValueError("unknown ipconfig key %r" % (key,))

    def config(self, *args, **kw):
        if kw:
            if "ssid" in kw:
                self._s["ssid"] = kw["ssid"]
            return None
        key = args[0]
        if key == "mac":
            return (b"\x02" + machine.unique_id() + b"\x00" * 6)[:6]
        if key in ("ssid", "essid"):
            return self._s["ssid"]
        if key == "hostname":
            return _hostname[0]
        if key == "channel":
            return 6
        if key == "txpower":
            return 20
        raise ValueError("unknown config parameter %r" % (key,))
