"""The JSON shapes of the API: pydantic models at the HTTP edge, converted to and from core values.

Request models forbid unknown fields (a misspelt field is a 422, not silently ignored) and bound every
string and collection; the core validates the same values again, so the two can never disagree in
the permissive direction. Response models are built from the core's frozen values and never carry a
token secret, except :class:`TokenCreated`, once.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Annotated, Literal

from cryptography.hazmat.primitives import hashes, serialization
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from fleetguard.api.tokens import Role, TokenInfo
from fleetguard.enroll import (
    Batch,
    BatchMode,
    EnrollmentRule,
    EnrollmentToken,
    IssuedBatch,
    ManufacturerCa,
    ModelAttribute,
    QueuedRequest,
    RequestStatus,
    RuleMode,
    StoredBatch,
    TokenStatus,
)
from fleetguard.events import checkpoint, log
from fleetguard.events.entry import DataValue
from fleetguard.events.entry import EventEntry as CoreEventEntry
from fleetguard.inventory.lifecycle import Action, State
from fleetguard.inventory.model import DeviceChanges, DeviceSpec
from fleetguard.pki.manufacturer import MAX_BUNDLE_SIZE
from fleetguard.pki.revocation import RevocationReason
from fleetguard.pki.service import AuthorityRecord, CertificateRecord, CertificateStatus

__all__ = [
    "Authority",
    "BatchCertificate",
    "BatchCreated",
    "BatchDetail",
    "BatchView",
    "CaCreation",
    "Certificate",
    "CertificatePage",
    "ConsistencyProof",
    "Device",
    "DevicePage",
    "DeviceRegistration",
    "DeviceType",
    "DeviceTypeCreation",
    "DeviceUpdate",
    "EnrollmentRequest",
    "EnrollmentRuleView",
    "EnrollmentTokenCreated",
    "EnrollmentTokenCreation",
    "EnrollmentTokenView",
    "EventEntry",
    "EventPage",
    "Finding",
    "Health",
    "ImportResult",
    "InclusionProof",
    "ManufacturerCaCreation",
    "ManufacturerCaView",
    "ProblemDetails",
    "Rejection",
    "Revocation",
    "RuleSetting",
    "SignedTreeHead",
    "Site",
    "SiteCreation",
    "Token",
    "TokenCreated",
    "TokenCreation",
    "Transition",
    "VerificationReport",
]

# The same bounds as fleetguard.inventory.model and fleetguard.events.entry.
_Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]
_Short = Annotated[str, StringConstraints(max_length=128)]
_Text = Annotated[str, StringConstraints(max_length=256)]
_Url = Annotated[str, StringConstraints(max_length=2048)]
_LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=63)]
_LabelValue = Annotated[str, StringConstraints(max_length=256)]
_Labels = Annotated[dict[_LabelKey, _LabelValue], Field(max_length=64)]
Reason = Annotated[
    str, StringConstraints(max_length=4096), Field(description="Why; recorded in the event log.")
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class ProblemDetails(BaseModel):
    """An RFC 9457 problem; extension members (``hint``, ``row``, ``errors`` ...) may follow."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["https://fleetguard.dev/problems/device-not-found"])
    title: str
    status: int
    detail: str
    instance: str
    hint: str | None = None


class Health(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "ready"]


# -- devices ---------------------------------------------------------------------------------


class Device(_Response):
    """A device as the inventory holds it; ``version`` is also sent as the ``ETag``."""

    id: str
    serial: str
    manufacturer: str
    model: str
    device_type: str | None
    hardware_revision: str
    firmware_version: str
    mud_url: str | None
    site: str | None
    owner: str
    labels: dict[str, str]
    state: State
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    last_seen: dt.datetime | None


class DevicePage(BaseModel):
    """One page of devices, by id; pass ``next_after`` as ``after`` for the next page."""

    items: list[Device]
    next_after: str | None = Field(description="The cursor of the next page; null on the last page.")
    total: int | None = Field(default=None, description="Matching devices, when asked for with count=true.")


class DeviceRegistration(_Request):
    """A new device; ``id`` defaults to a new UUID."""

    serial: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    manufacturer: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    id: Annotated[str, StringConstraints(max_length=128)] = ""
    model: _Text = ""
    device_type: _Id | None = None
    hardware_revision: _Short = ""
    firmware_version: _Short = ""
    mud_url: _Url | None = None
    site: _Id | None = None
    owner: _Text = ""
    labels: _Labels = Field(default_factory=dict)
    reason: Reason = ""

    def to_spec(self) -> DeviceSpec:
        """Return the core spec; raise ``InvalidInput`` where the core's rules refuse a value."""
        return DeviceSpec(**self.model_dump(exclude={"reason"}))


