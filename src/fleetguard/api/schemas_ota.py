"""HTTP (and ``fleetguard ota --json``) views of OTA releases, staged metadata, campaigns and compliance.

The command line prints the same shapes with ``--json``, so scripts read both alike. Shares are given
in percent here (``scope_percent``) next to the parts per million the core counts in (``scope_ppm``).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from fleetguard.ota.campaigns import Campaign, WaveView
from fleetguard.ota.compliance import ComplianceReport, DeviceCompliance, Posture, ReleaseLag
from fleetguard.ota.policy import DEFAULT_WAVES, default_policy
from fleetguard.ota.releases import Release, ReleaseState
from fleetguard.ota.repository import Staged
from fleetguard.ota.rollout import (
    CampaignAction,
    CampaignState,
    DeviceProgress,
    DeviceStep,
    RolloutPolicy,
    Target,
)
from fleetguard.ota.scope import PPM

__all__ = [
    "CampaignCreate",
    "CampaignView",
    "ComplianceView",
    "DeviceComplianceView",
    "DeviceProgressView",
    "OperatorAction",
    "ReasonBody",
    "ReleaseLagView",
    "ReleaseView",
    "StagedView",
    "TargetBody",
    "WaveBody",
    "WaveStatsView",
    "percent_ppm",
]

_PERCENT_PPM = PPM // 100


def percent_ppm(percent: float) -> int:
    """Return ``percent`` (0..100, decimals allowed) in parts per million, rounded to the nearest."""
    return round(percent * _PERCENT_PPM)


def _percent(ppm: int) -> float:
    return ppm / _PERCENT_PPM


class OperatorAction(enum.StrEnum):
    """What an operator does to an approved campaign (approval needs the release keys: CLI only)."""

    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"

    @property
    def action(self) -> CampaignAction:
        """The rollout table's action."""
        return CampaignAction(self.value)


class ReleaseView(BaseModel):
    """A release of one image for one hardware id; ``staged`` until its release keys' threshold signed."""

    id: str
    hardware_id: str
    release: str
    release_counter: int
    target_path: str
    sha256: str
    length: int
    state: ReleaseState
    actor: str
    created_at: dt.datetime
    published_at: dt.datetime | None

    @classmethod
    def of(cls, r: Release) -> ReleaseView:
        """Return the view of ``r``."""
        return cls(
            id=r.id, hardware_id=r.hardware_id, release=r.release, release_counter=r.release_counter,
            target_path=r.target_path, sha256=r.sha256, length=r.length, state=r.state, actor=r.actor,
            created_at=r.created_at, published_at=r.published_at,
        )  # fmt: skip


class StagedView(BaseModel):
    """A role version waiting for more signatures (``fleetguard ota sign ROLE``)."""

    repository: str
    role: str
    version: int
    signatures: int
    threshold: int

    @classmethod
    def of(cls, repository: str, s: Staged) -> StagedView:
        """Return the view of ``s`` in ``repository`` (``image`` or ``director``)."""
        return cls(
            repository=repository,
            role=s.role,
            version=s.version,
            signatures=s.signatures,
            threshold=s.threshold,
        )


class WaveStatsView(BaseModel):
    """One wave: whether it is open, and its devices by outcome (the rest are pending or in flight)."""

    index: int
    name: str
    open: bool
    total: int
    committed: int
    failed: int
    retrying: int

    @classmethod
    def of(cls, w: WaveView) -> WaveStatsView:
        """Return the view of ``w``."""
        s = w.stats
        return cls(
            index=w.index, name=w.name, open=w.open, total=s.total, committed=s.committed, failed=s.failed,
            retrying=s.retrying,
        )  # fmt: skip


