"""LiveKit access tokens for the relay: key resolution, verification, minting.

- `DEV_API_KEY`, `DEV_API_SECRET`: the fixed development keys (documented, public, so
  they are accepted ONLY when the relay listens on loopback).
- `resolve_keys(api_key=None, api_secret=None, environ=None) -> (key, secret)`: flags
  first, then LIVEKIT_API_KEY / LIVEKIT_API_SECRET, else the development keys. One of
  the pair without the other raises `KeyConfigError`.
- `is_dev_keys(key, secret)`, `is_loopback(host)`, `check_listen_keys(host, key, secret)`
  (KeyConfigError with the reason when the public development secret, with the
  development key or any other, would listen beyond loopback).
- `Verifier(api_key, api_secret, rooms=None)`: `verify(token) -> grant dict`
  {"identity", "room", "can_publish_data", "attributes", "name"}; `AuthError` (with a
  specific reason) for a bad signature/issuer, an expired token, a token WITHOUT `exp`
  (checked here on the raw claims too, whatever the library version accepts) or with
  an `exp` more than MAX_TTL_S (10 years, plus CLOCK_SKEW_S) ahead, a malformed claim
  (named: a grant that is not a JSON object, a roomConfig that is not a RoomConfiguration), a
  missing `sub`, no `video.roomJoin`, no `video.room`, or a room outside `rooms` when the
  relay was restricted to some rooms.
- `mint_token(api_key, api_secret, identity, room, ttl_s=6 h, can_publish_data=True,
  attributes=None, name=None) -> str` (HS256 JWT with roomJoin, room, canPublishData,
  canSubscribe). `parse_ttl("6h") -> seconds` (s, m, h, d suffixes or plain seconds,
  at most MAX_TTL_S). `check_identity(identity)`: ValueError for an identity the relay
  would refuse (over MAX_IDENTITY_BYTES of UTF-8).
"""
import argparse
import datetime
import ipaddress
import os
import time
import warnings

import jwt
from livekit import api

DEV_API_KEY = "devkey"
DEV_API_SECRET = "lkedge-development-secret-loopback-only-0123456789"
DEFAULT_TTL_S = 6 * 3600
# The relay stamps the sender's identity and sid into every DATA frame it forwards, and
# may make a frame longer than max_frame by at most link.STAMP_ROOM (512) doing so
# (LINK.md): an identity of at most this many bytes always leaves room for the stamp,
# so a DATA frame within max_frame is never refused for its sender's name.
MAX_IDENTITY_BYTES = 256
# The longest token lifetime: 10 years. A token cannot be revoked short of rotating the
# relay's API keys, so one that outlives any deployment is a risk with no use; and far
# longer lifetimes overflow the token library's date arithmetic (1e20 s: OverflowError).
MAX_TTL_S = 3650 * 86400


# A token minted for MAX_TTL_S on a host whose clock is ahead of the relay's by up to
# this much is still taken.
CLOCK_SKEW_S = 3600
# The claims the token library reads as JSON objects (grants), and roomConfig, which it
# parses as a LiveKit RoomConfiguration.
_OBJECT_CLAIMS = ("video", "sip", "inference", "observability", "agent", "agentEndpoint",
                  "agentThread")


