"""Room: a stream header's compressed inline content goes to its stream as it comes
(room.py _inline_streams), not gathered whole beside the 32 KiB window; its header's
compression field, which comes after the content on the wire, is checked at the
packet's end. Runs on CPython and MicroPython."""
from room_helpers import close, error_collector, field, room_and_peer, settle, varint

from lkedge import link, proto, relayside

ZEROS_2000 = bytes.fromhex("63601805a360148c8251300a46c1500700")  # 2000 zero bytes as raw DEFLATE


async def _send_raw(peer, to, header_bytes):
    """A DataPacket for `to` whose stream_header (field 13) is `header_bytes` as they
    are (fields in any order)."""
    body = relayside.encode(proto.DATA_PACKET, {"destination_identities": [to]}) + field(13, header_bytes)
    await peer.t.write(relayside.encode_frame(link.DATA, body))


async def _board_and_peer(**opts):
    """A Room that takes compressed streams on topic "t" (their errors: `errors`), and
    a peer "p"."""
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2, advertise_compression=True, **opts)
    errors = []
    a.register_byte_stream_handler("t", error_collector(errors))
    return a, peer, errors


def _head(sid, **fields):
    """The encoded StreamHeader of stream `sid` on topic "t": 2000 zero bytes, deflated
    inline (without the compression field unless `fields` add it; they add or replace)."""
    h = {"stream_id": sid, "topic": "t", "total_length": 2000, "byte_header": {"name": "n"},
         "inline_content": ZEROS_2000}
    h.update(fields)
    return relayside.encode(proto.STREAM_HEADER, h)


def _reading(got):
    async def handler(reader, sender):
        try:
            got.append((await reader.read_all(), dict(reader.info.attributes)))
        except Exception as e:
            got.append(("error", str(e)))
    return handler


async def test_compressed_inline_content_is_inflated_and_late_attributes_are_merged():
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2, advertise_compression=True)
    got = []
    a.register_byte_stream_handler("t", _reading(got))
    head = _head("s1", attributes={"early": "1"}, compression=1)
    # attributes after the content (a serializer may write fields in any order): merged
    late = relayside.encode(proto.STREAM_HEADER, {"attributes": {"late": "2"}})
    await _send_raw(peer, "a", head + late)
    await settle(lambda: got)
    assert got == [(bytes(2000), {"early": "1", "late": "2"})], got
    await close(a, peer)


async def test_inline_content_shorter_than_total_length_without_compression_ends_the_stream_with_why():
    a, peer, errors = await _board_and_peer()
    await peer.send({"destination_identities": ["a"], "stream_header": {
        "stream_id": "s2", "topic": "t", "total_length": 2000, "byte_header": {"name": "n"},
        "inline_content": ZEROS_2000}})
    await settle(lambda: errors)
    assert errors == ["inline content shorter than total_length but not compressed (DEFLATE_RAW)"], errors
    await close(a, peer)


async def test_a_packet_dropped_after_its_inline_content_ends_that_stream_with_the_cause():
    a, peer, errors = await _board_and_peer()
    head = _head("s3")
    # after the content, where compression = 1 would be, 2 bytes of a field of wire
    # type 7 (there is none): the packet is dropped
    await _send_raw(peer, "a", head + b"\x67\x00")
    await settle(lambda: errors)
    assert len(errors) == 1 and errors[0].startswith("abnormal end: DataPacket dropped: "), errors
    assert "wire type 7" in errors[0], errors
    # the room goes on: the next stream is taken
    got = []
    a.register_byte_stream_handler("u", _reading(got))
    await peer.send({"destination_identities": ["a"], "stream_header": {
        "stream_id": "s4", "topic": "u", "total_length": 2000, "byte_header": {"name": "n"},
        "inline_content": ZEROS_2000, "compression": 1}})
    await settle(lambda: got)
    assert got == [(bytes(2000), {})], got
    await close(a, peer)


async def test_inline_content_twice_in_one_header_drops_the_packet_and_ends_its_stream():
    # an empty inline_content after the first (2 bytes, where compression = 1 could
    # be): the last occurrence would win, and the stream it went to ends
    a, peer, errors = await _board_and_peer()
    await _send_raw(peer, "a", _head("s5") + field(11, b""))
    await settle(lambda: errors)
    assert len(errors) == 1 and "inline_content twice in one stream header" in errors[0], errors
    await close(a, peer)


