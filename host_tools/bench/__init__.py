"""Benchmarks (scripts that print numbers; never part of the test suite's pass/fail)."""
import asyncio
import time


async def until_in_room(room, identity, timeout_s, why):
    """Wait until `identity` is among room's remote participants; RuntimeError(why)
    after timeout_s seconds."""
    t_end = time.monotonic() + timeout_s
    while identity not in room.remote_participants:
        if time.monotonic() > t_end:
            raise RuntimeError(why)
        await asyncio.sleep(0.02)
