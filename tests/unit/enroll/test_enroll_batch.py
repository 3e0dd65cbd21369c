"""Manufacturing batches on a real installation (SQLite, and PostgreSQL through scripts/test).

CSR mode and key-generation mode end to end through :class:`BatchService` and :class:`BundleFile`:
what is recorded (devices, certificates, the batch and its events, in one transaction), what the
bundle holds (checked with the real ``openssl``: ``pkcs12``, ``verify`` and ``pkeyutl``), and, for
every bad input, the exact error and a store left exactly as it was. The signed manifest's format is
checked by a property test.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from fleetguard.config import Settings
from fleetguard.enroll import (
    BATCH_LABEL,
    MAX_BATCH_DEVICES,
    BatchMode,
    BatchRejected,
    BundleFile,
    CsrInput,
    EnrollmentConflict,
    EnrollmentError,
    EnrollmentNotFound,
    IssuedBatch,
    Manifest,
    ManifestDevice,
    ManifestInvalid,
    parse_manifest,
    read_csrs,
    require_bundle_passphrase,
    split_pem_csrs,
    verify_manifest,
)
from fleetguard.enroll.batch import BatchService, Progress
from fleetguard.enroll.manifest import sign_manifest
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.lifecycle import State
from fleetguard.inventory.model import DeviceFilter, DeviceSpec
from fleetguard.pki.keys import Passphrase
from fleetguard.pki.revocation import RevocationReason
from fleetguard.pki.service import CertificateService, CertificateStatus, FleetView
from fleetguard.store.models import EnrollmentBatchRow
from fleetguard.types import utc_now

TRUST_DOMAIN = "fleet.example.org"
CA_PASSPHRASE = "correct horse battery staple"
BUNDLE_PASSPHRASE = "a long bundle passphrase, 41 characters.."
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
MODEL = "cam-x"


# --- CSRs --------------------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _csr(
    *names: str, key: ec.EllipticCurvePrivateKey | None = None, encoding: serialization.Encoding = PEM
) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name) for name in names])
    request = (
        x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key or _key(), hashes.SHA256())
    )
    return request.public_bytes(encoding)


def _csrs(*ids: str) -> list[CsrInput]:
    return [CsrInput(_csr(device_id)) for device_id in ids]


# --- an installation with a CA and a device type --------------------------------------------------------


@dataclass
class Setup:
    runtime: Runtime
    tmp: Path

    @property
    def batches(self) -> BatchService:
        return self.runtime.batches

    def state(self) -> tuple[int, int, int, int]:
        """(devices, certificates, batches, event-log entries): what a refused batch must not change."""
        runtime = self.runtime
        with runtime.database.reading() as session:
            batches = session.execute(select(func.count()).select_from(EnrollmentBatchRow)).scalar_one()
        certificates = len(runtime.pki.certificates(view=FleetView.ALL, limit=10_000))
        return runtime.inventory.count(), certificates, int(batches), runtime.log.size()

    def leftovers(self) -> list[str]:
        """Files in the output directory: a refused batch leaves no bundle and no temporary file."""
        return sorted(path.name for path in (self.tmp / "out").iterdir())


@pytest.fixture
def setup(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", CA_PASSPHRASE)
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    initialize(settings, TRUST_DOMAIN, now=utc_now())
    runtime = Runtime(settings)
    runtime.pki.initialize(actor="ops", now=utc_now())
    runtime.inventory.add_device_type(MODEL, actor="ops", manufacturer="Acme", model="Cam X")
    (tmp_path / "out").mkdir()
    yield Setup(runtime, tmp_path)
    runtime.close()


def _bundle(setup: Setup, name: str = "batch.tar", *, passphrase: str | None = None) -> BundleFile:
    secret = None if passphrase is None else Passphrase(passphrase.encode(), source="test")
    return BundleFile(setup.tmp / "out" / name, passphrase=secret)


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers()}  # type: ignore[union-attr]


def _openssl(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    binary = shutil.which("openssl")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("openssl is not installed under CI: scripts/test must install it")
        pytest.skip("openssl is not installed")
    return subprocess.run(
        [binary, *map(str, args)], input=stdin, capture_output=True, check=False, timeout=60
    )


# --- CSR mode ---------------------------------------------------------------------------------------------


def test_a_csr_batch_registers_issues_and_records_everything_in_order(setup: Setup) -> None:
    before = setup.runtime.log.size()
    issued = setup.batches.create_from_csrs(MODEL, 3, _csrs("cam-1", "cam-2", "cam-3"), actor="ops")
    batch = issued.batch
    assert (batch.model, batch.mode, batch.count, batch.actor) == (MODEL, BatchMode.CSR, 3, "ops")
    devices = setup.runtime.inventory.find(DeviceFilter(labels={BATCH_LABEL: batch.id}))
    assert [(d.id, d.serial, d.manufacturer, d.model, d.device_type, d.state) for d in devices] == [
        (f"cam-{n}", f"cam-{n}", "Acme", "Cam X", MODEL, State.PROVISIONED) for n in (1, 2, 3)
    ]
    records = {r.device_id: r for r in setup.runtime.pki.certificates(view=FleetView.ALL, limit=100)}
    for device in issued.devices:
        assert device.key is None
        assert records[device.device_id].der == device.certificate.public_bytes(DER)
        uri = device.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert uri.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"spiffe://{TRUST_DOMAIN}/device/{device.device_id}"
        ]
    entries = setup.runtime.log.entries(after_seq=before, limit=100)
    assert [(e.action, e.subject) for e in entries] == [
        ("enroll.batch_created", f"enroll-batch:{batch.id}"),
        *((("device.registered", f"device:cam-{n}")) for n in (1, 2, 3)),
        *((("cert.issued", f"device:cam-{n}")) for n in (1, 2, 3)),
        *((("device.provision", f"device:cam-{n}")) for n in (1, 2, 3)),
        ("enroll.batch_completed", f"enroll-batch:{batch.id}"),
    ]
    assert entries[0].details() == {
        "batch": batch.id, "count": 3, "manifest_sha256": batch.manifest_sha256.hex(), "mode": "csr",
        "model": MODEL,
    }  # fmt: skip
    assert entries[-1].details()["issuer"] == "issuing-1"
    assert {e.actor for e in entries} == {"ops"}


def test_the_manifest_lists_every_certificate_and_verifies_with_the_checkpoint_key(setup: Setup) -> None:
    issued = setup.batches.create_from_csrs(MODEL, 2, _csrs("cam-1", "cam-2"), actor="ops")
    public_key = setup.runtime.signer().public_key()
    verify_manifest(issued.manifest, issued.signature, public_key)
    manifest = parse_manifest(issued.manifest)
    issuing = setup.runtime.pki.authority().issuing
    assert (manifest.batch_id, manifest.model, manifest.mode, manifest.actor) == (
        issued.batch.id, MODEL, BatchMode.CSR, "ops",
    )  # fmt: skip
    assert manifest.trust_domain == TRUST_DOMAIN
    assert (manifest.issuer_id, manifest.issuer_sha256) == ("issuing-1", issuing.fingerprint(hashes.SHA256()))
    assert manifest.devices == tuple(
        ManifestDevice(
            d.device_id, d.certificate.serial_number, d.certificate.fingerprint(hashes.SHA256()),
            d.certificate.not_valid_after_utc,
        )
        for d in issued.devices
    )  # fmt: skip
    assert hashlib.sha256(issued.manifest).digest() == issued.batch.manifest_sha256
    stored = setup.batches.batch(issued.batch.id)
    assert (stored.manifest, stored.signature, stored.batch) == (
        issued.manifest,
        issued.signature,
        issued.batch,
    )
    assert setup.runtime.log.verify(public_key).intact


def test_the_csr_bundle_holds_the_manifest_its_signature_and_certificates_that_openssl_verifies(
    setup: Setup,
) -> None:
    bundle = _bundle(setup)
    issued = setup.batches.create_from_csrs(MODEL, 2, _csrs("cam-1", "cam-2"), actor="ops", sink=bundle)
    assert (bundle.path.stat().st_mode & 0o777) == 0o600
    assert setup.leftovers() == ["batch.tar"]
    members = _members(bundle.path)
    assert list(members) == [
        "manifest.json",
        "manifest.sig",
        "ca-chain.pem",
        "devices/cam-1.pem",
        "devices/cam-2.pem",
    ]
    assert (members["manifest.json"], members["manifest.sig"]) == (issued.manifest, issued.signature)
    files = setup.tmp / "files"
    files.mkdir()
    for name, content in members.items():
        (files / name.replace("/", "_")).write_bytes(content)
    (files / "pub.pem").write_bytes(setup.runtime.signer().public_key_pem())
    checked = _openssl(
        "pkeyutl", "-verify", "-pubin", "-inkey", files / "pub.pem", "-rawin",
        "-in", files / "manifest.json", "-sigfile", files / "manifest.sig",
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert b"Signature Verified Successfully" in checked.stdout
    for device_id in ("cam-1", "cam-2"):
        chain = x509.load_pem_x509_certificates(members[f"devices/{device_id}.pem"])
        assert chain[1:] == list(setup.runtime.pki.authority().chain())
        verified = _openssl("verify", "-CAfile", files / "ca-chain.pem", files / f"devices_{device_id}.pem")
        assert verified.returncode == 0, verified.stderr


def test_a_csr_batch_through_the_api_path_needs_no_sink(setup: Setup) -> None:
    issued = setup.batches.create_from_csrs(MODEL, 1, _csrs("cam-1"), actor="api:token")
    assert [d.device_id for d in issued.devices] == ["cam-1"]
    assert setup.leftovers() == []


# --- refusals: exact errors, nothing recorded, nothing written ----------------------------------------------


@dataclass(frozen=True)
class Refusal:
    count: int
    csrs: Callable[[], list[CsrInput]]
    message: str
    model: str = MODEL


_SHARED_KEY = _key()
_REFUSALS = {
    "malformed CSR": Refusal(
        3,
        lambda: [*_csrs("cam-1"), CsrInput(b"not a request"), *_csrs("cam-3")],
        r"^batch rejected: CSR 2: malformed DER: not a DER-encoded PKCS#10 certification request; "
        r"nothing was recorded",
    ),
    "bad signature": Refusal(
        2,
        lambda: [*_csrs("cam-1"), CsrInput(_tampered(_csr("cam-2")))],
        r"^batch rejected: CSR 2: signature does not verify",
    ),
    "count mismatch": Refusal(
        4,
        lambda: _csrs("cam-1", "cam-2", "cam-3"),
        r"^batch rejected: 3 CSRs were given for a batch of 4; nothing was recorded \(give one CSR",
    ),
    "duplicate CN": Refusal(
        3,
        lambda: _csrs("cam-1", "cam-2", "cam-1"),
        r"^batch rejected: CSR 3: device id 'cam-1' repeats CSR 1; nothing was recorded$",
    ),
    "shared key": Refusal(
        2,
        lambda: [CsrInput(_csr("cam-1", key=_SHARED_KEY)), CsrInput(_csr("cam-2", key=_SHARED_KEY))],
        r"^batch rejected: CSR 2: the public key repeats CSR 1; nothing was recorded$",
    ),
    "no CN": Refusal(
        1,
        lambda: [CsrInput(_csr())],
        r"^batch rejected: CSR 1: subject CN: the subject names 0 CNs; exactly one, the device id, is",
    ),
    "two CNs": Refusal(
        1,
        lambda: [CsrInput(_csr("cam-1", "cam-2"))],
        r"^batch rejected: CSR 1: subject CN: the subject names 2 CNs",
    ),
    "CN not a device id": Refusal(
        1,
        lambda: [CsrInput(_csr("cam/1"))],
        r"^batch rejected: CSR 1: subject CN: invalid device id 'cam/1'",
    ),
    "unknown model": Refusal(
        1,
        lambda: _csrs("cam-1"),
        r"^batch rejected: no device type 'nope'; nothing was recorded \(list them with `fleetguard types",
        model="nope",
    ),
    "empty batch": Refusal(0, list, r"^batch rejected: a batch has 1 to 100000 devices, not 0"),
}


def _tampered(pem: bytes) -> bytes:
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(DER))
    der[-1] ^= 0x01  # the last byte of the signature
    return bytes(der)


@pytest.mark.parametrize("refusal", _REFUSALS.values(), ids=_REFUSALS.keys())
def test_a_bad_batch_is_refused_whole_with_the_csr_named_and_nothing_recorded(
    setup: Setup, refusal: Refusal
) -> None:
    before = setup.state()
    with pytest.raises(BatchRejected, match=refusal.message):
        setup.batches.create_from_csrs(
            refusal.model, refusal.count, refusal.csrs(), actor="ops", sink=_bundle(setup)
        )
    assert setup.state() == before
    assert setup.leftovers() == []


def test_a_registered_device_is_refused_by_its_csr_index(setup: Setup) -> None:
    setup.runtime.inventory.register(DeviceSpec(id="cam-2", serial="X", manufacturer="Acme"), actor="ops")
    before = setup.state()
    with pytest.raises(
        BatchRejected,
        match=r"^batch rejected: CSR 2: device 'cam-2' is registered already; nothing was recorded",
    ) as refused:
        setup.batches.create_from_csrs(MODEL, 3, _csrs("cam-1", "cam-2", "cam-3"), actor="ops")
    assert (refused.value.index, refused.value.origin) == (2, None)
    assert setup.state() == before


def test_a_serial_taken_by_another_device_is_refused_inside_the_transaction(setup: Setup) -> None:
    # Same manufacturer and serial as CSR 2's device id, under another id: the store's check names it.
    setup.runtime.inventory.register(DeviceSpec(id="other", serial="cam-2", manufacturer="Acme"), actor="ops")
    before = setup.state()
    with pytest.raises(
        BatchRejected, match=r"^batch rejected: CSR 2: serial 'cam-2' of 'Acme' belongs to device"
    ):
        setup.batches.create_from_csrs(MODEL, 2, _csrs("cam-1", "cam-2"), actor="ops", sink=_bundle(setup))
    assert setup.state() == before
    assert setup.leftovers() == []


def test_a_batch_larger_than_the_bound_is_refused_before_any_work(setup: Setup) -> None:
    with pytest.raises(
        BatchRejected, match=f"a batch has 1 to {MAX_BATCH_DEVICES} devices, not {MAX_BATCH_DEVICES + 1}"
    ):
        setup.batches.create_from_csrs(MODEL, MAX_BATCH_DEVICES + 1, [], actor="ops")


def test_an_existing_output_file_is_never_overwritten_and_nothing_is_recorded(setup: Setup) -> None:
    target = setup.tmp / "out" / "batch.tar"
    target.write_bytes(b"the previous batch")
    before = setup.state()
    with pytest.raises(EnrollmentConflict, match=r"batch.tar exists already \(choose another --out"):
        setup.batches.create_from_csrs(MODEL, 1, _csrs("cam-1"), actor="ops", sink=_bundle(setup))
    assert target.read_bytes() == b"the previous batch"
    assert setup.state() == before
    assert setup.leftovers() == ["batch.tar"]


# --- crash consistency: one transaction ---------------------------------------------------------------


@dataclass
class FakeSink:
    """Records what the service asks of it; fails where told to."""

    fail_stage: bool = False
    calls: list[str] = field(default_factory=list)
    staged: list[IssuedBatch] = field(default_factory=list)

    def stage(self, batch: IssuedBatch, progress: Progress | None = None) -> None:
        self.calls.append("stage")
        if self.fail_stage:
            raise OSError(28, "No space left on device")
        self.staged.append(batch)

    def publish(self) -> object:
        self.calls.append("publish")
        return None

    def discard(self) -> None:
        self.calls.append("discard")


def test_a_bundle_that_cannot_be_written_records_nothing(setup: Setup) -> None:
    before = setup.state()
    sink = FakeSink(fail_stage=True)
    with pytest.raises(OSError, match="No space left on device"):
        setup.batches.create_with_keys(MODEL, 2, actor="ops", sink=sink)
    assert sink.calls == ["stage"]
    assert setup.state() == before


def test_a_failure_inside_the_transaction_rolls_back_devices_certificates_and_events(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash-consistency claim: devices and certificates are written before the batch row, in the
    same transaction, so a failure after them leaves none of them behind and the bundle is discarded."""

    def fail(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the process dies here")

    monkeypatch.setattr(setup.runtime.inventory, "transition_devices", fail)
    before = setup.state()
    sink = FakeSink()
    with pytest.raises(RuntimeError, match="the process dies here"):
        setup.batches.create_from_csrs(MODEL, 2, _csrs("cam-1", "cam-2"), actor="ops", sink=sink)
    assert sink.calls == ["stage", "discard"]
    assert setup.state() == before


def test_a_serial_collision_signs_the_batch_again(setup: Setup) -> None:
    first = setup.batches.create_from_csrs(MODEL, 1, _csrs("cam-1"), actor="ops")
    used = first.devices[0].certificate.serial_number
    serials = iter([used, 2**150 + 7])  # the first is taken: the second attempt gets a fresh one
    runtime = setup.runtime
    pki = CertificateService(
        runtime.database, runtime.log, runtime.inventory, runtime.settings, TRUST_DOMAIN,
        serials=lambda: next(serials),
    )  # fmt: skip
    service = BatchService(
        runtime.database, runtime.log, runtime.inventory, pki, trust_domain=TRUST_DOMAIN,
        signing_key=Ed25519PrivateKey.generate,
    )  # fmt: skip
    sink = FakeSink()
    issued = service.create_from_csrs(MODEL, 1, _csrs("cam-2"), actor="ops", sink=sink)
    assert issued.devices[0].certificate.serial_number == 2**150 + 7
    assert sink.calls == ["stage", "discard", "stage", "publish"]
    assert sink.staged[1].batch == issued.batch
    pki.keyring.close()


# --- key-generation mode ----------------------------------------------------------------------------------


def test_a_keygen_bundle_holds_encrypted_pkcs12_that_openssl_opens_with_the_passphrase(setup: Setup) -> None:
    bundle = _bundle(setup, "keys.tar", passphrase=BUNDLE_PASSPHRASE)
    issued = setup.batches.create_with_keys(MODEL, 2, actor="ops", sink=bundle, id_prefix="line7-", first=9)
    assert [d.device_id for d in issued.devices] == ["line7-000009", "line7-000010"]
    assert all(d.key is None for d in issued.devices)  # the keys went to the bundle only
    assert issued.batch.mode is BatchMode.KEYGEN
    assert (bundle.path.stat().st_mode & 0o777) == 0o600
    members = _members(bundle.path)
    assert list(members) == [
        "manifest.json",
        "manifest.sig",
        "ca-chain.pem",
        "devices/line7-000009.p12",
        "devices/line7-000010.p12",
    ]
    work = setup.tmp / "work"
    work.mkdir()
    (work / "pass").write_text(BUNDLE_PASSPHRASE + "\n")
    (work / "d.p12").write_bytes(members["devices/line7-000009.p12"])
    info = _openssl("pkcs12", "-in", work / "d.p12", "-passin", f"file:{work / 'pass'}", "-info", "-noout")
    assert info.returncode == 0, info.stderr
    assert b"MAC: sha256" in info.stderr
    assert info.stderr.count(b"PBES2, PBKDF2, AES-256-CBC, Iteration 20000, PRF hmacWithSHA256") == 2
    opened = _openssl(
        "pkcs12", "-in", work / "d.p12", "-passin", f"file:{work / 'pass'}", "-nodes", "-out", work / "d.pem"
    )
    assert opened.returncode == 0, opened.stderr
    text = (work / "d.pem").read_bytes()
    key = serialization.load_pem_private_key(
        text[text.index(b"-----BEGIN PRIVATE KEY-----") :], password=None
    )
    leaf, *chain = x509.load_pem_x509_certificates(text)
    assert leaf == issued.devices[0].certificate
    assert key.public_key() == leaf.public_key()
    assert set(chain) == set(setup.runtime.pki.authority().chain())
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    (work / "leaf.pem").write_bytes(leaf.public_bytes(PEM))
    (work / "chain.pem").write_bytes(members["ca-chain.pem"])
    verified = _openssl("verify", "-CAfile", work / "chain.pem", work / "leaf.pem")
    assert verified.returncode == 0, verified.stderr
    wrong = _openssl("pkcs12", "-in", work / "d.p12", "-passin", "pass:not the passphrase", "-noout")
    assert wrong.returncode != 0


def test_generated_private_keys_are_never_stored(setup: Setup) -> None:
    if setup.runtime.database.engine.dialect.name != "sqlite":
        pytest.skip("reads the SQLite file")
    bundle = _bundle(setup, "keys.tar", passphrase=BUNDLE_PASSPHRASE)
    setup.batches.create_with_keys(MODEL, 3, actor="ops", sink=bundle, id_prefix="k-")
    setup.runtime.close()
    stored = b"".join(p.read_bytes() for p in (setup.tmp / "data").rglob("*") if p.is_file())
    for content in _members(bundle.path).values():
        if not content.startswith(b"\x30"):
            continue  # manifest, signature, chain
        key, _, _ = pkcs12.load_key_and_certificates(content, BUNDLE_PASSPHRASE.encode())
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        scalar = key.private_numbers().private_value.to_bytes(32, "big")
        assert scalar not in stored
        assert (
            key.private_bytes(DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            not in stored
        )


def test_keygen_ids_are_uuids_without_a_prefix(setup: Setup) -> None:
    issued = setup.batches.create_with_keys(MODEL, 2, actor="ops", sink=FakeSink())
    for device in issued.devices:
        assert len(device.device_id) == 36
        assert setup.runtime.inventory.get(device.device_id).state is State.PROVISIONED


def test_a_prefix_that_makes_bad_ids_is_refused(setup: Setup) -> None:
    before = setup.state()
    with pytest.raises(
        BatchRejected, match=r"^batch rejected: --id-prefix 'line 7/' makes invalid device id"
    ):
        setup.batches.create_with_keys(MODEL, 2, actor="ops", sink=FakeSink(), id_prefix="line 7/")
    assert setup.state() == before


def test_a_keygen_batch_over_registered_ids_is_refused(setup: Setup) -> None:
    setup.runtime.inventory.register(DeviceSpec(id="k-000002", serial="S", manufacturer="Acme"), actor="ops")
    before = setup.state()
    with pytest.raises(
        BatchRejected, match=r"^batch rejected: device 2: device 'k-000002' is registered already"
    ):
        setup.batches.create_with_keys(MODEL, 2, actor="ops", sink=FakeSink(), id_prefix="k-")
    assert setup.state() == before


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("fifteen chars..", r"has 15 characters; at least 16 are required"),
        ("\u00e9" * 15 + "x", None),  # 16 characters, 31 bytes: counted as characters
    ],
)
def test_the_bundle_passphrase_needs_16_characters(secret: str, message: str | None) -> None:
    passphrase = Passphrase(secret.encode(), source="file pass.txt")
    if message is None:
        require_bundle_passphrase(passphrase)
        return
    with pytest.raises(
        BatchRejected, match=f"^batch rejected: the bundle passphrase from file pass.txt {message}"
    ):
        require_bundle_passphrase(passphrase)


