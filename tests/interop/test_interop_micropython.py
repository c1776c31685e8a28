"""Node (livekit-client's real RPC and data-stream managers) <-> our MicroPython
participant (tests/interop/mp_peer.py on the unix port, `-X heapsize=256K`, mpy-compiled
library, board-sized RoomOptions, the bounded-memory streaming API), through our relay.

The same matrix and test bodies as test_interop_cpython.py (imported from there, so
both files always check the same behaviour); the pool fixture starts MicroPython
processes because OURS = "mp". MicroPython-specific expectations: it never compresses
(its DeflateIO is read-only), and 1 MiB payloads leave it through the incremental
writer / send_file (uncompressed) and streaming RPC calls.

Needs the Node bundle (make setup) and the micropython unix port in the venv.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from py_peer import MpPeer, sha  # noqa: E402
from test_interop_cpython import (  # noqa: E402,F401  (collected here with OURS = "mp")
    test_finite_stream_arrives_whole_with_attributes_and_negotiated_compression,
    test_incremental_stream_arrives_whole_uncompressed,
    test_rpc_echo_returns_the_request_unchanged_or_the_v1_size_error,
    test_rpc_errors_cross_with_code_message_and_data,
    test_rpc_handler_sees_the_whole_request,
    test_rpc_response_size_limit_applies_to_v1_callers_only,
    test_rpc_short_timeout_against_a_sleeping_handler_is_1502,
    test_rpc_to_a_handler_that_dies_mid_call_is_1503,
)

OURS = "mp"

# Heap of the pooled peers. On the unix port the library's .mpy bytecode lives in the
# heap (~90-110 KB after import; a board's firmware freezes it into flash), so a
# 256 KiB unix heap leaves a peer less room than a board: v1 payloads at the 15360-byte
# limit need a few contiguous ~15 KB blocks and fail there. 512K = a board's free heap
# plus the bytecode. test_finished_handler_tasks_do_not_pin_the_board_heap runs at 256K.
# A long-running MicroPython peer serves ~840 cases; without a GC threshold it
# sometimes could not find 20 KiB contiguous for a gathered 20480-byte response late in
# the run (fragmentation: garbage piled up between long-lived objects). Importing
# lkedge now sets gc.threshold (lkedge/__init__.py): every run of both MicroPython
# interop files passed at 512K since (4 with heap/64, 3 with the heap/32 it uses),
# where about half failed before.
MP_HEAP = "512K"
BOARD_HEAP = "256K"


def test_finished_handler_tasks_do_not_pin_the_board_heap(pool):
    """30 one-byte streams handled to the end must leave the heap where it was: a Room
    that kept its finished handler tasks pinned ~1.7 KB each (their MicroPython
    coroutine frames hold the reader and the handler's locals) and ran a 256 KiB peer
    out of memory after ~35 streams."""
    sender = pool.peer("node", (2, True))
    board = MpPeer(pool.relay.host, pool.relay.port, pool.relay.token("mp-heap"),
                   client_protocol=2, compression=True, name="mp-heap", heapsize=BOARD_HEAP)
    board.start()
    try:
        board.call("register_stream_handler", kind="text", topic="t")
        pool.pair(sender, board)
        before = board.call("mem")["alloc"]
        for i in range(30):
            sid = sender.call("send_text", topic="t", payload="x", destination=board.name)["info"]["id"]
            ev = board.wait_event(lambda e: e.get("stream_id") == sid)
            assert ev["event"] == "stream", ev
        grown = board.call("mem")["alloc"] - before
        assert grown < 8 * 1024, "30 finished streams still hold %d bytes of heap" % grown
    finally:
        board.close()


def test_streaming_call_answered_by_packet_releases_its_payload(pool):
    """Three v1 streaming calls of 15000 bytes must not leave 45 KB behind."""
    handler = pool.peer("node", (0, True))
    caller = MpPeer(pool.relay.host, pool.relay.port, pool.relay.token("mp-calls"),
                    client_protocol=0, compression=False, name="mp-calls", heapsize=MP_HEAP)
    caller.start()
    try:
        pool.pair(caller, handler)
        fields, data = pool.payloads.fields(15000)
        # The first call imports the caller side (lkedge.calls, rpc_caller, ...): a
        # one-time cost by design, so the leak check starts after it.
        caller.call("perform_rpc", destination=handler.name, method="echo", streaming=True, **fields)
        before = caller.call("mem")["alloc"]
        for i in range(3):
            reply = caller.call("perform_rpc", destination=handler.name, method="echo",
                                streaming=True, **fields)
            assert reply["payload_sha256"] == sha(data)
        grown = caller.call("mem")["alloc"] - before
        assert grown < 8 * 1024, "3 finished streaming calls still hold %d bytes" % grown
    finally:
        caller.close()
