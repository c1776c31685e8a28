"""lkedge.proto on the device side: fixed byte vectors from livekit-protocol (checked
against the official classes again by tests/lib/test_proto.py), split feeding, errors,
and the decoder's memory figure. Runs under CPython (pytest) and MicroPython.

The whole module runs at MP_HEAPSIZE below: compiling proto.py from source on the unix
port (64-bit) needs about 100 KB of transient heap, so 32K is out of reach for a
source import; tests/lib/test_proto.py runs the memory figure under a 40K heap from
mpy-cross output, which is how boards load the library.
"""
from lkedge import proto, relayside
from lkedge.proto import (DATA_PACKET, USER_PACKET, RPC_REQUEST, RPC_ACK, RPC_RESPONSE, RPC_ERROR,
                          STREAM_HEADER, STREAM_CHUNK, STREAM_TRAILER, TEXT_HEADER, BYTE_HEADER,
                          PARTICIPANT_INFO, ProtoError)
import proto_memcheck

MP_HEAPSIZE = "192K"

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"

# (schema, message, serialized hex from livekit-protocol, decoded dict if not the message)
VECTORS = [
    (DATA_PACKET,
     {
         "kind": 1,
         "user": {
             "participant_sid": "PA_1",
             "payload": b'\x00\xffhi',
             "destination_sids": ["PA_2", ""],
             "topic": "",
             "participant_identity": "ann",
             "destination_identities": ["bob"],
             "id": "u1",
             "start_time": 0,
             "end_time": 18446744073709551615,
             "nonce": b'\x01'}},
     ("080112340a0450415f31120400ff68691a0450415f321a0022002a03616e6e3203626f"
      "6242027531480050ffffffffffffffffff015a0101"),
     None),
    (DATA_PACKET,
     {
         "participant_identity": "board-1",
         "destination_identities": ["host", "b\xe9"],
         "rpc_request": {
             "id": UUID,
             "method": "echo",
             "payload": "h\xe9llo \u2603",
             "response_timeout_ms": 8000,
             "version": 1},
         "sequence": 4294967295,
         "participant_sid": "PA_abc"},
     ("2207626f6172642d312a04686f73742a0362c3a9523d0a2430663866616435622d6439"
      "63622d343639662d613136352d37303836373732383935306512046563686f1a0a68c3"
      "a96c6c6f20e2988320c03e28018001ffffffff0f8a010650415f616263"),
     None),
    (DATA_PACKET,
     {"rpc_ack": {"request_id": UUID}},
     ("5a260a2430663866616435622d643963622d343639662d613136352d37303836373732"
      "3839353065"),
     None),
    (DATA_PACKET,
     {"rpc_response": {"request_id": UUID, "payload": ""}},
     ("62280a2430663866616435622d643963622d343639662d613136352d37303836373732"
      "38393530651200"),
     None),
    (DATA_PACKET,
     {
         "rpc_response": {
             "request_id": UUID,
             "error": {"code": 1500, "message": "Application error in method handler", "data": "d\xe4ta"}}},
     ("62570a2430663866616435622d643963622d343639662d613136352d37303836373732"
      "38393530651a2f08dc0b12234170706c69636174696f6e206572726f7220696e206d65"
      "74686f642068616e646c65721a0564c3a47461"),
     None),
    (DATA_PACKET,
     {
         "stream_header": {
             "stream_id": UUID,
             "timestamp": -1,
             "topic": "lk.rpc_request",
             "mime_type": "text/plain",
             "total_length": 0,
             "encryption_type": 0,
             "attributes": {"lk.rpc_request_id": UUID, "b": "", "a": "1"},
             "text_header": {
                 "operation_type": 3,
                 "version": -2,
                 "reply_to_stream_id": "r",
                 "attached_stream_ids": ["x", "y"],
                 "generated": True},
             "inline_content": b'',
             "compression": 1}},
     ("6ab7010a2430663866616435622d643963622d343639662d613136352d373038363737"
      "32383935306510ffffffffffffffffff011a0e6c6b2e7270635f72657175657374220a"
      "746578742f706c61696e280042060a016112013142050a0162120042390a116c6b2e72"
      "70635f726571756573745f6964122430663866616435622d643963622d343639662d61"
      "3136352d3730383637373238393530654a18080310feffffffffffffffff011a017222"
      "017822017928015a006001"),
     {
         "stream_header": {
             "stream_id": UUID,
             "timestamp": -1,
             "topic": "lk.rpc_request",
             "mime_type": "text/plain",
             "total_length": 0,
             "attributes": {"lk.rpc_request_id": UUID, "b": "", "a": "1"},
             "text_header": {
                 "operation_type": 3,
                 "version": -2,
                 "reply_to_stream_id": "r",
                 "attached_stream_ids": ["x", "y"],
                 "generated": True},
             "inline_content": b'',
             "compression": 1}}),
    (DATA_PACKET,
     {
         "stream_header": {
             "stream_id": "s",
             "timestamp": 1732460000000,
             "topic": "files",
             "mime_type": "application/octet-stream",
             "total_length": 18446744073709551615,
             "byte_header": {"name": "unknown"}}},
     ("6a410a01731080e6a6f5b5321a0566696c657322186170706c69636174696f6e2f6f63"
      "7465742d73747265616d28ffffffffffffffffff0152090a07756e6b6e6f776e"),
     None),
    (DATA_PACKET,
     {
         "stream_chunk": {
             "stream_id": "s",
             "chunk_index": 18446744073709551615,
             "content": b'\x00' * 300,
             "version": -2147483648,
             "iv": b''}},
     ("72ca020a017310ffffffffffffffffff011aac02000000000000000000000000000000"
      "0000000000000000000000000000000000000000000000000000000000000000000000"
      "0000000000000000000000000000000000000000000000000000000000000000000000"
      "0000000000000000000000000000000000000000000000000000000000000000000000"
      "0000000000000000000000000000000000000000000000000000000000000000000000"
      "0000000000000000000000000000000000000000000000000000000000000000000000"
      "0000000000000000000000000000000000000000000000000000000000000000000000"
      "0000000000000000000000000000000000000000000000000000000000000000000000"
      "0000000000000000000000000000000000000000000000000000000000000000000000"
      "00000000002080808080f8ffffffff012a00"),
     None),
    (DATA_PACKET,
     {
         "stream_trailer": {"stream_id": "s", "reason": "", "attributes": {"k": "v", "\xe9": "\u2603"}}},
     "7a160a01731a060a016b1201761a090a02c3a91203e29883",
     {"stream_trailer": {"stream_id": "s", "attributes": {"k": "v", "\xe9": "\u2603"}}}),
    (DATA_PACKET,
     {},
     "",
     None),
    (USER_PACKET,
     {"payload": b'abc', "topic": "t"},
     "1203616263220174",
     None),
    (RPC_REQUEST,
     {
         "id": "i",
         "method": "m",
         "payload": "",
         "response_timeout_ms": 0,
         "compressed_payload": b'\x01\x02'},
     "0a016912016d32020102",
     {"id": "i", "method": "m", "compressed_payload": b'\x01\x02'}),
    (RPC_ACK,
     {"request_id": "r"},
     "0a0172",
     None),
    (RPC_RESPONSE,
     {"request_id": "r", "compressed_payload": b''},
     "0a01722200",
     None),
    (RPC_ERROR,
     {"code": 1404, "message": "Unsupported RPC version", "data": ""},
     "08fc0a1217556e737570706f72746564205250432076657273696f6e",
     {"code": 1404, "message": "Unsupported RPC version"}),
    (STREAM_HEADER,
     {"stream_id": "s", "inline_content": b'x' * 200, "compression": 0},
     ("0a01735ac8017878787878787878787878787878787878787878787878787878787878"
      "7878787878787878787878787878787878787878787878787878787878787878787878"
      "7878787878787878787878787878787878787878787878787878787878787878787878"
      "7878787878787878787878787878787878787878787878787878787878787878787878"
      "7878787878787878787878787878787878787878787878787878787878787878787878"
      "78787878787878787878787878787878787878787878787878787878787878"),
     {"stream_id": "s", "inline_content": b'x' * 200}),
    (STREAM_CHUNK,
     {"stream_id": "s", "chunk_index": 0, "content": b'', "version": 0},
     "0a0173",
     {"stream_id": "s"}),
    (STREAM_TRAILER,
     {"stream_id": "s", "reason": "cancelled"},
     "0a0173120963616e63656c6c6564",
     None),
    (TEXT_HEADER,
     {"operation_type": 1, "version": 2147483647, "generated": False},
     "080110ffffffff07",
     {"operation_type": 1, "version": 2147483647}),
    (BYTE_HEADER,
     {"name": "f.bin"},
     "0a05662e62696e",
     None),
    (PARTICIPANT_INFO,
     {
         "sid": "PA_1",
         "identity": "board-1",
         "state": 2,
         "kind": 0,
         "attributes": {"x": "y"},
         "client_protocol": 2,
         "capabilities": [1, 2]},
     "0a0450415f311207626f6172642d3118027a060a0178120179a00102aa01020102",
     {
         "sid": "PA_1",
         "identity": "board-1",
         "state": 2,
         "attributes": {"x": "y"},
         "client_protocol": 2,
         "capabilities": [1, 2]}),
    (PARTICIPANT_INFO,
     {"client_protocol": -1, "capabilities": [0, 300]},
     "a001ffffffffffffffffff01aa010300ac02",
     None),
]


