"""link.py on both runtimes: framing under every split, errors, control-map checks,
and (MicroPython) the allocation cost of streaming a 15000-byte DATA frame."""
from lkedge import link
from lkedge import cbor
from lkedge import relayside

MP_HEAPSIZE = "112K"   # the module itself is compiled from source in this heap


def events(reader, data, step):
    """Feed data in step-sized memoryview slices; DATA frames collapsed to one event."""
    mv = memoryview(data)
    out = []
    body = None
    for i in range(0, len(data), step):
        piece_in = mv[i:i + step]
        reader.receive(piece_in)
        while True:
            ev = reader.next_event()
            if ev == link.NEED_DATA:
                break
            kind = ev[0]
            if kind == link.FRAME:
                out.append(("FRAME", ev[1], ev[2]))
            elif kind == link.DATA_START:
                body = bytearray()
                out.append(("DATA", ev[1]))
            elif kind == link.DATA_PIECE:
                p = ev[1]
                assert isinstance(p, memoryview), "DATA pieces must be memoryviews"
                assert 0 < len(p) <= len(piece_in), "piece larger than the received slice"
                body.extend(p)
            else:
                assert kind == link.DATA_END, "unknown event %r" % (ev,)
                out.append(("DATA_BODY", bytes(body)))
                body = None
    assert body is None, "DATA frame left open"
    return out


def sample_stream():
    frames = [
        relayside.encode_control(link.JOIN, {"v": 1, "token": "tok"}),
        link.encode_frame(link.DATA, bytes(range(200)) * 3),
        link.encode_frame(0x42, b"unknown type: skipped" * 5),
        link.encode_frame(link.PING, b"12345678"),
        link.encode_frame(link.DATA, b""),
        link.encode_frame(0x00, b""),
        link.encode_frame(link.PONG, b""),
        relayside.encode_control(link.LEAVE, {"code": link.LEAVE_CLIENT, "reason": "bye"}),
    ]
    expected = [
        ("FRAME", link.JOIN, cbor.dumps({"v": 1, "token": "tok"})),
        ("DATA", 600), ("DATA_BODY", bytes(range(200)) * 3),
        ("FRAME", link.PING, b"12345678"),
        ("DATA", 0), ("DATA_BODY", b""),
        ("FRAME", link.PONG, b""),
        ("FRAME", link.LEAVE, cbor.dumps({"code": 1, "reason": "bye"})),
    ]
    return b"".join(frames), expected


def test_same_events_for_every_split_size():
    data, expected = sample_stream()
    for step in (1, 2, 3, 7, 64, 599, 600, 601, len(data)):
        r = link.FrameReader(1000)
        got = events(r, data, step)
        assert got == expected, "step %d gave %r" % (step, got)
        assert r.between_frames


def test_a_growing_reader_gives_the_same_events_for_every_split_size():
    data, expected = sample_stream()
    for step in (1, 3, 64, 601, len(data)):
        got = events(link.FrameReader(1000, grow=True), data, step)
        assert got == expected, "step %d gave %r" % (step, got)


def test_a_growing_reader_holds_what_arrived_not_what_the_header_announced():
    r = link.FrameReader(65536, grow=True)
    r.receive(memoryview(link.frame_header(link.JOIN, 6000) + b"\xa1" * 10))
    assert r.next_event() == link.NEED_DATA
    assert len(r._buf) == 10      # a board's reader (grow=False) holds 6000 at once
    eager = link.FrameReader(65536)
    eager.receive(memoryview(link.frame_header(link.JOIN, 6000) + b"\xa1" * 10))
    assert eager.next_event() == link.NEED_DATA and len(eager._buf) == 6000


def test_frame_header_and_encode_frame_bytes():
    assert link.encode_frame(link.PING, b"") == b"\x01\x06"
    assert link.frame_header(link.DATA, 15000) == b"\x99\x75\x10"   # n = 15001
    assert link.frame_header(link.JOIN, 126) == b"\x7f\x01"
    assert link.frame_header(link.JOIN, 127) == b"\x80\x01\x01"
    assert link.encode_frame(link.DATA, memoryview(b"ab")) == b"\x03\x10ab"
    for bad in ((256, 0), (-1, 0), (link.DATA, -1)):
        try:
            link.frame_header(*bad)
            raise AssertionError("frame_header%r accepted" % (bad,))
        except ValueError:
            pass


def expect_link_error(data, max_frame, *words, max_control=None):
    r = link.FrameReader(max_frame, max_control)
    r.receive(memoryview(data))
    try:
        while r.next_event() != link.NEED_DATA:
            pass
    except link.LinkError as e:
        msg = str(e)
        for w in words:
            assert w in msg, "error should mention %r: %s" % (w, msg)
        try:   # the stream cannot be resynchronised: the reader stays failed
            r.next_event()
            raise AssertionError("reader went on after an error")
        except link.LinkError as e2:
            assert str(e2) == msg
        return
    raise AssertionError("no LinkError for %r" % (data,))


