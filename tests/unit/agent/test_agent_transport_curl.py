"""The curl transport for engine keys: the command line it builds, the replies it reads, its failures.

A fake curl (a script that records its arguments, standard input and environment, and answers as a
plan file says) stands in for /usr/bin/curl; the real one is exercised by the integration tests.
"""

from __future__ import annotations

import base64
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.agent.errors import AgentError, EstServerUnreachable
from fleetguard.agent.transport import MAX_REPLY_BYTES, EstReply, TlsClientKey, TlsKeyKind, TlsSettings
from fleetguard.agent.transport_curl import CurlTransport, _headers
from fleetguard.enroll import est

from .conftest import SERVER_URL

KEY_URI = "pkcs11:token=fg-test;object=fleetguard-device;type=private"

FAKE_CURL = """\
import base64, json, os, sys, time
plan = json.load(open(os.environ["FAKE_CURL_PLAN"]))
argv = sys.argv[1:]
stdin = sys.stdin.buffer.read()
record = {
    "argv": argv,
    "stdin": base64.b64encode(stdin).decode(),
    "openssl_conf": os.environ.get("OPENSSL_CONF"),
    "marker": os.environ.get("FAKE_CURL_MARKER"),
}
json.dump(record, open(plan["record"], "w"))
time.sleep(plan.get("sleep", 0))
if plan.get("headers") is not None:
    open(argv[argv.index("--dump-header") + 1], "wb").write(plan["headers"].encode("latin-1"))
if plan.get("body") is not None:
    open(argv[argv.index("--output") + 1], "wb").write(base64.b64decode(plan["body"]))
sys.stdout.write(plan.get("status", ""))
sys.stderr.write(plan.get("stderr", ""))
sys.exit(plan.get("exit", 0))
"""


@dataclass(frozen=True)
class FakeCurl:
    """The fake curl, its plan, and the transport that runs it."""

    path: Path
    plan: Path
    record: Path
    settings: TlsSettings

    def answer(
        self,
        *,
        status: str = "200",
        headers: str | None = None,
        body: bytes | None = None,
        exit_code: int = 0,
        stderr: str = "",
        sleep: float = 0,
    ) -> None:
        plan = {
            "record": str(self.record),
            "status": status,
            "headers": headers,
            "body": None if body is None else base64.b64encode(body).decode(),
            "exit": exit_code,
            "stderr": stderr,
            "sleep": sleep,
        }
        self.plan.write_text(json.dumps(plan))

    def transport(self) -> CurlTransport:
        return CurlTransport(self.settings, curl=str(self.path))

    def recorded(self) -> dict[str, object]:
        recorded: dict[str, object] = json.loads(self.record.read_text())
        return recorded


@pytest.fixture
def curl(tmp_path: Path) -> FakeCurl:
    script = tmp_path / "curl"
    script.write_text(f"#!{sys.executable}\n{FAKE_CURL}")
    script.chmod(0o700)
    plan = tmp_path / "plan.json"
    settings = TlsSettings(
        SERVER_URL + "/",
        tmp_path / "anchors.pem",
        certificate=tmp_path / "certificate.pem",
        key=TlsClientKey(
            TlsKeyKind.ENGINE,
            KEY_URI,
            openssl_conf=tmp_path / "pkcs11-engine.cnf",
            environment={"FAKE_CURL_PLAN": str(plan), "FAKE_CURL_MARKER": "from the key store"},
        ),
        timeout_s=12.5,
    )
    fake = FakeCurl(script, plan, tmp_path / "record.json", settings)
    fake.answer()
    return fake


def _expected_argv(fake: FakeCurl, method: str, work: str, *extra: str) -> list[str]:
    settings = fake.settings
    return [
        "--silent", "--show-error", "--proto", "=https", "--max-time", "12.5",
        "--max-filesize", str(MAX_REPLY_BYTES), "--cacert", str(settings.trust_anchors),
        "--cert", str(settings.certificate), "--engine", "pkcs11", "--key-type", "ENG", "--key", KEY_URI,
        "--request", method, "--dump-header", f"{work}/headers", "--output", f"{work}/body",
        "--write-out", "%{http_code}", *extra,
    ]  # fmt: skip


def test_a_post_runs_curl_with_the_engine_key_and_reads_the_reply(curl: FakeCurl) -> None:
    curl.answer(
        headers=f"HTTP/1.1 200 OK\r\nContent-Type: {est.CERTS_ONLY}\r\nContent-Length: 4\r\n\r\n",
        body=b"MIIB",
    )

    reply = curl.transport().request(
        "POST", "simplereenroll", b"csr body\n", {"Content-Type": "application/pkcs10"}
    )

    assert reply == EstReply(200, est.CERTS_ONLY, None, b"MIIB")
    recorded = curl.recorded()
    argv = recorded["argv"]
    assert isinstance(argv, list)
    work = str(Path(argv[argv.index("--output") + 1]).parent)
    assert Path(work).name.startswith("fleetguard-agent-")
    assert not Path(work).exists()  # the headers and body files are gone
    assert argv == _expected_argv(
        curl,
        "POST",
        work,
        "--header",
        "Content-Type: application/pkcs10",
        "--data-binary",
        "@-",
        "https://est.example.org:8443/.well-known/est/simplereenroll",
    )
    assert base64.b64decode(str(recorded["stdin"])) == b"csr body\n"
    # the engine's module path and PIN reach curl through the configuration file, never argv
    assert recorded["openssl_conf"] == str(curl.settings.key.openssl_conf)  # type: ignore[union-attr]
    assert recorded["marker"] == "from the key store"


