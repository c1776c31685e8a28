"""STREAMS.md rules on lkedge.streams, on MicroPython and CPython (no oracle here; the
wire form is checked against livekit-protocol in tests/lib/test_streams.py)."""
import gc
import sys

from stream_fixtures import lcg_bytes
from stream_helpers import Collector, feed, feed_all, handler_for

from lkedge import finite, streams, utf8
from lkedge.consts import CAP_COMPRESSION_DEFLATE_RAW as CAP_DEFLATE

MP_HEAPSIZE = "320K"
LIMIT = 15000


def _inc(*topics, **kw):
    return streams.IncomingStreams(handler_for(*topics), **kw), Collector()


def _finite(kind, payload, inline_ok=True, compress_ok=False, sid="s1", dests=(), **kw):
    return list(finite.finite_packets(kind, payload, "t", list(dests), inline_ok, compress_ok,
                                      stream_id=sid, **kw))


def _hdr(sid="s1", topic="t", kind="bytes", total_length=None, **extra):
    h = {"stream_id": sid, "topic": topic}
    h["byte_header" if kind == "bytes" else "text_header"] = {}
    if total_length is not None:
        h["total_length"] = total_length
    h.update(extra)
    return {"stream_header": h}


def _chunk(sid, index, content):
    return {"stream_chunk": {"stream_id": sid, "chunk_index": index, "content": content}}


def _trailer(sid, reason="", attributes=None):
    return {"stream_trailer": {"stream_id": sid, "reason": reason, "attributes": attributes or {}}}


# ---------------------------------------------------------------- negotiation
def test_inline_only_when_every_recipient_is_v2():
    assert finite.negotiate([(2, []), (2, [])], True) == (True, False)
    assert finite.negotiate([(2, []), (1, [])], True)[0] is False
    assert finite.negotiate([(0, [CAP_DEFLATE])], True) == (False, False)


def test_empty_room_is_eligible_for_inline():
    assert finite.negotiate([], False) == (True, False)
    assert finite.negotiate([], True) == (True, True)


def test_compression_needs_every_recipient_v2_with_capability_a_sender_that_can_and_the_caller():
    both = [(2, [CAP_DEFLATE]), (3, [1, CAP_DEFLATE])]
    assert finite.negotiate(both, True) == (True, True)
    assert finite.negotiate(both + [(2, [1])], True) == (True, False)
    assert finite.negotiate(both, False) == (True, False)
    assert finite.negotiate(both, True, compress=False) == (True, False)


def test_a_v1_recipient_with_the_capability_gets_neither_inline_nor_compression():
    # protocol 1 (RPC v2 only) and 0 both lack inline streams; a capability alone is not enough
    for v in (0, 1):
        assert finite.negotiate([(2, [CAP_DEFLATE]), (v, [CAP_DEFLATE])], True) == (False, False)
    assert finite.negotiate([(None, None)], True) == (False, False)   # absent: protocol 0


def test_otherwise_uncompressed_header_chunks_trailer():
    pkts = _finite("text", b"abc" * 2000, inline_ok=False, compress_ok=False)
    assert [list(p)[-1] for p in pkts] == ["stream_header", "stream_chunk", "stream_trailer"]
    h = pkts[0]["stream_header"]
    assert h.get("compression", 0) == 0 and "inline_content" not in h and h["total_length"] == 6000


# -------------------------------------------------------------------- sending
def test_small_payload_goes_inline_with_total_length():
    pkts = _finite("bytes", b"hello", attributes={"a": "b"})
    assert len(pkts) == 1
    h = pkts[0]["stream_header"]
    assert bytes(h["inline_content"]) == b"hello" and h["total_length"] == 5
    assert h.get("compression", 0) == 0 and h["attributes"] == {"a": "b"}


def test_empty_payload_inline_is_present_but_empty():
    h = _finite("text", b"")[0]["stream_header"]
    assert "inline_content" in h and len(h["inline_content"]) == 0 and h["total_length"] == 0


def test_inline_falls_back_to_chunks_when_the_packet_exceeds_15000_bytes():
    payload = b"x" * (LIMIT - 10)   # fits a chunk, not an inline packet with its header
    pkts = _finite("bytes", payload)
    assert [list(p)[-1] for p in pkts] == ["stream_header", "stream_chunk", "stream_trailer"]
    assert "inline_content" not in pkts[0]["stream_header"]
    assert streams.packet_size(pkts[0]) <= LIMIT


def test_not_inline_when_a_recipient_is_not_v2():
    pkts = _finite("bytes", b"hi", inline_ok=False)
    assert len(pkts) == 3 and "inline_content" not in pkts[0]["stream_header"]
    assert bytes(pkts[1]["stream_chunk"]["content"]) == b"hi"


def test_chunks_are_at_most_15000_bytes_with_indices_0_1_2():
    payload = bytearray(2 * LIMIT + 1)
    payload[0] = payload[LIMIT] = payload[2 * LIMIT] = 7
    pkts = _finite("bytes", payload, inline_ok=False)
    chunks = [p["stream_chunk"] for p in pkts[1:-1]]
    assert [c["chunk_index"] for c in chunks] == [0, 1, 2]
    assert [len(c["content"]) for c in chunks] == [15000, 15000, 1]
    assert [c["content"][0] for c in chunks] == [7, 7, 7]
    assert pkts[0]["stream_header"]["total_length"] == len(payload)
    assert "stream_trailer" in pkts[-1] and pkts[-1]["stream_trailer"]["reason"] == ""


