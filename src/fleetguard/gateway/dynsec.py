"""The control client: Mosquitto dynamic-security commands over MQTT v5.

Commands go to ``$CONTROL/dynamic-security/v1`` as ``{"commands": [...]}``; the plugin answers each on
``$CONTROL/dynamic-security/v1/response`` with ``{"responses": [...]}``, echoing the command's
``correlationData``, which is how an answer is matched to its request here (every subscribed control
client sees every answer). An answer with ``error`` raises :class:`BrokerCommandFailed` carrying the
plugin's text; no answer within the timeout, a refused connection or a lost one raises
:class:`BrokerUnavailable`. The client connects on the loopback control listener with a fresh
gateway-CA certificate (CN :data:`~fleetguard.gateway.roles.ADMIN_USERNAME`) and reconnects on the next
command after a broker restart.

Verified against Mosquitto 2.0.11 (Debian), with certificate clients (``use_identity_as_username``):

* ``addClientRole`` and ``removeClientRole`` kick every live connection of that username, on every
  listener, before the answer is sent: measured about 1 ms from command to the client seeing the
  disconnect (reason 0x98, administrative action). ``disableClient`` and ``deleteClient`` kick too.
* ``disableClient`` does not stop a certificate client: with ``use_identity_as_username`` the broker
  never asks the plugin to authenticate, so the client connects again at once and publishes as
  before. Quarantine is therefore a deny-all role, not a disabled client.
* ``createClient`` for an existing name answers ``Client already exists``; ``addClientRole`` for a
  role the client already has answers ``Internal error``, so roles are read back (``getClient``) and
  only the difference is sent; ``removeClientRole`` of a role the client lacks answers ``Role not
  found``. ``modifyRole`` with ``acls`` replaces the role's ACLs (and kicks every holder);
  ``deleteRole`` of a missing role answers ``Role not found``.
* Role ACL topics are literal: no ``%u``/``%c`` substitution (see :mod:`fleetguard.gateway.topics`).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fleetguard.gateway.authority import GatewayAuthority
from fleetguard.gateway.errors import BrokerCommandFailed, BrokerUnavailable
from fleetguard.gateway.roles import ADMIN_USERNAME, CONTROL_TOPIC, RESPONSE_TOPIC, AclType, RoleAcl
from fleetguard.types import utc_now

__all__ = ["ClientRoles", "DynsecClient", "DynsecControl", "JsonObject", "ResponseChannel"]

JsonObject = dict[str, object]
"""A dynamic-security command or answer as JSON; it never leaves this module's public methods."""

_TIMEOUT_S = 5.0
_MAX_ANSWER_BYTES = 1024 * 1024  # MQTT 5 3.1.2.11.4 Maximum Packet Size asked of the broker
_KEEPALIVE_S = 30
_DENY_ALL_DEFAULTS = ("publishClientSend", "publishClientReceive", "subscribe", "unsubscribe")


@dataclass(frozen=True, slots=True)
class ClientRoles:
    """A dynamic-security client's roles (name to priority), as ``getClient`` reports them."""

    username: str
    roles: Mapping[str, int]
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class ResponseChannel:
    """Another plugin's answers on the same control connection (:mod:`fleetguard.gateway.plugin`).

    ``decode`` turns one message on ``topic`` into (correlation, answer) pairs; it raises nothing.
    """

    topic: str
    decode: Callable[[bytes], Sequence[tuple[str, object]]]


class DynsecControl(Protocol):
    """The dynamic-security operations the enforcer needs; :class:`DynsecClient` is the real one."""

    def ensure_client(self, username: str) -> None:
        """Create client ``username`` (no password) unless it exists."""

    def client_roles(self, username: str) -> ClientRoles | None:
        """Return the client's roles, or None if there is no such client."""

    def add_client_role(self, username: str, rolename: str, priority: int) -> None:
        """Give the client a role (kicks its connections)."""

    def remove_client_role(self, username: str, rolename: str) -> None:
        """Take a role from the client (kicks its connections)."""

    def role_acls(self, rolename: str) -> tuple[RoleAcl, ...] | None:
        """Return a role's ACLs, or None if there is no such role."""

    def ensure_role(self, rolename: str, acls: Sequence[RoleAcl]) -> None:
        """Create the role with ``acls``, or make an existing role's ACLs exactly ``acls``."""

    def delete_role(self, rolename: str) -> None:
        """Delete the role unless there is no such role (kicks any client that holds it)."""

    def deny_by_default(self) -> None:
        """Set every default access to deny (defer to the ACL file)."""


