"""Fixtures of the interop suites (test_interop_cpython.py, test_interop_micropython.py):
one relay per module and one peer pool per module (py_peer.Pool), whose "ours" side is
the module's OURS ("py": the CPython library in-process; "mp": the MicroPython
participant in a subprocess). The other side is the module's THEIRS: the Node peer
(livekit-client's managers) by default, or "py" for our CPython library.
"""
import os
import sys

import pytest

from lkedge_host.relay.process import RelayProcess

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from py_peer import Pool  # noqa: E402


@pytest.fixture(scope="module")
def relay():
    r = RelayProcess(room="interop").start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def pool(request, relay, tmp_path_factory):
    p = Pool(relay, request.module.OURS, str(tmp_path_factory.mktemp("interop")),
             mp_heap=getattr(request.module, "MP_HEAP", "256K"),
             theirs=getattr(request.module, "THEIRS", "node"))
    yield p
    p.close()
