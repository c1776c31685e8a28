"""lkedge_host.bench.board_heap: its command line (the bisection itself runs in
tests/lib/test_board_memory.py)."""
import argparse

import pytest

from lkedge_host.bench import board_heap


def test_sizes_take_bytes_or_binary_k_and_m():
    assert board_heap.payload_sizes("64K,1M,8388608") == [65536, 1048576, 8388608]
    assert board_heap.payload_sizes("512, 2KiB,1mib") == [512, 2048, 1048576]


@pytest.mark.parametrize("bad", ["1G", "M", "-5", "1.5M", "0", "", "64K,"])
def test_a_size_that_is_not_one_names_itself(bad):
    with pytest.raises(argparse.ArgumentTypeError, match="is not a payload size"):
        board_heap.payload_sizes(bad)


def test_compression_both_means_off_then_on():
    assert board_heap.COMPRESSION_MODES["both"] == [False, True]


def test_an_unknown_compression_mode_is_refused_not_taken_for_off(capsys):
    with pytest.raises(SystemExit):
        board_heap.main(["--compression", "yes"])
    assert "invalid choice: 'yes'" in capsys.readouterr().err
