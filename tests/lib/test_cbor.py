"""cbor.py against the cbor2 oracle (host only): round trips both ways, byte equality
with cbor2's encoder, float16/32 via cbor2's canonical (shrinking) encoder, and
robustness on arbitrary input."""
import math
import struct

import cbor2
import pytest
from hypothesis import given, settings, strategies as st

from lkedge import cbor

INTS = st.integers(min_value=-2 ** 64, max_value=2 ** 64 - 1)
KEYS = st.one_of(st.text(max_size=8), INTS, st.binary(max_size=8))


def values(floats):
    leaves = st.one_of(st.none(), st.booleans(), INTS, floats, st.binary(max_size=40),
                       st.text(max_size=40))
    return st.recursive(leaves, lambda kids: st.one_of(
        st.lists(kids, max_size=5), st.dictionaries(KEYS, kids, max_size=5)), max_leaves=25)


FINITE = values(st.floats(allow_nan=False, allow_infinity=False))
ANY_FLOAT = values(st.floats())


def same(a, b):
    """Equality that treats NaN as equal to NaN and tells 1 from 1.0 from True."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@given(FINITE)
def test_dumps_equals_cbor2_dumps(x):
    assert cbor.dumps(x) == cbor2.dumps(x)


@given(ANY_FLOAT)
def test_cbor2_reads_what_we_write(x):
    assert same(cbor2.loads(cbor.dumps(x)), x)


@given(ANY_FLOAT)
def test_we_read_what_cbor2_writes(x):
    assert same(cbor.loads(cbor2.dumps(x)), x)


@given(ANY_FLOAT)
def test_we_read_cbor2_canonical_output_with_shrunk_floats(x):
    # canonical=True writes floats as float16/32 when exact and sorts map keys
    assert same(cbor.loads(cbor2.dumps(x, canonical=True)), x)


@given(st.floats(width=16) | st.floats(width=32))
def test_half_and_single_floats_decode_exactly(f):
    enc = cbor2.dumps(f, canonical=True)
    assert same(cbor.loads(enc), f)


def test_nonfinite_floats_are_the_one_byte_difference_from_cbor2():
    for f in (float("inf"), float("-inf")):
        assert cbor.dumps(f) == b"\xfb" + struct.pack(">d", f)
        assert cbor2.dumps(f)[0] == 0xf9    # cbor2 shrinks them to float16
        assert cbor2.loads(cbor.dumps(f)) == f
    assert math.isnan(cbor2.loads(cbor.dumps(float("nan"))))


@settings(max_examples=300)
@given(st.binary(max_size=40))
def test_arbitrary_bytes_decode_like_cbor2_or_fail_with_cbor_error(data):
    try:
        ours = cbor.loads(data)
    except cbor.CBORError:
        return
    try:
        theirs = _plain(cbor2.loads(data))
    except cbor2.CBORDecodeError:
        return   # a known tag on the wrong item: cbor2 refuses its meaning, we keep the item
    if theirs is _SEMANTIC:
        return   # cbor2 gave a tag its meaning (a datetime, a bignum...): we keep the item
    if not same(ours, theirs) and (b"\xc2" in data or b"\xc3" in data):
        return   # a bignum tag (2, 3): cbor2 reads an int (which _plain cannot tell), we its bytes
    assert same(ours, theirs)


def test_a_bignum_tag_is_read_as_its_byte_string():
    # what the property test above lets pass: cbor2 reads b"\xc2P" + 16 bytes as an int
    data = b"\xc2P" + bytes(16)
    assert cbor.loads(data) == bytes(16) and cbor2.loads(data) == 0


_SEMANTIC = object()


def _plain(x):
    """cbor2's reading as ours: a tag's item, None for undefined and simple values;
    _SEMANTIC where cbor2 turned a tag into something else."""
    if isinstance(x, cbor2.CBORTag):
        return _plain(x.value)
    if x is cbor2.undefined or isinstance(x, cbor2.CBORSimpleValue):
        return None
    if isinstance(x, list):
        items = [_plain(v) for v in x]
        return _SEMANTIC if any(v is _SEMANTIC for v in items) else items
    if isinstance(x, dict):
        pairs = [(_plain(k), _plain(v)) for k, v in x.items()]
        return _SEMANTIC if any(_SEMANTIC in p for p in pairs) else dict(pairs)
    if x is None or isinstance(x, (bool, int, float, str, bytes)):
        return x
    return _SEMANTIC


@given(FINITE, st.binary(min_size=1, max_size=4))
def test_trailing_bytes_refused(x, extra):
    with pytest.raises(cbor.CBORError, match="trailing bytes"):
        cbor.loads(cbor2.dumps(x) + extra)


@given(FINITE)
def test_every_truncation_is_refused(x):
    enc = cbor2.dumps(x)
    for i in range(len(enc)):
        with pytest.raises(cbor.CBORError, match="truncated"):
            cbor.loads(enc[:i])


@pytest.mark.parametrize("obj,value", [
    (cbor2.CBORTag(1, 0), 0),
    (cbor2.CBORTag(32, "http://x"), "http://x"),
    (cbor2.undefined, None),
    (cbor2.CBORSimpleValue(99), None),
    ({"v": 1, "unknown": cbor2.CBORTag(1000, [cbor2.undefined])}, {"v": 1, "unknown": [None]}),
])
def test_cbor2_extensions_read_as_the_tagged_item_or_none(obj, value):
    assert cbor.loads(cbor2.dumps(obj)) == value


@pytest.mark.parametrize("hexdata", ["9f010203ff", "bf6161f5ff", "5f4101ff", "7f6161ff",
                                     "5f42010243030405ff", "bf61610161629f0203ffff", "9f9fff9f01ffff"])
def test_indefinite_lengths_read_as_cbor2_reads_them(hexdata):
    data = bytes.fromhex(hexdata)
    assert cbor.loads(data) == cbor2.loads(data)


def test_four_gib_claims_fail_fast():
    import time
    t = time.perf_counter()
    for data in (b"\x5a\xff\xff\xff\xff" + b"\x00" * 5, b"\x9a\xff\xff\xff\xff" + b"\x00" * 5,
                 b"\xba\xff\xff\xff\xff" + b"\x00" * 5, b"\x7b" + b"\xff" * 8 + b"a"):
        with pytest.raises(cbor.CBORError, match="truncated"):
            cbor.loads(data)
    assert time.perf_counter() - t < 0.5


# ---------------------------------------------------------- values budget (max_values)

def _cost(x):
    """What loads(..., max_values, drop) counts for x: the bytes of its strings plus 32
    per value (containers, map keys and items included), computed on the object."""
    if isinstance(x, str):
        return 32 + len(x.encode("utf-8"))
    if isinstance(x, bytes):
        return 32 + len(x)
    if isinstance(x, list):
        return 32 + sum(_cost(v) for v in x)
    if isinstance(x, dict):
        return 32 + sum(_cost(k) + _cost(v) for k, v in x.items())
    return 32


@given(FINITE)
def test_the_budget_counts_what_the_map_would_hold_bytes_plus_32_per_value(x):
    m = {"identity": "op", "attributes": x, "sid": "PA_op"}
    data = cbor.dumps(m)
    whole = cbor.loads(data, _cost(m), "attributes")
    assert same(whole, cbor.loads(data))
    over = cbor.loads(data, _cost(m) - 1, "attributes")
    assert over["attributes"] is cbor.DROPPED
    assert over["identity"] == "op" and over["sid"] == "PA_op"


def _matches(budgeted, plain, key):
    """budgeted is plain with some values of `key` in maps replaced by DROPPED."""
    if isinstance(plain, list):
        return (isinstance(budgeted, list) and len(budgeted) == len(plain)
                and all(_matches(b, p, key) for b, p in zip(budgeted, plain)))
    if isinstance(plain, dict):
        return (isinstance(budgeted, dict) and budgeted.keys() == plain.keys()
                and all((k == key and budgeted[k] is cbor.DROPPED) or _matches(budgeted[k], plain[k], key)
                        for k in plain))
    return same(budgeted, plain)


@settings(max_examples=300)
@given(st.binary(max_size=60), st.integers(min_value=0, max_value=600))
def test_arbitrary_bytes_with_a_budget_fail_only_with_cbor_error_or_read_the_same_but_dropped(data, budget):
    try:
        got = cbor.loads(data, budget, 1)   # a short key, so that random maps hold it
    except cbor.CBORError:
        return
    try:
        plain = cbor.loads(data)
    except cbor.CBORError as e:
        # only what a dropped value is not checked for: its map keys
        assert "map key" in str(e), e
        return
    assert _matches(got, plain, 1), (got, plain)
