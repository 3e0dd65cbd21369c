"""fleetguard's own Mosquitto auth plugin: building it, its state file, and its control commands.

The plugin (``plugin/fleetguard_auth.c``, shipped with the package) decides a device's everyday
traffic from a table username -> (quarantined, device type, access to the type's topics) and defers
everything else to dynamic security and the ACL file (see the C file's header and
:mod:`fleetguard.gateway`). A change costs a hash-table update and a kick, independent of the fleet's
size, where a dynamic-security change rewrites all of ``dynsec.json`` first.

Building. :func:`build_auth_plugin` compiles the source with ``cc`` into the gateway directory as
``fleetguard_auth-<first 16 hex digits of the source's SHA-256>.so``, once per source version;
:func:`resolve_auth_plugin` applies ``FLEETGUARD_MQTT_PLUGIN`` (``auto``: the plugin when it builds,
else dynamic security with a warning; ``on``: the plugin or :class:`PluginUnavailable`; ``off``).

State. The plugin reads the state file at start only, and refuses to start the broker when it does
not parse (fail closed). :class:`StateFile` keeps the table in memory and rewrites the file
atomically (mode 0600) *before* each command is sent, so a broker that restarts after the command,
or instead of it, loads the newest state: there is no window in which a quarantine is forgotten.

Commands (one message, bounded: at most 10,000 lines of at most 512 bytes, 1 MiB), on
:data:`CONTROL_TOPIC`, accepted from the control user only::

    id <correlation>                 first line: 1-64 letters, digits or '-'
    quarantine <user>                mark; kick its connections
    release <user>                   unmark; kick its connections if it was marked
    type <user> <type> <r|w|rw>      its type's topics (types/<type>/#) and the access to them
    untype <user>
    get <user>

The plugin checks every line before it changes anything and answers on :data:`RESPONSE_TOPIC` with
``id <correlation>`` and either ``ok`` and a ``state <user> <0|1> <-|r|w|rw> <-|type>`` line per
``get``, or ``error <line> <reason>``.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fleetguard.errors import InvalidInput
from fleetguard.gateway.dynsec import DynsecClient, ResponseChannel
from fleetguard.gateway.errors import BrokerCommandFailed, GatewayError
from fleetguard.gateway.model import Access, TopicGrant
from fleetguard.gateway.roles import QUARANTINE_PRIORITY, QUARANTINE_ROLE, covered
from fleetguard.private_file import replace_private_file

__all__ = [
    "CONTROL_TOPIC",
    "RESPONSE_CHANNEL",
    "RESPONSE_TOPIC",
    "SOURCE",
    "AuthPlugin",
    "AuthPluginClient",
    "Command",
    "DeviceState",
    "PluginMode",
    "PluginUnavailable",
    "StateFile",
    "Verb",
    "build_auth_plugin",
    "carry_quarantines_to_dynsec",
    "decode_response",
    "encode_request",
    "parse_state",
    "render_state",
    "resolve_auth_plugin",
    "seed_state",
    "type_grant",
]

_log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "plugin" / "fleetguard_auth.c"
CONTROL_TOPIC = "$CONTROL/fleetguard/v1"
RESPONSE_TOPIC = "$CONTROL/fleetguard/v1/response"
STATE_HEADER = "fleetguard-auth-state 1"
MAX_COMMANDS = 10_000  # the plugin's FG_MAX_COMMANDS
_MAX_NAME = 128  # the plugin's FG_MAX_USER and FG_MAX_TYPE
_NAME = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # device and device type ids (fleetguard.inventory.model)
_USER = re.compile(r"[\x21-\x7e]{1,128}")
_TYPE_FILTER = re.compile(r"types/([A-Za-z0-9._:-]{1,128})/#")
_ACCESS = {Access.SUBSCRIBE: "r", Access.PUBLISH: "w", Access.BOTH: "rw"}
_ACCESS_OF = {text: access for access, text in _ACCESS.items()}
_CC_TIMEOUT_S = 120


class PluginUnavailable(GatewayError):
    """The auth plugin cannot be built here (no compiler, no Mosquitto headers)."""

    code = "gateway-plugin-unavailable"


class PluginMode(enum.StrEnum):
    """``FLEETGUARD_MQTT_PLUGIN``."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


