"""Sequences of stream packets fed to a Room by a peer (and another), and what must come of them
(tests/device/test_room_stream_sequences.py on both interpreters, with its own seeded
generator; tests/lib/test_room_stream_sequences.py with hypothesis).

An action is one of
    ("header", sid, variant, "chunked" | "inline", compressed, "bytes" | "text", order)
    ("chunk", sid, variant, compressed, index)       index 0..PARTS (PARTS: past the end)
    ("trailer", sid)
    ("q-chunk", ...), ("q-trailer", sid)             the same from another participant, q
A header of `sid` and `variant` announces content(sid, variant); chunk i carries part
i of it (deflated when `compressed`); `order` is the order its fields go on the wire.

play(acts) sends them, ends every stream, sends a fresh stream ("canary"), and checks:
- a stream a handler reads to the end successfully holds exactly one header's content;
- a stream whose own packets came whole and in order arrives whole, whatever duplicate
  headers came meanwhile, and whatever chunks and trailers another participant sent
  for its id (expected(): only a stream's sender may add to it);
- nothing escapes to the event loop, and the canary arrives whole.
"""
import asyncio

from room_helpers import close, field, raw, room_and_peer, settle, watch_escapes

from lkedge import link, proto, relayside

SIDS = ("s0", "s1", "s2", "s3")
PARTS = 3   # chunks a chunked stream's content is cut into
HEADER_KEYS = ("stream_id", "topic", "total_length", "byte_header", "text_header", "inline_content",
               "compression", "attributes")

# content(sid, variant) as raw DEFLATE, and the canary's (content("s3", 1) * 3): written
# by CPython's zlib (level 6; test_room_stream_sequences checks them), since MicroPython
# can only inflate
DEFLATED = {
    ("s0", 0): "2b36d037b02a1e25882100",
    ("s0", 1): "2b36d037b42a1e2586140100",
    ("s1", 0): "2b36d437b02a1e2546895162381300",
    ("s1", 1): "2b36d437b42a1e254689516294a0030100",
    ("s2", 0): "2b36d237b02a1e25468951629418254689c1470000",
    ("s2", 1): "2b36d237b42a1e254689516294182546895102270100",
    ("s3", 0): "2b36d637b02a1e254689516294182546895162941825a8450000",
    ("s3", 1): "2b36d637b42a1e254689516294182546895162941825861d0100",
}
CANARY_DEFLATED = "edceb10900300800b093a4b8f52dff07af1044b2644e65bc5f00000038c7860300000006d870000000c0000d"