def _json_type(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    return "an array" if isinstance(v, list) else "an object"


def _show_number(v):
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e300:
        v = int(v)
    text = repr(v)
    return text if len(text) <= 32 else "%s... (%d digits)" % (text[:24], len(text))


def _malformed_claim(raw, exc):
    """The reason for a signed token whose claims the token library cannot read: which
    claim, and what is wrong with it (its own message would name neither)."""
    for key in _OBJECT_CLAIMS:
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            return 'token claim "%s" must be a JSON object, got %s' % (key, _json_type(raw[key]))
    detail = "%s: %s" % (exc.__class__.__name__, exc)
    if len(detail) > 200:
        detail = detail[:200] + "..."
    if raw.get("roomConfig"):
        return ('token claim "roomConfig" is malformed (not a LiveKit RoomConfiguration: %s)'
                % detail)
    return "token claims could not be read (%s)" % detail


class AuthError(Exception):
    """A token the relay refuses (the participant gets LEAVE 3 with this reason)."""


class KeyConfigError(Exception):
    """The relay's key configuration cannot be used (refuse to start)."""


def resolve_keys(api_key=None, api_secret=None, environ=None):
    env = os.environ if environ is None else environ
    key = api_key or env.get("LIVEKIT_API_KEY") or None
    secret = api_secret or env.get("LIVEKIT_API_SECRET") or None
    if key is None and secret is None:
        return DEV_API_KEY, DEV_API_SECRET
    if key is None or secret is None:
        raise KeyConfigError(
            "API %s given without API %s: set both (--api-key/--api-secret or "
            "LIVEKIT_API_KEY/LIVEKIT_API_SECRET) or neither for development keys"
            % (("key", "secret") if secret is None else ("secret", "key")))
    return key, secret


def is_dev_keys(key, secret):
    return key == DEV_API_KEY and secret == DEV_API_SECRET


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:   # a host name other than localhost, or "" (all interfaces)
        return False


def check_listen_keys(host, key, secret):
    # The secret is what signs tokens, and a key name is no secret (every token carries
    # it as `iss`): the public secret under another key name is as open as the pair.
    if secret != DEV_API_SECRET or is_loopback(host):
        return
    if key == DEV_API_KEY:
        raise KeyConfigError(
            "refusing to listen on %r with the public development keys: they are accepted "
            "only on loopback (127.0.0.1, ::1, localhost). Set --api-key/--api-secret or "
            "LIVEKIT_API_KEY/LIVEKIT_API_SECRET for a non-loopback host" % host)
    raise KeyConfigError(
        "refusing to listen on %r: the API secret is the public development secret (anyone "
        "can sign tokens with it, whatever the key name %r), accepted only on loopback "
        "(127.0.0.1, ::1, localhost). Give a secret of your own (--api-secret or "
        "LIVEKIT_API_SECRET) for a non-loopback host" % (host, key))


def parse_ttl(text):
    """Whole seconds of a token lifetime: seconds, or a number with s, m, h or d (6h)."""
    from lkedge_host import units
    try:
        seconds = units.seconds(text)
    except argparse.ArgumentTypeError:
        seconds = 0
    if not 1 <= seconds <= MAX_TTL_S:
        raise ValueError("bad duration %r: use seconds (1 to %d) or a number with s, m, h or d "
                         "(e.g. 6h; at most 3650d, 10 years)" % (text, MAX_TTL_S))
    return int(seconds)


def check_identity(identity):
    """ValueError unless the relay takes `identity`: UTF-8 text of at most MAX_IDENTITY_BYTES."""
    check_text(identity, "identity")
    n = len(identity.encode("utf-8"))
    if n > MAX_IDENTITY_BYTES:
        raise ValueError("identity is %d bytes of UTF-8, over %d (the relay refuses it)" % (n, MAX_IDENTITY_BYTES))


def check_text(value, what):
    """ValueError unless `value` is a str that is UTF-8 text (no lone surrogates, which
    a JWT's JSON can carry as \\udcff escapes and a command line as undecodable bytes)."""
    if not isinstance(value, str):
        raise ValueError("%s must be a string, got %s" % (what, type(value).__name__))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("%s %r is not UTF-8 text" % (what, value)) from None


# RFC 7518 3.2: an HS256 key must be at least 256 bits. PyJWT warns of a shorter one
# with a raw Python warning (its file and source line); we say it once, in our words.
MIN_SECRET_BYTES = 32


def short_secret_warning(secret):
    """A sentence when `secret` is too short for HS256, else None."""
    n = len(secret.encode("utf-8"))
    if n >= MIN_SECRET_BYTES:
        return None
    return ("the API secret is %d bytes: HS256 wants at least %d (RFC 7518), or its tokens can be "
            "forged by guessing it; make one with `python -c \"import secrets; "
            "print(secrets.token_urlsafe(32))\"`" % (n, MIN_SECRET_BYTES))


def _unwarned(fn, *args):
    """fn(*args) without PyJWT's InsecureKeyLengthWarning (short_secret_warning's caller
    says it instead, once)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HMAC key.*")
        return fn(*args)


def mint_token(api_key, api_secret, identity, room, ttl_s=DEFAULT_TTL_S,
               can_publish_data=True, attributes=None, name=None):
    if not identity or not room:
        raise ValueError("a token needs a non-empty identity and room")
    check_identity(identity)
    check_text(room, "room")
    for k, v in (attributes or {}).items():
        check_text(k, "attribute key")
        check_text(v, "attribute %r" % k)
    if abs(ttl_s) > MAX_TTL_S:
        raise ValueError("a token lifetime of %r s is over %d s (10 years)" % (ttl_s, MAX_TTL_S))
    grants = api.VideoGrants(room_join=True, room=room, can_publish_data=can_publish_data,
                             can_subscribe=True)
    tok = (api.AccessToken(api_key, api_secret).with_identity(identity).with_grants(grants)
           .with_ttl(datetime.timedelta(seconds=ttl_s)))
    if attributes:
        tok = tok.with_attributes(dict(attributes))
    if name:
        tok = tok.with_name(name)
    return _unwarned(tok.to_jwt)


class Verifier:
    def __init__(self, api_key, api_secret, rooms=None):
        self._verifier = api.TokenVerifier(api_key, api_secret)
        self._key = api_key
        self._secret = api_secret
        self.rooms = set(rooms) if rooms else None

    def verify(self, token):
        if not isinstance(token, str) or token.count(".") != 2:
            raise AuthError("token is not a JWT (expected three dot-separated parts)")
        raw = self._raw_claims(token)
        if "exp" not in raw:
            raise AuthError("token has no exp claim (an expiry is required)")
        exp = raw["exp"]
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            # RFC 7519: a NumericDate. PyJWT also takes a numeric string, which got
            # past the 10-year cap below ("99999999999").
            raise AuthError("token exp %r is not a number (a JWT's exp is seconds since "
                            "1970 as a JSON number)" % (exp,))
        if not exp <= time.time() + MAX_TTL_S + CLOCK_SKEW_S:   # NaN too
            raise AuthError("token exp %s is more than 10 years ahead: the relay takes tokens "
                            "valid for at most %d s (mint one with a shorter lifetime)"
                            % (_show_number(exp), MAX_TTL_S))
        if raw.get("iss") != self._key:
            # Said before the signature: a token minted with other keys fails both, and
            # the issuer is what tells its holder which keys to use.
            raise AuthError("token issuer %r is not this relay's API key" % (raw.get("iss"),))
        try:
            claims = _unwarned(self._verifier.verify, token)
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired")
        except jwt.InvalidIssuerError:
            raise AuthError("token issuer is not this relay's API key")
        except jwt.InvalidSignatureError:
            raise AuthError("token signature does not verify with this relay's API secret")
        except jwt.InvalidTokenError as e:
            raise AuthError("token rejected: %s" % e)
        except Exception as e:   # signed, but a claim the token library reads is malformed
            raise AuthError(_malformed_claim(raw, e))
        return self._grant(claims)

    def _raw_claims(self, token):
        # The signature is checked by TokenVerifier right after; this only reads exp.
        try:
            raw = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as e:
            raise AuthError("token is not a readable JWT: %s" % e)
        if not isinstance(raw, dict):
            raise AuthError("token claims are not a JSON object")
        return raw

    def _grant(self, claims):
        video = claims.video
        if not claims.identity:
            raise AuthError("token has no identity (sub claim)")
        if not video or video.room_join is not True:   # JSON true, not merely truthy
            raise AuthError("token lacks the video.roomJoin grant (must be true, got %r)"
                            % (video.room_join if video else None,))
        if not video.room:
            raise AuthError("token names no room (video.room)")
        if not isinstance(video.room, str) or not isinstance(claims.identity, str):
            raise AuthError("token room (video.room) and identity (sub) must be strings, got %s and %s"
                            % (type(video.room).__name__, type(claims.identity).__name__))
        try:
            check_identity(claims.identity)
        except ValueError as e:
            raise AuthError("token (sub): %s" % e)
        if claims.attributes is not None and not isinstance(claims.attributes, dict):
            raise AuthError("token attributes must be a JSON object, got %s"
                            % type(claims.attributes).__name__)
        try:   # all of it goes out in CBOR text strings and DataPackets
            check_text(video.room, "token room (video.room)")
            check_text(claims.name or "", "token name")
            for k, v in (claims.attributes or {}).items():
                check_text(str(k), "token attribute key")
                check_text(str(v), "token attribute %r" % k)
        except ValueError as e:
            raise AuthError(str(e))
        if self.rooms is not None and video.room not in self.rooms:
            raise AuthError("room %r is not served by this relay" % video.room)
        attrs = claims.attributes or {}
        return {"identity": claims.identity, "room": video.room,
                # optional: absent means allowed; anything but JSON true ("false", 0) forbids
                "can_publish_data": video.can_publish_data is None or video.can_publish_data is True,
                "attributes": {str(k): str(v) for k, v in attrs.items()},
                "name": claims.name or ""}
