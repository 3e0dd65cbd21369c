"""The Cedar schema every fleet policy is validated against, and the default policy set.

Entities (namespace ``Fleet``):

``Device``       the principal; member of its ``DeviceType`` and ``Site``. Attributes are the inputs of a
                 decision: lifecycle ``state``; ``identity`` (certificate chain valid, revoked);
                 ``posture`` (firmware version and whether it meets the fleet's minimum, end of life,
                 known vulnerable, attestation fresh); behaviour ``risk`` (0-100); inventory facts.
``DeviceTopic``  an MQTT topic space owned by one device (``devices/<id>/#``), member of that ``Device``.
``TypeTopic``    a topic space shared by one device type (``types/<type>/#``), member of that ``DeviceType``.
``Broker``       the MQTT broker, the resource of ``connect``.

Actions: ``connect`` (to a ``Broker``), ``publish`` and ``subscribe`` (on a topic space), each with a
context of the hour of day (UTC) and the network the request comes from.

Cedar has no "allow by default": a request no ``permit`` matches is denied, and a ``forbid`` beats
every ``permit`` (Cedar's semantics), so quarantine and revocation are ``forbid`` policies that no
operator ``permit`` can override.
"""

from __future__ import annotations

import functools

import cedarpy

__all__ = ["DEFAULT_POLICIES", "SCHEMA", "cedar_schema"]

SCHEMA = """\
namespace Fleet {
  entity DeviceType;
  entity Site;
  type Identity = { certificate_valid: Bool, revoked: Bool };
  type Posture = {
    firmware_version: String,
    firmware_compliant: Bool,
    end_of_life: Bool,
    known_vulnerable: Bool,
    attestation_fresh: Bool,
  };
  entity Device in [DeviceType, Site] = {
    state: String,
    manufacturer: String,
    model: String,
    type: DeviceType,
    site: Site,
    labels: Set<String>,
    identity: Identity,
    posture: Posture,
    risk: Long,
  };
  entity DeviceTopic in [Device] = { filter: String };
  entity TypeTopic in [DeviceType] = { filter: String };
  entity Broker;
  type Request = { hour: Long, network: String };
  action connect appliesTo { principal: Device, resource: Broker, context: Request };
  action publish, subscribe appliesTo {
    principal: Device,
    resource: [DeviceTopic, TypeTopic],
    context: Request,
  };
}
"""

DEFAULT_POLICIES = """\
// fleetguard's default policy set. Every policy needs an @id: decisions name the ids that decided them.

@id("active-devices-connect")
permit (principal, action == Fleet::Action::"connect", resource)
when { principal.state == "active" };

@id("active-devices-own-topics")
permit (
  principal,
  action in [Fleet::Action::"publish", Fleet::Action::"subscribe"],
  resource is Fleet::DeviceTopic
)
when { principal.state == "active" && resource in principal };

@id("active-devices-type-topics")
permit (
  principal,
  action in [Fleet::Action::"publish", Fleet::Action::"subscribe"],
  resource is Fleet::TypeTopic
)
when { principal.state == "active" && resource in principal.type };

@id("quarantined-devices-nothing")
forbid (principal, action, resource)
when { principal.state == "quarantined" };

@id("untrusted-identity-nothing")
forbid (principal, action, resource)
when { principal.identity.revoked || !principal.identity.certificate_valid };

@id("end-of-life-firmware-nothing")
forbid (principal, action, resource)
when { principal.posture.end_of_life };
"""


@functools.cache
def cedar_schema() -> cedarpy.Schema:
    """Return the parsed schema (parsed once per process)."""
    return cedarpy.Schema.from_str(SCHEMA)