def _hx(h):
    return bytes.fromhex(h)


# Hand-made packets the official parser reads as noted (tests/lib/test_proto.py checks
# each expectation against livekit-protocol): (schema, hex, decoded dict, what it checks)
DECODE_CASES = [
    (DATA_PACKET, ("a00601720b0a01784d01020304900301a9060001020304050607b20603616263bd06ff"
                   "ffffff800105"),
     {"stream_chunk": {"stream_id": "x"}, "sequence": 5},
     "unknown fields of wire types 0, 1, 2 and 5, at the top and inside a sub-message"),
    (DATA_PACKET, "22016172050a0173100122016272031a017a",
     {"participant_identity": "b", "stream_chunk": {"stream_id": "s", "chunk_index": 1, "content": b"z"}},
     "a sub-message that occurs twice merges; a string that occurs twice: the last wins"),
    (DATA_PACKET, "5a030a013152030a01325a00", {"rpc_ack": {}},
     "a later oneof case replaces the earlier one, and a case seen again starts afresh"),
    (DATA_PACKET, "5a030a01311a00", {},
     "a skipped oneof case (speaker) still clears the case before it"),
    (PARTICIPANT_INFO, "a80101aa01020200a80102", {"capabilities": [1, 2, 0, 2]},
     "repeated enums unpacked and packed, mixed"),
    (DATA_PACKET, "82010141800107", {"sequence": 7},
     "a known field number with the wrong wire type is skipped as unknown"),
    (STREAM_TRAILER, "1a031201761a060a016b1201311a060a016b120132", {"attributes": {"": "v", "k": "2"}},
     "map entries: a missing key is the empty string, a repeated key: the last wins"),
    (DATA_PACKET, "8a010350415f72060a01731a01782201780801", {
        "participant_sid": "PA_", "stream_chunk": {"stream_id": "s", "content": b"x"},
        "participant_identity": "x", "kind": 1},
     "fields in any order"),
    (TEXT_HEADER, "10ffffffff0f", {"version": -1}, "an int32 written as a 5-byte varint"),
    (TEXT_HEADER, "2803", {"generated": True}, "a bool is any non-zero varint"),
    (DATA_PACKET, "888080800001", {"kind": 1}, "a tag in 5 bytes"),
    (DATA_PACKET, "22818080800061", {"participant_identity": "a"}, "a length in 5 bytes"),
    (DATA_PACKET, "2203ed9fbf", {"participant_identity": "\ud7ff"}, "the last code point before the surrogates"),
    (DATA_PACKET, "2204f48fbfbf", {"participant_identity": "\U0010ffff"}, "the last code point"),
    (DATA_PACKET, "2203e0a080", {"participant_identity": "\u0800"}, "the first 3-byte code point"),
]

