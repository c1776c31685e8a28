"""RoomOptions checks its settings as it is built, on MicroPython and CPython.

A value a setting cannot take was accepted and failed later, far from its cause:
ping_interval_ms=0 had the room's timer spin without ever yielding (connect() done, the
event loop hung at 90% CPU), ping_interval_ms="x" and max_rpc_payload=-1 passed silently.
"""
from lkedge.config import RoomOptions


def _refused(exc_type, build, *words):
    try:
        build()
    except exc_type as e:
        for w in words:
            assert w in str(e), (w, str(e))
        return
    raise AssertionError("accepted: expected %s %r" % (exc_type.__name__, words))


def test_a_setting_refuses_a_value_it_cannot_take_naming_it():
    for kw, exc_type, words in (
            ({"ping_interval_ms": 0}, ValueError, "RoomOptions.ping_interval_ms is an int over 0, got 0"),
            ({"ping_interval_ms": -5}, ValueError, "ping_interval_ms"),
            ({"ping_interval_ms": "x"}, TypeError, "RoomOptions.ping_interval_ms is an int over 0, got str 'x'"),
            ({"ping_interval_ms": None}, TypeError, "ping_interval_ms is an int over 0, got NoneType"),
            ({"ping_interval_ms": True}, TypeError, "got bool"),
            ({"ping_interval_ms": 500.0}, TypeError, "got float"),
            ({"max_rpc_payload": -1}, ValueError, "RoomOptions.max_rpc_payload is an int over 0, got -1"),
            ({"read_buffer": 0}, ValueError, "read_buffer"),
            ({"join_timeout_ms": 0}, ValueError, "join_timeout_ms"),
            ({"reconnect_min_ms": 0}, ValueError, "reconnect_min_ms"),
            ({"max_streams": "4"}, TypeError, "max_streams"),
            ({"max_values": 0}, ValueError, "RoomOptions.max_values is an int over 0, or None, got 0"),
            ({"evict_idle_ms": -1}, ValueError, "evict_idle_ms is an int over 0, or None"),
            ({"max_inflate_ratio": 2.5}, TypeError, "max_inflate_ratio"),
            ({"client_protocol": 3}, ValueError, "RoomOptions.client_protocol is 0, 1 or 2, got 3"),
            ({"client_protocol": "2"}, TypeError, "client_protocol is 0, 1 or 2, got str"),
            ({"compress": 1}, TypeError, "RoomOptions.compress is True or False, got int 1"),
            ({"auto_reconnect": None}, TypeError, "auto_reconnect is True or False, got NoneType"),
            ({"advertise_compression": 0}, TypeError, "advertise_compression is True or False, or None"),
            ({"sdk": 5}, TypeError, "RoomOptions.sdk is a str, got int"),
            ({"transport_options": None}, TypeError, "RoomOptions.transport_options is a dict, got NoneType"),
            ({"ping_intervl_ms": 5000}, TypeError, "unknown RoomOptions setting 'ping_intervl_ms'"),
            ({"for_board": 1}, TypeError, "unknown RoomOptions setting 'for_board'")):
        _refused(exc_type, lambda: RoomOptions(**kw), words)


def test_what_a_setting_can_take_is_taken():
    o = RoomOptions(max_values=None, max_attributes=4096, max_participants=None, evict_idle_ms=None,
                    max_inflated=None, max_inflate_ratio=None, advertise_compression=True, client_protocol=0,
                    compress=False, ping_interval_ms=50, sdk="app", transport_options={"timeout_ms": 100})
    assert (o.max_values, o.evict_idle_ms, o.client_protocol, o.ping_interval_ms) == (None, None, 0, 50)
    assert o.advertise_compression is True and o.compress is False and o.transport_options == {"timeout_ms": 100}
    assert RoomOptions(advertise_compression=None).advertise_compression is None
    # every default is a value its setting takes, with a board profile too
    for base in (RoomOptions(), RoomOptions.for_board()):
        again = RoomOptions(**base.__dict__)
        assert again.__dict__ == base.__dict__


def test_for_board_checks_its_keywords_and_a_profiles_link_keys_alike():
    _refused(ValueError, lambda: RoomOptions.for_board(ping_interval_ms=0), "RoomOptions.ping_interval_ms")
    _refused(TypeError, lambda: RoomOptions.for_board(max_rpc_payload="16K"), "max_rpc_payload")
    # a misspelled keyword was set as an attribute nobody reads
    _refused(TypeError, lambda: RoomOptions.for_board(ping_intervl_ms=5000), "unknown RoomOptions setting")
    _refused(ValueError, lambda: RoomOptions.for_board({"link": {"max_streams": 0}}), "RoomOptions.max_streams")
    _refused(TypeError, lambda: RoomOptions.for_board({"link": {"advertise_compression": 1}}),
             "advertise_compression")
    _refused(TypeError, lambda: RoomOptions.for_board({"link": {"max_stream": 2}}), "'max_stream'")
    o = RoomOptions.for_board({"link": {"max_streams": 2, "evict_idle_ms": None, "ping_interval_ms": 5000}},
                              client_protocol=1)
    assert (o.max_streams, o.evict_idle_ms, o.ping_interval_ms, o.client_protocol) == (2, None, 5000, 1)
    assert o.read_buffer == 512 and o.max_rpc_payload == 16384   # the board's defaults stay
