"""lkedge.inflate on both runtimes, against raw DEFLATE made by CPython's zlib.

The fixtures (tests/device/fixtures/*.deflate) are read in random-size pieces through
one small buffer, so the 1 MiB payload never sits in memory.
"""
import binascii
import gc
import hashlib

from stream_fixtures import (BOMB, BOMB_LEN, MIXED, MIXED_LEN, MIXED_SHA256, RANDOM, RANDOM_LEN, Lcg,
                             file_pieces)

from lkedge import inflate, streams

# A board running frozen or .mpy modules needs far less; compiling lkedge from
# source here leaves its long string constants scattered over the heap, and the 32 KiB
# window needs one contiguous block (the stream tests below print the live growth).
MP_HEAPSIZE = "192K"


def _inflate_all(pieces, piece_size=512, max_output=None, sink=None, max_inflate_ratio=None):
    inf = inflate.Inflater(piece_size, max_output, max_inflate_ratio)
    total = 0
    for p in pieces:
        for out in inf.feed(p):
            assert 0 < len(out) <= piece_size, len(out)
            total += len(out)
            if sink:
                sink(out)
    for out in inf.finish():
        assert 0 < len(out) <= piece_size
        total += len(out)
        if sink:
            sink(out)
    return total


def _expect_error(fn, *words):
    try:
        fn()
    except inflate.InflateError as e:
        msg = str(e)
        for w in words:
            assert w in msg, msg
        return msg
    raise AssertionError("no InflateError")


def test_inflater_is_available():
    assert inflate.available()


def test_one_mib_with_32k_window_matches_hash_with_random_splits():
    h = hashlib.sha256()
    gc.collect()
    total = _inflate_all(file_pieces(MIXED, Lcg(1)), sink=h.update)
    assert total == MIXED_LEN
    assert binascii.hexlify(h.digest()).decode() == MIXED_SHA256


def test_one_byte_pieces_and_small_output_buffer():
    h = hashlib.sha256()
    total = _inflate_all(file_pieces(MIXED, Lcg(2), 1, 3), piece_size=64, sink=h.update)
    assert total == MIXED_LEN and binascii.hexlify(h.digest()).decode() == MIXED_SHA256


def test_incompressible_stored_blocks_round_trip():
    want = Lcg(777)  # the generator of lcg_bytes(RANDOM_LEN), checked byte by byte
    pos = [0]

    def check(out):
        for b in out:
            assert b == want.next() & 0xFF, "mismatch at byte %d" % pos[0]
            pos[0] += 1
    assert _inflate_all(file_pieces(RANDOM, Lcg(3)), sink=check) == RANDOM_LEN


def test_truncated_input_is_an_error_at_finish():
    def run():
        n = 0
        inf = inflate.Inflater(512)
        for p in file_pieces(MIXED, Lcg(4)):
            n += len(p)
            if n > 10000:
                break
            for _ in inf.feed(p):
                pass
        for _ in inf.finish():
            pass
    _expect_error(run, "truncated")


def test_garbage_is_an_error():
    garbage = bytes((i * 37 + 11) & 0xFF for i in range(4000))
    _expect_error(lambda: _inflate_all([garbage]), "deflate data")


def test_bomb_is_stopped_at_the_output_cap():
    cap = 300000
    seen = [0]

    def count(out):
        seen[0] += len(out)

    def run():
        _inflate_all(file_pieces(BOMB, Lcg(5)), max_output=cap, sink=count)
    _expect_error(run, "exceeds", str(cap))
    assert cap - 512 < seen[0] <= cap, seen  # stopped right at the cap, nothing past it


def test_a_bomb_is_stopped_by_max_inflate_ratio_long_before_the_output_cap():
    # 16 MiB of zeros from 16 KB: the work one input byte may cause is bounded, not
    # only the total (a board inflates inside its one link reader)
    fed = [0]
    seen = [0]

    def pieces():
        for p in file_pieces(BOMB, Lcg(9)):
            fed[0] += len(p)
            yield p

    def count(out):
        seen[0] += len(out)
        assert seen[0] <= 100 * fed[0] + 65536, (seen[0], fed[0])

    def run():
        _inflate_all(pieces(), max_output=BOMB_LEN, sink=count, max_inflate_ratio=100)
    msg = _expect_error(run, "decompression bomb", "more than 100 times", "max_inflate_ratio")
    assert 65536 < seen[0] < 200000, (seen[0], msg)   # stopped within a few pieces of input


