"""The auth plugin's state file and control messages, as fleetguard writes and reads them."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.errors import InvalidInput
from fleetguard.gateway.model import Access, TopicGrant
from fleetguard.gateway.plugin import (
    Answer,
    Command,
    DeviceState,
    StateFile,
    Verb,
    carry_quarantines_to_dynsec,
    decode_response,
    encode_request,
    parse_state,
    render_state,
    seed_state,
    type_grant,
)

QUARANTINED = {"rolename": "fleetguard-quarantine", "priority": 1_000_000}

OWN = (TopicGrant(Access.BOTH, "devices/%u/#"),)
NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True)
STATES = st.builds(
    DeviceState,
    quarantined=st.booleans(),
    device_type=st.none(),
    access=st.none(),
) | st.builds(DeviceState, st.booleans(), NAMES, st.sampled_from(list(Access)))


@given(st.dictionaries(NAMES, STATES, max_size=20))
def test_a_state_file_reads_back_what_was_written(states: dict[str, DeviceState]) -> None:
    assert parse_state(render_state(states)) == {user: s for user, s in states.items() if not s.plain}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"fleetguard-auth-state 1",  # truncated: no final newline
        b"fleetguard-auth-state 2\n",
        b"fleetguard-auth-state 1\ndevice dev-1 2 - -\n",
        b"fleetguard-auth-state 1\ndevice dev-1 0 rw -\n",
        b"fleetguard-auth-state 1\ndevice dev-1 0 - sensor\n",
        b"fleetguard-auth-state 1\ndevice dev/1 1 - -\n",
        b"fleetguard-auth-state 1\ndevice dev-1 1 - -\ndevice dev-1 0 - -\n",
        b"fleetguard-auth-state 1\ndevice  dev-1 1 - -\n",
    ],
)
def test_a_malformed_state_file_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidInput, match=r"state file|username"):
        parse_state(data)


def test_the_state_file_is_rewritten_private_on_every_change(tmp_path: Path) -> None:
    path = tmp_path / "state"
    state = StateFile(path)
    state.ensure()
    assert path.read_bytes() == b"fleetguard-auth-state 1\n"
    state.put("dev-1", DeviceState(quarantined=True))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert StateFile(path).get("dev-1") == DeviceState(quarantined=True)
    state.put("dev-1", DeviceState())
    assert path.read_bytes() == b"fleetguard-auth-state 1\n"


def test_quarantines_carry_over_from_dynamic_security(tmp_path: Path) -> None:
    dynsec = tmp_path / "dynsec.json"
    dynsec.write_text(
        '{"clients": [{"username": "dev-1", "roles": [{"rolename": "fleetguard-quarantine"}]},'
        ' {"username": "dev-2", "roles": []}, {"username": "fleetguard admin", "roles": []}]}'
    )
    assert parse_state(seed_state(dynsec)) == {"dev-1": DeviceState(quarantined=True)}
    assert seed_state(tmp_path / "missing.json") == b"fleetguard-auth-state 1\n"


def test_quarantines_carry_back_to_dynamic_security(tmp_path: Path) -> None:
    dynsec = tmp_path / "dynsec.json"
    dynsec.write_text(
        '{"defaultACLAccess": {}, "roles": [], "clients": ['
        '{"username": "dev-1", "roles": [{"rolename": "fleetguard-device-x"}]},'
        ' {"username": "dev-3", "roles": [{"rolename": "fleetguard-quarantine", "priority": 1000000}]}]}'
    )
    state = tmp_path / "auth-state"
    state.write_bytes(
        render_state({
            "dev-1": DeviceState(quarantined=True),
            "dev-2": DeviceState(quarantined=True, device_type="cam", access=Access.BOTH),
            "dev-3": DeviceState(quarantined=True),
            "dev-4": DeviceState(device_type="cam", access=Access.BOTH),
        })
    )  # fmt: skip

    assert carry_quarantines_to_dynsec(state, dynsec) == 3

    document = json.loads(dynsec.read_text())
    assert document["clients"] == [
        {"username": "dev-1", "roles": [{"rolename": "fleetguard-device-x"}, QUARANTINED]},
        {"username": "dev-3", "roles": [QUARANTINED]},
        {"username": "dev-2", "roles": [QUARANTINED]},
    ]
    assert stat.S_IMODE(dynsec.stat().st_mode) == 0o600
    assert not state.exists()
    assert parse_state((tmp_path / "auth-state.retired").read_bytes())["dev-2"].quarantined
    assert carry_quarantines_to_dynsec(state, dynsec) == 0  # nothing left to carry: a restart is a no-op
    assert json.loads(dynsec.read_text()) == document


def test_a_dynsec_file_that_cannot_take_the_quarantines_refuses_the_start(tmp_path: Path) -> None:
    dynsec = tmp_path / "dynsec.json"
    dynsec.write_text("{not json")
    state = tmp_path / "auth-state"
    state.write_bytes(render_state({"dev-1": DeviceState(quarantined=True)}))

    with pytest.raises(InvalidInput, match="cannot take the plugin's quarantines"):
        carry_quarantines_to_dynsec(state, dynsec)

    assert dynsec.read_text() == "{not json"
    assert state.exists()  # kept for the next attempt


def test_a_request_is_an_id_line_and_a_line_per_command() -> None:
    commands = [
        Command(Verb.QUARANTINE, "dev-1"),
        Command(Verb.TYPE, "dev-2", "sensor", Access.SUBSCRIBE),
        Command(Verb.GET, "dev-2"),
    ]
    assert (
        encode_request("c0ffee", commands) == b"id c0ffee\nquarantine dev-1\ntype dev-2 sensor r\nget dev-2"
    )


@pytest.mark.parametrize("user", ["", "dev 1", "devices/#", "a+b", "x" * 129, "dév"])
def test_a_username_the_plugin_would_refuse_is_refused_here(user: str) -> None:
    with pytest.raises(InvalidInput):
        Command(Verb.QUARANTINE, user)


def test_a_request_is_bounded() -> None:
    with pytest.raises(InvalidInput, match="1-10000"):
        encode_request("c", [Command(Verb.GET, "dev-1")] * 10_001)
    with pytest.raises(InvalidInput, match="1-10000"):
        encode_request("c", [])
    with pytest.raises(InvalidInput, match="correlation"):
        encode_request("a\nb", [Command(Verb.GET, "dev-1")])


def test_answers_are_decoded_with_their_correlation() -> None:
    ok = decode_response(b"id c1\nok\nstate dev-1 1 rw sensor\nstate dev-2 0 - -\n")
    assert ok == [
        (
            "c1",
            Answer({"dev-1": DeviceState(True, "sensor", Access.BOTH), "dev-2": DeviceState()}),
        )
    ]
    assert decode_response(b"id c2\nerror 3 unknown command\n") == [
        ("c2", Answer({}, error="3 unknown command"))
    ]
    assert decode_response(b"garbage") == []


def test_a_device_holds_one_types_topics_in_the_plugin() -> None:
    sensor = (TopicGrant(Access.PUBLISH, "types/sensor/#"), TopicGrant(Access.SUBSCRIBE, "types/sensor/#"))
    assert type_grant(sensor, OWN, "dev-1") == ("sensor", Access.BOTH)
    assert type_grant(OWN, OWN, "dev-1") is None
    with pytest.raises(InvalidInput, match="only a type's topics"):
        type_grant((TopicGrant(Access.BOTH, "fleet/+/cmd"),), OWN, "dev-1")
    two = (TopicGrant(Access.BOTH, "types/a/#"), TopicGrant(Access.BOTH, "types/b/#"))
    with pytest.raises(InvalidInput, match="one type's topics"):
        type_grant(two, OWN, "dev-1")
