"""The EST client (RFC 7030) over a scripted transport: every reply maps to a certificate or one error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.agent.errors import (
    AgentConfigInvalid,
    EnrollmentPending,
    EstRequestFailed,
    EstServerBusy,
    EstServerUnreachable,
)
from fleetguard.agent.est_client import EstClient, parse_retry_after, transport_for
from fleetguard.agent.transport import EstReply, HttpsTransport, TlsClientKey, TlsKeyKind, TlsSettings
from fleetguard.agent.transport_child import ProviderTransport
from fleetguard.agent.transport_curl import CurlTransport
from fleetguard.enroll import est
from fleetguard.pki.keys import Curve, generate_software_key
from fleetguard.pki.signing import sign_csr

from .conftest import SERVER_URL, TinyCa, certs_only, device_name, text

DAY = 86400.0


@dataclass(frozen=True)
class Request:
    method: str
    operation: str
    body: bytes | None
    headers: dict[str, str]


@dataclass
class ScriptedTransport:
    """Answers each request with the next scripted reply; records what was sent."""

    replies: list[EstReply]
    requests: list[Request] = field(default_factory=list)

    def request(
        self, method: str, operation: str, body: bytes | None, headers: Mapping[str, str]
    ) -> EstReply:
        self.requests.append(Request(method, operation, body, dict(headers)))
        return self.replies.pop(0)


def _csr() -> bytes:
    key = generate_software_key(Curve.P256)
    builder = x509.CertificateSigningRequestBuilder().subject_name(device_name("dev-1"))
    return sign_csr(builder, key).public_bytes(serialization.Encoding.DER)


CSR = _csr()


@pytest.fixture(scope="module")
def leaf(tiny_ca: TinyCa) -> x509.Certificate:
    return tiny_ca.issue(x509.load_der_x509_csr(CSR).public_key(), device_name("dev-1"))


def _client(*replies: EstReply) -> tuple[EstClient, ScriptedTransport]:
    transport = ScriptedTransport(list(replies))
    return EstClient(transport), transport


# -- what is sent ---------------------------------------------------------------------------------


def test_cacerts_is_a_bare_get(tiny_ca: TinyCa) -> None:
    client, transport = _client(certs_only(*tiny_ca.cacerts))

    certificates = client.cacerts()

    assert set(certificates) == set(tiny_ca.cacerts)
    assert transport.requests == [Request("GET", "cacerts", None, {})]


def test_token_enrollment_sends_the_csr_with_basic_credentials(leaf: x509.Certificate) -> None:
    client, transport = _client(certs_only(leaf))

    assert client.simpleenroll(CSR, device_id="dev-1", token="tok-3f9a") == leaf

    [request] = transport.requests
    assert (request.method, request.operation) == ("POST", "simpleenroll")
    # RFC 7617 2: base64 of "user-id:password"
    assert request.headers == {
        "Content-Type": "application/pkcs10",
        "Authorization": "Basic ZGV2LTE6dG9rLTNmOWE=",
    }
    assert request.body == est.encode_pkcs10_body(CSR)
    assert est.decode_pkcs10_body(request.body, request.headers["Content-Type"]) == CSR


def test_basic_credentials_are_utf8(leaf: x509.Certificate) -> None:
    client, transport = _client(certs_only(leaf))

    client.simpleenroll(CSR, device_id="gerät-7", token="pässwort")

    assert transport.requests[0].headers["Authorization"] == "Basic Z2Vyw6R0LTc6cMOkc3N3b3J0"


def test_factory_enrollment_sends_no_authorization(leaf: x509.Certificate) -> None:
    client, transport = _client(certs_only(leaf))

    client.simpleenroll(CSR)

    assert transport.requests[0].headers == {"Content-Type": "application/pkcs10"}


def test_reenrollment_posts_to_simplereenroll_without_credentials(leaf: x509.Certificate) -> None:
    client, transport = _client(certs_only(leaf))

    assert client.simplereenroll(CSR) == leaf

    assert transport.requests == [
        Request("POST", "simplereenroll", est.encode_pkcs10_body(CSR), {"Content-Type": "application/pkcs10"})
    ]


@pytest.mark.parametrize(("device_id"), ["dev:1", ":", None])
def test_a_token_needs_a_device_id_without_a_colon(device_id: str | None) -> None:
    client, transport = _client()

    with pytest.raises(
        AgentConfigInvalid, match=r"token enrollment needs a device id without ':' \(RFC 7617 2\)"
    ):
        client.simpleenroll(CSR, device_id=device_id, token="tok")

    assert transport.requests == []


# -- what comes back ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [est.CERTS_ONLY, "application/pkcs7-mime", "Application/PKCS7-MIME ; smime-type=certs-only"],
)
def test_a_certs_only_answer_is_the_certificate(leaf: x509.Certificate, content_type: str) -> None:
    body = est.encode_certs_only([leaf])
    client, _ = _client(EstReply(200, content_type, None, body))

    assert client.simpleenroll(CSR, device_id="dev-1", token="t") == leaf


def test_202_is_pending_with_the_servers_retry_after() -> None:
    client, _ = _client(text(202, "enrollment request 7 is pending approval\nmore", retry_after="90"))

    with pytest.raises(
        EnrollmentPending,
        match=r"^enrollment request 7 is pending approval \(run the same command again in 90 s\)$",
    ) as caught:
        client.simpleenroll(CSR, device_id="dev-1", token="t")

    assert caught.value.retry_after_s == 90.0


@pytest.mark.parametrize("retry_after", [None, "Wed, 21 Oct 2026 07:28:00 GMT", "soon"])
def test_202_without_usable_retry_after_waits_a_minute(retry_after: str | None) -> None:
    client, _ = _client(EstReply(202, None, retry_after, b""))

    with pytest.raises(
        EnrollmentPending, match=r"^pending approval \(run the same command again in 60 s\)$"
    ) as caught:
        client.simplereenroll(CSR)

    assert caught.value.retry_after_s == 60.0


def test_503_with_retry_after_is_busy() -> None:
    client, _ = _client(text(503, "too many enrollments\n", retry_after="120"))

    with pytest.raises(
        EstServerBusy, match=r"^EST simplereenroll: the server is busy \(too many enrollments\)"
    ) as caught:
        client.simplereenroll(CSR)

    assert caught.value.retry_after_s == 120.0
    assert caught.value.status == 503


def test_503_without_retry_after_is_busy_with_no_delay() -> None:
    client, _ = _client(EstReply(503, None, None, b""))

    with pytest.raises(EstServerBusy, match=r"EST cacerts: the server is busy \(no reason given\)") as caught:
        client.cacerts()

    assert caught.value.retry_after_s is None


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (401, b"the enrollment token is not valid\nsecond line", "the enrollment token is not valid"),
        (403, b"  certificate 1f is revoked  \r\n", "certificate 1f is revoked"),
        (400, b"the CSR is not P-256", "the CSR is not P-256"),
        (500, b"internal error; the server has logged it\n", "internal error; the server has logged it"),
        (404, b"", "no reason given"),
        (400, b"\n\n", "no reason given"),
    ],
)
def test_a_refusal_carries_the_status_and_the_first_line(status: int, body: bytes, reason: str) -> None:
    client, _ = _client(EstReply(status, est.TEXT, None, body))

    with pytest.raises(EstRequestFailed) as caught:
        client.simpleenroll(CSR, device_id="dev-1", token="t")

    assert str(caught.value) == f"EST simpleenroll refused with HTTP {status}: {reason}"
    assert (caught.value.http_status, caught.value.reason) == (status, reason)


def test_a_reason_has_no_control_characters() -> None:
    client, _ = _client(EstReply(400, est.TEXT, None, b"bad \x1b[31mred\x1b[0m\x00 \xff\xfe end\nnext"))

    with pytest.raises(EstRequestFailed) as caught:
        client.simplereenroll(CSR)

    assert caught.value.reason == "bad ?[31mred?[0m? \ufffd\ufffd end"
    assert caught.value.reason.isprintable()


def test_a_reason_is_bounded() -> None:
    client, _ = _client(EstReply(400, est.TEXT, None, b"x" * 100_000))

    with pytest.raises(EstRequestFailed) as caught:
        client.simplereenroll(CSR)

    assert caught.value.reason == "x" * 300


@given(
    body=st.binary(max_size=2000), status=st.integers(min_value=400, max_value=599).filter(lambda s: s != 503)
)
def test_any_refusal_body_becomes_one_printable_bounded_line(body: bytes, status: int) -> None:
    client, _ = _client(EstReply(status, None, None, body))

    with pytest.raises(EstRequestFailed) as caught:
        client.simplereenroll(CSR)

    reason = caught.value.reason
    assert 0 < len(reason) <= 300
    assert reason.isprintable()


@pytest.mark.parametrize(
    ("content_type", "shown"),
    [
        ("text/plain", "text/plain"),
        (None, "no media type"),
        ("", "no media type"),
        ("application/pkcs7", "application/pkcs7"),
    ],
)
def test_a_200_of_another_media_type_is_refused(
    leaf: x509.Certificate, content_type: str | None, shown: str
) -> None:
    client, _ = _client(EstReply(200, content_type, None, est.encode_certs_only([leaf])))

    with pytest.raises(
        EstServerUnreachable, match=rf"^EST simpleenroll answered {shown}, not application/pkcs7-mime$"
    ):
        client.simpleenroll(CSR, device_id="dev-1", token="t")


@pytest.mark.parametrize("body", [b"", b"not base64!", b"aGVsbG8=", b"MAA="])
def test_a_200_with_a_garbage_body_is_refused(body: bytes) -> None:
    client, _ = _client(EstReply(200, est.CERTS_ONLY, None, body))

    with pytest.raises(EstServerUnreachable, match=r"^EST cacerts answered a malformed PKCS#7: "):
        client.cacerts()


def test_an_oversized_certs_only_body_is_refused() -> None:
    client, _ = _client(EstReply(200, est.CERTS_ONLY, None, b"A" * (2 * 1024 * 1024 + 4)))

    with pytest.raises(
        EstServerUnreachable, match=r"^EST simplereenroll answered a malformed PKCS#7: .*over"
    ):
        client.simplereenroll(CSR)


def test_an_enrollment_answer_with_two_certificates_is_refused(
    leaf: x509.Certificate, tiny_ca: TinyCa
) -> None:
    client, _ = _client(certs_only(leaf, tiny_ca.issuing))

    with pytest.raises(EstServerUnreachable, match=r"^simpleenroll answered 2 certificates, expected one$"):
        client.simpleenroll(CSR, device_id="dev-1", token="t")


def test_a_cacerts_answer_may_hold_many(tiny_ca: TinyCa, leaf: x509.Certificate) -> None:
    client, _ = _client(certs_only(*tiny_ca.cacerts, leaf))

    assert len(client.cacerts()) == 3


def test_cacerts_answered_202_is_a_refusal() -> None:
    client, _ = _client(EstReply(202, None, "5", b"wait"))

    with pytest.raises(EstRequestFailed, match=r"^EST cacerts refused with HTTP 202: wait$"):
        client.cacerts()


# -- parse_retry_after ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("86400", DAY),
        ("86401", DAY),
        ("99999999999999999999999999", DAY),
        ("0000000000000000000000120", 120.0),  # RFC 9110 10.2.3: 1*DIGIT, leading zeros included
        ("9" * 5000, DAY),  # longer than int() parses
    ],
)
def test_retry_after_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "Wed, 21 Oct 2026 07:28:00 GMT",
        "-5",
        "+5",
        "1.5",
        "1e3",
        "12 s",
        "0x10",
        "²",  # str.isdigit() says yes, int() says no
        "٣",  # an Arabic-Indic three: not an RFC 5234 DIGIT
        "\uff11\uff12",  # fullwidth digits
    ],
)
def test_retry_after_that_is_not_delay_seconds_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


# Unicode digits and spaces are where str.isdigit(), str.strip() and int() disagree.
@settings(max_examples=1000)  # cheap, and a few in a hundred draws are such digits
@given(value=st.text() | st.text(alphabet=st.characters(categories=("Nd", "No", "Zs"))))
def test_retry_after_never_raises(value: str) -> None:
    seconds = parse_retry_after(value)

    assert seconds is None or 0.0 <= seconds <= DAY


@given(seconds=st.integers(min_value=0, max_value=10**40), padding=st.sampled_from(["", " ", "\t", "  "]))
def test_retry_after_reads_any_number_of_seconds(seconds: int, padding: str) -> None:
    assert parse_retry_after(f"{padding}{seconds}{padding}") == min(float(seconds), DAY)


# -- transport_for --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "transport"),
    [
        (None, HttpsTransport),
        (TlsKeyKind.FILE, HttpsTransport),
        (TlsKeyKind.PROVIDER, ProviderTransport),
        (TlsKeyKind.ENGINE, CurlTransport),
    ],
)
def test_the_key_kind_picks_the_transport(tmp_path: Path, kind: TlsKeyKind | None, transport: type) -> None:
    key = None if kind is None else TlsClientKey(kind, "reference")
    settings = TlsSettings(
        server_url=SERVER_URL,
        trust_anchors=tmp_path / "anchors.pem",
        certificate=None if key is None else tmp_path / "certificate.pem",
        key=key,
    )

    assert type(transport_for(settings)) is transport
