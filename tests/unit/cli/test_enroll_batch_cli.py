"""``fleetguard enroll batch``: manufacturing batches through the command line.

CSR mode from a file and from a directory, key-generation mode with the bundle passphrase from a file
and from the environment; ``list``, ``show`` and ``verify`` (also against the exported public key and
with ``openssl pkeyutl``). Every refusal prints one line and exits 1 (2 for usage), and leaves the
installation as it was: no device, no batch, no output file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .conftest import Cli, one_line

CA_PASSPHRASE = "correct horse battery staple"
BUNDLE_PASSPHRASE = "sixteen+ characters, really"
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


def _csr(common_name: str, encoding: serialization.Encoding = PEM) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(key, hashes.SHA256())
        .public_bytes(encoding)
    )


@pytest.fixture
def ready(cli: Cli, initialized: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CA and the device type cam-x."""
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", CA_PASSPHRASE)
    cli.ok("ca", "init")
    cli.ok("types", "add", "cam-x", "--manufacturer", "Acme", "--model", "Cam X")


@pytest.fixture
def csrs(tmp_path: Path) -> Path:
    path = tmp_path / "csrs.pem"
    path.write_bytes(b"".join(_csr(f"cam-{n}") for n in (1, 2, 3)))
    return path


@pytest.fixture
def passphrase_file(tmp_path: Path) -> Path:
    path = tmp_path / "bundle.pass"
    path.write_text(BUNDLE_PASSPHRASE + "\n")
    path.chmod(0o600)
    return path


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers()}  # type: ignore[union-attr]


def _nothing_recorded(cli: Cli) -> None:
    assert cli.json("devices", "list") == []
    assert cli.json("enroll", "batch", "list") == []


