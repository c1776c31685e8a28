"""board_memory.py's garbage count (imported by it only when asked for "garbage").

Bytes allocated per KiB over the second WINDOW bytes of a transfer, with collections
off so that nothing allocated is freed before it is counted (the run needs a generous
heap). One count per key: "request", "answer", "stream".
"""
import gc

WINDOW = 16384
_counts = {}


def at(key, n):
    """Called as the transfer `key` has moved n bytes."""
    st = _counts.get(key)
    if st is None:
        if n >= WINDOW:
            gc.collect()
            gc.disable()
            _counts[key] = [gc.mem_alloc(), n, None]
    elif st[2] is None and n >= st[1] + WINDOW:
        st[2] = (gc.mem_alloc() - st[0]) * 1024 // (n - st[1])
        gc.enable()


def report():
    print("GARBAGE " + " ".join("%s=%s" % (k, _counts[k][2] if k in _counts else "?")
                                for k in ("request", "answer", "stream")))
