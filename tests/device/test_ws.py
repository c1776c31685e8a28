"""lkedge.ws, the sans-I/O WebSocket client codec, on MicroPython and CPython alike."""
from lkedge import ws

KEY = b"\x37\xfa\x21\x3d"


class _Rand:
    """Deterministic LCG: the same splits and bytes on both runtimes."""

    def __init__(self, seed):
        self.x = seed

    def next(self, n):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return self.x % n

    def bytes(self, n):
        return bytes(self.next(256) for _ in range(n))


def _server_frame(op, payload, fin=True, rsv=0, masked=False):
    """A frame as a server sends it (unmasked unless asked)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | op
    m = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 65536:
        head = bytes((b0, m | 126, n >> 8, n & 0xFF))
    else:
        head = bytes((b0, m | 127)) + bytes((n >> (8 * (7 - j))) & 0xFF for j in range(8))
    if masked:
        return head + KEY + ws.mask_bytes(payload, KEY)
    return head + payload


def _unmask_client_frame(frame):
    """Parse one whole client frame: -> (fin, opcode, payload), checking the mask bit."""
    b0, b1 = frame[0], frame[1]
    assert b1 & 0x80, "client frames must be masked"
    n = b1 & 0x7F
    i = 2
    if n == 126:
        n = (frame[2] << 8) | frame[3]
        i = 4
    elif n == 127:
        n = 0
        for j in range(8):
            n = (n << 8) | frame[2 + j]
        i = 10
    key = frame[i:i + 4]
    body = frame[i + 4:]
    assert len(body) == n, "payload length %d, header says %d" % (len(body), n)
    return bool(b0 & 0x80), b0 & 0x0F, bytes(b ^ key[j & 3] for j, b in enumerate(body))


def _decode_all(data, splits, expect, dst_size=7):
    """Feed data in pieces of the given sizes, checking the payload against expect
    as it comes (no second copy); -> list of control events."""
    dec = ws.FrameDecoder()
    exp = memoryview(expect)
    got = 0
    events = []
    dst = bytearray(dst_size)
    mv = memoryview(data)
    pos = 0
    k = 0
    while True:
        ev = dec.next_event()
        if ev == ws.NEED_DATA:
            if pos >= len(data):
                assert got == len(expect), "payload %d bytes, expected %d" % (got, len(expect))
                return events
            n = splits[k % len(splits)]
            k += 1
            dec.receive(mv[pos:pos + n])
            pos += n
        elif ev == ws.DATA:
            n = dec.take(dst)
            assert n > 0, "DATA event must deliver at least one byte"
            assert memoryview(dst)[:n] == exp[got:got + n], "payload differs at byte %d" % got
            got += n
        elif ev == ws.CLOSE:
            events.append(("close", dec.close_code, dec.close_reason))
        else:
            events.append(("ping" if ev == ws.PING else "pong", bytes(dec.control)))


def _raises(fn, words):
    try:
        fn()
    except ws.WSError as e:
        for w in words:
            assert w in str(e), "error %r should mention %r" % (str(e), w)
        return e
    raise AssertionError("no WSError raised (expected one mentioning %r)" % (words,))


# ---------------------------------------------------------------- handshake
def test_accept_value_matches_rfc6455_example():
    assert ws.accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_new_key_is_base64_of_16_bytes_and_fresh():
    import binascii
    a, b = ws.new_key(), ws.new_key()
    assert len(binascii.a2b_base64(a)) == 16 and a != b


def test_handshake_request_has_the_upgrade_headers_and_extras():
    req = ws.handshake_request("relay.local:8765", "/link?x=1", "abc==", {"Authorization": "Bearer t"})
    text = req.decode()
    assert text.startswith("GET /link?x=1 HTTP/1.1\r\n")
    for line in ("Host: relay.local:8765", "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Key: abc==", "Sec-WebSocket-Version: 13", "Authorization: Bearer t"):
        assert "\r\n" + line + "\r\n" in text, line
    assert text.endswith("\r\n\r\n")


def test_handshake_request_rejects_header_injection():
    try:
        ws.handshake_request("h", "/", "k", {"X": "a\r\nEvil: 1"})
    except ValueError as e:
        assert "CR/LF" in str(e)
        return
    raise AssertionError("a CR/LF in a header value must be refused")


def _response(key, status="HTTP/1.1 101 Switching Protocols", extra=""):
    return ("%s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n"
            % (status, ws.accept_for(key), extra)).encode()


def test_response_parser_split_feeding_stops_at_the_head_end():
    key = ws.new_key()
    tail = _server_frame(ws.OP_BINARY, b"hi")
    data = _response(key, extra="Server: x\r\n") + tail
    for step in (1, 2, 3, 5, 17, len(data)):
        p = ws.ResponseParser(key)
        pos = 0
        while not p.done:
            pos += p.feed(data[pos:pos + step])
        assert data[pos:] == tail, "step %d consumed %d" % (step, pos)
        assert p.headers["server"] == "x" and p.status.startswith("HTTP/1.1 101")


def test_response_parser_refusal_shows_the_status_line():
    key = ws.new_key()
    p = ws.ResponseParser(key)
    e = _raises(lambda: p.feed(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"), ["403 Forbidden"])
    assert e.status == "HTTP/1.1 403 Forbidden"


def test_response_parser_checks_accept_upgrade_and_extensions():
    key = ws.new_key()
    bad_accept = _response(ws.new_key())
    _raises(lambda: ws.ResponseParser(key).feed(bad_accept), ["Sec-WebSocket-Accept", "101"])
    no_upgrade = _response(key).replace(b"Upgrade: websocket\r\n", b"")
    _raises(lambda: ws.ResponseParser(key).feed(no_upgrade), ["Upgrade: websocket"])
    ext = _response(key, extra="Sec-WebSocket-Extensions: permessage-deflate\r\n")
    _raises(lambda: ws.ResponseParser(key).feed(ext), ["permessage-deflate", "not offered"])
    _raises(lambda: ws.ResponseParser(key).feed(b"SSH-2.0-OpenSSH\r\n\r\n"), ["not an HTTP response"])


def test_response_parser_bounds_the_head():
    p = ws.ResponseParser(ws.new_key(), max_head=64)
    p.feed(b"HTTP/1.1 101 Switching Protocols\r\n")
    _raises(lambda: p.feed(b"X-Long: " + b"a" * 60), ["over 64 bytes"])


# ---------------------------------------------------------------- masking / encoder
def test_mask_into_matches_the_definition_at_every_phase():
    r = _Rand(3)
    src = r.bytes(37)
    for phase in range(6):
        dst = bytearray(40)
        ws.mask_into(dst, src, KEY, phase)
        want = bytes(b ^ KEY[(i + phase) & 3] for i, b in enumerate(src))
        assert bytes(dst[:37]) == want, "phase %d" % phase
        assert ws.mask_bytes(src, KEY, phase) == want
        assert ws.mask_bytes(want, KEY, phase) == src  # masking twice is the identity


def _check_pieces(enc, payload):
    """Check the encoder's pieces for payload piece by piece (no whole-frame copy)."""
    n = len(payload)
    hdr = 2 + (0 if n < 126 else 2 if n < 65536 else 8) + 4
    pos = -hdr
    for piece in enc.pieces(ws.OP_BINARY, payload, KEY):
        start = 0
        if pos < 0:
            h = bytes(piece[:hdr])
            assert h[0] == 0x80 | ws.OP_BINARY and h[1] & 0x80, "FIN, binary, masked (length %d)" % n
            assert h[hdr - 4:hdr] == KEY
            start = hdr
            pos = 0
        for i in range(start, len(piece)):
            assert piece[i] ^ KEY[pos & 3] == payload[pos], "byte %d of %d" % (pos, n)
            pos += 1
    assert pos == n, "delivered %d of %d payload bytes" % (pos, n)


