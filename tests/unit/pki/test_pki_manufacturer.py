"""Manufacturer (IDevID) trust: a factory certificate is accepted only under its own manufacturer's CAs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetguard.pki.errors import FactoryCertificateRejected, ProfileInputRejected
from fleetguard.pki.manufacturer import MAX_BUNDLE_SIZE, ManufacturerTrustStore

NOW = dt.datetime(2026, 3, 14, 12, 0, tzinfo=dt.UTC)
FOREVER = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)  # IEEE 802.1AR 8.5: no well-defined expiry


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=3650))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(ski, critical=False)
    )
    if issuer is not None:
        issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Manufacturer:
    root: x509.Certificate
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey

    def idevid(
        self,
        serial: str = "ACME-000123",
        not_before: dt.datetime = NOW - dt.timedelta(days=30),
        not_after: dt.datetime = FOREVER,
        signer: ec.EllipticCurvePrivateKey | None = None,
    ) -> x509.Certificate:
        """A factory certificate as 802.1AR devices carry them: serialNumber subject, no EKU, no SAN."""
        key = ec.generate_private_key(ec.SECP256R1())
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, serial)]))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .sign(signer or self.intermediate_key, hashes.SHA256())
        )


def _manufacturer(prefix: str) -> Manufacturer:
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = _ca(_name(f"{prefix} IDevID Root"), root_key, None, root_key)
    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    intermediate = _ca(_name(f"{prefix} IDevID Issuing"), intermediate_key, root, root_key)
    return Manufacturer(root, intermediate, intermediate_key)


@pytest.fixture(scope="module")
def acme() -> Manufacturer:
    return _manufacturer("Acme")


@pytest.fixture(scope="module")
def globex() -> Manufacturer:
    return _manufacturer("Globex")


@pytest.fixture(scope="module")
def store(acme: Manufacturer, globex: Manufacturer) -> ManufacturerTrustStore:
    return ManufacturerTrustStore({"acme": (acme.root,), "globex": (globex.root,)})


def test_factory_certificate_chains_to_its_manufacturer(
    store: ManufacturerTrustStore, acme: Manufacturer
) -> None:
    store.require_factory_certificate(acme.idevid(), "acme", NOW, intermediates=[acme.intermediate])


def test_intermediate_as_a_trust_anchor_needs_no_chain(acme: Manufacturer) -> None:
    store = ManufacturerTrustStore({"acme": (acme.intermediate,)})

    store.require_factory_certificate(acme.idevid(), "acme", NOW)


def test_factory_certificate_of_another_manufacturer_is_rejected(
    store: ManufacturerTrustStore, acme: Manufacturer
) -> None:
    with pytest.raises(FactoryCertificateRejected, match="for manufacturer 'globex'") as raised:
        store.require_factory_certificate(acme.idevid(), "globex", NOW, intermediates=[acme.intermediate])

    assert raised.value.manufacturer == "globex"
    assert raised.value.status == 403


def test_unknown_manufacturer_is_rejected(store: ManufacturerTrustStore, acme: Manufacturer) -> None:
    with pytest.raises(FactoryCertificateRejected, match="not in the trust store"):
        store.require_factory_certificate(acme.idevid(), "initech", NOW, intermediates=[acme.intermediate])


def test_missing_intermediate_is_rejected(store: ManufacturerTrustStore, acme: Manufacturer) -> None:
    with pytest.raises(FactoryCertificateRejected, match="acme"):
        store.require_factory_certificate(acme.idevid(), "acme", NOW)


def test_forged_factory_certificate_is_rejected(store: ManufacturerTrustStore, acme: Manufacturer) -> None:
    forged = acme.idevid(signer=ec.generate_private_key(ec.SECP256R1()))

    with pytest.raises(FactoryCertificateRejected):
        store.require_factory_certificate(forged, "acme", NOW, intermediates=[acme.intermediate])


def test_expired_and_not_yet_valid_factory_certificates_are_rejected(
    store: ManufacturerTrustStore, acme: Manufacturer
) -> None:
    expired = acme.idevid(not_before=NOW - dt.timedelta(days=60), not_after=NOW - dt.timedelta(days=1))
    early = acme.idevid(not_before=NOW + dt.timedelta(days=1))

    for certificate in (expired, early):
        with pytest.raises(FactoryCertificateRejected, match="acme"):
            store.require_factory_certificate(certificate, "acme", NOW, intermediates=[acme.intermediate])


def test_too_many_intermediates_are_rejected(store: ManufacturerTrustStore, acme: Manufacturer) -> None:
    with pytest.raises(FactoryCertificateRejected, match="more than 8 intermediates"):
        store.require_factory_certificate(acme.idevid(), "acme", NOW, intermediates=[acme.intermediate] * 9)


def test_naive_now_is_refused(store: ManufacturerTrustStore, acme: Manufacturer) -> None:
    with pytest.raises(ProfileInputRejected, match="timezone-aware"):
        store.require_factory_certificate(
            acme.idevid(),
            "acme",
            dt.datetime(2026, 3, 14),  # noqa: DTZ001 - the naive time is the point
            intermediates=[acme.intermediate],
        )


def test_store_refuses_leaves_and_empty_manufacturers(acme: Manufacturer) -> None:
    with pytest.raises(ProfileInputRejected, match="of manufacturer 'acme' is not a CA"):
        ManufacturerTrustStore({"acme": (acme.idevid(),)})
    with pytest.raises(ProfileInputRejected, match="has no CA certificates"):
        ManufacturerTrustStore({"acme": ()})
    with pytest.raises(ProfileInputRejected, match="is not 1-64 printable"):
        ManufacturerTrustStore({"": (acme.root,)})


def test_store_is_read_only(store: ManufacturerTrustStore, acme: Manufacturer) -> None:
    with pytest.raises(TypeError):
        store.anchors["evil"] = (acme.root,)  # type: ignore[index]

    assert store.manufacturers() == ("acme", "globex")


def test_store_from_pem_bundles(acme: Manufacturer) -> None:
    bundle = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (acme.root, acme.intermediate))

    store = ManufacturerTrustStore.from_pem_bundles({"acme": bundle})

    assert store.anchors["acme"] == (acme.root, acme.intermediate)
    store.require_factory_certificate(acme.idevid(), "acme", NOW)


@pytest.mark.parametrize(
    ("bundle", "message"),
    [
        (b"not pem", "is not PEM certificates"),
        (b"", "is not PEM certificates"),
        (b"x" * (MAX_BUNDLE_SIZE + 1), "is larger than"),
    ],
)
def test_bad_pem_bundles_are_refused(bundle: bytes, message: str) -> None:
    with pytest.raises(ProfileInputRejected, match=message):
        ManufacturerTrustStore.from_pem_bundles({"acme": bundle})
