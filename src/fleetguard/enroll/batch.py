"""Manufacturing batches: register a production run's devices and issue all their certificates at once.

Theory of operation. A production line makes ``count`` devices of one model (a device type of the
inventory). In CSR mode it sends one PKCS#10 request per device, whose subject CN is the device's id
(its serial on the line); no private key ever reaches the server. In key-generation mode, for devices
that cannot make keys, the server generates P-256 keys in memory and delivers them once, in an
encrypted bundle (:mod:`fleetguard.enroll.bundle`) that it never keeps. :class:`BatchService` then:

1. **Checks**, writing nothing: the count is within 1..``MAX_BATCH_DEVICES`` and equals the CSRs
   given; the model is a device type; every CSR passes :func:`fleetguard.pki.csr.validate_csr` and
   names exactly one CN that is a valid device id; no id and no public key repeats within the batch;
   no id is registered already. The first failure raises :class:`BatchRejected` naming the CSR by its
   1-based position in the batch (and the file it came from).
2. **Signs** every certificate with the issuing CA of now (``CertificateService.sign_devices``),
   builds the manifest (:mod:`fleetguard.enroll.manifest`) and signs it with the installation's
   checkpoint key. Nothing is recorded yet, and no one has seen a certificate.
3. **Stages** the output through a :class:`BundleSink` (the CLI writes a hidden temporary file):
   the only place generated private keys ever go.
4. **Records**, in one transaction: ``enroll.batch_created``; the devices (``device.registered`` each,
   label ``fleetguard.batch=<batch id>``); their certificates (``cert.issued`` each); their move to
   ``provisioned`` (``device.provision`` each); the batch row with manifest and signature;
   ``enroll.batch_completed`` with the manifest's SHA-256. Then the relay publishes the events and the
   sink publishes the output. Events carry ids, counts, modes and hashes, never keys.

Crash consistency: the record is one transaction, so a batch exists completely or not at all; there is
no "in progress" state to resume or clean up, and a failure anywhere leaves the store as it was. A
crash before the commit leaves at most a hidden temporary bundle beside the target
(``.<name>.<random>.tmp``) for a batch that does not exist: its certificates were never recorded, and
it should be deleted. The CPU work (CSR checks, signing, PKCS#12) is done before the transaction, so
the write lock is held only for the inserts, about two seconds for 10,000 devices; a batch of 100,000
holds it about ten times as long, and other writers wait for it (the SQLite busy timeout, or the
event-log head row on PostgreSQL): make very large batches when the fleet is quiet, or split them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import re
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

# asn1crypto ships no type information; the subject is read with it when cryptography cannot load a
# request that validate_csr accepted (an ECDSA AlgorithmIdentifier with NULL parameters, from TPMs).
from asn1crypto import csr as asn1_csr  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session, defer

from fleetguard.enroll.errors import BatchRejected, EnrollmentError, EnrollmentNotFound
from fleetguard.enroll.manifest import BatchMode, Manifest, ManifestDevice, parse_manifest, sign_manifest
from fleetguard.errors import InvalidInput
from fleetguard.events.entry import DataValue, NewEvent
from fleetguard.events.log import EventLog
from fleetguard.events.relay import publish_committed
from fleetguard.inventory.errors import ImportRejected
from fleetguard.inventory.lifecycle import Action
from fleetguard.inventory.model import DeviceSpec, DeviceType, validate_device_id
from fleetguard.inventory.service import Inventory
from fleetguard.pki.csr import MAX_CSR_BYTES, CsrPublicKey, validate_csr
from fleetguard.pki.errors import CsrRejected
from fleetguard.pki.revocation import RevocationReason
from fleetguard.pki.service import CertificateService, SignedDevices
from fleetguard.store.database import Database
from fleetguard.store.errors import DuplicateKey
from fleetguard.store.models import EnrollmentBatchRow
from fleetguard.types import utc_now

__all__ = [
    "BATCH_LABEL",
    "MAX_BATCH_DEVICES",
    "MAX_BATCH_INPUT_BYTES",
    "Batch",
    "BatchDevice",
    "BatchRevocation",
    "BatchService",
    "BundleSink",
    "CsrInput",
    "IssuedBatch",
    "Progress",
    "StoredBatch",
    "read_csrs",
    "split_pem_csrs",
]

MAX_BATCH_DEVICES = 100_000
"""Most devices in one batch: one production run, recorded in one transaction."""

MAX_BATCH_INPUT_BYTES = 128 * 1024 * 1024
"""Most bytes of CSRs read for one batch: 100,000 RSA-4096 requests in PEM are about 170 MB, P-256
ones about 50 MB."""

BATCH_LABEL = "fleetguard.batch"
"""The inventory label that names a device's batch: ``fleetguard devices list --label ...``."""

