"""lkedge_host.bench.board_calls: a short run against a real MicroPython board and relay,
and its command line. (The number it prints is the benchmark's business, not a test's.)"""
import pytest

from lkedge_host.bench import board_calls


def test_a_short_run_prints_rate_and_round_trips(capsys):
    board_calls.main(["--calls", "5"])
    out = capsys.readouterr().out
    assert out.startswith("board calls: 5 one after the other, ") and " p50 " in out and " p99 " in out, out


@pytest.mark.parametrize("argv, want", [
    (["--calls", "0"], "argument --calls: '0' is not a whole number of at least 1"),
    (["--heap", "lots"], "argument --heap: 'lots' is not a size"),
])
def test_bad_arguments_are_usage_errors(argv, want, capsys):
    with pytest.raises(SystemExit) as e:
        board_calls.main(argv)
    assert e.value.code == 2 and want in capsys.readouterr().err
