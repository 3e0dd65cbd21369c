"""SQLAlchemy 2 table models: the one schema every capability shares.

The migrations under ``migrations/versions`` create exactly these tables; a unit test compares them.
Capabilities read each other's data through services, never through these classes directly.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from fleetguard.types import ensure_utc

__all__ = [
    "ApiTokenRow",
    "AuthorityRow",
    "Base",
    "BusCursorRow",
    "CertificateRow",
    "CheckpointRow",
    "CrlCounterRow",
    "DeviceRow",
    "DeviceSignalRow",
    "DeviceTypeRow",
    "EnforcementRow",
    "EnrollmentBatchRow",
    "EnrollmentRequestRow",
    "EnrollmentRuleRow",
    "EnrollmentTokenRow",
    "EventHeadRow",
    "EventRow",
    "ManufacturerCaRow",
    "PolicySetRow",
    "SiteRow",
    "UtcDateTime",
]


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the database returns."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: fleetguard stores UTC only")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        return None if value is None else ensure_utc(value)


class Base(DeclarativeBase):
    """Declarative base of every fleetguard table."""


class SiteRow(Base):
    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class DeviceTypeRow(Base):
    __tablename__ = "device_types"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    manufacturer: Mapped[str] = mapped_column(String(256), default="")
    model: Mapped[str] = mapped_column(String(256), default="")
    mud_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class DeviceRow(Base):
    __tablename__ = "devices"
    __table_args__ = (
        UniqueConstraint("manufacturer", "serial", name="uq_devices_manufacturer_serial"),
        Index("ix_devices_state", "state"),
        Index("ix_devices_site", "site_id"),
        Index("ix_devices_type", "device_type_id"),
        Index("ix_devices_model", "model"),
        Index("ix_devices_firmware", "firmware_version"),
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    serial: Mapped[str] = mapped_column(String(128))
    manufacturer: Mapped[str] = mapped_column(String(256))
    model: Mapped[str] = mapped_column(String(256), default="")
    device_type_id: Mapped[str | None] = mapped_column(
        String(128), ForeignKey("device_types.id", ondelete="RESTRICT"), nullable=True
    )
    hardware_revision: Mapped[str] = mapped_column(String(128), default="")
    firmware_version: Mapped[str] = mapped_column(String(128), default="")
    mud_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    site_id: Mapped[str | None] = mapped_column(
        String(128), ForeignKey("sites.id", ondelete="RESTRICT"), nullable=True
    )
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    owner: Mapped[str] = mapped_column(String(256), default="")
    state: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    last_seen: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    # Optimistic locking: every UPDATE carries "WHERE version = <read version>" and bumps it, so two
    # concurrent writers cannot both succeed (SQLAlchemy raises StaleDataError for the loser).
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - SQLAlchemy's declared API


class EventRow(Base):
    """One entry of the hash-chained event log. Rows are only ever inserted."""

    __tablename__ = "event_log"
    __table_args__ = (
        Index("ix_event_log_subject", "subject"),
        Index("ix_event_log_action", "action"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time_us: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(256))
    subject: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    data: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class EventHeadRow(Base):
    """The last appended entry; a single row that serializes appends across processes."""

    __tablename__ = "event_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class CheckpointRow(Base):
    """A signed tree head over the first ``tree_size`` entries (RFC 9162 style)."""

    __tablename__ = "event_checkpoints"

    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class BusCursorRow(Base):
    """How far the event relay has published the log to the bus (the outbox cursor)."""

    __tablename__ = "bus_cursor"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)


class ApiTokenRow(Base):
    """An operator API token; only the SHA-256 of its secret is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    secret_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class AuthorityRow(Base):
    """A CA certificate of this installation (the root, and every issuing CA, active or retired)."""

    __tablename__ = "pki_authorities"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    der: Mapped[bytes] = mapped_column(LargeBinary)
    key_ref: Mapped[str] = mapped_column(String(1024))
    not_before: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    not_after: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class CertificateRow(Base):
    """An issued end-entity certificate, recorded before it is returned to anyone."""

    __tablename__ = "pki_certificates"
    __table_args__ = (
        Index("ix_pki_certificates_device", "device_id"),
        Index("ix_pki_certificates_not_after", "not_after"),
        Index("ix_pki_certificates_status", "status"),
        Index("ix_pki_certificates_shard", "issuer_id", "crl_partition", "status"),
        Index("ix_pki_certificates_revoked_at", "revoked_at"),
        UniqueConstraint("sha256", name="uq_pki_certificates_sha256"),
    )

    # Hex of the serial number: unique across every issuing CA of the installation (RFC 5280
    # 4.1.2.2 needs uniqueness per issuer; one namespace is simpler and stricter).
    serial: Mapped[str] = mapped_column(String(48), primary_key=True)
    device_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    profile: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(512))
    issuer_id: Mapped[str] = mapped_column(String(64), ForeignKey("pki_authorities.id", ondelete="RESTRICT"))
    # The CRL shard named in the certificate's distribution point, fixed at issuance.
    crl_partition: Mapped[int] = mapped_column(Integer)
    not_before: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    not_after: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    status: Mapped[str] = mapped_column(String(16))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revocation_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    renewed_from: Mapped[str | None] = mapped_column(String(48), nullable=True)
    der: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class CrlCounterRow(Base):
    """The monotonic CRL number of an issuing CA (RFC 5280 5.2.3)."""

    __tablename__ = "pki_crl_numbers"

    issuer_id: Mapped[str] = mapped_column(String(64), ForeignKey("pki_authorities.id"), primary_key=True)
    number: Mapped[int] = mapped_column(BigInteger)