class CampaignView(BaseModel):
    """A campaign: its state and why, its signed scope, its window and its waves."""

    id: str
    hardware_id: str
    release: str
    state: CampaignState
    reason: str
    devices: int
    scope_ppm: int = Field(description="The signed rollout fraction (0 until approved).")
    scope_percent: float
    not_before: dt.datetime
    not_after: dt.datetime
    actor: str
    created_at: dt.datetime
    updated_at: dt.datetime
    waves: list[WaveStatsView]

    @classmethod
    def of(cls, c: Campaign) -> CampaignView:
        """Return the view of ``c``."""
        return cls(
            id=c.id, hardware_id=c.hardware_id, release=c.release, state=c.state, reason=c.reason,
            devices=c.devices, scope_ppm=c.scope_ppm, scope_percent=_percent(c.scope_ppm),
            not_before=c.not_before, not_after=c.not_after, actor=c.actor, created_at=c.created_at,
            updated_at=c.updated_at, waves=[WaveStatsView.of(w) for w in c.waves],
        )  # fmt: skip


class DeviceProgressView(BaseModel):
    """Where one device is in a campaign."""

    device_id: str
    wave: int
    bucket: int
    step: DeviceStep
    attempt: int
    step_since: dt.datetime
    deadline_at: dt.datetime | None
    retry_at: dt.datetime | None
    detail: str

    @classmethod
    def of(cls, p: DeviceProgress) -> DeviceProgressView:
        """Return the view of ``p``."""
        return cls(
            device_id=p.device_id, wave=p.wave, bucket=p.bucket, step=p.step, attempt=p.attempt,
            step_since=p.step_since, deadline_at=p.deadline_at, retry_at=p.retry_at, detail=p.detail,
        )  # fmt: skip


class TargetBody(BaseModel):
    """Which devices of the hardware id a campaign targets; every criterion given must hold.

    Devices that already run the release are always left out.
    """

    model_config = ConfigDict(extra="forbid")

    type: str | None = Field(default=None, min_length=1, max_length=128, description="Device type id.")
    site: str | None = Field(default=None, min_length=1, max_length=128, description="Site id.")
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    firmware_version: str | None = Field(
        default=None, min_length=1, max_length=128, description="Only devices on this version."
    )

    def target(self, release: str) -> Target:
        """Return the core target (raises ``PlanInvalid``)."""
        return Target(
            device_type=self.type, site=self.site, labels=dict(self.labels),
            firmware_version=self.firmware_version, firmware_version_not=release,
        )  # fmt: skip


class WaveBody(BaseModel):
    """One wave: its name and the cumulative share of the targeted devices it reaches."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    percent: float = Field(gt=0, le=100, description="Cumulative: this wave and every one before it.")


_DEFAULT_WAVE_BODIES = [WaveBody(name=name, percent=_percent(ppm)) for name, ppm in DEFAULT_WAVES]


class CampaignCreate(BaseModel):
    """Plan a campaign of a published release (state ``draft``; approval signs its scope, CLI only)."""

    model_config = ConfigDict(extra="forbid")

    hardware: str = Field(min_length=1, max_length=61, description="The hardware id (devices' model).")
    release: str = Field(min_length=1, max_length=64)
    id: str | None = Field(default=None, min_length=1, max_length=64, description="Default: generated.")
    target: TargetBody = Field(default_factory=TargetBody)
    waves: list[WaveBody] = Field(
        default_factory=lambda: list(_DEFAULT_WAVE_BODIES), min_length=1, max_length=32
    )
    success_percent: float = Field(
        default=95, gt=0, le=100, description="Committed share to open the next wave."
    )
    error_percent: float = Field(
        default=5, gt=0, le=100, description="Failed share that pauses the campaign."
    )
    abort_percent: float | None = Field(
        default=None, gt=0, le=100, description="Failed share that aborts it."
    )
    soak_s: float = Field(
        default=0, ge=0, description="How long a wave stays successful before the next opens."
    )
    deadline_s: float | None = Field(
        default=None, gt=0, description="Longest a wave may run without success."
    )
    windows: list[Annotated[str, StringConstraints(max_length=80)]] = Field(
        default_factory=list,
        max_length=32,
        description="Maintenance windows, e.g. 'Mon-Fri 01:00-05:00 UTC'.",
    )
    max_retries: int = Field(default=3, ge=0, le=20)
    not_before: AwareDatetime | None = None
    not_after: AwareDatetime | None = None

    def policy(self) -> RolloutPolicy:
        """Return the rollout policy (raises ``PlanInvalid``)."""
        return rollout_policy(
            [(w.name, percent_ppm(w.percent)) for w in self.waves],
            success_percent=self.success_percent, error_percent=self.error_percent,
            abort_percent=self.abort_percent, soak=dt.timedelta(seconds=self.soak_s),
            deadline=None if self.deadline_s is None else dt.timedelta(seconds=self.deadline_s),
            windows=self.windows, max_retries=self.max_retries,
        )  # fmt: skip


def rollout_policy(
    waves: Sequence[tuple[str, int]],
    *,
    success_percent: float,
    error_percent: float,
    abort_percent: float | None,
    soak: dt.timedelta,
    deadline: dt.timedelta | None,
    windows: Sequence[str],
    max_retries: int,
) -> RolloutPolicy:
    """Return the policy of the command line's and the API's options (raises ``PlanInvalid``)."""
    return default_policy(
        waves=waves, success_ppm=percent_ppm(success_percent), error_ppm=percent_ppm(error_percent),
        abort_ppm=None if abort_percent is None else percent_ppm(abort_percent), soak=soak, deadline=deadline,
        windows=windows, max_retries=max_retries,
    )  # fmt: skip


class ReasonBody(BaseModel):
    """Why (recorded in the event log)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=500)


