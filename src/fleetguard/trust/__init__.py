"""Zero trust: the policy decision point (Cedar), posture, change analysis and continuous evaluation.

Every access a device asks for (connect to the broker, publish or subscribe on a topic space) is
decided by :class:`PolicyDecisionPoint` from the device's identity, lifecycle state, posture and
behaviour risk (:class:`DeviceFacts`) under a validated :class:`PolicySet`. Enforcement points live
elsewhere (``fleetguard.gateway`` for the MQTT broker) and are driven through a small interface.
"""

from __future__ import annotations

from fleetguard.trust.diff import OutcomeChange, diff_policies
from fleetguard.trust.errors import (
    PolicyConflict,
    PolicyInvalid,
    PolicySetEmpty,
    TrustError,
    TrustInputInvalid,
)
from fleetguard.trust.model import (
    Action,
    Decision,
    DeviceFacts,
    Outcome,
    Posture,
    RequestContext,
    Resource,
    ResourceKind,
)
from fleetguard.trust.pdp import PolicyDecisionPoint, candidate_resources, device_topic, type_topic
from fleetguard.trust.policy import PolicySet, parse_policy_set
from fleetguard.trust.posture import FirmwarePolicy, compare_versions, posture_of
from fleetguard.trust.schema import DEFAULT_POLICIES, SCHEMA

__all__ = [
    "DEFAULT_POLICIES",
    "SCHEMA",
    "Action",
    "Decision",
    "DeviceFacts",
    "FirmwarePolicy",
    "Outcome",
    "OutcomeChange",
    "PolicyConflict",
    "PolicyDecisionPoint",
    "PolicyInvalid",
    "PolicySet",
    "PolicySetEmpty",
    "Posture",
    "RequestContext",
    "Resource",
    "ResourceKind",
    "TrustError",
    "TrustInputInvalid",
    "candidate_resources",
    "compare_versions",
    "device_topic",
    "diff_policies",
    "parse_policy_set",
    "posture_of",
    "type_topic",
]
