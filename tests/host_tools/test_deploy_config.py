"""What a redeploy writes to config.json (deploy.board_config): each setting from its
option, else as the board's current config.json has it, else its default; the token
minted afresh unless only the development keys are at hand for a relay beyond loopback.
A field user's audit: a firmware update (`lkedge deploy --port P --profile esp32
--identity field-1`) reset the relay to loopback and erased the Wi-Fi."""
import argparse
import json
import os
import time

import pytest

from lkedge_host import deploy
from lkedge_host.relay import auth
from test_deploy import deploy_cmd, firmware, lib, unix_board  # noqa: F401 (fixtures)

FIELD_RELAY = "tcp://192.0.2.10:7880"
PROD = ["--api-key", "prodkey", "--api-secret", "p" * 40]


@pytest.fixture(autouse=True)
def no_keys(monkeypatch):
    for name in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "LKEDGE_WIFI_SSID", "LKEDGE_WIFI_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def _options(*argv):
    p = argparse.ArgumentParser()
    deploy.add_arguments(p)
    return p.parse_args(["--port", "u0"] + list(argv))


def _board(**cfg):
    return {"cfg": cfg or None, "uid": "0123456789"}


def _token(identity="field-1", room="lkedge", key="prodkey", ttl=30 * 86400):
    return auth.mint_token(key, "p" * 40 if key == "prodkey" else auth.DEV_API_SECRET, identity, room, ttl)


FIELD = dict(relay=FIELD_RELAY, token=_token(ttl=20 * 86400), wifi={"ssid": "FieldNet", "password": "pw"}, name="field-1",
             telemetry_to="collector", telemetry_interval_s=10, rejoin_s=30, revert_after_s=600, wifi_timeout_s=40,
             my_key=[1])


def test_a_redeploy_keeps_the_relay_wifi_identity_and_other_settings_of_the_board():
    c = deploy.board_config(_options(*PROD), _board(**FIELD), "lkedge-01234567")
    assert (c.relay, c.ssid, c.password, c.identity, c.room, c.name) == (
        FIELD_RELAY, "FieldNet", "pw", "field-1", "lkedge", "field-1"), vars(c)
    assert c.more == {"rejoin_s": 30, "revert_after_s": 600, "wifi_timeout_s": 40, "my_key": [1]}
    assert c.mint and c.token != FIELD["token"]   # the keys are at hand: a fresh token
    claims = deploy.token_claims(c.token)
    assert claims["sub"] == "field-1" and claims["video"]["room"] == "lkedge" and claims["iss"] == "prodkey"
    for said in ("relay", "Wi-Fi SSID", "Wi-Fi password", "identity (the token's)", "room (the token's)",
                 "rejoin_s", "my_key"):
        assert said in c.kept, (said, c.kept)
    written = json.loads(deploy.config_json(c.relay, c.token, c.identity, c.ssid, c.password, "collector", 10,
                                            c.more, c.name))
    assert written == dict(FIELD, token=c.token)


@pytest.mark.parametrize("argv, want", [
    (["--relay", "tcp://10.0.0.9:7880"], {"relay": "tcp://10.0.0.9:7880", "ssid": "FieldNet", "password": "pw"}),
    (["--wifi-ssid", "Other"], {"relay": FIELD_RELAY, "ssid": "Other", "password": ""}),
    (["--wifi-ssid", "FieldNet"], {"ssid": "FieldNet", "password": "pw"}),   # the same network: its password
    (["--wifi-ssid", "Other", "--wifi-password", "x"], {"ssid": "Other", "password": "x"}),
    (["--wifi-password", "new"], {"ssid": "FieldNet", "password": "new"}),
    (["--wifi-ssid", ""], {"ssid": "", "password": ""}),                   # no Wi-Fi, as asked
    (["--identity", "field-2"], {"identity": "field-2", "name": "field-2"}),
    (["--room", "plant"], {"room": "plant"}),
])
def test_an_option_replaces_what_the_board_holds(argv, want):
    c = deploy.board_config(_options(*(argv + PROD)), _board(**FIELD), "lkedge-01234567")
    got = dict((k, getattr(c, k)) for k in want)
    assert got == want, vars(c)
    claims = deploy.token_claims(c.token)
    assert claims["sub"] == c.identity and claims["video"]["room"] == c.room


def test_a_board_without_a_config_gets_the_defaults():
    for cfg in ({}, {"relay": "nonsense", "wifi": "x", "token": "abc", "name": 5}):
        c = deploy.board_config(_options(*PROD), _board(**cfg), "lkedge-01234567")
        assert (c.relay, c.ssid, c.password, c.identity, c.room, c.name) == (
            deploy.DEFAULT_RELAY, "", "", "lkedge-01234567", "lkedge", "lkedge-01234567"), vars(c)
        assert c.mint and c.kept == []


def test_a_relabelled_board_keeps_its_name_while_its_identity_stays():
    c = deploy.board_config(_options(*PROD), _board(**dict(FIELD, name="pump by the gate")), "x")
    assert c.name == "pump by the gate" and "name" in c.kept
    c = deploy.board_config(_options("--identity", "field-2", *PROD), _board(**dict(FIELD, name="pump")), "x")
    assert c.name == "field-2"


