"""The provider transport's child process: the JSON exchange, and what a failing child becomes."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from fleetguard.agent.errors import AgentError, EstServerUnreachable
from fleetguard.agent.transport import MAX_REPLY_BYTES, EstReply, TlsClientKey, TlsKeyKind, TlsSettings
from fleetguard.agent.transport_child import (
    ProviderTransport,
    _reply_from,
    _settings_from_json,
    _settings_to_json,
)
from fleetguard.enroll import est

from .conftest import SERVER_URL, Loopback, TinyCa, closed_port, device_name, write_key, write_pem


def _completed(
    stdout: bytes, *, returncode: int = 0, stderr: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.CompletedProcess(["child"], returncode, stdout, stderr)


def _answer(**fields: object) -> bytes:
    answer: dict[str, object] = {"status": 200, "content_type": est.TEXT, "retry_after": None, "body": ""}
    answer.update(fields)
    return json.dumps(answer).encode()


# -- _reply_from ----------------------------------------------------------------------------------


def test_a_childs_answer_is_the_reply() -> None:
    stdout = _answer(status=202, retry_after="30", body=base64.b64encode(b"pending\n").decode())

    assert _reply_from(_completed(stdout)) == EstReply(202, est.TEXT, "30", b"pending\n")


def test_a_childs_error_is_unreachable_with_its_message() -> None:
    stdout = json.dumps({"error": "no answer from https://est:8443: Connection refused"}).encode()

    with pytest.raises(EstServerUnreachable, match=r"^no answer from https://est:8443: Connection refused$"):
        _reply_from(_completed(stdout, returncode=1))


def test_a_childs_error_is_bounded() -> None:
    stdout = json.dumps({"error": "e" * 5000}).encode()

    with pytest.raises(EstServerUnreachable) as caught:
        _reply_from(_completed(stdout, returncode=1))

    assert str(caught.value) == "e" * 500


def test_an_error_field_wins_even_with_exit_status_zero() -> None:
    with pytest.raises(EstServerUnreachable, match=r"^boom$"):
        _reply_from(_completed(_answer(error="boom")))


def test_a_failed_child_with_a_reply_shape_is_still_a_failure() -> None:
    with pytest.raises(EstServerUnreachable, match=r"^the TLS child process failed$"):
        _reply_from(_completed(_answer(), returncode=1))


def test_garbage_is_unreachable_with_the_last_line_of_stderr() -> None:
    stderr = b"Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'tpm2'\n"

    with pytest.raises(
        EstServerUnreachable,
        match=r"^the TLS child process failed: ModuleNotFoundError: No module named 'tpm2'$",
    ):
        _reply_from(_completed(b"Segmentation fault", returncode=-11, stderr=stderr))


@pytest.mark.parametrize(
    "stdout",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b"5",
        b'"error"',
        b"null",
        b'{"status": 200}',
        _answer(body="not base64!"),
        _answer(status="two hundred"),
        _answer(status=None),
        _answer(content_type=5),
        _answer(retry_after=["120"]),
        _answer(body=None),
    ],
)
def test_any_other_answer_is_unreachable(stdout: bytes) -> None:
    with pytest.raises(EstServerUnreachable, match=r"^the TLS child process failed: no output$"):
        _reply_from(_completed(stdout))


def test_the_stderr_line_is_bounded() -> None:
    with pytest.raises(EstServerUnreachable) as caught:
        _reply_from(_completed(b"?", returncode=1, stderr=b"x" * 5000))

    assert str(caught.value) == "the TLS child process failed: " + "x" * 300


def test_an_oversized_answer_is_refused_before_it_is_parsed() -> None:
    stdout = _answer(body="A" * (2 * MAX_REPLY_BYTES))

    with pytest.raises(EstServerUnreachable, match=r"^the TLS child process answered too much$"):
        _reply_from(_completed(stdout))


# -- the settings' round trip ---------------------------------------------------------------------


def test_settings_survive_the_trip_to_the_child(tmp_path: Path) -> None:
    settings = TlsSettings(
        SERVER_URL,
        tmp_path / "anchors.pem",
        certificate=tmp_path / "certificate.pem",
        key=TlsClientKey(
            TlsKeyKind.PROVIDER,
            str(tmp_path / "device-key.tss2.pem"),
            openssl_conf=tmp_path / "tpm2-openssl.cnf",
            environment={"TPM2OPENSSL_TCTI": "tabrmd"},
        ),
        timeout_s=12.5,
    )

    child = _settings_from_json(json.loads(json.dumps(_settings_to_json(settings))))

    # the child reads the key as a file: its OpenSSL already loaded the provider from OPENSSL_CONF
    assert child == TlsSettings(
        SERVER_URL,
        tmp_path / "anchors.pem",
        certificate=tmp_path / "certificate.pem",
        key=TlsClientKey(TlsKeyKind.FILE, str(tmp_path / "device-key.tss2.pem")),
        timeout_s=12.5,
    )


def test_settings_without_a_client_key_survive_the_trip(tmp_path: Path) -> None:
    settings = TlsSettings(SERVER_URL, tmp_path / "anchors.pem")

    assert _settings_from_json(json.loads(json.dumps(_settings_to_json(settings)))) == settings


def test_the_json_carries_no_environment(tmp_path: Path) -> None:
    key = TlsClientKey(TlsKeyKind.PROVIDER, "k.pem", environment={"SECRET_PIN": "1234"})
    settings = TlsSettings(SERVER_URL, tmp_path / "a.pem", tmp_path / "c.pem", key)

    assert "1234" not in json.dumps(_settings_to_json(settings))


# -- ProviderTransport with a real child ----------------------------------------------------------


@pytest.mark.parametrize(
    "key", [None, TlsClientKey(TlsKeyKind.FILE, "/k.pem"), TlsClientKey(TlsKeyKind.ENGINE, "pkcs11:x")]
)
def test_the_provider_transport_is_only_for_provider_keys(tmp_path: Path, key: TlsClientKey | None) -> None:
    settings = TlsSettings(SERVER_URL, tmp_path / "a.pem", None if key is None else tmp_path / "c.pem", key)

    with pytest.raises(AgentError, match=r"^ProviderTransport is for provider keys$"):
        ProviderTransport(settings)


def _provider_settings(url: str, anchors: Path, certificate: Path, key: Path) -> TlsSettings:
    # a plain PEM key stands in for a TPM-wrapped one: the child's OpenSSL reads both as a file
    return TlsSettings(url, anchors, certificate, TlsClientKey(TlsKeyKind.PROVIDER, str(key)), timeout_s=5)


def test_the_child_reaches_the_server_with_the_client_certificate(loopback: Loopback) -> None:
    transport = ProviderTransport(
        _provider_settings(loopback.url, loopback.anchors, loopback.device_certificate, loopback.device_key)
    )

    reply = transport.request("POST", "simplereenroll", b"csr\n", {"Content-Type": "application/pkcs10"})

    assert (reply.status, reply.content_type, reply.retry_after) == (202, est.TEXT, "42")
    seen = json.loads(reply.body)
    assert (seen["path"], seen["body"], seen["client"]) == (
        "/.well-known/est/simplereenroll",
        "csr\n",
        "dev-1",
    )


def test_a_child_that_gets_no_answer_is_unreachable(tmp_path: Path, tiny_ca: TinyCa) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = write_pem(tmp_path / "device.pem", tiny_ca.issue(key.public_key(), device_name("dev-1")))
    url = f"https://127.0.0.1:{closed_port()}"
    transport = ProviderTransport(
        _provider_settings(
            url,
            write_pem(tmp_path / "root.pem", tiny_ca.root),
            certificate,
            write_key(tmp_path / "k.pem", key),
        )
    )

    with pytest.raises(EstServerUnreachable, match=rf"^no answer from {url}: .*Connection refused \(check"):
        transport.request("GET", "cacerts", None, {})
