"""One installation: its identity on disk, and the services opened from it.

``fleetguard init`` calls :func:`initialize`, which writes ``installation.json`` (id, trust domain,
event-log origin) and the Ed25519 key that signs event-log checkpoints under the data directory, and
creates the first admin token. Every other command opens a :class:`Runtime` from the same settings:
the database (migrated), event log, bus, relay, inventory and token store, wired together once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetguard.api.tokens import Role, TokenStore
from fleetguard.config import Settings
from fleetguard.enroll.batch import BatchService
from fleetguard.enroll.service import EnrollmentService
from fleetguard.errors import Conflict, FleetguardError, InvalidInput
from fleetguard.events.bus import EventBus, open_bus
from fleetguard.events.checkpoint import CheckpointSigner, generate_signing_key, load_signing_key
from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.events.relay import EventRelay
from fleetguard.firmware.service import FirmwareService
from fleetguard.inventory.errors import DeviceNotFound
from fleetguard.inventory.service import Inventory
from fleetguard.monitor.alerts import AlertService
from fleetguard.monitor.response import InstallationResponder
from fleetguard.monitor.service import MonitorService, owners_from_bindings
from fleetguard.ota.campaigns import CampaignService
from fleetguard.ota.releases import ReleaseService
from fleetguard.ota.repositories import OtaRepositories
from fleetguard.pki.publication import RevocationPublisher
from fleetguard.pki.service import CertificateRecord, CertificateService
from fleetguard.segment.nftables import Nftables
from fleetguard.segment.resolver import DnsResolver
from fleetguard.segment.service import SegmentationService
from fleetguard.store.database import Database, open_database
from fleetguard.trust.service import TrustService
from fleetguard.types import parse_utc, utc_now

__all__ = ["Installation", "NotInitialized", "Runtime", "initialize"]

INSTALLATION_FILE = "installation.json"
SIGNING_KEY_FILE = Path("keys") / "event-log-ed25519.pem"
# RFC 9110-style DNS name: labels of letters, digits and hyphens; SPIFFE trust domains are DNS-like.
_TRUST_DOMAIN = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)


class NotInitialized(FleetguardError):
    """The data directory holds no installation."""

    status = 503
    code = "not-initialized"


@dataclass(frozen=True, slots=True)
class Installation:
    """What ``installation.json`` records."""

    id: str
    trust_domain: str
    created_at: dt.datetime

    @property
    def origin(self) -> str:
        """The event log's name in signed tree heads."""
        return f"{self.trust_domain}/fleetguard/{self.id}"


def initialize(settings: Settings, trust_domain: str, *, now: dt.datetime) -> tuple[Installation, str]:
    """Create the installation in ``settings.data_dir``; return it and the first admin token.

    Raises:
        Conflict: the data directory already holds an installation.
        InvalidInput: the trust domain is not a DNS name.
    """
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise InvalidInput(f"trust domain {trust_domain[:80]!r} must be a lower-case DNS name")
    data_dir = settings.data_dir
    path = data_dir / INSTALLATION_FILE
    if path.exists():
        raise Conflict(f"{data_dir} already holds an installation", hint="use it, or pick another --data-dir")
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    installation = Installation(id=str(uuid.uuid4()), trust_domain=trust_domain, created_at=now)
    # The database comes first: a bad URL fails before anything is written to the data directory,
    # and an interrupted init can simply be run again.
    runtime = Runtime(settings, installation)
    try:
        if runtime.log.size() > 0:
            raise Conflict(
                "the database already holds an installation's event log",
                hint="point --database-url at an empty database",
            )
        _ensure_signing_key(data_dir / SIGNING_KEY_FILE)
        _, token = runtime.tokens.create("initial admin", Role.ADMIN, actor="fleetguard init", now=now)
        with runtime.database.transaction() as session:
            runtime.log.append(
                session,
                NewEvent(actor="fleetguard init", subject="installation", action="installation.created",
                         data={"trust_domain": trust_domain, "id": installation.id}),
                now=now,
            )  # fmt: skip
    finally:
        runtime.close()
    _write_installation(path, installation)
    return installation, token


def _ensure_signing_key(path: Path) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    if path.exists():
        load_signing_key(path)  # left by an interrupted init: reuse it only if it is sound
        return
    generate_signing_key(path)


