"""`lkedge token` and the `lkedge` command frame."""
import subprocess
import sys
import time

import jwt
import pytest

from lkedge_host import cli
from lkedge_host.relay import auth


def lkedge(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lkedge_host.cli"] + list(args),
                          capture_output=True, text=True, timeout=60, env=env)


def test_token_is_accepted_by_the_relays_verifier():
    r = lkedge("token", "--identity", "board-1", "--room", "lab", "--ttl", "90m",
               "--attribute", "kind=board")
    assert r.returncode == 0, r.stderr
    tok = r.stdout.strip()
    grant = auth.Verifier(auth.DEV_API_KEY, auth.DEV_API_SECRET).verify(tok)
    assert grant["identity"] == "board-1" and grant["room"] == "lab"
    assert grant["can_publish_data"] is True and grant["attributes"] == {"kind": "board"}
    claims = jwt.decode(tok, options={"verify_signature": False})
    assert abs(claims["exp"] - time.time() - 5400) < 60


def test_token_no_publish_data_and_explicit_keys():
    r = lkedge("token", "--identity", "m", "--room", "lab", "--no-publish-data",
               "--api-key", "k1", "--api-secret", "x" * 32)
    assert r.returncode == 0, r.stderr
    grant = auth.Verifier("k1", "x" * 32).verify(r.stdout.strip())
    assert grant["can_publish_data"] is False


def test_token_usage_errors():
    r = lkedge("token", "--identity", "a", "--room", "lab", "--ttl", "soon")
    assert r.returncode == 2 and "bad duration 'soon'" in r.stderr
    r = lkedge("token", "--room", "lab")
    assert r.returncode == 2 and "--identity" in r.stderr


def test_token_lifetimes_over_ten_years_are_usage_errors():
    for ttl in ("1e20", "inf", "99999999999999999999", "3651d"):
        r = lkedge("token", "--identity", "b", "--room", "r", "--ttl", ttl)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (ttl, r.stderr)
        assert "bad duration %r" % ttl in r.stderr and "at most 3650d, 10 years" in r.stderr, r.stderr
    r = lkedge("token", "--identity", "b", "--room", "r", "--ttl", "3650d")
    assert r.returncode == 0, r.stderr
    claims = jwt.decode(r.stdout.strip(), options={"verify_signature": False})
    assert abs(claims["exp"] - time.time() - auth.MAX_TTL_S) < 60


def test_mint_token_refuses_a_lifetime_its_dates_cannot_hold():
    try:
        auth.mint_token(auth.DEV_API_KEY, auth.DEV_API_SECRET, identity="b", room="r", ttl_s=1e20)
    except ValueError as e:
        assert "over 315360000 s" in str(e)
    else:
        raise AssertionError("accepted")


def test_token_identity_the_relay_would_refuse_is_a_usage_error():
    r = lkedge("token", "--identity", "\u00e9" * 129, "--room", "r")
    assert r.returncode == 2 and "identity is 258 bytes of UTF-8, over 256 (the relay refuses it)" in r.stderr
    r = lkedge("token", "--identity", "i" * auth.MAX_IDENTITY_BYTES, "--room", "r")
    assert r.returncode == 0, r.stderr


def test_a_room_or_attribute_that_is_not_utf8_is_a_usage_error():
    # undecodable bytes on the command line became lone surrogates in the token's JSON,
    # which the relay then failed on internally (LEAVE 4) instead of refusing the token
    for args, words in (([b"--room", b"a\xff"], "room 'a\\udcff' is not UTF-8 text"),
                        ([b"--room", b"r", b"--attribute", b"k=\xff"], "attribute 'k'")):
        r = lkedge("token", "--identity", "i", *args)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_parse_ttl():
    assert [auth.parse_ttl(t) for t in ("6h", "30m", "45s", "2d", "120", "3650d")] == [
        21600, 1800, 45, 172800, 120, auth.MAX_TTL_S]
    for bad in ("0", "-1h", "h", "1w", "nan", "inf", "0.5", "1e20", "3651d", "315360001"):
        try:
            auth.parse_ttl(bad)
        except ValueError:
            continue
        raise AssertionError("%r accepted" % bad)


