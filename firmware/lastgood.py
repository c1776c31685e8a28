"""Keep the last good config: a config the board was sent never strands it.

A config is "good" once the board has joined the room with it: the app then records
it in config.good.json (written only when it differs from what is recorded there, to
spare the flash). A config.json whose Wi-Fi, relay or token differ from the last good
one's (a config.update, a redeploy) is on trial: those three decide whether the board
can reach the room, so a config that changed only its name or telemetry is as good as
the last one, and a network outage never reverts a config that has joined.

Only failures that what changed could explain count against a config on trial, so an
outage never reverts a change that would have worked once it is over:
    the Wi-Fi does not come up       counts when the Wi-Fi (SSID, password) changed
    the relay cannot be reached, or  counts when the Wi-Fi or the relay changed
      no JOINED comes, or the relay
      turns the board away for
      another reason
    the relay refuses the token      counts when the relay or the token changed
      (LEAVE 3 unauthorized, 7
      forbidden)
(A token-only change, say a rotated token, is reverted only when the relay refuses
it: the old token may have expired meanwhile, and the board would be stranded on it.)

The time a config on trial spends failing in ways that count (each Wi-Fi attempt that
ends without a connection counts as at least the 20 s of an attempt, even one that
fails at once, and the app tries again after a backoff (app.py); each attempt, Wi-Fi
or relay, counts from the previous failure, backoff included) is summed across resets
in config.trial.json. At a counted failure past its "revert_after_s" (the config's
own, default 300 s), the app goes back: config.json is copied byte for byte to config.rejected.json (for a person
to see), the last good config is written to config.json, config.trial.json records
why, the flash log says what happened and why, and the board resets into the good
config. That one can never be on trial (it is the last good one), so the board cannot
loop between configs; with no last good config (a fresh deploy that never joined)
nothing is on trial and the app retries as it always did. device.info shows
"config_reverted" (the reason) while the board runs the config it went back to: once
a config other than that one has joined the room, the note is removed.
`lkedge deploy` removes all three files: what a person deploys starts afresh.

Loaded at boot (the app drops it once joined) and by config.update (on_trial()).

    config.trial.json  {"keys": [...], "tried_ms": N, "why": "..."}  a config on trial
                       {"keys": [...], "reverted": "..."}            after a revert
    ("keys": join_keys() of the config.json the note is about; a note about
    another config is stale and ignored)
"""
import json

import config
import flashlog
from lkedge.clock import now_ms

GOOD = "config.good.json"
REJECTED = "config.rejected.json"
TRIAL = "config.trial.json"
_WIFI_STATUS = ("STAT_NO_AP_FOUND", "STAT_WRONG_PASSWORD", "STAT_CONNECT_FAIL", "STAT_BEACON_TIMEOUT",
                "STAT_ASSOC_FAIL", "STAT_HANDSHAKE_TIMEOUT", "STAT_CONNECTING", "STAT_IDLE")


# failure kinds (app.py reports each failure as one) -> the changes that explain it
WIFI = "wifi"
RELAY = "relay"
TOKEN = "token"
_EXPLAINED_BY = {WIFI: (WIFI,), RELAY: (WIFI, RELAY), TOKEN: (RELAY, TOKEN)}


def join_keys(cfg):
    """What decides whether a config can reach the room: Wi-Fi, relay and token."""
    w = cfg.get("wifi") or {}
    return [w.get("ssid", ""), w.get("password", ""), cfg.get("relay"), cfg.get("token")]


def changed(good, cfg):
    """Which of WIFI, RELAY, TOKEN differ between the two configs (a list)."""
    g, c = join_keys(good), join_keys(cfg)
    return [k for k, d in ((WIFI, g[:2] != c[:2]), (RELAY, g[2] != c[2]), (TOKEN, g[3] != c[3])) if d]


def failure_kind(e):
    """The kind of a failure to join: TOKEN for a relay that refused the token (a
    ConnectError with LEAVE 3 or 7), else RELAY."""
    return TOKEN if getattr(e, "leave_code", None) in (3, 7) else RELAY