def test_text_chunks_split_only_on_utf8_boundaries():
    # Each text puts a 2-, 3- or 4-byte character across byte 15000.
    for ch, first in (("\u00fc", 14999), ("\u65e5", 14998), ("\U0001f600", 14997)):
        text = "a" + ch * (LIMIT // len(ch.encode()) + 1)
        pkts = _finite("text", text.encode("utf-8"), inline_ok=False)
        parts = [p["stream_chunk"]["content"] for p in pkts[1:-1]]
        assert len(parts[0]) == first, (ch, len(parts[0]))
        assert "".join(str(p, "utf-8") for p in parts) == text  # each chunk decodes alone


def test_text_header_defaults():
    h = _finite("text", b"hi", reply_to_stream_id="r1")[0]["stream_header"]
    assert h["mime_type"] == "text/plain" and h["text_header"]["operation_type"] == 0
    assert h["text_header"]["reply_to_stream_id"] == "r1" and "byte_header" not in h


def test_byte_header_defaults():
    h = _finite("bytes", b"hi")[0]["stream_header"]
    assert h["mime_type"] == "application/octet-stream" and h["byte_header"]["name"] == "unknown"
    h = _finite("bytes", b"hi", name="f.bin", mime_type="image/png")[0]["stream_header"]
    assert h["byte_header"]["name"] == "f.bin" and h["mime_type"] == "image/png"


def test_chunked_header_over_15000_bytes_is_refused():
    attrs = {"big": "v" * LIMIT}
    try:
        _finite("bytes", b"x", inline_ok=False, attributes=attrs)
    except streams.StreamError as e:
        assert "header" in str(e) and "15000" in str(e), str(e)
    else:
        raise AssertionError("oversized header accepted")


def test_a_chunked_header_of_exactly_15000_bytes_is_taken_and_one_more_byte_refused():
    # STREAMS.md: a header packet that "exceeds 15000 bytes" is refused: 15000 is not
    def header_of(n):
        try:
            return _finite("bytes", b"x", inline_ok=False, attributes={"big": "v" * n})[0]
        except streams.StreamError as e:
            return e
    n = LIMIT - 100
    while not isinstance(header_of(n + 1), streams.StreamError):
        n += 1
    assert streams.packet_size(header_of(n)) == LIMIT, "the largest header taken is 15000 bytes"
    err = str(header_of(n + 1))
    assert "15001 bytes, over the 15000-byte limit" in err, err


def test_a_header_of_an_unknown_compression_type_is_ignored_not_read_as_plain():
    inc, col = _inc("t", can_inflate=True)
    feed(inc, col, "a", _hdr("s1", total_length=3, compression=2))
    assert col.ignored == [("s1", "unknown compression type 2")] and not col.opened, col.ignored
    feed(inc, col, "a", _chunk("s1", 0, b"abc"))
    assert not col.data and not col.opened, "its chunks went to a reader"


def test_inline_packet_over_15000_bytes_falls_back_to_chunks_when_the_header_fits():
    attrs = {"big": "v" * (LIMIT - 200)}
    inline = streams.header_packet("s1", "bytes", "t", [], total_length=300, attributes=attrs,
                                   inline_content=b"x" * 300)
    assert streams.packet_size(inline) > LIMIT   # so inline is no option here
    pkts = _finite("bytes", b"x" * 300, attributes=attrs)  # inline too big, header fits
    assert len(pkts) == 3 and streams.packet_size(pkts[0]) <= LIMIT
    assert "inline_content" not in pkts[0]["stream_header"] and bytes(pkts[1]["stream_chunk"]["content"]) == b"x" * 300


def test_total_length_is_the_uncompressed_byte_length():
    text = "\u00fc\u65e5" * 3000   # 6000 characters, 15000 bytes
    for kw in ({}, {"inline_ok": False}):
        assert _finite("text", text.encode("utf-8"), **kw)[0]["stream_header"]["total_length"] == 15000
    if finite.can_compress():
        h = _finite("text", text.encode("utf-8"), compress_ok=True)[0]["stream_header"]
        assert h["compression"] == 1 and h["total_length"] == 15000


def test_inline_compressed_when_only_the_compressed_form_fits():
    if not finite.can_compress():
        return   # MicroPython: this interpreter can only inflate
    payload = b"abc" * 20000   # 60000 bytes, a few hundred compressed
    pkts = _finite("bytes", payload, compress_ok=True)
    assert len(pkts) == 1, [list(p) for p in pkts]
    h = pkts[0]["stream_header"]
    assert h["compression"] == 1 and h["total_length"] == 60000 and len(h["inline_content"]) < 1000


def test_compressed_chunked_when_even_the_compressed_form_does_not_fit_inline():
    if not finite.can_compress():
        return
    payload = lcg_bytes(40000)   # incompressible: deflate output > 15000
    pkts = _finite("bytes", payload, compress_ok=True)
    h = pkts[0]["stream_header"]
    assert h["compression"] == 1 and "inline_content" not in h and h["total_length"] == 40000
    chunks = [p["stream_chunk"] for p in pkts[1:-1]]
    assert [c["chunk_index"] for c in chunks] == list(range(len(chunks))) and len(chunks) >= 3
    assert all(len(c["content"]) <= LIMIT for c in chunks) and "stream_trailer" in pkts[-1]
    inc, col = _inc("t")
    feed_all(inc, col, "a", pkts)   # ONE deflate stream: the receiver gets the payload back
    assert bytes(col.data["s1"]) == payload and col.ended["s1"] is None


def test_inline_over_15000_falls_back_and_a_chunked_header_over_15000_is_still_refused():
    attrs = {"big": "v" * LIMIT}   # neither the inline packet nor the header alone fits
    gen = finite.finite_packets("bytes", b"x", "t", [], True, False, stream_id="s1", attributes=attrs)
    try:
        next(gen)
    except streams.StreamError as e:
        assert "over the 15000-byte limit" in str(e), str(e)
    else:
        raise AssertionError("oversized header sent")


def test_incremental_text_header_defaults():
    h = streams.OutgoingStream("s6", "text", "t", ["b"]).header()["stream_header"]
    assert h["mime_type"] == "text/plain" and h["text_header"]["operation_type"] == 0
    assert "total_length" not in h and "inline_content" not in h and h.get("compression", 0) == 0
    assert "byte_header" not in h


def test_incremental_header_over_15000_bytes_is_refused():
    out = streams.OutgoingStream("s5", "text", "t", [], attributes={"big": "v" * LIMIT})
    try:
        out.header()
    except streams.StreamError as e:
        assert "over the 15000-byte limit" in str(e), str(e)
    else:
        raise AssertionError("oversized incremental header accepted")


def test_incremental_writes_become_chunks_and_close_sends_the_trailer():
    out = streams.OutgoingStream("s4", "text", "t", [])
    out.header()
    text = "\u65e5" * 6000   # 18000 bytes: two chunks, cut between characters
    chunks = out.write(text)
    parts = [bytes(c["stream_chunk"]["content"]) for c in chunks]
    assert [len(p) for p in parts] == [15000, 3000]
    assert "".join(str(p, "utf-8") for p in parts) == text
    t = out.close()
    assert t["stream_trailer"]["stream_id"] == "s4" and t["stream_trailer"]["reason"] == ""


def test_compression_only_when_this_interpreter_can_compress():
    if finite.can_compress():
        pkts = _finite("text", b"abc" * 20000, compress_ok=True)
        assert pkts[0]["stream_header"]["compression"] == 1
        return
    try:
        finite.Deflater()
    except streams.StreamError as e:
        assert "cannot compress" in str(e)
    else:
        raise AssertionError("Deflater made without a compressor")


def test_outgoing_stream_hands_its_header_out_once_and_keeps_no_copy():
    out = streams.OutgoingStream("s8", "text", "t", ["b"])
    assert out.header()["stream_header"]["stream_id"] == "s8"
    assert out.mime_type == "text/plain"  # what the header said stays readable
    try:
        out.header()
    except streams.StreamError as e:
        assert "already taken" in str(e)
    else:
        raise AssertionError("a second header() gave the header again")


def test_incremental_stream_has_no_total_length_is_never_inline_nor_compressed():
    out = streams.OutgoingStream("s9", "bytes", "t", ["b"], name="n")
    h = out.header()["stream_header"]
    assert "total_length" not in h and "inline_content" not in h and h.get("compression", 0) == 0
    chunks = out.write(b"z" * (LIMIT + 1))
    assert [c["stream_chunk"]["chunk_index"] for c in chunks] == [0, 1]
    assert [len(c["stream_chunk"]["content"]) for c in chunks] == [15000, 1]
    assert out.write(b"q")[0]["stream_chunk"]["chunk_index"] == 2
    t = out.close("", {"k": "v"})["stream_trailer"]
    assert t["stream_id"] == "s9" and t["attributes"] == {"k": "v"}
    try:
        out.write(b"late")
    except streams.StreamError:
        pass
    else:
        raise AssertionError("write after close accepted")


def test_a_text_stream_takes_str_and_a_byte_stream_bytes_refused_before_any_packet():
    # bytes written to a text stream went out as they were: b"\xff\xfe" ended its
    # reader with Utf8Error; an int met memoryview's error, which did not say str
    out = streams.OutgoingStream("s8", "text", "t", [])
    for wrong, words in ((b"\xff\xfe", "a text stream takes str, not bytes"),
                         (bytearray(b"ab"), "not bytearray"), (12345, "a text stream takes str, not int")):
        try:
            out.write(wrong)
        except TypeError as e:
            assert words in str(e), (words, str(e))
        else:
            raise AssertionError("a text stream took %r" % (wrong,))
    got = out.write("\u00fc\u65e5")   # nothing of the refused writes went: chunk 0 is this
    assert [(c["stream_chunk"]["chunk_index"], bytes(c["stream_chunk"]["content"])) for c in got] == [
        (0, "\u00fc\u65e5".encode("utf-8"))]
    out2 = streams.OutgoingStream("s7", "bytes", "t", [])
    try:
        out2.write("str")
    except TypeError as e:
        assert "a byte stream takes bytes, not str" in str(e)
    else:
        raise AssertionError("a byte stream took a str")
    assert out2.write(b"ok")[0]["stream_chunk"]["chunk_index"] == 0


# ------------------------------------------------------------------ receiving
def test_round_trip_inline_and_chunked_text():
    inc, col = _inc("t")
    text = "\u65e5\u672c" * 2600
    feed_all(inc, col, "a", _finite("text", text.encode(), sid="big"))
    feed_all(inc, col, "a", _finite("text", b"small", sid="small"))
    assert bytes(col.data["big"]).decode() == text and bytes(col.data["small"]) == b"small"
    assert col.ended == {"big": None, "small": None}
    info = col.opened[0]
    assert info.kind == "text" and info.sender_identity == "a" and info.total_length == 15600


def test_no_handler_ignores_the_whole_stream():
    inc, col = _inc("yes")
    pkts = _finite("bytes", b"x" * 200, sid="n1", inline_ok=False)
    feed_all(inc, col, "a", pkts[:-1] + [_chunk("n1", 7, b"more")] + pkts[-1:])
    assert not col.opened and col.ignored == [("n1", "no handler for bytes streams on topic 't'")]
    assert not inc.open


def test_handler_is_found_by_kind_and_topic():
    inc = streams.IncomingStreams(lambda kind, topic: kind == "text" and topic == "t")
    col = Collector()
    feed_all(inc, col, "a", [_hdr("b1", kind="bytes"), _chunk("b1", 0, b"x"), _trailer("b1"),
                             _hdr("t1", kind="text"), _chunk("t1", 0, b"y"), _trailer("t1")])
    assert [i.stream_id for i in col.opened] == ["t1"] and col.ended == {"t1": None}
    assert col.ignored == [("b1", "no handler for bytes streams on topic 't'")]


def test_no_handler_ignores_an_inline_stream():
    inc, col = _inc("yes")
    col.run(inc.header("a", _hdr("n2", topic="no", total_length=2)["stream_header"], b"hi"))
    assert not col.opened and not col.data and len(col.ignored) == 1 and not inc.open


def test_the_handler_learns_the_sender_identity():
    inc, col = _inc("t")
    feed_all(inc, col, "alice", _finite("bytes", b"hi", sid="w1"))
    assert col.opened[0].sender_identity == "alice" and bytes(col.data["w1"]) == b"hi"


def test_second_open_stream_with_the_same_id_is_an_error_and_the_first_is_unaffected():
    inc, col = _inc("t")
    feed(inc, col, "a", _hdr("d", total_length=6))
    feed(inc, col, "a", _chunk("d", 0, b"abc"))
    feed(inc, col, "a", _hdr("d", total_length=1))
    assert col.ignored and "duplicate" in col.ignored[0][1]
    feed_all(inc, col, "a", [_chunk("d", 1, b"def"), _trailer("d")])
    assert bytes(col.data["d"]) == b"abcdef" and col.ended["d"] is None


def test_inline_content_even_empty_completes_the_stream():
    inc, col = _inc("t")
    col.run(inc.header("a", _hdr("e", total_length=0)["stream_header"], b""))
    assert col.ended == {"e": None} and bytes(col.data["e"]) == b"" and not inc.open


def test_inline_stream_takes_no_chunk_or_trailer():
    inc, col = _inc("t")
    col.run(inc.header("a", _hdr("e", total_length=2)["stream_header"], b"ok"))
    assert col.ended == {"e": None} and not inc.open
    feed_all(inc, col, "a", [_chunk("e", 0, b"late"), _trailer("e", attributes={"x": "1"})])
    assert bytes(col.data["e"]) == b"ok" and col.opened[0].attributes == {}
    assert [i[0] for i in col.ignored] == ["e"]   # reported once, never delivered


def test_chunks_are_routed_by_stream_id():
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("r1"), _hdr("r2"), _chunk("r1", 0, b"a1"), _chunk("r2", 0, b"b1"),
                             _chunk("r2", 1, b"b2"), _chunk("r1", 1, b"a2"), _trailer("r2"), _trailer("r1")])
    assert bytes(col.data["r1"]) == b"a1a2" and bytes(col.data["r2"]) == b"b1b2"
    assert col.ended == {"r1": None, "r2": None}