def test_max_inflate_ratio_lets_ordinary_compressible_data_through():
    h = hashlib.sha256()   # MIXED inflates about 40 times
    total = _inflate_all(file_pieces(MIXED, Lcg(10)), sink=h.update, max_inflate_ratio=100)
    assert total == MIXED_LEN and binascii.hexlify(h.digest()).decode() == MIXED_SHA256
    _expect_error(lambda: _inflate_all(file_pieces(MIXED, Lcg(10)), max_inflate_ratio=20), "decompression bomb")
    # small and very compressible: the first 64 KiB are free of the ratio
    a40k = binascii.unhexlify("edc13101000000c2a0aceb5fc2cb164001" + "00" * 38 + "37")   # b"a" * 40000
    assert _inflate_all([a40k], max_inflate_ratio=1) == 40000


def test_data_after_the_end_is_an_error():
    def run():
        _inflate_all([b"\x03\x00", b"junk"])  # an empty final fixed block, then junk
    _expect_error(run, "after the end")


def test_empty_deflate_stream_gives_no_output():
    assert _inflate_all([b"\x03\x00"]) == 0


def test_error_is_sticky():
    inf = inflate.Inflater(512)
    try:
        for _ in inf.feed(b"\xff" * 3000):
            pass
        for _ in inf.finish():
            pass
    except inflate.InflateError:
        pass
    else:
        raise AssertionError("garbage accepted")
    _expect_error(lambda: list(inf.feed(b"\x03\x00")), "deflate")


# ------------------------------------------ compressed streams via IncomingStreams
def _compressed_stream(inc, name, sid, total_length, sink, rng, on_chunk=None):
    """Feed a fixture as the chunks (<= 15000 bytes) of a compressed stream, each chunk
    in random pieces of at most 512 bytes, like the link delivers them."""
    ended = []

    def run(events):
        for ev in events:
            if isinstance(ev, streams.StreamData):
                assert len(ev.data) <= 512
                sink(ev.data)
            elif isinstance(ev, streams.StreamEnded):
                ended.append(ev.error)
            elif isinstance(ev, streams.StreamIgnored):
                ended.append(streams.StreamError("ignored: " + ev.reason))
    hdr = {"stream_id": sid, "topic": "t", "byte_header": {}, "compression": 1}
    if total_length is not None:
        hdr["total_length"] = total_length
    run(inc.header("a", hdr, None))
    index = 0
    in_chunk = 0
    for p in file_pieces(name, rng, 1, 512):
        while len(p) and not ended:
            n = min(len(p), 15000 - in_chunk)
            in_chunk += n
            final = in_chunk == 15000
            run(inc.chunk("a", sid, index, p[:n], final))
            p = p[n:]
            if final:
                index += 1
                in_chunk = 0
                if on_chunk:
                    on_chunk()
        if ended:
            return ended[0]
    if in_chunk:
        run(inc.chunk("a", sid, index, p[:0], True))
    run(inc.trailer("a", {"stream_id": sid}))
    return ended[0]


def test_one_mib_compressed_stream_through_incoming_streams_with_bounded_live_memory():
    inc = streams.IncomingStreams(lambda k, t: True, piece_size=512)
    h = hashlib.sha256()
    n = [0]
    mem_alloc = getattr(gc, "mem_alloc", lambda: 0)  # MicroPython only
    peak = [0]

    def sink(d):
        n[0] += len(d)
        h.update(d)

    def measure():
        gc.collect()  # live memory only
        peak[0] = max(peak[0], mem_alloc() - base)
    gc.collect()
    base = mem_alloc()
    err = _compressed_stream(inc, MIXED, "c1", MIXED_LEN, sink, Lcg(6), measure)
    assert err is None, err
    assert n[0] == MIXED_LEN and binascii.hexlify(h.digest()).decode() == MIXED_SHA256
    assert peak[0] < 44 * 1024, peak[0]  # the 32 KiB window + about 4 KiB
    print("1 MiB compressed stream: peak live heap growth %d bytes" % peak[0])


def test_stream_inflating_past_total_length_is_length_exceeded():
    inc = streams.IncomingStreams(lambda k, t: True)
    err = _compressed_stream(inc, BOMB, "c2", 100000, lambda d: None, Lcg(7))
    assert err is not None and str(err).startswith("length exceeded"), err
    assert not inc.open


def test_stream_inflating_past_the_cap_ends_with_an_error_and_others_continue():
    inc = streams.IncomingStreams(lambda k, t: True, max_inflated=200000)
    list(inc.header("a", {"stream_id": "other", "topic": "t", "byte_header": {}}, None))
    err = _compressed_stream(inc, BOMB, "c3", None, lambda d: None, Lcg(8))
    assert err is not None and "decompression output exceeds 200000 bytes" in str(err), err
    assert list(inc.open) == ["other"]


def test_stream_inflating_past_max_inflate_ratio_ends_with_an_error_and_others_continue():
    inc = streams.IncomingStreams(lambda k, t: True, max_inflate_ratio=100)
    list(inc.header("a", {"stream_id": "other", "topic": "t", "byte_header": {}}, None))
    err = _compressed_stream(inc, BOMB, "c4", BOMB_LEN, lambda d: None, Lcg(11))
    assert err is not None and "decompression bomb" in str(err), err
    assert list(inc.open) == ["other"]


