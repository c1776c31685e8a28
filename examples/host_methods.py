"""Methods a host offers to boards: `lkedge serve examples/host_methods.py`.

Every public top-level function f(data) becomes an RPC method named after it
(`data` is an lkedge.rpc.RpcInvocationData: request_id, caller_identity, payload,
response_timeout). Return a str; raise lkedge.rpc.RpcError(code, message, data) for
an application error the caller sees unchanged. A plain function runs in a thread of
its own (a slow one holds up nothing else); an async def runs on serve's event loop
and must not block it.
"""
import json
import time

from lkedge.rpc import RpcError

_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


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
    if not isinstance(reading, dict):
        raise RpcError(4000, 'payload must be a JSON object of readings, e.g. {"temp_c": 21.5}',
                       "got %s" % _JSON_TYPES.get(type(reading), type(reading).__name__))
    return json.dumps({"stored": True, "from": data.caller_identity, "keys": sorted(reading)})