def test_without_the_relays_keys_the_boards_token_is_kept_rather_than_replaced_by_one_it_refuses():
    # a firmware update from a shell without LIVEKIT_API_KEY/SECRET: a token signed with the
    # development keys, which a relay beyond loopback refuses, would lock the board out
    c = deploy.board_config(_options(), _board(**FIELD), "x")
    assert not c.mint and c.token == FIELD["token"] and "token" in c.kept
    assert "the board's token is kept (for field-1 in room lkedge, signed with API key 'prodkey', valid 19 d" \
        in c.says[0] and "--api-key" in c.says[0], c.says
    # (with --relay given, check_options warned of the development keys before the board was read)
    c = deploy.board_config(_options("--relay", FIELD_RELAY), _board(**FIELD), "x")
    assert not c.mint and "the warning about the development keys above does not apply" in c.says[0], c.says
    # ... but not one it cannot use: another identity or room, expiring, or itself a development one
    for board_cfg, argv in ((FIELD, ["--identity", "field-2"]), (FIELD, ["--room", "plant"]),
                            (dict(FIELD, token=_token(ttl=600)), []), (dict(FIELD, token=_token(key="devkey")), []),
                            (dict(FIELD, token="abc"), [])):
        c = deploy.board_config(_options(*argv), _board(**board_cfg), "x")
        assert c.mint and deploy.token_claims(c.token)["iss"] == auth.DEV_API_KEY, argv
        assert any(deploy.DEV_KEYS_WARNING % "192.0.2.10" == s for s in c.says), c.says
    # on loopback the development keys work: a fresh token, as always
    c = deploy.board_config(_options(), _board(**dict(FIELD, relay="tcp://127.0.0.1:7880")), "x")
    assert c.mint and deploy.token_claims(c.token)["exp"] > time.time() + 29 * 86400


def test_a_token_signed_with_other_keys_than_the_boards_is_warned_about():
    c = deploy.board_config(_options("--api-key", "otherkey", "--api-secret", "o" * 40), _board(**FIELD), "x")
    assert c.mint and "the board's token was signed with API key 'prodkey', the new one with 'otherkey'" in c.says[0]


@pytest.mark.parametrize("ttl, warned", [("5s", True), ("23h", True), ("1d", False), ("30d", False)])
def test_a_short_token_ttl_is_warned_about(capsys, ttl, warned):
    deploy.check_options(_options("--lib-only", "--token-ttl", ttl))
    err = capsys.readouterr().err
    assert ("warning: --token-ttl" in err) == warned, err
    if warned:
        assert "cannot rejoin" in err and "30d" in err


def _flash_config(tmp_path):
    with open(os.path.join(str(tmp_path / "flash"), "config.json")) as f:
        return json.load(f)


def test_a_firmware_update_keeps_the_boards_relay_and_wifi(unix_board, firmware, lib, tmp_path):  # noqa: F811
    # the audit's two deploys, on the emulated board
    r = deploy_cmd(unix_board, firmware, lib, "--profile", "unix", "--no-reset", "--identity", "field-1",
                   "--relay", FIELD_RELAY, "--wifi-ssid", "FieldNet", "--wifi-password", "secret", *PROD)
    assert r.returncode == 0, r.stderr
    first = _flash_config(tmp_path)
    r = deploy_cmd(unix_board, firmware, lib, "--profile", "unix", "--no-reset", "--identity", "field-1", *PROD)
    assert r.returncode == 0, r.stderr
    cfg = _flash_config(tmp_path)
    assert cfg["relay"] == FIELD_RELAY and cfg["wifi"] == {"ssid": "FieldNet", "password": "secret"}, cfg
    assert cfg["token"] != first["token"] and deploy.token_claims(cfg["token"])["sub"] == "field-1"
    assert ("deploy: config.json: relay %s, Wi-Fi 'FieldNet', identity field-1, room lkedge; kept from the board's "
            "config.json: relay, Wi-Fi SSID, Wi-Fi password, room (the token's)" % FIELD_RELAY) in r.stderr, r.stderr
    assert "secret" not in r.stderr
    # the same without the relay's keys: the board's token stays, and deploy says why
    r = deploy_cmd(unix_board, firmware, lib, "--profile", "unix", "--no-reset")
    assert r.returncode == 0, r.stderr
    again = _flash_config(tmp_path)
    assert again["token"] == cfg["token"] and again["relay"] == FIELD_RELAY, again
    assert "deploy: the board's token is kept (for field-1 in room lkedge" in r.stderr, r.stderr
    # an explicit option replaces
    r = deploy_cmd(unix_board, firmware, lib, "--profile", "unix", "--no-reset", "--relay", "tcp://127.0.0.1:7880",
                   "--wifi-ssid", "")
    assert r.returncode == 0, r.stderr
    cfg = _flash_config(tmp_path)
    assert cfg["relay"] == "tcp://127.0.0.1:7880" and cfg["wifi"] == {"ssid": "", "password": ""}, cfg
    assert deploy.token_claims(cfg["token"])["iss"] == auth.DEV_API_KEY