class DeviceComplianceView(BaseModel):
    """One device's patch state against its hardware id's newest release."""

    device_id: str
    hardware_id: str
    release: str | None
    release_counter: int | None
    behind: int | None = Field(description="Published releases newer than what it runs (null: unknown).")
    posture: Posture
    latest: str | None

    @classmethod
    def of(cls, d: DeviceCompliance) -> DeviceComplianceView:
        """Return the view of ``d``."""
        return cls(
            device_id=d.device_id, hardware_id=d.hardware_id, release=d.release,
            release_counter=d.release_counter, behind=d.behind, posture=d.posture, latest=d.latest,
        )  # fmt: skip


class ReleaseLagView(BaseModel):
    """One published release: who runs it and how long patching took (seconds)."""

    hardware_id: str
    release: str
    release_counter: int
    published_at: dt.datetime
    running: int
    committed: int
    lag_median_s: float | None
    lag_p90_s: float | None
    waiting: int
    waiting_since_s: float

    @classmethod
    def of(cls, r: ReleaseLag) -> ReleaseLagView:
        """Return the view of ``r``."""
        return cls(
            hardware_id=r.hardware_id, release=r.release, release_counter=r.release_counter,
            published_at=r.published_at, running=r.running, committed=r.committed,
            lag_median_s=_seconds(r.lag_median), lag_p90_s=_seconds(r.lag_p90), waiting=r.waiting,
            waiting_since_s=r.waiting_since.total_seconds(),
        )  # fmt: skip


class ComplianceView(BaseModel):
    """The fleet's patch compliance: devices per posture, each release's lag, and (on request) devices."""

    at: dt.datetime
    counts: dict[str, int]
    releases: list[ReleaseLagView]
    devices: list[DeviceComplianceView] | None = Field(
        default=None, description="The devices not current (behind or unknown), when asked for."
    )

    @classmethod
    def of(cls, report: ComplianceReport, *, devices: bool) -> ComplianceView:
        """Return the view of ``report``; with ``devices``, list the devices that are not current."""
        listed = None
        if devices:
            listed = [DeviceComplianceView.of(d) for d in report.devices if d.posture is not Posture.CURRENT]
        return cls(
            at=report.at, counts=report.counts, releases=[ReleaseLagView.of(r) for r in report.releases],
            devices=listed,
        )  # fmt: skip


def _seconds(value: dt.timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()
