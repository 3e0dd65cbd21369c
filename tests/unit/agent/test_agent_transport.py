"""The agent's HTTPS transport: URL and settings checks, and real TLS exchanges on the loopback."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetguard.agent.errors import AgentConfigInvalid, EstServerUnreachable
from fleetguard.agent.transport import (
    MAX_REPLY_BYTES,
    EstReply,
    HttpsTransport,
    TlsClientKey,
    TlsKeyKind,
    TlsSettings,
    est_path,
    parse_server_url,
)
from fleetguard.enroll import est

from .conftest import SERVER_URL, Loopback, TinyCa, closed_port, write_key, write_pem

PEM = serialization.Encoding.PEM
URL_REFUSED = r"^the EST server URL must be https://host\[:port\], not "


# -- parse_server_url -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("https://est.example.org", ("est.example.org", 443)),
        ("https://est.example.org/", ("est.example.org", 443)),
        ("https://est.example.org:8443", ("est.example.org", 8443)),
        ("https://EST.Example.org:8443/", ("est.example.org", 8443)),
        ("https://127.0.0.1:1", ("127.0.0.1", 1)),
        ("https://[::1]:65535", ("::1", 65535)),
    ],
)
def test_https_urls_give_host_and_port(url: str, address: tuple[str, int]) -> None:
    assert parse_server_url(url) == address


@pytest.mark.parametrize(
    "url",
    [
        "http://est.example.org",
        "ftp://est.example.org",
        "est.example.org",
        "",
        "https://",
        "https:///",
        "https://:8443",
        "https://est.example.org/.well-known/est",
        "https://est.example.org/est/",
        "https://est.example.org?x=1",
        "https://est.example.org/?x=1",
        "https://est.example.org?",  # an empty query would still swallow the path curl appends
        "https://est.example.org#top",  # and so would a fragment
        "https://user:secret@est.example.org",  # credentials do not belong in agent.json
        "https://@est.example.org",
        " https://est.example.org",
        "https://est.example.org\n",
        "https://est.example.org\t",
        "https://est.example.org\x00",
        "https://[::1",  # urlsplit's own ValueError
    ],
)
def test_anything_but_https_host_port_is_refused(url: str) -> None:
    with pytest.raises(AgentConfigInvalid, match=URL_REFUSED + r".*\(RFC 7030 3\.2\.2: the agent adds"):
        parse_server_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://est.example.org:0",
        "https://est.example.org:65536",
        "https://est.example.org:-1",
        "https://h:port",
    ],
)
def test_bad_ports_are_refused(url: str) -> None:
    with pytest.raises(AgentConfigInvalid, match=rf"^bad port in '{url}'$"):
        parse_server_url(url)


def test_est_paths_are_under_the_well_known_prefix() -> None:
    assert est_path("simpleenroll") == "/.well-known/est/simpleenroll"


# -- TlsSettings ----------------------------------------------------------------------------------


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        AgentConfigInvalid, match=r"^a TLS client certificate needs its key, and a key its certificate$"
    ):
        TlsSettings(SERVER_URL, tmp_path / "anchors.pem", certificate=tmp_path / "certificate.pem")


def test_a_key_without_its_certificate_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigInvalid, match=r"^a TLS client certificate needs its key"):
        TlsSettings(SERVER_URL, tmp_path / "anchors.pem", key=TlsClientKey(TlsKeyKind.FILE, "key.pem"))


def test_settings_check_the_url(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigInvalid, match=URL_REFUSED):
        TlsSettings("http://est.example.org", tmp_path / "anchors.pem")


def test_the_https_transport_refuses_an_engine_key(tmp_path: Path) -> None:
    settings = TlsSettings(
        SERVER_URL, tmp_path / "anchors.pem", tmp_path / "c.pem", TlsClientKey(TlsKeyKind.ENGINE, "pkcs11:x")
    )

    with pytest.raises(AgentConfigInvalid, match=r"^an engine key needs the curl transport$"):
        HttpsTransport(settings)


# -- HttpsTransport on the loopback ---------------------------------------------------------------


def test_a_get_returns_status_headers_and_body(loopback: Loopback, tiny_ca: TinyCa) -> None:
    transport = HttpsTransport(TlsSettings(loopback.url, loopback.anchors))

    reply = transport.request("GET", "cacerts", None, {})

    assert (reply.status, reply.content_type, reply.retry_after) == (200, est.CERTS_ONLY, None)
    assert set(est.decode_certs_only(reply.body)) == set(tiny_ca.cacerts)


def test_a_post_carries_body_and_headers_and_reads_retry_after(loopback: Loopback) -> None:
    transport = HttpsTransport(TlsSettings(loopback.url, loopback.anchors))

    reply = transport.request(
        "POST",
        "simpleenroll",
        b"MIIB\n",
        {"Content-Type": "application/pkcs10", "Authorization": "Basic eDp5"},
    )

    assert (reply.status, reply.retry_after) == (202, "42")
    assert json.loads(reply.body) == {
        "path": "/.well-known/est/simpleenroll",
        "body": "MIIB\n",
        "content_type": "application/pkcs10",
        "authorization": "Basic eDp5",
        "client": None,
    }


def test_the_client_certificate_is_presented(loopback: Loopback) -> None:
    settings = TlsSettings(
        loopback.url,
        loopback.anchors,
        certificate=loopback.device_certificate,
        key=TlsClientKey(TlsKeyKind.FILE, str(loopback.device_key)),
    )

    reply = HttpsTransport(settings).request(
        "POST", "simplereenroll", b"x", {"Content-Type": "application/pkcs10"}
    )

    assert json.loads(reply.body)["client"] == "dev-1"


def test_a_non_200_is_a_reply_not_an_error(loopback: Loopback) -> None:
    reply = HttpsTransport(TlsSettings(loopback.url, loopback.anchors)).request("GET", "csrattrs", None, {})

    assert reply == EstReply(404, est.TEXT, None, b"no such EST operation\n")


def test_a_reply_over_the_bound_is_refused(loopback: Loopback) -> None:
    transport = HttpsTransport(TlsSettings(loopback.url, loopback.anchors))

    with pytest.raises(
        EstServerUnreachable, match=rf"^the server's reply is larger than {MAX_REPLY_BYTES} bytes$"
    ):
        transport.request("GET", "big", None, {})


def test_a_server_outside_the_trust_anchors_is_refused(
    loopback: Loopback, foreign_ca: TinyCa, tmp_path: Path
) -> None:
    anchors = write_pem(tmp_path / "foreign.pem", foreign_ca.root)
    transport = HttpsTransport(TlsSettings(loopback.url, anchors))

    with pytest.raises(
        EstServerUnreachable,
        match=rf"^no answer from {loopback.url}: .*certificate verify failed.*\(check the server URL",
    ):
        transport.request("GET", "cacerts", None, {})


def test_a_closed_port_is_unreachable(tmp_path: Path, tiny_ca: TinyCa) -> None:
    url = f"https://127.0.0.1:{closed_port()}"
    transport = HttpsTransport(TlsSettings(url, write_pem(tmp_path / "root.pem", tiny_ca.root)))

    with pytest.raises(
        EstServerUnreachable,
        match=rf"^no answer from {url}: .*Connection refused "
        r"\(check the server URL, the network and the trust anchors\)$",
    ):
        transport.request("GET", "cacerts", None, {})


def test_a_server_that_never_answers_times_out(tmp_path: Path, tiny_ca: TinyCa) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"https://127.0.0.1:{silent.getsockname()[1]}"
        settings = TlsSettings(url, write_pem(tmp_path / "root.pem", tiny_ca.root), timeout_s=0.2)

        with pytest.raises(EstServerUnreachable, match=rf"^no answer from {url}: timed out "):
            HttpsTransport(settings).request("GET", "cacerts", None, {})


@pytest.mark.parametrize("anchors", [b"", b"not a certificate\n"])
def test_unusable_trust_anchors_are_a_configuration_error(tmp_path: Path, anchors: bytes) -> None:
    (tmp_path / "anchors.pem").write_bytes(anchors)
    transport = HttpsTransport(TlsSettings(f"https://127.0.0.1:{closed_port()}", tmp_path / "anchors.pem"))

    with pytest.raises(AgentConfigInvalid, match=r"^cannot load the TLS credentials: "):
        transport.request("GET", "cacerts", None, {})


def test_missing_trust_anchors_are_a_configuration_error(tmp_path: Path) -> None:
    transport = HttpsTransport(TlsSettings(f"https://127.0.0.1:{closed_port()}", tmp_path / "missing.pem"))

    with pytest.raises(AgentConfigInvalid, match=r"^cannot load the TLS credentials: .*No such file"):
        transport.request("GET", "cacerts", None, {})


def test_a_client_key_that_does_not_match_is_a_configuration_error(
    loopback: Loopback, tmp_path: Path
) -> None:
    other = write_key(tmp_path / "other.key", ec.generate_private_key(ec.SECP256R1()))
    settings = TlsSettings(
        loopback.url, loopback.anchors, loopback.device_certificate, TlsClientKey(TlsKeyKind.FILE, str(other))
    )

    with pytest.raises(AgentConfigInvalid, match=r"^cannot load the TLS credentials: .*KEY_VALUES_MISMATCH"):
        HttpsTransport(settings).request("GET", "cacerts", None, {})
