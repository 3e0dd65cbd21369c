"""Private keys in every common format are parsed and reported; bare markers and junk are not."""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto import algos as asn1_algos  # type: ignore[import-untyped]
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_trees import tree_of
from fleetguard.firmware.analyzers.keys import KeyAnalyzer, scan_key_material
from fleetguard.firmware.model import Category, Finding, Severity
from fleetguard.firmware.redaction import fingerprint

NOW = datetime(2026, 6, 1, tzinfo=UTC)
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
NO_ENCRYPTION = serialization.NoEncryption()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def weak_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 1024)  # noqa: S505 - the weak key the analyzer must flag


@pytest.fixture(scope="module")
def dsa_key() -> dsa.DSAPrivateKey:
    return dsa.generate_private_key(1024)  # noqa: S505 - DSA is flagged whatever its size


def spki(key: PrivateKeyTypes) -> str:
    public = key.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return fingerprint(public)


def mpint(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return len(raw).to_bytes(4, "big") + raw


def string(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def dropbear_rsa(key: rsa.RSAPrivateKey) -> bytes:
    n = key.private_numbers()
    public = n.public_numbers
    return string(b"ssh-rsa") + b"".join(mpint(v) for v in (public.e, public.n, n.d, n.p, n.q))


def dropbear_dss(key: dsa.DSAPrivateKey) -> bytes:
    n = key.private_numbers()
    p = n.public_numbers.parameter_numbers
    return string(b"ssh-dss") + b"".join(mpint(v) for v in (p.p, p.q, p.g, n.public_numbers.y, n.x))


def dropbear_ecdsa(key: ec.EllipticCurvePrivateKey) -> bytes:
    point = key.public_key().public_bytes(DER.X962, serialization.PublicFormat.UncompressedPoint)
    name = b"ecdsa-sha2-nistp256"
    return string(name) + string(b"nistp256") + string(point) + mpint(key.private_numbers().private_value)


def dropbear_ed25519(key: ed25519.Ed25519PrivateKey) -> bytes:
    seed = key.private_bytes(DER.Raw, serialization.PrivateFormat.Raw, NO_ENCRYPTION)
    public = key.public_key().public_bytes(DER.Raw, serialization.PublicFormat.Raw)
    return string(b"ssh-ed25519") + string(seed + public)


def ssh_public_blob(key: PrivateKeyTypes) -> bytes:
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return base64.b64decode(line.split()[1])


def ssh_fingerprint(key: PrivateKeyTypes) -> str:
    digest = hashlib.sha256(ssh_public_blob(key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def encrypted_openssh(key: ed25519.Ed25519PrivateKey) -> bytes:
    """An openssh-key-v1 container with an aes256-ctr/bcrypt private section (PROTOCOL.key)."""
    body = (
        b"openssh-key-v1\0"
        + string(b"aes256-ctr")
        + string(b"bcrypt")
        + string(string(os.urandom(16)) + (16).to_bytes(4, "big"))
        + (1).to_bytes(4, "big")
        + string(ssh_public_blob(key))
        + string(os.urandom(160))
    )
    wrapped = base64.encodebytes(body).replace(b"\n", b"")
    lines = b"\n".join(wrapped[i : i + 70] for i in range(0, len(wrapped), 70))
    return b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + lines + b"\n-----END OPENSSH PRIVATE KEY-----\n"


def ppk(key: rsa.RSAPrivateKey) -> bytes:
    """A PuTTY-User-Key-File-3 with no encryption (PuTTY manual, appendix C)."""
    n = key.private_numbers()
    private = mpint(n.d) + mpint(n.p) + mpint(n.q) + mpint(n.iqmp)

    def lines(blob: bytes) -> list[bytes]:
        encoded = base64.b64encode(blob)
        return [encoded[i : i + 64] for i in range(0, len(encoded), 64)]

    public_lines, private_lines = lines(ssh_public_blob(key)), lines(private)
    return b"\n".join(
        [
            b"PuTTY-User-Key-File-3: ssh-rsa",
            b"Encryption: none",
            b"Comment: device key",
            b"Public-Lines: %d" % len(public_lines),
            *public_lines,
            b"Private-Lines: %d" % len(private_lines),
            *private_lines,
            b"Private-MAC: " + b"ab" * 32,
            b"",
        ]
    )


def certificate(
    subject_key: PrivateKeyTypes,
    *,
    issuer_key: PrivateKeyTypes | None = None,
    name: str = "device.local",
    issuer_name: str | None = None,
    not_after: datetime = NOW + timedelta(days=365),
    ca: bool = False,
) -> x509.Certificate:
    signer = issuer_key or subject_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name or name)]))
        .public_key(subject_key.public_key())  # type: ignore[arg-type]
        .serial_number(0x1234)
        .not_valid_before(NOW - timedelta(days=3650))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]


