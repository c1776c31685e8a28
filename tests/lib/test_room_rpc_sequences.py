"""A Room answering arbitrary mixes of RPC requests from one caller, drawn by
hypothesis: v1 packets and v2 request streams (inline or chunked, well-formed or with a
bad attribute, a wrong version or a payload that is not UTF-8), to methods that answer,
fail, raise, take time or do not exist, more at once than max_rpc_handlers, from a v1
or a v2 caller. tests/device/rpc_sequences.py plays them and checks RPC.md's "nothing
that must be answered is left unanswered": exactly one answer each, the one RPC.md
gives it, at most one ack; tests/device/test_room_rpc_sequences.py runs seeded mixes on
MicroPython too.
"""
import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpc_sequences import METHODS, play

v1_requests = st.tuples(st.just("v1"), st.sampled_from(METHODS), st.integers(0, 40), st.sampled_from([1, 1, 1, 2]))
v2_requests = st.tuples(st.just("v2"), st.sampled_from(METHODS), st.integers(0, 40),
                        st.sampled_from(["2", "2", "2", "1", "x"]), st.sampled_from(["inline", "chunked"]),
                        st.sampled_from(["ok", "ok", "ok", "no method", "bad timeout", "bad utf-8"]))
mixes = st.tuples(st.sampled_from([0, 2]), st.lists(st.one_of(v1_requests, v2_requests), min_size=1, max_size=10))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mix=mixes)
def test_every_request_gets_exactly_the_answer_rpc_md_gives_it(mix):
    asyncio.run(play(*mix))