def test_encoder_header_lengths_and_masked_payload():
    r = _Rand(5)
    enc = ws.FrameEncoder(chunk=7)  # odd chunk: the key phase must carry over between chunks
    for n in (0, 1, 125, 126, 300):
        payload = r.bytes(n)
        frame = b"".join(bytes(p) for p in enc.pieces(ws.OP_BINARY, payload, KEY))
        hdr = 2 + (0 if n < 126 else 2) + 4
        assert len(frame) == hdr + n, "length %d" % n
        fin, op, body = _unmask_client_frame(frame)
        assert fin and op == ws.OP_BINARY and body == payload, "length %d" % n


def test_encoder_16_and_64_bit_length_headers():
    buf = bytearray(14)
    for n, want in ((125, b"\x82\xfd"), (126, b"\x82\xfe\x00\x7e"), (65535, b"\x82\xfe\xff\xff"),
                    (65536, b"\x82\xff\0\0\0\0\0\x01\0\0"), ((1 << 32) + 5, b"\x82\xff\0\0\0\x01\0\0\0\x05")):
        k = ws.header_into(buf, ws.OP_BINARY, n, KEY)
        assert bytes(buf[:k]) == want + KEY, "length %d: %r" % (n, bytes(buf[:k]))


def test_encoder_pieces_of_a_long_payload():
    payload = bytes(i & 0xFF for i in range(3000))
    _check_pieces(ws.FrameEncoder(chunk=1021), payload)


