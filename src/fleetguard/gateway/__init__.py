"""The MQTT gateway: Mosquitto 2 as the policy enforcement point for device messaging.

Devices connect over mutual TLS; the broker takes the certificate's CN (the device id) as the MQTT
username. Broker-wide rights (``devices/%u/#``) are ``pattern`` lines of Mosquitto's ACL file; the
exceptions the policy decision point asks for, a deny-all quarantine and per-device extra grants (a
device type's topics), are roles of Mosquitto's dynamic-security plugin, changed at run time over
MQTT; a device's role carries its broker-wide grants too, so the plugin decides its everyday traffic
(:mod:`.roles` has the measurements). Where it builds (``FLEETGUARD_MQTT_PLUGIN``), fleetguard's own
auth plugin (:mod:`.plugin`) is loaded before dynamic security and holds the quarantines and the
type grants in a hash table: it allows a device its own subtree and its type's topics, denies a
quarantined device everything, and defers the rest; a change is a table update and a kick, whatever
the fleet's size, instead of a rewrite of ``dynsec.json``. Revocation is the CRL in
the broker's ``crlfile`` plus a kick. Every change is verified before it counts as done: fleetguard
reads the roles back and a probe connects with the device's identity and reads the broker's reason
codes (:mod:`fleetguard.gateway.probe`).

Modules: :mod:`.topics` (topic filters), :mod:`.model` (requests and results), :mod:`.roles`
(dynamic-security roles), :mod:`.config` (configuration files), :mod:`.crlfile` (what may go into the
crlfile), :mod:`.authority` (the gateway's loopback CA), :mod:`.dynsec` (control client),
:mod:`.plugin` (the auth plugin: build, state file, commands),
:mod:`.probe`, :mod:`.broker` (the supervised process), :mod:`.enforcement` (the enforcer) and
:mod:`.service` (all of it wired together).

What Mosquitto 2.0.11 (Debian bookworm's build) was verified to do, with certificate clients
(``require_certificate`` + ``use_identity_as_username``), by scratch experiments and by
``tests/integration/test_gateway_mosquitto.py``:

1. Password authentication is skipped for certificate clients, so dynamic security's
   ``disableClient`` does not keep a device out: it kicks it, and the device reconnects and publishes.
2. ``addClientRole``/``removeClientRole`` (also ``disableClient``, ``deleteClient``, ``modifyRole``)
   kick the username's live connections on every listener before the command is answered; a client
   saw the disconnect about 1 ms after the command was sent (reason 0x98, administrative action).
3. SIGHUP reloads the ``crlfile``: new handshakes with a revoked certificate fail, but live sessions
   of that certificate stay connected and keep publishing, so revocation needs a kick too. A missing
   or unparsable ``crlfile`` at SIGHUP is logged as an error and the broker then accepts revoked
   certificates (fails open) until restarted; at start-up it exits instead. An expired CRL refuses
   every handshake.
4. ACL file and dynamic security: the plugin is asked first; a matching role ACL decides, allow or
   deny; with no match, or for a username that is no dynamic-security client, a "deny" default
   defers to the ACL file. The ACL file of 2.0.11 grants every SUBSCRIBE and checks deliveries
   (``read``) instead; the plugin's stock default ``publishClientReceive: allow`` would let a
   dynamic-security client subscribed to ``#`` receive every device's messages, so every default is
   set to deny. Role ACL topics are literal (no ``%u``/``%c``).
5. Over MQTT v5 a publish the ACLs deny is answered with PUBACK 0x87 (not authorized), a denied
   subscription with SUBACK 0x87; over MQTT 3.1.1 the PUBACK is sent as usual and the message is
   dropped (no subscriber receives it), and a denied subscription gets SUBACK 0x80.
6. A packet larger than ``max_packet_size`` ends the connection (DISCONNECT 0x95 over v5).
7. Logging to stdout into a pipe is block-buffered (lines arrive at exit); stderr is not. A TLS
   connection that closes before the TLS accept is logged without its port.
8. Started as root, Mosquitto switches to the ``mosquitto`` user unless ``user`` says otherwise, and
   then cannot read mode-0600 keys; the gateway sets ``user`` to the account it runs as.
9. A role ACL that allows decides without the ACL file: callgrind counts the pattern check's
   instructions (a ``malloc``, the ``%u`` expansion, ``mosquitto_topic_matches_sub``) only for
   messages no role matches. A quarantined device whose role grants its type's topics is still
   denied them (PUBACK and SUBACK 0x87): the quarantine role's client priority wins.
10. The ACL file's ``user`` sections are kept in a linked list that is searched for every ``topic``
    line, so parsing is quadratic in the number of users, and the broker serves nothing while it
    parses (at start and at every SIGHUP, the CRL's included). Measured with one ``topic`` line per
    user: 10,000 users 0.6 s, 30,000 users 5.2 s, 100,000 users 89 s (reload) to 106 s (start). So
    per-device grants are not written into the ACL file.
11. Dynamic security loads a role or group that N clients hold in O(N^2) (50,000 clients in one
    shared role or one group: 36 s, beyond the start-up timeout; with a role each: 0.6 s), and it
    rewrites all of ``dynsec.json`` after every change: with 50,000 clients, one ``addClientRole``
    took 25 ms (clients without roles) to 170 ms (a one-ACL role each). ``deleteRole`` of a missing
    role answers ``Role not found``.
12. Plugins are asked in the order of their ``plugin`` lines, the first answer other than "defer"
    decides, and the ACL file is asked last; ``plugin_opt_*`` lines belong to the ``plugin`` line
    above them, and a value keeps its spaces (``plugin_opt_control_user fleetguard admin``). A
    plugin that fails ``mosquitto_plugin_init`` stops the broker from starting (exit, logged).
13. A publish on ``$CONTROL/<name>/...`` is ACL-checked like any other before the MOSQ_EVT_CONTROL
    callback for that topic runs, so a device's publish there is answered 0x87 when the plugin
    denies it; a plugin's denial of a SUBSCRIBE is answered SUBACK 0x87 (the ACL file would grant
    it). ``mosquitto_kick_client_by_username`` disconnects every connection of the username on
    every listener, as dynamic security's kicks do (verified by the integration tests).
"""

