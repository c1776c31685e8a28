"""cbor.py on both runtimes: RFC 8949 Appendix A vectors, refusals with clear errors."""
from lkedge import cbor
from binascii import unhexlify

MP_HEAPSIZE = "96K"

U10151 = b"\xf0\x90\x85\x91".decode("utf-8")

# (value, canonical encoding) from RFC 8949 Appendix A: dumps must produce exactly
# these bytes and loads must give the value back.
ENCODE_VECTORS = [
    (0, "00"), (1, "01"), (10, "0a"), (23, "17"), (24, "1818"), (25, "1819"),
    (100, "1864"), (1000, "1903e8"), (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"), (-10, "29"), (-100, "3863"), (-1000, "3903e7"),
    (1.1, "fb3ff199999999999a"), (1.0e300, "fb7e37e43c8800759c"),
    (-4.1, "fbc010666666666666"),
    (False, "f4"), (True, "f5"), (None, "f6"),
    (b"", "40"), (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"), ("a", "6161"), ("IETF", "6449455446"), ("\"\\", "62225c"),
    ("\u00fc", "62c3bc"), ("\u6c34", "63e6b0b4"), (U10151, "64f0908591"),
    ([], "80"), ([1, 2, 3], "83010203"), ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"), (["a", {"b": "c"}], "826161a161626163"),
]

# Decode-only vectors: float16/32 and multi-key maps (MicroPython dicts do not keep
# insertion order, so their encoded key order differs there).
DECODE_VECTORS = [
    ("f90000", 0.0), ("f93c00", 1.0), ("f93e00", 1.5), ("f97bff", 65504.0),
    ("fa47c35000", 100000.0), ("fa7f7fffff", 3.4028234663852886e+38),
    ("f90001", 5.960464477539063e-08), ("f90400", 6.103515625e-05), ("f9c400", -4.0),
    ("f97c00", float("inf")), ("f9fc00", float("-inf")), ("fa7f800000", float("inf")),
    ("faff800000", float("-inf")), ("fb7ff0000000000000", float("inf")),
    ("a201020304", {1: 2, 3: 4}), ("a26161016162820203", {"a": 1, "b": [2, 3]}),
    ("a56161614161626142616361436164614461656145",
     {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}),
    ("1b0000000000000001", 1),  # non-shortest forms are well-formed: accepted
]


def expect_error(data, *words):
    try:
        v = cbor.loads(unhexlify(data))
    except cbor.CBORError as e:
        msg = str(e)
        for w in words:
            assert w in msg, "error for %s should mention %r: %s" % (data, w, msg)
        return msg
    raise AssertionError("%s decoded to %r instead of failing" % (data, v))


def test_dumps_matches_rfc8949_vectors():
    for value, hx in ENCODE_VECTORS:
        got = cbor.dumps(value)
        assert got == unhexlify(hx), "dumps(%r) = %s, want %s" % (value, got, hx)


def test_loads_inverts_rfc8949_vectors():
    for value, hx in ENCODE_VECTORS:
        got = cbor.loads(unhexlify(hx))
        assert got == value and type(got) is type(value), "loads(%s) = %r" % (hx, got)


def test_loads_half_single_floats_maps_and_long_forms():
    for hx, value in DECODE_VECTORS:
        got = cbor.loads(unhexlify(hx))
        assert got == value, "loads(%s) = %r, want %r" % (hx, got, value)


def test_nan_and_negative_zero_decode():
    for hx in ("f97e00", "fa7fc00000", "fb7ff8000000000000"):
        v = cbor.loads(unhexlify(hx))
        assert v != v, "%s should be NaN, got %r" % (hx, v)
    z = cbor.loads(unhexlify("f98000"))
    assert z == 0.0 and str(z) == "-0.0", "f98000 should be -0.0, got %r" % z


def test_floats_encode_as_float64():
    assert cbor.dumps(1.5) == unhexlify("fb3ff8000000000000")
    assert cbor.dumps(float("inf")) == unhexlify("fb7ff0000000000000")


def test_multikey_map_and_bytes_like_round_trip():
    d = {"v": 1, "token": "x" * 300, "caps": [1, 2], "attrs": {"k": "v"}, "b": b"\x00" * 1000}
    assert cbor.loads(cbor.dumps(d)) == d
    assert cbor.dumps(bytearray(b"ab")) == cbor.dumps(memoryview(b"ab")) == unhexlify("426162")
    assert cbor.dumps((1, 2)) == unhexlify("820102")
    assert cbor.loads(memoryview(unhexlify("826161a161626163"))) == ["a", {"b": "c"}]


def test_indefinite_lengths_are_read():
    assert cbor.loads(unhexlify("5f42010243030405ff")) == b"\x01\x02\x03\x04\x05"
    assert cbor.loads(unhexlify("7f657374726561646d696e67ff")) == "streaming"
    assert cbor.loads(unhexlify("9fff")) == []
    assert cbor.loads(unhexlify("9f018202039f0405ffff")) == [1, [2, 3], [4, 5]]
    assert cbor.loads(unhexlify("bf61610161629f0203ffff")) == {"a": 1, "b": [2, 3]}


def test_indefinite_lengths_that_are_not_well_formed_are_refused():
    expect_error("ff", "break")
    expect_error("1f", "indefinite length", "not well-formed")
    expect_error("df", "indefinite length", "tag")
    expect_error("5f01ff", "not a definite byte string")
    expect_error("7f4161ff", "not a definite text string")
    expect_error("9f01", "truncated", "break")
    expect_error("bf6161ff", "break")            # a key without its value


def test_tags_are_read_as_what_they_tag_and_undefined_and_simple_values_as_none():
    assert cbor.loads(unhexlify("c11a514b67b0")) == 1363896240
    assert cbor.loads(unhexlify("d82076687474703a2f2f7777772e6578616d706c652e636f6d")) == "http://www.example.com"
    assert [cbor.loads(unhexlify(h)) for h in ("f7", "f0", "f8ff")] == [None, None, None]
    # LINK.md: unknown keys are ignored, whatever they hold
    assert cbor.loads(unhexlify("a261760166657874726173c1f7")) == {"v": 1, "extras": None}
    expect_error("f818", "simple value 24", "not well-formed")
    expect_error("1c", "reserved", "28")
    expect_error("fc", "reserved")
    deep = "c1" * (cbor.MAX_DEPTH + 1) + "00"
    expect_error(deep, "nested deeper")


def test_truncation_and_trailing_bytes_refused():
    expect_error("", "truncated")
    expect_error("19", "truncated", "needs 2 bytes")
    expect_error("4401", "truncated", "byte string")
    expect_error("8301", "truncated")
    expect_error("0000", "1 trailing bytes")
    expect_error("a16161", "truncated")


def test_huge_length_claims_fail_fast():
    # 4 GiB and 2**64-1 length/count claims in tiny inputs: refused before allocating
    expect_error("5affffffff00000000", "truncated", "4294967295")
    expect_error("7bffffffffffffffff00", "truncated", "text string")
    expect_error("9affffffff00", "truncated", "4294967295 items")
    expect_error("bbffffffffffffffff0000", "truncated", "pairs")


def test_invalid_utf8_duplicate_and_unhashable_keys_refused():
    expect_error("62c328", "UTF-8")
    expect_error("62c0af", "UTF-8")          # an overlong "/": well shaped, still invalid
    expect_error("63eda080", "UTF-8")        # a surrogate
    expect_error("a2616101616102", "duplicate map key")
    expect_error("a1800102", "unhashable map key")
    expect_error("a1a00102", "unhashable map key")


def test_nesting_depth_bounded():
    ok = b"\x81" * (cbor.MAX_DEPTH) + b"\x00"
    v = cbor.loads(ok)
    for _ in range(cbor.MAX_DEPTH):
        v = v[0]
    assert v == 0
    try:
        cbor.loads(b"\x81" * (cbor.MAX_DEPTH + 1) + b"\x00")
        raise AssertionError("nesting deeper than MAX_DEPTH was accepted")
    except cbor.CBORError as e:
        assert "deeper than %d" % cbor.MAX_DEPTH in str(e), str(e)


def test_encoder_refuses_unsupported_values():
    for bad, word in ((2 ** 64, "64 bits"), (-2 ** 64 - 1, "64 bits"), (object(), "cannot encode"),
                      ({1, 2}, "cannot encode")):
        try:
            cbor.dumps(bad)
            raise AssertionError("dumps accepted %r" % (bad,))
        except cbor.CBORError as e:
            assert word in str(e), str(e)
    deep = []
    for _ in range(cbor.MAX_DEPTH + 1):
        deep = [deep]
    try:
        cbor.dumps(deep)
        raise AssertionError("dumps accepted nesting deeper than MAX_DEPTH")
    except cbor.CBORError as e:
        assert "deeper" in str(e), str(e)


def test_cbor_error_is_a_value_error():
    assert issubclass(cbor.CBORError, ValueError)


# ---------------------------------------------------------- values budget (max_values)

def _tiny_attributes(n, pre=b"", post=b""):
    """pre + the CBOR map {"0": "", "1": "", ...} of n entries + post, as raw bytes made
    in one allocation (no dict built: a 96 KiB heap holds the bytes, not the objects)."""
    size = 3 + sum(2 + len(b"%d" % i) for i in range(n))
    out = bytearray(len(pre) + size + len(post))
    out[:len(pre)] = pre
    j = len(pre)
    out[j:j + 3] = b"\xb9" + bytes([n >> 8, n & 0xff])
    j += 3
    for i in range(n):
        k = b"%d" % i
        out[j] = 0x60 | len(k)
        out[j + 1:j + 1 + len(k)] = k
        out[j + 1 + len(k)] = 0x60
        j += 2 + len(k)
    out[j:] = post
    return out


def _participant(identity, attributes_cbor=None, n=0):
    """A LINK.md participant map whose "attributes" value is the raw CBOR given, or n
    tiny attributes."""
    pre = b"\xa3" + cbor.dumps("identity") + cbor.dumps(identity) + cbor.dumps("attributes")
    post = cbor.dumps("sid") + cbor.dumps("PA_" + identity)
    if attributes_cbor is None:
        return _tiny_attributes(n, pre, post)
    return pre + attributes_cbor + post


def test_a_map_over_max_values_gets_dropped_for_the_budgeted_key_and_keeps_the_rest():
    body = _participant("op", n=1500)
    d = cbor.loads(body, 8192, "attributes")
    assert d["attributes"] is cbor.DROPPED
    assert d["identity"] == "op" and d["sid"] == "PA_op", d   # keys after it are read too
    body = _participant("op", n=300)   # ~20 KB of values: over 8192 too
    assert cbor.loads(body, 8192, "attributes")["attributes"] is cbor.DROPPED
    assert len(cbor.loads(body)["attributes"]) == 300            # no budget: as before
    assert len(cbor.loads(body, 8192)["attributes"]) == 300      # a budget needs its key
    assert len(cbor.loads(body, None, "attributes")["attributes"]) == 300


def test_a_map_within_max_values_is_decoded_whole():
    body = _participant("op", cbor.dumps({"room": "kitchen", "floor": "2"}))
    assert cbor.loads(body, 8192, "attributes") == cbor.loads(body)
    assert cbor.loads(body, 8192, "attributes")["attributes"] == {"room": "kitchen", "floor": "2"}


def test_the_budget_counts_bytes_plus_32_per_value_like_a_datapacket():
    # {"attributes": {"k": "v"}}: the map, the key (10 bytes), the inner map, "k", "v"
    body = cbor.dumps({"attributes": {"k": "v"}})
    cost = 32 + (10 + 32) + 32 + (1 + 32) + (1 + 32)
    assert cbor.loads(body, cost, "attributes") == {"attributes": {"k": "v"}}
    assert cbor.loads(body, cost - 1, "attributes")["attributes"] is cbor.DROPPED


def test_each_map_holding_the_key_has_a_budget_of_its_own():
    # a JOINED-like frame: the root is not budgeted as a whole, each entry is
    small = cbor.dumps({"identity": "s", "attributes": {"a": "1"}})
    entries = [small, _participant("big", n=600), small]
    body = b"\xa2" + cbor.dumps("room") + cbor.dumps("r") + cbor.dumps("participants") + b"\x83" + b"".join(entries)
    d = cbor.loads(body, 400, "attributes")
    ps = d["participants"]
    assert ps[0] == ps[2] == {"identity": "s", "attributes": {"a": "1"}}, ps
    assert ps[1]["attributes"] is cbor.DROPPED and ps[1]["identity"] == "big"


def test_a_dropped_value_must_still_be_well_formed():
    ok = bytes(_tiny_attributes(600))
    bad = (ok[:-1] + b"\x61\xff",           # invalid UTF-8 in the last value
           ok[:-2],                          # truncated
           ok[:-1] + b"\x1c")                # reserved additional info
    for attrs, word in zip(bad, ("UTF-8", "truncated", "reserved")):
        try:
            cbor.loads(_participant("op", attrs), 8192, "attributes")
            raise AssertionError("a malformed dropped value was accepted (%s)" % word)
        except cbor.CBORError as e:
            assert word in str(e), str(e)
