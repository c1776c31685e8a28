"""Relay counters and gauges, rendered in the Prometheus text format (version 0.0.4).

`Metrics` is a tiny registry: `inc(name, n=1, **labels)` adds to a counter,
`set_gauge(name, value, **labels)` / `clear_gauge(name)` keep gauges, `get(name,
**labels)` reads one value (tests), `render()` returns the exposition text, whose lines
name each series as `series(name, labels)` does. Every metric
name is declared in `HELP` (an undeclared name is a programming error: KeyError), so the
output always carries its # HELP / # TYPE lines.
"""

HELP = {
    # name: (type, help)
    "lkedge_relay_connections": ("gauge", "Link connections currently open"),
    "lkedge_relay_connections_total": ("counter", "Link connections accepted since start"),
    "lkedge_relay_participants": ("gauge", "Joined participants per room"),
    "lkedge_relay_joins_total": ("counter", "Successful JOINs"),
    "lkedge_relay_leaves_total": ("counter", "Connections ended, by LEAVE code (0 = transport closed without LEAVE)"),
    "lkedge_relay_frames_in_total": ("counter", "Link frames received, by frame type"),
    "lkedge_relay_frames_out_total": ("counter", "Link frames queued for sending, by frame type"),
    "lkedge_relay_bytes_in_total": ("counter", "Link bytes received"),
    "lkedge_relay_bytes_out_total": ("counter", "Link bytes queued for sending"),
    "lkedge_relay_drops_total": ("counter", "DATA deliveries not made, by reason"),
    "lkedge_relay_queue_bytes": ("gauge", "Bytes queued for a connection and not yet written, per identity"),
    "lkedge_relay_paused_senders": ("gauge", "Senders paused because a destination queue is full"),
    "lkedge_relay_pauses_total": ("counter", "Times a sender was paused because a destination queue was full"),
    "lkedge_relay_refused_total": ("counter", "Connections turned away past --max-connections, by reason (full: LEAVE 5; full_tls_handshake: closed at accept, unread; full_ws_upgrade: HTTP 503)"),
}


def _escape(v):
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _key(labels):
    return tuple(sorted(labels.items()))


def series(name, labels):
    """One series as the exposition names it: name{a="x",b="y"}, labels (a dict) sorted."""
    lab = ",".join('%s="%s"' % (a, _escape(b)) for a, b in _key(labels))
    return "%s{%s}" % (name, lab) if lab else name


class Metrics:
    def __init__(self):
        self._values = {name: {} for name in HELP}

    def inc(self, name, n=1, **labels):
        series = self._values[name]
        k = _key(labels)
        series[k] = series.get(k, 0) + n

    def set_gauge(self, name, value, **labels):
        self._values[name][_key(labels)] = value

    def clear_gauge(self, name):
        self._values[name].clear()

    def get(self, name, **labels):
        return self._values[name].get(_key(labels), 0)

    def total(self, name):
        return sum(self._values[name].values())

    def render(self):
        out = []
        for name, (kind, text) in HELP.items():
            out.append("# HELP %s %s" % (name, text))
            out.append("# TYPE %s %s" % (name, kind))
            values = self._values[name]
            for k in sorted(values):
                out.append("%s %s" % (series(name, dict(k)), values[k]))
        return "\n".join(out) + "\n"