class DynsecClient:
    """A dynamic-security control connection on the broker's loopback listener. Thread-safe."""

    def __init__(
        self,
        host: str,
        port: int,
        authority: GatewayAuthority,
        scratch: Path,
        *,
        username: str = ADMIN_USERNAME,
        timeout_s: float = _TIMEOUT_S,
        clock: Callable[[], dt.datetime] = utc_now,
        channels: Sequence[ResponseChannel] = (),
    ) -> None:
        self._address = (host, port)
        self._channels = {channel.topic: channel for channel in channels}
        self._authority = authority
        self._scratch = scratch
        self._username = username
        self._timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()  # one connection attempt at a time
        self._pending: dict[str, _Pending] = {}
        self._pending_lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()

    # -- the operations ----------------------------------------------------------------------

    def ensure_client(self, username: str) -> None:
        """Create client ``username`` without a password unless it exists (see the module notes)."""
        try:
            self.call({"command": "createClient", "username": username})
        except BrokerCommandFailed as exc:
            if exc.error != "Client already exists":
                raise

    def client_roles(self, username: str) -> ClientRoles | None:
        """Return ``getClient``'s roles for ``username``, or None for ``Client not found``."""
        try:
            answer = self.call({"command": "getClient", "username": username})
        except BrokerCommandFailed as exc:
            if exc.error == "Client not found":
                return None
            raise
        client = _object(_object(answer.get("data"), "data").get("client"), "client")
        roles = {}
        for entry in _list(client.get("roles"), "roles"):
            role = _object(entry, "role")
            roles[str(role.get("rolename"))] = _int(role.get("priority", -1))
        return ClientRoles(username=username, roles=roles, disabled=bool(client.get("disabled", False)))

    def add_client_role(self, username: str, rolename: str, priority: int) -> None:
        """``addClientRole``; the broker kicks the client's connections."""
        self.call(
            {"command": "addClientRole", "username": username, "rolename": rolename, "priority": priority}
        )

    def remove_client_role(self, username: str, rolename: str) -> None:
        """``removeClientRole``; the broker kicks the client's connections."""
        self.call({"command": "removeClientRole", "username": username, "rolename": rolename})

    def role_acls(self, rolename: str) -> tuple[RoleAcl, ...] | None:
        """Return ``getRole``'s ACLs, or None for ``Role not found``."""
        try:
            answer = self.call({"command": "getRole", "rolename": rolename})
        except BrokerCommandFailed as exc:
            if exc.error == "Role not found":
                return None
            raise
        role = _object(_object(answer.get("data"), "data").get("role"), "role")
        return tuple(
            sorted(_role_acl(_object(entry, "acl")) for entry in _list(role.get("acls", []), "acls"))
        )

    def ensure_role(self, rolename: str, acls: Sequence[RoleAcl]) -> None:
        """Create the role, or replace its ACLs when they differ (``modifyRole`` kicks its holders)."""
        wanted = tuple(sorted(acls))
        current = self.role_acls(rolename)
        if current == wanted:
            return
        command = "createRole" if current is None else "modifyRole"
        self.call({"command": command, "rolename": rolename, "acls": [_acl_json(acl) for acl in wanted]})

    def delete_role(self, rolename: str) -> None:
        """``deleteRole``; a role that is already gone (``Role not found``) is not an error."""
        try:
            self.call({"command": "deleteRole", "rolename": rolename})
        except BrokerCommandFailed as exc:
            if exc.error != "Role not found":
                raise

    def deny_by_default(self) -> None:
        """``setDefaultACLAccess`` with every entry denied (deferring to the ACL file)."""
        acls = [{"acltype": kind, "allow": False} for kind in _DENY_ALL_DEFAULTS]
        self.call({"command": "setDefaultACLAccess", "acls": acls})

    # -- the transport -----------------------------------------------------------------------

    def call(self, command: JsonObject) -> JsonObject:
        """Send one command and return its answer; raise ``BrokerCommandFailed`` on an ``error``.

        Raises ``BrokerUnavailable`` when the broker cannot be reached or does not answer within the
        timeout.
        """
        name = str(command["command"])
        correlation = uuid.uuid4().hex
        payload = json.dumps({"commands": [{**command, "correlationData": correlation}]})
        answer = self.exchange(CONTROL_TOPIC, payload.encode(), correlation, name)
        if not isinstance(answer, dict):
            raise BrokerCommandFailed(name, "malformed answer")
        if "error" in answer:
            raise BrokerCommandFailed(name, str(answer["error"]))
        return answer

    def exchange(self, topic: str, payload: bytes, correlation: str, name: str) -> object:
        """Publish ``payload`` on ``topic`` and return the answer carrying ``correlation``.

        Answers come on the dynamic-security response topic or on a :class:`ResponseChannel`'s.
        Raises ``BrokerUnavailable`` when the broker cannot be reached or does not answer in time.
        """
        pending = _Pending()
        with self._pending_lock:
            self._pending[correlation] = pending
        try:
            client = self._ensure_connected()
            info = client.publish(topic, payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise BrokerUnavailable(f"cannot send {name} to the broker: {mqtt.error_string(info.rc)}")
            if not pending.done.wait(self._timeout_s):
                raise BrokerUnavailable(f"the broker did not answer {name} within {self._timeout_s:g} s")
        finally:
            with self._pending_lock:
                self._pending.pop(correlation, None)
        if pending.lost is not None:
            raise BrokerUnavailable(f"the control connection was lost during {name}: {pending.lost}")
        return pending.answer

    def close(self) -> None:
        """Disconnect; the next command connects again."""
        with self._lock:
            self._drop()

    def _ensure_connected(self) -> mqtt.Client:
        with self._lock:
            if self._client is not None and self._connected.is_set() and self._subscribed.is_set():
                return self._client
            self._drop()
            client = self._new_client()
            try:
                client.connect(
                    *self._address, keepalive=_KEEPALIVE_S, clean_start=True, properties=_connect_properties()
                )
            except OSError as exc:
                raise BrokerUnavailable(
                    f"cannot connect to the control listener {self._where()}: {exc}"
                ) from exc
            client.loop_start()
            self._client = client
            if not self._connected.wait(self._timeout_s):
                self._drop()
                raise BrokerUnavailable(f"the control listener {self._where()} did not accept the connection")
            client.subscribe([(topic, 1) for topic in (RESPONSE_TOPIC, *self._channels)])
            if not self._subscribed.wait(self._timeout_s):
                self._drop()
                raise BrokerUnavailable(
                    f"the broker refused the control client's subscription at {self._where()}"
                )
            return client

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"fleetguard-control-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5, reconnect_on_failure=False,  # the next command connects afresh
        )  # fmt: skip
        credential = self._authority.issue_client(self._username, now=self._clock())
        client.tls_set_context(self._authority.client_context(credential, scratch=self._scratch))
        client.connect_timeout = self._timeout_s
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _drop(self) -> None:
        client, self._client = self._client, None
        self._connected.clear()
        self._subscribed.clear()
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def _where(self) -> str:
        return f"{self._address[0]}:{self._address[1]}"

    # -- paho callbacks (paho's network thread) ----------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object
    ) -> None:
        if not reason.is_failure:
            self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object
    ) -> None:
        self._connected.clear()
        self._subscribed.clear()
        with self._pending_lock:
            for pending in self._pending.values():
                pending.lost = str(reason)
                pending.done.set()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, reasons: list[ReasonCode], properties: object
    ) -> None:
        if reasons and not any(reason.is_failure for reason in reasons):
            self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        channel = self._channels.get(message.topic)
        if channel is not None:
            for correlation, answer in channel.decode(bytes(message.payload)):
                self._deliver(correlation, answer)
            return
        if message.topic != RESPONSE_TOPIC:
            return
        try:
            document = json.loads(message.payload)
        except ValueError:
            return
        responses = document.get("responses") if isinstance(document, dict) else None
        for response in responses if isinstance(responses, list) else []:
            if isinstance(response, dict):
                self._answer(response)

    def _answer(self, response: JsonObject) -> None:
        self._deliver(str(response.get("correlationData")), response)

    def _deliver(self, correlation: str, answer: object) -> None:
        with self._pending_lock:
            pending = self._pending.get(correlation)
        if pending is not None:
            pending.answer = answer
            pending.done.set()


