"""The board's config file, config.json on flash (written by `lkedge deploy`).

    {"relay": "tcp://192.168.1.10:7880",   link URL of the relay
     "token": "<LiveKit access token>",    identity and room come from it
     "wifi": {"ssid": "...", "password": "..."},
     "telemetry_to": "collector",          identity that receives telemetry ("" = off)
     "telemetry_interval_s": 10,
     "name": "pump-7"}                      a label shown by device.info
"""
import json

PATH = "config.json"
DEFAULTS = {"relay": "tcp://127.0.0.1:7880", "token": "", "wifi": {}, "telemetry_to": "",
            "telemetry_interval_s": 10, "name": ""}


def load(path=PATH):
    cfg = dict(DEFAULTS)
    try:
        with open(path) as f:
            cfg.update(json.load(f))
    except OSError:
        pass  # no config yet: defaults, the app reports the missing token
    return cfg


def save(cfg, path=PATH):
    import os
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f)
    os.rename(tmp, path)  # a power cut never leaves half a config behind


def load_profile(path="profile.json"):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return {"name": "unknown", "link": {}, "sensors": []}
