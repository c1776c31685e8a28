"""Seeded sequences of stream packets (tests/device/stream_sequences.py) fed to a Room,
on CPython and MicroPython alike: compressed inline content and chunks go through
MicroPython's own inflater here, fields in any order, duplicates, gaps, early trailers.
Each check names its sequence in its failure (play's assertions carry `acts`)."""
import stream_sequences as seqs
from room_helpers import Rng

MP_HEAPSIZE = "1M"


async def test_seeded_sequences_of_stream_packets_deliver_only_whole_contents_and_the_room_goes_on():
    rng = Rng(20261207)
    for _ in range(60):
        await seqs.play(seqs.random_acts(rng))


async def test_seeded_streams_sent_whole_arrive_whole_whatever_duplicate_headers_come_meanwhile():
    rng = Rng(7)
    for _ in range(60):
        acts = seqs.whole_streams(rng)
        assert seqs.expected(acts), acts
        await seqs.play(acts)
