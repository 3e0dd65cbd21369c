"""``fleetguard certs``: issuance from real openssl CSRs, revocation seen by ``openssl verify -crl_check``,
fleet views, due renewals, and one-line failures that change nothing.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetguard.types import utc_now

from .conftest import Cli, one_line

PASSPHRASE = "correct horse battery staple"

Json = dict[str, object]
MakeCsr = Callable[..., Path]


def _openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.skip("openssl is not installed")
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, check=False, timeout=60)


@pytest.fixture
def ca(cli: Cli, initialized: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """An initialized CA and device ``cam-1``."""
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", PASSPHRASE)
    cli.ok("ca", "init")
    cli.ok("devices", "add", "--id", "cam-1", "--serial", "S1", "--manufacturer", "Acme")


@pytest.fixture
def make_csr(tmp_path: Path) -> MakeCsr:
    """``make_csr(name, key=...)``: a CSR made by the real openssl req, claiming CN=evil."""

    def make(
        name: str = "dev", *, key: tuple[str, ...] = ("ec", "-pkeyopt", "ec_paramgen_curve:P-256")
    ) -> Path:
        csr = tmp_path / f"{name}.csr"
        made = _openssl(
            "req", "-new", "-newkey", *key, "-nodes", "-subj", "/CN=evil",
            "-keyout", tmp_path / f"{name}.key", "-out", csr,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        return csr

    return make


@pytest.fixture
def bundle(cli: Cli, ca: None, tmp_path: Path) -> Path:
    path = tmp_path / "bundle.pem"
    cli.ok("ca", "export", str(path))
    return path


def _issue(cli: Cli, csr: Path, device: str = "cam-1") -> Json:
    issued = cli.json("certs", "issue", device, "--csr", str(csr))
    assert isinstance(issued, dict)
    return issued


def _listed(cli: Cli, *args: str) -> list[Json]:
    listed = cli.json("certs", "list", *args)
    assert isinstance(listed, list)
    return listed


def _time(value: object) -> dt.datetime:
    return dt.datetime.fromisoformat(str(value))


# -- issuance ------------------------------------------------------------------------------------------


def test_issue_takes_the_identity_from_the_inventory_not_the_csr(
    cli: Cli, bundle: Path, make_csr: MakeCsr, tmp_path: Path
) -> None:
    result = cli.ok("certs", "issue", "cam-1", "--csr", str(make_csr()))
    certificate = x509.load_pem_x509_certificate(result.stdout_bytes)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-1"
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org/device/cam-1"]
    assert "evil" not in certificate.subject.rfc4514_string()
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
    serial = f"{certificate.serial_number:x}"
    assert one_line(result.stderr).startswith(f"issued certificate {serial} for device cam-1: valid until ")

    pem = tmp_path / "dev.pem"
    pem.write_bytes(result.stdout_bytes)
    verified = _openssl("verify", "-CAfile", bundle, pem)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.strip() == f"{pem}: OK"
    assert [c["serial"] for c in _listed(cli)] == [serial]


def test_issue_json_is_the_record_with_renew_at_and_the_pem(cli: Cli, ca: None, make_csr: MakeCsr) -> None:
    issued = _issue(cli, make_csr())
    not_before, not_after = _time(issued["not_before"]), _time(issued["not_after"])
    assert not_after - not_before == dt.timedelta(days=30)
    renew_at = _time(issued["renew_at"])
    assert not_before + dt.timedelta(days=17) <= renew_at <= not_before + dt.timedelta(days=23)
    assert issued["device_id"] == "cam-1"
    assert issued["status"] == "valid"
    assert issued["expired"] is False
    assert issued["issuer_id"] == "issuing-1"
    certificate = x509.load_pem_x509_certificate(str(issued["pem"]).encode())
    assert f"{certificate.serial_number:x}" == issued["serial"]
    shown = cli.json("certs", "show", str(issued["serial"]))
    assert shown == {k: v for k, v in issued.items() if k != "pem"}


def test_issue_out_writes_the_pem_to_a_file(cli: Cli, ca: None, make_csr: MakeCsr, tmp_path: Path) -> None:
    out = tmp_path / "out.pem"
    result = cli.ok("certs", "issue", "cam-1", "--csr", str(make_csr()), "--out", str(out))
    assert result.stdout == ""
    assert one_line(result.stderr).endswith(f"; written to {out}")
    assert x509.load_pem_x509_certificate(out.read_bytes()).subject.rfc4514_string() == "CN=cam-1"


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("garbage", "CSR rejected: malformed DER: "),
        ("rsa-1024", "CSR rejected: RSA-1024 key is too weak: RSA keys need at least 2048 bits"),
        ("oversized", "CSR rejected: big.csr holds more than 16384 bytes"),
    ],
)
@pytest.mark.usefixtures("ca")
def test_a_bad_csr_is_one_line_and_records_nothing(
    cli: Cli, make_csr: MakeCsr, tmp_path: Path, kind: str, reason: str
) -> None:
    match kind:
        case "garbage":
            csr = _write(tmp_path / "junk.csr", b"not a request")
        case "rsa-1024":
            csr = make_csr("weak", key=("rsa:1024",))
        case _:
            csr = _write(tmp_path / "big.csr", b"A" * 20_000)
    result = cli("certs", "issue", "cam-1", "--csr", str(csr))
    assert result.exit_code == 1
    line = one_line(result.stderr)
    assert line.startswith(f"error: {reason}")
    assert line.endswith("(send a PKCS#10 request signed with a P-256, P-384 or RSA >= 2048 key)")
    assert result.stdout == ""
    assert _listed(cli) == []


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_tampered_csr_signature_is_rejected(cli: Cli, ca: None, make_csr: MakeCsr, tmp_path: Path) -> None:
    der = _openssl("req", "-in", make_csr(), "-outform", "DER", "-out", tmp_path / "dev.der")
    assert der.returncode == 0
    data = bytearray((tmp_path / "dev.der").read_bytes())
    data[-1] ^= 0x01  # the last byte of the signature
    result = cli("certs", "issue", "cam-1", "--csr", str(_write(tmp_path / "bad.der", bytes(data))))
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith("error: CSR rejected: ")
    assert _listed(cli) == []


def test_issue_for_an_unknown_device_is_one_line(cli: Cli, ca: None, make_csr: MakeCsr) -> None:
    result = cli("certs", "issue", "nobody", "--csr", str(make_csr()))
    assert result.exit_code == 1
    assert "nobody" in one_line(result.stderr)
    assert _listed(cli) == []


def test_issue_before_ca_init_says_to_run_it(
    cli: Cli, initialized: None, make_csr: MakeCsr, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", PASSPHRASE)
    cli.ok("devices", "add", "--id", "cam-1", "--serial", "S1", "--manufacturer", "Acme")
    result = cli("certs", "issue", "cam-1", "--csr", str(make_csr()))
    assert result.exit_code == 1
    assert one_line(result.stderr) == "error: the CA is not initialized (run `fleetguard ca init`)"


def test_a_wrong_passphrase_is_one_line_and_issues_nothing(cli: Cli, ca: None, make_csr: MakeCsr) -> None:
    result = cli("certs", "issue", "cam-1", "--csr", str(make_csr()), env={"FLEETGUARD_CA_PASSPHRASE": "no"})
    assert result.exit_code == 1
    assert one_line(result.stderr).endswith("(check the passphrase)")
    assert "Traceback" not in result.output
    assert _listed(cli) == []


def test_a_missing_csr_file_is_a_usage_error(cli: Cli, ca: None, tmp_path: Path) -> None:
    assert cli("certs", "issue", "cam-1", "--csr", str(tmp_path / "absent.csr")).exit_code == 2


def test_renew_issues_a_successor_and_keeps_the_old_certificate(
    cli: Cli, ca: None, make_csr: MakeCsr
) -> None:
    old = _issue(cli, make_csr("old"))
    renewed = cli.json("certs", "renew", "cam-1", str(old["serial"]), "--csr", str(make_csr("new")))
    assert isinstance(renewed, dict)
    assert renewed["renewed_from"] == old["serial"]
    assert renewed["serial"] != old["serial"]
    assert sorted(str(c["serial"]) for c in _listed(cli, "--device", "cam-1")) == sorted(
        [str(old["serial"]), str(renewed["serial"])]
    )


def test_renew_of_another_devices_certificate_is_refused(cli: Cli, ca: None, make_csr: MakeCsr) -> None:
    cli.ok("devices", "add", "--id", "cam-2", "--serial", "S2", "--manufacturer", "Acme")
    other = _issue(cli, make_csr("other"), device="cam-2")
    result = cli("certs", "renew", "cam-1", str(other["serial"]), "--csr", str(make_csr()))
    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        f"error: certificate {other['serial']} does not belong to device 'cam-1'"
    )
    assert len(_listed(cli)) == 1


# -- serials -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("serial", ["xyz", "0", "-1", "", "0x", "1" * 41, "8" + "0" * 39])
def test_a_malformed_serial_is_a_usage_error(cli: Cli, ca: None, serial: str) -> None:
    assert cli("certs", "show", serial).exit_code == 2
    assert cli("certs", "revoke", serial, "--reason", "keyCompromise").exit_code == 2


def test_serials_are_read_as_openssl_prints_them(cli: Cli, ca: None, make_csr: MakeCsr) -> None:
    serial = str(_issue(cli, make_csr())["serial"])
    upper = serial.upper()
    with_colons = ":".join(upper[i : i + 2] for i in range(0, len(upper), 2))
    for written in (upper, f"0x{serial}", with_colons):
        shown = cli.json("certs", "show", written)
        assert isinstance(shown, dict)
        assert shown["serial"] == serial


def test_an_unknown_serial_is_one_line(cli: Cli, ca: None) -> None:
    result = cli("certs", "show", "abc123")
    assert result.exit_code == 1
    assert one_line(result.stderr) == "error: no certificate with serial abc123 was issued here"


# -- revocation ----------------------------------------------------------------------------------------


def test_revoked_certificate_fails_openssl_crl_check(
    cli: Cli, bundle: Path, make_csr: MakeCsr, tmp_path: Path
) -> None:
    issued = _issue(cli, make_csr())
    pem = _write(tmp_path / "dev.pem", str(issued["pem"]).encode())
    crl = tmp_path / "shard.pem"
    shard = str(issued["crl_partition"])

    cli.ok("certs", "crl", "--shard", shard, "--pem", "--out", str(crl))
    good = _openssl("verify", "-crl_check", "-CAfile", bundle, "-CRLfile", crl, pem)
    assert good.returncode == 0, good.stdout + good.stderr

    result = cli.ok("certs", "revoke", str(issued["serial"]), "--reason", "keyCompromise")
    assert one_line(result.stdout) == (
        f"revoked certificate {issued['serial']} (keyCompromise); CRL shard {shard} of issuing-1 re-signed"
    )
    written = cli.ok("certs", "crl", "--shard", shard, "--pem", "--out", str(crl))
    assert f"shard {shard}: 1 revoked" in one_line(written.stderr)
    revoked = _openssl("verify", "-crl_check", "-CAfile", bundle, "-CRLfile", crl, pem)
    assert revoked.returncode != 0
    assert "certificate revoked" in revoked.stdout + revoked.stderr

    listed = _listed(cli, "--view", "revoked")
    assert [(c["serial"], c["status"], c["reason"]) for c in listed] == [
        (issued["serial"], "revoked", "keyCompromise")
    ]


def test_revoking_twice_is_harmless(cli: Cli, ca: None, make_csr: MakeCsr) -> None:
    serial = str(_issue(cli, make_csr())["serial"])
    first = cli.json("certs", "revoke", serial, "--reason", "superseded")
    again = cli.ok("certs", "revoke", serial, "--reason", "keyCompromise")
    assert isinstance(first, dict)
    assert one_line(again.stdout) == (
        f"certificate {serial} was revoked already at {first['revoked_at']} (superseded)"
    )
    shown = cli.json("certs", "show", serial)
    assert isinstance(shown, dict)
    assert shown["reason"] == "superseded"


def test_revoke_with_a_wrong_passphrase_changes_nothing(cli: Cli, ca: None, make_csr: MakeCsr) -> None:
    serial = str(_issue(cli, make_csr())["serial"])
    result = cli(
        "certs", "revoke", serial, "--reason", "keyCompromise", env={"FLEETGUARD_CA_PASSPHRASE": "no"}
    )
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith("error: cannot decrypt key file ")
    assert "Traceback" not in result.output
    shown = cli.json("certs", "show", serial)
    assert isinstance(shown, dict)
    assert shown["status"] == "valid"


def test_an_unknown_reason_is_a_usage_error(cli: Cli, ca: None, make_csr: MakeCsr) -> None:
    serial = str(_issue(cli, make_csr())["serial"])
    assert cli("certs", "revoke", serial, "--reason", "certificateHold").exit_code == 2
    assert cli("certs", "revoke", serial).exit_code == 2
    assert _listed(cli, "--view", "revoked") == []


def test_revoke_device_revokes_every_valid_certificate(cli: Cli, ca: None, make_csr: MakeCsr) -> None:
    serials = sorted(str(_issue(cli, make_csr(f"c{i}"))["serial"]) for i in range(2))
    revoked = cli.json("certs", "revoke-device", "cam-1", "--reason", "cessationOfOperation")
    assert isinstance(revoked, list)
    assert sorted(str(c["serial"]) for c in revoked) == serials
    assert sorted(str(c["serial"]) for c in _listed(cli, "--view", "revoked")) == serials
    again = cli.ok("certs", "revoke-device", "cam-1", "--reason", "cessationOfOperation")
    assert one_line(again.stdout) == "device cam-1 has no valid certificate: nothing revoked"


def test_revoke_device_of_an_unknown_device_is_one_line(cli: Cli, ca: None) -> None:
    result = cli("certs", "revoke-device", "nobody", "--reason", "keyCompromise")
    assert result.exit_code == 1
    assert "nobody" in one_line(result.stderr)


# -- CRLs ----------------------------------------------------------------------------------------------


def test_full_and_delta_crls_parse_and_verify(cli: Cli, ca: None, make_csr: MakeCsr) -> None:
    serial = str(_issue(cli, make_csr())["serial"])
    cli.ok("certs", "revoke", serial, "--reason", "keyCompromise")
    issuing = x509.load_pem_x509_certificates(cli.ok("ca", "export").stdout_bytes)[0]
    full = x509.load_der_x509_crl(cli.ok("certs", "crl", "--full").stdout_bytes)
    assert full.is_signature_valid(issuing.public_key())  # type: ignore[arg-type]
    entry = full.get_revoked_certificate_by_serial_number(int(serial, 16))
    assert entry is not None
    delta = x509.load_der_x509_crl(
        cli.ok("certs", "crl", "--full", "--delta", "--ca", "issuing-1").stdout_bytes
    )
    assert delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator).critical


@pytest.mark.parametrize(
    "args",
    [(), ("--shard", "1", "--full"), ("--shard", "1024"), ("--shard", "-1")],
    ids=["neither", "both", "past-the-last", "negative"],
)
def test_crl_scope_mistakes_are_usage_errors(cli: Cli, ca: None, args: tuple[str, ...]) -> None:
    assert cli("certs", "crl", *args).exit_code == 2


def test_the_root_publishes_no_crl_here(cli: Cli, ca: None) -> None:
    result = cli("certs", "crl", "--full", "--ca", "root")
    assert result.exit_code == 1
    assert one_line(result.stderr) == "error: no issuing CA 'root' (issuing CAs: issuing-1)"


# -- fleet views and due renewals ----------------------------------------------------------------------


def test_list_views_and_paging(
    cli: Cli, ca: None, make_csr: MakeCsr, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_lived = _issue(cli, make_csr("long"))
    monkeypatch.setenv("FLEETGUARD_DEVICE_CERTIFICATE_DAYS", "1")
    short_lived = _issue(cli, make_csr("short"))
    expiring = _listed(cli, "--view", "expiring", "--within-days", "2")
    assert [c["serial"] for c in expiring] == [short_lived["serial"]]
    assert _listed(cli, "--view", "expired") == []
    first = cli.ok("certs", "list", "--limit", "1")
    assert one_line(first.stderr) == f"more may match: add --after {short_lived['serial']}"
    table = first.stdout.splitlines()
    assert table[0].split() == ["serial", "device", "status", "not", "after", "days", "left"]
    assert table[1].split()[:3] == [short_lived["serial"], "cam-1", "valid"]
    assert table[1].split()[-1] == "0"  # less than a day left
    assert [c["serial"] for c in _listed(cli, "--device", "cam-1")] == [
        short_lived["serial"],
        long_lived["serial"],
    ]
    assert _listed(cli, "--device", "cam-2") == []


def test_due_follows_the_clock_the_grace_window_and_renewal(
    cli: Cli, ca: None, make_csr: MakeCsr, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETGUARD_DEVICE_CERTIFICATE_DAYS", "1")
    monkeypatch.setenv("FLEETGUARD_RENEWAL_GRACE_DAYS", "7")
    issued = _issue(cli, make_csr("first"))
    start = _time(issued["not_before"])

    def due_at(offset: dt.timedelta) -> list[Json]:
        listed = cli.json("certs", "due", "--at", (start + offset).isoformat())
        assert isinstance(listed, list)
        return listed

    assert due_at(dt.timedelta(hours=1)) == []  # renewal comes at 2/3 of the day, +-10 %
    due = due_at(dt.timedelta(hours=20))
    assert [(c["serial"], c["device_id"], c["renew_at"], c["expired"]) for c in due] == [
        (issued["serial"], "cam-1", issued["renew_at"], False)
    ]
    assert [c["serial"] for c in due_at(dt.timedelta(days=3))] == [issued["serial"]]  # expired, in grace
    assert due_at(dt.timedelta(days=9)) == []  # beyond the grace window: enrol again, not renew

    renewed = cli.json("certs", "renew", "cam-1", str(issued["serial"]), "--csr", str(make_csr("second")))
    assert isinstance(renewed, dict)
    assert [c["serial"] for c in due_at(dt.timedelta(hours=20))] == [renewed["serial"]]
    cli.ok("certs", "revoke", str(renewed["serial"]), "--reason", "superseded")
    assert [c["serial"] for c in due_at(dt.timedelta(hours=20))] == [issued["serial"]]


def test_due_for_people(cli: Cli, ca: None, make_csr: MakeCsr, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETGUARD_DEVICE_CERTIFICATE_DAYS", "1")
    assert one_line(cli.ok("certs", "due").stderr) == "no certificate is due for renewal"
    serial = str(_issue(cli, make_csr())["serial"])
    at = (utc_now() + dt.timedelta(hours=20)).isoformat()
    lines = cli.ok("certs", "due", "--at", at).stdout.splitlines()
    assert lines[0].split() == ["serial", "device", "renew", "at", "not", "after", "days", "left"]
    assert lines[1].split()[:2] == [serial, "cam-1"]


def test_due_at_a_time_without_offset_is_a_usage_error(cli: Cli, ca: None) -> None:
    assert cli("certs", "due", "--at", "2026-01-01T00:00:00").exit_code == 2


@pytest.mark.parametrize(
    "command",
    [
        ("certs",),
        ("certs", "issue"),
        ("certs", "renew"),
        ("certs", "list"),
        ("certs", "show"),
        ("certs", "revoke"),
        ("certs", "revoke-device"),
        ("certs", "crl"),
        ("certs", "due"),
    ],
    ids=" ".join,
)
def test_help(cli: Cli, command: tuple[str, ...]) -> None:
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage: fleetguard " in result.stdout


def test_issue_server_writes_a_private_key_and_a_chain_that_verifies(tmp_path: Path) -> None:
    import os
    import subprocess

    from typer.testing import CliRunner

    from fleetguard.cli.main import app

    data = tmp_path / "data"
    env = {"FLEETGUARD_CA_PASSPHRASE": "issue-server-test"}
    runner = CliRunner()
    assert (
        runner.invoke(app, ["--data-dir", str(data), "init", "--trust-domain", "example.org"]).exit_code == 0
    )
    assert runner.invoke(app, ["--data-dir", str(data), "ca", "init"], env=env).exit_code == 0
    result = runner.invoke(
        app,
        ["--data-dir", str(data), "certs", "issue-server", "broker", "--dns", "broker.example.org",
         "--ip", "127.0.0.1", "--json"],
        env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    servers = data / "pki" / "servers"
    assert os.stat(servers / "broker.key.pem").st_mode & 0o777 == 0o600
    bundle = tmp_path / "bundle.pem"
    assert runner.invoke(app, ["--data-dir", str(data), "ca", "export", str(bundle)], env=env).exit_code == 0
    verify = subprocess.run(
        ["openssl", "verify", "-purpose", "sslserver", "-CAfile", str(bundle), str(servers / "broker.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    bad = runner.invoke(
        app,
        ["--data-dir", str(data), "certs", "issue-server", "x", "--dns", "x.example", "--ip", "nope"],
        env=env,
    )
    assert bad.exit_code == 2
