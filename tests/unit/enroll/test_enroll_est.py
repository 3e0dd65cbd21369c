"""The EST protocol pieces: body codecs, certs-only PKCS#7, CSR attributes, Basic credentials, answers."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
from typing import ClassVar

import pytest
from asn1crypto import core as asn1_core  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.enroll import est
from fleetguard.errors import FleetguardError, InvalidInput, Unavailable

NOW = dt.datetime(2026, 3, 14, 15, 9, 26, tzinfo=dt.UTC)
WHITESPACE = st.sampled_from([b" ", b"\t", b"\r\n", b"\n"])


def _certificate(name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _csr_der() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.DER)


def _sprinkle(text: bytes, gaps: list[bytes]) -> bytes:
    """Insert the white space ``gaps`` into ``text`` at evenly spread places."""
    if not gaps:
        return text
    step = max(1, len(text) // len(gaps))
    pieces = [text[i : i + step] for i in range(0, len(text), step)]
    return b"".join(p + (gaps[i] if i < len(gaps) else b"") for i, p in enumerate(pieces))


# -- paths --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "operation"),
    [
        ("/.well-known/est/cacerts", est.EstOperation.CACERTS),
        ("/.well-known/est/simpleenroll", est.EstOperation.SIMPLEENROLL),
        ("/.well-known/est/simplereenroll?x=1", est.EstOperation.SIMPLEREENROLL),
        ("/.well-known/est/csrattrs", est.EstOperation.CSRATTRS),
    ],
)
def test_parse_est_path_names_the_operation(path: str, operation: est.EstOperation) -> None:
    assert est.parse_est_path(path) is operation


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/.well-known/est/",
        "/.well-known/est/label/simpleenroll",
        "/.well-known/est/serverkeygen",
        "/cacerts",
    ],
)
def test_parse_est_path_refuses_other_paths(path: str) -> None:
    with pytest.raises(est.EstNotFound):
        est.parse_est_path(path)


def test_each_operation_takes_one_method() -> None:
    methods = {operation: operation.method for operation in est.EstOperation}
    assert methods == {
        est.EstOperation.CACERTS: "GET",
        est.EstOperation.CSRATTRS: "GET",
        est.EstOperation.SIMPLEENROLL: "POST",
        est.EstOperation.SIMPLEREENROLL: "POST",
    }


# -- request bodies -----------------------------------------------------------------------------


def test_csr_body_with_line_breaks_and_no_pem_armor_decodes_to_the_der() -> None:
    der = _csr_der()
    body = est.encode_pkcs10_body(der)
    assert b"\n" in body
    assert b"-----" not in body
    assert est.decode_pkcs10_body(body, "application/pkcs10") == der
    crlf = base64.encodebytes(der).replace(b"\n", b"\r\n")
    assert est.decode_pkcs10_body(crlf, "Application/PKCS10; charset=us-ascii") == der


def test_csr_body_with_another_media_type_is_415() -> None:
    body = est.encode_pkcs10_body(_csr_der())
    for content_type in (None, "", "application/x-pem-file", "application/pkcs10-x"):
        with pytest.raises(est.EstUnsupportedMediaType, match="not application/pkcs10"):
            est.decode_pkcs10_body(body, content_type)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "empty"),
        (b" \r\n\t", "empty"),
        (b"not base64 at all!", "not base64"),
        (b"QUJD", "does not decode to a DER CertificationRequest"),  # "ABC"
        (b"MII", "not base64"),  # not a whole 4-character quantum
        (b"MA==MA==", "not base64"),  # data after the padding
        (b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n", "is PEM"),
        (bytes(range(256)), "not base64"),
    ],
)
def test_garbage_csr_body_is_400(body: bytes, match: str) -> None:
    with pytest.raises(est.EstMalformed, match=match) as raised:
        est.decode_pkcs10_body(body, "application/pkcs10")
    assert est.error_response(raised.value).status == 400


def test_csr_body_over_16_kib_decoded_is_413() -> None:
    limit = est.MAX_CSR_BYTES
    assert len(est.decode_base64_body(base64.b64encode(b"0" * limit), max_decoded=limit, what="CSR")) == limit
    with pytest.raises(est.EstBodyTooLarge, match="over 16384 bytes") as raised:
        est.decode_base64_body(base64.b64encode(b"0" * (limit + 1)), max_decoded=limit, what="CSR")
    assert est.error_response(raised.value).status == 413
    with pytest.raises(est.EstBodyTooLarge, match="would decode to over 16384 bytes"):
        est.decode_base64_body(base64.b64encode(b"0" * (limit + 3)), max_decoded=limit, what="CSR")


def test_body_over_32_kib_is_413_even_if_mostly_white_space() -> None:
    body = b"MA==" + b"\n" * est.MAX_BODY_BYTES
    with pytest.raises(est.EstBodyTooLarge, match="over the limit of 32768"):
        est.decode_base64_body(body, max_decoded=est.MAX_CSR_BYTES, what="CSR")


@given(payload=st.binary(min_size=1, max_size=2048), gaps=st.lists(WHITESPACE, max_size=40))
def test_base64_body_round_trips_with_any_white_space(payload: bytes, gaps: list[bytes]) -> None:
    body = _sprinkle(base64.b64encode(payload), gaps)
    assert est.decode_base64_body(body, max_decoded=est.MAX_CSR_BYTES, what="CSR") == payload


@given(body=st.binary(max_size=4096))
def test_body_decoder_returns_bytes_or_raises_an_est_error(body: bytes) -> None:
    try:
        der = est.decode_pkcs10_body(body, "application/pkcs10")
    except (est.EstMalformed, est.EstBodyTooLarge):
        return
    assert der[:1] == b"\x30"
    assert len(der) <= est.MAX_CSR_BYTES


@given(text=st.text(alphabet=st.sampled_from("ABCDEFGHabcdefgh0123+/= \n"), max_size=200))
def test_body_decoder_on_near_base64_text_never_leaks_another_exception(text: str) -> None:
    with contextlib.suppress(est.EstMalformed, est.EstBodyTooLarge):
        est.decode_base64_body(text.encode(), max_decoded=64, what="CSR")


# -- certs-only PKCS#7 --------------------------------------------------------------------------


def test_certs_only_round_trips_through_cryptographys_pkcs7_parser() -> None:
    certificates = [_certificate("issuing"), _certificate("root")]
    body = est.encode_certs_only(certificates)
    der = base64.b64decode(body)  # b64decode skips the line breaks, as `base64 -d` does
    # A DER SET OF is sorted (X.690 11.6): the order given is not kept, the set is.
    assert set(pkcs7.load_der_pkcs7_certificates(der)) == set(certificates)
    assert set(est.decode_certs_only(body)) == set(certificates)


def test_cacerts_answer_is_base64_certs_only_pkcs7() -> None:
    certificates = [_certificate("root")]
    answer = est.cacerts_response(certificates)
    assert answer.status == 200
    assert dict(answer.headers())["Content-Type"] == "application/pkcs7-mime; smime-type=certs-only"
    assert dict(answer.headers())["Content-Transfer-Encoding"] == "base64"
    assert pkcs7.load_der_pkcs7_certificates(base64.b64decode(answer.body)) == certificates


def test_issued_answer_holds_only_the_issued_certificate() -> None:
    leaf = _certificate("dev-1")
    answer = est.issued_response(leaf.public_bytes(serialization.Encoding.DER))
    assert answer.status == 200
    assert est.decode_certs_only(answer.body) == (leaf,)


def test_certs_only_needs_a_certificate() -> None:
    with pytest.raises(ValueError, match="at least one"):
        est.encode_certs_only([])


@pytest.mark.parametrize("body", [b"", b"!!!!", base64.b64encode(b"\x30\x00"), b"MA=="])
def test_decode_certs_only_refuses_what_is_not_a_pkcs7(body: bytes) -> None:
    with pytest.raises(est.EstMalformed):
        est.decode_certs_only(body)


# -- CSR attributes -----------------------------------------------------------------------------


class _Attribute(asn1_core.Sequence):  # type: ignore[misc]
    _fields: ClassVar = [
        ("type", asn1_core.ObjectIdentifier),
        ("values", asn1_core.SetOf, {"spec": asn1_core.Any}),
    ]


class _AttrOrOid(asn1_core.Choice):  # type: ignore[misc]
    _alternatives: ClassVar = [("oid", asn1_core.ObjectIdentifier), ("attribute", _Attribute)]


class _CsrAttrs(asn1_core.SequenceOf):  # type: ignore[misc]
    """RFC 7030 4.5.2: CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID."""

    _child_spec = _AttrOrOid


def test_csrattrs_is_a_sequence_of_an_ec_p256_attribute_and_ecdsa_with_sha256() -> None:
    answer = est.csrattrs_response()
    assert (answer.status, answer.content_type) == (200, "application/csrattrs")
    der = base64.b64decode(answer.body)
    assert der == est.CSR_ATTRIBUTES_DER
    attributes = _CsrAttrs.load(der, strict=True)
    decoded = [(item.name, item.chosen) for item in attributes]
    assert [name for name, _ in decoded] == ["attribute", "oid"]
    attribute, oid = decoded[0][1], decoded[1][1]
    assert attribute["type"].dotted == "1.2.840.10045.2.1"  # id-ecPublicKey
    values = [asn1_core.ObjectIdentifier.load(value.dump()).dotted for value in attribute["values"]]
    assert values == ["1.2.840.10045.3.1.7"]  # secp256r1
    assert oid.dotted == "1.2.840.10045.4.3.2"  # ecdsa-with-SHA256


# -- Basic credentials --------------------------------------------------------------------------


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_basic_credentials_are_device_id_and_token() -> None:
    credentials = est.parse_basic_authorization(_basic("dev-1:tok:en"))
    assert credentials == est.BasicCredentials("dev-1", "tok:en")
    assert "tok" not in repr(credentials)
    assert est.parse_basic_authorization("basic " + base64.b64encode(b"d:t").decode()) is not None
    assert est.parse_basic_authorization(None) is None


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ("Bearer abc", "scheme 'Bearer' is not supported"),
        ("Basic !!!", "not base64"),
        ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "not base64 of UTF-8"),
        (_basic("no-colon"), "both non-empty"),
        (_basic(":token"), "both non-empty"),
        (_basic("dev-1:"), "both non-empty"),
        (_basic("dev\x00:token"), "control characters"),
        ("Basic " + "A" * 5000, "over 4096"),
    ],
)
def test_malformed_basic_credentials_are_400(header: str, match: str) -> None:
    with pytest.raises(est.EstMalformed, match=match):
        est.parse_basic_authorization(header)


# -- answers ------------------------------------------------------------------------------------


class _Throttled(Unavailable):
    def __init__(self) -> None:
        super().__init__("too many enrollments")
        self.retry_after_s = 2.2


class _Unauthenticated(FleetguardError):
    status = 401


class _Fault(FleetguardError):
    status = 500


def test_pending_is_202_with_retry_after_in_whole_seconds() -> None:
    answer = est.pending_response("req-7", 0.2)
    headers = dict(answer.headers())
    assert (answer.status, headers["Retry-After"]) == (202, "1")
    assert b"req-7" in answer.body
    assert "Content-Transfer-Encoding" not in headers


def test_throttled_is_503_with_retry_after_rounded_up() -> None:
    answer = est.error_response(_Throttled())
    assert (answer.status, dict(answer.headers())["Retry-After"]) == (503, "3")


def test_unauthenticated_is_401_with_the_basic_challenge() -> None:
    answer = est.error_response(_Unauthenticated("no credentials"))
    assert answer.status == 401
    assert dict(answer.headers())["WWW-Authenticate"].startswith('Basic realm="fleetguard EST"')
    assert answer.body == b"no credentials\n"


def test_invalid_input_is_answered_400_in_plain_text() -> None:
    answer = est.error_response(InvalidInput("CSR rejected: weak key"))
    assert (answer.status, answer.content_type) == (400, "text/plain; charset=utf-8")
    assert answer.body == b"CSR rejected: weak key\n"


def test_a_server_fault_does_not_leak_its_message() -> None:
    answer = est.error_response(_Fault("/var/lib/fleetguard/pki/keys/issuing-1.pem is unreadable"))
    assert answer.status == 500
    assert b"/var/lib" not in answer.body


def test_method_not_allowed_names_the_allowed_method() -> None:
    answer = est.error_response(est.EstMethodNotAllowed("PUT", "GET"))
    assert (answer.status, dict(answer.headers())["Allow"]) == (405, "GET")


@given(seconds=st.floats(allow_nan=True, allow_infinity=True))
def test_retry_after_is_always_a_positive_bounded_integer(seconds: float) -> None:
    value = int(dict(est.pending_response("r", seconds).headers())["Retry-After"])
    assert 1 <= value <= 86_400
