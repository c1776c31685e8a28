"""Feeding stream packets into IncomingStreams the way room.py does, on both runtimes:
header and trailer as dicts, chunk content as pieces of a small buffer."""
from lkedge import streams


class Collector:
    """Runs events and keeps what a handler would see (data copied per stream)."""

    def __init__(self):
        self.opened = []
        self.data = {}
        self.ended = {}
        self.ignored = []
        self.max_piece = 0

    def run(self, events):
        for ev in events:
            if isinstance(ev, streams.StreamOpened):
                self.opened.append(ev.info)
                self.data[ev.info.stream_id] = bytearray()
            elif isinstance(ev, streams.StreamData):
                self.max_piece = max(self.max_piece, len(ev.data))
                self.data[ev.info.stream_id].extend(ev.data)
            elif isinstance(ev, streams.StreamEnded):
                self.ended[ev.info.stream_id] = ev.error
            elif isinstance(ev, streams.StreamIgnored):
                self.ignored.append((ev.stream_id, ev.reason))
            else:
                raise AssertionError("unknown event %r" % (ev,))

    def error_text(self, sid):
        err = self.ended[sid]
        assert err is not None, "stream %s ended without error" % sid
        assert isinstance(err, streams.StreamError), repr(err)
        return str(err)


def feed(inc, col, sender, pkt, piece=512):
    """Give one packet dict to `inc`, chunk content split into `piece`-byte pieces."""
    if "stream_header" in pkt:
        h = dict(pkt["stream_header"])
        inline = h.pop("inline_content", None)
        col.run(inc.header(sender, h, inline))
    elif "stream_chunk" in pkt:
        c = pkt["stream_chunk"]
        mv = memoryview(c.get("content", b""))
        if not len(mv):
            col.run(inc.chunk(sender, c["stream_id"], c.get("chunk_index", 0), mv, True))
        for off in range(0, len(mv), piece):
            col.run(inc.chunk(sender, c["stream_id"], c.get("chunk_index", 0), mv[off:off + piece],
                              off + piece >= len(mv)))
    elif "stream_trailer" in pkt:
        col.run(inc.trailer(sender, pkt["stream_trailer"]))
    else:
        raise AssertionError("not a stream packet: %r" % (pkt,))


def feed_all(inc, col, sender, packets, piece=512):
    for p in packets:
        feed(inc, col, sender, p, piece)


def handler_for(*topics):
    def has_handler(kind, topic):
        return topic in topics
    return has_handler
