"""CA keys in a PKCS#11 token (SoftHSM2): non-extractable, signing in the token, certificates that
openssl and pkilint accept."""

from __future__ import annotations

import datetime as dt
import subprocess
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from fleetguard.pki.ca import CertificateAuthority, create_issuing, rotate_issuing
from fleetguard.pki.errors import KeyBackendError, KeyExists, KeyUnlockFailed
from fleetguard.pki.keys import Curve, Passphrase, SoftwareKey, signature_algorithm_oid
from fleetguard.pki.keys_pkcs11 import Pkcs11Token
from fleetguard.pki.profile import DeviceProfile, new_serial
from fleetguard.pki.signing import sign_crl, sign_ocsp_response

DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM


def _label() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def _raw_session(hsm_token: Pkcs11Token, module: Path) -> pkcs11.Session:
    """A second session on the logged-in token, straight through python-pkcs11 (login is per process)."""
    return pkcs11.lib(str(module)).get_token(token_label=hsm_token.label).open(rw=True)


@pytest.mark.parametrize(("curve", "hash_name"), [(Curve.P256, "sha256"), (Curve.P384, "sha384")])
def test_token_signs_with_the_hash_of_the_curve(hsm_token: Pkcs11Token, curve: Curve, hash_name: str) -> None:
    key = hsm_token.generate_key(_label(), curve)

    signature = key.sign(b"to be signed")

    assert key.curve is curve
    assert key.hash_algorithm.name == hash_name
    assert isinstance(key.public_key().curve, type(ec.SECP256R1() if curve is Curve.P256 else ec.SECP384R1()))
    key.public_key().verify(signature, b"to be signed", ec.ECDSA(key.hash_algorithm))


def test_generated_private_key_can_never_leave_the_token(hsm_token: Pkcs11Token, softhsm: object) -> None:
    label = _label()
    hsm_token.generate_key(label, Curve.P256)

    with _raw_session(hsm_token, softhsm.module) as session:  # type: ignore[attr-defined]
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        attributes = {
            name: private[attribute]
            for name, attribute in [
                ("token", Attribute.TOKEN),
                ("private", Attribute.PRIVATE),
                ("sensitive", Attribute.SENSITIVE),
                ("extractable", Attribute.EXTRACTABLE),
                ("always_sensitive", Attribute.ALWAYS_SENSITIVE),
                ("never_extractable", Attribute.NEVER_EXTRACTABLE),
            ]
        }
        with pytest.raises(pkcs11.AttributeSensitive):
            private[Attribute.VALUE]

    assert attributes == {
        "token": True,
        "private": True,
        "sensitive": True,
        "extractable": False,
        "always_sensitive": True,
        "never_extractable": True,
    }


def test_threads_share_one_session_safely(hsm_token: Pkcs11Token) -> None:
    key = hsm_token.generate_key(_label(), Curve.P256)
    messages = [f"message {i}".encode() for i in range(200)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        signatures = list(pool.map(key.sign, messages))
        looked_up = list(pool.map(hsm_token.key, [key.label] * 8))

    for message, signature in zip(messages, signatures, strict=True):
        key.public_key().verify(signature, message, ec.ECDSA(hashes.SHA256()))
    assert all(k.public_key() == key.public_key() for k in looked_up)


def test_find_or_generate_returns_the_same_key_again(hsm_token: Pkcs11Token) -> None:
    label = _label()

    first = hsm_token.find_or_generate_key(label, Curve.P256)
    second = hsm_token.find_or_generate_key(label, Curve.P256)

    assert first.public_key() == second.public_key()
    assert repr(second) == f"Pkcs11Key(label={label!r}, curve=P-256)"


def test_find_or_generate_refuses_a_key_on_another_curve(hsm_token: Pkcs11Token) -> None:
    label = _label()
    hsm_token.generate_key(label, Curve.P256)

    with pytest.raises(KeyBackendError, match=f"key '{label}' is on P-256, expected P-384"):
        hsm_token.find_or_generate_key(label, Curve.P384)


def test_generate_never_replaces_a_key(hsm_token: Pkcs11Token) -> None:
    label = _label()
    original = hsm_token.generate_key(label, Curve.P256)

    with pytest.raises(KeyExists, match=f"already has a key labelled '{label}'"):
        hsm_token.generate_key(label, Curve.P256)

    assert hsm_token.key(label).public_key() == original.public_key()


def test_missing_key_is_a_clear_error(hsm_token: Pkcs11Token) -> None:
    with pytest.raises(KeyBackendError, match="has no EC PRIVATE_KEY labelled 'absent', expected one"):
        hsm_token.key("absent")


@pytest.mark.parametrize("label", ["", "x" * 65, "tab\there"])
def test_bad_labels_are_refused(hsm_token: Pkcs11Token, label: str) -> None:
    with pytest.raises(KeyBackendError, match="key label"):
        hsm_token.key(label)


def test_an_extractable_key_is_refused(hsm_token: Pkcs11Token, softhsm: object) -> None:
    label = _label()
    with _raw_session(hsm_token, softhsm.module) as session:  # type: ignore[attr-defined]
        parameters = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True
        )
        parameters.generate_keypair(
            label=label,
            store=True,
            private_template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
        )

    with pytest.raises(KeyBackendError, match=f"key '{label}' can leave the token") as raised:
        hsm_token.key(label)

    assert raised.value.hint == "generate a new key with fleetguard; it is created non-extractable"


