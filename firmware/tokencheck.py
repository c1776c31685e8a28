"""config.update's check of a new token: methods.py imports it for a call that sets
"token" and drops it after, so its bytecode is not in a board's heap between calls.

The board has no API secret, so it cannot verify a token's signature (the relay does);
it reads the token's payload only, and refuses what cannot be the board's token:
    not a JWT (three base64url parts joined by ".")      a typo, a truncated paste
    a payload that is not a JSON object with a string
      "sub" and a number "exp"                          not a LiveKit access token
    "sub" is not the board's identity                    the board would rejoin as
                                                         another participant
    "exp" already past, when the board's clock is set   the relay would refuse it
                                                         (LEAVE 3) at the next join
A refused token is never written: the board keeps the one it has.
"""
import json

TOKEN_MAX = 4096  # characters: a LiveKit token is a few hundred; bounds the decode


def claims(token):
    """The payload of JWT `token` as a dict, or a str saying why there is none."""
    if len(token) > TOKEN_MAX:
        return "it is %d characters long, more than a token's %d" % (len(token), TOKEN_MAX)
    parts = token.split(".")
    if len(parts) != 3 or not parts[1]:
        return "it is not a JWT (three base64url parts joined by '.'); mint one with `lkedge token`"
    import binascii
    p = parts[1].replace("-", "+").replace("_", "/")
    try:
        d = json.loads(binascii.a2b_base64(p + "=" * (-len(p) % 4)).decode())
    except (ValueError, TypeError):  # binascii.Error and UnicodeError are ValueErrors
        return "its payload (the JWT's second part) is not base64url JSON"
    if not isinstance(d, dict):
        return "its payload is not a JSON object"
    return d


def problem(token, identity, now):
    """Why `token` cannot be this board's (a message), or None. `identity`: the board's
    ("" or None: not known, any "sub" goes); `now`: Unix time in seconds, or None while
    the board's clock is not set (expiry is then not checked)."""
    d = claims(token)
    if isinstance(d, str):
        return "config key 'token': " + d
    sub, exp = d.get("sub"), d.get("exp")
    if not isinstance(sub, str) or not sub:
        return "config key 'token': its payload has no \"sub\" (the identity): not a LiveKit access token"
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        return "config key 'token': its payload has no number \"exp\" (its expiry): the relay refuses such a token"
    if identity and sub != identity:
        return ("config key 'token' is for identity %r, not this board's %r: the board would join as another "
                "participant; mint one with `lkedge token --identity %s`" % (sub, identity, identity))
    if now is not None and exp <= now:
        return ("config key 'token' expired %d s ago (exp %d, the board's clock %d): the relay would refuse it"
                % (now - exp, exp, now))
    return None


def identity_of(token):
    """The "sub" of JWT `token`, or None."""
    d = claims(token) if isinstance(token, str) else None
    sub = d.get("sub") if isinstance(d, dict) else None
    return sub if isinstance(sub, str) and sub else None
