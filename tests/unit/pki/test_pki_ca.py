"""The CA hierarchy: consistency checks, real openssl verification, rotation and chain export."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from fleetguard.pki.ca import (
    CertificateAuthority,
    ChainFormat,
    create_issuing,
    create_root,
    export_chain,
    rotate_issuing,
)
from fleetguard.pki.errors import CaError, ChainExportRejected
from fleetguard.pki.keys import Curve, SoftwareKey, generate_software_key
from fleetguard.pki.profile import DeviceProfile, ServerProfile, new_serial

PEM = serialization.Encoding.PEM
Openssl = Callable[..., subprocess.CompletedProcess[str]]


def _pem_file(path: Path, *certificates: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(PEM) for c in certificates))
    return path


def _openssl_verify(
    openssl: Openssl,
    tmp_path: Path,
    leaf: x509.Certificate,
    *,
    root: x509.Certificate,
    untrusted: list[x509.Certificate],
    at: dt.datetime,
    purpose: str,
) -> subprocess.CompletedProcess[str]:
    return openssl(
        "verify",
        "-x509_strict",
        "-purpose",
        purpose,
        "-attime",
        str(int(at.timestamp())),
        "-CAfile",
        _pem_file(tmp_path / "root.pem", root),
        "-untrusted",
        _pem_file(tmp_path / "untrusted.pem", *untrusted),
        _pem_file(tmp_path / "leaf.pem", leaf),
    )


def _device(
    ca: CertificateAuthority, profile: DeviceProfile, device_id: str, now: dt.datetime
) -> x509.Certificate:
    key = generate_software_key(Curve.P256).public_key()
    return ca.issue_device_certificate(
        profile, device_id=device_id, public_key=key, serial=new_serial(), now=now
    )


def test_openssl_verifies_a_device_certificate_against_the_root(
    ca: CertificateAuthority,
    device_profile: DeviceProfile,
    now: dt.datetime,
    openssl: Openssl,
    tmp_path: Path,
) -> None:
    device = _device(ca, device_profile, "dev-1", now)

    result = _openssl_verify(
        openssl, tmp_path, device, root=ca.root, untrusted=[ca.issuing], at=now, purpose="sslclient"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": OK")


def test_openssl_verifies_a_server_certificate(
    ca: CertificateAuthority,
    device_profile: DeviceProfile,
    now: dt.datetime,
    openssl: Openssl,
    tmp_path: Path,
) -> None:
    server = ca.issue_server_certificate(
        ServerProfile(urls=device_profile.urls),
        dns_names=["broker.fleet.example.org"],
        public_key=generate_software_key(Curve.P256).public_key(),
        serial=new_serial(),
        now=now,
    )

    result = _openssl_verify(
        openssl, tmp_path, server, root=ca.root, untrusted=[ca.issuing], at=now, purpose="sslserver"
    )

    assert result.returncode == 0, result.stderr


def test_openssl_refuses_a_device_certificate_for_server_use(
    ca: CertificateAuthority,
    device_profile: DeviceProfile,
    now: dt.datetime,
    openssl: Openssl,
    tmp_path: Path,
) -> None:
    device = _device(ca, device_profile, "dev-1", now)

    result = _openssl_verify(
        openssl, tmp_path, device, root=ca.root, untrusted=[ca.issuing], at=now, purpose="sslserver"
    )

    assert result.returncode != 0
    assert "unsuitable certificate purpose" in result.stdout + result.stderr


def test_openssl_refuses_a_device_certificate_after_it_expires(
    ca: CertificateAuthority,
    device_profile: DeviceProfile,
    now: dt.datetime,
    openssl: Openssl,
    tmp_path: Path,
) -> None:
    device = _device(ca, device_profile, "dev-1", now)

    later = now + dt.timedelta(days=31)
    result = _openssl_verify(
        openssl, tmp_path, device, root=ca.root, untrusted=[ca.issuing], at=later, purpose="sslclient"
    )

    assert result.returncode != 0
    assert "certificate has expired" in result.stdout + result.stderr


def test_rotation_keeps_old_and_new_certificates_valid_under_one_root(
    *,
    ca: CertificateAuthority,
    root_key: SoftwareKey,
    device_profile: DeviceProfile,
    make_ca_name: Callable[[str], x509.Name],
    now: dt.datetime,
    openssl: Openssl,
    tmp_path: Path,
) -> None:
    rotated_at = now + dt.timedelta(days=400)
    old_device = _device(ca, device_profile, "dev-old", rotated_at - dt.timedelta(days=10))

    rotated = rotate_issuing(
        ca,
        root_key,
        generate_software_key(Curve.P256),
        rotated_at,
        name=make_ca_name("fleetguard test issuing CA 2"),
    )
    new_device = _device(rotated, device_profile, "dev-new", rotated_at)

    assert rotated.root is ca.root
    assert rotated.issuing.issuer == ca.root.subject
    assert rotated.issuing.not_valid_before_utc < ca.issuing.not_valid_after_utc  # the two overlap
    assert rotated.issuing.not_valid_after_utc > ca.issuing.not_valid_after_utc
    both = [ca.issuing, rotated.issuing]
    in_overlap = rotated_at + dt.timedelta(days=1)
    for device in (old_device, new_device):
        result = _openssl_verify(
            openssl, tmp_path, device, root=ca.root, untrusted=both, at=in_overlap, purpose="sslclient"
        )
        assert result.returncode == 0, result.stdout + result.stderr
    new_device.verify_directly_issued_by(rotated.issuing)
    with pytest.raises(ValueError, match="Issuer certificate subject does not match"):
        new_device.verify_directly_issued_by(ca.issuing)


def test_rotation_needs_a_new_name_and_a_new_key(
    ca: CertificateAuthority,
    root_key: SoftwareKey,
    make_ca_name: Callable[[str], x509.Name],
    now: dt.datetime,
) -> None:
    with pytest.raises(CaError, match="must not reuse the name"):
        rotate_issuing(ca, root_key, generate_software_key(Curve.P256), now, name=ca.issuing.subject)
    with pytest.raises(CaError, match="must have a new key"):
        rotate_issuing(ca, root_key, ca.key, now, name=make_ca_name("fleetguard test issuing CA 2"))


def test_rotation_needs_the_root_key(
    ca: CertificateAuthority, make_ca_name: Callable[[str], x509.Name], now: dt.datetime
) -> None:
    with pytest.raises(CaError, match="the signing key does not match the certificate of"):
        rotate_issuing(
            ca,
            generate_software_key(Curve.P384),
            generate_software_key(Curve.P256),
            now,
            name=make_ca_name("fleetguard test issuing CA 2"),
        )


def test_issuing_ca_cannot_outlive_the_root(
    make_ca_name: Callable[[str], x509.Name], now: dt.datetime
) -> None:
    root_key = generate_software_key(Curve.P384)
    root = create_root(root_key, make_ca_name("short root"), now, validity=dt.timedelta(days=365))

    with pytest.raises(CaError, match="is outside issuer"):
        create_issuing(
            root_key, root, generate_software_key(Curve.P256).public_key(), now, name=make_ca_name("issuing")
        )


def test_ca_refuses_a_key_that_is_not_the_issuing_cas(ca: CertificateAuthority) -> None:
    with pytest.raises(CaError, match="the signing key does not match the certificate of"):
        CertificateAuthority(root=ca.root, issuing=ca.issuing, key=generate_software_key(Curve.P256))


def test_ca_refuses_an_issuing_certificate_from_another_root(
    ca: CertificateAuthority, make_ca_name: Callable[[str], x509.Name], now: dt.datetime
) -> None:
    other_key = generate_software_key(Curve.P384)
    other_root = create_root(other_key, make_ca_name("fleetguard test root CA"), now)  # same name, other key

    with pytest.raises(CaError, match="is not issued by"):
        CertificateAuthority(root=other_root, issuing=ca.issuing, key=ca.key)


def test_ca_refuses_a_leaf_as_issuing_ca(
    ca: CertificateAuthority, device_profile: DeviceProfile, now: dt.datetime
) -> None:
    key = generate_software_key(Curve.P256)
    leaf = ca.issue_device_certificate(
        device_profile, device_id="dev-1", public_key=key.public_key(), serial=new_serial(), now=now
    )

    with pytest.raises(CaError, match="is not a CA certificate"):
        CertificateAuthority(root=ca.root, issuing=leaf, key=key)


def test_ca_refuses_a_root_that_is_not_self_signed(ca: CertificateAuthority) -> None:
    with pytest.raises(CaError, match="is not issued by"):
        CertificateAuthority(root=ca.issuing, issuing=ca.issuing, key=ca.key)


def test_chain_is_issuing_then_root(ca: CertificateAuthority) -> None:
    assert ca.chain() == (ca.issuing, ca.root)


def test_pem_export_parses_back_in_order(ca: CertificateAuthority) -> None:
    exported = ca.export_chain(ChainFormat.PEM)

    assert x509.load_pem_x509_certificates(exported) == [ca.issuing, ca.root]


def test_der_export_is_the_issuing_ca_alone(ca: CertificateAuthority) -> None:
    assert x509.load_der_x509_certificate(ca.export_chain(ChainFormat.DER)) == ca.issuing


def test_der_export_of_a_chain_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(ChainExportRejected, match="DER holds one certificate, not 2") as raised:
        export_chain(ca.chain(), ChainFormat.DER)

    assert raised.value.hint == "export the chain as PEM or PKCS#7"


def test_empty_export_is_refused() -> None:
    for fmt in ChainFormat:
        with pytest.raises(ChainExportRejected, match="no certificate"):
            export_chain([], fmt)


def test_pkcs7_export_parses_back_with_cryptography_and_openssl(
    ca: CertificateAuthority, openssl: Openssl, tmp_path: Path
) -> None:
    exported = ca.export_chain(ChainFormat.PKCS7)
    (tmp_path / "chain.p7b").write_bytes(exported)

    result = openssl("pkcs7", "-inform", "DER", "-in", tmp_path / "chain.p7b", "-print_certs")

    assert pkcs7.load_der_pkcs7_certificates(exported) == [ca.issuing, ca.root]
    assert result.returncode == 0, result.stderr
    assert x509.load_pem_x509_certificates(result.stdout.encode()) == [ca.issuing, ca.root]
