"""lkedge_host.bench.board_payload: the esp32 profile's max_rpc_payload kept by this
repository's firmware on the emulated board with telemetry on and its receiver taking
it (a request of max_rpc_payload bytes answered, one byte more refused 1402), and the
command line. The benchmark's own runs (30 calls of each, README "max_rpc_payload")
are what chose the value; this short one keeps it from drifting out of reach."""
import pytest

from lkedge_host import profiles
from lkedge_host.bench import board_payload


def test_the_esp32_profiles_max_rpc_payload_is_answered_and_one_byte_more_refused_1402(capsys):
    m = profiles.load("esp32")["link"]["max_rpc_payload"]
    assert board_payload.main(["--profile", "esp32", "--calls", "3", "--gap", "200ms", "--settle", "11s"]) == 0, \
        capsys.readouterr().out
    out = capsys.readouterr().out
    assert "%6d B: 3 x ok\n" % m in out, out
    assert "%6d B: 3 x 1402 stream larger than the %d-byte read_all limit" % (m + 1, m) in out, out
    assert out.endswith("max_rpc_payload %d of esp32: kept\n" % m), out


@pytest.mark.parametrize("argv, want", [
    (["--calls", "0"], "argument --calls: '0' is not a whole number of at least 1"),
    (["--sizes", "5K,lots"], "argument --sizes: 'lots' is not a payload size"),
    (["--profile", "esp8266"], "no board profile 'esp8266'"),
])
def test_bad_arguments_are_usage_errors(argv, want, capsys):
    with pytest.raises(SystemExit) as e:
        board_payload.main(argv)
    assert e.value.code == 2 and want in capsys.readouterr().err