def test_a_keygen_bundle_without_a_passphrase_is_refused_before_recording(setup: Setup) -> None:
    before = setup.state()
    with pytest.raises(EnrollmentError, match="needs a passphrase"):
        setup.batches.create_with_keys(MODEL, 1, actor="ops", sink=_bundle(setup))
    assert setup.state() == before
    assert setup.leftovers() == []


# --- listing ---------------------------------------------------------------------------------------------


def test_revoking_a_batch_revokes_every_certificate_of_its_devices_and_no_other(setup: Setup) -> None:
    issued = setup.batches.create_from_csrs(MODEL, 2, _csrs("cam-1", "cam-2"), actor="ops")
    other = setup.batches.create_from_csrs(MODEL, 1, _csrs("cam-9"), actor="ops")
    [first] = setup.runtime.pki.certificates(view=FleetView.ALL, device_id="cam-1", limit=10)
    renewed = setup.runtime.pki.renew_device(  # a second certificate of the device
        "cam-1", _csr("cam-1", encoding=DER), serial=first.serial, actor="device:cam-1"
    )
    stages: list[tuple[str, int, int]] = []
    before = setup.runtime.log.size()

    result = setup.batches.revoke(
        issued.batch.id, RevocationReason.KEY_COMPROMISE, actor="ops", progress=lambda *a: stages.append(a)
    )

    certificates = setup.runtime.pki.certificates(view=FleetView.ALL, limit=100)
    revoked = {r.serial for r in certificates if r.status is CertificateStatus.REVOKED}
    assert revoked == set(result.revoked)
    assert {r.device_id for r in certificates if r.serial in revoked} == {"cam-1", "cam-2"}
    assert len(revoked) == 3
    assert renewed.serial in revoked
    assert {r.reason for r in certificates if r.serial in revoked} == {RevocationReason.KEY_COMPROMISE}
    assert [r.status for r in certificates if r.device_id == "cam-9"] == [CertificateStatus.VALID]
    assert (result.batch_id, result.devices) == (issued.batch.id, 2)
    assert stages[-1] == ("revoking", 2, 2)
    entries = setup.runtime.log.entries(after_seq=before, limit=100)
    assert [e.action for e in entries] == ["cert.revoked"] * 3 + ["enroll.batch_revoked"]
    assert entries[-1].details() == {
        "batch": issued.batch.id, "devices": 2, "revoked": 3, "reason": "keyCompromise",
    }  # fmt: skip
    assert other.batch.id != issued.batch.id

    again = setup.batches.revoke(issued.batch.id, RevocationReason.KEY_COMPROMISE, actor="ops")
    assert again.revoked == ()  # revoking again after an interruption finishes the rest: here nothing