# Malformed input: (schema, hex, a word the ProtoError message must contain)
ERROR_CASES = [
    (DATA_PACKET, "720a0a0173", "truncated"),                   # sub-message longer than the packet
    (DATA_PACKET, "8001", "truncated"),                         # varint cut off
    (DATA_PACKET, "8a", "truncated"),                           # tag cut off
    (DATA_PACKET, "72050a0a73737373737373737373", "overrunning"),  # field longer than its parent
    (DATA_PACKET, "a3060a", "group"),                           # wire type 3
    (DATA_PACKET, "a406", "group"),                             # wire type 4
    (DATA_PACKET, "80018080808080808080808001", "10 bytes"),    # 11-byte varint
    (DATA_PACKET, "2202c328", "UTF-8"),                          # bad UTF-8 in a string
    (DATA_PACKET, "0001", "field number 0"),
    (DATA_PACKET, "f0ffffff1000", "out of range"),              # field number 2**29
    (PARTICIPANT_INFO, "aa01018001", "runs past"),               # packed varint cut by its length
    (DATA_PACKET, "88808080800001", "tag varint longer than 5 bytes"),
    (DATA_PACKET, "228180808080800061", "length varint longer than 5 bytes"),
    # well-shaped but invalid UTF-8, which MicroPython's own check lets through
    (DATA_PACKET, "2203eda080", "UTF-8"),                        # a surrogate
    (DATA_PACKET, "2202c0af", "UTF-8"),                          # "/" as an overlong form
    (DATA_PACKET, "2203e08080", "UTF-8"),                        # a 3-byte overlong form
    (DATA_PACKET, "2204f0808080", "UTF-8"),                      # a 4-byte overlong form
    (DATA_PACKET, "2204f4908080", "UTF-8"),                      # past U+10FFFF
    (DATA_PACKET, "2204f5808080", "UTF-8"),                      # lead byte F5
]


