"""The gateway CA: kept in the gateway directory (key 0600), renewed before expiry, short-lived clients."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from gateway_pki import NOW

from fleetguard.gateway.authority import CA_FILE, CA_KEY_FILE, GatewayAuthority


def _cn(certificate: x509.Certificate) -> str:
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_the_ca_is_created_once_with_a_private_key_file(tmp_path: Path) -> None:
    first = GatewayAuthority.load_or_create(tmp_path, now=NOW)
    assert stat.S_IMODE((tmp_path / CA_KEY_FILE).stat().st_mode) == 0o600
    again = GatewayAuthority.load_or_create(tmp_path, now=NOW + dt.timedelta(days=30))
    assert again.certificate == first.certificate
    assert (tmp_path / CA_FILE).read_bytes() == first.certificate_pem


def test_a_ca_near_expiry_is_replaced(tmp_path: Path) -> None:
    first = GatewayAuthority.load_or_create(tmp_path, now=NOW)
    later = GatewayAuthority.load_or_create(tmp_path, now=NOW + dt.timedelta(days=340))
    assert later.certificate != first.certificate
    assert later.certificate.not_valid_after_utc > NOW + dt.timedelta(days=700)


def test_a_key_that_others_could_read_is_replaced(tmp_path: Path) -> None:
    first = GatewayAuthority.load_or_create(tmp_path, now=NOW)
    (tmp_path / CA_KEY_FILE).chmod(0o644)
    again = GatewayAuthority.load_or_create(tmp_path, now=NOW)
    assert again.certificate != first.certificate
    assert stat.S_IMODE((tmp_path / CA_KEY_FILE).stat().st_mode) == 0o600


def test_a_client_certificate_names_the_device_and_lives_minutes() -> None:
    authority = GatewayAuthority.generate(now=NOW)
    credential = authority.issue_client("dev-1", now=NOW)
    certificate = x509.load_pem_x509_certificate(credential.certificate_pem)
    assert _cn(certificate) == "dev-1"
    assert certificate.not_valid_after_utc - NOW == dt.timedelta(minutes=10)
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    certificate.verify_directly_issued_by(authority.certificate)


def test_the_server_certificate_is_for_the_loopback_address() -> None:
    authority = GatewayAuthority.generate(now=NOW)
    certificate = x509.load_pem_x509_certificate(authority.issue_server("127.0.0.1", now=NOW).certificate_pem)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(address) for address in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_a_client_context_loads_the_key_and_leaves_no_file_behind(tmp_path: Path) -> None:
    authority = GatewayAuthority.generate(now=dt.datetime.now(dt.UTC))
    credential = authority.issue_client("dev-1", now=dt.datetime.now(dt.UTC))
    context = authority.client_context(credential, scratch=tmp_path)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert list(tmp_path.iterdir()) == []