def resigned_with_sha1(cert: x509.Certificate, issuer_key: rsa.RSAPrivateKey) -> x509.Certificate:
    """The certificate signed again with sha1WithRSAEncryption (cryptography no longer signs SHA-1)."""
    parsed = asn1_x509.Certificate.load(cert.public_bytes(DER))
    tbs = parsed["tbs_certificate"]
    tbs["signature"] = asn1_algos.SignedDigestAlgorithm({"algorithm": "sha1_rsa"})
    tbs_der = tbs.dump(force=True)
    signature = issuer_key.sign(tbs_der, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 - the weak signature under test
    resigned = asn1_x509.Certificate(
        {
            "tbs_certificate": asn1_x509.TbsCertificate.load(tbs_der),
            "signature_algorithm": asn1_algos.SignedDigestAlgorithm({"algorithm": "sha1_rsa"}),
            "signature_value": signature,
        }
    )
    return x509.load_der_x509_certificate(resigned.dump())


def keyed(findings: list[Finding]) -> set[tuple[str, Severity, str, int | None]]:
    return {(f.rule, f.severity, f.path, f.offset) for f in findings}


def test_pem_keys_of_every_kind_are_parsed_and_fingerprinted(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, dsa_key: dsa.DSAPrivateKey
) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pkcs1 = rsa_key.private_bytes(PEM, serialization.PrivateFormat.TraditionalOpenSSL, NO_ENCRYPTION)
    sec1 = ec_key.private_bytes(PEM, serialization.PrivateFormat.TraditionalOpenSSL, NO_ENCRYPTION)
    dsa_pem = dsa_key.private_bytes(PEM, serialization.PrivateFormat.TraditionalOpenSSL, NO_ENCRYPTION)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    pkcs8 = ed_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, NO_ENCRYPTION)
    prefix = b"# server key\n"
    tree = tree_of(
        tmp_path,
        {
            "/etc/ssl/private/server.key": (pkcs1, 0o600),
            "/etc/ec.pem": (prefix + sec1, 0o600),
            "/etc/dsa.pem": (dsa_pem, 0o600),
            "/etc/ed.pem": (pkcs8, 0o600),
        },
    )
    findings = list(KeyAnalyzer(now=NOW).analyze(tree))
    assert keyed(findings) == {
        ("key.rsa-private", Severity.HIGH, "/etc/ssl/private/server.key", 0),
        ("key.ec-private", Severity.HIGH, "/etc/ec.pem", len(prefix)),
        ("key.dsa-private", Severity.HIGH, "/etc/dsa.pem", 0),
        ("key.ed25519-private", Severity.HIGH, "/etc/ed.pem", 0),
    }
    by_path = {f.path: f for f in findings}
    rsa_finding = by_path["/etc/ssl/private/server.key"]
    assert rsa_finding.category is Category.PRIVATE_KEY
    assert ("bits", "2048") in rsa_finding.details
    assert spki(rsa_key) in rsa_finding.evidence
    assert ("public-key-sha256", spki(ec_key)) in by_path["/etc/ec.pem"].details
    body = pkcs1.splitlines()[5].decode()
    for finding in findings:
        assert body not in finding.evidence
        assert body not in repr(finding.details)
        assert str(rsa_key.private_numbers().d) not in repr(finding)