class DeviceUpdate(_Request):
    """A partial update: omitted fields are unchanged; an empty mud_url, site or device_type clears it."""

    model: _Text | None = None
    device_type: Annotated[str, StringConstraints(max_length=128)] | None = None
    hardware_revision: _Short | None = None
    firmware_version: _Short | None = None
    mud_url: _Url | None = None
    site: Annotated[str, StringConstraints(max_length=128)] | None = None
    owner: _Text | None = None
    labels: _Labels | None = None
    version: int | None = Field(
        default=None, ge=1, description='The version read; alternatively send If-Match: "<version>".'
    )
    reason: Reason = ""

    def to_changes(self) -> DeviceChanges:
        """Return the core change set; raise ``InvalidInput`` where the core's rules refuse a value."""
        return DeviceChanges(**self.model_dump(exclude={"version", "reason"}))


class Transition(_Request):
    """A lifecycle action; If-Match makes it conditional on the version read."""

    action: Action
    reason: Reason = ""


class Site(_Response):
    """A place devices are installed in."""

    id: str
    name: str
    description: str
    created_at: dt.datetime


class SiteCreation(_Request):
    """A new site; ``name`` defaults to the id."""

    id: _Id
    name: _Text = ""
    description: Annotated[str, StringConstraints(max_length=4096)] = ""


class DeviceType(_Response):
    """A kind of device, with the MUD URL its maker publishes."""

    id: str
    manufacturer: str
    model: str
    mud_url: str | None
    description: str
    created_at: dt.datetime


class DeviceTypeCreation(_Request):
    """A new device type."""

    id: _Id
    manufacturer: _Text = ""
    model: _Text = ""
    mud_url: _Url | None = None
    description: Annotated[str, StringConstraints(max_length=4096)] = ""


class ImportResult(BaseModel):
    """How many devices a bulk import registered (all of them, or the import failed)."""

    imported: int


# -- event log -------------------------------------------------------------------------------


class EventEntry(BaseModel):
    """One event-log entry; hashes are lowercase hex."""

    seq: int
    time: dt.datetime
    actor: str
    subject: str
    action: str
    reason: str
    data: dict[str, DataValue]
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, entry: CoreEventEntry) -> EventEntry:
        """Return the API view of a stored entry."""
        return cls(
            seq=entry.seq,
            time=entry.time,
            actor=entry.actor,
            subject=entry.subject,
            action=entry.action,
            reason=entry.reason,
            data=entry.details(),
            prev_hash=entry.prev_hash.hex(),
            hash=entry.hash.hex(),
        )


class EventPage(BaseModel):
    """One page of entries; pass ``next_after`` as ``after`` (with the same order) for the next."""

    items: list[EventEntry]
    next_after: int | None


class Finding(_Response):
    """One problem found by verification, at an entry or a checkpoint size."""

    kind: log.FindingKind
    seq: int
    detail: str


class VerificationReport(BaseModel):
    """The outcome of verifying the whole log; ``intact`` is false when anything was found."""

    intact: bool
    entries: int
    checkpoints: int
    findings: list[Finding]
    more_findings: int = Field(description="Findings beyond those listed.")

    @classmethod
    def of(cls, report: log.VerificationReport) -> VerificationReport:
        """Return the API view of a verification report."""
        return cls(
            intact=report.intact,
            entries=report.entries,
            checkpoints=report.checkpoints,
            findings=[Finding.model_validate(finding) for finding in report.findings],
            more_findings=report.more_findings,
        )


class SignedTreeHead(BaseModel):
    """A signed checkpoint: the RFC 9162 root over the first ``tree_size`` entries (hex), and the note."""

    origin: str
    tree_size: int
    root_hash: str
    timestamp: dt.datetime
    key_id: str
    note: str = Field(description="The signed note text, verifiable offline with the public key.")

    @classmethod
    def of(cls, signed: checkpoint.SignedTreeHead) -> SignedTreeHead:
        """Return the API view of a signed tree head."""
        return cls(
            origin=signed.head.origin,
            tree_size=signed.head.tree_size,
            root_hash=signed.head.root_hash.hex(),
            timestamp=signed.head.timestamp,
            key_id=signed.key_id,
            note=signed.to_note(),
        )