def _fmt(v):
    return repr(v)[:200]


def test_encode_matches_official_vectors():
    for schema, msg, h, _ in VECTORS:
        got = proto.encode(schema, msg)
        assert got == _hx(h), "%s: %s != %s" % (schema[0], got, h)
        assert proto.encoded_size(schema, msg) == len(got)


def test_decode_matches_official_vectors():
    for schema, msg, h, dec in VECTORS:
        got = proto.decode(schema, _hx(h))
        want = msg if dec is None else dec
        assert got == want, "%s: %s != %s" % (schema[0], _fmt(got), _fmt(want))


def test_decode_cases_match_official_parser():
    for schema, h, want, why in DECODE_CASES:
        got = proto.decode(schema, _hx(h))
        assert got == want, "%s: %s != %s" % (why, got, want)


def test_malformed_input_raises_specific_protoerror():
    for schema, h, word in ERROR_CASES:
        try:
            got = proto.decode(schema, _hx(h))
        except ProtoError as e:
            assert word in str(e), "%s: %r does not mention %r" % (h, str(e), word)
        else:
            raise AssertionError("%s decoded to %r instead of failing" % (h, got))


BIG_PATHS = (
    (proto.K_USER_PAYLOAD, ("user", "payload"), False),
    (proto.K_RPC_REQUEST_PAYLOAD, ("rpc_request", "payload"), True),
    (proto.K_RPC_RESPONSE_PAYLOAD, ("rpc_response", "payload"), True),
    (proto.K_RPC_ERROR_DATA, ("rpc_response", "error", "data"), True),
    (proto.K_INLINE_CONTENT, ("stream_header", "inline_content"), False),
    (proto.K_CHUNK_CONTENT, ("stream_chunk", "content"), False),
)


