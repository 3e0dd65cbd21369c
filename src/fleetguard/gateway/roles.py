"""The dynamic-security roles fleetguard keeps in Mosquitto, and how grants become role ACLs.

How Mosquitto 2.0.11 decides (verified against the Debian build, see :mod:`fleetguard.gateway`): the
dynamic-security plugin is asked first. A matching role ACL decides (allow or deny); when no ACL of the
client's roles matches, or the username is not a dynamic-security client at all, the plugin's *default
access* applies, and a default of "deny" *defers* to the ACL file, whose ``pattern`` lines then decide.
So the broker-wide patterns live in the ACL file, and dynamic security holds only the exceptions:

* :data:`QUARANTINE_ROLE` denies every publish, every delivery and every subscription on ``#``, at a
  client-role priority above any other role, so it overrides every grant and pattern;
* a *grants role* per distinct set of extra grants (a device type's shared topics, say) allows exactly
  those filters. It is named after the digest of its ACLs (:func:`grants_role`), so devices with the
  same grants share one role, and a role's ACLs never change after creation: changing a role kicks
  every client that holds it, changing a device's role kicks only that device.

All four default-access entries must be "deny" (that is, defer to the ACL file). With the plugin's own
default, ``publishClientReceive`` allowed, a device that is a dynamic-security client (any quarantined
or released device) and subscribes to ``#`` receives every device's messages: the plugin allows the
delivery before the ACL file's ``read`` rule is consulted (verified), and the ACL file of 2.0.11 does
not check subscriptions at all (any SUBSCRIBE is granted; deliveries are checked).

The dynamic-security plugin of 2.0.11 does not substitute ``%u`` or ``%c`` (verified), so a grant's
pattern is expanded for the device before it becomes a role ACL.
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
    "GRANTS_ROLE_PREFIX",
    "QUARANTINE_PRIORITY",
    "QUARANTINE_ROLE",
    "RESPONSE_TOPIC",
    "AclType",
    "RoleAcl",
    "admin_acls",
    "covered",
    "grant_acls",
    "grants_role",
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


def grants_role(
    grants: Iterable[TopicGrant], common: Iterable[TopicGrant], device_id: str
) -> tuple[str, tuple[RoleAcl, ...]] | None:
    """Return the grants role ``device_id`` needs, as (name, ACLs), or None when patterns suffice.

    The name is :data:`GRANTS_ROLE_PREFIX` and the first 32 hex digits of the SHA-256 of the sorted
    ACLs, so equal grant sets share a role and a role's content never changes under its name.
    """
    patterns = tuple(common)
    acls = sorted(
        {
            acl
            for grant in grants
            if not covered(grant, patterns, device_id)
            for acl in grant_acls(grant, device_id)
        }
    )
    if not acls:
        return None
    canonical = "\n".join(f"{acl.acltype}\x00{acl.topic}\x00{acl.allow}\x00{acl.priority}" for acl in acls)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    return f"{GRANTS_ROLE_PREFIX}{digest}", tuple(acls)
