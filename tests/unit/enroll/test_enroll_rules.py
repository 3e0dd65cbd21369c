"""The zero-touch decision table and the reading of identities from factory certificates, without I/O."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from fleetguard.enroll import FactoryCertificateRefused, FactoryIdentity, ModelAttribute
from fleetguard.enroll.identity import factory_identity
from fleetguard.enroll.rules import Decision, EnrollmentRule, RuleMode, Verdict, decide
from fleetguard.inventory.lifecycle import State
from fleetguard.inventory.model import Device
from fleetguard.types import DeviceId, Sha256

NOW = dt.datetime(2026, 3, 14, 12, 0, tzinfo=dt.UTC)
IDENTITY = FactoryIdentity("Acme", "Cam-X", "ACME-1", Sha256(bytes(32)))


def _rule(mode: RuleMode, *, register_unknown: bool = False, model: str = "Cam-X") -> EnrollmentRule:
    return EnrollmentRule("Acme", model, mode, register_unknown, NOW, NOW)


def _device(state: State = State.REGISTERED, model: str = "") -> Device:
    return Device(
        id=DeviceId("cam-1"), serial="ACME-1", manufacturer="Acme", model=model, device_type=None,
        hardware_revision="", firmware_version="", mud_url=None, site=None, owner="", labels={}, state=state,
        created_at=NOW, updated_at=NOW, last_seen=None, version=1,
    )  # fmt: skip


AUTO = _rule(RuleMode.AUTO)
CLAIM = _rule(RuleMode.AUTO, register_unknown=True)
APPROVE = _rule(RuleMode.APPROVE)
ANY = _rule(RuleMode.AUTO, model="*")
ENROLL = Decision(Verdict.ENROLL, "rule Acme/Cam-X: the serial is registered")
QUEUE = Decision(Verdict.QUEUE, "rule Acme/Cam-X needs an operator's approval")
RETIRED = _device(State.DECOMMISSIONED)
OTHER_MODEL = "the factory certificate is for model 'Cam-X'; the inventory records 'Cam-Y'"


@pytest.mark.parametrize(
    ("rule", "device", "expected"),
    [
        (None, _device(), Decision(Verdict.REFUSE, "no enrollment rule for 'Acme' model 'Cam-X'")),
        (AUTO, _device(), ENROLL),
        (AUTO, _device(State.ACTIVE, "Cam-X"), ENROLL),
        (AUTO, None, Decision(Verdict.REFUSE, "serial 'ACME-1' of 'Acme' is not registered")),
        (CLAIM, None, Decision(Verdict.REGISTER, "rule Acme/Cam-X registers unknown devices")),
        (APPROVE, None, QUEUE),
        (APPROVE, _device(), QUEUE),
        (ANY, _device(model="Cam-Y"), Decision(Verdict.REFUSE, OTHER_MODEL)),
        (AUTO, _device(State.QUARANTINED), Decision(Verdict.REFUSE, "device 'cam-1' is quarantined")),
        (APPROVE, RETIRED, Decision(Verdict.REFUSE, "device 'cam-1' is decommissioned")),
    ],
    ids=[
        "no-rule", "auto-registered", "auto-active-same-model", "auto-unknown", "auto-registers-unknown",
        "approve-unknown", "approve-known", "other-model", "quarantined", "decommissioned",
    ],
)  # fmt: skip
def test_decision_table(rule: EnrollmentRule | None, device: Device | None, expected: Decision) -> None:
    assert decide(rule, IDENTITY, device) == expected


# --- identities --------------------------------------------------------------------------------------


def _certificate(*attributes: x509.NameAttribute) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Acme IDevID CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name(list(attributes)))
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


SERIAL = x509.NameAttribute(NameOID.SERIAL_NUMBER, "ACME-1")
OU = x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Cam-X")


def test_identity_comes_from_serial_number_and_the_model_attribute() -> None:
    certificate = _certificate(x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Not Acme"), OU, SERIAL)

    identity = factory_identity(certificate, "Acme", ModelAttribute.OU)

    # The manufacturer is the trust-store name the chain verified to, never the subject's O.
    assert (identity.manufacturer, identity.model, identity.serial) == ("Acme", "Cam-X", "ACME-1")
    assert len(identity.fingerprint) == 32


def _serial(value: str) -> x509.NameAttribute:
    # UTF8String: a PrintableString (cryptography's default for serialNumber) cannot hold control chars.
    return x509.NameAttribute(NameOID.SERIAL_NUMBER, value, _type=_ASN1Type.UTF8String)


@pytest.mark.parametrize(
    ("attributes", "attribute", "reason"),
    [
        ((OU,), ModelAttribute.OU, "the subject holds 0 serialNumber attributes, not one"),
        ((SERIAL, SERIAL, OU), ModelAttribute.OU, "the subject holds 2 serialNumber attributes, not one"),
        ((SERIAL,), ModelAttribute.OU, "the subject holds 0 OU attributes, not one"),
        ((SERIAL, OU), ModelAttribute.TITLE, "the subject holds 0 TITLE attributes, not one"),
        ((_serial(" "), OU), ModelAttribute.OU, "the subject's serialNumber is empty"),
        ((_serial("A\nB"), OU), ModelAttribute.OU, "serialNumber holds control characters"),
        ((_serial("A" * 129), OU), ModelAttribute.OU, "serialNumber is over 128 characters"),
        ((SERIAL, x509.NameAttribute(OU.oid, "M" * 257)), ModelAttribute.OU, "OU is over 256 characters"),
    ],
)
def test_subject_without_one_clean_serial_and_model_is_refused(
    attributes: tuple[x509.NameAttribute, ...], attribute: ModelAttribute, reason: str
) -> None:
    with pytest.raises(FactoryCertificateRefused, match=reason):
        factory_identity(_certificate(*attributes), "Acme", attribute)


@pytest.mark.parametrize("attribute", list(ModelAttribute))
def test_every_model_attribute_is_readable(attribute: ModelAttribute) -> None:
    certificate = _certificate(SERIAL, x509.NameAttribute(attribute.oid, "Model 7"))
    assert factory_identity(certificate, "Acme", attribute).model == "Model 7"
