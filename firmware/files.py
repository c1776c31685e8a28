"""The file methods: file.get (streamed download), file.put (streamed upload), file.stat.

    file.get   request {"path"}            -> the file as base64 text, streamed
    file.put   request: first line {"path"}, then the file as base64 text, streamed
               -> {"path", "size", "sha256"} of what was written
    file.stat  {"path"} -> {"path", "size", "sha256"}

Paths are relative to the board's root; ".." is refused. file.put writes to
PATH.part and renames it at the end, so a broken upload never replaces a good file.
Errors are RpcErrors with the codes below and a message naming the cause.
"""
import json
import os

from b64pieces import B64Error, B64Sink, FileB64Source

try:
    import hashlib
except ImportError:  # pragma: no cover - every supported port has hashlib
    hashlib = None

E_NOT_JSON = 4000
E_MISSING = 4001
E_BAD_PATH = 4002
E_NO_HEADER = 4003
E_NO_FILE = 4004
E_BAD_BASE64 = 4006
_HEADER_MAX = 512


def rpc_error(code, message, data=None):
    from lkedge.rpc import RpcError
    return RpcError(code, message, data)


def request(payload, key):
    """The JSON object of a request, which must hold `key`."""
    try:
        d = json.loads(payload) if payload else {}
    except ValueError:
        raise rpc_error(E_NOT_JSON, "the request must be a JSON object", payload[:100])
    if not isinstance(d, dict):
        raise rpc_error(E_NOT_JSON, "the request must be a JSON object", payload[:100])
    if key not in d:
        raise rpc_error(E_MISSING, "missing %r in the request" % key)
    return d


def safe_path(path):
    """Only files below the board's root; no way out with '..'."""
    if not isinstance(path, str) or not path.strip("/") or ".." in path.split("/"):
        raise rpc_error(E_BAD_PATH, "bad path %r: a file below / without '..'" % (path,))
    return path.lstrip("/")


def _hexdigest(h):
    import binascii
    return binascii.hexlify(h.digest()).decode()


def _open(path, mode):
    try:
        return open(path, mode)
    except OSError as e:
        raise rpc_error(E_NO_FILE, "cannot open %s: %s" % (path, _errname(e)))


def _errname(e):
    import errno
    code = e.args[0] if e.args else 0
    return errno.errorcode.get(code, str(code)) if hasattr(errno, "errorcode") else str(code)


async def file_get(data):
    req = request(await data.reader.read_all(limit=_HEADER_MAX), "path")
    path = safe_path(req["path"])
    return FileB64Source(_open(path, "rb"))


def file_stat(data):
    path = safe_path(request(data.payload, "path")["path"])
    h = hashlib.sha256()
    buf = bytearray(512)
    mv = memoryview(buf)
    size = 0
    with _open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
            size += n
    return json.dumps({"path": path, "size": size, "sha256": _hexdigest(h)})


async def _read_header(reader, buf):
    """Read up to the first newline; returns (header text, memoryview of the rest)."""
    got = 0
    while True:
        n = await reader.readinto(memoryview(buf)[got:])
        if not n:
            raise rpc_error(E_NO_HEADER, "file.put got no header line: send JSON {\"path\": ...} then a newline")
        got += n
        nl = buf.find(b"\n", 0, got)
        if nl >= 0:
            return bytes(buf[:nl]).decode(), memoryview(buf)[nl + 1:got]
        if got == len(buf):
            raise rpc_error(E_NO_HEADER, "file.put: no newline in the first %d bytes; the first line "
                            "must be JSON {\"path\": ...}" % len(buf))


async def file_put(data):
    reader = data.reader
    head, rest = await _read_header(reader, bytearray(_HEADER_MAX))
    path = safe_path(request(head, "path")["path"])
    tmp = path + ".part"
    h = hashlib.sha256()
    f = _open(tmp, "wb")

    def write(chunk):
        f.write(chunk)
        h.update(chunk)

    sink = B64Sink(write)
    try:
        sink.feed(rest)
        size = await sink.pump(reader)
        f.close()
        f = None
        os.rename(tmp, path)
    except B64Error as e:
        raise rpc_error(E_BAD_BASE64, "file.put: bad base64 body: %s" % (e,))
    finally:
        if f is not None:
            f.close()
            try:
                os.remove(tmp)
            except OSError:
                pass
    return json.dumps({"path": path, "size": size, "sha256": _hexdigest(h)})
