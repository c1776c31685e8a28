"""Our participants answer the relay's PINGs (LINK.md: PING goes both ways, a PONG
echoes it), so one whose own PINGs run late keeps its link: the relay PINGs a
participant quiet for half its idle timeout (host_tools/relay/router.py), through the
real relay, with the board library under MicroPython and the CPython library.
"""
import contextlib
import time

import pytest

from lkedge_host.relay.process import RelayProcess
from py_peer import MpPeer, PyPeer

IDLE_S = 2


@pytest.mark.parametrize("kind", ["micropython", "cpython"])
def test_a_participant_whose_own_pings_are_late_keeps_its_link_by_answering_the_relays(kind):
    relay = RelayProcess(room="keep", extra_args=["--idle-timeout", str(IDLE_S)], http=True).start()
    with contextlib.ExitStack() as closing:
        closing.callback(relay.stop)
        make = MpPeer if kind == "micropython" else PyPeer
        # its own PINGs a minute apart: without the relay's PINGs it is closed as idle
        late = make(relay.host, relay.port, relay.token("late"), name="late", ping_interval_ms=60000)
        late.start()
        closing.callback(late.close)
        late.call("register_rpc", method="echo", behaviour="echo")
        time.sleep(2.5 * IDLE_S)
        caller = PyPeer(relay.host, relay.port, relay.token("caller"), name="caller")
        caller.start()
        closing.callback(caller.close)
        assert "late" in caller.joined["participants"]
        assert caller.call("perform_rpc", destination="late", method="echo", payload="still here")["payload"] \
            == "still here"
        assert relay.counter("lkedge_relay_frames_out_total", type="PING") >= 2   # kept by answering them, not by its own