def content(sid, variant):
    """The content a header of `sid` of `variant` announces: ASCII (text streams take
    it too), lengths differ between variants, compressible."""
    n = 300 + 700 * SIDS.index(sid) + 137 * variant
    unit = ("%s/%d:" % (sid, variant)).encode()
    return (unit * (n // len(unit) + 1))[:n]


def canary():
    return content("s3", 1) * 3


def wire(sid, variant, compressed):
    return bytes.fromhex(DEFLATED[(sid, variant)]) if compressed else content(sid, variant)


def part(data, i):
    step = len(data) // PARTS + 1
    return data[i * step:(i + 1) * step]


async def _send_header(peer, action):
    _, sid, variant, mode, compressed, kind, order = action
    data = wire(sid, variant, compressed)
    h = {"stream_id": sid, "topic": "t", "total_length": len(content(sid, variant)),
         "attributes": {"v": str(variant)}}
    if kind == "bytes":
        h["byte_header"] = {"name": "n"}
    else:
        h["text_header"] = {}
    if compressed:
        h["compression"] = 1
    if mode == "inline":
        h["inline_content"] = data
    # one encoded field per key, in `order`
    fields = b"".join(relayside.encode(proto.STREAM_HEADER, {k: h[k]}) for k in order if k in h)
    body = relayside.encode(proto.DATA_PACKET, {"destination_identities": ["a"]}) + field(13, fields)
    await peer.t.write(relayside.encode_frame(link.DATA, body))


def expected(acts):
    """{stream_id: content} for the streams whose packets leave no doubt about their
    outcome: a header that opens the stream, then (chunked) exactly its chunks in order,
    then at most a trailer, with duplicate headers of any kind anywhere in between
    (STREAMS.md: a second header of an open stream_id is refused, the open stream goes
    on), or (inline) the header alone. Only for sequences of at most max_streams ids:
    with more, which stream gets a slot depends on timing."""
    sids = set(a[1] for a in acts if a[0] == "header")
    if len(sids) > 3:
        return {}
    out = {}
    for sid in sids:
        seq = [a for a in acts if a[1] == sid and not a[0].startswith("q-")]
        if seq[0][0] != "header":
            continue
        variant, mode, compressed = seq[0][2], seq[0][3], seq[0][4]
        rest = seq[1:]
        if mode == "inline":
            if not rest:
                out[sid] = content(sid, variant)
            continue
        if rest and rest[-1][0] == "trailer":
            rest = rest[:-1]
        if [a for a in rest if a[0] != "header"] == [("chunk", sid, variant, compressed, i) for i in range(PARTS)]:
            out[sid] = content(sid, variant)
    return out


async def play(acts):
    """Send `acts` to a Room (max_streams 3, compression advertised) and check what
    came of them (module docstring); returns [(stream_id, "ok" | "error", data)]."""
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2, advertise_compression=True,
                                       max_streams=3)
    other = await raw(mem, "q", client_protocol=2)
    await settle(lambda: "q" in a.remote_participants)
    escaped = watch_escapes()
    done = []

    async def reading(reader, sender):
        try:
            data = await reader.read_all()
        except Exception as e:
            done.append((reader.info.stream_id, "error", str(e)))
            return
        if isinstance(data, str):
            data = data.encode()
        done.append((reader.info.stream_id, "ok", data))

    a.register_byte_stream_handler("t", reading)
    a.register_text_stream_handler("t", reading)
    try:
        for act in acts:
            if act[0] == "header":
                await _send_header(peer, act)
            elif act[0] in ("chunk", "q-chunk"):
                _, sid, variant, compressed, i = act
                await (other if act[0] == "q-chunk" else peer).send({"destination_identities": ["a"], "stream_chunk": {
                    "stream_id": sid, "chunk_index": i, "content": part(wire(sid, variant, compressed), i)}})
            else:
                await (other if act[0] == "q-trailer" else peer).send({"destination_identities": ["a"],
                                                                         "stream_trailer": {"stream_id": act[1]}})
        for sid in SIDS:   # whatever is still open ends
            await peer.send({"destination_identities": ["a"], "stream_trailer": {"stream_id": sid}})
        c = canary()
        await peer.send({"destination_identities": ["a"], "stream_header": {
            "stream_id": "canary", "topic": "t", "total_length": len(c), "byte_header": {"name": "c"},
            "compression": 1, "inline_content": bytes.fromhex(CANARY_DEFLATED)}})
        await settle(lambda: [d for d in done if d[0] == "canary"], 3.0)
        for sid, how, data in done:
            if sid == "canary":
                assert (how, data) == ("ok", c), (acts, how, data[:200])
            elif how == "ok":
                assert data in (content(sid, 0), content(sid, 1)), (acts, sid, len(data), data[:80])
        for sid, want in expected(acts).items():
            assert [d for d in done if d[0] == sid] == [(sid, "ok", want)], (acts, sid, done)
        assert not escaped, (acts, escaped)
        return done
    finally:
        asyncio.get_event_loop().set_exception_handler(None)
        await close(a, peer, other)


def random_header(rng, sid=None):
    return ("header", sid or rng.pick(SIDS), rng.below(2), rng.pick(("chunked", "inline")), rng.below(2) == 1,
            rng.pick(("bytes", "text")), rng.shuffled(HEADER_KEYS))


def random_acts(rng):
    """Any sequence of up to 14 actions."""
    out = []
    for _ in range(rng.below(15)):
        k = rng.below(4)
        if k == 0:
            out.append(random_header(rng))
        elif k == 1:
            out.append(random_chunk(rng))
        elif k == 2:
            out.append(("trailer", rng.pick(SIDS)))
        else:
            out.append(random_foreign(rng))
    return out


def random_chunk(rng, kind="chunk", sid=None):
    return (kind, sid or rng.pick(SIDS), rng.below(2), rng.below(2) == 1, rng.below(PARTS + 1))


def random_foreign(rng, sid=None):
    """A chunk or a trailer from q, the other participant."""
    return random_chunk(rng, "q-chunk", sid) if rng.below(2) else ("q-trailer", sid or rng.pick(SIDS))


def whole_streams(rng):
    """Up to max_streams streams sent whole and in order, interleaved, with duplicate
    headers of any kind inside the chunked ones: what expected() is sure of, which
    random sequences rarely reach."""
    streams = []
    for sid in SIDS[:1 + rng.below(3)]:
        head = random_header(rng, sid)
        body = []
        if head[3] == "chunked":
            body = [("chunk", sid, head[2], head[4], i) for i in range(PARTS)]
            for _ in range(rng.below(4)):
                body.insert(rng.below(len(body) + 1), random_header(rng, sid))
            for _ in range(rng.below(3)):   # the other participant's, for this id
                body.insert(rng.below(len(body) + 1), random_foreign(rng, sid))
            body.append(("trailer", sid))
        streams.append([head] + body)
    merged = []
    while streams:
        one = streams[rng.below(len(streams))]
        merged.append(one.pop(0))
        streams = [x for x in streams if x]
    return merged