_CSR_SUFFIXES = (".csr", ".pem")
_RECORD_CHUNK = 1000
_PROGRESS_STEP = 500
_SIGNING_ATTEMPTS = 3  # a serial collision (2^-159 a pair) signs the batch again
_MAX_PAGE = 10_000
# RFC 7468 section 2: "-----BEGIN label-----", base64 lines, "-----END label-----"; text outside
# the blocks is explanatory and ignored (openssl req -text puts the decoded request there).
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,64})-----(.*?)-----END ([A-Z0-9 ]{1,64})-----", re.DOTALL)
_PEM_MARKER = re.compile(rb"-----(BEGIN|END) ")
_CSR_LABELS = frozenset({b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"})
_ID_WIDTH = 6
_T = TypeVar("_T")

Progress = Callable[[str, int, int], None]
"""Called with (stage, done, total) as a batch advances: checking, generating, signing, packing,
recording."""


@dataclass(frozen=True, slots=True)
class CsrInput:
    """One CSR of a batch (PEM or DER) and, when it came from a file of its own, that file's name."""

    data: bytes
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """A recorded batch."""

    id: str
    model: str
    mode: BatchMode
    count: int
    issuer_id: str
    actor: str
    created_at: dt.datetime
    manifest_sha256: bytes


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A recorded batch with its manifest and signature, as signed."""

    batch: Batch
    manifest: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class BatchDevice:
    """A device of a batch, its certificate and, in key-generation mode while staging, its key."""

    device_id: str
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class IssuedBatch:
    """What a batch issued: the record, the manifest and its signature, the CA chain and the devices.

    ``chain`` is (issuing CA, root CA). Only the :class:`BundleSink` sees ``BatchDevice.key``; the
    batch returned to callers holds no key.
    """

    batch: Batch
    manifest: bytes
    signature: bytes
    chain: tuple[x509.Certificate, x509.Certificate]
    devices: tuple[BatchDevice, ...]


@dataclass(frozen=True, slots=True)
class BatchRevocation:
    """What revoking a batch did: its devices, and the serials of the certificates revoked now."""

    batch_id: str
    devices: int
    revoked: tuple[int, ...]


class BundleSink(Protocol):
    """Where a batch's output goes: staged before the batch is recorded, published after."""

    def stage(self, batch: IssuedBatch, progress: Progress | None = None) -> None:
        """Write ``batch`` out where no one takes it yet; raise if that fails (nothing is recorded)."""

    def publish(self) -> object:
        """Hand the staged output over (the batch is recorded now)."""

    def discard(self) -> None:
        """Throw the staged output away (the batch was not recorded)."""


@dataclass(frozen=True, slots=True)
class _Planned:
    """A device of a batch being made: its id and key, and where its CSR came from."""

    device_id: str
    public_key: CsrPublicKey
    spki_sha256: bytes
    key: ec.EllipticCurvePrivateKey | None = field(default=None, repr=False)
    origin: str | None = None


# -- reading CSRs (the CLI's edge) ---------------------------------------------------------------


def split_pem_csrs(data: bytes, *, origin: str | None = None) -> list[CsrInput]:
    """Return the CSRs of concatenated PEM ``data``, in order.

    Raises :class:`BatchRejected` naming the 1-based block for a PEM block that is not a certificate
    request (a private key pasted in by mistake is refused, never read) or a broken block.
    """
    csrs: list[CsrInput] = []
    end = 0
    for match in _PEM_BLOCK.finditer(data):
        number = len(csrs) + 1
        begin, body, close = match.group(1, 2, 3)
        if _PEM_MARKER.search(data, end, match.start()) is not None or b"-----" in body:
            raise BatchRejected("a PEM block is not terminated", index=number, origin=origin)
        if begin not in _CSR_LABELS or close != begin:
            label = begin.decode("ascii")
            raise BatchRejected(
                f"PEM block is {label!r}, not 'CERTIFICATE REQUEST'", index=number, origin=origin
            )
        csrs.append(CsrInput(match.group(0), origin))
        end = match.end()
    if _PEM_MARKER.search(data, end) is not None:
        raise BatchRejected("a PEM block is not terminated", index=len(csrs) + 1, origin=origin)
    return csrs


def read_csrs(
    path: Path, *, max_count: int = MAX_BATCH_DEVICES, max_bytes: int = MAX_BATCH_INPUT_BYTES
) -> list[CsrInput]:
    """Return the CSRs at ``path``: a file of concatenated PEM CSRs, or a directory of ``*.csr`` and
    ``*.pem`` files with one CSR each (PEM or DER), taken in file-name order.

    Raises :class:`BatchRejected` when the input holds more than ``max_count`` CSRs or
    ``max_bytes`` bytes, or a directory file holds other than one CSR; ``OSError`` when it cannot be read.
    """
    if path.is_dir():
        return _read_directory(path, max_count, max_bytes)
    data = _read_bounded(path, max_bytes, f"{path.name} holds more than {max_bytes} bytes")
    csrs = split_pem_csrs(data)
    if not csrs:
        raise BatchRejected(f"{path.name} holds no PEM certificate request", hint="concatenate PEM CSRs")
    if len(csrs) > max_count:
        raise BatchRejected(f"{path.name} holds more than {max_count} CSRs")
    return csrs


def _read_directory(directory: Path, max_count: int, max_bytes: int) -> list[CsrInput]:
    names = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(_CSR_SUFFIXES) and entry.is_file():
                names.append(entry.name)
                if len(names) > max_count:
                    raise BatchRejected(f"{directory} holds more than {max_count} CSR files")
    csrs: list[CsrInput] = []
    total = 0
    for name in sorted(names):
        data = _read_bounded(directory / name, MAX_CSR_BYTES, f"{name} is larger than {MAX_CSR_BYTES} bytes")
        total += len(data)
        if total > max_bytes:
            raise BatchRejected(f"the CSR files in {directory} hold more than {max_bytes} bytes")
        if b"-----BEGIN " in data:  # PEM, perhaps after explanatory text; else DER
            blocks = split_pem_csrs(data, origin=name)
            if len(blocks) != 1:
                raise BatchRejected(
                    f"{name} holds {len(blocks)} CSRs, not one", index=len(csrs) + 1, origin=name
                )
            data = blocks[0].data
        csrs.append(CsrInput(data, name))
    return csrs


def _read_bounded(path: Path, limit: int, message: str) -> bytes:
    with path.open("rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise BatchRejected(f"{path} is not a regular file")
        data = file.read(limit + 1)  # bounded: the file may be anything
    if len(data) > limit:
        raise BatchRejected(message)
    return data


# -- the service -----------------------------------------------------------------------------------


class BatchService:
    """Manufacturing batches of an installation: make them, list them, show their manifests."""

    def __init__(
        self,
        database: Database,
        log: EventLog,
        inventory: Inventory,
        pki: CertificateService,
        *,
        trust_domain: str,
        signing_key: Callable[[], Ed25519PrivateKey],
        on_commit: Callable[[], object] | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._db = database
        self._log = log
        self._inventory = inventory
        self._pki = pki
        self._trust_domain = trust_domain
        self._signing_key = signing_key
        self._on_commit = on_commit
        self._clock = clock

    def create_from_csrs(
        self,
        model: str,
        count: int,
        csrs: Sequence[CsrInput],
        *,
        actor: str,
        sink: BundleSink | None = None,
        progress: Progress | None = None,
    ) -> IssuedBatch:
        """Make a CSR-mode batch of ``count`` devices of ``model``, one per CSR; return it.

        Each device's id is its CSR's subject CN. All or nothing: raises :class:`BatchRejected` for
        a count out of bounds or unequal to the CSRs, an unknown model, or a bad, repeated or
        registered CSR (naming it), and then records nothing; the PKI's errors (``CaNotInitialized``,
        ``KeyBackendError``) and the sink's pass through, likewise recording nothing.
        """
        _require_count(count)
        if len(csrs) != count:
            raise BatchRejected(
                f"{len(csrs)} CSRs were given for a batch of {count}",
                hint="give one CSR per device, or correct the count",
            )
        device_type = self._device_type(model)
        planned = [_planned_from_csr(csr, number) for number, csr in _counted(csrs, "checking", progress)]
        _require_distinct(planned)
        self._require_unregistered(planned)
        return self._make(device_type, BatchMode.CSR, planned, actor=actor, sink=sink, progress=progress)

    def create_with_keys(
        self,
        model: str,
        count: int,
        *,
        actor: str,
        sink: BundleSink,
        id_prefix: str | None = None,
        first: int = 1,
        progress: Progress | None = None,
    ) -> IssuedBatch:
        """Make a key-generation batch: ``count`` new P-256 keys, one per device; return it (without keys).

        Device ids are ``id_prefix`` and a sequence number from ``first``, zero-padded to at least six
        digits, or UUIDs without a prefix. The keys go to ``sink`` only, staged before the batch is
        recorded. Raises as :meth:`create_from_csrs`.
        """
        _require_count(count)
        device_type = self._device_type(model)
        ids = _device_ids(id_prefix, first, count)
        planned = []
        for _, device_id in _counted(ids, "generating", progress):
            key = ec.generate_private_key(ec.SECP256R1())
            planned.append(_Planned(device_id, key.public_key(), _spki_sha256(key.public_key()), key))
        self._require_unregistered(planned, item="device")
        return self._make(device_type, BatchMode.KEYGEN, planned, actor=actor, sink=sink, progress=progress)

    def batches(self, *, limit: int = 100, after: str | None = None) -> list[Batch]:
        """Return up to ``limit`` batches, oldest first, after batch ``after`` (paging)."""
        if not 1 <= limit <= _MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {_MAX_PAGE}")
        # The manifests (20 MiB for 100,000 devices) stay in the database: a listing needs none.
        query = (
            select(EnrollmentBatchRow)
            .options(defer(EnrollmentBatchRow.manifest), defer(EnrollmentBatchRow.signature))
            .order_by(EnrollmentBatchRow.created_at, EnrollmentBatchRow.id)
        )
        with self._db.reading() as session:
            if after is not None:
                cursor = _row(session, after)
                query = query.where(
                    tuple_(EnrollmentBatchRow.created_at, EnrollmentBatchRow.id)
                    > (cursor.created_at, cursor.id)
                )
            return [_batch(row) for row in session.execute(query.limit(limit)).scalars()]

    def batch(self, batch_id: str) -> StoredBatch:
        """Return the batch with its manifest and signature; raise ``EnrollmentNotFound``."""
        with self._db.reading() as session:
            row = _row(session, batch_id)
            return StoredBatch(_batch(row), bytes(row.manifest), bytes(row.signature))

    def revoke(
        self,
        batch_id: str,
        reason: RevocationReason,
        *,
        actor: str,
        progress: Progress | None = None,
    ) -> BatchRevocation:
        """Revoke every valid certificate of every device of the batch; return what was revoked.

        For a key-generation bundle that was lost or leaked (its keys are compromised, and a device
        keeps its key when it renews, so every certificate it holds is revoked, not only the batch's),
        or a production run that must not go into service. The devices are those of the signed
        manifest, not of the inventory label (which an operator may change). Each certificate is
        revoked as ``fleetguard certs revoke`` does (``cert.revoked``, its CRL shard re-signed before
        the next); ``enroll.batch_revoked`` records the count at the end. A crash part-way leaves the
        certificates revoked so far revoked; revoking the batch again revokes the rest (certificates
        revoked already are skipped). Raises ``EnrollmentNotFound``.
        """
        stored = self.batch(batch_id)
        manifest = parse_manifest(stored.manifest)
        revoked: list[int] = []
        for _, device in _counted(manifest.devices, "revoking", progress):
            records = self._pki.revoke_device(device.device_id, reason, actor=actor)
            revoked += [record.serial for record in records]
        result = BatchRevocation(stored.batch.id, manifest.count, tuple(revoked))
        with self._db.transaction() as session:
            event = NewEvent(
                actor=actor, subject=f"enroll-batch:{stored.batch.id}", action="enroll.batch_revoked",
                reason=str(reason), data={"batch": stored.batch.id, "devices": result.devices,
                                          "revoked": len(revoked), "reason": str(reason)},
            )  # fmt: skip
            self._log.append(session, event, now=self._clock())
        publish_committed(self._on_commit)
        return result

    # -- internals ---------------------------------------------------------------------------

    def _device_type(self, model: str) -> DeviceType:
        for device_type in self._inventory.device_types():
            if device_type.id == model:
                return device_type
        raise BatchRejected(
            f"no device type {model[:128]!r}",
            hint="list them with `fleetguard types list`, or create it with `fleetguard types add`",
        )

    def _require_unregistered(self, planned: Sequence[_Planned], *, item: str = "CSR") -> None:
        taken = self._inventory.states([device.device_id for device in planned])
        for number, device in enumerate(planned, start=1):
            if device.device_id in taken:
                raise BatchRejected(
                    f"device {device.device_id!r} is registered already",
                    index=number,
                    origin=device.origin,
                    item=item,
                    hint="a batch registers new devices only; renew existing ones over EST",
                )

    def _make(
        self,
        device_type: DeviceType,
        mode: BatchMode,
        planned: Sequence[_Planned],
        *,
        actor: str,
        sink: BundleSink | None,
        progress: Progress | None,
    ) -> IssuedBatch:
        signing_key = self._signing_key()  # fail closed on a bad checkpoint key before any work
        for _ in range(_SIGNING_ATTEMPTS):
            batch_id = str(uuid.uuid4())
            now = self._clock()
            signed = self._pki.sign_devices(
                [(device.device_id, device.public_key) for device in planned],
                now=now,
                progress=None if progress is None else lambda done: progress("signing", done, len(planned)),
            )
            issued = _issued(
                batch_id, device_type.id, mode, signed, planned,
                actor=actor, trust_domain=self._trust_domain, signing_key=signing_key,
            )  # fmt: skip
            if sink is not None:
                sink.stage(issued, progress)
            try:
                self._record(issued, signed, device_type, planned, progress)
            except DuplicateKey:
                if sink is not None:
                    sink.discard()
                continue  # a serial taken (2^-159) or a device registered meanwhile: check and sign again
            except BaseException:
                if sink is not None:
                    sink.discard()
                raise
            publish_committed(self._on_commit)
            if sink is not None:
                sink.publish()
            return dataclasses.replace(issued, devices=tuple(_without_key(d) for d in issued.devices))
        raise EnrollmentError(
            f"the batch could not be recorded after {_SIGNING_ATTEMPTS} attempts",
            hint="another writer may be registering the same devices; run the batch again",
        )

    def _record(
        self,
        issued: IssuedBatch,
        signed: SignedDevices,
        device_type: DeviceType,
        planned: Sequence[_Planned],
        progress: Progress | None,
    ) -> None:
        batch = issued.batch
        reason = f"manufacturing batch {batch.id}"
        specs = [_spec(device.device_id, device_type, batch.id) for device in planned]
        ids = [device.device_id for device in planned]
        with self._db.transaction() as session:
            self._event(session, batch, "enroll.batch_created", mode=batch.mode.value, model=batch.model)
            try:
                self._inventory.add_devices(
                    session, specs, actor=batch.actor, reason=reason, now=batch.created_at
                )
            except ImportRejected as exc:
                origin = planned[exc.row - 1].origin if 1 <= exc.row <= len(planned) else None
                item = "CSR" if batch.mode is BatchMode.CSR else "device"
                raise BatchRejected(exc.reason, index=exc.row, origin=origin, item=item) from exc
            for start in range(0, len(ids), _RECORD_CHUNK):
                chunk = dataclasses.replace(
                    signed, certificates=signed.certificates[start : start + _RECORD_CHUNK]
                )
                self._pki.record_devices(session, chunk, actor=batch.actor)
                if progress is not None:
                    progress("recording", start + len(chunk.certificates), len(ids))
            self._inventory.transition_devices(
                session, ids, Action.PROVISION, actor=batch.actor, reason=f"identity issued in {reason}",
                now=batch.created_at,
            )  # fmt: skip
            session.add(_batch_row(issued))
            self._event(session, batch, "enroll.batch_completed", issuer=batch.issuer_id)

    def _event(self, session: Session, batch: Batch, action: str, **data: DataValue) -> None:
        details: dict[str, DataValue] = {
            "batch": batch.id, "count": batch.count, "manifest_sha256": batch.manifest_sha256.hex(), **data,
        }  # fmt: skip
        event = NewEvent(actor=batch.actor, subject=f"enroll-batch:{batch.id}", action=action, data=details)
        self._log.append(session, event, now=batch.created_at)


# -- the pure parts ----------------------------------------------------------------------------------


def _require_count(count: int) -> None:
    if not 1 <= count <= MAX_BATCH_DEVICES:
        raise BatchRejected(f"a batch has 1 to {MAX_BATCH_DEVICES} devices, not {count}")


def _counted(items: Sequence[_T], stage: str, progress: Progress | None) -> Iterator[tuple[int, _T]]:
    """Yield ``items`` numbered from 1, reporting ``stage`` after every ``_PROGRESS_STEP`` consumed."""
    total = len(items)
    for number, item in enumerate(items, start=1):
        yield number, item
        if progress is not None and (number % _PROGRESS_STEP == 0 or number == total):
            progress(stage, number, total)


def _planned_from_csr(csr: CsrInput, number: int) -> _Planned:
    try:
        validated = validate_csr(csr.data)
    except CsrRejected as exc:
        raise BatchRejected(exc.reason, index=number, origin=csr.origin, hint=exc.hint) from exc
    try:
        device_id = validate_device_id(_common_name(validated.der))
    except InvalidInput as exc:
        raise BatchRejected(f"subject CN: {exc.message}", index=number, origin=csr.origin) from exc
    return _Planned(device_id, validated.public_key, validated.spki_sha256, origin=csr.origin)


def _common_name(der: bytes) -> str:
    """Return the one CN of the CSR's subject; raise ``InvalidInput`` for none, several or a bad one."""
    names: list[object]
    try:
        names = [
            attribute.value
            for attribute in x509.load_der_x509_csr(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    except ValueError:
        names = _asn1_common_names(der)  # one validate_csr repaired (an ECDSA NULL parameter)
    if len(names) != 1 or not isinstance(names[0], str):
        raise InvalidInput(f"the subject names {len(names)} CNs; exactly one, the device id, is required")
    return names[0]


def _asn1_common_names(der: bytes) -> list[object]:
    subject = asn1_csr.CertificationRequest.load(der)["certification_request_info"]["subject"]
    return [
        attribute["value"].native
        for rdn in subject.chosen
        for attribute in rdn
        if attribute["type"].native == "common_name"
    ]


def _require_distinct(planned: Sequence[_Planned]) -> None:
    ids: dict[str, int] = {}
    keys: dict[bytes, int] = {}
    for number, device in enumerate(planned, start=1):
        if device.device_id in ids:
            raise BatchRejected(
                f"device id {device.device_id!r} repeats CSR {ids[device.device_id]}",
                index=number,
                origin=device.origin,
            )
        if device.spki_sha256 in keys:
            # Two devices sharing a key could impersonate each other: the line reused a key.
            raise BatchRejected(
                f"the public key repeats CSR {keys[device.spki_sha256]}", index=number, origin=device.origin
            )
        ids[device.device_id] = number
        keys[device.spki_sha256] = number


def _device_ids(prefix: str | None, first: int, count: int) -> list[str]:
    if prefix is None:
        return [str(uuid.uuid4()) for _ in range(count)]
    if first < 0:
        raise BatchRejected(f"the first sequence number is {first}; it must be 0 or more")
    width = max(_ID_WIDTH, len(str(first + count - 1)))
    ids = [f"{prefix}{number:0{width}d}" for number in range(first, first + count)]
    for candidate in (ids[0], ids[-1]):  # the rest differ only in digits of the same width
        try:
            validate_device_id(candidate)
        except InvalidInput as exc:
            raise BatchRejected(f"--id-prefix {prefix[:64]!r} makes {exc.message}") from exc
    return ids


def _spki_sha256(public_key: ec.EllipticCurvePublicKey) -> bytes:
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def _spec(device_id: str, device_type: DeviceType, batch_id: str) -> DeviceSpec:
    # The device id is the serial the line gave it; a type without a manufacturer or model names itself.
    return DeviceSpec(
        id=device_id, serial=device_id, manufacturer=device_type.manufacturer or device_type.id,
        model=device_type.model or device_type.id, device_type=device_type.id,
        labels={BATCH_LABEL: batch_id},
    )  # fmt: skip


def _issued(
    batch_id: str,
    model: str,
    mode: BatchMode,
    signed: SignedDevices,
    planned: Sequence[_Planned],
    *,
    actor: str,
    trust_domain: str,
    signing_key: Ed25519PrivateKey,
) -> IssuedBatch:
    issuing = signed.chain[0]
    manifest = Manifest(
        batch_id=batch_id, model=model, mode=mode, created_at=signed.issued_at, actor=actor,
        trust_domain=trust_domain, issuer_id=signed.issuer_id, issuer_sha256=_sha256(issuing),
        devices=tuple(_manifest_device(device_id, cert) for device_id, cert in signed.certificates),
    )  # fmt: skip
    body = manifest.to_bytes()
    batch = Batch(
        id=batch_id, model=model, mode=mode, count=len(planned), issuer_id=signed.issuer_id, actor=actor,
        created_at=signed.issued_at, manifest_sha256=hashlib.sha256(body).digest(),
    )  # fmt: skip
    devices = tuple(
        BatchDevice(device_id, certificate, device.key)
        for (device_id, certificate), device in zip(signed.certificates, planned, strict=True)
    )
    return IssuedBatch(batch, body, sign_manifest(body, signing_key), signed.chain, devices)


def _manifest_device(device_id: str, certificate: x509.Certificate) -> ManifestDevice:
    return ManifestDevice(
        device_id, certificate.serial_number, _sha256(certificate), certificate.not_valid_after_utc
    )


def _sha256(certificate: x509.Certificate) -> bytes:
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()


def _without_key(device: BatchDevice) -> BatchDevice:
    return device if device.key is None else BatchDevice(device.device_id, device.certificate)


def _batch_row(issued: IssuedBatch) -> EnrollmentBatchRow:
    batch = issued.batch
    return EnrollmentBatchRow(
        id=batch.id, device_type_id=batch.model, mode=batch.mode.value, count=batch.count,
        issuer_id=batch.issuer_id, actor=batch.actor, created_at=batch.created_at,
        manifest_sha256=batch.manifest_sha256, manifest=issued.manifest, signature=issued.signature,
    )  # fmt: skip


def _row(session: Session, batch_id: str) -> EnrollmentBatchRow:
    row = session.get(EnrollmentBatchRow, batch_id)
    if row is None:
        raise EnrollmentNotFound(
            f"no batch {batch_id[:64]!r}", hint="list them with `fleetguard enroll batch list`"
        )
    return row


def _batch(row: EnrollmentBatchRow) -> Batch:
    return Batch(
        id=row.id, model=row.device_type_id, mode=BatchMode(row.mode), count=row.count,
        issuer_id=row.issuer_id, actor=row.actor, created_at=row.created_at,
        manifest_sha256=bytes(row.manifest_sha256),
    )  # fmt: skip
