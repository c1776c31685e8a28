"""lkedge_host.bench.load: calls start only once everyone is in, so none fail for lack
of a callee (the numbers themselves are the benchmark's to print, not a test's)."""
import subprocess
import sys


def test_a_small_load_run_completes_every_call_and_reports_the_relay():
    r = subprocess.run([sys.executable, "-m", "lkedge_host.bench.load", "--participants", "40",
                        "--seconds", "3", "--workers", "2"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "40 participants joined and see their callee" in out, out
    ok = int(out.split("calls ok ")[1].split()[0])
    assert ok >= 40 and "failed 0" in out, out
    assert "relay: CPU" in out and "RSS" in out, out
