"""Boot-time and repair code of the telemetry queue (telemetry.py): reading the state
file, walking and rebuilding the queue file, the boot counter. Imported only when
needed and dropped from sys.modules afterwards (telemetry.py), so its bytecode does
not stay in a board's heap.
"""
import json
import os

from telemetry import BOOT, _read_record, _remove, _size


def next_boot(prefix=""):
    """Count this boot in `prefix`telemetry.boot; returns the new count (1 at the first)."""
    path = prefix + BOOT
    n = 0
    try:
        with open(path) as f:
            n = int(f.read())
    except (OSError, ValueError):
        pass
    n += 1
    try:
        with open(path + ".tmp", "w") as f:
            f.write(str(n))
        os.rename(path + ".tmp", path)
    except OSError:
        pass  # a full flash: records still carry a boot number, maybe a repeated one
    return n


def load(q):
    q._head_hint = None
    try:
        with open(q.st) as f:
            d = json.load(f)
        seq, dropped = d["seq"], d.get("dropped", 0)
        first = d.get("first")
        for v in (seq, dropped) + (() if first is None else (first,)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError("not a count")
        q.seq, q.dropped, q.first = seq, dropped, first
        if first is None:  # written by an older firmware: {"seq", "head", "dropped"}
            q._head_hint = d.get("head", 0)
    except OSError:
        q.state_problem = "missing"
    except (ValueError, KeyError, TypeError, AttributeError):
        q.state_problem = "damaged"


def recover(q):
    """Walk the whole queue file and check every record; skip damaged stretches to
    the next good record (counting the samples they held as dropped), rebuild the
    file when anything was wrong, find the head by `first`, and make the next seq
    follow the last record written (its append may have beaten the state save)."""
    _remove(q.q + ".tmp")  # a rewrite cut short by a power cut
    size = _size(q.q)
    segs = []          # [start, end, records] runs of good records
    head = None
    head_seq = None
    last = None
    lost = 0
    hint = q._head_hint
    q._head_hint = None
    if size:
        with open(q.q, "rb") as f:
            off = 0
            while off < size:
                rec, s = _read_record(f, off, size)
                if rec is not None and (last is None or s > last):
                    if segs and segs[-1][1] == off:
                        segs[-1][1] = off + 2 + len(rec)
                        segs[-1][2] += 1
                    else:
                        if head is not None:  # pending samples between last and s were in garbage
                            lost += s - last - 1
                        segs.append([off, off + 2 + len(rec), 1])
                    if head is None and (s >= q.first if q.first is not None
                                         else hint is None or off >= hint):
                        head, head_seq = off, s
                    last = s
                    off += 2 + len(rec)
                else:
                    off += 1  # garbage: look for the next good record byte by byte
                rec = None
    problem = q.state_problem
    q.state_problem = None  # said once
    if problem == "missing" and q.boot <= 1 and not size:
        problem = None  # the first boot
    if problem is not None:
        if last is None:
            q.notes.append("telemetry: state file %s %s and no queued samples: seq starts again at %d "
                              "(records carry boot %d)" % (q.st, problem, q.seq, q.boot))
        else:
            q.notes.append("telemetry: state file %s %s: seq follows the queue file" % (q.st, problem))
    end = segs[-1][1] if segs else 0
    if head is None:
        head = end
    # Samples the state knew of that the file lacks (a damaged file, a rewrite cut
    # short by a power cut before its state save): lost, and counted.
    if q.first is not None:
        if head_seq is not None:
            lost += head_seq - q.first
        lost += max(0, q.seq - max(q.first, last + 1 if last is not None else 0))
    if last is not None and last + 1 > q.seq:
        q.seq = last + 1
    if lost:
        q.notes.append("telemetry: %d queued samples missing from %s: counted as dropped" % (lost, q.q))
    if size > 0 and (len(segs) != 1 or segs[0][0] != 0 or end != size):  # damaged
        keep = [(max(a, head), b) for a, b, _ in segs if b > head]
        q.notes.append("telemetry: %s damaged: %d good bytes of %d kept" % (
            q.q, sum(b - a for a, b in keep), size))
        try:
            q._rewrite(keep)
            q.base += size
            end = sum(b - a for a, b in keep)
            head = 0
        except OSError as e:  # a full flash: keep the damaged file, read only its first good part
            later = [g for g in segs if g[1] > head]
            end = later[0][1] if later else head  # the next add cuts the rest off (compaction)
            lost += sum(g[2] for g in later[1:])
            q.notes.append("telemetry: rebuilding %s failed (%r): %d more samples lost" % (
                q.q, e, sum(g[2] for g in later[1:])))
    q.dropped += lost
    q.head, q.end = head, end
    q.first = head_seq if head < end else q.seq
    q._save()