def test_ssh_formats_openssh_dropbear_putty(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, dsa_key: dsa.DSAPrivateKey
) -> None:
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    openssh = ed_key.private_bytes(PEM, serialization.PrivateFormat.OpenSSH, NO_ENCRYPTION)
    embedded = b"\x7fELF" + os.urandom(300) + dropbear_ecdsa(ec_key) + os.urandom(100)
    tree = tree_of(
        tmp_path,
        {
            "/root/.ssh/id_ed25519": (openssh, 0o600),
            "/etc/dropbear/dropbear_rsa_host_key": (dropbear_rsa(rsa_key), 0o600),
            "/etc/dropbear/dropbear_dss_host_key": (dropbear_dss(dsa_key), 0o600),
            "/etc/dropbear/dropbear_ed25519_host_key": (dropbear_ed25519(ed_key), 0o600),
            "/usr/sbin/keyd": (embedded, 0o755),
            "/home/admin/device.ppk": (ppk(rsa_key), 0o600),
            "/root/.ssh/id_enc": (encrypted_openssh(ed_key), 0o600),
        },
    )
    findings = list(KeyAnalyzer(now=NOW).analyze(tree))
    assert keyed(findings) == {
        ("key.ed25519-private", Severity.HIGH, "/root/.ssh/id_ed25519", 0),
        ("key.rsa-private", Severity.HIGH, "/etc/dropbear/dropbear_rsa_host_key", 0),
        ("key.dsa-private", Severity.HIGH, "/etc/dropbear/dropbear_dss_host_key", 0),
        ("key.ed25519-private", Severity.HIGH, "/etc/dropbear/dropbear_ed25519_host_key", 0),
        ("key.ec-private", Severity.HIGH, "/usr/sbin/keyd", 304),
        ("key.rsa-private", Severity.HIGH, "/home/admin/device.ppk", 0),
        ("key.encrypted-private", Severity.MEDIUM, "/root/.ssh/id_enc", 0),
    }
    by_path = {f.path: f for f in findings}
    assert ("ssh-fingerprint", ssh_fingerprint(rsa_key)) in by_path[
        "/etc/dropbear/dropbear_rsa_host_key"
    ].details
    assert ("ssh-fingerprint", ssh_fingerprint(rsa_key)) in by_path["/home/admin/device.ppk"].details
    assert ("ssh-fingerprint", ssh_fingerprint(ed_key)) in by_path["/root/.ssh/id_enc"].details
    assert ("public-key-sha256", spki(ec_key)) in by_path["/usr/sbin/keyd"].details


def test_encrypted_pem_keys_are_reported_without_a_passphrase(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    encryption = serialization.BestAvailableEncryption(b"secret")
    pkcs8 = rsa_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, encryption)
    legacy = rsa_key.private_bytes(PEM, serialization.PrivateFormat.TraditionalOpenSSL, encryption)
    tree = tree_of(tmp_path, {"/etc/a.key": (pkcs8, 0o600), "/etc/b.key": (legacy, 0o600)})
    assert keyed(list(KeyAnalyzer(now=NOW).analyze(tree))) == {
        ("key.encrypted-private", Severity.MEDIUM, "/etc/a.key", 0),
        ("key.encrypted-private", Severity.MEDIUM, "/etc/b.key", 0),
    }


