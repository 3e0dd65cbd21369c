"""``fleetguard enroll``: manufacturer CAs, zero-touch rules, one-time tokens and the approval queue,
driven through the command line; a queued factory request approved end to end.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.main import get_command
from typer.testing import CliRunner

from fleetguard.cli.main import app
from fleetguard.config import Settings
from fleetguard.enroll import EnrollmentRequest, Pending
from fleetguard.installation import Runtime
from fleetguard.pki.service import FleetView
from fleetguard.types import utc_now

from .conftest import Cli, one_line

PASSPHRASE = "correct horse battery staple"
PEM = serialization.Encoding.PEM
Json = dict[str, object]


@dataclass(frozen=True)
class Factory:
    """A manufacturer's root CA, which signs factory certificates (IDevIDs) directly."""

    root: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def idevid(self, serial: str, model: str) -> x509.Certificate:
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, model),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
            ]
        )
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.root.subject)
            .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.root.not_valid_before_utc)
            .not_valid_after(self.root.not_valid_after_utc)
            .sign(self.key, hashes.SHA256())
        )


@pytest.fixture(scope="module")
def factory() -> Factory:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Acme IDevID Root"),
        ]
    )
    now = utc_now()
    root = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Factory(root, key)


@pytest.fixture
def ca(cli: Cli, initialized: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """An initialized CA and device ``cam-1``."""
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", PASSPHRASE)
    cli.ok("ca", "init")
    cli.ok("devices", "add", "--id", "cam-1", "--serial", "S1", "--manufacturer", "Acme")


@pytest.fixture
def root_pem(factory: Factory, tmp_path: Path) -> Path:
    path = tmp_path / "acme-root.pem"
    path.write_bytes(factory.root.public_bytes(PEM))
    return path


@contextmanager
def _runtime(cli: Cli) -> Iterator[Runtime]:
    runtime = Runtime(Settings(data_dir=cli.data_dir))
    try:
        yield runtime
    finally:
        runtime.close()


def _list(cli: Cli, *args: str) -> list[Json]:
    listed = cli.json("enroll", *args)
    assert isinstance(listed, list)
    return listed


def _csr() -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anything")])
    key = ec.generate_private_key(ec.SECP256R1())
    request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.DER)


# -- manufacturers -----------------------------------------------------------------------------------


def test_manufacturer_add_list_remove(cli: Cli, initialized: None, root_pem: Path) -> None:
    added = cli.ok("enroll", "manufacturers", "add", "Acme", str(root_pem), "--model-attribute", "ou")
    assert one_line(added.stdout).startswith("trusted ")

    [listed] = _list(cli, "manufacturers", "list")
    assert listed["manufacturer"] == "Acme"
    assert listed["model_attribute"] == "ou"
    assert listed["subject"] == "CN=Acme IDevID Root,O=Acme"

    removed = cli.ok("enroll", "manufacturers", "remove", str(listed["id"]))
    assert one_line(removed.stdout) == f"removed {listed['id']} of Acme (CN=Acme IDevID Root,O=Acme)"
    assert _list(cli, "manufacturers", "list") == []