def test_chunks_are_delivered_as_they_arrive():
    inc, col = _inc("t")
    feed(inc, col, "a", _hdr("c"))
    feed(inc, col, "a", _chunk("c", 0, b"first"))
    assert bytes(col.data["c"]) == b"first" and "c" not in col.ended


def test_empty_chunk_is_ignored():
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("c"), _chunk("c", 0, b""), _chunk("c", 1, b"x"), _trailer("c")])
    assert bytes(col.data["c"]) == b"x" and col.ended["c"] is None


def test_empty_chunk_uses_its_index_as_in_livekit_client():
    # livekit-client's ensureOrderedChunks: "Empty chunks consume their index", so the
    # next chunk of a compressed stream is no gap, and a later chunk of that index is
    # a duplicate
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("c", total_length=5, compression=1), _chunk("c", 0, HELLO[:3]),
                             _chunk("c", 1, b""), _chunk("c", 2, HELLO[3:]), _trailer("c")])
    assert bytes(col.data["c"]) == b"hello" and col.ended["c"] is None
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("d"), _chunk("d", 0, b"a"), _chunk("d", 1, b""), _chunk("d", 1, b"dup"),
                             _chunk("d", 2, b"c"), _trailer("d")])
    assert bytes(col.data["d"]) == b"ac" and col.ended["d"] is None