def test_zero_length_frame_is_an_error():
    expect_link_error(b"\x00", 100, "zero-length")
    expect_link_error(b"\x80\x00", 100, "zero-length")   # non-minimal varint for 0


def test_length_varint_over_five_bytes_is_an_error():
    expect_link_error(b"\x81\x80\x80\x80\x80\x00", 100, "longer than 5 bytes")


def test_frame_over_max_frame_names_size_and_limit():
    expect_link_error(link.frame_header(link.DATA, 1000), 1000, "1001", "max_frame 1000")
    # refused at the length, before the type byte or any body arrived
    expect_link_error(b"\xff\xff\xff\xff\x0f", 65536, "4294967295", "65536")
    expect_link_error(link.frame_header(0x77, 5000), 1000, "5001", "max_frame 1000")


def test_control_frame_limits():
    big = relayside.encode_control(link.JOINED, {"x": "y" * 300})
    expect_link_error(big, 1000, "JOINED", "max_control 100", max_control=100)
    expect_link_error(link.encode_frame(link.PING, b"p" * 65), 1000, "PING", "65")
    # DATA is limited by max_frame only
    r = link.FrameReader(1000, 10)
    assert events(r, link.encode_frame(link.DATA, b"d" * 500), 50)[0] == ("DATA", 500)


def test_control_frame_split_is_buffered_whole():
    body = cbor.dumps({"identity": "a" * 100, "sid": "PA_1"})
    data = link.encode_frame(link.PARTICIPANT, body)
    got = events(link.FrameReader(500), data, 5)
    assert got == [("FRAME", link.PARTICIPANT, body)]
    # the buffer it was gathered in, not a copy of it (a second frame-sized block at
    # once: a board's heap, fragmented, lacked the 14 KiB one)
    assert isinstance(got[0][2], bytearray)


def test_whole_received_buffer_is_handed_out_without_a_new_view():
    r = link.FrameReader(2000)
    r.receive(memoryview(link.frame_header(link.DATA, 1000)))
    assert tuple(r.next_event()) == (link.DATA_START, 1000)
    assert r.next_event() == link.NEED_DATA
    assert not r.between_frames
    view = memoryview(bytearray(b"x" * 512))
    r.receive(view)
    kind, piece = r.next_event()
    assert kind == link.DATA_PIECE and piece is view
    assert r.next_event() == link.NEED_DATA


def test_receive_before_consumption_is_refused():
    r = link.FrameReader(100)
    r.receive(memoryview(link.encode_frame(link.DATA, b"abc")))
    r.next_event()
    try:
        r.receive(memoryview(b"\x01\x06"))
        raise AssertionError("receive() accepted data while unread bytes remained")
    except RuntimeError as e:
        assert "consumed" in str(e)


def test_decode_control_checks_map_and_text_keys():
    assert link.decode_control(cbor.dumps({"a": [1]})) == {"a": [1]}
    for body, word in ((cbor.dumps([1]), "map"), (cbor.dumps({1: 2}), "text string"),
                       (b"\xa1", "CBOR"), (b"\xa0\x00", "trailing"), (b"\x5f", "indefinite")):
        try:
            link.decode_control(body)
            raise AssertionError("decode_control accepted %r" % (body,))
        except link.LinkError as e:
            assert word in str(e), str(e)


def must_fail(fn, d, *words):
    try:
        fn(d)
    except link.LinkError as e:
        for w in words:
            assert w in str(e), "%s should mention %r: %s" % (fn.__name__, w, e)
        return
    raise AssertionError("%s accepted %r" % (fn.__name__, d))


def test_check_join_normalises_and_names_bad_keys():
    j = relayside.check_join({"v": 1, "token": "t", "x-unknown": 5})
    assert j == {"v": 1, "token": "t", "client_protocol": 0, "capabilities": [],
                 "sdk": "", "sdk_version": ""}
    full = {"v": 1, "token": "t", "client_protocol": 2, "capabilities": [1, 2],
            "sdk": "lkedge", "sdk_version": "0.1.0"}
    assert relayside.check_join(full) == full
    must_fail(relayside.check_join, {"v": 1}, '"token"', "missing")
    must_fail(relayside.check_join, {"v": 2, "token": "t"}, "version 2")
    must_fail(relayside.check_join, {"v": 1, "token": 5}, '"token"', "text string")
    must_fail(relayside.check_join, {"v": 1, "token": "t", "client_protocol": True}, '"client_protocol"')
    must_fail(relayside.check_join, {"v": 1, "token": "t", "client_protocol": -1}, '"client_protocol"')
    must_fail(relayside.check_join, {"v": 1, "token": "t", "capabilities": [1, "2"]}, '"capabilities"')
    must_fail(relayside.check_join, {"v": 1, "token": "t", "capabilities": 2}, '"capabilities"')
    must_fail(relayside.check_join, [1], "must be a map")