# -- building ------------------------------------------------------------------------------------


def build_auth_plugin(directory: Path, *, compiler: str = "cc") -> Path:
    """Return the compiled plugin for the current source in ``directory``, building it when missing.

    Raises :class:`PluginUnavailable` with the compiler's complaint.
    """
    source = SOURCE.read_bytes()
    target = directory / f"fleetguard_auth-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if target.is_file():
        return target
    cc = shutil.which(compiler)
    if cc is None:
        raise PluginUnavailable(
            f"no C compiler ({compiler}) to build the auth plugin", hint="apt-get install gcc"
        )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = directory / f".{target.name}.{uuid.uuid4().hex[:8]}"
    command = [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(scratch), str(SOURCE)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=_CC_TIMEOUT_S, check=False)  # noqa: S603
        if done.returncode != 0:
            complaint = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise PluginUnavailable(
                f"the auth plugin does not build: {' | '.join(complaint)}",
                hint="apt-get install mosquitto-dev libmosquitto-dev",
            )
        scratch.chmod(0o600)  # dlopen needs read access only
        scratch.replace(target)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PluginUnavailable(f"the auth plugin does not build: {exc}") from exc
    finally:
        scratch.unlink(missing_ok=True)
    return target


def resolve_auth_plugin(mode: PluginMode, directory: Path) -> Path | None:
    """Return the plugin to load for ``mode``, or None for dynamic security alone.

    Raises :class:`PluginUnavailable` when ``mode`` is ``on`` and the plugin does not build.
    """
    if mode is PluginMode.OFF:
        return None
    try:
        return build_auth_plugin(directory)
    except PluginUnavailable as exc:
        if mode is PluginMode.ON:
            raise
        _log.warning(
            "MQTT gateway: %s; falling back to dynamic-security roles (slower quarantine at scale)", exc
        )
        return None


# -- values --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What the plugin holds for one username."""

    quarantined: bool = False
    device_type: str | None = None
    access: Access | None = None

    def __post_init__(self) -> None:
        if (self.device_type is None) != (self.access is None):
            raise InvalidInput("a device type needs an access, and an access a device type")
        if self.device_type is not None and not _NAME.fullmatch(self.device_type):
            raise InvalidInput(f"invalid device type {self.device_type[:140]!r}")

    @property
    def plain(self) -> bool:
        """Whether the plugin need not hold it (neither quarantined nor typed)."""
        return not self.quarantined and self.device_type is None


class Verb(enum.StrEnum):
    """The plugin's commands."""

    QUARANTINE = "quarantine"
    RELEASE = "release"
    TYPE = "type"
    UNTYPE = "untype"
    GET = "get"


@dataclass(frozen=True, slots=True)
class Command:
    """One command line; ``device_type`` and ``access`` only with :attr:`Verb.TYPE`."""

    verb: Verb
    user: str
    device_type: str | None = None
    access: Access | None = None

    def __post_init__(self) -> None:
        _require_user(self.user)
        if (self.verb is Verb.TYPE) != (self.device_type is not None and self.access is not None):
            raise InvalidInput(f"{self.verb} takes a device type and access only with 'type'")
        if self.device_type is not None and not _NAME.fullmatch(self.device_type):
            raise InvalidInput(f"invalid device type {self.device_type[:140]!r}")

    def line(self) -> str:
        """Return the command as the plugin reads it."""
        if self.verb is Verb.TYPE:
            assert self.access is not None
            return f"type {self.user} {self.device_type} {_ACCESS[self.access]}"
        return f"{self.verb} {self.user}"