def test_der_keys_and_certificates_at_key_paths(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    pkcs8 = rsa_key.private_bytes(DER, serialization.PrivateFormat.PKCS8, NO_ENCRYPTION)
    pkcs1 = rsa_key.private_bytes(DER, serialization.PrivateFormat.TraditionalOpenSSL, NO_ENCRYPTION)
    expired = certificate(rsa_key, not_after=NOW - timedelta(days=1)).public_bytes(DER)
    tree = tree_of(
        tmp_path,
        {
            "/etc/key.der": (pkcs8, 0o600),
            "/etc/ssl/private/host": (pkcs1, 0o600),
            "/etc/ssl/device.crt": (expired, 0o644),
            "/usr/share/data.bin": (pkcs8, 0o644),  # DER is tried at key-like paths only
        },
    )
    assert keyed(list(KeyAnalyzer(now=NOW).analyze(tree))) == {
        ("key.rsa-private", Severity.HIGH, "/etc/key.der", 0),
        ("key.rsa-private", Severity.HIGH, "/etc/ssl/private/host", 0),
        ("cert.expired", Severity.MEDIUM, "/etc/ssl/device.crt", 0),
        ("cert.self-signed", Severity.LOW, "/etc/ssl/device.crt", 0),
    }


def test_certificate_checks(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, weak_rsa_key: rsa.RSAPrivateKey
) -> None:
    root = certificate(rsa_key, name="Root CA", ca=True)
    leaf = certificate(weak_rsa_key, issuer_key=rsa_key, issuer_name="Root CA")
    sha1_leaf = resigned_with_sha1(leaf, rsa_key)
    expired_root = certificate(rsa_key, name="Old CA", ca=True, not_after=NOW - timedelta(days=10))
    bundle = b"".join(c.public_bytes(PEM) for c in (root, sha1_leaf, expired_root))
    leaf_offset = len(root.public_bytes(PEM))
    expired_offset = leaf_offset + len(sha1_leaf.public_bytes(PEM))
    tree = tree_of(tmp_path, {"/etc/ssl/certs/bundle.pem": (bundle, 0o644)})
    findings = list(KeyAnalyzer(now=NOW).analyze(tree))
    path = "/etc/ssl/certs/bundle.pem"
    assert keyed(findings) == {
        ("cert.weak-key", Severity.MEDIUM, path, leaf_offset),
        ("cert.weak-signature", Severity.MEDIUM, path, leaf_offset),
        ("cert.expired", Severity.LOW, path, expired_offset),  # an expired trust anchor
    }
    assert all(f.category is Category.CERTIFICATE for f in findings)
    assert any("RSA 1024-bit" in f.evidence for f in findings)


def test_markers_templates_and_junk_are_not_keys(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    strings = b"\x7fELF\0\0-----BEGIN RSA PRIVATE KEY-----\0-----END RSA PRIVATE KEY-----\0%s\0"
    template = b'KEY="-----BEGIN RSA PRIVATE KEY-----\n%s\n-----END RSA PRIVATE KEY-----"\n'
    public = rsa_key.public_key().public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    junk_marker = b"\0\0\0\x07ssh-rsa" + os.urandom(600)
    pkcs1 = rsa_key.private_bytes(PEM, serialization.PrivateFormat.TraditionalOpenSSL, NO_ENCRYPTION)
    tree = tree_of(
        tmp_path,
        {
            "/usr/lib/libcrypto.so.1.1": (strings, 0o755),
            "/etc/templates/key.tmpl": (template, 0o644),
            "/etc/ssl/public.pem": (public, 0o644),
            "/usr/bin/ssh-helper": (junk_marker, 0o755),
            "/www/logo.png": (pkcs1, 0o644),  # media is not read
        },
    )
    assert list(KeyAnalyzer(now=NOW).analyze(tree)) == []


def test_a_long_body_that_does_not_parse_is_info(tmp_path: Path) -> None:
    block = b"-----BEGIN RSA PRIVATE KEY-----\n" + b"QUJD" * 40 + b"\n-----END RSA PRIVATE KEY-----\n"
    tree = tree_of(tmp_path, {"/etc/broken.pem": (b"x\n" + block, 0o600)})
    assert keyed(list(KeyAnalyzer(now=NOW).analyze(tree))) == {
        ("key.unparsed", Severity.INFO, "/etc/broken.pem", 2),
    }


GOST_PKCS8 = (  # a GOST R 34.10-2012 test key from GnuTLS: cryptography does not load it
    b"-----BEGIN PRIVATE KEY-----\n"
    b"MEgCAQAwHwYIKoUDBwEBAQEwEwYHKoUDAgIkAAYIKoUDBwEBAgIEIgQg0+JttJEV\n"
    b"Ud+XBzX9q13ByKK+j2b+mEmNIo1yB0wGleo=\n"
    b"-----END PRIVATE KEY-----\n"
)


def test_a_structurally_valid_key_of_an_unknown_algorithm_is_still_a_key(tmp_path: Path) -> None:
    tree = tree_of(tmp_path, {"/usr/bin/tool": (b"\x7fELF\0" + GOST_PKCS8, 0o755)})
    (finding,) = KeyAnalyzer(now=NOW).analyze(tree)
    assert (finding.rule, finding.severity, finding.offset) == ("key.other-private", Severity.HIGH, 5)
    assert "1.2.643.7.1.1.1.1" in finding.evidence


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        KeyAnalyzer(now=datetime(2026, 1, 1))  # noqa: DTZ001 - the point of the test


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.sampled_from(
        [
            b"",
            b"-----BEGIN RSA PRIVATE KEY-----\n",
            b"-----BEGIN OPENSSH PRIVATE KEY-----\n",
            b"-----BEGIN CERTIFICATE-----\n",
            b"\0\0\0\x07ssh-rsa",
            b"\0\0\0\x13ecdsa-sha2-nistp256",
            b"PuTTY-User-Key-File-2: ssh-rsa\nEncryption: none\nComment: x\nPublic-Lines: 2\n",
        ]
    ),
    body=st.binary(max_size=400),
    suffix=st.sampled_from([b"", b"-----END RSA PRIVATE KEY-----", b"-----END CERTIFICATE-----"]),
)
def test_random_content_never_raises(prefix: bytes, body: bytes, suffix: bytes) -> None:
    for path in ("/etc/x.pem", "/etc/ssl/private/x.der"):
        list(scan_key_material(path, prefix + body + suffix, NOW))