def _openssl(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    binary = shutil.which("openssl")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("openssl is not installed under CI: scripts/test must install it")
        pytest.skip("openssl is not installed")
    return subprocess.run([binary, *map(str, args)], capture_output=True, check=False, timeout=60)


def test_a_csr_batch_writes_a_bundle_and_is_listed_shown_and_verified(
    cli: Cli, ready: None, csrs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "batch.tar"
    created = cli.json(
        "enroll", "batch", "--model", "cam-x", "--count", "3", "--csrs", str(csrs), "--out", str(out)
    )
    assert isinstance(created, dict)
    assert (created["model"], created["mode"], created["count"], created["out"]) == (
        "cam-x",
        "csr",
        3,
        str(out),
    )
    assert (out.stat().st_mode & 0o777) == 0o600
    members = _members(out)
    assert sorted(members) == [
        "ca-chain.pem", "devices/cam-1.pem", "devices/cam-2.pem", "devices/cam-3.pem", "manifest.json",
        "manifest.sig",
    ]  # fmt: skip
    devices = cli.json("devices", "list", "--label", f"fleetguard.batch={created['id']}")
    assert isinstance(devices, list)
    assert [(d["id"], d["state"], d["device_type"]) for d in devices] == [
        (f"cam-{n}", "provisioned", "cam-x") for n in (1, 2, 3)
    ]
    listed = cli.json("enroll", "batch", "list")
    assert listed == [{k: v for k, v in created.items() if k != "out"}]

    signature = tmp_path / "shown.sig"
    shown = cli.ok("enroll", "batch", "show", str(created["id"]), "--signature", str(signature))
    assert shown.stdout_bytes == members["manifest.json"]
    assert signature.read_bytes() == members["manifest.sig"]

    (tmp_path / "manifest.json").write_bytes(members["manifest.json"])
    (tmp_path / "manifest.sig").write_bytes(members["manifest.sig"])
    verified = cli.ok(
        "enroll", "batch", "verify", str(tmp_path / "manifest.json"), str(tmp_path / "manifest.sig")
    )
    assert one_line(verified.stdout).startswith(
        f"manifest of batch {created['id']} verified: 3 devices of cam-x (csr)"
    )
    public_key = tmp_path / "pub.pem"
    public_key.write_text(cli.ok("events", "public-key").stdout)
    offline = cli.json(
        "enroll", "batch", "verify", str(tmp_path / "manifest.json"), str(tmp_path / "manifest.sig"),
        "--public-key", str(public_key),
    )  # fmt: skip
    assert offline == {
        "verified": True, "batch_id": created["id"], "model": "cam-x", "mode": "csr", "count": 3,
        "created_at": created["created_at"],
    }  # fmt: skip
    checked = _openssl(
        "pkeyutl", "-verify", "-pubin", "-inkey", public_key, "-rawin",
        "-in", tmp_path / "manifest.json", "-sigfile", tmp_path / "manifest.sig",
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr


def test_the_human_summary_names_the_batch_and_the_bundle(
    cli: Cli, ready: None, csrs: Path, tmp_path: Path
) -> None:
    result = cli.ok(
        "enroll",
        "batch",
        "--model",
        "cam-x",
        "--count",
        "3",
        "--csrs",
        str(csrs),
        "--out",
        str(tmp_path / "b.tar"),
    )
    line = one_line(result.stdout)
    assert line.startswith("batch ")
    assert ": 3 devices of cam-x from CSRs, certificates issued by issuing-1; bundle " in line
    assert "fleetguard enroll batch verify manifest.json manifest.sig" in result.stderr


def test_a_csr_directory_batch(cli: Cli, ready: None, tmp_path: Path) -> None:
    directory = tmp_path / "line"
    directory.mkdir()
    (directory / "0001.csr").write_bytes(_csr("sn-0001", DER))
    (directory / "0002.pem").write_bytes(_csr("sn-0002"))
    out = tmp_path / "batch.tar"
    cli.ok("enroll", "batch", "--model", "cam-x", "--count", "2", "--csrs", str(directory), "--out", str(out))
    assert sorted(n for n in _members(out) if n.startswith("devices/")) == [
        "devices/sn-0001.pem",
        "devices/sn-0002.pem",
    ]


def test_a_keygen_batch_delivers_keys_openssl_opens_with_the_passphrase_file(
    cli: Cli, ready: None, passphrase_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "keys.tar"
    created = cli.json(
        "enroll", "batch", "--model", "cam-x", "--count", "2", "--generate-keys", "--id-prefix", "line7-",
        "--bundle-pass-file", str(passphrase_file), "--out", str(out),
    )  # fmt: skip
    assert isinstance(created, dict)
    assert created["mode"] == "keygen"
    members = _members(out)
    assert sorted(n for n in members if n.startswith("devices/")) == [
        "devices/line7-000001.p12",
        "devices/line7-000002.p12",
    ]
    p12 = tmp_path / "d.p12"
    p12.write_bytes(members["devices/line7-000001.p12"])
    opened = _openssl(
        "pkcs12", "-in", p12, "-passin", f"file:{passphrase_file}", "-nodes", "-out", tmp_path / "d.pem"
    )
    assert opened.returncode == 0, opened.stderr
    text = (tmp_path / "d.pem").read_bytes()
    assert b"-----BEGIN PRIVATE KEY-----" in text
    leaf = x509.load_pem_x509_certificates(text)[0]
    assert leaf.subject.rfc4514_string() == "CN=line7-000001"
    (tmp_path / "chain.pem").write_bytes(members["ca-chain.pem"])
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(PEM))
    verified = _openssl("verify", "-CAfile", tmp_path / "chain.pem", tmp_path / "leaf.pem")
    assert verified.returncode == 0, verified.stderr


def test_a_keygen_batch_takes_the_passphrase_from_the_environment(
    cli: Cli, ready: None, tmp_path: Path
) -> None:
    out = tmp_path / "keys.tar"
    result = cli(
        "enroll", "batch", "--model", "cam-x", "--count", "1", "--generate-keys", "--out", str(out),
        env={"FLEETGUARD_BUNDLE_PASSPHRASE": BUNDLE_PASSPHRASE},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "holds the batch's only copy of its keys" in result.stderr
    (name,) = [n for n in _members(out) if n.startswith("devices/")]
    assert name.endswith(".p12")


# --- refusals -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        (
            ("--count", "4"),
            "error: batch rejected: 3 CSRs were given for a batch of 4; nothing was recorded "
            "(give one CSR per device, or correct the count)",
        ),
        (
            ("--count", "3", "--model", "nope"),
            "error: batch rejected: no device type 'nope'; nothing was recorded (list them with "
            "`fleetguard types list`, or create it with `fleetguard types add`)",
        ),
    ],
    ids=["count mismatch", "unknown model"],
)
def test_a_refused_batch_prints_one_line_and_records_nothing(
    cli: Cli, ready: None, csrs: Path, tmp_path: Path, case: tuple[tuple[str, ...], str]
) -> None:
    args, line = case
    options = dict(zip(args[::2], args[1::2], strict=True))
    out = tmp_path / "batch.tar"
    result = cli(
        "enroll", "batch", "--model", options.get("--model", "cam-x"), "--count", options["--count"],
        "--csrs", str(csrs), "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 1
    assert one_line(result.stderr) == line
    assert not out.exists()
    _nothing_recorded(cli)


def test_a_malformed_csr_is_named_by_index(cli: Cli, ready: None, tmp_path: Path) -> None:
    path = tmp_path / "csrs.pem"
    garbage = b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    path.write_bytes(_csr("cam-1") + garbage + _csr("cam-3"))
    result = cli(
        "enroll",
        "batch",
        "--model",
        "cam-x",
        "--count",
        "3",
        "--csrs",
        str(path),
        "--out",
        str(tmp_path / "o.tar"),
    )
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith("error: batch rejected: CSR 2: malformed")
    assert not (tmp_path / "o.tar").exists()
    _nothing_recorded(cli)


def test_a_repeated_device_id_is_named_by_index(cli: Cli, ready: None, tmp_path: Path) -> None:
    path = tmp_path / "csrs.pem"
    path.write_bytes(_csr("cam-1") + _csr("cam-2") + _csr("cam-1"))
    result = cli(
        "enroll",
        "batch",
        "--model",
        "cam-x",
        "--count",
        "3",
        "--csrs",
        str(path),
        "--out",
        str(tmp_path / "o.tar"),
    )
    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        "error: batch rejected: CSR 3: device id 'cam-1' repeats CSR 1; nothing was recorded"
    )
    _nothing_recorded(cli)


def test_a_short_bundle_passphrase_is_refused_before_any_work(cli: Cli, ready: None, tmp_path: Path) -> None:
    short = tmp_path / "short.pass"
    short.write_text("too short\n")
    short.chmod(0o600)
    result = cli(
        "enroll", "batch", "--model", "cam-x", "--count", "2", "--generate-keys",
        "--bundle-pass-file", str(short), "--out", str(tmp_path / "keys.tar"),
    )  # fmt: skip
    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        f"error: batch rejected: the bundle passphrase from file {short} has 9 characters; at least 16 are "
        "required; nothing was recorded (use a long random passphrase, e.g. from: openssl rand -base64 24)"
    )
    assert not (tmp_path / "keys.tar").exists()
    _nothing_recorded(cli)