def _require_user(user: str) -> None:
    # The plugin refuses '+', '#' and '/' (a username with them cannot own devices/%u/#).
    if not _USER.fullmatch(user) or any(char in user for char in "+#/"):
        raise InvalidInput(f"{user[:140]!r} cannot be a username in the auth plugin")


def type_grant(
    grants: Iterable[TopicGrant], common: Iterable[TopicGrant], device_id: str
) -> tuple[str, Access] | None:
    """Return the (device type, access) that ``grants`` give beyond the patterns ``common``, or None.

    The plugin holds one type's topics (``types/<type>/#``) per device; raises ``InvalidInput`` for
    any other grant the patterns do not cover.
    """
    patterns = tuple(common)
    found: dict[str, set[Access]] = {}
    for grant in grants:
        if covered(grant, patterns, device_id):
            continue
        match = _TYPE_FILTER.fullmatch(grant.filter)
        if match is None:
            raise InvalidInput(
                f"the auth plugin holds only a type's topics (types/<type>/#), not {grant.filter!r}"
            )
        found.setdefault(match.group(1), set()).add(grant.access)
    if not found:
        return None
    if len(found) > 1:
        raise InvalidInput(f"the auth plugin holds one type's topics per device, not {sorted(found)}")
    [(device_type, accesses)] = found.items()
    reads = any(access.subscribes for access in accesses)
    writes = any(access.publishes for access in accesses)
    return device_type, Access.BOTH if reads and writes else Access.SUBSCRIBE if reads else Access.PUBLISH


# -- the state file ------------------------------------------------------------------------------


def render_state(states: Mapping[str, DeviceState]) -> bytes:
    """Return the state file for ``states`` (plain entries left out), sorted by username."""
    lines = [STATE_HEADER]
    for user in sorted(states):
        state = states[user]
        if state.plain:
            continue
        _require_user(user)
        access = _ACCESS[state.access] if state.access is not None else "-"
        lines.append(f"device {user} {int(state.quarantined)} {access} {state.device_type or '-'}")
    return ("\n".join(lines) + "\n").encode()


def parse_state(data: bytes) -> dict[str, DeviceState]:
    """Parse a state file as the plugin does; raise ``InvalidInput`` where the plugin would refuse it."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise InvalidInput("the auth plugin's state file is not ASCII") from exc
    if not text.endswith("\n"):
        raise InvalidInput("the auth plugin's state file is empty or truncated")
    lines = text[:-1].split("\n")
    if lines[0] != STATE_HEADER:
        raise InvalidInput("the auth plugin's state file lacks its header")
    states: dict[str, DeviceState] = {}
    for number, line in enumerate(lines[1:], start=2):
        words = line.split(" ")
        if len(words) != 5 or words[0] != "device" or words[2] not in ("0", "1") or words[1] in states:
            raise InvalidInput(f"the auth plugin's state file: line {number} is malformed")
        _require_user(words[1])
        no_type = words[3] == "-"
        if no_type != (words[4] == "-") or (not no_type and words[3] not in _ACCESS_OF):
            raise InvalidInput(f"the auth plugin's state file: line {number} is malformed")
        states[words[1]] = DeviceState(
            quarantined=words[2] == "1",
            device_type=None if no_type else words[4],
            access=None if no_type else _ACCESS_OF[words[3]],
        )
    return states


class StateFile:
    """The plugin's state file, kept in memory and rewritten atomically (0600) on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._states = parse_state(path.read_bytes()) if path.exists() else {}

    def ensure(self) -> None:
        """Write the file when it is missing (the plugin refuses to start without it)."""
        with self._lock:
            if not self.path.exists():
                replace_private_file(self.path, render_state(self._states))

    def get(self, user: str) -> DeviceState:
        """Return what the file holds for ``user``."""
        with self._lock:
            return self._states.get(user, DeviceState())

    def put(self, user: str, state: DeviceState) -> None:
        """Record ``state`` for ``user`` and rewrite the file."""
        with self._lock:
            if state.plain:
                self._states.pop(user, None)
            else:
                self._states[user] = state
            replace_private_file(self.path, render_state(self._states))


