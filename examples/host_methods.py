"""Methods a host offers to boards: `lkedge serve examples/host_methods.py`.

Every public top-level function f(data) becomes an RPC method named after it
(`data` is an lkedge.rpc.RpcInvocationData: request_id, caller_identity, payload,
response_timeout). Return a str; raise lkedge.rpc.RpcError(code, message, data) for
an application error the caller sees unchanged.
"""
import json
import time

from lkedge.rpc import RpcError


def time_now(data):
    """The host's clock, for boards without an RTC."""
    return json.dumps({"unix_ms": int(time.time() * 1000)})


def echo(data):
    return data.payload


async def store_reading(data):
    """Validate a JSON reading from a board and acknowledge it."""
    try:
        reading = json.loads(data.payload)
    except ValueError:
        raise RpcError(4000, "payload must be JSON", data.payload[:100])
    return json.dumps({"stored": True, "from": data.caller_identity, "keys": sorted(reading)})
