"""Commands over MQTT: what is run, what is answered with a rejection, what is dropped; acknowledgements.

A payload that names no usable id is dropped (there is nobody to answer); one with an id that is no
command this agent runs is rejected with the reason; nothing a broker delivers makes the parser raise.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.agent.command import (
    MAX_COMMAND_BYTES,
    Ack,
    AckLog,
    AckResult,
    Command,
    CommandId,
    CommandKind,
    Ignored,
    Rejected,
    encode_ack,
    parse_command,
)


def _json(**members: object) -> bytes:
    return json.dumps(members).encode()


@pytest.mark.parametrize("kind", list(CommandKind))
def test_a_known_command_is_parsed(kind: CommandKind) -> None:
    assert parse_command(_json(id="c-1", command=kind.value)) == Command(CommandId("c-1"), kind)


def test_other_members_are_allowed_and_ignored() -> None:
    payload = _json(id="c-1", command="wipe", requested_by="ops@example.org", reason="returned")
    assert parse_command(payload) == Command(CommandId("c-1"), CommandKind.WIPE)


def test_an_unknown_command_is_rejected_with_the_commands_this_agent_runs() -> None:
    assert parse_command(_json(id="c-1", command="reboot")) == Rejected(
        CommandId("c-1"), "unknown command 'reboot'; this agent runs reenroll, wipe"
    )


@pytest.mark.parametrize("name", [None, 7, ["wipe"], {"name": "wipe"}])
def test_a_missing_or_non_string_command_name_is_rejected(name: object) -> None:
    members: dict[str, object] = {"id": "c-1"} if name is None else {"id": "c-1", "command": name}
    assert parse_command(_json(**members)) == Rejected(CommandId("c-1"), "no command name")


def test_a_command_name_differs_by_case() -> None:
    assert isinstance(parse_command(_json(id="c-1", command="WIPE")), Rejected)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not UTF-8 JSON"),
        (b'{"id": "c-1", "command": "wipe"', "not UTF-8 JSON"),
        (b"\xff\xfe{}", "not UTF-8 JSON"),
        (b"", "not UTF-8 JSON"),
        (b'["c-1", "wipe"]', "a JSON list, not an object"),
        (b'"wipe"', "a JSON str, not an object"),
        (b"null", "a JSON NoneType, not an object"),
        (_json(command="wipe"), "no id of 1-128 characters"),
        (_json(id="", command="wipe"), "no id of 1-128 characters"),
        (_json(id=42, command="wipe"), "no id of 1-128 characters"),
        (_json(id="c" * 129, command="wipe"), "no id of 1-128 characters"),
        (_json(id="c-1\n", command="wipe"), "the id has control characters"),
        (b'{"id": "c-1", "command": "reenroll", "command": "wipe"}', "duplicate member names"),
    ],
)
def test_a_payload_without_a_usable_id_is_ignored(payload: bytes, reason: str) -> None:
    parsed = parse_command(payload)
    assert isinstance(parsed, Ignored)
    assert reason in parsed.reason


def test_a_payload_over_4_kib_is_ignored_unread() -> None:
    payload = _json(id="c-1", command="wipe", padding="x" * MAX_COMMAND_BYTES)
    assert parse_command(payload) == Ignored(f"{len(payload)} bytes; a command is at most 4096")


def test_a_payload_of_exactly_4_kib_is_read() -> None:
    head = _json(id="c-1", command="wipe", padding="")
    payload = head.replace(b'""', b'"' + b"x" * (MAX_COMMAND_BYTES - len(head)) + b'"')
    assert len(payload) == MAX_COMMAND_BYTES
    assert parse_command(payload) == Command(CommandId("c-1"), CommandKind.WIPE)


def test_deep_nesting_within_the_size_bound_is_ignored_not_a_crash() -> None:
    parsed = parse_command(b"[" * MAX_COMMAND_BYTES)
    assert isinstance(parsed, Ignored)


@given(st.binary(max_size=MAX_COMMAND_BYTES + 8))
def test_no_payload_makes_the_parser_raise(payload: bytes) -> None:
    assert isinstance(parse_command(payload), Command | Rejected | Ignored)


@given(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")),
            min_size=1, max_size=128),
    st.sampled_from(list(CommandKind)),
)  # fmt: skip
def test_any_printable_id_round_trips(command_id: str, kind: CommandKind) -> None:
    assert parse_command(_json(id=command_id, command=kind.value)) == Command(CommandId(command_id), kind)


# -- acknowledgements ------------------------------------------------------------------------------


def test_an_ack_carries_the_id_and_the_result_and_only_the_fields_set() -> None:
    assert json.loads(encode_ack(Ack(CommandId("c-1"), AckResult.OK))) == {"id": "c-1", "result": "ok"}
    assert json.loads(encode_ack(Ack(CommandId("c-2"), AckResult.OK, serial="1f"))) == {
        "id": "c-2", "result": "ok", "serial": "1f",
    }  # fmt: skip
    assert json.loads(encode_ack(Ack(CommandId("c-3"), AckResult.REJECTED, "unknown"))) == {
        "id": "c-3", "result": "rejected", "reason": "unknown",
    }  # fmt: skip


def test_an_ack_reason_is_one_bounded_line() -> None:
    ack = json.loads(encode_ack(Ack(CommandId("c-1"), AckResult.FAILED, "x" * 1000)))
    assert len(ack["reason"]) == 300


def test_the_ack_log_remembers_the_latest_acks_by_id() -> None:
    log = AckLog(capacity=2)
    first, second, third = (Ack(CommandId(f"c-{n}"), AckResult.OK) for n in range(3))
    log.record(first)
    log.record(second)
    assert log.get(CommandId("c-0")) == first
    log.record(third)  # c-0 was read, but recording order decides what is forgotten
    assert log.get(CommandId("c-0")) is None
    assert log.get(CommandId("c-1")) == second
    assert log.get(CommandId("c-2")) == third


def test_an_ack_log_holds_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least one"):
        AckLog(capacity=0)