def test_encoder_first_piece_carries_header_and_first_chunk():
    enc = ws.FrameEncoder(chunk=8)
    sizes = [len(p) for p in enc.pieces(ws.OP_BINARY, b"x" * 20, KEY)]
    assert sizes == [6 + 8, 8, 4], sizes


def test_encode_frame_control():
    fin, op, body = _unmask_client_frame(ws.encode_frame(ws.OP_PONG, b"abc", KEY))
    assert fin and op == ws.OP_PONG and body == b"abc"


# ---------------------------------------------------------------- decoder
def test_decoder_reassembles_fragments_with_control_frames_between():
    r = _Rand(11)
    a, b, c = r.bytes(10), r.bytes(300), r.bytes(700)
    data = (_server_frame(ws.OP_BINARY, a, fin=False) + _server_frame(ws.OP_PING, b"p1")
            + _server_frame(ws.OP_CONT, b, fin=False) + _server_frame(ws.OP_PONG, b"")
            + _server_frame(ws.OP_CONT, c, fin=True) + _server_frame(ws.OP_BINARY, b"", fin=True)
            + _server_frame(ws.OP_BINARY, b"tail") + _server_frame(ws.OP_CLOSE, b"\x03\xe8bye"))
    for splits in ([1], [2, 3, 1], [4096], [len(data)]):
        events = _decode_all(data, splits, a + b + c + b"tail")
        assert events == [("ping", b"p1"), ("pong", b""), ("close", 1000, "bye")], events


def test_decoder_direct_payload_reads_skip_the_copy():
    payload = bytes(range(200))
    data = _server_frame(ws.OP_BINARY, payload)
    dec = ws.FrameDecoder()
    dec.receive(data[:4 + 10])  # header (4 bytes) and 10 payload bytes
    dst = bytearray(64)
    assert dec.next_event() == ws.DATA and dec.take(dst) == 10
    assert dec.next_event() == ws.NEED_DATA and dec.payload_left == 190
    # the caller reads the rest of the payload from the wire into its own buffer
    dec.payload_read(190)
    assert dec.payload_left == 0 and dec.next_event() == ws.NEED_DATA
    dec.receive(_server_frame(ws.OP_CLOSE, b""))
    assert dec.next_event() == ws.CLOSE and dec.close_code == ws.CLOSE_NO_STATUS