def test_a_bundle_passphrase_file_others_can_read_is_refused(
    cli: Cli, ready: None, passphrase_file: Path, tmp_path: Path
) -> None:
    passphrase_file.chmod(0o644)
    result = cli(
        "enroll", "batch", "--model", "cam-x", "--count", "1", "--generate-keys",
        "--bundle-pass-file", str(passphrase_file), "--out", str(tmp_path / "keys.tar"),
    )  # fmt: skip
    assert result.exit_code == 1
    assert "has mode 0644: others can access it" in one_line(result.stderr)
    _nothing_recorded(cli)


def test_a_missing_bundle_passphrase_is_refused(cli: Cli, ready: None, tmp_path: Path) -> None:
    result = cli(
        "enroll",
        "batch",
        "--model",
        "cam-x",
        "--count",
        "1",
        "--generate-keys",
        "--out",
        str(tmp_path / "k.tar"),
    )
    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        "error: environment variable FLEETGUARD_BUNDLE_PASSPHRASE is not set "
        "(export FLEETGUARD_BUNDLE_PASSPHRASE=...)"
    )


def test_an_existing_output_file_is_left_alone(cli: Cli, ready: None, csrs: Path, tmp_path: Path) -> None:
    out = tmp_path / "batch.tar"
    out.write_bytes(b"yesterday's batch")
    result = cli(
        "enroll", "batch", "--model", "cam-x", "--count", "3", "--csrs", str(csrs), "--out", str(out)
    )
    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        f"error: {out} exists already (choose another --out: a bundle is never overwritten)"
    )
    assert out.read_bytes() == b"yesterday's batch"
    _nothing_recorded(cli)