def test_duplicate_chunk_index_is_dropped():
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("c"), _chunk("c", 0, b"a" * 700), _chunk("c", 1, b"b"),
                             _chunk("c", 1, b"B" * 900), _chunk("c", 0, b"A"), _chunk("c", 2, b"c"),
                             _trailer("c")])
    assert bytes(col.data["c"]) == b"a" * 700 + b"bc" and col.ended["c"] is None


def test_duplicate_chunk_index_on_a_compressed_stream_is_dropped():
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("c", total_length=5, compression=1), _chunk("c", 0, HELLO[:3]),
                             _chunk("c", 0, HELLO[:3]), _chunk("c", 1, HELLO[3:]), _chunk("c", 1, b"zz"),
                             _trailer("c")])
    assert bytes(col.data["c"]) == b"hello" and col.ended["c"] is None


def test_empty_chunk_on_a_compressed_stream_is_ignored():
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("c", total_length=5, compression=1), _chunk("c", 0, HELLO),
                             _chunk("c", 1, b""), _chunk("c", 0, b""), _trailer("c")])
    assert bytes(col.data["c"]) == b"hello" and col.ended["c"] is None


def test_an_empty_chunk_after_a_gap_is_the_gap_as_in_livekit_client():
    # ensureOrderedChunks checks the index before it drops an empty chunk: "ab" then an
    # empty chunk 2 and the trailer is a stream missing chunk 1, not a complete "ab"
    for comp in ({}, {"compression": 1, "total_length": 5}):
        inc, col = _inc("t")
        first = HELLO if comp else b"ab"
        feed_all(inc, col, "a", [_hdr("g", **comp), _chunk("g", 0, first), _chunk("g", 2, b""),
                                 _trailer("g")])
        assert str(col.ended["g"]) == "gap in chunk indices: chunk 1 missing", (comp, col.ended)
    inc, col = _inc("t")   # before any chunk: chunks 0..2 missing
    feed_all(inc, col, "a", [_hdr("h"), _chunk("h", 3, b""), _chunk("h", 0, b"x"), _trailer("h")])
    assert str(col.ended["h"]) == "gap in chunk indices: chunks 0..2 missing", col.ended
    assert not inc.open and not col.ignored   # its later packets dropped silently


def test_total_length_0_means_unknown_as_in_livekit_client():
    # livekit-client reads a header's totalLength of 0 as "size unknown" (its older
    # senders wrote 0 for a stream of unknown length): data after it is no
    # "length exceeded", and no end is "incomplete"
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("z", total_length=0), _chunk("z", 0, b"hello"), _trailer("z")])
    assert bytes(col.data["z"]) == b"hello" and col.ended["z"] is None, col.ended
    assert col.opened[0].total_length is None and col.opened[0].size is None
    # compressed: as without a total_length, only under a cap (RoomOptions' default)
    inc, col = _inc("t")
    col.run(inc.header("a", _hdr("zi", total_length=0, compression=1)["stream_header"], HELLO))
    assert "compressed without a total_length" in col.ignored[0][1], col.ignored
    inc, col = _inc("t", max_inflated=1000)
    col.run(inc.header("a", _hdr("zi", total_length=0, compression=1)["stream_header"], HELLO))
    assert bytes(col.data["zi"]) == b"hello" and col.ended["zi"] is None, col.ended


def test_stream_info_has_livekits_size_and_attachments():
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("n", kind="text", total_length=3,
                                  text_header={"attached_stream_ids": ["f1", "f2"]}),
                             _chunk("n", 0, b"abc"), _trailer("n")])
    info = col.opened[0]
    assert info.size == info.total_length == 3
    assert info.attachments == info.attached_stream_ids == ["f1", "f2"]


def test_compressed_chunked_stream_goes_through_one_inflater_in_index_order():
    # "hello" deflated, one byte per chunk: each alone is not a deflate stream
    inc, col = _inc("t")
    pkts = [_hdr("o", total_length=5, compression=1)]
    pkts += [_chunk("o", i, HELLO[i:i + 1]) for i in range(len(HELLO))]
    feed_all(inc, col, "a", pkts + [_trailer("o")])
    assert bytes(col.data["o"]) == b"hello" and col.ended["o"] is None


