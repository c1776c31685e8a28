"""A Room fed arbitrary sequences of stream packets from one peer, drawn by hypothesis:
headers chunked or with inline content, compressed or not, fields in any order,
duplicates, chunks out of order, of another variant, missing, trailers early or twice,
more streams than max_streams. tests/device/stream_sequences.py plays them and checks
what must come of them (whole contents only, streams sent whole arrive whole, nothing
escapes, the room goes on); tests/device/test_room_stream_sequences.py runs its own
seeded sequences on MicroPython too.

(The room-level counterpart of test_proto's mutation test. It found compressed inline
content routed by the header fields read before it, and a stream dropped by handlers a
loop turn from returning; it guards the duplicate header whose inline content fed the
open stream of its id.)
"""
import asyncio
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stream_sequences as seqs
from stream_sequences import HEADER_KEYS, PARTS, SIDS

headers = st.tuples(st.just("header"), st.sampled_from(SIDS), st.integers(0, 1),
                    st.sampled_from(["chunked", "inline"]), st.booleans(), st.sampled_from(["bytes", "text"]),
                    st.permutations(HEADER_KEYS))
chunks = st.tuples(st.just("chunk"), st.sampled_from(SIDS), st.integers(0, 1), st.booleans(),
                   st.integers(0, PARTS))
trailers = st.tuples(st.just("trailer"), st.sampled_from(SIDS))
# from q, another participant: never part of p's streams
foreign = st.one_of(chunks.map(lambda c: ("q-chunk",) + c[1:]), trailers.map(lambda t: ("q-trailer",) + t[1:]))
actions = st.lists(st.one_of(headers, chunks, trailers, foreign), max_size=14)


@st.composite
def whole_streams_and_duplicates(draw):
    """As stream_sequences.whole_streams, drawn by hypothesis."""
    streams = []
    for sid in draw(st.lists(st.sampled_from(SIDS[:3]), min_size=1, max_size=3, unique=True)):
        head = draw(headers.map(lambda h: h[:1] + (sid,) + h[2:]))
        _, _, variant, mode, compressed, _, _ = head
        body = []
        if mode == "chunked":
            body = [("chunk", sid, variant, compressed, i) for i in range(PARTS)]
            for _ in range(draw(st.integers(0, 3))):
                body.insert(draw(st.integers(0, len(body))), draw(headers.map(lambda h: h[:1] + (sid,) + h[2:])))
            for _ in range(draw(st.integers(0, 2))):
                body.insert(draw(st.integers(0, len(body))), draw(foreign.map(lambda f: f[:1] + (sid,) + f[2:])))
            body.append(("trailer", sid))
        streams.append([head] + body)
    merged = []
    while streams:
        one = streams[draw(st.integers(0, len(streams) - 1))]
        merged.append(one.pop(0))
        streams = [x for x in streams if x]
    return merged


def _deflated(data):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def test_the_deflated_fixtures_are_zlibs():
    for (sid, variant), hexed in seqs.DEFLATED.items():
        assert bytes.fromhex(hexed) == _deflated(seqs.content(sid, variant)), (sid, variant)
    assert bytes.fromhex(seqs.CANARY_DEFLATED) == _deflated(seqs.canary())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(acts=actions)
def test_any_sequence_of_stream_packets_delivers_only_whole_contents_and_the_room_goes_on(acts):
    asyncio.run(seqs.play(acts))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(acts=whole_streams_and_duplicates())
def test_streams_sent_whole_arrive_whole_whatever_duplicate_headers_come_meanwhile(acts):
    assert seqs.expected(acts)   # the model is sure of each of them
    asyncio.run(seqs.play(acts))


def test_the_sequences_reach_success_paths():
    # a check of the generator's reach: a header and its chunks in order do arrive
    acts = [("header", "s1", 0, "chunked", True, "bytes", HEADER_KEYS)]
    acts += [("chunk", "s1", 0, True, i) for i in range(PARTS)] + [("trailer", "s1")]
    acts += [("header", "s2", 1, "inline", False, "text", tuple(reversed(HEADER_KEYS)))]
    acts += [("header", "s0", 1, "inline", True, "bytes", tuple(reversed(HEADER_KEYS)))]
    done = asyncio.run(seqs.play(acts))
    ok = sorted((sid, data) for sid, how, data in done if how == "ok" and sid != "canary")
    assert ok == [("s0", seqs.content("s0", 1)), ("s1", seqs.content("s1", 0)), ("s2", seqs.content("s2", 1))], done