def test_manufacturer_add_of_a_non_pem_file_fails_in_one_line(
    cli: Cli, initialized: None, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    result = cli("enroll", "manufacturers", "add", "Acme", str(junk))
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith("error: ")
    assert _list(cli, "manufacturers", "list") == []


# -- rules -------------------------------------------------------------------------------------------


def test_rules_set_list_remove(cli: Cli, initialized: None) -> None:
    cli.ok("enroll", "rules", "set", "Acme", "Cam-X", "--mode", "approve")
    cli.ok("enroll", "rules", "set", "Acme", "*", "--mode", "auto", "--register-unknown")
    rules = {(r["model"], r["mode"], r["register_unknown"]) for r in _list(cli, "rules", "list")}
    assert rules == {("Cam-X", "approve", False), ("*", "auto", True)}

    removed = cli.ok("enroll", "rules", "remove", "Acme", "Cam-X")
    assert one_line(removed.stdout) == "removed rule Acme Cam-X (approve)"
    assert [r["model"] for r in _list(cli, "rules", "list")] == ["*"]


def test_removing_an_unknown_rule_fails_in_one_line(cli: Cli, initialized: None) -> None:
    result = cli("enroll", "rules", "remove", "Acme", "Nope")
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith("error: ")


def test_rules_set_with_an_unknown_mode_is_a_usage_error(cli: Cli, initialized: None) -> None:
    assert cli("enroll", "rules", "set", "Acme", "Cam-X", "--mode", "yolo").exit_code == 2


# -- tokens ------------------------------------------------------------------------------------------


def test_token_is_shown_once_with_the_curl_command_and_never_listed(cli: Cli, ca: None) -> None:
    created = cli.ok("enroll", "tokens", "create", "cam-1", "--ttl-hours", "2")
    token = one_line(created.stdout)
    assert token.startswith("fge_")
    assert "shown only this once" in created.stderr
    assert (
        f"curl --cacert bundle.pem --user cam-1:{token} -H 'Content-Type: application/pkcs10' "
        "--data-binary @csr.b64 https://127.0.0.1:8443/.well-known/est/simpleenroll"
    ) in created.stderr

    [listed] = _list(cli, "tokens", "list", "--device", "cam-1")
    assert listed["device_id"] == "cam-1"
    assert listed["status"] == "active"
    expires = dt.datetime.fromisoformat(str(listed["expires_at"]))
    assert dt.timedelta(hours=1) < expires - utc_now() <= dt.timedelta(hours=2)
    secret = token.rsplit("_", 1)[1]
    for args in (("tokens", "list"), ("tokens", "list", "--json")):
        assert secret not in cli.ok("enroll", *args).output

    revoked = cli.ok("enroll", "tokens", "revoke", str(listed["id"]))
    assert one_line(revoked.stdout) == f"revoked enrollment token {listed['id']} of device cam-1"
    assert [t["status"] for t in _list(cli, "tokens", "list")] == ["revoked"]


def test_token_create_json_carries_the_token_once(cli: Cli, ca: None) -> None:
    created = cli.json("enroll", "tokens", "create", "cam-1")
    assert isinstance(created, dict)
    assert str(created["token"]).startswith("fge_")
    assert f"cam-1:{created['token']}" in str(created["curl"])
    assert all("token" not in t for t in _list(cli, "tokens", "list"))


def test_token_for_an_unknown_device_fails_in_one_line(cli: Cli, initialized: None) -> None:
    result = cli("enroll", "tokens", "create", "nope")
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith("error: ")
    assert _list(cli, "tokens", "list") == []


# -- requests ----------------------------------------------------------------------------------------


def test_requests_list_is_empty_at_first(cli: Cli, initialized: None) -> None:
    assert _list(cli, "requests", "list") == []
    assert _list(cli, "requests", "list", "--status", "pending") == []


def test_approving_an_unknown_request_fails_in_one_line(cli: Cli, ca: None) -> None:
    result = cli("enroll", "requests", "approve", "nope")
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith("error: ")


def test_reject_needs_a_reason(cli: Cli, initialized: None) -> None:
    assert cli("enroll", "requests", "reject", "some-id").exit_code == 2


def _queue_request(cli: Cli, factory: Factory, serial: str) -> str:
    request = EnrollmentRequest(
        csr=_csr(),
        client_chain=(factory.idevid(serial, "Cam-X"),),
        token=None,
        claimed_device_id=None,
        source="192.0.2.10",
    )
    with _runtime(cli) as runtime:
        outcome = runtime.enroll.enroll(request, now=utc_now())
    assert isinstance(outcome, Pending), outcome
    return outcome.request_id


def test_a_queued_factory_request_is_approved_and_its_certificate_issued(
    cli: Cli, ca: None, factory: Factory, root_pem: Path
) -> None:
    cli.ok("enroll", "manufacturers", "add", "Acme", str(root_pem))
    cli.ok("enroll", "rules", "set", "Acme", "Cam-X", "--mode", "approve")
    request_id = _queue_request(cli, factory, "ACME-7")
    [pending] = _list(cli, "requests", "list", "--status", "pending")
    assert (pending["id"], pending["device_serial"], pending["model"]) == (request_id, "ACME-7", "Cam-X")

    approved = cli.ok("enroll", "requests", "approve", request_id)
    assert one_line(approved.stdout).startswith(f"approved request {request_id}: issued certificate ")

    with _runtime(cli) as runtime:
        [certificate] = runtime.pki.certificates(view=FleetView.ALL, limit=10)
    assert certificate.device_id is not None
    [decided] = _list(cli, "requests", "list", "--status", "approved")
    assert decided["certificate_serial"] == f"{certificate.serial:x}"
    assert decided["device_id"] == certificate.device_id
    assert _list(cli, "requests", "list", "--status", "pending") == []


def test_a_queued_factory_request_is_rejected_with_a_reason(
    cli: Cli, ca: None, factory: Factory, root_pem: Path
) -> None:
    cli.ok("enroll", "manufacturers", "add", "Acme", str(root_pem))
    cli.ok("enroll", "rules", "set", "Acme", "*", "--mode", "approve")
    request_id = _queue_request(cli, factory, "ACME-8")

    rejected = cli.ok("enroll", "requests", "reject", request_id, "--reason", "not ours")
    assert one_line(rejected.stdout) == f"rejected request {request_id} (Acme ACME-8)"
    [decided] = _list(cli, "requests", "list", "--status", "rejected")
    assert (decided["id"], decided["reason"]) == (request_id, "not ours")
    again = cli("enroll", "requests", "approve", request_id)
    assert again.exit_code == 1
    assert one_line(again.stderr).startswith("error: ")
    with _runtime(cli) as runtime:
        assert runtime.pki.certificates(view=FleetView.ALL, limit=10) == []


# -- help --------------------------------------------------------------------------------------------


def _enroll_paths() -> list[tuple[str, ...]]:
    group = get_command(app).commands["enroll"]  # type: ignore[attr-defined]
    paths: list[tuple[str, ...]] = [("enroll",)]
    for name, sub in sorted(group.commands.items()):
        paths.append(("enroll", name))
        paths.extend(("enroll", name, leaf) for leaf in sorted(sub.commands))
    return paths


def test_the_enroll_tree_is_complete() -> None:
    assert set(_enroll_paths()) == {
        ("enroll",),
        ("enroll", "manufacturers"),
        *(("enroll", "manufacturers", c) for c in ("add", "list", "remove")),
        ("enroll", "rules"),
        *(("enroll", "rules", c) for c in ("set", "list", "remove")),
        ("enroll", "tokens"),
        *(("enroll", "tokens", c) for c in ("create", "list", "revoke")),
        ("enroll", "requests"),
        *(("enroll", "requests", c) for c in ("list", "approve", "reject")),
        ("enroll", "batch"),
        *(("enroll", "batch", c) for c in ("list", "show", "revoke", "verify")),
    }


@pytest.mark.parametrize("path", _enroll_paths(), ids=" ".join)
def test_every_enroll_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
