"""Fixtures for the OTA service tests: an installation with both TUF repositories, firmware images
that pass (and one that fails) the firmware release gate, devices, and a clock the tests move.

:class:`Ota` opens a :class:`~fleetguard.installation.Runtime` on a fresh data directory (database,
event log, inventory, firmware gate, PKI) and builds the OTA services on it with :class:`Clock`, so
that offers, timeouts, retries, windows and director renewals are exact. The hardware id ``cam-x``
has a 1-of-1 release role; ``cam-y`` (added by :meth:`Ota.add_two_key_hardware`) needs 2 of 2.

The database is SQLite; a test module overrides ``ota_database_url`` with the shared
``database_url`` fixture to run on PostgreSQL too (skipped without ``FLEETGUARD_TEST_POSTGRES_URL``).
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner, Signer
from sqlalchemy import select

from firmware_images import small_squashfs  # type: ignore[import-not-found]
from fleetguard.config import Settings
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.lifecycle import Action
from fleetguard.inventory.model import DeviceSpec
from fleetguard.ota.campaigns import CampaignService
from fleetguard.ota.policy import default_policy
from fleetguard.ota.releases import Release, ReleaseService
from fleetguard.ota.repositories import OtaRepositories, hardware_role
from fleetguard.ota.repository import RoleKeys
from fleetguard.ota.rollout import RolloutPolicy
from fleetguard.store.models import OtaCampaignDeviceRow, OtaDeviceStatusRow

T0 = dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC)
"""A Monday, 10:00 UTC: where every test's clock starts."""

HW = "cam-x"
HW2 = "cam-y"
SALT = "0123456789abcdef"
TRUST_DOMAIN = "example.org"

needs_mksquashfs = pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="needs mksquashfs")


class Clock:
    """A clock that stands still until a test moves it."""

    def __init__(self, start: dt.datetime = T0) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> dt.datetime:
        self.now += delta
        return self.now


@dataclass(frozen=True)
class Keys:
    root1: Signer
    root2: Signer
    targets: Signer
    director_root: Signer
    hw: Signer
    hw2: Signer


@dataclass(frozen=True)
class Images:
    v1: Path
    v2: Path
    v3: Path
    unrelated: Path
    blocked: Path


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(*(CryptoSigner.generate_ed25519() for _ in range(6)))


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    """v1..v3 share a 20 kB application (deltas pay off); ``unrelated`` shares nothing with them;
    ``blocked`` has a default root password and telnet (the gate refuses it)."""
    if shutil.which("mksquashfs") is None:
        pytest.skip("needs mksquashfs")
    base = tmp_path_factory.mktemp("ota-images")
    app = random.Random(1).randbytes(20_000)  # noqa: S311 - test data
    other = random.Random(2).randbytes(60_000)  # noqa: S311 - test data

    def image(name: str, files: Mapping[str, bytes]) -> Path:
        built: Path = small_squashfs(base / name, dict(files))
        return built

    return Images(
        v1=image("fw-1.sqfs", {"/etc/os-release": b"VERSION=1\n", "/bin/app": app}),
        v2=image("fw-2.sqfs", {"/etc/os-release": b"VERSION=2\n", "/bin/app": app + b"x"}),
        v3=image("fw-3.sqfs", {"/etc/os-release": b"VERSION=3\n", "/bin/app": app + b"xy"}),
        unrelated=image("fw-other.sqfs", {"/other": other}),
        blocked=image(
            "fw-blocked.sqfs",
            {
                # `openssl passwd -1 -salt abcdefgh xc3511`: Mirai's first default credential, for root.
                "/etc/shadow": b"root:$1$abcdefgh$/ehdsgh6T85pypwniuldr1:19000:0:99999:7:::\n",
                "/etc/inetd.conf": b"telnet stream tcp nowait root /usr/sbin/telnetd telnetd\n",
            },
        ),
    )


@pytest.fixture
def ota_database_url(tmp_path: Path) -> str:
    """SQLite; test_campaigns.py overrides it with both databases."""
    return f"sqlite:///{tmp_path / 'fleetguard.db'}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@dataclass
