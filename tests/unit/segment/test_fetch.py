"""Fetching MUD files over https from a real local TLS server: what is fetched, and what is refused."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from fleetguard.cli.main import app
from fleetguard.config import Settings
from fleetguard.installation import Runtime, initialize
from fleetguard.segment.errors import MudInvalid, MudTooLarge, SegmentError
from fleetguard.segment.fetch import HttpsFetcher, fetch_profile
from fleetguard.types import utc_now

NOW = dt.datetime.now(dt.UTC)


def _mud(url: str, signature_url: str | None = None) -> bytes:
    mud: dict[str, object] = {
        "mud-version": 1, "mud-url": url, "last-update": "2026-11-01T00:00:00+00:00",
        "cache-validity": 48, "is-supported": True, "systeminfo": "fetch test",
        "from-device-policy": {"access-lists": {"access-list": [{"name": "f"}]}},
        "to-device-policy": {"access-lists": {"access-list": [{"name": "t"}]}},
    }  # fmt: skip
    if signature_url:
        mud["mud-signature"] = signature_url
    empty = [{"name": n, "type": "ipv4-acl-type", "aces": {"ace": []}} for n in ("f", "t")]
    acl: dict[str, object] = {"acl": empty}
    return json.dumps({"ietf-mud:mud": mud, "ietf-access-control-list:acls": acl}).encode()


@dataclass
class Server:
    base: str
    ca_file: Path
    files: dict[str, tuple[int, bytes, dict[str, str]]]


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    signer: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
    )  # fmt: skip
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("mud-server")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("MUD test CA", ca_key, None, ca_key)
    leaf = _certificate("127.0.0.1", key, ca, ca_key)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    files: dict[str, tuple[int, bytes, dict[str, str]]] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body, headers = files.get(self.path, (404, b"", {}))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(f"https://127.0.0.1:{httpd.server_address[1]}", folder / "ca.pem", files)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_profile_and_its_signature_are_fetched(server: Server) -> None:
    url, signature_url = f"{server.base}/cam.json", f"{server.base}/cam.p7s"
    document = _mud(url, signature_url)
    server.files["/cam.json"] = (200, document, {})
    server.files["/cam.p7s"] = (200, b"\x30\x03\x02\x01\x01", {})
    fetched = fetch_profile(url, HttpsFetcher(ca_file=server.ca_file))
    assert fetched.document == document
    assert fetched.signature == b"\x30\x03\x02\x01\x01"


def test_a_file_that_names_another_url_is_refused(server: Server) -> None:
    server.files["/other.json"] = (200, _mud("https://elsewhere.example/x.json"), {})
    with pytest.raises(SegmentError, match=r"says its URL is 'https://elsewhere\.example/x\.json'; refused"):
        fetch_profile(f"{server.base}/other.json", HttpsFetcher(ca_file=server.ca_file))


def test_redirects_are_not_followed(server: Server) -> None:
    server.files["/moved.json"] = (302, b"", {"Location": f"{server.base}/cam.json"})
    with pytest.raises(SegmentError, match="HTTP 302"):
        fetch_profile(f"{server.base}/moved.json", HttpsFetcher(ca_file=server.ca_file))


def test_an_oversize_file_is_refused_while_reading(server: Server) -> None:
    server.files["/big.json"] = (200, b" " * (1024 * 1024 + 1), {})
    with pytest.raises(MudTooLarge, match="more than 1048576 bytes; refused"):
        fetch_profile(f"{server.base}/big.json", HttpsFetcher(ca_file=server.ca_file))


def test_a_server_the_ca_bundle_does_not_vouch_for_is_refused(server: Server) -> None:
    server.files["/cam2.json"] = (200, _mud(f"{server.base}/cam2.json"), {})
    with pytest.raises(SegmentError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch_profile(f"{server.base}/cam2.json", HttpsFetcher())


def test_http_urls_and_bad_documents_are_refused(server: Server) -> None:
    with pytest.raises(SegmentError, match="over https only"):
        fetch_profile("http://127.0.0.1/x.json", HttpsFetcher())
    server.files["/bad.json"] = (200, b"{not json", {})
    with pytest.raises(MudInvalid):
        fetch_profile(f"{server.base}/bad.json", HttpsFetcher(ca_file=server.ca_file))
    server.files["/missing-sig.json"] = (
        200,
        _mud(f"{server.base}/missing-sig.json", f"{server.base}/none.p7s"),
        {},
    )
    with pytest.raises(SegmentError, match="HTTP 404"):
        fetch_profile(f"{server.base}/missing-sig.json", HttpsFetcher(ca_file=server.ca_file))


def test_the_cli_fetches_every_mud_url_of_the_fleet_that_has_no_profile(
    server: Server, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    initialize(settings, "example.org", now=utc_now())
    url = f"{server.base}/fleet-cam.json"
    server.files["/fleet-cam.json"] = (200, _mud(url), {})
    runtime = Runtime(settings)
    try:
        runtime.inventory.add_device_type("cam", manufacturer="Acme", model="Cam", mud_url=url, actor="ops")
        runtime.inventory.add_device_type(
            "gone", manufacturer="Acme", model="Old", mud_url=f"{server.base}/gone.json", actor="ops"
        )
    finally:
        runtime.close()
    data = ["--data-dir", str(settings.data_dir)]

    result = CliRunner().invoke(app, [*data, "segment", "profile", "fetch", "--ca-file", str(server.ca_file)])

    assert result.exit_code == 1
    assert f"fetched {url}: 0 ACEs" in result.stdout
    assert f"{server.base}/gone.json: {server.base}/gone.json: HTTP 404" in result.stderr
    runtime = Runtime(settings)
    try:
        assert [(p.profile.url, p.source) for p in runtime.segment.profiles()] == [(url, "fetched")]
        assert runtime.segment.missing_profiles() == [f"{server.base}/gone.json"]
    finally:
        runtime.close()