class InclusionProof(BaseModel):
    """RFC 9162 2.1.3: entry ``seq`` (leaf index ``seq - 1``) is in the tree of ``tree_size``."""

    seq: int
    leaf_index: int
    tree_size: int
    leaf_hash: str
    path: list[str] = Field(description="Audit path, leaf level first, hex.")
    root_hash: str

    @classmethod
    def of(cls, proof: log.InclusionProof) -> InclusionProof:
        """Return the API view of an inclusion proof."""
        return cls(
            seq=proof.seq,
            leaf_index=proof.seq - 1,
            tree_size=proof.tree_size,
            leaf_hash=proof.leaf_hash.hex(),
            path=[node.hex() for node in proof.path],
            root_hash=proof.root_hash.hex(),
        )


class ConsistencyProof(BaseModel):
    """RFC 9162 2.1.4: the tree of ``new_size`` extends the tree of ``old_size``."""

    old_size: int
    new_size: int
    old_root: str
    new_root: str
    path: list[str] = Field(description="Proof hashes, hex.")

    @classmethod
    def of(cls, proof: log.ConsistencyProof) -> ConsistencyProof:
        """Return the API view of a consistency proof."""
        return cls(
            old_size=proof.old_size,
            new_size=proof.new_size,
            old_root=proof.old_root.hex(),
            new_root=proof.new_root.hex(),
            path=[node.hex() for node in proof.path],
        )


# -- tokens ----------------------------------------------------------------------------------


class Token(_Response):
    """An API token as listed: never its secret."""

    id: str
    name: str
    role: Role
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None


class TokenCreated(Token):
    """A token just created, with its secret: shown this once, stored only as a hash."""

    secret: str = Field(description="The bearer token: send it as Authorization: Bearer <secret>.")

    @classmethod
    def of(cls, info: TokenInfo, secret: str) -> TokenCreated:
        """Return the one-time view of a new token."""
        return cls.model_validate({**Token.model_validate(info).model_dump(), "secret": secret})


class TokenCreation(_Request):
    """A new token."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    role: Role
    expires_at: AwareDatetime | None = None


# -- PKI -------------------------------------------------------------------------------------


def _serial(serial: int) -> str:
    return f"{serial:x}"


class Authority(BaseModel):
    """A CA certificate of the installation; where its key lives is named, never the key's path."""

    id: str
    role: Literal["root", "issuing"]
    status: Literal["active", "retired"]
    subject: str
    serial: str = Field(description="The certificate serial number, hex.")
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: str = Field(description="SHA-256 fingerprint of the DER certificate, hex.")
    key_backend: Literal["file", "pkcs11"] = Field(
        description="`file`: an encrypted PKCS#8 file; `pkcs11`: a non-extractable key in a token."
    )

    @classmethod
    def of(cls, record: AuthorityRecord) -> Authority:
        """Return the API view of a CA record; raise ``ValueError`` on an unknown key reference."""
        certificate = record.certificate
        backend, _, _ = record.key_ref.partition(":")  # file:<path> or pkcs11:<token>/<label>
        return cls.model_validate(
            {
                "id": record.id,
                "role": record.role,
                "status": record.status,
                "subject": certificate.subject.rfc4514_string(),
                "serial": _serial(certificate.serial_number),
                "not_before": certificate.not_valid_before_utc,
                "not_after": certificate.not_valid_after_utc,
                "sha256": certificate.fingerprint(hashes.SHA256()).hex(),
                "key_backend": backend,
            }
        )


class CaCreation(_Request):
    """How to create a CA key: in an encrypted file (default) or in the configured PKCS#11 token."""

    hsm: bool = Field(default=False, description="Generate the issuing CA key in the PKCS#11 token.")


class Certificate(BaseModel):
    """An issued certificate as recorded; ``pem`` is the certificate alone (GET it with
    `Accept: application/pem-certificate-chain` for the chain)."""

    serial: str = Field(description="Serial number, hex; the id in /v1/certificates/{serial}.")
    device_id: str | None
    profile: str
    subject: str
    issuer_id: str
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: str = Field(description="SHA-256 fingerprint of the DER certificate, hex.")
    status: CertificateStatus
    revoked_at: dt.datetime | None
    reason: RevocationReason | None
    renewed_from: str | None = Field(description="The serial this certificate renewed, hex.")
    renew_at: dt.datetime = Field(description="When to renew: at 2/3 of the validity, jittered.")
    pem: str

    @classmethod
    def of(cls, record: CertificateRecord, *, renew_at: dt.datetime) -> Certificate:
        """Return the API view of a certificate record."""
        return cls(
            serial=_serial(record.serial),
            device_id=record.device_id,
            profile=record.profile,
            subject=record.subject,
            issuer_id=record.issuer_id,
            not_before=record.not_before,
            not_after=record.not_after,
            sha256=record.sha256.hex(),
            status=record.status,
            revoked_at=record.revoked_at,
            reason=record.reason,
            renewed_from=None if record.renewed_from is None else _serial(record.renewed_from),
            renew_at=renew_at,
            pem=record.pem().decode("ascii"),
        )