def stream_decode(data, step, max_field=4096):
    """Feeds data to a PacketDecoder `step` bytes at a time; returns the packet dict
    with the big fields put back, after checking the piece rules."""
    dec = proto.PacketDecoder(max_field)
    dec.start(len(data))
    mv = memoryview(data)
    big = {}
    open_key = None
    for pos in range(0, len(data) + 1, step):
        chunk = mv[pos:pos + step]
        if pos < len(data) or not len(data):
            dec.receive(chunk)
        while True:
            ev = dec.next_event()
            if ev is proto.NEED_DATA:
                break
            if ev[0] == proto.PACKET:
                assert open_key is None, "packet ended inside a big field"
                return _put_back(ev[1], big)
            kind, key, piece, final = ev
            assert len(piece) <= len(chunk), "a piece larger than the received slice"
            assert len(piece) or final, "an empty piece that is not final"
            assert open_key in (None, key), "pieces of two fields interleave"
            if open_key is None:
                big[key] = bytearray()
            big[key].extend(piece)
            open_key = None if final else key
    raise AssertionError("no PACKET event after all bytes")


def _put_back(msg, big):
    for key, path, is_str in BIG_PATHS:
        if key in big:
            d = msg
            for p in path[:-1]:
                d = d[p]
            d[path[-1]] = bytes(big[key]).decode("utf-8") if is_str else bytes(big[key])
    return msg


def test_packet_decoder_any_split_gives_the_whole_decode():
    for schema, msg, h, dec in VECTORS:
        if schema is not DATA_PACKET:
            continue
        data = _hx(h)
        want = relayside.decode_packet(data)
        for step in (1, 2, 3, 7, 64, 1000):
            got = stream_decode(data, step)
            assert got == want, "step %d: %s != %s" % (step, _fmt(got), _fmt(want))


def test_big_fields_are_pieces_not_dict_values():
    data = _hx(VECTORS[7][2])  # a stream_chunk with 300 bytes of content
    dec = proto.PacketDecoder()
    dec.start(len(data))
    dec.receive(data)
    ev = dec.next_event()
    assert ev[0] == proto.PIECE and ev[1] == proto.K_CHUNK_CONTENT and ev[3] is True
    assert bytes(ev[2]) == bytes(300)
    assert dec.msg["stream_chunk"]["stream_id"] == "s"   # routing fields come first
    ev = dec.next_event()
    assert ev[0] == proto.PACKET and "content" not in ev[1]["stream_chunk"]
    assert ev[1]["stream_chunk"]["iv"] == b""


def test_present_empty_inline_content_is_one_empty_final_piece():
    data = proto.encode(DATA_PACKET, {"stream_header": {"stream_id": "s", "inline_content": b""}})
    dec = proto.PacketDecoder()
    dec.start(len(data))
    dec.receive(data)
    ev = dec.next_event()
    assert ev[0] == proto.PIECE and ev[1] == proto.K_INLINE_CONTENT
    assert len(ev[2]) == 0 and ev[3] is True
    ev = dec.next_event()
    assert ev[0] == proto.PACKET and ev[1] == {"stream_header": {"stream_id": "s"}}
    # absent: no piece at all
    data = proto.encode(DATA_PACKET, {"stream_header": {"stream_id": "s"}})
    dec.start(len(data))
    dec.receive(data)
    assert dec.next_event()[0] == proto.PACKET