@pytest.mark.parametrize(
    "case",
    [
        (("--generate-keys",), "give exactly one of --csrs PATH (CSR mode) and --generate-keys"),
        ((), "give exactly one of --csrs PATH (CSR mode) and --generate-keys"),
        (("--id-prefix", "x-"), "--id-prefix, --first and --bundle-pass-file go with --generate-keys"),
    ],
    ids=["both modes", "no mode", "prefix in CSR mode"],
)
def test_contradicting_options_are_usage_errors(
    cli: Cli, ready: None, csrs: Path, tmp_path: Path, case: tuple[tuple[str, ...], str]
) -> None:
    args, message = case
    with_csrs = () if args == () else ("--csrs", str(csrs))
    result = cli(
        "enroll",
        "batch",
        "--model",
        "cam-x",
        "--count",
        "3",
        *with_csrs,
        *args,
        "--out",
        str(tmp_path / "o.tar"),
    )
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.replace("\u2502", " ").split())  # rich boxes the message
    _nothing_recorded(cli)


def test_verify_refuses_a_changed_manifest(cli: Cli, ready: None, csrs: Path, tmp_path: Path) -> None:
    out = tmp_path / "batch.tar"
    cli.ok("enroll", "batch", "--model", "cam-x", "--count", "3", "--csrs", str(csrs), "--out", str(out))
    members = _members(out)
    (tmp_path / "manifest.json").write_bytes(members["manifest.json"].replace(b"cam-2", b"cam-9"))
    (tmp_path / "manifest.sig").write_bytes(members["manifest.sig"])
    result = cli("enroll", "batch", "verify", str(tmp_path / "manifest.json"), str(tmp_path / "manifest.sig"))
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith("error: manifest signature does not verify with this key")


def _certificates(cli: Cli) -> list[dict[str, object]]:
    listed = cli.json("certs", "list")
    assert isinstance(listed, list)
    return listed


def test_revoke_asks_first_then_revokes_the_batch(cli: Cli, ready: None, csrs: Path, tmp_path: Path) -> None:
    created = cli.json(
        "enroll", "batch", "--model", "cam-x", "--count", "3", "--csrs", str(csrs), "--out",
        str(tmp_path / "b.tar"),
    )  # fmt: skip
    assert isinstance(created, dict)
    batch = str(created["id"])

    declined = cli("enroll", "batch", "revoke", batch, "--reason", "keyCompromise", stdin="n\n")
    assert declined.exit_code == 1
    assert {c["status"] for c in _certificates(cli)} == {"valid"}

    done = cli.json("enroll", "batch", "revoke", batch, "--reason", "keyCompromise", "--yes")
    assert isinstance(done, dict)
    assert (done["batch"], done["devices"], len(done["revoked"]), done["reason"]) == (
        batch, 3, 3, "keyCompromise",
    )  # fmt: skip
    assert {(c["status"], c["reason"]) for c in _certificates(cli)} == {("revoked", "keyCompromise")}
    again = cli.ok("enroll", "batch", "revoke", batch, "--reason", "keyCompromise", "--yes")
    assert f"batch {batch}: 0 certificates of 3 devices revoked" in again.stdout


def test_show_of_an_unknown_batch_fails_in_one_line(cli: Cli, ready: None) -> None:
    result = cli("enroll", "batch", "show", "nope")
    assert result.exit_code == 1
    assert one_line(result.stderr) == "error: no batch 'nope' (list them with `fleetguard enroll batch list`)"


def test_help_documents_both_modes_and_the_output(cli: Cli) -> None:
    text = " ".join(cli("enroll", "batch", "--help").stdout.split())
    for expected in (
        "--model",
        "--count",
        "--csrs",
        "--generate-keys",
        "--out",
        "--bundle-pass-file",
        "list",
        "show",
        "verify",
    ):
        assert expected in text
