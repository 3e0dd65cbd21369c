"""The schema and the default set agree with each other and with the Python model."""

from __future__ import annotations

import cedarpy
import pytest

from fleetguard.trust import DEFAULT_POLICIES, SCHEMA, Action, ResourceKind
from fleetguard.trust.schema import cedar_schema


def test_the_schema_is_parsed_once() -> None:
    assert cedar_schema() is cedar_schema()
    assert "namespace Fleet" in SCHEMA


def test_the_default_policies_validate_against_the_schema() -> None:
    result = cedarpy.validate_policies(DEFAULT_POLICIES, cedar_schema())

    assert result.validation_passed
    assert result.errors == []


@pytest.mark.parametrize(
    ("action", "kind"),
    [
        (Action.CONNECT, ResourceKind.BROKER),
        (Action.PUBLISH, ResourceKind.DEVICE_TOPIC),
        (Action.PUBLISH, ResourceKind.TYPE_TOPIC),
        (Action.SUBSCRIBE, ResourceKind.DEVICE_TOPIC),
        (Action.SUBSCRIBE, ResourceKind.TYPE_TOPIC),
    ],
)
def test_every_action_and_resource_kind_of_the_model_is_in_the_schema(
    action: Action, kind: ResourceKind
) -> None:
    policy = (
        f'permit (principal, action == Fleet::Action::"{action.value}", resource is Fleet::{kind.value});'
    )

    assert cedarpy.validate_policies(policy, cedar_schema()).validation_passed


@pytest.mark.parametrize(
    ("action", "kind"),
    [(Action.CONNECT, ResourceKind.DEVICE_TOPIC), (Action.PUBLISH, ResourceKind.BROKER)],
)
def test_the_schema_refuses_an_action_on_the_wrong_resource(action: Action, kind: ResourceKind) -> None:
    policy = (
        f'permit (principal, action == Fleet::Action::"{action.value}", resource is Fleet::{kind.value});'
    )

    assert not cedarpy.validate_policies(policy, cedar_schema()).validation_passed
