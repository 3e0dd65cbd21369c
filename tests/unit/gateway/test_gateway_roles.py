"""Dynamic-security roles: the quarantine role, and grants turned into shared, content-named roles."""

from __future__ import annotations

import pytest

from fleetguard.gateway.config import DEFAULT_GRANTS
from fleetguard.gateway.errors import TopicFilterInvalid
from fleetguard.gateway.model import Access, TopicGrant
from fleetguard.gateway.roles import (
    GRANTS_ROLE_PREFIX,
    AclType,
    RoleAcl,
    covered,
    grant_acls,
    grants_role,
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
    assert grants_role([TopicGrant(Access.BOTH, "devices/%u/#")], DEFAULT_GRANTS, "dev-1") is None
    assert grants_role([], DEFAULT_GRANTS, "dev-1") is None


def test_devices_with_the_same_grants_share_one_role() -> None:
    first = grants_role([SENSOR, TopicGrant(Access.BOTH, "devices/%u/#")], DEFAULT_GRANTS, "dev-1")
    second = grants_role([SENSOR], DEFAULT_GRANTS, "dev-2")
    assert first is not None
    assert second is not None
    assert first == second
    assert first[0].startswith(GRANTS_ROLE_PREFIX)
    assert len(first[0]) == len(GRANTS_ROLE_PREFIX) + 32


def test_the_role_name_changes_with_the_grants_and_not_with_their_order() -> None:
    camera = TopicGrant(Access.PUBLISH, "types/cam/#")
    one = grants_role([SENSOR, camera], DEFAULT_GRANTS, "dev-1")
    two = grants_role([camera, SENSOR, SENSOR], DEFAULT_GRANTS, "dev-1")
    three = grants_role([SENSOR], DEFAULT_GRANTS, "dev-1")
    assert one is not None
    assert two is not None
    assert three is not None
    assert one == two
    assert one[0] != three[0]


def test_a_per_device_pattern_gives_a_per_device_role() -> None:
    own = TopicGrant(Access.PUBLISH, "telemetry/%u")
    first = grants_role([own], DEFAULT_GRANTS, "dev-1")
    second = grants_role([own], DEFAULT_GRANTS, "dev-2")
    assert first is not None
    assert second is not None
    assert first[0] != second[0]
    assert first[1] == (RoleAcl(AclType.PUBLISH_CLIENT_SEND, "telemetry/dev-1", allow=True),)


def test_a_client_id_grant_is_refused_for_a_role() -> None:
    with pytest.raises(TopicFilterInvalid, match="%c cannot be expanded"):
        grants_role([TopicGrant(Access.BOTH, "clients/%c/#")], DEFAULT_GRANTS, "dev-1")