def test_decoder_refuses_close_codes_no_endpoint_may_send_and_reasons_that_are_not_utf8():
    # RFC 6455 7.4: an endpoint must not send 1005, 1006 or 1015 (nor the reserved
    # 1004 or the unassigned 0-999 and 1016-2999); the transport would echo the code
    def close(code, reason=b""):
        dec = ws.FrameDecoder()
        dec.receive(_server_frame(ws.OP_CLOSE, bytes((code >> 8, code & 0xFF)) + reason))
        return dec
    for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535):
        _raises(close(code).next_event, ("close code %d" % code,))
    for code in (1000, 1001, 1002, 1003, 1007, 1011, 1012, 1014, 3000, 4999):
        dec = close(code, "bye \u00e9".encode())
        assert dec.next_event() == ws.CLOSE and dec.close_code == code and dec.close_reason == "bye \u00e9"
    # the same verdict on both interpreters (MicroPython's decode lets these through)
    for bad in (b"\xed\xa0\x80", b"\xc0\xaf", b"\xff"):
        _raises(close(1000, bad).next_event, ("close reason is not UTF-8",))


def test_decoder_long_lengths():
    block = bytes(i & 0xFF for i in range(1000))
    dst = bytearray(777)
    for n in (126, 65535, 65536, 200003):
        head = _server_frame(ws.OP_BINARY, b"")[:1] + (
            bytes((126, n >> 8, n & 0xFF)) if n < 65536 else bytes((127, 0, 0, 0, 0, 0, n >> 16, (n >> 8) & 0xFF, n & 0xFF)))
        dec = ws.FrameDecoder()
        dec.receive(head)
        sent = got = 0
        while got < n:
            ev = dec.next_event()
            if ev == ws.NEED_DATA:
                k = min(1000, n - sent)  # the payload is the block repeated, fed piece by piece
                dec.receive(block[:k])
                sent += k
            else:
                assert ev == ws.DATA
                k = dec.take(dst)
                assert memoryview(dst)[:k] == block[got % 1000:got % 1000 + k], "length %d at %d" % (n, got)
                got += k
        assert dec.next_event() == ws.NEED_DATA and dec.payload_left == 0, n


def _feed(data):
    dec = ws.FrameDecoder()
    dec.receive(data)
    dst = bytearray(16)
    while True:
        ev = dec.next_event()
        if ev == ws.NEED_DATA:
            return
        if ev == ws.DATA:
            dec.take(dst)


def test_decoder_rejects_protocol_violations():
    cases = [
        (_server_frame(ws.OP_BINARY, b"x", masked=True), ["masked"]),
        (_server_frame(ws.OP_TEXT, b"x"), ["text message"]),
        (_server_frame(ws.OP_CONT, b"x"), ["continuation frame without"]),
        (_server_frame(ws.OP_BINARY, b"x", fin=False) + _server_frame(ws.OP_BINARY, b"y"), ["still open"]),
        (_server_frame(ws.OP_PING, b"x" * 126), ["126 bytes"]),
        (_server_frame(ws.OP_PING, b"x", fin=False), ["fragmented control"]),
        (_server_frame(ws.OP_BINARY, b"x", rsv=0x40), ["reserved bits"]),
        (_server_frame(3, b"x"), ["reserved opcode"]),
        (_server_frame(0xB, b"x"), ["reserved control opcode"]),
        (_server_frame(ws.OP_CLOSE, b"\x03"), ["1-byte"]),
        (bytes((0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1)), ["top bit"]),
    ]
    for data, words in cases:
        _raises(lambda: _feed(data), words)


def test_decoder_refuses_receive_before_consumption():
    dec = ws.FrameDecoder()
    dec.receive(b"\x82")
    dec.next_event()  # consumes the byte into the header
    dec.receive(b"\x02ab")
    try:
        dec.receive(b"more")
    except ValueError as e:
        assert "consumed" in str(e)
        return
    raise AssertionError("receive() over unconsumed bytes must fail")