def test_revoking_an_unknown_batch_changes_nothing(setup: Setup) -> None:
    setup.batches.create_from_csrs(MODEL, 1, _csrs("cam-1"), actor="ops")
    before = setup.state()
    with pytest.raises(EnrollmentNotFound):
        setup.batches.revoke("nope", RevocationReason.KEY_COMPROMISE, actor="ops")
    assert setup.state() == before


def test_batches_are_listed_oldest_first_and_paged(setup: Setup) -> None:
    made = [setup.batches.create_from_csrs(MODEL, 1, _csrs(f"cam-{n}"), actor="ops").batch for n in range(3)]
    assert setup.batches.batches() == made
    assert setup.batches.batches(limit=1, after=made[0].id) == [made[1]]
    with pytest.raises(EnrollmentNotFound, match="no batch 'nope'"):
        setup.batches.batch("nope")


# --- reading CSRs ---------------------------------------------------------------------------------------


def test_a_csr_file_may_hold_explanatory_text_between_blocks(tmp_path: Path) -> None:
    first, second = _csr("cam-1"), _csr("cam-2")
    path = tmp_path / "csrs.pem"
    path.write_bytes(b"Certificate Request:\n  Subject: CN=cam-1\n" + first + b"\n\n" + second)
    assert [c.data for c in read_csrs(path)] == [first.strip(), second.strip()]