class ManufacturerCaRow(Base):
    """A manufacturer CA whose factory (IDevID) certificates are trusted for enrollment, and only for it."""

    __tablename__ = "enroll_manufacturer_cas"
    __table_args__ = (Index("ix_enroll_manufacturer_cas_manufacturer", "manufacturer"),)

    # Hex SHA-256 of the DER certificate: the same CA cannot be registered twice.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    manufacturer: Mapped[str] = mapped_column(String(64))
    # Which subject attribute of the factory certificate names the device model (fleetguard.enroll.identity).
    model_attribute: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(512))
    der: Mapped[bytes] = mapped_column(LargeBinary)
    not_after: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    added_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class EnrollmentRuleRow(Base):
    """A zero-touch rule: what happens to a device of this manufacturer and model (``*``: any model)."""

    __tablename__ = "enroll_rules"

    manufacturer: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    mode: Mapped[str] = mapped_column(String(16))
    register_unknown: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class EnrollmentTokenRow(Base):
    """A one-time enrollment token bound to one device; only the SHA-256 of its secret is stored."""

    __tablename__ = "enroll_tokens"
    __table_args__ = (Index("ix_enroll_tokens_device", "device_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128))
    secret_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    used_source: Mapped[str | None] = mapped_column(String(128), nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class EnrollmentRequestRow(Base):
    """A factory-certificate enrollment waiting for (or decided by) an operator."""

    __tablename__ = "enroll_requests"
    __table_args__ = (
        Index("ix_enroll_requests_status", "status", "created_at"),
        Index("ix_enroll_requests_device", "manufacturer", "device_serial"),
        # One pending request per device: concurrent first requests cannot queue it twice.
        Index(
            "uq_enroll_requests_pending",
            "manufacturer",
            "device_serial",
            unique=True,
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    manufacturer: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    device_serial: Mapped[str] = mapped_column(String(128))
    device_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    factory_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    key_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    csr: Mapped[bytes] = mapped_column(LargeBinary)
    source: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    decided_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    certificate_serial: Mapped[str | None] = mapped_column(String(48), nullable=True)


class EnrollmentBatchRow(Base):
    """A manufacturing batch: its devices were registered and issued certificates in the same transaction.

    The signed manifest (canonical JSON, :mod:`fleetguard.enroll.manifest`) and its detached Ed25519
    signature are kept so that the batch can be shown and verified again; private keys never are.
    """

    __tablename__ = "enroll_batches"
    __table_args__ = (Index("ix_enroll_batches_created", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    device_type_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("device_types.id", ondelete="RESTRICT")
    )
    mode: Mapped[str] = mapped_column(String(16))
    count: Mapped[int] = mapped_column(Integer)
    issuer_id: Mapped[str] = mapped_column(String(64), ForeignKey("pki_authorities.id", ondelete="RESTRICT"))
    actor: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    manifest_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    manifest: Mapped[bytes] = mapped_column(LargeBinary)
    signature: Mapped[bytes] = mapped_column(LargeBinary(64))


class PolicySetRow(Base):
    """One version of the fleet's access policy: Cedar text and the firmware posture policy.

    The newest version is in force. Versions are never changed; applying an older one adds a version.
    """

    __tablename__ = "trust_policy_sets"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(64))
    firmware_minimum: Mapped[dict[str, str]] = mapped_column(JSON)
    end_of_life: Mapped[list[str]] = mapped_column(JSON)
    actor: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class DeviceSignalRow(Base):
    """Inputs of trust decisions that other capabilities report about a device.

    ``risk`` (0-100) comes from monitoring; ``known_vulnerable`` from firmware analysis;
    ``attested_at`` from attestation.
    """

    __tablename__ = "trust_device_signals"

    device_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    risk: Mapped[int] = mapped_column(Integer, default=0)
    known_vulnerable: Mapped[bool] = mapped_column(Boolean, default=False)
    attested_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class EnforcementRow(Base):
    """What the enforcement points should hold for a device, and whether they confirmed it.

    ``status``: ``enforced`` (verified), ``pending`` (not yet tried) or ``failed`` (retried at
    ``next_attempt_at``; reported, never counted as done).
    """

    __tablename__ = "trust_enforcement"
    __table_args__ = (Index("ix_trust_enforcement_due", "status", "next_attempt_at"),)

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    desired: Mapped[dict[str, Any]] = mapped_column(JSON)
    desired_digest: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class MudProfileRow(Base):
    """A MUD file as received (bytes kept exactly, so its signature can be checked again)."""

    __tablename__ = "segment_profiles"

    url: Mapped[str] = mapped_column(String(2048), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    document: Mapped[bytes] = mapped_column(LargeBinary)
    signature: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    signer: Mapped[str | None] = mapped_column(Text, nullable=True)
    source: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(256))
    added_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class NetworkBindingRow(Base):
    """Where a managed device is on the network: the addresses its rules are keyed by."""

    __tablename__ = "segment_bindings"
    __table_args__ = (
        UniqueConstraint("ipv4", name="uq_segment_bindings_ipv4"),
        UniqueConstraint("ipv6", name="uq_segment_bindings_ipv6"),
        UniqueConstraint("mac", name="uq_segment_bindings_mac"),
    )

    device_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    ipv4: Mapped[str | None] = mapped_column(String(15), nullable=True)
    ipv6: Mapped[str | None] = mapped_column(String(39), nullable=True)
    mac: Mapped[str | None] = mapped_column(String(17), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class SegmentSettingRow(Base):
    """One setting of the fleet's MUD context (local networks, controllers, signature policy)."""

    __tablename__ = "segment_settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class RulesetApplyRow(Base):
    """One ruleset nft accepted: its generation, digest and what it held."""

    __tablename__ = "segment_applies"

    generation: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    digest: Mapped[str] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    actor: Mapped[str] = mapped_column(String(256))
    applied_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class FirmwareScanRow(Base):
    """One scan of one firmware image: the summary columns and the whole result (JSON)."""

    __tablename__ = "firmware_scans"
    __table_args__ = (
        Index("ix_firmware_scans_sha256", "image_sha256"),
        Index("ix_firmware_scans_version", "firmware_version"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    image_sha256: Mapped[str] = mapped_column(String(64))
    image_name: Mapped[str] = mapped_column(String(256))
    image_size: Mapped[int] = mapped_column(BigInteger)
    firmware_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    device_type: Mapped[str | None] = mapped_column(String(128), nullable=True)
    risk: Mapped[int] = mapped_column(Integer)
    max_severity: Mapped[str] = mapped_column(String(16))
    findings: Mapped[int] = mapped_column(Integer)
    known_exploited: Mapped[int] = mapped_column(Integer)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    actor: Mapped[str] = mapped_column(String(256))
    scanned_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class FirmwareWaiverRow(Base):
    """An operator's waiver of one finding rule (optionally one path) for one image, for the gate."""

    __tablename__ = "firmware_waivers"
    __table_args__ = (Index("ix_firmware_waivers_sha256", "image_sha256"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    image_sha256: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(128))
    path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class FirmwareSettingRow(Base):
    """A firmware setting (the release gate's threshold)."""

    __tablename__ = "firmware_settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class OtaReleaseRow(Base):
    """A firmware release in the image repository: one image for one hardware id."""

    __tablename__ = "ota_releases"
    __table_args__ = (
        UniqueConstraint("hardware_id", "release", name="uq_ota_releases_name"),
        UniqueConstraint("hardware_id", "release_counter", name="uq_ota_releases_counter"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    hardware_id: Mapped[str] = mapped_column(String(128))
    release: Mapped[str] = mapped_column(String(128))
    release_counter: Mapped[int] = mapped_column(BigInteger)
    target_path: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    length: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    scan_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    actor: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    published_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class OtaDeltaRow(Base):
    """A binary delta between two releases of one hardware id, published as a target."""

    __tablename__ = "ota_deltas"
    __table_args__ = (UniqueConstraint("hardware_id", "from_sha256", "to_sha256", name="uq_ota_deltas"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    hardware_id: Mapped[str] = mapped_column(String(128))
    from_sha256: Mapped[str] = mapped_column(String(64))
    to_sha256: Mapped[str] = mapped_column(String(64))
    target_path: Mapped[str] = mapped_column(String(512))
    method: Mapped[str] = mapped_column(String(32))
    length: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class OtaCampaignRow(Base):
    """A rollout campaign of one release: its policy, state and the scope its approval signed."""

    __tablename__ = "ota_campaigns"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    release_id: Mapped[str] = mapped_column(String(36))
    hardware_id: Mapped[str] = mapped_column(String(128))
    release: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    target: Mapped[dict[str, Any]] = mapped_column(JSON)
    scope_ppm: Mapped[int] = mapped_column(Integer)
    not_before: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    not_after: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    open_waves: Mapped[int] = mapped_column(Integer)
    wave_opened_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    success_since: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    devices: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    version: Mapped[int] = mapped_column(Integer)

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - SQLAlchemy's declarative hook


class OtaCampaignDeviceRow(Base):
    """One device's progress in one campaign (``fleetguard.ota.rollout.DeviceProgress``)."""

    __tablename__ = "ota_campaign_devices"
    __table_args__ = (
        Index("ix_ota_campaign_devices_device", "device_id"),
        Index("ix_ota_campaign_devices_wave", "campaign_id", "wave", "step"),
    )

    campaign_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    wave: Mapped[int] = mapped_column(Integer)
    bucket: Mapped[int] = mapped_column(Integer)
    step: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer)
    step_since: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    deadline_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    retry_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    detail: Mapped[str] = mapped_column(String(1024))


class OtaDeviceStatusRow(Base):
    """What a device last reported about its firmware (patch compliance)."""

    __tablename__ = "ota_device_status"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hardware_id: Mapped[str] = mapped_column(String(128))
    release: Mapped[str] = mapped_column(String(128))
    release_counter: Mapped[int] = mapped_column(BigInteger)
    reported_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    committed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class MonitorAlertRow(Base):
    """An alert of the monitor: what fired, about whom, its evidence and its triage state."""

    __tablename__ = "monitor_alerts"
    __table_args__ = (
        Index("ix_monitor_alerts_dedup", "dedup_key", "state"),
        Index("ix_monitor_alerts_device", "device_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(256))
    rule: Mapped[str] = mapped_column(String(64))
    detector: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    device_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    address: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    count: Mapped[int] = mapped_column(Integer)
    first_seen: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    last_seen: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    triaged_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    triage_note: Mapped[str] = mapped_column(Text)


class MonitorBaselineRow(Base):
    """A learned baseline (of a device or a device type), kept so that a restart keeps it."""

    __tablename__ = "monitor_baselines"

    scope: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class MonitorDiscoveredRow(Base):
    """An address seen on the network that the inventory does not know, with its fingerprint."""

    __tablename__ = "monitor_discovered"

    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    mac: Mapped[str | None] = mapped_column(String(17), nullable=True)
    vendor: Mapped[str | None] = mapped_column(String(256), nullable=True)
    guessed_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    confidence: Mapped[int] = mapped_column(Integer)
    reasons: Mapped[list[str]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    first_seen: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    last_seen: Mapped[dt.datetime] = mapped_column(UtcDateTime)