def test_a_get_sends_no_body(curl: FakeCurl) -> None:
    curl.answer(headers="HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime\r\n\r\n", body=b"x")

    curl.transport().request("GET", "cacerts", None, {})

    recorded = curl.recorded()
    argv = recorded["argv"]
    assert isinstance(argv, list)
    assert "--data-binary" not in argv
    assert argv[argv.index("--request") + 1] == "GET"
    assert argv[-1] == "https://est.example.org:8443/.well-known/est/cacerts"
    assert recorded["stdin"] == ""


def test_retry_after_comes_from_the_final_response(curl: FakeCurl) -> None:
    curl.answer(
        status="503",
        headers=(
            "HTTP/1.1 100 Continue\r\n\r\n"
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 120\r\n\r\n"
        ),
        body=b"busy\n",
    )

    reply = curl.transport().request("POST", "simpleenroll", b"x", {})

    assert reply == EstReply(503, "text/plain", "120", b"busy\n")


def test_no_body_file_is_an_empty_body(curl: FakeCurl) -> None:
    curl.answer(status="204", headers="HTTP/1.1 204 No Content\r\n\r\n")

    assert curl.transport().request("GET", "cacerts", None, {}) == EstReply(204, None, None, b"")


def test_a_curl_failure_is_unreachable_with_curls_message(curl: FakeCurl) -> None:
    curl.answer(exit_code=35, stderr="curl: (35) OpenSSL/3.0: error:0A000418:tlsv1 alert unknown ca\n")

    with pytest.raises(
        EstServerUnreachable, match=r"^curl: curl: \(35\) OpenSSL/3\.0: error:0A000418:tlsv1 alert"
    ):
        curl.transport().request("GET", "cacerts", None, {})


def test_a_silent_curl_failure_names_the_exit_code(curl: FakeCurl) -> None:
    curl.answer(exit_code=7)

    with pytest.raises(EstServerUnreachable, match=r"^curl: exit 7$"):
        curl.transport().request("GET", "cacerts", None, {})


def test_curls_message_is_bounded(curl: FakeCurl) -> None:
    curl.answer(exit_code=56, stderr="e" * 10_000)

    with pytest.raises(EstServerUnreachable) as caught:
        curl.transport().request("GET", "cacerts", None, {})

    assert str(caught.value) == "curl: " + "e" * 300


@pytest.mark.slow
def test_a_curl_that_hangs_is_unreachable(curl: FakeCurl) -> None:
    curl.answer(sleep=60)
    settings = TlsSettings(
        curl.settings.server_url,
        curl.settings.trust_anchors,
        curl.settings.certificate,
        curl.settings.key,
        0.1,
    )

    with pytest.raises(EstServerUnreachable, match=r"^curl did not finish within 5\.1 s$"):
        CurlTransport(settings, curl=str(curl.path)).request("GET", "cacerts", None, {})


@pytest.mark.parametrize(
    "key",
    [None, TlsClientKey(TlsKeyKind.FILE, "/key.pem"), TlsClientKey(TlsKeyKind.PROVIDER, "/key.tss2.pem")],
)
def test_curl_is_only_for_engine_keys(tmp_path: Path, key: TlsClientKey | None) -> None:
    settings = TlsSettings(SERVER_URL, tmp_path / "a.pem", None if key is None else tmp_path / "c.pem", key)

    with pytest.raises(AgentError, match=r"^CurlTransport is for engine keys$"):
        CurlTransport(settings)


# -- the header parser ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", (None, None)),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime\r\n\r\n",
            ("application/pkcs7-mime", None),
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\ncontent-type: text/plain\r\n"
            b"RETRY-AFTER:  30 \r\n\r\n",
            ("text/plain", "30"),
        ),
        # what an interim response says does not leak into the final one
        (
            b"HTTP/1.1 100 Continue\r\nRetry-After: 5\r\nContent-Type: x/y\r\n\r\nHTTP/2 200\r\n\r\n",
            (None, None),
        ),
        (b"HTTP/1.1 200 OK\nContent-Type: a; b=c:d\n\n", ("a; b=c:d", None)),
        (b"HTTP/1.1 503 x\r\nRetry-After: 1\r\nRetry-After: 2\r\n\r\n", (None, "2")),
        (b"HTTP/1.1 200 OK\r\nX-Content-Type: no\r\nContent-Typed: no\r\n\r\n", (None, None)),
    ],
)
def test_headers_of_the_last_response(raw: bytes, expected: tuple[str | None, str | None]) -> None:
    assert _headers(raw) == expected


@given(raw=st.binary(max_size=2000))
def test_the_header_parser_takes_any_bytes(raw: bytes) -> None:
    content_type, retry_after = _headers(raw)

    assert content_type is None or isinstance(content_type, str)
    assert retry_after is None or isinstance(retry_after, str)