def test_a_csr_directory_is_read_in_name_order_one_csr_per_file(tmp_path: Path) -> None:
    directory = tmp_path / "csrs"
    directory.mkdir()
    b_pem, a_der = _csr("cam-b"), _csr("cam-a", encoding=DER)
    (directory / "b.pem").write_bytes(b_pem)
    (directory / "a.csr").write_bytes(a_der)
    (directory / "notes.txt").write_text("ignored")
    assert [(c.origin, c.data) for c in read_csrs(directory)] == [("a.csr", a_der), ("b.pem", b_pem.strip())]


def test_a_directory_file_with_two_csrs_is_refused_by_name(tmp_path: Path) -> None:
    directory = tmp_path / "csrs"
    directory.mkdir()
    (directory / "a.pem").write_bytes(_csr("cam-1") + _csr("cam-2"))
    with pytest.raises(BatchRejected, match=r"^batch rejected: CSR 1 \(a.pem\): a.pem holds 2 CSRs, not one"):
        read_csrs(directory)


def test_a_bad_csr_from_a_directory_names_its_file(setup: Setup) -> None:
    directory = setup.tmp / "csrs"
    directory.mkdir()
    (directory / "1.csr").write_bytes(_csr("cam-1", encoding=DER))
    (directory / "2.csr").write_bytes(b"\x30\x03\x02\x01\x00")
    with pytest.raises(BatchRejected, match=r"^batch rejected: CSR 2 \(2.csr\): malformed DER") as refused:
        setup.batches.create_from_csrs(MODEL, 2, read_csrs(directory), actor="ops")
    assert (refused.value.index, refused.value.origin) == (2, "2.csr")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            r"CSR 1: PEM block is 'PRIVATE KEY'",
        ),
        (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", r"CSR 1: a PEM block is not terminated"),
        (
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n" + _csr("cam-1"),
            r"CSR 1: a PEM block is not terminated",
        ),
    ],
)
def test_a_pem_block_that_is_not_a_csr_is_refused_unread(data: bytes, message: str) -> None:
    with pytest.raises(BatchRejected, match=message):
        split_pem_csrs(data)