def test_participant_info_defaults_and_types():
    p = link.participant_info({"identity": "a", "sid": "PA_a"})
    assert p == {"identity": "a", "sid": "PA_a", "client_protocol": 0, "capabilities": [],
                 "attributes": {}}
    full = {"identity": "a", "sid": "PA_a", "client_protocol": 1, "capabilities": [2],
            "attributes": {"k": "v"}}
    assert link.participant_info(dict(full, extra=1)) == full
    must_fail(link.participant_info, {"sid": "x"}, '"identity"')
    must_fail(link.participant_info, {"identity": "a"}, '"sid"')
    must_fail(link.participant_info, dict(full, attributes={"k": 1}), '"attributes"')
    must_fail(link.participant_info, dict(full, attributes=["k"]), '"attributes"')


def test_check_joined_validates_participants():
    d = {"v": 1, "room": "r", "identity": "me", "sid": "PA_me", "server_version": "1",
         "max_frame": 65536, "participants": [{"identity": "b", "sid": "PA_b"}]}
    j = link.check_joined(d)
    assert j["max_frame"] == 65536 and j["participants"][0]["capabilities"] == []
    assert link.check_joined(dict(d, participants=[]))["participants"] == []
    must_fail(link.check_joined, dict(d, max_frame=0), '"max_frame"')
    must_fail(link.check_joined, dict(d, max_frame="1"), '"max_frame"')
    must_fail(link.check_joined, dict(d, participants={}), '"participants"')
    must_fail(link.check_joined, dict(d, participants=[{"identity": "b", "sid": 3}]),
              "JOINED participant", '"sid"')
    must_fail(link.check_joined, dict(d, participants=["b"]), "must be a map")
    del d["room"]
    must_fail(link.check_joined, d, '"room"')


def _attributes_over(n):
    """n tiny attributes, over the board default of max_values (8192) from about 120."""
    return dict(("%d" % i, "") for i in range(n))


def test_a_participant_over_max_values_is_read_without_its_attributes_and_flagged():
    body = cbor.dumps({"identity": "op", "sid": "PA_op", "client_protocol": 2, "capabilities": [2],
                       "attributes": _attributes_over(150)})
    p = link.participant_info(link.decode_control(body, 8192))
    assert p == {"identity": "op", "sid": "PA_op", "client_protocol": 2, "capabilities": [2],
                 "attributes": {}, "attributes_dropped": True}, p
    whole = link.participant_info(link.decode_control(body))   # no budget: as before
    assert len(whole["attributes"]) == 150 and "attributes_dropped" not in whole
    small = cbor.dumps({"identity": "op", "sid": "PA_op", "attributes": {"room": "kitchen"}})
    assert link.participant_info(link.decode_control(small, 8192))["attributes"] == {"room": "kitchen"}


def test_joined_with_one_participant_over_max_values_keeps_the_others_whole():
    ps = [{"identity": "a", "sid": "PA_a", "attributes": {"k": "v"}},
          {"identity": "big", "sid": "PA_big", "client_protocol": 2, "attributes": _attributes_over(150)},
          {"identity": "c", "sid": "PA_c", "capabilities": [2]}]
    body = cbor.dumps({"v": 1, "room": "r", "identity": "me", "sid": "PA_me", "max_frame": 65536,
                       "participants": ps})
    ps = None
    j = link.check_joined(link.decode_control(body, 8192))
    a, big, c = j["participants"]
    assert a == {"identity": "a", "sid": "PA_a", "client_protocol": 0, "capabilities": [],
                 "attributes": {"k": "v"}}, a
    assert c == {"identity": "c", "sid": "PA_c", "client_protocol": 0, "capabilities": [2],
                 "attributes": {}}, c
    assert big == {"identity": "big", "sid": "PA_big", "client_protocol": 2, "capabilities": [],
                   "attributes": {}, "attributes_dropped": True}, big


def test_a_malformed_participant_is_refused_whether_or_not_its_attributes_fit():
    body = cbor.dumps({"identity": "op", "sid": 5, "attributes": _attributes_over(150)})
    must_fail(lambda b: link.participant_info(link.decode_control(b, 8192)), body, '"sid"')
    try:
        link.decode_control(body[:-1], 8192)
        raise AssertionError("a truncated body was accepted")
    except link.LinkError as e:
        assert "not valid CBOR" in str(e), str(e)


