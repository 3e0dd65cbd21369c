"""Mosquitto's configuration, ACL file and first dynamic-security file, rendered from one value.

Two listeners (``per_listener_settings false``: one ACL file and one dynamic-security plugin for
both, so a username gets the same rights on either):

* the *device listener* on ``listen_host:listen_port``: TLS with ``require_certificate true`` against
  the fleet's CA bundle, ``crlfile`` for revocation, and ``use_identity_as_username true``, so the
  username is the certificate's CN, the device id. Mosquitto 2.0.11 then skips password
  authentication altogether, which is why a dynamic-security ``disableClient`` does not stop a
  certificate client from connecting again (verified; it only kicks it).
* the *control listener* on 127.0.0.1 only: TLS that trusts only the gateway's own CA
  (:mod:`fleetguard.gateway.authority`), for the control client and the probe.

The ACL file holds the broker-wide grants as ``pattern`` lines (``pattern readwrite devices/%u/#``);
how it combines with dynamic security is described in :mod:`fleetguard.gateway.roles`.

Persistence is off (fleetguard's inventory is the record; a restarted broker starts empty, and
devices reconnect). Logs go to stderr, which C leaves unbuffered (stdout into a pipe is block-buffered,
so log lines would arrive late), at the levels :class:`~fleetguard.gateway.broker.MosquittoBroker`
needs to confirm reloads: ``information`` (``Reloading config.``) and ``notice`` (new connections).
Values are checked for line breaks and control characters before they are written: a value with a
newline would add a configuration line.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from fleetguard.errors import InvalidInput
from fleetguard.gateway.model import Access, TopicGrant
from fleetguard.gateway.roles import (
    ADMIN_ROLE,
    ADMIN_USERNAME,
    QUARANTINE_ROLE,
    AclType,
    RoleAcl,
    admin_acls,
    quarantine_acls,
)

__all__ = [
    "DEFAULT_GRANTS",
    "DYNSEC_PLUGIN",
    "BrokerConfig",
    "render_acl",
    "render_dynsec_config",
    "render_mosquitto_conf",
]

DEFAULT_GRANTS = (TopicGrant(Access.BOTH, "devices/%u/#"),)
"""Every device may publish and receive under its own subtree (ARCHITECTURE.md, enforcement points)."""

DYNSEC_PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
"""Where Debian's mosquitto package installs the dynamic-security plugin."""

# Limits chosen for devices that send telemetry and receive commands; each is per client.
_MAX_PACKET_SIZE = 256 * 1024  # oversized packets end the connection with reason 0x95 (verified)
_MAX_INFLIGHT = 20
_MAX_QUEUED = 1000
_MAX_KEEPALIVE_S = 600
_ACL_ACCESS = {Access.PUBLISH: "write", Access.SUBSCRIBE: "read", Access.BOTH: "readwrite"}


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Everything the broker's files say. Generated files live in ``directory``.

    ``ca_bundle``, ``server_certificate`` (with its chain) and ``server_key`` are the device
    listener's TLS material, owned by the PKI. ``user`` is the account Mosquitto runs as; when it is
    None and Mosquitto starts as root, it switches to ``mosquitto`` and cannot read mode-0600 files.
    Raises ``InvalidInput`` for a control host that is not loopback, clashing ports, or a value that
    would break a configuration line.
    """

    directory: Path
    ca_bundle: Path
    server_certificate: Path
    server_key: Path
    listen_host: str = "0.0.0.0"  # noqa: S104 - the device listener serves the network on purpose
    listen_port: int = 8883
    control_host: str = "127.0.0.1"
    control_port: int = 8884
    grants: tuple[TopicGrant, ...] = DEFAULT_GRANTS
    user: str | None = None
    plugin: Path = DYNSEC_PLUGIN
    auth_plugin: Path | None = None
    """fleetguard's auth plugin (:mod:`fleetguard.gateway.plugin`), loaded before dynamic security."""
    max_packet_size: int = _MAX_PACKET_SIZE
    max_inflight_messages: int = _MAX_INFLIGHT
    max_queued_messages: int = _MAX_QUEUED
    max_keepalive_s: int = _MAX_KEEPALIVE_S
    max_connections: int = -1

    def __post_init__(self) -> None:
        if not ipaddress.ip_address(self.control_host).is_loopback:
            raise InvalidInput(f"control host {self.control_host} must be a loopback address")
        for port in (self.listen_port, self.control_port):
            if not 1 <= port <= 65535:
                raise InvalidInput(f"port {port} is not 1-65535")
        if self.listen_port == self.control_port:
            raise InvalidInput(f"device and control listeners both use port {self.listen_port}")
        for value in (self.listen_host, self.user or "", *map(str, self._paths())):
            _require_line_value(value)

    def _paths(self) -> tuple[Path, ...]:
        paths = (self.directory, self.ca_bundle, self.server_certificate, self.server_key, self.plugin)
        return (*paths, *([self.auth_plugin] if self.auth_plugin else []))

    @property
    def conf_file(self) -> Path:
        """``mosquitto.conf``."""
        return self.directory / "mosquitto.conf"

    @property
    def acl_file(self) -> Path:
        """The ACL file with the broker-wide patterns."""
        return self.directory / "acl"

    @property
    def dynsec_file(self) -> Path:
        """The dynamic-security plugin's state; the plugin rewrites it after every change."""
        return self.directory / "dynsec.json"

    @property
    def plugin_state_file(self) -> Path:
        """The auth plugin's state (:class:`~fleetguard.gateway.plugin.StateFile`), read at start."""
        return self.directory / "fleetguard-auth.state"

    @property
    def crl_file(self) -> Path:
        """The CRLs of the fleet's issuing CAs, PEM, one after the other."""
        return self.directory / "crl.pem"

    @property
    def control_ca_file(self) -> Path:
        """The gateway CA certificate (:mod:`fleetguard.gateway.authority`)."""
        return self.directory / "local-ca.pem"

    @property
    def control_certificate(self) -> Path:
        """The control listener's server certificate."""
        return self.directory / "control.pem"

    @property
    def control_key(self) -> Path:
        """The control listener's server key (mode 0600)."""
        return self.directory / "control.key.pem"