async def test_header_fields_after_compressed_inline_content_are_honoured():
    # WIRE.md: fields in any order, the last occurrence wins. The content cannot go to
    # a stream before the fields after it are read: here the topic, kind, stream_id
    # and attributes that come after it decide where it goes.
    a, peer, errors = await _board_and_peer()
    got = []
    a.register_text_stream_handler("late", _reading(got))
    head = _head("early-id", compression=1)
    late = relayside.encode(proto.STREAM_HEADER, {"stream_id": "s7", "topic": "late", "text_header": {},
                                                  "attributes": {"k": "v"}})
    await _send_raw(peer, "a", head + late)
    await settle(lambda: got)
    assert got == [("\0" * 2000, {"k": "v"})] and not errors, (got, errors)
    await close(a, peer)


async def test_a_duplicate_header_with_compressed_inline_content_leaves_the_open_stream_alone():
    # STREAMS.md: a header whose stream_id is already open is ignored. Its inline
    # content must not become the open stream's chunk 0, nor its end the stream's.
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2, advertise_compression=True)
    got = []
    a.register_byte_stream_handler("t", _reading(got))
    await peer.send({"destination_identities": ["a"], "stream_header": {
        "stream_id": "s6", "topic": "t", "total_length": 6, "byte_header": {"name": "n"},
        "attributes": {"first": "1"}}})
    await peer.send({"destination_identities": ["a"], "stream_header": {
        "stream_id": "s6", "topic": "t", "total_length": 2000, "byte_header": {"name": "n"},
        "attributes": {"dup": "1"}, "inline_content": ZEROS_2000, "compression": 1}})
    await peer.send({"destination_identities": ["a"], "stream_chunk": {
        "stream_id": "s6", "chunk_index": 0, "content": b"abcdef"}})
    await peer.send({"destination_identities": ["a"], "stream_trailer": {"stream_id": "s6"}})
    await settle(lambda: got)
    assert got == [(b"abcdef", {"first": "1"})], got
    await close(a, peer)


# Raw DEFLATE of 1000 "x" then 2000 zero bytes: a stored block (not final) and then
# ZEROS_2000's final block; 1022 bytes that inflate to 3000.
X_THEN_ZEROS = b"\x00\xe8\x03\x17\xfc" + b"x" * 1000 + ZEROS_2000
SEQUENCE_7 = varint(16 << 3) + varint(7)   # DataPacket.sequence = 7 (field 16)


async def _send_with_after(peer, to, header_bytes, after):
    """A DataPacket for `to`: its stream_header `header_bytes`, then the packet's own
    fields `after`."""
    body = (relayside.encode(proto.DATA_PACKET, {"destination_identities": [to]})
            + field(13, header_bytes) + after)
    await peer.t.write(relayside.encode_frame(link.DATA, body))


async def test_compressed_inline_content_streams_with_a_sequence_after_the_header():
    # livekit-client (and so the browser client) writes DataPacket.sequence after the
    # header on reliable packets: the content still goes to its stream as it comes
    # instead of being gathered whole (~10 KB more heap on a board). Seen here through
    # max_frame, which bounds what a room gathers: 1000 bytes, under the content's 1022
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2, advertise_compression=True,
                                       max_frame=1000)
    got = []
    a.register_byte_stream_handler("t", _reading(got))
    head = _head("s8", total_length=3000, inline_content=X_THEN_ZEROS, compression=1)
    await _send_with_after(peer, "a", head, SEQUENCE_7)
    await settle(lambda: got)
    assert got == [(b"x" * 1000 + bytes(2000), {})], got
    await close(a, peer)


async def test_a_second_stream_header_after_streamed_inline_content_ends_its_stream():
    # a stream_header occurrence after the first merges into it (protobuf): when the
    # content went to its stream as it came, the stream it changed ends saying why
    a, peer, errors = await _board_and_peer(max_frame=1000)
    head = _head("s9", total_length=3000, inline_content=X_THEN_ZEROS, compression=1)
    late = field(13, relayside.encode(proto.STREAM_HEADER, {"topic": "u"}))   # 5 bytes
    await _send_with_after(peer, "a", head, late)
    await settle(lambda: errors)
    assert errors == ["the stream header changed after its inline content"], errors
    await close(a, peer)
