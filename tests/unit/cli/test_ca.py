"""``fleetguard ca``: init (file and PKCS#11 keys), show, rotate and export, and their one-line failures."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7

from .conftest import Cli, one_line

PASSPHRASE = "correct horse battery staple"
SOFTHSM2_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")


@pytest.fixture
def passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", PASSPHRASE)


@pytest.fixture
def ca(cli: Cli, initialized: None, passphrase: None) -> None:
    cli.ok("ca", "init")


def _authorities(cli: Cli) -> list[dict[str, str]]:
    shown = cli.json("ca", "show")
    assert isinstance(shown, list)
    return shown


def test_init_creates_a_p384_root_and_a_p256_issuing_ca(
    cli: Cli, initialized: None, passphrase: None
) -> None:
    created = cli.json("ca", "init")
    shown = _authorities(cli)
    assert created == shown
    assert [(a["id"], a["role"], a["status"], a["key_backend"]) for a in shown] == [
        ("root", "root", "active", "file"),
        ("issuing-1", "issuing", "active", "file"),
    ]
    assert shown[0]["subject"] == "CN=fleetguard root CA,O=example.org"
    assert shown[1]["issuer"] == shown[0]["subject"]
    bundle = x509.load_pem_x509_certificates(cli.ok("ca", "export").stdout_bytes)
    by_fingerprint = {
        hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest(): c for c in bundle
    }
    root, issuing = (by_fingerprint[a["sha256"]] for a in shown)
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp384r1"  # type: ignore[union-attr]
    assert issuing.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert shown[1]["not_after"] == issuing.not_valid_after_utc.isoformat().replace("+00:00", "Z")


def test_show_never_prints_key_locations_or_secrets(cli: Cli, ca: None) -> None:
    for args in (("ca", "show"), ("ca", "show", "--json")):
        output = cli.ok(*args).stdout
        assert "pki/" not in output
        assert str(cli.data_dir) not in output
        assert PASSPHRASE not in output
        assert "key_ref" not in output


def test_show_for_people_is_a_table(cli: Cli, ca: None) -> None:
    lines = cli.ok("ca", "show").stdout.splitlines()
    assert lines[0].split()[:5] == ["id", "role", "status", "key", "not"]
    assert lines[1].split()[:4] == ["root", "root", "active", "file"]


def test_show_before_init_lists_nothing(cli: Cli, initialized: None) -> None:
    assert cli.json("ca", "show") == []
    result = cli.ok("ca", "show")
    assert one_line(result.stderr) == "no CA yet: run fleetguard ca init"


def test_init_twice_is_one_line_and_changes_nothing(cli: Cli, ca: None) -> None:
    before = _authorities(cli)
    result = cli("ca", "init")
    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        "error: the CA is initialized already (use `fleetguard ca rotate` for a new issuing CA)"
    )
    assert _authorities(cli) == before


def test_init_without_a_passphrase_is_one_line_and_creates_nothing(cli: Cli, initialized: None) -> None:
    result = cli("ca", "init")
    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        "error: environment variable FLEETGUARD_CA_PASSPHRASE is not set "
        "(export FLEETGUARD_CA_PASSPHRASE=...)"
    )
    assert _authorities(cli) == []
    assert not (cli.data_dir / "pki" / "root.key.pem").exists()


def test_passphrase_file_unlocks_instead_of_the_environment(
    cli: Cli, initialized: None, tmp_path: Path
) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    cli.ok("ca", "init", "--passphrase-file", str(secret))
    rotated = cli.json("ca", "rotate", "--passphrase-file", str(secret))
    assert isinstance(rotated, list)
    assert rotated[0]["id"] == "issuing-2"
    result = cli("ca", "rotate")  # the environment holds no passphrase
    assert result.exit_code == 1
    assert "FLEETGUARD_CA_PASSPHRASE is not set" in one_line(result.stderr)


def test_a_passphrase_file_others_can_read_is_refused(cli: Cli, initialized: None, tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE)
    secret.chmod(0o644)
    result = cli("ca", "init", "--passphrase-file", str(secret))
    assert result.exit_code == 1
    assert one_line(result.stderr).endswith(f"has mode 0644: others can access it (chmod 600 {secret})")
    assert _authorities(cli) == []


def test_a_wrong_passphrase_is_one_line_without_traceback(cli: Cli, ca: None) -> None:
    result = cli("ca", "rotate", env={"FLEETGUARD_CA_PASSPHRASE": "wrong"})
    assert result.exit_code == 1
    line = one_line(result.stderr)
    assert line.startswith("error: cannot decrypt key file ")
    assert line.endswith(
        "with the passphrase from environment variable FLEETGUARD_CA_PASSPHRASE (check the passphrase)"
    )
    assert "Traceback" not in result.output
    assert len(_authorities(cli)) == 2


def test_rotate_adds_an_issuing_ca_and_retires_the_old_one_for_issuance(cli: Cli, ca: None) -> None:
    rotated = cli.json("ca", "rotate")
    assert isinstance(rotated, list)
    assert [(a["id"], a["status"]) for a in rotated] == [("issuing-2", "active")]
    shown = _authorities(cli)
    assert [(a["id"], a["status"]) for a in shown] == [
        ("root", "active"),
        ("issuing-1", "retired"),
        ("issuing-2", "active"),
    ]
    assert shown[2]["subject"] == "CN=fleetguard issuing CA 2,O=example.org"
    bundle = x509.load_pem_x509_certificates(cli.ok("ca", "export").stdout_bytes)
    assert sorted(c.subject.rfc4514_string() for c in bundle) == sorted(a["subject"] for a in shown)
    der = x509.load_der_x509_certificate(cli.ok("ca", "export", "--format", "der").stdout_bytes)
    assert hashlib.sha256(der.public_bytes(serialization.Encoding.DER)).hexdigest() == shown[2]["sha256"]


def test_export_formats_parse(cli: Cli, ca: None, tmp_path: Path) -> None:
    shown = _authorities(cli)
    pem = x509.load_pem_x509_certificates(cli.ok("ca", "export", "--format", "pem").stdout_bytes)
    assert [c.subject.rfc4514_string() for c in pem] == [shown[1]["subject"], shown[0]["subject"]]
    pem[0].verify_directly_issued_by(pem[1])

    target = tmp_path / "issuing.der"
    result = cli.ok("ca", "export", str(target), "--format", "der")
    assert result.stdout == ""
    assert one_line(result.stderr) == f"wrote the trust bundle (der) to {target}"
    assert x509.load_der_x509_certificate(target.read_bytes()).subject.rfc4514_string() == shown[1]["subject"]

    bundle = pkcs7.load_der_pkcs7_certificates(cli.ok("ca", "export", "-", "--format", "pkcs7").stdout_bytes)
    assert sorted(c.subject.rfc4514_string() for c in bundle) == sorted(a["subject"] for a in shown)


def test_export_before_init_is_one_line(cli: Cli, initialized: None) -> None:
    result = cli("ca", "export")
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith("error: ")


def test_an_unknown_export_format_is_a_usage_error(cli: Cli, ca: None) -> None:
    assert cli("ca", "export", "--format", "jks").exit_code == 2


@pytest.mark.parametrize(
    "command",
    [("ca",), ("ca", "init"), ("ca", "show"), ("ca", "rotate"), ("ca", "export")],
    ids=" ".join,
)
def test_help(cli: Cli, command: tuple[str, ...]) -> None:
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage: fleetguard " in result.stdout


# -- PKCS#11 ------------------------------------------------------------------------------------------
# python-pkcs11 loads a module once per process and SoftHSM reads SOFTHSM2_CONF only then, so these
# tests run the program in a child process, with a token of their own.


def _tool_or_skip(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed under CI")
        pytest.skip(f"{tool} is not installed")
    return path


@pytest.fixture
def softhsm_env(cli: Cli, tmp_path: Path) -> dict[str, str]:
    """The environment of a child fleetguard with a fresh token ``fg-cli`` (PIN 1234)."""
    util = _tool_or_skip("softhsm2-util")
    if not SOFTHSM2_MODULE.exists():
        pytest.skip(f"{SOFTHSM2_MODULE} is missing: apt-get install softhsm2")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    config = tmp_path / "softhsm2.conf"
    config.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLEETGUARD_")},
        "SOFTHSM2_CONF": str(config),
        "FLEETGUARD_DATA_DIR": str(cli.data_dir),
        "FLEETGUARD_CA_PASSPHRASE": PASSPHRASE,
        "FLEETGUARD_PKCS11_TOKEN": "fg-cli",
        "FLEETGUARD_PKCS11_MODULE": str(SOFTHSM2_MODULE),
        "FLEETGUARD_PKCS11_PIN": "1234",
    }
    subprocess.run(
        [util, "--init-token", "--free", "--label", "fg-cli", "--pin", "1234", "--so-pin", "5678"],
        check=True, capture_output=True, timeout=60, env=env,
    )  # fmt: skip
    return env


def _openssl(*args: str) -> None:
    subprocess.run([_tool_or_skip("openssl"), *args], check=True, capture_output=True, timeout=60)


def _fleetguard(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetguard.cli", *args],
        capture_output=True, text=True, check=False, timeout=120, env=env,
    )  # fmt: skip


@pytest.mark.slow
def test_init_with_hsm_keeps_the_issuing_key_in_the_token(
    cli: Cli, initialized: None, softhsm_env: dict[str, str], tmp_path: Path
) -> None:
    created = _fleetguard(softhsm_env, "ca", "init", "--hsm", "--json")
    assert created.returncode == 0, created.stderr
    assert '"key_backend": "pkcs11"' in created.stdout
    assert '"key_backend": "file"' in created.stdout  # the root stays a file, so it can go offline
    assert not (cli.data_dir / "pki" / "issuing-1.key.pem").exists()
    assert "fg-cli" not in created.stdout  # not even the token label

    # The token signs: a device certificate issued through it verifies under the exported bundle.
    cli.ok("devices", "add", "--id", "cam-1", "--serial", "1", "--manufacturer", "Acme")
    key, csr = tmp_path / "dev.key", tmp_path / "dev.csr"
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", "/CN=cam-1", "-keyout", str(key), "-out", str(csr))  # fmt: skip
    issued = _fleetguard(softhsm_env, "certs", "issue", "cam-1", "--csr", str(csr))
    assert issued.returncode == 0, issued.stderr
    certificate = x509.load_pem_x509_certificate(issued.stdout.encode())
    issuing = x509.load_pem_x509_certificates(cli.ok("ca", "export").stdout_bytes)[0]
    certificate.verify_directly_issued_by(issuing)

    wrong_pin = _fleetguard({**softhsm_env, "FLEETGUARD_PKCS11_PIN": "0000"}, "ca", "rotate", "--hsm")
    assert wrong_pin.returncode == 1
    assert one_line(wrong_pin.stderr).startswith("error: ")
    assert "Traceback" not in wrong_pin.stderr
