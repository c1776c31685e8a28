"""lkedge_host.units: the argparse types for sizes, durations and counts."""
import argparse

import pytest

from lkedge_host import units


@pytest.mark.parametrize("text,want", [("0", 0), ("512", 512), ("64K", 65536), ("64kib", 65536),
                                       ("1M", 1 << 20), (" 2MiB ", 2 << 20)])
def test_sizes_are_bytes_or_binary_k_and_m(text, want):
    assert units.size(text) == want


@pytest.mark.parametrize("bad", ["1G", "K", "-1", "1.5M", "", "١٢"])
def test_a_size_that_is_not_one_says_what_is_taken(bad):
    with pytest.raises(argparse.ArgumentTypeError, match="is not a size: give bytes"):
        units.size(bad)


@pytest.mark.parametrize("text,want", [("30", 30.0), ("0.5", 0.5), ("500ms", 0.5), ("30s", 30.0),
                                       ("2m", 120.0), ("1h", 3600.0), ("2d", 172800.0)])
def test_durations_are_seconds_or_ms_s_m_h(text, want):
    assert units.seconds(text) == want


@pytest.mark.parametrize("bad", ["nan", "inf", "0", "0.5ms", "-1s", "3w", "s"])
def test_a_duration_that_is_not_one_says_what_is_taken(bad):
    with pytest.raises(argparse.ArgumentTypeError, match="is not a duration of 1ms or more"):
        units.seconds(bad)


def test_whole_numbers_have_a_minimum():
    assert units.whole(2)("10") == 10
    for bad in ("1", "2.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="at least 2"):
            units.whole(2)(bad)