def test_input_bounds_are_enforced(tmp_path: Path) -> None:
    path = tmp_path / "csrs.pem"
    path.write_bytes(_csr("cam-1") + _csr("cam-2"))
    with pytest.raises(BatchRejected, match="holds more than 1 CSRs"):
        read_csrs(path, max_count=1)
    with pytest.raises(BatchRejected, match="holds more than 100 bytes"):
        read_csrs(path, max_bytes=100)
    directory = tmp_path / "dir"
    directory.mkdir()
    for n in range(3):
        (directory / f"{n}.csr").write_bytes(_csr(f"cam-{n}", encoding=DER))
    with pytest.raises(BatchRejected, match="holds more than 2 CSR files"):
        read_csrs(directory, max_count=2)


# --- the manifest ------------------------------------------------------------------------------------------

_TIMES = st.datetimes(
    min_value=dt.datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive; timezones= sets UTC
    max_value=dt.datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.just(dt.UTC),
)
_TEXT = st.text(min_size=1, max_size=40)
_DEVICES = st.builds(
    ManifestDevice,
    device_id=_TEXT,
    serial=st.integers(min_value=1, max_value=2**159),
    sha256=st.binary(min_size=32, max_size=32),
    not_after=_TIMES,
)
_MANIFESTS = st.builds(
    Manifest,
    batch_id=_TEXT, model=_TEXT, mode=st.sampled_from(BatchMode), created_at=_TIMES, actor=_TEXT,
    trust_domain=_TEXT, issuer_id=_TEXT, issuer_sha256=st.binary(min_size=32, max_size=32),
    devices=st.lists(_DEVICES, max_size=5).map(tuple),
)  # fmt: skip