def test_piece_spanning_the_whole_slice_is_that_slice():
    data = _hx(VECTORS[7][2])
    dec = proto.PacketDecoder()
    dec.start(len(data))
    head = len(data) - 300
    dec.receive(memoryview(data)[:head + 10])
    assert dec.next_event()[3] is False
    assert dec.next_event() is proto.NEED_DATA
    middle = memoryview(data)[head + 10:head + 100]
    dec.receive(middle)
    ev = dec.next_event()
    assert ev[2] is middle   # no slice was made
    assert len(ev[2]) == 90


def test_small_field_split_across_receives():
    data = proto.encode(DATA_PACKET, {"participant_identity": "x" * 200, "sequence": 3})
    got = stream_decode(data, 5)
    assert got == {"participant_identity": "x" * 200, "sequence": 3}


def test_small_field_over_max_field_names_field_and_sizes():
    data = proto.encode(DATA_PACKET, {"participant_identity": "x" * 100})
    dec = proto.PacketDecoder(max_field=64)
    dec.start(len(data))
    dec.receive(data)
    try:
        dec.next_event()
    except ProtoError as e:
        msg = str(e)
        assert "participant_identity" in msg and "100" in msg and "64" in msg, msg
    else:
        raise AssertionError("a 100-byte field passed a 64-byte limit")
    # big fields are not limited
    data = proto.encode(DATA_PACKET, {"stream_chunk": {"content": b"y" * 100}})
    assert stream_decode(data, 7, max_field=64) == {"stream_chunk": {"content": b"y" * 100}}


def test_error_sticks_until_start():
    dec = proto.PacketDecoder()
    dec.start(3)
    dec.receive(_hx("a3060a"))
    for _ in range(2):
        try:
            dec.next_event()
            raise AssertionError("no error")
        except ProtoError as e:
            assert "group" in str(e)
    data = _hx(VECTORS[2][2])
    dec.start(len(data))
    dec.receive(data)
    assert dec.next_event() == (proto.PACKET, {"rpc_ack": {"request_id": UUID}})


def test_bytes_beyond_the_length_are_rejected():
    dec = proto.PacketDecoder()
    dec.start(2)
    try:
        dec.receive(_hx("800101"))
        raise AssertionError("accepted 3 bytes for a 2-byte packet")
    except ProtoError as e:
        assert "beyond" in str(e)


def test_truncated_prefixes_fail_unless_cut_between_fields():
    data = _hx(VECTORS[1][2])
    boundaries = [f[2] for f in relayside.scan_fields(data)]
    decoded = []
    for n in range(len(data)):
        try:
            stream_decode(data[:n], 3)
            decoded.append(n)
        except ProtoError as e:
            assert "truncated" in str(e), str(e)
    assert decoded == boundaries, (decoded, boundaries)


def test_negative_and_max_ints():
    hdr = {"stream_id": "s", "timestamp": -1732460000000, "total_length": 18446744073709551615}
    data = proto.encode(STREAM_HEADER, hdr)
    assert proto.decode(STREAM_HEADER, data) == hdr
    assert proto.encode(TEXT_HEADER, {"version": -1}) == _hx("10ffffffffffffffffff01")
    assert proto.decode(STREAM_CHUNK, proto.encode(STREAM_CHUNK, {"version": -2147483648})) == {"version": -2147483648}