def test_a_second_open_of_the_same_token_is_refused(hsm_token: Pkcs11Token, softhsm: object) -> None:
    with pytest.raises(KeyBackendError, match="already open in this process"):
        Pkcs11Token.open(softhsm.module, hsm_token.label, softhsm.pin)  # type: ignore[attr-defined]


def test_wrong_pin_is_refused(softhsm: object) -> None:
    wrong = Passphrase(b"9999", source="test wrong PIN")

    with pytest.raises(KeyUnlockFailed, match="token 'fg-pin' refused the PIN from test wrong PIN") as raised:
        Pkcs11Token.open(softhsm.module, "fg-pin", wrong)  # type: ignore[attr-defined]

    assert "9999" not in str(raised.value)


def test_closed_token_stops_signing_and_can_be_reopened(softhsm: object) -> None:
    module, pin = softhsm.module, softhsm.pin  # type: ignore[attr-defined]
    token = Pkcs11Token.open(module, "fg-pin", pin)
    key = token.generate_key(_label(), Curve.P256)
    token.close()
    token.close()  # idempotent

    with pytest.raises(KeyBackendError, match="token refused to sign"):
        key.sign(b"data")

    with Pkcs11Token.open(module, "fg-pin", pin) as reopened:
        reopened.key(key.label).sign(b"data")


def test_missing_token_and_module_are_clear_errors(softhsm: object, tmp_path: Path) -> None:
    module, pin = softhsm.module, softhsm.pin  # type: ignore[attr-defined]

    with pytest.raises(KeyBackendError, match="no PKCS#11 token labelled 'absent'"):
        Pkcs11Token.open(module, "absent", pin)
    with pytest.raises(KeyBackendError, match="cannot use PKCS#11 module"):
        Pkcs11Token.open(tmp_path / "missing.so", "fg-test", pin)


# --- an issuing CA whose key is in the token -----------------------------------------------------


@pytest.fixture(scope="module")
def hsm_ca(
    hsm_token: Pkcs11Token, root_key: SoftwareKey, root_cert: x509.Certificate, now: dt.datetime
) -> CertificateAuthority:
    key = hsm_token.generate_key(_label(), Curve.P256)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "fleetguard HSM issuing CA")])
    issuing = create_issuing(root_key, root_cert, key.public_key(), now, name=name)
    return CertificateAuthority(root=root_cert, issuing=issuing, key=key)


def test_hsm_signed_device_certificate_verifies_with_openssl_and_passes_pkilint(
    *,
    hsm_ca: CertificateAuthority,
    device_profile: DeviceProfile,
    now: dt.datetime,
    openssl: Callable[..., subprocess.CompletedProcess[str]],
    pkilint_findings: Callable[..., list[str]],
    tmp_path: Path,
) -> None:
    device = hsm_ca.issue_device_certificate(
        device_profile,
        device_id="dev-hsm",
        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        serial=new_serial(),
        now=now,
    )
    (tmp_path / "root.pem").write_bytes(hsm_ca.root.public_bytes(PEM))
    (tmp_path / "issuing.pem").write_bytes(hsm_ca.issuing.public_bytes(PEM))
    (tmp_path / "device.pem").write_bytes(device.public_bytes(PEM))

    result = openssl(
        "verify",
        "-x509_strict",
        "-purpose",
        "sslclient",
        "-attime",
        str(int(now.timestamp())),
        "-CAfile",
        tmp_path / "root.pem",
        "-untrusted",
        tmp_path / "issuing.pem",
        tmp_path / "device.pem",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert device.signature_algorithm_oid == signature_algorithm_oid(hsm_ca.key)
    assert pkilint_findings(device.public_bytes(DER), "cert") == []


def test_hsm_signed_crl_and_ocsp_response_pass_pkilint(
    hsm_ca: CertificateAuthority, now: dt.datetime, pkilint_findings: Callable[..., list[str]]
) -> None:
    this_update = now.replace(microsecond=0)
    ski = hsm_ca.issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    crl = sign_crl(
        x509.CertificateRevocationListBuilder()
        .issuer_name(hsm_ca.issuing.subject)
        .last_update(this_update)
        .next_update(this_update + dt.timedelta(days=1))
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .add_extension(x509.CRLNumber(1), critical=False),
        hsm_ca.key,
    )
    response = sign_ocsp_response(
        ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=b"\x01" * 20,
            issuer_key_hash=b"\x02" * 20,
            serial_number=new_serial(),
            algorithm=hashes.SHA1(),  # noqa: S303 - RFC 5019 2.1.1 CertID
            cert_status=ocsp.OCSPCertStatus.UNKNOWN,
            this_update=this_update,
            next_update=this_update + dt.timedelta(hours=1),
            revocation_time=None,
            revocation_reason=None,
        ),
        hsm_ca.key,
        hsm_ca.issuing,
    )

    assert crl.is_signature_valid(hsm_ca.issuing.public_key())
    assert pkilint_findings(crl.public_bytes(DER), "crl") == []
    assert pkilint_findings(response.public_bytes(DER), "ocsp") == []


def test_rotation_to_a_new_token_key(
    hsm_ca: CertificateAuthority, hsm_token: Pkcs11Token, root_key: SoftwareKey, now: dt.datetime
) -> None:
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "fleetguard HSM issuing CA 2")])

    rotated = rotate_issuing(hsm_ca, root_key, hsm_token.generate_key(_label(), Curve.P256), now, name=name)

    assert rotated.issuing.issuer == hsm_ca.root.subject
    rotated.issuing.verify_directly_issued_by(hsm_ca.root)
