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
    assert same(ours, cbor2.loads(data))


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


@pytest.mark.parametrize("obj,word", [
    (cbor2.CBORTag(1, 0), "tag 1"),
    (cbor2.undefined, "undefined"),
    (cbor2.CBORSimpleValue(99), "simple value 99"),
])
def test_cbor2_extensions_outside_the_subset_are_refused(obj, word):
    with pytest.raises(cbor.CBORError, match=word):
        cbor.loads(cbor2.dumps(obj))


@pytest.mark.parametrize("hexdata,value,what", [
    ("9f010203ff", [1, 2, 3], "array"),
    ("bf6161f5ff", {"a": True}, "map"),
    ("5f4101ff", b"\x01", "byte string"),
    ("7f6161ff", "a", "text string"),
])
def test_indefinite_lengths_cbor2_accepts_are_refused(hexdata, value, what):
    data = bytes.fromhex(hexdata)
    assert cbor2.loads(data) == value        # well-formed CBOR, per the oracle
    with pytest.raises(cbor.CBORError, match="indefinite-length " + what):
        cbor.loads(data)


def test_four_gib_claims_fail_fast():
    import time
    t = time.perf_counter()
    for data in (b"\x5a\xff\xff\xff\xff" + b"\x00" * 5, b"\x9a\xff\xff\xff\xff" + b"\x00" * 5,
                 b"\xba\xff\xff\xff\xff" + b"\x00" * 5, b"\x7b" + b"\xff" * 8 + b"a"):
        with pytest.raises(cbor.CBORError, match="truncated"):
            cbor.loads(data)
    assert time.perf_counter() - t < 0.5
