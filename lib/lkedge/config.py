"""Participant settings: buffer sizes, negotiation and limits (boards/ profiles fill them).

A board profile gives small buffers and may turn off the inflate capability; the host
defaults are roomier. Everything that bounds memory lives here, in one place.
"""
from . import load

# Settings that also take None (no cap; evict_idle_ms: never; advertise_compression: the
# Room decides). Every other int setting is an int over 0 (client_protocol 0..2); the
# others take the type of their default (RoomOptions.__init__).
_NONE_OK = ("max_values", "max_attributes", "max_participants", "evict_idle_ms", "max_inflated",
            "max_inflate_ratio", "advertise_compression")


class RoomOptions:
    """Settings of one participant. Keyword arguments override the defaults.

    read_buffer      bytes read from the transport at once (the only network buffer)
    piece_size       largest piece a stream reader hands out (inflated data included)
    max_field        largest small protobuf field held whole (headers, attributes)
    max_values       cap on all small values of one DataPacket held at once (identities,
                     topic, ids, attributes...), in bytes plus 32 per value: a packet of
                     thousands of tiny attributes would take ~20 times its size in heap;
                     one over it is dropped with a warning (None: no cap). The same cap
                     applies to each participant the relay announces (PARTICIPANT,
                     JOINED's list), counted while its CBOR is decoded: one over it is
                     kept without its attributes (RemoteParticipant.attributes_dropped)
                     and a warning names it
    max_attributes   cap on the attributes of all remote participants held at once,
                     counted as max_values counts (bytes plus 32 per key and per value):
                     many participants each just under max_values would add up; one
                     whose attributes would pass it is kept without them
                     (RemoteParticipant.attributes_dropped) and a warning names it
                     (None: no cap)
    max_participants cap on the remote participants held (each costs a board ~400-650
                     bytes; a busy room would take its whole heap): the relay's
                     announcements past it are not kept, with a warning. Such a
                     participant's calls and streams are still served; calls to it
                     fail with 1401 until one held leaves and it is announced again;
                     streams to everyone go as to a v1 peer (chunked, uncompressed).
                     None: no cap (hosts); boards 24
    max_frame        largest LINK control frame held whole, and the DATA frame limit
                     until JOINED announces the relay's (DATA is streamed, never held);
                     1 MiB on hosts: a relay may list a whole room in one JOINED (~100
                     bytes per participant without attributes)
    max_streams      incoming data streams open at once
    evict_idle_ms    when max_streams are open and another wanted stream arrives, the
                     open stream silent longest gives way if nothing came for it this
                     long (it ends "abnormal end: idle for N s ..."); None: a stream
                     keeps its slot until it ends or its sender leaves
    max_inflated     cap on decompressed bytes of one stream, whatever its total_length
                     says (a sender may claim any): 1 GiB - 1 byte (livekit-client takes up
                     to 5 GB; readers hand inflated data out piece by piece, so this bounds
                     time, not memory); boards 16 MiB. None: total_length only, and a
                     compressed stream without total_length is refused
    max_inflate_ratio  cap on a compressed stream's decompressed bytes per compressed
                     byte received so far, past its first 64 KiB (a stream over it ends
                     with an error): a board inflates inside its one link reader, so a
                     16 KB bomb of zeros that inflates to 16 MiB held its link for
                     seconds. None: no cap (hosts); boards 100 (text and telemetry
                     compress 3-20 times; a short pattern repeated 400-500, zeros 1000)
    advertise_compression  advertise CAP_COMPRESSION_DEFLATE_RAW (None: if we can inflate,
                     on MicroPython with a 32 KiB window held and 24 KiB left free beside
                     it; True: whenever the window can be held)
    client_protocol  advertised protocol (2: RPC v2 and inline streams)
    compress         compress outgoing finite streams when every recipient can inflate
    ping_interval_ms keepalive period on the link
    join_timeout_ms  how long connect() waits for JOINED once the link is open (writing
                     the JOIN included: a relay that never reads cannot hold it)
    auto_reconnect   reconnect with backoff after the link is lost
    reconnect_min_ms / reconnect_max_ms   backoff bounds (exponential, with jitter)
    transport_options  keyword arguments for transport.open_transport (TLS: cadata,
                     cafile, verify, server_hostname; timeout_ms; headers)
    max_rpc_payload  cap in UTF-8 bytes on a buffered RPC payload gathered in memory
                     (v2 requests to a buffered handler, responses to perform_rpc); streaming
                     handlers and calls are not capped
    max_rpc_handlers RPC requests handled at once; one more is acked and answered
                     with APPLICATION_ERROR "Too many concurrent RPC requests"

    Each setting is checked as the options are built (for_board's and a profile's
    link keys too): the sizes, counts and times (ms) are ints over 0, or None where
    said above; client_protocol is 0, 1 or 2; compress and auto_reconnect True or
    False (advertise_compression also None); sdk a str; transport_options a dict.
    Another type is a TypeError, an int out of range a ValueError, naming the setting.
    """

    def __init__(self, **kw):
        self.read_buffer = 4096
        self.piece_size = 4096
        self.max_field = 16384
        self.max_values = 1 << 20
        self.max_attributes = None
        self.max_participants = None
        self.max_frame = 1 << 20
        self.max_streams = 16
        self.evict_idle_ms = 60000
        self.max_inflated = (1 << 30) - 1   # a small int on a 32-bit board too
        self.max_inflate_ratio = None
        self.advertise_compression = None
        self.client_protocol = 2
        self.compress = True
        self.ping_interval_ms = 10000
        self.join_timeout_ms = 10000
        self.auto_reconnect = True
        self.reconnect_min_ms = 500
        self.reconnect_max_ms = 30000
        self.max_rpc_payload = 64 * 1024 * 1024
        self.max_rpc_handlers = 32
        self.sdk = "lkedge"
        self.transport_options = {}
        for k in kw:
            v = kw[k]
            d = getattr(self, k, self)   # the default says what the setting takes
            if d is self or callable(d):
                raise TypeError("unknown RoomOptions setting %r" % k)
            # checked here, naming it, not met later far from its cause (with
            # ping_interval_ms=0 the room's timer spun without ever yielding)
            if v is None:
                ok = k in _NONE_OK
            elif type(d) is int or d is None and k != "advertise_compression":   # a count, a size, ms
                ok = type(v) is int and (0 <= v <= 2 if k == "client_protocol" else v > 0)
            else:
                ok = isinstance(v, bool if d is None else type(d))   # bool (not 0/1), str, dict
            if not ok:
                raise load("misuse")._bad_setting(k, v, d)
            setattr(self, k, v)

    @classmethod
    def for_board(cls, profile=None, **kw):
        """Small-buffer settings for a microcontroller; `profile` is a boards/ dict."""
        # max_inflated: a board inflates at ~1-3 MB/s inside its one link reader, so a
        # 255 KB bomb claiming 256 MiB held its link (every call: 1501) for 99 s
        board = dict(read_buffer=512, piece_size=512, max_field=2048, max_values=8192, max_attributes=16384,
                     max_participants=24, max_frame=16384, max_streams=4, max_rpc_payload=16384,
                     max_rpc_handlers=4, max_inflated=16 << 20, max_inflate_ratio=100)
        if profile:
            # its "link" keys are RoomOptions names; the rest of a profile (name, heap,
            # pins...) is the firmware's, so a profile without "link" changes nothing
            board.update(profile.get("link") or {})
        board.update(kw)
        return cls(**board)   # checked as any settings are
