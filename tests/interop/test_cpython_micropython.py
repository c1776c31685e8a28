"""Our CPython library <-> our MicroPython participant, through the real relay: the
same matrix and test bodies as the Node interop suites (imported from
test_interop_cpython.py), with the CPython library in the place of livekit-client
(THEIRS = "py") and the MicroPython peer as OURS. Protocols 0/1/2 x compression on
either side, 0 B..1 MiB, errors, timeouts, kills, streams."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_interop_cpython import (  # noqa: E402,F401  (collected here with OURS/THEIRS below)
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
THEIRS = "py"
MP_HEAP = "512K"  # see test_interop_micropython.py