def test_gap_on_uncompressed_stream_is_an_error_as_in_livekit_client():
    # STREAMS.md names compressed streams; livekit-client fails every stream with a
    # missing chunk, and delivering "ac" for "abc" would be silent corruption
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("c"), _chunk("c", 0, b"a"), _chunk("c", 2, b"c"), _trailer("c")])
    assert bytes(col.data["c"]) == b"a" and str(col.ended["c"]) == "gap in chunk indices: chunk 1 missing"
    inc, col = _inc("t")   # a stream whose first chunk is not 0
    feed_all(inc, col, "a", [_hdr("d"), _chunk("d", 1, b"b"), _trailer("d")])
    assert not bytes(col.data.get("d", b"")) and str(col.ended["d"]) == "gap in chunk indices: chunk 0 missing"


def test_trailer_attributes_merge_over_header():
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("m", attributes={"a": "1", "b": "1"}), _chunk("m", 0, b"x"),
                             _trailer("m", attributes={"b": "2", "c": "3"})])
    assert col.opened[0].attributes == {"a": "1", "b": "2", "c": "3"} and col.ended["m"] is None


def test_fewer_than_total_length_at_the_trailer_is_incomplete():
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("i", total_length=10), _chunk("i", 0, b"abc"), _trailer("i")])
    assert col.error_text("i") == "incomplete: got 3 of 10 bytes"


def test_more_than_total_length_is_length_exceeded():
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("x", total_length=4), _chunk("x", 0, b"abc"), _chunk("x", 1, b"de"),
                             _chunk("x", 2, b"f"), _trailer("x")])
    assert "length exceeded" in col.error_text("x") and bytes(col.data["x"]) == b"abc"
    assert not inc.open and not col.ignored  # later packets dropped silently


def test_inline_longer_than_total_length_is_length_exceeded():
    inc, col = _inc("t")
    col.run(inc.header("a", _hdr("y", total_length=2)["stream_header"], b"abc"))
    # "length exceeded", not "incomplete ... (length exceeded)": more is not fewer
    assert col.error_text("y").startswith("length exceeded"), col.error_text("y")
    assert bytes(col.data["y"]) == b"" and not inc.open


def test_inline_shorter_than_total_length_is_incomplete():
    inc, col = _inc("t")
    col.run(inc.header("a", _hdr("y", total_length=5)["stream_header"], b"abc"))
    assert col.error_text("y") == "incomplete: got 3 of 5 bytes"


# 2000 zero bytes as raw DEFLATE (CPython zlib, level 9): 17 bytes that inflate 117-fold
ZEROS_2000 = bytes.fromhex("63601805a360148c8251300a46c1500700")
HELLO = bytes.fromhex("cb48cdc9c90700")   # b"hello" as raw DEFLATE


def test_compressed_inline_inflating_past_total_length_is_length_exceeded():
    inc, col = _inc("t")
    col.run(inc.header("a", _hdr("b", total_length=1000, compression=1)["stream_header"], ZEROS_2000))
    assert col.error_text("b").startswith("length exceeded"), col.error_text("b")
    assert len(col.data["b"]) <= 1000 and not inc.open


def test_compressed_chunked_stream_inflating_past_total_length_is_length_exceeded():
    # The whole bomb in one small chunk: MicroPython's inflater hands its output out
    # only when the trailer says the input is complete, CPython's at once.
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("b", total_length=1000, compression=1), _chunk("b", 0, ZEROS_2000),
                             _trailer("b")])
    assert col.error_text("b").startswith("length exceeded"), col.error_text("b")
    assert len(col.data["b"]) <= 1000 and not inc.open


def test_compressed_inline_short_of_total_length_is_incomplete():
    inc, col = _inc("t")
    col.run(inc.header("a", _hdr("h", total_length=6, compression=1)["stream_header"], HELLO))
    assert bytes(col.data["h"]) == b"hello" and col.error_text("h") == "incomplete: got 5 of 6 bytes"


def test_compressed_stream_inflating_past_the_cap_at_the_trailer_ends_with_an_error():
    inc, col = _inc("t", max_inflated=1000)
    feed_all(inc, col, "a", [_hdr("b", compression=1), _chunk("b", 0, ZEROS_2000), _trailer("b")])
    assert "decompression output exceeds 1000 bytes" in col.error_text("b"), col.error_text("b")
    assert len(col.data["b"]) <= 1000 and not inc.open


def test_sender_leaving_ends_its_open_streams_with_abnormal_end():
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("p"), _chunk("p", 0, b"x")])
    feed(inc, col, "b", _hdr("q"))
    col.run(inc.participant_left("a"))
    assert col.error_text("p") == "abnormal end: sender left" and "q" not in col.ended
    assert list(inc.open) == ["q"]


def test_link_loss_ends_every_open_stream():
    inc, col = _inc("t")
    feed(inc, col, "a", _hdr("p"))
    feed(inc, col, "b", _hdr("q"))
    col.run(inc.close_all("link lost"))
    assert col.error_text("p") == "abnormal end: link lost" and "link lost" in col.error_text("q")
    assert not inc.open


def test_trailer_ends_the_stream_only_when_it_arrives():
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("w", total_length=2), _chunk("w", 0, b"ab")])
    assert bytes(col.data["w"]) == b"ab" and "w" not in col.ended and "w" in inc.open
    feed(inc, col, "a", _trailer("w"))
    assert col.ended["w"] is None and not inc.open


def test_trailer_with_a_reason_ends_the_stream_with_that_reason():
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("r"), _chunk("r", 0, b"x"), _trailer("r", "cancelled by user")])
    assert col.error_text("r") == "abnormal end: cancelled by user"


def test_chunk_from_another_identity_is_dropped():
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("o"), _chunk("o", 0, b"mine")])
    feed_all(inc, col, "mallory", [_chunk("o", 1, b"evil"), _trailer("o")])
    assert bytes(col.data["o"]) == b"mine" and "o" not in col.ended
    feed(inc, col, "a", _trailer("o"))
    assert col.ended["o"] is None


