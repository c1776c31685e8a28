"""Boot-time, repair and rare code of the telemetry queue (telemetry.py): reading the
state file, walking and rebuilding the queue file, the boot counter, the notes of a
state save that failed. Imported only when
needed and dropped from sys.modules afterwards (telemetry.py), so its bytecode does
not stay in a board's heap.
"""
import json

from telemetry import BOOT, QUEUE, STATE, _read_record, _remove, _replace, _size


def next_boot(prefix="", notes=None):
    """Count this boot: one more than any boot number the counter (`prefix`telemetry.boot),
    the state or the queue's last record holds, so two boots never share one even when
    the counter could not be written (a full flash): the boot's first sample, or its
    state, then carries it. Returns it (1 at the first). A counter the flash refuses is
    said in `notes`; a boot that could write none of the three queued no sample, so no
    receiver saw its number."""
    path = prefix + BOOT
    _remove(path + ".tmp")  # left by a write that failed at an earlier boot
    n = max(_int_in(path), _saved_boot(prefix)) + 1
    e = _replace(path, str(n))
    if e is not None and notes is not None:
        notes.append("telemetry: boot counter %s not written (%r): boot %d is kept by the state "
                     "and the queue at the next sample" % (path, e, n))
    return n


def _int_in(path):
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def _saved_boot(prefix):
    """The boot number in the state file, or in the last good record of the queue file
    if higher (an append whose state save failed); 0 when none."""
    b = 0
    try:
        with open(prefix + STATE) as f:
            b = json.load(f)["boot"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if not isinstance(b, int) or isinstance(b, bool):
        b = 0
    path = prefix + QUEUE
    size = _size(path)
    last = None
    if size:
        with open(path, "rb") as f:
            off = 0
            while off < size:
                rec, _ = _read_record(f, off, size)
                if rec is None:
                    off += 1
                else:
                    off += 2 + len(rec)
                    last = rec
    if last is not None:
        from lkedge import cbor
        r = cbor.loads(last).get("boot")
        if isinstance(r, int) and not isinstance(r, bool) and r > b:
            b = r
    return b


def saved(q, e):
    """A state save failed (`e`, the OSError) after one that worked, or worked after one
    that failed: note it (once per change) and mark the queue unsaved or not."""
    q.unsaved = e is not None
    if e is None:
        q.notes.append("telemetry: state saved to %s again" % q.st)
    else:
        q.notes.append("telemetry: state not saved to %s (%r): seq %d, dropped %d and boot %d kept in RAM and "
                       "saved again with each sample (lost if the board resets first)"
                       % (q.st, e, q.seq, q.dropped, q.boot))


def load(q):
    q._head_hint = None
    _remove(q.st + ".tmp")  # a state save cut short (a full flash, a power cut)
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
