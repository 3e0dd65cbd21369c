"""Commands the fleet sends a device over MQTT, and the device's acknowledgements. Pure: bytes in, values out.

Theory of operation. A command arrives on ``devices/<id>/commands`` as one JSON object
``{"id": "...", "command": "reenroll" | "wipe", ...}``; other members are allowed and ignored, so the
control plane may add context (who asked, when). :func:`parse_command` sorts a payload into one of:

* :class:`Command`: well formed and known; the agent runs it and acknowledges the outcome;
* :class:`Rejected`: it has a usable id but is no command this agent runs (an unknown name, a
  missing ``command``); the agent answers with a negative acknowledgement and the reason;
* :class:`Ignored`: there is nobody to answer (larger than :data:`MAX_COMMAND_BYTES`, not UTF-8
  JSON, not an object, duplicate members, no usable id); the agent logs it and drops it.

Every answer goes to ``devices/<id>/commands/ack`` as an :class:`Ack` (:func:`encode_ack`) carrying
the command's id. MQTT QoS 1 delivers at least once, so a command may arrive twice: :class:`AckLog`
remembers the latest acknowledgements by id, and a repeated id is answered with the same
acknowledgement rather than run again (a second ``reenroll`` would issue a second certificate).
"""

from __future__ import annotations

import enum
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import NewType

__all__ = [
    "MAX_COMMAND_BYTES",
    "Ack",
    "AckLog",
    "AckResult",
    "Command",
    "CommandId",
    "CommandKind",
    "Ignored",
    "ParsedCommand",
    "Rejected",
    "encode_ack",
    "parse_command",
]

MAX_COMMAND_BYTES = 4096
"""The largest command payload read; a command is an id, a name and a little context."""

CommandId = NewType("CommandId", str)

_MAX_ID_CHARS = 128  # a UUID is 36; room for a prefixed or ULID-style id, not for a document
_MAX_REASON_CHARS = 300  # one line in the operator's view


class CommandKind(enum.StrEnum):
    """The commands the agent runs."""

    REENROLL = "reenroll"
    """Renew the certificate now (EST simplereenroll) and reconnect with the new one."""
    WIPE = "wipe"
    """Decommission: destroy the key, delete the certificate and the configuration, stop."""


class AckResult(enum.StrEnum):
    """How a command ended."""

    OK = "ok"
    FAILED = "failed"
    """The command was run and failed; ``reason`` says why."""
    REJECTED = "rejected"
    """The command was not run: unknown or malformed; ``reason`` says why."""


@dataclass(frozen=True, slots=True)
class Command:
    """A command to run."""

    id: CommandId
    kind: CommandKind


@dataclass(frozen=True, slots=True)
class Rejected:
    """A payload with a usable id that is no command this agent runs."""

    id: CommandId
    reason: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A payload nobody can be answered about."""

    reason: str


ParsedCommand = Command | Rejected | Ignored


@dataclass(frozen=True, slots=True)
class Ack:
    """The answer to command ``command_id``; ``serial`` is the new certificate's after a ``reenroll``."""

    command_id: CommandId
    result: AckResult
    reason: str | None = None
    serial: str | None = None


def parse_command(payload: bytes) -> ParsedCommand:
    """Return what ``payload`` is: a :class:`Command`, :class:`Rejected` or :class:`Ignored`. Never raises."""
    document = _document(payload)
    if isinstance(document, Ignored):
        return document
    command_id = document.get("id")
    if not isinstance(command_id, str) or not 0 < len(command_id) <= _MAX_ID_CHARS:
        return Ignored(f"no id of 1-{_MAX_ID_CHARS} characters")
    if not command_id.isprintable():
        return Ignored("the id has control characters")
    return _command(CommandId(command_id), document.get("command"))


def _document(payload: bytes) -> dict[str, object] | Ignored:
    if len(payload) > MAX_COMMAND_BYTES:
        return Ignored(f"{len(payload)} bytes; a command is at most {MAX_COMMAND_BYTES}")
    try:
        document = json.loads(payload.decode("utf-8"), object_pairs_hook=_unique_members)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # 4 KiB of "[" nests 4096 deep
        return Ignored(f"not UTF-8 JSON: {str(exc)[:100]}")
    if not isinstance(document, dict):
        return Ignored(f"a JSON {type(document).__name__}, not an object")
    return document


def _command(command_id: CommandId, name: object) -> Command | Rejected:
    if not isinstance(name, str):
        return Rejected(command_id, "no command name")
    try:
        return Command(command_id, CommandKind(name))
    except ValueError:
        known = ", ".join(kind.value for kind in CommandKind)
        return Rejected(command_id, f"unknown command {name[:40]!r}; this agent runs {known}")


def encode_ack(ack: Ack) -> bytes:
    """Return the JSON of ``ack``: ``id`` and ``result``, and ``reason`` and ``serial`` when set."""
    document: dict[str, str] = {"id": ack.command_id, "result": ack.result.value}
    if ack.reason is not None:
        document["reason"] = ack.reason[:_MAX_REASON_CHARS]
    if ack.serial is not None:
        document["serial"] = ack.serial
    return json.dumps(document, sort_keys=True).encode()


class AckLog:
    """The latest ``capacity`` acknowledgements by command id (oldest forgotten first)."""

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError("an AckLog holds at least one acknowledgement")
        self._capacity = capacity
        self._acks: OrderedDict[CommandId, Ack] = OrderedDict()

    def get(self, command_id: CommandId) -> Ack | None:
        """Return the acknowledgement already given to ``command_id``, if remembered."""
        return self._acks.get(command_id)

    def record(self, ack: Ack) -> None:
        """Remember ``ack``, forgetting the oldest beyond capacity."""
        self._acks[ack.command_id] = ack
        self._acks.move_to_end(ack.command_id)
        while len(self._acks) > self._capacity:
            self._acks.popitem(last=False)


def _unique_members(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """Refuse duplicate members (RFC 8259 4: names SHOULD be unique; parsers disagree on which wins)."""
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate member names")
    return document