def test_too_many_open_streams_are_rejected_with_a_reason():
    inc, col = _inc("t", max_streams=2)
    for sid in ("s1", "s2", "s3"):
        feed(inc, col, "a", _hdr(sid))
    assert col.ignored == [("s3", "too many open streams (limit 2)")]
    feed_all(inc, col, "a", [_chunk("s3", 0, b"x"), _trailer("s3")])
    assert "s3" not in col.data and len(col.ignored) == 1
    col.run(inc.header("a", _hdr("s4")["stream_header"], b"inline ok"))
    assert bytes(col.data["s4"]) == b"inline ok"


def _header_at(inc, col, sid, now_ms, sender="a"):
    h = dict(_hdr(sid)["stream_header"])
    col.run(inc.header(sender, h, None, now_ms))


def _chunk_at(inc, col, sid, index, data, now_ms, sender="a"):
    col.run(inc.chunk(sender, sid, index, memoryview(data), True, now_ms))


def test_when_all_slots_are_taken_the_stream_silent_longest_gives_way_after_evict_idle_ms():
    inc, col = _inc("t", max_streams=2, evict_idle_ms=30000)
    _header_at(inc, col, "s1", 0)
    _header_at(inc, col, "s2", 1000)
    _chunk_at(inc, col, "s1", 0, b"still here", 20000)  # s1 heard later than s2
    _header_at(inc, col, "s3", 31000)  # s2 silent 30 s: it gives way
    assert col.error_text("s2") == "abnormal end: idle for 30 s while all 2 stream slots were in use"
    assert "s1" not in col.ended and "s3" in inc.open and not col.ignored
    _chunk_at(inc, col, "s2", 0, b"late", 32000)  # the evicted stream's packets are dropped
    feed(inc, col, "a", _trailer("s2"))
    assert bytes(col.data["s2"]) == b"" and not col.ignored
    _chunk_at(inc, col, "s3", 0, b"new", 32000)
    feed(inc, col, "a", _trailer("s3"))
    assert bytes(col.data["s3"]) == b"new" and col.ended["s3"] is None


def test_the_stream_that_gave_way_is_marked_evicted_and_an_ordinary_end_is_not():
    inc, col = _inc("t", max_streams=1, evict_idle_ms=1000)
    _header_at(inc, col, "s1", 0)
    evs = list(inc.header("a", dict(_hdr("s2")["stream_header"]), None, 1000))
    ended = [e for e in evs if isinstance(e, streams.StreamEnded)]
    assert len(ended) == 1 and ended[0].info.stream_id == "s1" and ended[0].evicted
    evs = list(inc.trailer("a", _trailer("s2")["stream_trailer"]))
    assert [e.evicted for e in evs if isinstance(e, streams.StreamEnded)] == [False]


def test_a_full_house_of_recently_heard_streams_still_refuses_the_new_one():
    inc, col = _inc("t", max_streams=2, evict_idle_ms=30000)
    _header_at(inc, col, "s1", 0)
    _header_at(inc, col, "s2", 0)
    _chunk_at(inc, col, "s1", 0, b"x", 10000)
    _chunk_at(inc, col, "s2", 0, b"x", 10000)
    _header_at(inc, col, "s3", 39999)  # both silent 29.999 s: not yet
    assert col.ignored == [("s3", "too many open streams (limit 2)")] and not col.ended
    _chunk_at(inc, col, "s3", 0, b"x", 40000)  # the refused stream's packets are dropped quietly
    assert len(col.ignored) == 1 and "s3" not in inc.open


def test_without_evict_idle_ms_a_silent_stream_keeps_its_slot_for_good():
    inc, col = _inc("t", max_streams=1)
    _header_at(inc, col, "s1", 0)
    _header_at(inc, col, "s2", 10 ** 9)
    assert col.ignored == [("s2", "too many open streams (limit 1)")] and not col.ended


def test_an_unwanted_stream_never_evicts_an_idle_one():
    inc, col = _inc("t", max_streams=1, evict_idle_ms=1000)
    _header_at(inc, col, "s1", 0)
    col.run(inc.header("a", {"stream_id": "x", "topic": "nobody", "byte_header": {}}, None, 60000))
    assert col.ignored == [("x", "no handler for bytes streams on topic 'nobody'")]
    assert not col.ended and "s1" in inc.open


def test_an_inline_stream_needs_no_slot_and_evicts_nothing():
    inc, col = _inc("t", max_streams=1, evict_idle_ms=1000)
    _header_at(inc, col, "s1", 0)
    col.run(inc.header("a", _hdr("i")["stream_header"], b"inline", 60000))
    assert bytes(col.data["i"]) == b"inline" and col.ended["i"] is None and "s1" in inc.open


def test_a_chunk_from_another_identity_does_not_keep_a_stream_alive():
    inc, col = _inc("t", max_streams=1, evict_idle_ms=30000)
    _header_at(inc, col, "s1", 0)
    _chunk_at(inc, col, "s1", 0, b"x", 29000, sender="mallory")
    _header_at(inc, col, "s2", 30000, sender="b")
    assert col.error_text("s1").startswith("abnormal end: idle for 30 s") and "s2" in inc.open


def test_compressed_stream_without_an_inflater_is_ignored():
    inc, col = _inc("t", can_inflate=False)
    feed_all(inc, col, "a", [_hdr("z", compression=1), _chunk("z", 0, b"\x03\x00"), _trailer("z")])
    assert not col.opened and len(col.ignored) == 1 and "cannot inflate" in col.ignored[0][1]


def test_compressed_inline_stream_without_an_inflater_is_ignored():
    inc, col = _inc("t", can_inflate=False)
    col.run(inc.header("a", _hdr("z", total_length=5, compression=1)["stream_header"], HELLO))
    assert not col.opened and len(col.ignored) == 1 and "cannot inflate" in col.ignored[0][1]


def test_compressed_stream_without_memory_to_inflate_is_ignored_with_its_chunks_and_trailer():
    def no_memory():
        raise MemoryError("inflating needs about 36000 bytes of heap, 9000 free")
    inc, col = _inc("t")
    inc._new_inflater = no_memory
    feed_all(inc, col, "a", [_hdr("z", total_length=5, compression=1), _chunk("z", 0, HELLO), _trailer("z")])
    col.run(inc.header("a", _hdr("zi", total_length=5, compression=1)["stream_header"], HELLO))
    assert not col.opened and not inc.open
    assert [i[0] for i in col.ignored] == ["z", "zi"], col.ignored   # chunk and trailer dropped silently
    assert "cannot inflate: inflating needs about" in col.ignored[0][1]
    feed_all(inc, col, "a", _finite("bytes", b"plain", sid="p"))   # others still flow
    assert bytes(col.data["p"]) == b"plain" and col.ended["p"] is None