def test_gap_on_compressed_stream_is_an_error():
    inc = streams.IncomingStreams(lambda k, t: True)
    list(inc.header("a", {"stream_id": "g", "topic": "t", "byte_header": {}, "compression": 1,
                    "total_length": 100}, None))
    evs = list(inc.chunk("a", "g", 1, b"\x03\x00", True))
    assert len(evs) == 1 and isinstance(evs[0], streams.StreamEnded)
    assert "gap in chunk indices" in str(evs[0].error) and not inc.open


def test_gap_after_the_first_chunk_of_a_compressed_stream_is_an_error_and_drops_the_rest():
    inc = streams.IncomingStreams(lambda k, t: True)
    list(inc.header("a", {"stream_id": "g", "topic": "t", "byte_header": {}, "compression": 1,
                    "total_length": 5}, None))
    evs = list(inc.chunk("a", "g", 0, b"\xcb\x48", True))   # "hello" deflated, in 3 chunks
    assert not [e for e in evs if not isinstance(e, streams.StreamData)], evs
    evs = list(inc.chunk("a", "g", 2, b"\x07\x00", True))        # chunk 1 missing
    assert len(evs) == 1 and isinstance(evs[0], streams.StreamEnded), evs
    assert str(evs[0].error) == "gap in chunk indices: chunk 1 missing"
    assert not list(inc.chunk("a", "g", 1, b"\xcd\xc9\xc9", True))  # late: dropped silently
    assert not list(inc.trailer("a", {"stream_id": "g"})) and not inc.open


def test_compressed_inline_content_is_inflated():
    inc = streams.IncomingStreams(lambda k, t: True)
    # "hello hello hello" as raw DEFLATE (CPython zlib, level 9)
    comp = b"\xcbH\xcd\xc9\xc9W\xc8@\x90\x00"
    # each event's data is valid until the next one is pulled (streams.py): taken as they come
    data, last = b"", None
    for e in inc.header("a", {"stream_id": "i", "topic": "t", "text_header": {}, "compression": 1,
                              "total_length": 17}, comp):
        if isinstance(e, streams.StreamData):
            data += bytes(e.data)
        last = e
    assert data == b"hello hello hello" and isinstance(last, streams.StreamEnded) and last.error is None


def test_adversarial_empty_blocks_never_hang():
    # 4000 empty fixed-Huffman blocks (10 bits each) before one literal: valid DEFLATE
    # that gives no output for 5000 input bytes. CPython inflates it; MicroPython
    # refuses it with a clear error instead of reading past its staged input.
    out = bytearray(5003)
    pos = [0]

    def put(value, nbits):  # LSB-first, as DEFLATE packs header bits
        for i in range(nbits):
            if (value >> i) & 1:
                out[pos[0] >> 3] |= 1 << (pos[0] & 7)
            pos[0] += 1
    for _ in range(4000):
        put(0b010, 3)            # BFINAL=0, BTYPE=01 (fixed Huffman)
        put(0, 7)                # end-of-block (code 0000000)
    put(0b011, 3)                # BFINAL=1, BTYPE=01
    for b in (0, 1, 1, 1, 0, 0, 0, 1):  # literal 'A': Huffman code 01110001, MSB first
        put(b, 1)
    put(0, 7)                    # end-of-block
    out = out[:(pos[0] + 7) // 8]
    got = bytearray()
    try:
        _inflate_all([bytes(out)], sink=got.extend)
        assert bytes(got) == b"A"
    except inflate.InflateError as e:
        assert "refuses" in str(e) or "needs more" in str(e), str(e)


def test_reserve_says_whether_the_window_can_be_had_with_the_memory_there_is():
    if inflate._deflate is None:   # CPython: zlib allocates as it goes
        assert inflate.reserve() is True
        return
    inflate._release()
    gc.collect()
    hog = []
    try:
        while True:   # leave no block of 32 KiB anywhere
            hog.append(bytearray(8192))
    except MemoryError:
        pass
    assert inflate.reserve() is False and inflate._reserved is None
    hog = None
    gc.collect()
    assert inflate.reserve() is True and len(inflate._reserved) >= 32768


def test_pieces_fill_the_piece_size_not_one_small_read_each():
    # The MicroPython decoder reads ~240 bytes at a time (the staged input bounds each
    # read); those reads fill the piece, so a reader of a 15000-byte-chunk stream gets
    # pieces of up to piece_size: an echoing handler sends that many chunks, not 4,300.
    sizes = []
    total = _inflate_all(file_pieces(MIXED, Lcg(3), 15000, 15000), piece_size=4096,
                         sink=lambda out: sizes.append(len(out)))
    assert total == MIXED_LEN
    assert total // len(sizes) >= 2048, (len(sizes), total // len(sizes))
