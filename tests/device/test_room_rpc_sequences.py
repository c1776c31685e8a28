"""Seeded mixes of RPC requests (tests/device/rpc_sequences.py) sent to a Room, on
CPython and MicroPython alike: every request gets exactly the answer RPC.md gives it,
from a v1 and from a v2 caller."""
import rpc_sequences as seqs
from room_helpers import Rng

MP_HEAPSIZE = "1M"


async def test_seeded_mixes_of_requests_from_a_v2_caller_get_exactly_their_answers():
    rng = Rng(2)
    for _ in range(15):
        await seqs.play(2, seqs.random_reqs(rng))


async def test_seeded_mixes_of_requests_from_a_v1_caller_get_exactly_their_answers():
    rng = Rng(1)
    for _ in range(15):
        await seqs.play(0, seqs.random_reqs(rng))