def test_help_lists_every_command_and_exit_codes():
    r = lkedge("--help")
    assert r.returncode == 0
    for name in ("relay", "token", "board", "deploy", "call", "serve", "room"):
        assert "\n    %s " % name in r.stdout, name
    assert "exit codes" in r.stdout and "connection failure" in r.stdout


def test_no_command_prints_help_and_usage_code(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_missing_command_module_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "ghost", ("lkedge_host.no_such_module", "add_arguments",
                                                "run", "a command whose module is missing"))
    assert cli.main(["ghost"]) == 1
    err = capsys.readouterr().err
    assert "command 'ghost' is not available" in err and "lkedge_host.no_such_module" in err
    assert "Traceback" not in err


def test_dev_key_rules():
    assert auth.resolve_keys(environ={}) == (auth.DEV_API_KEY, auth.DEV_API_SECRET)
    assert len(auth.DEV_API_SECRET) >= 32
    assert auth.resolve_keys(environ={"LIVEKIT_API_KEY": "a", "LIVEKIT_API_SECRET": "b"}) == ("a", "b")
    assert auth.resolve_keys("f", "g", environ={"LIVEKIT_API_KEY": "a", "LIVEKIT_API_SECRET": "b"}) == ("f", "g")
    for host in ("127.0.0.1", "::1", "localhost", "127.1.2.3"):
        auth.check_listen_keys(host, auth.DEV_API_KEY, auth.DEV_API_SECRET)
    for host in ("0.0.0.0", "", "192.168.1.5", "example.org"):
        try:
            auth.check_listen_keys(host, auth.DEV_API_KEY, auth.DEV_API_SECRET)
        except auth.KeyConfigError as e:
            assert "loopback" in str(e)
        else:
            raise AssertionError("dev keys allowed on %r" % host)
    auth.check_listen_keys("0.0.0.0", "real", "s" * 40)


def test_the_public_development_secret_under_another_key_name_listens_on_loopback_only():
    # The secret signs the tokens and the key name is public (`iss`): renaming the key
    # does not make the public secret private.
    auth.check_listen_keys("127.0.0.1", "mykey", auth.DEV_API_SECRET)
    with pytest.raises(auth.KeyConfigError) as e:
        auth.check_listen_keys("0.0.0.0", "mykey", auth.DEV_API_SECRET)
    assert "the API secret is the public development secret" in str(e.value)
    assert "'mykey'" in str(e.value) and "--api-secret" in str(e.value)
    auth.check_listen_keys("0.0.0.0", auth.DEV_API_KEY, "a secret of my own, 32 bytes or more")
    r = lkedge("relay", "--host", "0.0.0.0", "--port", "0", "--ws-port", "0",
               "--api-key", "mykey", "--api-secret", auth.DEV_API_SECRET)
    assert r.returncode != 0 and "the API secret is the public development secret" in r.stderr, r.stderr


def test_a_short_secret_is_warned_about_in_our_words_not_pyjwts():
    # PyJWT printed its InsecureKeyLengthWarning with its own file and source line
    r = lkedge("token", "--identity", "a", "--room", "lab", "--api-key", "k", "--api-secret", "short")
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("lkedge token: warning: the API secret is 5 bytes: HS256 wants at least 32"), r.stderr
    assert "api_jwt.py" not in r.stderr and "InsecureKeyLengthWarning" not in r.stderr, r.stderr
    assert auth.Verifier("k", "short").verify(r.stdout.strip())["identity"] == "a"
    r = lkedge("token", "--identity", "a", "--room", "lab", "--api-key", "k", "--api-secret", "s" * 32)
    assert r.returncode == 0 and r.stderr == "", r.stderr