def test_leave_and_participant_left():
    assert relayside.check_leave({"code": 4, "reason": "frame too big"}) == {"code": 4, "reason": "frame too big"}
    assert relayside.check_leave({"code": 5}) == {"code": 5, "reason": ""}
    must_fail(relayside.check_leave, {"reason": "x"}, '"code"')
    must_fail(relayside.check_leave, {"code": 1, "reason": 1}, '"reason"')
    assert relayside.check_participant_left({"identity": "b", "reason": "gone"})["identity"] == "b"
    must_fail(relayside.check_participant_left, {"reason": "x"}, '"identity"')


def test_encode_control_round_trips_through_reader():
    m = {"identity": "b", "reason": "left"}
    f = relayside.encode_control(link.PARTICIPANT_LEFT, m)
    (ev,) = events(link.FrameReader(100), f, 3)
    assert ev[1] == link.PARTICIPANT_LEFT and link.decode_control(ev[2]) == m
    for bad in ((link.DATA, {}), (link.JOIN, [1])):
        try:
            relayside.encode_control(*bad)
            raise AssertionError("encode_control%r accepted" % (bad,))
        except ValueError:
            pass


def test_constants_match_link_md():
    assert (link.JOIN, link.JOINED, link.PARTICIPANT, link.PARTICIPANT_LEFT, link.LEAVE,
            link.PING, link.PONG, link.DATA) == (1, 2, 3, 4, 5, 6, 7, 0x10)
    assert (link.LEAVE_CLIENT, link.LEAVE_DUPLICATE, link.LEAVE_UNAUTHORIZED,
            link.LEAVE_PROTOCOL, link.LEAVE_SHUTDOWN, link.LEAVE_IDLE,
            link.LEAVE_FORBIDDEN) == (1, 2, 3, 4, 5, 6, 7)
    assert link.LINK_VERSION == 1 and issubclass(link.LinkError, ValueError)
    assert relayside.type_name(link.DATA) == "DATA" and relayside.type_name(0x42) == "type 0x42"


def test_relay_side_names_are_still_served_by_link_and_proto():
    from lkedge import proto
    for mod, names in ((link, ("type_name", "encode_control", "check_join", "check_participant_left",
                                "check_leave")), (proto, ("scan_fields", "decode_packet"))):
        for name in names:
            assert getattr(mod, name) is getattr(relayside, name), name
        try:
            getattr(mod, "no_such_name")
            raise AssertionError("an unknown attribute was served")
        except AttributeError:
            pass


def stream_through_buffer(reader, header, body_len, bufsize, alloc):
    """Send header + a body_len-byte pattern through one bufsize buffer, like a
    transport's readinto loop; alloc() (or None) measures only the reader's calls.
    Returns (bytes counted in pieces, checksum, allocated bytes, pieces)."""
    buf = bytearray(bufsize)
    whole = memoryview(buf)
    total = len(header) + body_len
    sent = got = csum = used = pieces = 0
    while sent < total:
        k = min(bufsize, total - sent)
        for i in range(k):    # fill from the stream position: header, then i & 0xff
            p = sent + i
            buf[i] = header[p] if p < len(header) else (p - len(header)) & 0xff
        view = whole if k == bufsize else whole[:k]
        sent += k
        a = alloc() if alloc else 0
        reader.receive(view)
        used += (alloc() - a) if alloc else 0
        while True:
            a = alloc() if alloc else 0
            ev = reader.next_event()
            used += (alloc() - a) if alloc else 0
            if ev == link.NEED_DATA:
                break
            if ev[0] == link.DATA_PIECE:
                piece = ev[1]
                pieces += 1
                for j in range(len(piece)):
                    if piece[j] != (got + j) & 0xff:
                        raise AssertionError("byte %d of the body is wrong" % (got + j))
                got += len(piece)
                csum += piece[0]
    return got, csum, used, pieces


def test_15000_byte_data_frame_through_512_byte_buffer_allocates_almost_nothing():
    import gc
    alloc = getattr(gc, "mem_alloc", None)   # MicroPython only
    r = link.FrameReader(16384)
    hdr = link.frame_header(link.DATA, 15000)
    gc.collect()
    if alloc:
        gc.disable()
    try:
        got, _, used, pieces = stream_through_buffer(r, hdr, 15000, 512, alloc)
        skip = link.frame_header(0x55, 10000)       # unknown type: skipped, not buffered
        _, _, used_skip, _ = stream_through_buffer(r, skip, 10000, 512, alloc)
    finally:
        gc.enable()
    assert got == 15000 and pieces == 30, (got, pieces)
    assert r.between_frames
    if alloc:
        print("FrameReader: 15000-byte DATA frame, 512-byte buffer, %d pieces: %d bytes allocated"
              % (pieces, used))
        print("FrameReader: 10000-byte unknown-type frame skipped: %d bytes allocated" % used_skip)
        assert used < 1024, "DATA frame cost %d bytes of heap" % used
        assert used_skip < 256, "skipping an unknown frame cost %d bytes" % used_skip