# -- the control protocol ------------------------------------------------------------------------


def encode_request(correlation: str, commands: Sequence[Command]) -> bytes:
    """Return one control message; raise ``InvalidInput`` for no or too many commands."""
    if not 1 <= len(commands) <= MAX_COMMANDS:
        raise InvalidInput(f"{len(commands)} commands; one message carries 1-{MAX_COMMANDS}")
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", correlation):
        raise InvalidInput(f"invalid correlation {correlation[:80]!r}")
    return "\n".join([f"id {correlation}", *(command.line() for command in commands)]).encode()


@dataclass(frozen=True, slots=True)
class Answer:
    """The plugin's answer: states read (``get``), or its error."""

    states: Mapping[str, DeviceState]
    error: str | None = None


def decode_response(payload: bytes) -> list[tuple[str, object]]:
    """Return [(correlation, :class:`Answer`)] for one response message; [] when it does not parse."""
    lines = payload.decode("ascii", errors="replace").rstrip("\n").split("\n")
    if len(lines) < 2 or not lines[0].startswith("id "):
        return []
    correlation = lines[0][3:]
    if lines[1].startswith("error "):
        return [(correlation, Answer({}, error=lines[1][6:]))]
    if lines[1] != "ok":
        return []
    states = {}
    for line in lines[2:]:
        words = line.split(" ")
        if len(words) != 5 or words[0] != "state":
            return [(correlation, Answer({}, error=f"unreadable answer line {line[:80]!r}"))]
        no_type = words[4] == "-"
        states[words[1]] = DeviceState(
            quarantined=words[2] == "1",
            device_type=None if no_type else words[4],
            access=None if no_type else _ACCESS_OF.get(words[3], Access.BOTH),
        )
    return [(correlation, Answer(states))]


RESPONSE_CHANNEL = ResponseChannel(RESPONSE_TOPIC, decode_response)
"""The plugin's answers, for :class:`~fleetguard.gateway.dynsec.DynsecClient`."""


class AuthPlugin(Protocol):
    """The plugin as the enforcer drives it; :class:`AuthPluginClient` is the real one."""

    def state(self, user: str) -> DeviceState:
        """Read back what the plugin holds for ``user``."""

    def quarantine(self, user: str) -> None:
        """Mark ``user`` quarantined and kick its connections."""

    def set_access(self, user: str, wanted: DeviceState) -> None:
        """Make the plugin hold ``wanted`` for ``user`` (kicks when rights shrink or a quarantine ends)."""


class AuthPluginClient:
    """Drives the plugin over the gateway's control connection; the state file is written first."""

    def __init__(self, control: DynsecClient, state_file: StateFile) -> None:
        self._control = control
        self._file = state_file

    def state(self, user: str) -> DeviceState:
        """Return ``get``'s answer for ``user``; raise ``BrokerCommandFailed``/``BrokerUnavailable``."""
        answer = self.send([Command(Verb.GET, user)])
        if user not in answer.states:
            raise BrokerCommandFailed("get", f"no state for {user} in the answer")
        return answer.states[user]

    def quarantine(self, user: str) -> None:
        """Record the quarantine in the state file, then mark and kick."""
        held = self._file.get(user)
        self._file.put(user, DeviceState(True, held.device_type, held.access))
        self.send([Command(Verb.QUARANTINE, user)])

    def set_access(self, user: str, wanted: DeviceState) -> None:
        """Record ``wanted``, then send the commands that make the plugin hold it."""
        self._file.put(user, wanted)
        commands = [Command(Verb.QUARANTINE, user)] if wanted.quarantined else []
        if wanted.device_type is not None:
            commands.append(Command(Verb.TYPE, user, wanted.device_type, wanted.access))
        else:
            commands.append(Command(Verb.UNTYPE, user))
        if not wanted.quarantined:
            commands.append(Command(Verb.RELEASE, user))  # last: the new rights are in place first
        self.send(commands)

    def send(self, commands: Sequence[Command]) -> Answer:
        """Send one message; raise ``BrokerCommandFailed`` for an error answer, ``BrokerUnavailable``."""
        correlation = uuid.uuid4().hex
        name = commands[0].verb.value
        answer = self._control.exchange(
            CONTROL_TOPIC, encode_request(correlation, commands), correlation, name
        )
        if not isinstance(answer, Answer):
            raise BrokerCommandFailed(name, "malformed answer")
        if answer.error is not None:
            raise BrokerCommandFailed(name, answer.error)
        return answer


