"""The browser client's TypeScript: its sources type-check under `strict`, and the
declarations shipped beside the bundle (dist/lkedge.d.mts) are what the code gives and
stand alone in a page's project (clients/browser/typecheck.mjs, with the pinned
TypeScript compiler from the client's lockfile)."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLIENT = os.path.join(ROOT, "clients", "browser")
sys.path.insert(0, os.path.join(ROOT, "tests", "interop"))
from nodepeer import node_executable  # noqa: E402


def test_sources_declarations_and_a_page_using_them_type_check():
    r = subprocess.run([node_executable(), "typecheck.mjs"], cwd=CLIENT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sources and declarations: ok" in r.stdout and "a page with the declarations alone: ok" in r.stdout


def test_the_declarations_ship_beside_the_bundle():
    with open(os.path.join(CLIENT, "lkedge.d.mts")) as a, open(os.path.join(CLIENT, "dist", "lkedge.d.mts")) as b:
        assert a.read() == b.read(), "dist/lkedge.d.mts is stale: run `make browser`"
