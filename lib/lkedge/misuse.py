"""The application's mistakes: errors for wrong calls of the API, and the report of a
failed RPC handler, built only when one happens.

The checks stay where the mistake is made (one isinstance each); what they raise or
print is built here, imported on first use (lkedge.load), so a board that makes none
keeps neither this bytecode nor its texts in its heap. Its names are private (`_x`) so
that a board build respells them as names the firmware already interned: a new public
name in the modules that call them would cost every board a qstr (lkedge_host.boardbuild).
"""
import sys


def _wrong_type(what, got):
    """TypeError "<what>, got <type name>"."""
    return TypeError("%s, got %s" % (what, type(got).__name__))


def _bad_setting(k, v, d):
    """What RoomOptions raises for a value `v` its setting `k` (default `d`) cannot
    take (RoomOptions.__init__): ValueError for an int out of range, else TypeError."""
    from .config import _NONE_OK
    number = type(d) is int or d is None and k != "advertise_compression"
    what = ("0, 1 or 2" if k == "client_protocol" else "an int over 0" if number
            else "True or False" if d is None or type(d) is bool else "a " + type(d).__name__)
    if k in _NONE_OK:
        what += ", or None"
    if number and type(v) is int:
        return ValueError("RoomOptions.%s is %s, got %r" % (k, what, v))
    return TypeError("RoomOptions.%s is %s, got %s %r" % (k, what, type(v).__name__, v))


def _stream_takes(text, got):
    """A write of the wrong kind to a stream (lkedge.streams.OutgoingStream.write), or a
    piece of an RPC payload gathered for a v1 peer (lkedge.sending.gather_text)."""
    return TypeError("a text stream takes str, not %s (stream_text's writes, an RPC payload's pieces)"
                     % type(got).__name__ if text else "a byte stream takes bytes, not str")


def _stream_args(e, strs, dests, attributes, total_size=None):
    """The TypeError for the application's mistake in a stream's arguments, in the API's
    words (proto would say "DataStream.Header.topic must be str"); else `e`, the error
    they met. strs: topic, stream_id, name, mime_type, reply_to_id (None: the default)."""
    if isinstance(dests, str):
        return _dests_str(dests)
    for v, what in zip(strs, ("a stream topic", "a stream_id", "a byte stream's name", "a mime_type",
                              "reply_to_id")):
        if v is not None and not isinstance(v, str):
            return _wrong_type(what + " is a str", v)
    try:
        for d in dests or ():
            if not isinstance(d, str):
                return _wrong_type("an identity in destination_identities is a str", d)
    except TypeError:
        return _wrong_type("destination_identities is a list of identities", dests)
    if not (attributes is None or isinstance(attributes, dict)):
        return _wrong_type("attributes is a dict of str to str", attributes)
    for k in attributes or ():
        if not isinstance(k, str) or not isinstance(attributes[k], str):
            return TypeError("attributes map str to str, got %r: %r" % (k, attributes[k]))
    if total_size is not None and (type(total_size) is not int or total_size < 0):
        return _wrong_type("total_size is a number of bytes (an int)", total_size)
    return e


def _dests_str(d):
    # "bob" would be sent to "b" and "o"
    return TypeError("destination_identities is a list of identities, got the str %r" % (d,))


def _bad_answer(inv, result):
    """What a handler that answered neither a str nor (streaming) an async iterable gets."""
    return TypeError("RPC handler for %r answered %s: a handler answers a str%s" % (
        inv.method, type(result).__name__,
        ", or with streaming=True an async iterable of str pieces" if inv.streaming else ""))


def _handler_failed(inv, e):
    """Print a handler's failure with its traceback (file and line) on this side: the
    caller gets only 1500 (and, on v1, the exception's text)."""
    print("lkedge: RPC handler for %r failed (caller %r gets 1500):" % (inv.method, inv.caller_identity))
    if hasattr(sys, "print_exception"):
        sys.print_exception(e)
    else:
        import traceback
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stdout)  # with the line above


async def _handler_cancelled(lp, inv):
    """A handler's task was cancelled. True when Room's timer did it, the handler having
    run past its caller's response_timeout (as the LiveKit SDKs do, so a handler that
    hangs frees its slot): answered 1502, the cancellation is spent. Else the handler
    gave up (it awaited something cancelled) or the room is stopping it: while the link
    is up the caller hears 1500 at once (RPC.md: the method raised "anything else"),
    and the cancellation goes on (False)."""
    from .rpc import RpcError
    room = lp._room
    if inv in room._timed_out:
        room._timed_out.discard(inv)
        await lp._send_error(inv, RpcError(RpcError.RESPONSE_TIMEOUT, None,
                                           "the handler ran past the caller's response_timeout of %s s"
                                           % inv.response_timeout))
        return True
    if not room._closing and room._transport is not None:
        await lp._send_error(inv, RpcError(RpcError.APPLICATION_ERROR, None, "handler cancelled"))
    return False


def _async_generator(piece):
    return TypeError("a handler yielded %r: MicroPython has no async generators (an async def with "
                     "yield is a plain generator there); answer an object with __aiter__ and an "
                     "async __anext__ instead" % (piece,))


def _stream_handler_failed(topic, sender, e, out=None):
    """Print a stream handler's failure with its traceback (file and line), as
    _handler_failed does for an RPC handler's: the sender hears nothing of it. `out`:
    where to, sys.stdout (a board's console) unless given."""
    if out is None:
        out = sys.stdout
    print("lkedge: stream handler for %r failed (a stream from %r):" % (topic, sender), file=out)
    if hasattr(sys, "print_exception"):
        sys.print_exception(e, out)
    else:
        import traceback
        traceback.print_exception(type(e), e, e.__traceback__, file=out)


def _token_refused(reason):
    """The ConnectError for a join the relay refused with LEAVE 3 (unauthorized) to a Room
    given its token as a str. An expired one says what to do: a token that never changes
    cannot outlive its expiry, and a room that stays rejoins with it (README: connect()
    takes a function)."""
    from .room import ConnectError
    hint = ""
    if "expired" in reason:
        hint = ("; connect(url, fn) takes a function that returns a fresh token, called at every join, "
                "as a room that stays joined longer than its token lives needs (a board that cannot mint "
                "one needs a new token before the old expires: `lkedge deploy` writes one)")
    return ConnectError("the relay refused to join: LEAVE 3 %s%s" % (reason, hint), 3)