class Runtime:
    """The services of one installation, opened once and shared by the API, CLI and workers."""

    def __init__(self, settings: Settings, installation: Installation | None = None) -> None:
        self.settings = settings
        self.installation = installation or load_installation(settings.data_dir)
        self.database: Database = open_database(
            settings.resolved_database_url, busy_timeout_ms=settings.sqlite_busy_timeout_ms
        )
        self.log = EventLog(self.database, self.installation.origin)
        self.bus: EventBus = open_bus(settings.bus_url)
        self.relay = EventRelay(self.database, self.log, self.bus, partitions=settings.bus_partitions)
        self.inventory = Inventory(self.database, self.log, on_commit=self.relay.notify)
        self.tokens = TokenStore(self.database, self.log, on_commit=self.relay.notify)
        self.pki = CertificateService(
            self.database, self.log, self.inventory, settings, self.installation.trust_domain,
            on_commit=self.relay.notify, on_revoked=self._publish_revocation,
        )  # fmt: skip
        self.revocation = RevocationPublisher(self.pki, self.database, settings)
        self.enroll = EnrollmentService(
            self.database, self.log, self.inventory, self.pki, settings, on_commit=self.relay.notify
        )
        self.batches = BatchService(
            self.database, self.log, self.inventory, self.pki,
            trust_domain=self.installation.trust_domain, signing_key=self._signing_key,
            on_commit=self.relay.notify,
        )  # fmt: skip
        self.trust = TrustService(
            self.database, self.log, self.inventory, self.pki, clock=utc_now, on_commit=self.relay.notify
        )
        self.firmware = FirmwareService(
            self.database, self.log, self.inventory, data_dir=settings.data_dir, clock=utc_now,
            on_commit=self.relay.notify,
        )  # fmt: skip
        self.segment = SegmentationService(
            self.database, self.log, self.inventory, nft=_nftables(settings), resolver=_resolver(settings),
            clock=utc_now, on_commit=self.relay.notify,
        )  # fmt: skip
        self.alerts = AlertService(
            self.database, self.log, InstallationResponder(self.trust, self.inventory), clock=utc_now,
            on_commit=self.relay.notify,
        )  # fmt: skip
        self.monitor = MonitorService(
            self.database, self.log, self.alerts, lambda: owners_from_bindings(self.segment.bindings()),
            clock=utc_now, on_commit=self.relay.notify,
            model_path=settings.data_dir / "monitor" / "model.npz", devices=self.inventory.states,
            device_type=self._device_type,
        )  # fmt: skip
        self.ota = OtaRepositories(settings.data_dir, clock=utc_now)
        self.releases = ReleaseService(
            self.database, self.log, self.ota, self.firmware, clock=utc_now, on_commit=self.relay.notify
        )
        self.campaigns = CampaignService(
            self.database, self.log, self.inventory, self.ota, self.releases, clock=utc_now,
            on_commit=self.relay.notify,
        )  # fmt: skip

    def _device_type(self, device_id: str) -> str | None:
        try:
            return self.inventory.get(device_id).device_type
        except DeviceNotFound:
            return None

    def _publish_revocation(self, record: CertificateRecord) -> None:
        self.revocation.revoked(record)

    def _signing_key(self) -> Ed25519PrivateKey:
        # Manufacturing batch manifests are signed with the checkpoint key (fleetguard.enroll.manifest).
        return load_signing_key(self.settings.data_dir / SIGNING_KEY_FILE)

    def signer(self) -> CheckpointSigner:
        """Return the checkpoint signer (reads the key file; fails closed on a bad one)."""
        return CheckpointSigner(self._signing_key(), self.installation.origin)

    def close(self) -> None:
        """Stop the relay, close the key backends, the bus and the database."""
        self.relay.stop()
        self.pki.keyring.close()
        self.bus.close()
        self.database.close()


def _nftables(settings: Settings) -> Nftables:
    return Nftables(prefix=("ip", "netns", "exec", settings.segment_netns) if settings.segment_netns else ())


def _resolver(settings: Settings) -> DnsResolver:
    servers = [server.strip() for server in settings.segment_nameservers.split(",") if server.strip()]
    return DnsResolver(nameservers=servers, port=settings.segment_dns_port)


def load_installation(data_dir: Path) -> Installation:
    """Read ``installation.json``; raise :class:`NotInitialized` if it is missing or unreadable."""
    path = data_dir / INSTALLATION_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return Installation(
            id=str(record["id"]),
            trust_domain=str(record["trust_domain"]),
            created_at=parse_utc(str(record["created_at"])),
        )
    except FileNotFoundError as exc:
        raise NotInitialized(f"no installation in {data_dir}", hint="run: fleetguard init") from exc
    except (OSError, ValueError, KeyError) as exc:
        raise NotInitialized(f"{path} is unreadable: {exc}", hint="restore it from backup") from exc


def _write_installation(path: Path, installation: Installation) -> None:
    record = {
        "id": installation.id,
        "trust_domain": installation.trust_domain,
        "created_at": installation.created_at.isoformat(),
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
