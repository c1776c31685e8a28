"""`lkedge token`: print a LiveKit access token (JWT) for a room participant.

Keys are resolved as the relay does (--api-key/--api-secret, else LIVEKIT_API_KEY /
LIVEKIT_API_SECRET, else the development keys), so a token minted here with no setup is
accepted by `lkedge relay` started with no setup.
"""
import sys

from lkedge_host.relay import auth


def add_arguments(p):
    p.add_argument("--identity", required=True,
                   help="participant identity (the token's sub), at most %d bytes of UTF-8" % auth.MAX_IDENTITY_BYTES)
    p.add_argument("--room", required=True, help="room the token grants joining")
    p.add_argument("--ttl", default="6h",
                   help="lifetime: seconds or a number with s/m/h/d, at most 3650d (default %(default)s)")
    p.add_argument("--no-publish-data", action="store_true",
                   help="withhold canPublishData: the relay refuses DATA from it (LEAVE 7)")
    p.add_argument("--attribute", action="append", default=[], metavar="KEY=VALUE",
                   help="participant attribute carried in the token (repeatable)")
    p.add_argument("--api-key", default=None, help="API key (default: env LIVEKIT_API_KEY, else development key)")
    p.add_argument("--api-secret", default=None, help="API secret (default: env LIVEKIT_API_SECRET, else development secret)")


def run(args):
    try:
        ttl = auth.parse_ttl(args.ttl)   # (mint_token checks the identity, room and attributes)
        attrs = {}
        for kv in args.attribute:
            if "=" not in kv:
                raise ValueError("--attribute %r is not KEY=VALUE" % kv)
            k, v = kv.split("=", 1)
            attrs[k] = v
        key, secret = auth.resolve_keys(args.api_key, args.api_secret)
        weak = auth.short_secret_warning(secret)
        if weak:
            print("lkedge token: warning: %s" % weak, file=sys.stderr)
        token = auth.mint_token(key, secret, identity=args.identity, room=args.room, ttl_s=ttl,
                                can_publish_data=not args.no_publish_data, attributes=attrs)
    except (ValueError, auth.KeyConfigError) as e:
        print("lkedge token: error: %s" % e, file=sys.stderr)
        return 2
    print(token)
    return 0
