"""A board's room and a collector's in one MemRoom, for the telemetry sender tests
(test_telemetry_queue.py, test_telemetry_faults.py). Needs firmware/ on sys.path
(import firmware_path first)."""
import telemetry

from lkedge import cbor


async def collector_pair(sync=True):
    """-> (mem, board, col, got): the collector takes telemetry with a byte stream
    handler (the seqs it got in `got`) and answers telemetry.sync with `sync`: True
    answers at once with the batch, False registers no method, a callable is the
    method itself."""
    from room_helpers import join, settle
    from lkedge.memroom import MemRoom
    mem = MemRoom()
    board = await join(mem, "board", read_buffer=512, piece_size=512)
    col = await join(mem, "collector")
    got = []

    async def on_stream(reader, sender):
        for s in cbor.loads(await reader.read_all()):
            got.append(s["seq"])
    col.register_byte_stream_handler("telemetry", on_stream)
    if sync:
        col.local_participant.register_rpc_method(
            telemetry.SYNC_METHOD, sync if callable(sync) else (lambda data: data.payload))
    await settle(lambda: "collector" in board.remote_participants)
    return mem, board, col, got


class FlakyTelemetry:
    """Telemetry whose first `fail` samples hit a full flash (OSError 28), for the
    firmware's telemetry loop (app._telemetry_loop) without a room."""

    def __init__(self, fail):
        self.fail = fail
        self.samples = 0
        self.flushes = 0

    async def sample(self, values, t):
        if self.fail:
            self.fail -= 1
            raise OSError(28)
        self.samples += 1

    async def flush(self):
        self.flushes += 1