def test_encode_rejects_bad_messages():
    bad = [
        (DATA_PACKET, {"payload": b"x"}, "no field"),
        (DATA_PACKET, {"rpc_ack": {}, "rpc_request": {}}, "oneof"),
        (DATA_PACKET, {"speaker": {}}, "not supported"),
        (DATA_PACKET, {"sequence": -1}, "out of range"),
        (DATA_PACKET, {"sequence": 4294967296}, "out of range"),
        (STREAM_HEADER, {"timestamp": 9223372036854775808}, "out of range"),
        (DATA_PACKET, {"participant_identity": 5}, "must be str"),
        (DATA_PACKET, {"destination_identities": "abc"}, "must be a list"),
        (STREAM_HEADER, {"attributes": {"a": 1}}, "str to str"),
        (TEXT_HEADER, {"generated": 2}, "out of range"),
        (DATA_PACKET, {"stream_chunk": {"content": Blob(b"abc")}}, "encode_segments"),
    ]
    for schema, msg, word in bad:
        try:
            proto.encode(schema, msg)
        except ValueError as e:
            assert word in str(e), "%r: %r lacks %r" % (msg, str(e), word)
        else:
            raise AssertionError("encoded %r" % (msg,))


class Blob:
    """Stands for `size` bytes that the writer streams itself."""

    def __init__(self, data):
        self.data = data
        self.size = len(data)


def _join(segs):
    out = bytearray()
    for s in segs:
        out.extend(s.data if isinstance(s, Blob) else s)
    return bytes(out)


def test_encode_segments_with_blobs_equals_plain_encoding():
    payload = "h\u00e9llo " * 50
    pkt = {"participant_identity": "b", "rpc_request": {"id": UUID, "method": "m",
           "payload": Blob(payload.encode()), "version": 1}}
    segs = proto.encode_segments(DATA_PACKET, pkt)
    assert [type(s) is Blob for s in segs] == [False, True, False]
    plain = dict(pkt)
    plain["rpc_request"] = dict(pkt["rpc_request"], payload=payload)
    assert _join(segs) == proto.encode(DATA_PACKET, plain)
    assert proto.encoded_size(DATA_PACKET, pkt) == len(_join(segs))
    empty = proto.encode_segments(STREAM_HEADER, {"stream_id": "s", "inline_content": Blob(b"")})
    assert [bytes(s) for s in empty] == [_hx("0a01735a00")]


def test_scan_fields_walks_top_level_fields():
    data = _hx(VECTORS[1][2])
    fields = relayside.scan_fields(data)
    assert [f[0] for f in fields] == [4, 5, 5, 10, 16, 17]
    assert b"".join(data[f[2]:f[4]] for f in fields) == data
    num, wt, start, vstart, end = fields[2]
    assert wt == 2 and data[vstart:end] == "b\u00e9".encode()
    assert fields[4][1] == 0 and data[fields[4][3]:fields[4][4]] == _hx("ffffffff0f")
    try:
        relayside.scan_fields(data[:-1])
        raise AssertionError("scanned a truncated packet")
    except ProtoError as e:
        assert "truncated" in str(e)


def test_decoder_allocates_under_2k_for_a_15000_byte_chunk():
    used, msg, seen, bad = proto_memcheck.measure()
    print("PacketDecoder: %d bytes allocated decoding a %d-byte stream_chunk packet from a 512-byte buffer"
          % (used, proto_memcheck.PACKET_LEN))
    assert seen == proto_memcheck.CONTENT_LEN and bad == 0, (seen, bad)
    assert msg == {"participant_identity": "board-1", "participant_sid": "PA_abc",
                   "stream_chunk": {"stream_id": proto_memcheck.STREAM_ID, "chunk_index": 3}}, msg
    try:
        import gc
        gc.mem_alloc
    except AttributeError:  # CPython: the peak stays far below the 15000-byte content
        assert used < 8000, used
        return
    assert used < 2048, used


def test_a_string_field_that_is_not_utf8_is_refused_naming_the_field():
    import json
    bad = json.loads('"x\\ud800"')   # MicroPython's json makes such a str too
    try:
        relayside.encode(RPC_ERROR, {"code": 1, "message": bad})
    except ValueError as e:
        assert "RpcError.message is not valid UTF-8" in str(e), str(e)
    else:
        raise AssertionError("a lone surrogate was encoded")
    assert relayside.encode(RPC_ERROR, {"code": 1, "message": "é\U0001f600"})   # valid text goes