def test_compressed_stream_without_total_length_is_refused_unless_a_cap_is_set():
    # Senders compress only finite streams; without total_length or max_inflated
    # nothing would bound what the stream inflates to.
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_hdr("nb", compression=1), _chunk("nb", 0, b"\x03\x00"), _trailer("nb")])
    assert not col.opened and "compressed without a total_length" in col.ignored[0][1], col.ignored
    inc, col = _inc("t", max_inflated=1000)
    feed_all(inc, col, "a", [_hdr("ok", compression=1), _chunk("ok", 0, b"\x03\x00"), _trailer("ok")])
    assert col.opened and not col.ignored and col.ended["ok"] is None, (col.ignored, col.ended)


def _ignore_long_ids(inc, col):
    # In a function of its own: MicroPython's collector scans the C stack, where this
    # frame's slots (the loops' slices of ids) stay behind while it runs; once it has
    # returned they are below the stack pointer, unscanned (a stale slot held 8 ids).
    ids = ["%02d" % i + "x" * 1998 for i in range(16)]
    for sid in ids[:8]:   # no handler for topic "other"
        col.run(inc.header("a", _hdr(sid, topic="other")["stream_header"], None))
    for sid in ids[8:]:   # a chunk of a stream never opened
        col.run(inc.chunk("a", sid, 0, b"x", True))
    assert len(col.ignored) == 16


def test_ignored_streams_long_ids_pin_no_heap_and_their_chunks_stay_silent():
    # A hostile sender's ignored streams (no handler, or chunks of unknown streams)
    # with 2000-byte ids pinned 16 whole ids, ~33 KB of a board's heap, for good
    inc, col = _inc("t")
    _ignore_long_ids(inc, col)
    gc.collect()
    before = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0
    col.ignored = []
    gc.collect()
    freed = (before - gc.mem_alloc()) if hasattr(gc, "mem_alloc") else 32000
    assert freed > 30000, "the ignored ids are still held: %d B freed" % freed
    sid = "%02d" % 3 + "x" * 1998   # a chunk and the trailer of an ignored one: silent
    col.run(inc.chunk("a", sid, 1, b"y", True))
    col.run(inc.trailer("a", _trailer(sid)["stream_trailer"]))
    assert col.ignored == [] and not inc.open, col.ignored


def test_header_without_content_header_is_ignored():
    inc, col = _inc("t")
    col.run(inc.header("a", {"stream_id": "h", "topic": "t"}, None))
    assert col.ignored == [("h", "header has neither text_header nor byte_header")]


def test_data_pieces_never_exceed_piece_size():
    inc, col = _inc("t", piece_size=100)
    feed_all(inc, col, "a", _finite("bytes", b"p" * 5000, inline_ok=False, sid="ps"), piece=512)
    col.run(inc.header("a", _hdr("pi")["stream_header"], b"i" * 1000))
    assert col.max_piece == 100 and len(col.data["ps"]) == 5000 and len(col.data["pi"]) == 1000


def test_unknown_chunk_and_trailer_are_reported_once():
    inc, col = _inc("t")
    feed_all(inc, col, "a", [_chunk("u", 0, b"x"), _chunk("u", 1, b"y"), _trailer("u"), _trailer("v")])
    assert [i[0] for i in col.ignored] == ["u", "v"]


def test_one_mib_uncompressed_stream_with_constant_live_memory():
    inc, col = _inc("t")
    buf = memoryview(bytearray(512))
    for i in range(512):
        buf[i] = (i * 7) & 0xFF
    n = 1 << 20
    mem_alloc = getattr(gc, "mem_alloc", lambda: 0)  # MicroPython only
    gc.collect()
    base = mem_alloc()
    peak = [0]
    got = [0]

    def run(events):
        for ev in events:
            if isinstance(ev, streams.StreamData):
                assert ev.data[0] == (got[0] % LIMIT % 512) * 7 & 0xFF
                got[0] += len(ev.data)
            elif isinstance(ev, streams.StreamEnded):
                assert ev.error is None, ev.error
    run(inc.header("a", _hdr("big", total_length=n)["stream_header"], None))
    index = 0
    for off in range(0, n, LIMIT):
        size = min(LIMIT, n - off)
        for p in range(0, size, 512):
            k = min(512, size - p)
            run(inc.chunk("a", "big", index, buf[:k], p + k >= size))
        index += 1
        gc.collect()  # live memory only: garbage would count otherwise
        peak[0] = max(peak[0], mem_alloc() - base)
    run(inc.trailer("a", {"stream_id": "big"}))
    assert got[0] == n
    assert peak[0] < 4096, peak[0]
    print("1 MiB uncompressed stream: peak live heap growth %d bytes" % peak[0])


# ------------------------------------------------------------------------ utf8
def test_utf8_cut_never_splits_a_character():
    b = "a\u00fc\u65e5\U0001f600".encode("utf-8")  # 1 + 2 + 3 + 4 bytes
    assert [utf8.cut(b, n) for n in range(11)] == [0, 1, 1, 3, 3, 3, 6, 6, 6, 6, 10]


def test_utf8_decoder_carries_partial_characters_and_rejects_bad_bytes():
    b = "x\u00fc\U0001f600y".encode("utf-8")
    for step in (1, 2, 3):
        d = utf8.Utf8Decoder()
        s = "".join(d.decode(b[i:i + step]) for i in range(0, len(b), step))
        d.finish()
        assert s == "x\u00fc\U0001f600y"
    # the last four are well shaped, so MicroPython's own check would let them through:
    # a surrogate, an overlong "/", past U+10FFFF, a 4-byte overlong form
    for bad in (b"\xff", b"a\xc3(", b"\x80", b"ok \xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80",
                b"\xf0\x80\x80\x80"):
        try:
            utf8.Utf8Decoder().decode(bad)
        except utf8.Utf8Error as e:
            assert "invalid UTF-8" in str(e)
        else:
            raise AssertionError("accepted %r" % bad)
    d = utf8.Utf8Decoder()
    d.decode(b"\xf0\x9f")
    try:
        d.finish()
    except utf8.Utf8Error as e:
        assert "2 of 4" in str(e)
    else:
        raise AssertionError("unfinished character accepted")