class Ota:
    """One installation with initialized OTA repositories and the hardware id ``cam-x``."""

    runtime: Runtime
    clock: Clock
    keys: Keys
    images: Images
    repositories: OtaRepositories
    releases: ReleaseService
    campaigns: CampaignService

    def publish(
        self,
        image: Path,
        release: str,
        counter: int,
        *,
        hardware_id: str = HW,
        signers: Sequence[Signer] | None = None,
    ) -> Release:
        signers = [self.keys.hw] if signers is None else signers
        (published,) = self.releases.publish(
            image, hardware_ids=[hardware_id], release=release, counter=counter, signers=signers,
            actor="alice", scan=True,
        )  # fmt: skip
        return published

    def add_two_key_hardware(self) -> None:
        """``cam-y``: a release role that needs both ``hw`` and ``hw2``."""
        self.repositories.add_hardware(
            HW2, RoleKeys((self.keys.hw.public_key, self.keys.hw2.public_key), 2), [self.keys.targets]
        )

    def register(
        self,
        device_id: str,
        *,
        version: str = "1.0",
        model: str = HW,
        device_type: str | None = None,
        site: str | None = None,
        labels: Mapping[str, str] | None = None,
        active: bool = True,
    ) -> None:
        spec = DeviceSpec(
            id=device_id, serial=f"SN-{device_id}", manufacturer="Acme", model=model,
            device_type=device_type, site=site, labels=dict(labels or {}), firmware_version=version,
        )  # fmt: skip
        inventory = self.runtime.inventory
        inventory.register(spec, actor="ops")
        if active:
            inventory.transition(device_id, Action.PROVISION, actor="ops")
            inventory.transition(device_id, Action.ACTIVATE, actor="ops")

    def transition(self, device_id: str, action: Action) -> None:
        self.runtime.inventory.transition(device_id, action, actor="ops")

    def events(self, action: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(actor, subject, data) of each event with ``action``, oldest first."""
        return [
            (e.actor, e.subject, dict(e.details()))
            for e in self.runtime.log.entries(action=action, limit=1000)
        ]

    def event_count(self) -> int:
        return self.runtime.log.size()

    def image_targets(self, hardware_id: str = HW) -> dict[str, Any]:
        """The served targets of the hardware id's release role: path -> custom."""
        signed = self.repositories.image.targets(hardware_role(hardware_id)).signed
        return {path: dict(entry.custom) for path, entry in signed.targets.items()}

    def image_version(self, hardware_id: str = HW) -> int:
        return self.repositories.image.targets(hardware_role(hardware_id)).signed.version

    def device_rows(self, campaign_id: str) -> dict[str, tuple[Any, ...]]:
        """Every column of the campaign's device rows, by device id (for 'nothing changed')."""
        with self.runtime.database.reading() as session:
            rows = session.scalars(
                select(OtaCampaignDeviceRow).where(OtaCampaignDeviceRow.campaign_id == campaign_id)
            ).all()
            return {
                r.device_id: (
                    r.wave, r.bucket, r.step, r.attempt, r.step_since, r.deadline_at, r.retry_at, r.detail,
                )
                for r in rows
            }  # fmt: skip

    def status(self, device_id: str) -> tuple[Any, ...] | None:
        """The device's ota_device_status row (hardware, release, counter, reported, committed)."""
        with self.runtime.database.reading() as session:
            row = session.get(OtaDeviceStatusRow, device_id)
            if row is None:
                return None
            return (row.hardware_id, row.release, row.release_counter, row.reported_at, row.committed_at)


def policy(
    waves: Sequence[tuple[str, int]] = (("canary", 250_000), ("rest", 1_000_000)), **kwargs: Any
) -> RolloutPolicy:
    """:func:`default_policy` with a fixed salt (the plan is the same in every run)."""
    return default_policy(waves=waves, salt=SALT, **kwargs)


@pytest.fixture
def ota(tmp_path: Path, ota_database_url: str, clock: Clock, keys: Keys, images: Images) -> Iterator[Ota]:
    settings = Settings(data_dir=tmp_path / "data", database_url=ota_database_url)
    initialize(settings, TRUST_DOMAIN, now=clock())
    runtime = Runtime(settings)
    repositories = OtaRepositories(settings.data_dir, clock=clock)
    repositories.initialize(
        image_root=RoleKeys((keys.root1.public_key, keys.root2.public_key), 2),
        image_targets=RoleKeys((keys.targets.public_key,), 1),
        director_root=RoleKeys((keys.director_root.public_key,), 1),
        image_root_signers=[keys.root1, keys.root2],
        image_targets_signers=[keys.targets],
        director_root_signers=[keys.director_root],
    )
    repositories.add_hardware(HW, RoleKeys((keys.hw.public_key,), 1), [keys.targets])
    releases = ReleaseService(runtime.database, runtime.log, repositories, runtime.firmware, clock=clock)
    campaigns = CampaignService(
        runtime.database, runtime.log, runtime.inventory, repositories, releases, clock=clock
    )
    yield Ota(runtime, clock, keys, images, repositories, releases, campaigns)
    runtime.close()
