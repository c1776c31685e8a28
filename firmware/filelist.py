"""file.list, apart from the other file methods (files.py): methods.py imports it for
each call and drops it after, so its bytecode is not in a board's heap between calls.

    file.list  {"path": folder, "start": N} (both optional: the root, from its first
               entry) -> {"path", "entries": [{"name", "size"} or {"name", "dir": true}],
               "next": N or null, "free": flash bytes free (null where the port cannot
               say)}, and "not_utf8": N when the folder holds names that are not UTF-8
               (not listed: no method could name them)

One answer holds at most LIST_MAX entries and about LIST_CHARS characters of names;
"next" is then the "start" that lists the rest (null: nothing more). Entries come in
the flash's own order, the same from call to call while the folder does not change (a
file added or removed meanwhile can shift an entry into or out of the next answer).
The path follows file.put's rules (files.safe_path), but "", "." and "/" are the root
and a trailing "/" is taken; a missing folder or a file is E_NO_FILE.
"""
import json
import os

import files

LIST_MAX = 40
LIST_CHARS = 2048


def file_list(data):
    req = files.request(data.payload, None)
    path = req.get("path", "")
    if isinstance(path, str):
        path = path.rstrip("/")
    path = "" if path in ("", ".") else files.safe_path(path)
    start = req.get("start", 0)
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise files.rpc_error(files.E_NOT_JSON, "file.list: \"start\" must be a non-negative int")
    where = path or "."
    try:
        st = os.stat(where)
    except OSError as e:
        raise files.rpc_error(files.E_NO_FILE, "file.list: no folder %s: %s" % (path, files._errname(e)))
    if not st[0] & 0x4000:
        raise files.rpc_error(files.E_NO_FILE, "file.list: %s is a file, not a folder (file.stat tells its size)"
                              % path)
    import gc
    import io
    gc.collect()  # the answer is built in one growing buffer: start from a collected heap
    out = io.StringIO()
    out.write('{"path": %s, "entries": [' % json.dumps(path or "/"))
    n = chars = bad = 0
    nxt = None
    i = -1
    for e in _ilistdir(where):
        i += 1
        if i < start:
            continue
        if n >= LIST_MAX or chars >= LIST_CHARS:
            nxt = i
            break
        try:
            name = e[0].decode()
        except UnicodeError:
            bad += 1
            continue
        out.write(", " if n else "")
        if e[1] & 0x4000:
            out.write('{"name": %s, "dir": true}' % json.dumps(name))
        else:
            size = e[3] if len(e) > 3 and e[3] >= 0 else _size(where, e[0])
            out.write('{"name": %s, "size": %s}' % (json.dumps(name), json.dumps(size)))
        n += 1
        chars += len(name) + 24
    out.write('], "next": %s, "free": %s%s}' % (json.dumps(nxt), json.dumps(files.free_bytes(path + "/x")),
                                               ', "not_utf8": %d' % bad if bad else ""))
    return out.getvalue()


def _ilistdir(where):
    """(name as bytes, type, inode[, size]) of each entry: os.ilistdir of a bytes path,
    which names entries in bytes on a board's FAT or littlefs (a str path fails on a
    name that is not UTF-8); os.scandir on CPython (host tests)."""
    ls = getattr(os, "ilistdir", None)
    if ls is not None:
        return ls(where.encode())
    return ((d.name, 0x4000 if d.is_dir() else 0x8000, 0) for d in os.scandir(where.encode()))


def _size(where, name):
    try:
        return os.stat(where.encode() + b"/" + name)[6]
    except OSError:
        return None