def test_utf8_checks_of_a_long_view_find_bad_forms_at_every_window_edge():
    # A view (a board's str lent as its bytes) is checked through a 256-byte window;
    # a surrogate or an overlong form straddling two windows must still be found.
    # Each is well shaped, so MicroPython's own decoding lets it through: only the scan
    # finds it (the text around it is ASCII, with no stray byte to give it away).
    for bad in (b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80"):
        for at in (0, 253, 254, 255, 256, 509, 510, 511, 700):
            data = b"a" * at + bad + b"b" * (800 - at)
            try:
                utf8.text(memoryview(data))
            except (UnicodeError, ValueError):
                pass
            else:
                raise AssertionError("%r at %d accepted" % (bad, at))
    good = ("\u00e9\u65e5\U0001f600" * 300).encode("utf-8")
    assert utf8.text(memoryview(good)) == "\u00e9\u65e5\U0001f600" * 300


def test_checking_a_long_non_ascii_answer_does_not_copy_it():
    # encoded_text(s) of a 16 KiB non-ASCII str copied all of it to look for bad forms:
    # the MemoryError that failed a board's 16 KB echo ("allocating 16385 bytes").
    s = "\u00e9" * 8192
    gc.collect()
    before = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0
    b = utf8.encoded_text(s)
    took = (gc.mem_alloc() - before) if hasattr(gc, "mem_alloc") else 0
    assert len(b) == 16384
    if sys.implementation.name == "micropython":   # CPython's encode() is a copy anyway
        # the window, and a small view per 256 bytes (garbage): a quarter of a copy
        assert took < len(b) // 4, took


# --------------------------------------------- chunks within the link's max_frame
_MANY = ["participant-with-a-long-identity-%05d" % i for i in range(80)]   # ~3.4 KB per packet


def _frame(pkt):
    return 1 + streams.packet_size(pkt)   # LINK.md: n = type byte + DataPacket


def test_chunk_room_is_15000_unless_max_frame_is_short_of_it():
    assert streams.chunk_room("s", _MANY) == LIMIT            # no link limit known
    assert streams.chunk_room("s", [], 16384) == LIMIT
    assert streams.chunk_room("s", _MANY, 65536) == LIMIT
    room = streams.chunk_room("s", _MANY, 16384)
    assert 12000 < room < LIMIT, room


def test_a_full_chunk_to_many_destinations_fits_the_links_max_frame():
    room = streams.chunk_room("s", _MANY, 16384)
    pkt = streams.chunk_packet("s", 0xFFFFFFFF, _MANY, bytes(room))
    assert _frame(pkt) <= 16384, _frame(pkt)
    assert _frame(streams.chunk_packet("s", 0, _MANY, bytes(LIMIT))) > 16384   # what 15000 would do


def test_finite_chunks_to_many_destinations_stay_within_max_frame():
    data = lcg_bytes(30000)
    pkts = _finite("bytes", data, inline_ok=False, dests=_MANY, max_frame=16384)
    chunks = [p for p in pkts if "stream_chunk" in p]
    assert len(chunks) == 3 and all(_frame(p) <= 16384 for p in pkts), [_frame(p) for p in pkts]
    off = 0
    for c in chunks:   # in order, nothing lost (compared in place: a board-sized heap)
        part = c["stream_chunk"]["content"]
        assert part == memoryview(data)[off:off + len(part)]
        off += len(part)
    assert off == len(data)


def test_finite_text_chunks_are_cut_between_characters_at_a_smaller_room_too():
    text = "\u65e5" * 10000   # 30000 bytes: 3 chunks of whole characters
    pkts = _finite("text", text.encode("utf-8"), inline_ok=False, dests=_MANY, max_frame=16384)
    parts = [str(bytes(p["stream_chunk"]["content"]), "utf-8") for p in pkts if "stream_chunk" in p]
    assert len(parts) == 3 and all(len(p) for p in parts)
    assert sum(len(p) for p in parts) == 10000 and all(p == "\u65e5" * len(p) for p in parts)


def test_incremental_chunks_to_many_destinations_stay_within_max_frame():
    out = streams.OutgoingStream("s10", "bytes", "t", _MANY, max_frame=16384)
    out.header()
    chunks = out.write(b"z" * 30000)
    assert len(chunks) == 3 and all(_frame(c) <= 16384 for c in chunks)


def test_a_destination_list_that_leaves_no_room_for_content_is_refused_by_name():
    crowd = ["p%05d" % i for i in range(500)]   # 4 KB of identities in every chunk
    try:
        streams.OutgoingStream("s11", "bytes", "t", crowd, max_frame=4096)
    except streams.StreamError as e:
        assert "500 destination identities" in str(e) and "fewer destinations" in str(e), str(e)
    else:
        raise AssertionError("a stream whose chunks cannot fit the link was accepted")


def test_the_quick_bound_never_lets_a_full_chunk_pass_max_frame():
    # chunk_room answers 15000 from a bound when the destinations are few; at every
    # max_frame around that bound the full chunk must still fit
    dests = ["\U0001f600" * 20, "b" * 200]   # 4-byte characters, a 2-byte length prefix
    for mf in range(15200, 16200, 50):
        room = streams.chunk_room("s" * 36, dests, mf)
        assert _frame(streams.chunk_packet("s" * 36, 0xFFFFFFFF, dests, bytes(room))) <= mf, mf


def test_a_sender_holding_more_than_half_the_slots_gives_its_stalest_one_up_to_another():
    inc, col = _inc("t", max_streams=4)   # no evict_idle_ms: only fairness evicts
    for i, t in enumerate((0, 10, 20)):
        _header_at(inc, col, "h%d" % i, t)        # "a" (the default sender) takes 3 of 4
    col.run(inc.header("b", _hdr("g1")["stream_header"], None, 30))
    assert not col.ended and "g1" in inc.open    # a free slot: nothing to evict
    col.run(inc.header("b", _hdr("g2")["stream_header"], None, 40))
    assert "g2" in inc.open and "h0" not in inc.open, sorted(inc.open)
    assert "'a' held 3 of the 4 slots" in str(col.ended["h0"]), col.ended
    col.run(inc.header("b", _hdr("g3")["stream_header"], None, 50))
    assert col.ignored[-1] == ("g3", "too many open streams (limit 4)"), col.ignored   # 2 and 2: fair