from __future__ import annotations

from fleetguard.gateway.broker import MosquittoBroker, find_mosquitto
from fleetguard.gateway.config import DEFAULT_GRANTS, BrokerConfig
from fleetguard.gateway.enforcement import BrokerEnforcer
from fleetguard.gateway.errors import (
    BrokerCommandFailed,
    BrokerReloadFailed,
    BrokerStartFailed,
    BrokerUnavailable,
    CrlRejected,
    GatewayError,
    ProbeInconclusive,
    TopicFilterInvalid,
)
from fleetguard.gateway.model import (
    Access,
    DeviceAccess,
    EnforcementAction,
    EnforcementResult,
    Outcome,
    TopicGrant,
    enforcement_event,
)
from fleetguard.gateway.service import GatewayService
from fleetguard.gateway.topics import validate_topic_filter

__all__ = [
    "DEFAULT_GRANTS",
    "Access",
    "BrokerCommandFailed",
    "BrokerConfig",
    "BrokerEnforcer",
    "BrokerReloadFailed",
    "BrokerStartFailed",
    "BrokerUnavailable",
    "CrlRejected",
    "DeviceAccess",
    "EnforcementAction",
    "EnforcementResult",
    "GatewayError",
    "GatewayService",
    "MosquittoBroker",
    "Outcome",
    "ProbeInconclusive",
    "TopicFilterInvalid",
    "TopicGrant",
    "enforcement_event",
    "find_mosquitto",
    "validate_topic_filter",
]
