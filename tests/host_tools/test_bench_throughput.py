"""lkedge_host.bench.throughput: its command line (sizes in MiB with fractions, 0 skips
a part, nothing to measure is a usage error) and a short run of each part."""
import pytest

from lkedge_host.bench import throughput


@pytest.mark.parametrize("argv, want", [
    (["--mib", "0", "--calls", "0"], "--mib 0 and --calls 0 leave nothing to measure"),
    (["--mib", "-1"], "argument --mib: '-1' is not a size in MiB"),
    (["--mib", "nan"], "argument --mib: 'nan' is not a size in MiB"),
    (["--mib", "inf"], "argument --mib: 'inf' is not a size in MiB"),
    (["--mib", "1e-9"], "argument --mib: '1e-9' is not a size in MiB"),
    (["--calls", "-1"], "argument --calls: '-1' is not a whole number of at least 0"),
])
def test_sizes_and_counts_out_of_range_are_usage_errors(argv, want, capsys):
    with pytest.raises(SystemExit) as e:
        throughput.main(argv)
    assert e.value.code == 2
    assert want in capsys.readouterr().err


def test_a_fractional_stream_alone(capsys):
    throughput.main(["--mib", "0.5", "--calls", "0"])
    out = capsys.readouterr().out
    assert out.startswith("v2 byte stream: 0.5 MiB in ") and "RPC" not in out, out


def test_calls_alone(capsys):
    throughput.main(["--mib", "0", "--calls", "5"])
    out = capsys.readouterr().out
    assert out.startswith("small v2 RPC round trips: 5 in ") and "byte stream" not in out, out


def test_plain_numbers_keep_their_units():
    a = throughput.parser().parse_args(["--mib", "64", "--calls", "10000"])
    assert (a.mib, a.calls) == (64, 10000)


def test_help_names_the_module_and_every_default(capsys):
    with pytest.raises(SystemExit):
        throughput.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: python -m lkedge_host.bench.throughput ")
    for want in ("(default: 64)", "(default: 10000)", "0 skips the stream", "0 skips them"):
        assert want in text, want