def load_good():
    """The last good config (config.good.json, checked like config.json), or None."""
    d = config.read(GOOD, "no last good config to go back to")
    return None if d is None else config.checked(d, GOOD)


def on_trial(cfg):
    """Whether `cfg` would be on trial: a last good config exists, and cfg's Wi-Fi,
    relay or token differ from it."""
    good = load_good()
    return good is not None and join_keys(good) != join_keys(cfg)


def wifi_status(network, wlan):
    """The WLAN status by its network.STAT_* name (the ports' numbers differ), for the
    flash log: why the Wi-Fi did not come up."""
    try:
        s = wlan.status()
    except Exception:
        return "status unknown"
    for n in _WIFI_STATUS:
        if getattr(network, n, None) == s:
            return n
    return "status %r" % (s,)


def _save_note(note):
    try:
        config.save(note, TRIAL)
    except OSError as e:  # a full flash: the trial starts over after a reset, no harm
        flashlog.error("%s not written: %r" % (TRIAL, e))


class Trial:
    """The current config's standing: `on` (on trial), `reverted` (the reason, when it
    is the config the board went back to), failed(why), joined()."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.keys = join_keys(cfg)
        self.good = load_good()
        note = config.read(TRIAL, "starting a new trial")
        if note is not None and note.get("keys") != self.keys:
            note = None  # about another config
        self.reverted = note.get("reverted") if note else None
        self.changed = changed(self.good, cfg) if self.good is not None else []
        self.on = bool(self.changed)
        base = note.get("tried_ms", 0) if (note and self.on) else 0
        self.base = base if isinstance(base, int) else 0
        self.since = now_ms()   # the boot, then the last failure reported
        if self.on:
            flashlog.info("config.json on trial (its %s never joined): back to %s unless it reaches "
                          "the room within %s s of trying (%d s so far)"
                          % (", ".join(self.changed), GOOD, cfg["revert_after_s"], self.base // 1000))

    def failed(self, why, kind, at_least_ms=0):
        """Report a failure to reach the room, of kind WIFI, RELAY or TOKEN, that took
        at least `at_least_ms`. True when the config was reverted (the caller resets
        the board), False to go on trying."""
        t = now_ms()
        took = max(t - self.since, at_least_ms)
        self.since = t
        if not self.on or not [c for c in _EXPLAINED_BY[kind] if c in self.changed]:
            return False   # not on trial, or a failure the change cannot explain: an outage
        self.base += took
        if self.base < self.cfg["revert_after_s"] * 1000:
            _save_note({"keys": self.keys, "tried_ms": self.base, "why": why})
            return False
        return self._revert(why, self.base)

    def _revert(self, why, tried):
        try:
            with open(config.PATH, "rb") as f:
                config.replace(REJECTED, f.read())
        except OSError as e:  # no config.json (defaults on trial) or a full flash
            flashlog.error("the rejected config not kept in %s: %r" % (REJECTED, e))
        msg = "config.json could not reach the room in %d s of trying, last: %s" % (tried // 1000, why)
        try:
            config.save(self.good)
        except OSError as e:
            flashlog.error("%s; going back to %s failed: %r (trying on)" % (msg, GOOD, e))
            return False
        self.on = False
        _save_note({"keys": join_keys(self.good), "reverted": msg})
        flashlog.error("%s; went back to the last good config %s, the rejected one is kept in %s"
                       % (msg, GOOD, REJECTED))
        return True

    def joined(self):
        """The config joined the room: it is the last good one from now on."""
        cfg = json.loads(json.dumps(self.cfg))  # as the file would read back
        if cfg != self.good:
            try:
                config.save(cfg, GOOD)
                flashlog.info("config.json joined the room: recorded as the last good config (%s)" % GOOD)
            except OSError as e:
                # the trial note stays: without it an outage could revert this config
                flashlog.error("%s not written: %r" % (GOOD, e))
                return
            self.reverted = None  # a config newer than the one gone back to joined
        if self.reverted is None:  # a trial over, or a stale note: nothing to keep
            import os
            try:
                os.remove(TRIAL)
            except OSError:
                pass
