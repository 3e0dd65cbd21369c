"""The dynamic-security roles fleetguard keeps in Mosquitto, and how grants become role ACLs.

How Mosquitto 2.0.11 decides (verified against the Debian build, see :mod:`fleetguard.gateway`): the
dynamic-security plugin is asked first. A matching role ACL decides (allow or deny) and the ACL file is
then not consulted; when no ACL of the client's roles matches, or the username is not a
dynamic-security client at all, the plugin's *default access* applies, and a default of "deny"
*defers* to the ACL file, whose ``pattern`` lines then decide. So the broker-wide patterns live in the
ACL file, and dynamic security holds the exceptions:

* :data:`QUARANTINE_ROLE` denies every publish, every delivery and every subscription on ``#``, at a
  client-role priority above any other role, so it overrides every grant and pattern;
* a *device role* (:func:`device_role`) for a device with grants beyond the broker-wide patterns (its
  type's shared topics, say). It allows those grants **and the broker-wide grants expanded for the
  device**, so the device's everyday traffic on its own subtree is decided by one role lookup in the
  plugin and never reaches the ACL file's pattern check, which is the dearer of the two: measured
  with callgrind on 2.0.11 (8 TLS publishers on their own topics, QoS 0), an open broker spends
  16,753 instructions per delivered message; the ACL file's pattern adds 1,834 (+10.9 %); the plugin
  loaded plus a role that holds only the type grants (shared by the type's devices, fleetguard's
  earlier design) adds 2,678 (+16.0 %); a dynamic-security group per type instead adds 2,738 (+16.3 %);
  per-device ``user`` sections in the ACL file for the type grants add 2,518 (+15.0 %); this device
  role adds 1,166 (+7.0 %).

A device role is named after the digest of the device id and its ACLs, so it belongs to one device,
and its ACLs never change under its name: a device whose grants change gets a new role and its old one
is deleted (changing a role would kick every holder). One role per device also keeps the plugin's load
linear: a role or group that N clients hold is loaded in O(N^2) (measured: 50,000 clients holding one
shared role or one group take 36 s to load, the same clients with a role each 0.6 s), which would
outlast the broker's start-up timeout long before a million devices. The price is a longer
``dynsec.json``, which the plugin rewrites after every change before it kicks anyone: with 5,000
devices holding a role each (3.6 MB) a quarantine's kick took 70 ms (p50; verified p99 111 ms) against
19 ms (p99 49 ms) with one shared role (0.6 MB), on 2 cores (``bench/broker.py --only quarantine``).
Roles named with
:data:`GRANTS_ROLE_PREFIX` are the shared roles of earlier versions: they are taken from a device that
holds one, never deleted (other devices may hold them).

All four default-access entries must be "deny" (that is, defer to the ACL file). With the plugin's own
default, ``publishClientReceive`` allowed, a device that is a dynamic-security client (any quarantined
or released device) and subscribes to ``#`` receives every device's messages: the plugin allows the
delivery before the ACL file's ``read`` rule is consulted (verified), and the ACL file of 2.0.11 does
not check subscriptions at all (any SUBSCRIBE is granted; deliveries are checked).

The dynamic-security plugin of 2.0.11 does not substitute ``%u`` or ``%c`` (verified), so a grant's
pattern is expanded for the device before it becomes a role ACL; a broker-wide ``%c`` pattern cannot
be, and stays with the ACL file (the role does not match, the plugin defers).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from fleetguard.gateway.model import TopicGrant
from fleetguard.gateway.topics import expand_pattern

__all__ = [
    "ADMIN_ROLE",
    "ADMIN_USERNAME",
    "CONTROL_TOPIC",
    "DEVICE_ROLE_PREFIX",
    "GRANTS_ROLE_PREFIX",
    "QUARANTINE_PRIORITY",
    "QUARANTINE_ROLE",
    "RESPONSE_TOPIC",
    "AclType",
    "RoleAcl",
    "admin_acls",
    "covered",
    "device_role",
    "grant_acls",
    "quarantine_acls",
]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"

ADMIN_USERNAME = "fleetguard admin"
"""The control client's username (its certificate's CN). A device id never contains a space
(fleetguard.inventory.model), so no device certificate can carry this name."""
ADMIN_ROLE = "fleetguard-admin"
QUARANTINE_ROLE = "fleetguard-quarantine"
QUARANTINE_PRIORITY = 1_000_000
"""Client-role priority of the quarantine role: dynamic security checks a client's roles from the
highest priority down and stops at the first matching ACL."""
GRANTS_ROLE_PREFIX = "fleetguard-grants-"
"""Prefix of the shared grants roles of earlier versions (see the module notes)."""
DEVICE_ROLE_PREFIX = "fleetguard-device-"
"""Prefix of the per-device roles (:func:`device_role`)."""


class AclType(enum.StrEnum):
    """Dynamic-security ACL types (mosquitto dynamic-security plugin, 2.0)."""

    PUBLISH_CLIENT_SEND = "publishClientSend"
    PUBLISH_CLIENT_RECEIVE = "publishClientReceive"
    SUBSCRIBE_LITERAL = "subscribeLiteral"
    SUBSCRIBE_PATTERN = "subscribePattern"
    UNSUBSCRIBE_LITERAL = "unsubscribeLiteral"
    UNSUBSCRIBE_PATTERN = "unsubscribePattern"


@dataclass(frozen=True, slots=True, order=True)
class RoleAcl:
    """One ACL of a dynamic-security role."""

    acltype: AclType
    topic: str
    allow: bool
    priority: int = 0


def quarantine_acls() -> tuple[RoleAcl, ...]:
    """Deny everything a client can do with messages: send, receive, subscribe (any filter)."""
    return tuple(
        RoleAcl(kind, "#", allow=False)
        for kind in (
            AclType.PUBLISH_CLIENT_SEND,
            AclType.PUBLISH_CLIENT_RECEIVE,
            AclType.SUBSCRIBE_LITERAL,
            AclType.SUBSCRIBE_PATTERN,
        )
    )


def admin_acls() -> tuple[RoleAcl, ...]:
    """Allow the control client to send commands and read the answers, nothing else."""
    topic = "$CONTROL/dynamic-security/#"
    return (
        RoleAcl(AclType.PUBLISH_CLIENT_SEND, topic, allow=True),
        RoleAcl(AclType.PUBLISH_CLIENT_RECEIVE, topic, allow=True),
        RoleAcl(AclType.SUBSCRIBE_PATTERN, topic, allow=True),
    )


def grant_acls(grant: TopicGrant, device_id: str) -> tuple[RoleAcl, ...]:
    """Return the role ACLs that give ``device_id`` what ``grant`` allows (``%u`` expanded).

    Subscribing needs two ACLs: ``subscribePattern`` for the SUBSCRIBE and ``publishClientReceive``
    for each delivery (the default access defers deliveries to the ACL file, which would deny them).
    Raises ``TopicFilterInvalid`` for a ``%c`` pattern.
    """
    topic = expand_pattern(grant.filter, username=device_id)
    acls = []
    if grant.access.publishes:
        acls.append(RoleAcl(AclType.PUBLISH_CLIENT_SEND, topic, allow=True))
    if grant.access.subscribes:
        acls.append(RoleAcl(AclType.SUBSCRIBE_PATTERN, topic, allow=True))
        acls.append(RoleAcl(AclType.PUBLISH_CLIENT_RECEIVE, topic, allow=True))
    return tuple(acls)


def covered(grant: TopicGrant, common: Iterable[TopicGrant], device_id: str) -> bool:
    """Whether a broker-wide pattern already gives ``device_id`` everything ``grant`` does."""
    if "%c" in grant.filter.split("/"):
        return False
    wanted = expand_pattern(grant.filter, username=device_id)
    return any(
        pattern.access.covers(grant.access)
        and "%c" not in pattern.filter.split("/")
        and expand_pattern(pattern.filter, username=device_id) == wanted
        for pattern in common
    )


def device_role(
    grants: Iterable[TopicGrant], common: Iterable[TopicGrant], device_id: str
) -> tuple[str, tuple[RoleAcl, ...]] | None:
    """Return the role ``device_id`` needs, as (name, ACLs), or None when patterns suffice.

    The ACLs allow every grant the broker-wide patterns ``common`` do not cover, and, when there is
    any, the patterns themselves (expanded for the device; ``%c`` patterns stay with the ACL file), so
    that the plugin decides the device's everyday traffic: sending and each delivery; subscribing is
    left to the ACL file, which grants every SUBSCRIBE. The name is :data:`DEVICE_ROLE_PREFIX` and
    the first 32 hex digits of the SHA-256 of the device id and the sorted ACLs. Raises
    ``TopicFilterInvalid`` for a ``%c`` grant.
    """
    patterns = tuple(common)
    extra = {
        acl
        for grant in grants
        if not covered(grant, patterns, device_id)
        for acl in grant_acls(grant, device_id)
    }
    if not extra:
        return None
    broker_wide = {
        acl
        for pattern in patterns
        if "%c" not in pattern.filter.split("/")
        for acl in grant_acls(pattern, device_id)
    }
    # The ACL file grants every SUBSCRIBE (see the module notes), so subscribePattern ACLs would only
    # make dynsec.json longer, and the plugin rewrites all of it after every change.
    acls = sorted(acl for acl in extra | broker_wide if acl.acltype is not AclType.SUBSCRIBE_PATTERN)
    canonical = "\n".join(
        [device_id, *(f"{acl.acltype}\x00{acl.topic}\x00{acl.allow}\x00{acl.priority}" for acl in acls)]
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    return f"{DEVICE_ROLE_PREFIX}{digest}", tuple(acls)