class _Pending:
    __slots__ = ("answer", "done", "lost")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer: object = None
        self.lost: str | None = None


def _connect_properties() -> Properties:
    # paho's Properties is not annotated; the bound keeps an answer from growing without limit.
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.MaximumPacketSize = _MAX_ANSWER_BYTES
    return properties


def _acl_json(acl: RoleAcl) -> JsonObject:
    return {"acltype": str(acl.acltype), "topic": acl.topic, "priority": acl.priority, "allow": acl.allow}


def _role_acl(entry: JsonObject) -> RoleAcl:
    try:
        kind = AclType(str(entry.get("acltype")))
    except ValueError as exc:
        raise BrokerCommandFailed("getRole", f"unknown ACL type {entry.get('acltype')!r}") from exc
    return RoleAcl(
        kind,
        str(entry.get("topic")),
        allow=entry.get("allow") is True,
        priority=_int(entry.get("priority", 0)),
    )


def _object(value: object, what: str) -> JsonObject:
    if not isinstance(value, dict):
        raise BrokerCommandFailed("read", f"malformed answer: {what} is not an object")
    return value


def _list(value: object, what: str) -> list[object]:
    if not isinstance(value, list):
        raise BrokerCommandFailed("read", f"malformed answer: {what} is not a list")
    return value


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