def seed_state(dynsec_file: Path) -> bytes:
    """Return a first state file: the devices ``dynsec_file`` holds quarantined, if it exists.

    A gateway that switches from dynamic-security roles to the plugin keeps its quarantines from
    the first moment (the plugin decides a device's own topics before dynamic security is asked).
    Raises ``InvalidInput`` for a ``dynsec.json`` that does not parse.
    """
    if not dynsec_file.exists():
        return render_state({})
    try:
        document = json.loads(dynsec_file.read_bytes())
    except ValueError as exc:
        raise InvalidInput(f"{dynsec_file} does not parse: {exc}") from exc
    clients = document.get("clients", []) if isinstance(document, dict) else []
    held = {
        str(client.get("username"))
        for client in clients
        if isinstance(client, dict) and QUARANTINE_ROLE in _rolenames(client.get("roles"))
    }
    return render_state({user: DeviceState(quarantined=True) for user in held if _usable(user)})


def carry_quarantines_to_dynsec(state_file: Path, dynsec_file: Path) -> int:
    """Move the quarantines of the plugin's ``state_file`` into ``dynsec_file``; return how many.

    The other direction of :func:`seed_state`: a gateway that switches from the plugin back to
    dynamic-security roles (``FLEETGUARD_MQTT_PLUGIN=off``, or ``auto`` on a host that cannot build a
    new plugin) keeps its quarantines from the first moment instead of until the reconcile after
    start. Each quarantined device becomes a dynamic-security client holding the quarantine role at
    its priority; the state file is then renamed ``<name>.retired``, so a later switch back to the
    plugin seeds its state from ``dynsec_file`` again. Raises ``InvalidInput`` for a state file or a
    ``dynsec.json`` that does not parse (the broker is then not started: fail closed).
    """
    if not state_file.exists():
        return 0
    held = sorted(user for user, state in parse_state(state_file.read_bytes()).items() if state.quarantined)
    if held:
        try:
            document = json.loads(dynsec_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"{dynsec_file} cannot take the plugin's quarantines: {exc}") from exc
        clients = document.get("clients") if isinstance(document, dict) else None
        if not isinstance(clients, list):
            raise InvalidInput(f"{dynsec_file} has no list of clients")
        known = {str(client.get("username")): client for client in clients if isinstance(client, dict)}
        for user in held:
            client = known.get(user)
            if client is None:
                client = {"username": user, "roles": []}
                clients.append(client)
            roles = client.get("roles")
            if not isinstance(roles, list):
                roles = client["roles"] = []
            if QUARANTINE_ROLE not in _rolenames(roles):
                roles.append({"rolename": QUARANTINE_ROLE, "priority": QUARANTINE_PRIORITY})
        replace_private_file(dynsec_file, (json.dumps(document, indent=2) + "\n").encode())
    state_file.replace(state_file.with_name(state_file.name + ".retired"))
    return len(held)


def _rolenames(roles: object) -> set[str]:
    entries = roles if isinstance(roles, list) else []
    return {str(role.get("rolename")) for role in entries if isinstance(role, dict)}


def _usable(user: str) -> bool:
    try:
        _require_user(user)
    except InvalidInput:
        return False
    return True
