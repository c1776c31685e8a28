"""docs/firmware.md, "Telemetry": the command that runs the guide's receiver.py, as
written (a shell line minting the token for this command only), joins the room as the
identity the board sends to. test_firmware_telemetry.py runs the receiver itself with
a board; this runs the guide's command line."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

from lkedge_host.relay.process import RelayProcess
from test_firmware_guide import BIN, _port_free, guide
from test_firmware_telemetry import guide_receiver, telemetry_section


def test_the_guides_receiver_command_joins_as_the_collector(tmp_path):
    lines = [line for block in re.findall(r"```sh\n(.*?)```", telemetry_section(), re.S)
             for line in block.splitlines() if "receiver.py" in line]
    assert lines == ["LKEDGE_TOKEN=$(lkedge token --identity collector --room lkedge) python receiver.py"], lines
    assert "do not export it" in guide()
    (tmp_path / "receiver.py").write_text(guide_receiver())
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    for k in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "LKEDGE_URL", "LKEDGE_TOKEN", "LKEDGE_ROOM"):
        env.pop(k, None)
    port = 7880
    if not _port_free(port):  # 7880 taken here: the same command with LKEDGE_URL at another port
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        env["LKEDGE_URL"] = "tcp://127.0.0.1:%d" % port
    with RelayProcess(port=port) as relay:
        p = subprocess.Popen(lines[0], shell=True, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            lk = os.path.join(os.path.dirname(sys.executable), "lkedge")
            end = time.monotonic() + 30
            seen = ""
            while "collector" not in seen and time.monotonic() < end and p.poll() is None:
                r = subprocess.run([lk, "room", "--url", relay.url], capture_output=True, text=True,
                                   timeout=30, env=env)
                seen = r.stdout
                time.sleep(0.3)
            assert "collector" in seen, (seen, p.poll())
        finally:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(10)
            err = p.stderr.read()
            p.stdout.close()
            p.stderr.close()
    assert "Traceback" not in err, err   # SIGTERM ends it without one