class CertificatePage(BaseModel):
    """One page of certificates, by expiry then serial; pass ``next_after`` as ``after`` for the next."""

    items: list[Certificate]
    next_after: str | None = Field(description="The cursor of the next page; null on the last page.")


class Revocation(_Request):
    """Why a certificate is revoked: an RFC 5280 5.3.1 CRLReason name."""

    reason: RevocationReason = RevocationReason.UNSPECIFIED


# -- enrollment ------------------------------------------------------------------------------


class ManufacturerCaView(BaseModel):
    """A manufacturer CA trusted for factory (IDevID) certificates."""

    id: str
    manufacturer: str
    model_attribute: ModelAttribute = Field(description="The subject attribute that names the model.")
    subject: str
    not_after: dt.datetime
    added_at: dt.datetime
    pem: str

    @classmethod
    def of(cls, ca: ManufacturerCa) -> ManufacturerCaView:
        """Return the API view of a registered manufacturer CA."""
        return cls(
            id=ca.id,
            manufacturer=ca.manufacturer,
            model_attribute=ca.model_attribute,
            subject=ca.subject,
            not_after=ca.not_after,
            added_at=ca.added_at,
            pem=ca.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        )


class ManufacturerCaCreation(_Request):
    """CA certificates (a PEM bundle) to trust for a manufacturer's factory certificates."""

    manufacturer: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    pem: Annotated[str, StringConstraints(min_length=1, max_length=MAX_BUNDLE_SIZE)]
    model_attribute: ModelAttribute = ModelAttribute.OU


class EnrollmentRuleView(_Response):
    """A zero-touch rule: what a valid factory certificate of this manufacturer and model gets."""

    manufacturer: str
    model: str = Field(description="The device model, or `*` for any model.")
    mode: RuleMode
    register_unknown: bool
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, rule: EnrollmentRule) -> EnrollmentRuleView:
        """Return the API view of a rule."""
        return cls.model_validate(rule)


class RuleSetting(_Request):
    """A rule's mode: `auto` enrolls at once, `approve` queues for an operator."""

    mode: RuleMode
    register_unknown: bool = Field(
        default=False, description="Register a device the inventory does not know yet (`auto` rules only)."
    )


class EnrollmentTokenView(_Response):
    """A one-time enrollment token as listed: never its secret."""

    id: str
    device_id: str
    status: TokenStatus
    created_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None
    used_source: str | None
    revoked_at: dt.datetime | None

    @classmethod
    def of(cls, token: EnrollmentToken, *, now: dt.datetime) -> EnrollmentTokenView:
        """Return the API view of a token, with its status at ``now``."""
        return cls(
            id=token.id,
            device_id=token.device_id,
            status=token.status(now),
            created_at=token.created_at,
            expires_at=token.expires_at,
            used_at=token.used_at,
            used_source=token.used_source,
            revoked_at=token.revoked_at,
        )


class EnrollmentTokenCreated(EnrollmentTokenView):
    """A token just created, with its text: shown this once, stored only as a hash."""

    token: str = Field(description="`fge_<id>_<secret>`: the device sends it as the HTTP Basic password.")


class EnrollmentTokenCreation(_Request):
    """A one-time token that lets one device enroll over EST."""

    device_id: _Id
    ttl_hours: int = Field(default=24, ge=1, le=720, description="Lifetime in hours (at most 30 days).")


