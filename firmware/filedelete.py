"""file.delete, apart from the other file methods (files.py): methods.py imports it for
each call and drops it after, so its bytecode is not in a board's heap between calls.

    file.delete  {"path"} -> {"path", "size": what it held, "free": flash bytes free
                 now, null where the port cannot say}

Paths follow file.put's rules (files.safe_path). Refused: the firmware's own files
(E_OWN: anything in lib/, boot.py and main.py; what `lkedge deploy` put there, listed
in its manifest, or, on a board without one, every .py and .mpy file; the files this
firmware keeps at the top: its config, log, telemetry and profile files by name, their
.tmp copies, and deploy's .lkedge* files), a file a file.put is writing (E_BUSY), a
missing file or a folder (E_NO_FILE), a removal the flash refuses (E_WRITE). Each
deletion goes to the flash log with the caller's identity.
"""
import json
import os

import files

E_OWN = 4009
# the top-level files this firmware writes (a user's log.csv or config.bak is not one)
_OWN = ("config.json", "config.good.json", "config.rejected.json", "config.trial.json", "log.txt", "log.old",
        "telemetry.q", "telemetry.st", "telemetry.boot", "profile.json", "boot.py", "main.py")
_MANIFEST = ".lkedge-deployed"  # what deploy put on the board, one "sha256 /path" a line


def file_delete(data):
    path = files.safe_path(files.request(data.payload, "path")["path"])
    if files._busy(path):
        raise files.rpc_error(files.E_BUSY, "file.delete: %s is being written by a file.put; try again after it"
                              % path)
    if _own(path):
        raise files.rpc_error(E_OWN, "file.delete: %s is the firmware's own file (its code, config, log or "
                              "telemetry): not deleted" % path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise files.rpc_error(files.E_NO_FILE, "file.delete: cannot delete %s: %s" % (path, files._errname(e)))
    if st[0] & 0x4000:
        raise files.rpc_error(files.E_NO_FILE, "file.delete: %s is a folder; it deletes files only" % path)
    try:
        os.remove(path)
    except OSError as e:
        raise files.rpc_error(files.E_WRITE, "file.delete: cannot delete %s: %s" % (path, files._errname(e)))
    import flashlog
    flashlog.info("file.delete by %s: %s (%d bytes)" % (data.caller_identity, path, st[6]))
    return json.dumps({"path": path, "size": st[6], "free": files.free_bytes(path)})


def _own(path):
    """Whether `path` (safe_path's spelling) is the firmware's own: anything in lib/,
    a top-level file of _OWN (or its .tmp copy) or of deploy (.lkedge*), a file deploy
    put there (listed in its manifest) or, without a manifest, any code file. Compared
    in lower case: on a FAT flash CONFIG.JSON is config.json."""
    p = path.lower()
    top = p[:-4] if p.endswith(".tmp") else p
    if p.startswith("lib/") or ("/" not in p and (top in _OWN or p.startswith(".lkedge"))):
        return True
    try:
        with open(_MANIFEST) as f:
            for line in f:
                if line.rstrip().lower().endswith(" /" + p):
                    return True
    except OSError:   # no manifest (deployed by other means): its code cannot be told apart
        return p.endswith((".py", ".mpy"))
    return False