@given(_MANIFESTS)
def test_a_manifest_round_trips_and_its_bytes_are_ascii_without_a_newline(manifest: Manifest) -> None:
    data = manifest.to_bytes()
    assert parse_manifest(data) == manifest
    assert data.isascii()
    assert b"\n" not in data  # cannot be mistaken for a checkpoint note (fleetguard.enroll.manifest)


def _signed_manifest() -> tuple[bytes, bytes, Ed25519PrivateKey]:
    manifest = Manifest(
        "b-1", MODEL, BatchMode.CSR, utc_now(), "ops", TRUST_DOMAIN, "issuing-1", bytes(32),
        (ManifestDevice("cam-1", 0x1F, bytes(range(32)), utc_now()),),
    )  # fmt: skip
    key = Ed25519PrivateKey.generate()
    data = manifest.to_bytes()
    return data, sign_manifest(data, key), key


def test_verify_manifest_refuses_a_changed_byte_another_key_and_a_bad_signature() -> None:
    data, signature, key = _signed_manifest()
    verify_manifest(data, signature, key.public_key())
    with pytest.raises(ManifestInvalid, match="manifest signature does not verify with this key"):
        verify_manifest(data.replace(b"cam-1", b"cam-2"), signature, key.public_key())
    with pytest.raises(ManifestInvalid, match="manifest signature does not verify with this key"):
        verify_manifest(data, signature, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(ManifestInvalid, match="signature is 63 bytes, not the 64 of a raw Ed25519 signature"):
        verify_manifest(data, signature[:-1], key.public_key())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.replace(b'{"actor"', b'{ "actor"'), "not in canonical form"),
        (lambda d: d.replace(b'"count":1', b'"count":2'), "manifest count 2 is not the 1 devices it lists"),
        (lambda d: d.replace(b'"mode":"csr"', b'"mode":"x"'), "manifest mode 'x' is not csr or keygen"),
        (lambda d: d.replace(b'"serial":"1f"', b'"serial":"01f"'), "device 1: serial is not lowercase hex"),
        (lambda d: d.replace(b'"format":', b'"extra":1,"format":'), "unexpected \\['extra'\\]"),
        (lambda d: b"[]", "manifest is not a JSON object"),
        (lambda d: b"{", "manifest is not JSON"),
    ],
)
def test_a_signed_document_that_is_not_a_canonical_manifest_is_refused(
    mutate: Callable[[bytes], bytes], message: str
) -> None:
    data, _, key = _signed_manifest()
    changed = mutate(data)
    with pytest.raises(ManifestInvalid, match=message):
        verify_manifest(changed, sign_manifest(changed, key), key.public_key())