class EnrollmentRequest(_Response):
    """A factory-certificate enrollment queued for an operator's decision."""

    id: str
    status: RequestStatus
    manufacturer: str
    model: str
    device_serial: str
    device_id: str | None
    factory_sha256: str = Field(description="SHA-256 fingerprint of the factory certificate, hex.")
    key_sha256: str = Field(description="SHA-256 of the CSR's public key (SPKI), hex.")
    source: str
    created_at: dt.datetime
    decided_at: dt.datetime | None
    decided_by: str | None
    reason: str
    certificate_serial: str | None = Field(description="The certificate issued on approval, hex.")

    @classmethod
    def of(cls, queued: QueuedRequest) -> EnrollmentRequest:
        """Return the API view of a queued request (without its CSR)."""
        serial = queued.certificate_serial
        return cls(
            id=queued.id,
            status=queued.status,
            manufacturer=queued.manufacturer,
            model=queued.model,
            device_serial=queued.device_serial,
            device_id=queued.device_id,
            factory_sha256=queued.factory_fingerprint.hex(),
            key_sha256=queued.key_fingerprint.hex(),
            source=queued.source,
            created_at=queued.created_at,
            decided_at=queued.decided_at,
            decided_by=queued.decided_by,
            reason=queued.reason,
            certificate_serial=None if serial is None else _serial(serial),
        )


class Rejection(_Request):
    """Why an enrollment request is rejected; the device's factory certificate is refused from then on."""

    reason: Annotated[
        str, StringConstraints(min_length=1, max_length=4096), Field(description="Recorded in the event log.")
    ]


class BatchView(_Response):
    """A manufacturing batch as recorded: its devices were registered and issued certificates at once."""

    id: str
    model: str = Field(description="The device type of every device of the batch.")
    mode: BatchMode = Field(description="`csr`: the line sent CSRs; `keygen`: the server made the keys.")
    count: int
    issuer_id: str = Field(description="The issuing CA that signed the batch's certificates.")
    actor: str
    created_at: dt.datetime
    manifest_sha256: str = Field(description="SHA-256 of the manifest's bytes, hex, as in the event log.")

    @classmethod
    def of(cls, batch: Batch) -> BatchView:
        """Return the API view of a batch."""
        return cls(**_batch_fields(batch))


class BatchDetail(BatchView):
    """A batch with its signed manifest."""

    manifest: str = Field(
        description="The manifest exactly as signed: canonical JSON in ASCII (fleetguard-batch-manifest/1)."
    )
    signature: str = Field(
        description="The detached Ed25519 signature over the manifest's bytes, raw 64 bytes in standard "
        "base64, by the key `GET /v1/events/public-key` returns."
    )

    @classmethod
    def of_stored(cls, stored: StoredBatch) -> BatchDetail:
        """Return the API view of a recorded batch with its manifest."""
        return cls(**_batch_fields(stored.batch), **_signed(stored.manifest, stored.signature))


class BatchCertificate(BaseModel):
    """The certificate one device of a batch was issued."""

    device_id: str
    serial: str = Field(description="Serial number, hex; the id in /v1/certificates/{serial}.")
    sha256: str = Field(description="SHA-256 fingerprint of the DER certificate, hex.")
    not_after: dt.datetime
    pem: str = Field(description="The certificate alone; the CA chain is `chain_pem`.")


class BatchCreated(BatchDetail):
    """A batch just made: the manifest and every device's certificate, in batch order."""

    chain_pem: str = Field(description="The issuing CA, then the root, PEM.")
    certificates: list[BatchCertificate]

    @classmethod
    def of_issued(cls, issued: IssuedBatch) -> BatchCreated:
        """Return the API view of a batch just made (CSR mode: it holds no key)."""
        pem = serialization.Encoding.PEM
        certificates = [
            BatchCertificate(
                device_id=device.device_id,
                serial=_serial(device.certificate.serial_number),
                sha256=device.certificate.fingerprint(hashes.SHA256()).hex(),
                not_after=device.certificate.not_valid_after_utc,
                pem=device.certificate.public_bytes(pem).decode("ascii"),
            )
            for device in issued.devices
        ]
        return cls(
            **_batch_fields(issued.batch),
            **_signed(issued.manifest, issued.signature),
            chain_pem=b"".join(c.public_bytes(pem) for c in issued.chain).decode("ascii"),
            certificates=certificates,
        )


def _batch_fields(batch: Batch) -> dict[str, object]:
    return {
        "id": batch.id, "model": batch.model, "mode": batch.mode, "count": batch.count,
        "issuer_id": batch.issuer_id, "actor": batch.actor, "created_at": batch.created_at,
        "manifest_sha256": batch.manifest_sha256.hex(),
    }  # fmt: skip


def _signed(manifest: bytes, signature: bytes) -> dict[str, str]:
    return {"manifest": manifest.decode("ascii"), "signature": base64.b64encode(signature).decode("ascii")}
