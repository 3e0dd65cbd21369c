"""Dynamic-security roles: the quarantine role, and grants turned into per-device, content-named roles."""

from __future__ import annotations

import pytest

from fleetguard.gateway.config import DEFAULT_GRANTS
from fleetguard.gateway.errors import TopicFilterInvalid
from fleetguard.gateway.model import Access, TopicGrant
from fleetguard.gateway.roles import (
    DEVICE_ROLE_PREFIX,
    AclType,
    RoleAcl,
    covered,
    device_role,
    grant_acls,
    quarantine_acls,
)

SENSOR = TopicGrant(Access.BOTH, "types/sensor/#")


def test_quarantine_denies_send_receive_and_both_kinds_of_subscription_on_everything() -> None:
    acls = quarantine_acls()
    assert {acl.acltype for acl in acls} == {
        AclType.PUBLISH_CLIENT_SEND, AclType.PUBLISH_CLIENT_RECEIVE,
        AclType.SUBSCRIBE_LITERAL, AclType.SUBSCRIBE_PATTERN,
    }  # fmt: skip
    assert all(acl.topic == "#" and not acl.allow for acl in acls)


def test_a_subscribe_grant_allows_the_subscription_and_each_delivery() -> None:
    assert grant_acls(TopicGrant(Access.SUBSCRIBE, "types/cam/cmd/+"), "dev-1") == (
        RoleAcl(AclType.SUBSCRIBE_PATTERN, "types/cam/cmd/+", allow=True),
        RoleAcl(AclType.PUBLISH_CLIENT_RECEIVE, "types/cam/cmd/+", allow=True),
    )
    assert grant_acls(TopicGrant(Access.PUBLISH, "up/%u"), "dev-1") == (
        RoleAcl(AclType.PUBLISH_CLIENT_SEND, "up/dev-1", allow=True),
    )


def test_the_device_pattern_covers_the_device_topic_but_not_a_type_topic() -> None:
    assert covered(TopicGrant(Access.PUBLISH, "devices/dev-1/#"), DEFAULT_GRANTS, "dev-1")
    assert covered(TopicGrant(Access.BOTH, "devices/%u/#"), DEFAULT_GRANTS, "dev-1")
    assert not covered(TopicGrant(Access.BOTH, "devices/dev-2/#"), DEFAULT_GRANTS, "dev-1")
    assert not covered(SENSOR, DEFAULT_GRANTS, "dev-1")
    read_only = (TopicGrant(Access.SUBSCRIBE, "devices/%u/#"),)
    assert not covered(TopicGrant(Access.BOTH, "devices/%u/#"), read_only, "dev-1")


def test_no_role_when_the_patterns_cover_every_grant() -> None:
    assert device_role([TopicGrant(Access.BOTH, "devices/%u/#")], DEFAULT_GRANTS, "dev-1") is None
    assert device_role([], DEFAULT_GRANTS, "dev-1") is None


def test_the_role_carries_the_broker_wide_grants_so_the_plugin_decides_own_traffic() -> None:
    role = device_role([SENSOR, TopicGrant(Access.BOTH, "devices/%u/#")], DEFAULT_GRANTS, "dev-1")
    assert role is not None
    name, acls = role
    assert name.startswith(DEVICE_ROLE_PREFIX)
    assert len(name) == len(DEVICE_ROLE_PREFIX) + 32
    assert acls == tuple(sorted(
        RoleAcl(kind, topic, allow=True)
        for topic in ("devices/dev-1/#", "types/sensor/#")
        for kind in (AclType.PUBLISH_CLIENT_SEND, AclType.PUBLISH_CLIENT_RECEIVE)
    ))  # fmt: skip


def test_devices_with_the_same_grants_get_roles_of_their_own() -> None:
    first = device_role([SENSOR], DEFAULT_GRANTS, "dev-1")
    second = device_role([SENSOR], DEFAULT_GRANTS, "dev-2")
    assert first is not None
    assert second is not None
    assert first[0] != second[0]


def test_a_client_id_pattern_stays_with_the_acl_file() -> None:
    common = (*DEFAULT_GRANTS, TopicGrant(Access.BOTH, "clients/%c/#"))
    role = device_role([SENSOR], common, "dev-1")
    assert role is not None
    assert all(not acl.topic.startswith("clients/") for acl in role[1])


def test_the_role_name_changes_with_the_grants_and_not_with_their_order() -> None:
    camera = TopicGrant(Access.PUBLISH, "types/cam/#")
    one = device_role([SENSOR, camera], DEFAULT_GRANTS, "dev-1")
    two = device_role([camera, SENSOR, SENSOR], DEFAULT_GRANTS, "dev-1")
    three = device_role([SENSOR], DEFAULT_GRANTS, "dev-1")
    assert one is not None
    assert two is not None
    assert three is not None
    assert one == two
    assert one[0] != three[0]


def test_a_per_device_pattern_gives_a_per_device_role() -> None:
    own = TopicGrant(Access.PUBLISH, "telemetry/%u")
    first = device_role([own], DEFAULT_GRANTS, "dev-1")
    second = device_role([own], DEFAULT_GRANTS, "dev-2")
    assert first is not None
    assert second is not None
    assert first[0] != second[0]
    assert RoleAcl(AclType.PUBLISH_CLIENT_SEND, "telemetry/dev-1", allow=True) in first[1]
    assert all("dev-2" not in acl.topic for acl in first[1])


def test_a_client_id_grant_is_refused_for_a_role() -> None:
    with pytest.raises(TopicFilterInvalid, match="%c cannot be expanded"):
        device_role([TopicGrant(Access.BOTH, "clients/%c/#")], DEFAULT_GRANTS, "dev-1")