def _require_line_value(value: str) -> None:
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value) or value != value.strip():
        raise InvalidInput(f"{value[:80]!r} cannot be written into a Mosquitto configuration line")


def render_mosquitto_conf(config: BrokerConfig) -> str:
    """Return ``mosquitto.conf`` for ``config`` (mosquitto.conf(5), Mosquitto 2.0)."""
    lines = [
        "# Written by fleetguard.gateway; edits are overwritten when the gateway starts.",
        "per_listener_settings false",
        *([f"user {config.user}"] if config.user else []),
        "persistence false",
        "allow_anonymous false",
        "check_retain_source true",
        f"max_packet_size {config.max_packet_size}",
        f"max_inflight_messages {config.max_inflight_messages}",
        f"max_queued_messages {config.max_queued_messages}",
        f"max_keepalive {config.max_keepalive_s}",
        "set_tcp_nodelay true",
        "log_dest stderr",
        *(f"log_type {level}" for level in ("error", "warning", "notice", "information")),
        "connection_messages true",
        *_auth_plugin(config),
        f"plugin {config.plugin}",
        f"plugin_opt_config_file {config.dynsec_file}",
        f"acl_file {config.acl_file}",
        "",
        f"listener {config.listen_port} {config.listen_host}",
        f"cafile {config.ca_bundle}",
        f"certfile {config.server_certificate}",
        f"keyfile {config.server_key}",
        f"crlfile {config.crl_file}",
        *_tls_client_auth(),
        f"max_connections {config.max_connections}",
        "",
        f"listener {config.control_port} {config.control_host}",
        f"cafile {config.control_ca_file}",
        f"certfile {config.control_certificate}",
        f"keyfile {config.control_key}",
        *_tls_client_auth(),
    ]
    return "\n".join(lines) + "\n"


def _auth_plugin(config: BrokerConfig) -> list[str]:
    # First, so that it decides a device's own and type topics before dynamic security is asked;
    # plugin_opt_* lines belong to the plugin line above them (mosquitto.conf(5)).
    if config.auth_plugin is None:
        return []
    return [
        f"plugin {config.auth_plugin}",
        f"plugin_opt_state_file {config.plugin_state_file}",
        f"plugin_opt_control_user {ADMIN_USERNAME}",
    ]


def _tls_client_auth() -> list[str]:
    return [
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",  # Mosquitto 2.0: the lowest version the listener accepts
    ]


def render_acl(grants: tuple[TopicGrant, ...]) -> str:
    """Return the ACL file: one ``pattern`` line per broker-wide grant (mosquitto.conf(5), acl_file)."""
    lines = ["# Written by fleetguard.gateway; edits are overwritten when the gateway starts."]
    lines += [f"pattern {_ACL_ACCESS[grant.access]} {grant.filter}" for grant in grants]
    return "\n".join(lines) + "\n"


def render_dynsec_config(admin_username: str = ADMIN_USERNAME) -> str:
    """Return the dynamic-security plugin's first state: the admin client, its role, the quarantine role.

    The admin client has no password: it authenticates with a gateway CA certificate on the control
    listener. Every default access is "deny", which defers to the ACL file (see :mod:`.roles`).
    """
    document = {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": False,
        },
        "clients": [{"username": admin_username, "roles": [{"rolename": ADMIN_ROLE}]}],
        "groups": [],
        "roles": [
            {"rolename": ADMIN_ROLE, "acls": [_acl_json(acl) for acl in admin_acls()]},
            {"rolename": QUARANTINE_ROLE, "acls": [_acl_json(acl) for acl in quarantine_acls()]},
        ],
    }
    return json.dumps(document, indent=2) + "\n"


def _acl_json(acl: RoleAcl) -> dict[str, str | bool | int]:
    kind: AclType = acl.acltype
    return {"acltype": str(kind), "topic": acl.topic, "priority": acl.priority, "allow": acl.allow}
