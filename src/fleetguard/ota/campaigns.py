"""Rollout campaigns, persisted: planning, approval (a signed scope), operation, device check-ins.

Theory of operation. The decisions are the pure functions of :mod:`fleetguard.ota.rollout`; this
module keeps their values in the database and drives the director.

* **Create** plans the campaign: the targeted devices (inventory: model = the release's hardware id,
  plus the target query; devices in another unfinished campaign are left out) are cut into waves
  in bucket order and persisted with one bulk insert, state ``draft``.
* **Approve** signs the campaign's scope (:class:`~fleetguard.ota.scope.RolloutScope`: fraction
  covering the planned waves, the hardware id, the window) into the release's entry in the image
  repository with the hardware id's *release keys*; below their threshold the signature is staged
  and the campaign stays ``draft`` until ``fleetguard ota sign`` completes it (:meth:`reconcile`).
  The director can never offer beyond what was signed: the device checks it.
* **Start / pause / resume / abort** are the table transitions; every change is an event.
* **Check-in** (``POST /ota/v1/checkin``, one indexed query on the no-update path): a device of an
  open wave that is pending (or due a retry) is *offered*: the director publishes new metadata for
  it naming the release (and a delta from what it runs, when there is one). Quarantined or
  decommissioned devices are offered nothing, and an offer not yet acted on is withdrawn (ARCHITECTURE:
  "director refuses targets to quarantined or unauthorised devices"). The reply tells the device
  whether its director metadata moved.
* **Report** applies a step (:func:`~fleetguard.ota.rollout.apply_report`; nonsense raises and
  changes nothing). When the step changes how the device counts (committed, failed for good), the
  campaign is evaluated at once, so an error threshold pauses the rollout in the same request that
  breached it. ``committed`` also records the device's firmware in the inventory.
* **Tick** (``fleetguard up``, every ``FLEETGUARD_OTA_EVALUATE_S``): silent devices time out, and
  every running campaign is evaluated (soak, deadlines, windows, completion).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from securesystemslib.signer import Signer
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session
from tuf.api.metadata import Targets

from fleetguard.errors import Conflict
from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.events.relay import publish_committed
from fleetguard.inventory.lifecycle import State
from fleetguard.inventory.model import DeviceChanges, DeviceFilter
from fleetguard.inventory.service import Inventory
from fleetguard.ota.director import DirectorTarget
from fleetguard.ota.errors import CampaignNotFound, CampaignStateError, ReportInvalid
from fleetguard.ota.policy import policy_from_dict, policy_to_dict, target_to_dict
from fleetguard.ota.releases import Release, ReleaseService, ReleaseState
from fleetguard.ota.repositories import OtaRepositories, hardware_role
from fleetguard.ota.repository import Published, Staged
from fleetguard.ota.rollout import (
    CampaignAction,
    CampaignSnapshot,
    CampaignState,
    Decision,
    DeviceOutcome,
    DeviceProgress,
    DeviceReport,
    DeviceStep,
    Evaluation,
    PlanInvalid,
    RolloutPolicy,
    Target,
    WaveStats,
    apply_action,
    apply_report,
    device_outcome,
    due_retries,
    evaluate,
    offer,
    plan_waves,
    timeouts,
)
from fleetguard.ota.scope import RolloutScope
from fleetguard.ota.wire import CheckIn, CheckInReply, StepReport
from fleetguard.store.database import Database
from fleetguard.store.models import (
    OtaCampaignDeviceRow,
    OtaCampaignRow,
    OtaDeltaRow,
    OtaDeviceStatusRow,
    OtaReleaseRow,
)

__all__ = ["Campaign", "CampaignService", "WaveView"]

_UNFINISHED = (CampaignState.DRAFT, CampaignState.APPROVED, CampaignState.RUNNING, CampaignState.PAUSED)
_LIVE = (CampaignState.RUNNING, CampaignState.PAUSED)
_WITHDRAWABLE = (DeviceStep.OFFERED, DeviceStep.DOWNLOADING, DeviceStep.DOWNLOADED)
_RETRYABLE = (DeviceStep.FAILED, DeviceStep.TIMED_OUT)
_IN_FLIGHT = (
    DeviceStep.OFFERED, DeviceStep.DOWNLOADING, DeviceStep.DOWNLOADED, DeviceStep.INSTALLED,
    DeviceStep.REBOOTED, DeviceStep.HEALTHY,
)  # fmt: skip
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_DEFAULT_WINDOW = dt.timedelta(days=30)
_INSERT_CHUNK = 5000
_STATUS_REFRESH = dt.timedelta(hours=1)
_POLICY_CACHE = 256


@dataclass(frozen=True, slots=True)
class _Enrolment:
    """A device's place in its unfinished campaign, as the check-in reads it (one row of ``_ENROLMENT``)."""

    step: DeviceStep
    wave: int
    retry_at: dt.datetime | None
    campaign_id: str
    state: CampaignState
    open_waves: int
    not_before: dt.datetime
    not_after: dt.datetime
    hardware_id: str
    release_id: str
    version: int
    policy: dict[str, Any]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> _Enrolment:
        """Build it from a row of ``_ENROLMENT`` (the column order of the fields)."""
        values = list(row)
        values[0], values[4] = DeviceStep(values[0]), CampaignState(values[4])
        return cls(*values)


_ENROLMENT = (
    select(
        OtaCampaignDeviceRow.step, OtaCampaignDeviceRow.wave, OtaCampaignDeviceRow.retry_at,
        OtaCampaignRow.id, OtaCampaignRow.state, OtaCampaignRow.open_waves, OtaCampaignRow.not_before,
        OtaCampaignRow.not_after, OtaCampaignRow.hardware_id, OtaCampaignRow.release_id,
        OtaCampaignRow.version, OtaCampaignRow.policy,
    )
    .join(OtaCampaignRow, OtaCampaignRow.id == OtaCampaignDeviceRow.campaign_id)
    .where(
        OtaCampaignDeviceRow.device_id == bindparam("device_id"),
        OtaCampaignRow.state.in_([state.value for state in _UNFINISHED]),
    )
)  # fmt: skip
_STATUS = select(
    OtaDeviceStatusRow.hardware_id, OtaDeviceStatusRow.release, OtaDeviceStatusRow.release_counter,
    OtaDeviceStatusRow.reported_at,
).where(OtaDeviceStatusRow.device_id == bindparam("device_id"))  # fmt: skip


@dataclass(frozen=True, slots=True)
class WaveView:
    """One wave of a campaign, for operators."""

    index: int
    name: str
    open: bool
    stats: WaveStats


@dataclass(frozen=True, slots=True)
class Campaign:
    """A campaign as operators see it."""

    id: str
    hardware_id: str
    release: str
    state: CampaignState
    devices: int
    scope_ppm: int
    not_before: dt.datetime
    not_after: dt.datetime
    reason: str
    actor: str
    created_at: dt.datetime
    updated_at: dt.datetime
    waves: tuple[WaveView, ...]


class CampaignService:
    """Campaign persistence and the device desk (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        log: EventLog,
        inventory: Inventory,
        repositories: OtaRepositories,
        releases: ReleaseService,
        *,
        clock: Callable[[], dt.datetime],
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._database = database
        self._log = log
        self._inventory = inventory
        self._repositories = repositories
        self._releases = releases
        self._clock = clock
        self._on_commit = on_commit
        self._policies: dict[tuple[str, int], RolloutPolicy] = {}

    # -- operators --------------------------------------------------------------------------------

    def create(
        self,
        *,
        hardware_id: str,
        release: str,
        policy: RolloutPolicy,
        target: Target | None = None,
        actor: str,
        campaign_id: str | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Campaign:
        """Plan a campaign of a published release and store it as a draft.

        Raises ``ReleaseNotFound``, :class:`PlanInvalid` (no device targeted, bad window),
        :class:`Conflict` (the release is only staged, or the id exists).
        """
        found = self._releases.get(hardware_id, release)
        if found.state is not ReleaseState.PUBLISHED:
            raise Conflict(
                f"release {release} of {hardware_id} is staged, not published", hint="fleetguard ota sign"
            )
        campaign_id = campaign_id or f"c-{secrets.token_hex(6)}"
        if not _ID.fullmatch(campaign_id):
            raise PlanInvalid(f"campaign id {campaign_id[:80]!r} must be letters, digits and . _ : -")
        with self._database.reading() as session:
            if session.get(OtaCampaignRow, campaign_id) is not None:
                raise Conflict(f"campaign {campaign_id} exists already")
        now = self._clock()
        not_before = not_before or now
        not_after = not_after or not_before + _DEFAULT_WINDOW
        if not_after <= not_before:
            raise PlanInvalid("the campaign window ends before it starts")
        target = target or Target(firmware_version_not=release)
        plan = plan_waves(self._targeted(hardware_id, target), policy)
        # pending_progress's values, as rows: a DeviceProgress for each of 100,000 devices costs seconds
        rows = [
            {
                "campaign_id": campaign_id, "device_id": a.device_id, "wave": a.wave, "bucket": a.bucket,
                "step": DeviceStep.PENDING.value, "attempt": 0, "step_since": now, "deadline_at": None,
                "retry_at": None, "detail": "",
            }
            for a in plan.assignments()
        ]  # fmt: skip
        row = OtaCampaignRow(
            id=campaign_id, release_id=found.id, hardware_id=hardware_id, release=release,
            state=CampaignState.DRAFT, policy=policy_to_dict(policy), target=target_to_dict(target),
            scope_ppm=0, not_before=not_before, not_after=not_after, open_waves=0, wave_opened_at=None,
            success_since=None, devices=len(rows), reason="planned", actor=actor, created_at=now,
            updated_at=now,
        )  # fmt: skip
        with self._database.transaction() as session:
            if session.get(OtaCampaignRow, campaign_id) is not None:
                raise Conflict(f"campaign {campaign_id} exists already")
            session.add(row)
            session.flush()
            connection = session.connection()  # Core executemany: the ORM's bulk path costs seconds here
            for start in range(0, len(rows), _INSERT_CHUNK):
                connection.execute(insert(OtaCampaignDeviceRow), rows[start : start + _INSERT_CHUNK])
            waves = ", ".join(f"{w.name}={w.size}" for w in plan.waves)
            self._event(
                session,
                campaign_id,
                "ota.campaign.created",
                actor,
                now,
                devices=len(rows),
                release=release,
                hardware_id=hardware_id,
                waves=waves,
            )
        publish_committed(self._on_commit)
        return self.get(campaign_id)

    def approve(
        self, campaign_id: str, signers: Sequence[Signer], *, actor: str, through_wave: int | None = None
    ) -> Campaign:
        """Sign the campaign's scope with the release keys; it is approved once their threshold signed.

        The signed fraction covers the planned devices of waves ``0..through_wave`` (default: all).
        Raises :class:`CampaignStateError` unless the campaign is a draft, ``SigningError`` (keys).
        """
        row = self._row(campaign_id)
        if row.state != CampaignState.DRAFT:
            raise CampaignStateError(f"campaign {campaign_id} is {row.state}; only a draft is approved")
        policy = policy_from_dict(row.policy)
        bound = self._scope_bound(campaign_id, policy, through_wave)
        scope = RolloutScope(
            campaign=campaign_id, fraction_ppm=bound, salt=policy.salt, hardware_ids=(row.hardware_id,),
            not_before=row.not_before, not_after=row.not_after,
        )  # fmt: skip
        release = self._releases.by_id(row.release_id)
        outcome = self._sign_scope(release, scope, signers)
        now = self._clock()
        with self._database.transaction() as session:
            stored = self._locked(session, campaign_id)
            stored.scope_ppm = bound
            stored.updated_at = now
            if isinstance(outcome, Published):
                self._act(
                    session,
                    stored,
                    CampaignAction.APPROVE,
                    actor=actor,
                    now=now,
                    reason=f"scope of {bound} ppm signed",
                )
            else:
                stored.reason = (
                    f"scope of {bound} ppm staged: {outcome.signatures} of {outcome.threshold} signatures"
                )
                self._event(session, campaign_id, "ota.campaign.approval-staged", actor, now, scope_ppm=bound)
        publish_committed(self._on_commit)
        return self.get(campaign_id)

    def act(self, campaign_id: str, action: CampaignAction, *, actor: str, reason: str = "") -> Campaign:
        """Start, pause, resume or abort a campaign; raise :class:`CampaignStateError` if illegal."""
        if action in (CampaignAction.APPROVE, CampaignAction.COMPLETE):
            raise CampaignStateError(
                f"{action} is not an operator action here", hint="use approve, or let it complete"
            )
        now = self._clock()
        with self._database.transaction() as session:
            row = self._locked(session, campaign_id)
            if (
                action is CampaignAction.START
                and row.state == CampaignState.APPROVED
                and now >= row.not_after
            ):
                raise CampaignStateError(f"campaign {campaign_id}'s signed window ended at {row.not_after}")
            self._act(session, row, action, actor=actor, now=now, reason=reason or f"{action} by {actor}")
        publish_committed(self._on_commit)
        return self.get(campaign_id)

    def forget_staged_approvals(self, hardware_id: str) -> list[str]:
        """After the release role's staged version is discarded: drafts waiting on it wait no more."""
        with self._database.transaction() as session:
            drafts = session.scalars(
                select(OtaCampaignRow).where(
                    OtaCampaignRow.state == CampaignState.DRAFT,
                    OtaCampaignRow.scope_ppm > 0,
                    OtaCampaignRow.hardware_id == hardware_id,
                )
            ).all()
            for row in drafts:
                row.scope_ppm = 0
                row.reason = "the staged approval was discarded; approve again"
        return [row.id for row in drafts]

    def reconcile(self) -> list[str]:
        """Approve drafts whose staged scope signature has been completed; return their ids."""
        approved = []
        now = self._clock()
        with self._database.transaction() as session:
            drafts = session.scalars(
                select(OtaCampaignRow).where(
                    OtaCampaignRow.state == CampaignState.DRAFT, OtaCampaignRow.scope_ppm > 0
                )
            ).all()
            for row in drafts:
                if self._signed_scope(row) is not None:
                    self._act(
                        session,
                        row,
                        CampaignAction.APPROVE,
                        actor="fleetguard ota sign",
                        now=now,
                        reason=f"scope of {row.scope_ppm} ppm signed",
                    )
                    approved.append(row.id)
        publish_committed(self._on_commit)
        return approved

    def get(self, campaign_id: str) -> Campaign:
        """Return a campaign with its wave counts; raise :class:`CampaignNotFound`."""
        row = self._row(campaign_id)
        with self._database.reading() as session:
            stats = self._stats(session, campaign_id, len(row.policy["waves"]))
        return _campaign(row, stats)

    def campaigns(self) -> list[Campaign]:
        """Return every campaign, newest first (with wave counts)."""
        with self._database.reading() as session:
            rows = session.scalars(select(OtaCampaignRow).order_by(OtaCampaignRow.created_at.desc())).all()
            return [_campaign(row, self._stats(session, row.id, len(row.policy["waves"]))) for row in rows]

    def devices(
        self, campaign_id: str, *, step: DeviceStep | None = None, limit: int = 1000
    ) -> list[DeviceProgress]:
        """Return devices of a campaign (optionally in one step), in wave and bucket order."""
        row = self._row(campaign_id)
        query = select(OtaCampaignDeviceRow).where(OtaCampaignDeviceRow.campaign_id == campaign_id)
        if step is not None:
            query = query.where(OtaCampaignDeviceRow.step == step)
        query = query.order_by(OtaCampaignDeviceRow.wave, OtaCampaignDeviceRow.bucket).limit(
            min(limit, 100_000)
        )
        with self._database.reading() as session:
            return [_progress(r, row.release) for r in session.scalars(query)]

    # -- the device desk (fleetguard.ota.device_api.UpdateDesk) ----------------------------------

    def check_in(self, device_id: str, request: CheckIn) -> CheckInReply:
        """Record what the device runs; offer, withdraw or renew its director metadata; reply."""
        now = self._clock()
        with self._database.reading() as session:
            connection = session.connection()  # Core and prepared statements: this is the hot path
            row = connection.execute(_ENROLMENT, {"device_id": device_id}).first()
            status = connection.execute(_STATUS, {"device_id": device_id}).first()
        found = None if row is None else _Enrolment.from_row(row)
        self._record_status(device_id, request, status, now)
        director = self._repositories.director
        current = director.current(device_id)
        wanted = self._wanted(device_id, request, found, now)
        # A retry offers what the device holds already: only a new version tells it to try again.
        retried = bool(wanted) and found is not None and found.step in _RETRYABLE
        if wanted is not None and current is None and not wanted:
            pass  # nothing was ever served and nothing is wanted: no metadata for the device yet
        elif wanted is not None and (
            current is None or current.targets != tuple(wanted) or current.renewal_due(now) or retried
        ):
            current = director.assign(device_id, wanted)
        elif wanted is None and current is not None and current.renewal_due(now):
            current = director.assign(device_id, current.targets)
        version = 0 if current is None else current.version
        return CheckInReply(update=version != request.director_version, director_version=version)

    def report(self, device_id: str, report: StepReport) -> None:
        """Apply a device's step report; raise :class:`ReportInvalid` (nothing changed) if nonsense."""
        now = self._clock()
        with self._database.transaction() as session:
            pair = session.execute(
                select(OtaCampaignDeviceRow, OtaCampaignRow)
                .join(OtaCampaignRow, OtaCampaignRow.id == OtaCampaignDeviceRow.campaign_id)
                .where(
                    OtaCampaignDeviceRow.device_id == device_id,
                    OtaCampaignDeviceRow.campaign_id == report.campaign,
                )
            ).first()
            if pair is None:
                raise ReportInvalid(f"device {device_id} is not in campaign {report.campaign[:64]!r}")
            device_row, campaign_row = pair
            policy = policy_from_dict(campaign_row.policy)
            before = _progress(device_row, campaign_row.release)
            # A device names the release by its target path until it has verified the image entry.
            target_path = self._releases.by_id(campaign_row.release_id).target_path
            release = campaign_row.release if report.release == target_path else report.release
            after = apply_report(
                before,
                DeviceReport(device_id, report.campaign, release, report.step, report.at, report.detail),
                policy,
                now,
            )
            if after == before:
                return
            _store_progress(device_row, after)
            session.flush()  # the wave counts below must see this report
            if device_outcome(after) is not device_outcome(before):
                self._device_final(session, campaign_row, after, now)
                self._evaluate(session, campaign_row, now)
        publish_committed(self._on_commit)
        if after.step is DeviceStep.COMMITTED:
            # The inventory's firmware version feeds zero trust's posture and the firmware exposure.
            self._inventory.update(
                device_id, DeviceChanges(firmware_version=after.release), actor="ota",
                reason=f"committed in campaign {after.campaign}",
            )  # fmt: skip

    def tick(self) -> list[Evaluation]:
        """Time out silent devices and evaluate every live campaign; return the evaluations."""
        now = self._clock()
        evaluations = []
        with self._database.transaction() as session:
            live = session.scalars(select(OtaCampaignRow).where(OtaCampaignRow.state.in_(list(_LIVE)))).all()
            for row in live:
                policy = policy_from_dict(row.policy)
                silent = session.scalars(
                    select(OtaCampaignDeviceRow).where(
                        OtaCampaignDeviceRow.campaign_id == row.id,
                        OtaCampaignDeviceRow.deadline_at <= now,
                        OtaCampaignDeviceRow.step.in_(list(_IN_FLIGHT)),
                    )
                ).all()
                for device_row, progress in zip(
                    silent, timeouts([_progress(r, row.release) for r in silent], policy, now), strict=True
                ):
                    _store_progress(device_row, progress)
                    self._device_final(session, row, progress, now)
                session.flush()
                evaluations.append(self._evaluate(session, row, now))
        publish_committed(self._on_commit)
        return evaluations

    # -- internals --------------------------------------------------------------------------------

    def _targeted(self, hardware_id: str, target: Target) -> list[str]:
        criteria = DeviceFilter(
            model=hardware_id, device_type=target.device_type, site=target.site, labels=dict(target.labels),
            firmware_version=target.firmware_version,
        )  # fmt: skip
        with self._database.reading() as session:
            busy = set(
                session.scalars(
                    select(OtaCampaignDeviceRow.device_id)
                    .join(OtaCampaignRow, OtaCampaignRow.id == OtaCampaignDeviceRow.campaign_id)
                    .where(OtaCampaignRow.state.in_(list(_UNFINISHED)))
                )
            )
        excluded = target.firmware_version_not
        return [
            device_id
            for device_id, state, firmware in self._inventory.summaries(criteria)
            if state is not State.DECOMMISSIONED and firmware != excluded and device_id not in busy
        ]

    def _scope_bound(self, campaign_id: str, policy: RolloutPolicy, through_wave: int | None) -> int:
        last = len(policy.waves) - 1
        wave = last if through_wave is None else through_wave
        if not 0 <= wave <= last:
            raise PlanInvalid(f"the campaign has waves 0..{last}, not {wave}")
        with self._database.reading() as session:
            bound = session.scalar(
                select(func.max(OtaCampaignDeviceRow.bucket)).where(
                    OtaCampaignDeviceRow.campaign_id == campaign_id, OtaCampaignDeviceRow.wave <= wave
                )
            )
        if bound is None:
            raise PlanInvalid(f"waves 0..{wave} of campaign {campaign_id} hold no device")
        return int(bound) + 1

    def _sign_scope(
        self, release: Release, scope: RolloutScope, signers: Sequence[Signer]
    ) -> Published | Staged:
        def change(targets: Targets) -> None:
            entry = targets.targets.get(release.target_path)
            if entry is None:
                raise CampaignStateError(f"release {release.release} is not in the image repository")
            fields = dict(entry.unrecognized_fields.get("custom", {}).get("fleetguard", {}))
            scopes = [s for s in fields.get("scopes", []) if s.get("campaign") != scope.campaign]
            fields["scopes"] = [*scopes, scope.to_custom()]
            entry.unrecognized_fields["custom"] = {"fleetguard": fields}

        return self._repositories.image.update_targets(hardware_role(release.hardware_id), change, signers)

    def _signed_scope(self, row: OtaCampaignRow) -> RolloutScope | None:
        release = self._releases.by_id(row.release_id)
        entry = self._repositories.image.targets(hardware_role(row.hardware_id)).signed.targets.get(
            release.target_path
        )
        if entry is None:
            return None
        for value in entry.custom.get("fleetguard", {}).get("scopes", []):
            scope = RolloutScope.from_custom(value)
            if scope.campaign == row.id and scope.fraction_ppm >= row.scope_ppm:
                return scope
        return None

    def _wanted(
        self, device_id: str, request: CheckIn, found: _Enrolment | None, now: dt.datetime
    ) -> list[DirectorTarget] | None:
        """Return what the director should list for the device now (None: leave it as it is)."""
        if found is None:
            return []
        if found.step not in _IN_FLIGHT and not self._may_offer(found, now):
            return [] if found.step is DeviceStep.PENDING else None  # "no update": no more queries
        state = self._inventory.states([device_id]).get(device_id)
        if state is not State.ACTIVE or request.hardware_id != found.hardware_id:
            return [] if found.step in (*_WITHDRAWABLE, DeviceStep.PENDING) else None
        if found.step in _IN_FLIGHT:
            return [self._director_target(found, request)]
        if not self._offer(device_id, found.campaign_id, now):
            return [] if found.step is DeviceStep.PENDING else None
        return [self._director_target(found, request)]

    def _may_offer(self, found: _Enrolment, now: dt.datetime) -> bool:
        """Whether an offer could be made now, judged from the rows read (``_offer`` decides, locked)."""
        due = found.step is DeviceStep.PENDING or (
            found.step in _RETRYABLE and found.retry_at is not None and found.retry_at <= now
        )
        return (
            due
            and found.state == CampaignState.RUNNING
            and found.wave < found.open_waves
            and found.not_before <= now < found.not_after
            and self._policy(found.campaign_id, found.version, found.policy).in_window(now)
        )

    def _policy(self, campaign_id: str, version: int, stored: dict[str, Any]) -> RolloutPolicy:
        """Return a campaign's policy, parsed once per stored version of the campaign row."""
        key = (campaign_id, version)
        policy = self._policies.get(key)
        if policy is None:
            if len(self._policies) > _POLICY_CACHE:
                self._policies.clear()
            policy = self._policies[key] = policy_from_dict(stored)
        return policy

    def _offer(self, device_id: str, campaign_id: str, now: dt.datetime) -> bool:
        """Offer the release to a pending or retry-due device if the campaign allows it now."""
        with self._database.transaction() as session:
            campaign = self._locked(session, campaign_id)
            row = session.get(OtaCampaignDeviceRow, (campaign.id, device_id))
            if row is None or campaign.state != CampaignState.RUNNING:
                return False
            snapshot = _snapshot(campaign)
            evaluation = Evaluation(
                Decision.PROCEED,
                snapshot,
                # The signed scope's window: a device refuses to install outside it.
                snapshot.policy.in_window(now) and campaign.not_before <= now < campaign.not_after,
                (),
            )
            progress = _progress(row, campaign.release)
            if progress.wave >= snapshot.open_waves or not evaluation.may_offer:
                return False
            if progress.step is DeviceStep.PENDING:
                offered = offer(progress, evaluation, now)
            else:
                retried = due_retries([progress], evaluation, now)
                if not retried:
                    return False
                offered = retried[0]
            _store_progress(row, offered)
        return True

    def _director_target(self, found: _Enrolment, request: CheckIn) -> DirectorTarget:
        release = self._releases.by_id(found.release_id)
        installed = (
            select(OtaReleaseRow.sha256)
            .where(
                OtaReleaseRow.hardware_id == release.hardware_id,
                OtaReleaseRow.release_counter == request.release_counter,
                OtaReleaseRow.release == request.release,
            )
            .scalar_subquery()
        )
        with self._database.reading() as session:
            delta = session.scalars(
                select(OtaDeltaRow.target_path).where(
                    OtaDeltaRow.hardware_id == release.hardware_id, OtaDeltaRow.to_sha256 == release.sha256,
                    OtaDeltaRow.from_sha256 == installed,
                )
            ).first()  # fmt: skip
        return DirectorTarget(
            path=release.target_path, length=release.length, sha256=release.sha256,
            hardware_id=release.hardware_id, release_counter=release.release_counter,
            campaign=found.campaign_id, delta_path=delta,
        )  # fmt: skip

    def _record_status(self, device_id: str, request: CheckIn, status: Any, now: dt.datetime) -> None:
        unchanged = (
            status is not None
            and (status.hardware_id, status.release, status.release_counter)
            == (request.hardware_id, request.release, request.release_counter)
            and now - status.reported_at < _STATUS_REFRESH
        )
        if unchanged:
            return
        with self._database.transaction() as session:
            row = session.get(OtaDeviceStatusRow, device_id)
            if row is None:
                session.add(
                    OtaDeviceStatusRow(
                        device_id=device_id,
                        hardware_id=request.hardware_id,
                        release=request.release,
                        release_counter=request.release_counter,
                        reported_at=now,
                        committed_at=None,
                    )
                )
            else:
                row.hardware_id, row.release, row.release_counter, row.reported_at = (
                    request.hardware_id,
                    request.release,
                    request.release_counter,
                    now,
                )

    def _device_final(
        self, session: Session, campaign: OtaCampaignRow, progress: DeviceProgress, now: dt.datetime
    ) -> None:
        outcome = device_outcome(progress)
        if outcome is DeviceOutcome.COMMITTED:
            release = self._releases.by_id(campaign.release_id)
            status = session.get(OtaDeviceStatusRow, progress.device_id)
            if status is None:
                session.add(
                    OtaDeviceStatusRow(
                        device_id=progress.device_id,
                        hardware_id=release.hardware_id,
                        release=release.release,
                        release_counter=release.release_counter,
                        reported_at=now,
                        committed_at=now,
                    )
                )
            else:
                status.release, status.release_counter, status.reported_at, status.committed_at = (
                    release.release,
                    release.release_counter,
                    now,
                    now,
                )
            self._event(
                session,
                f"device:{progress.device_id}",
                "ota.device.committed",
                "device",
                now,
                campaign=campaign.id,
                release=campaign.release,
            )
        elif outcome is DeviceOutcome.FAILED:
            self._event(
                session,
                f"device:{progress.device_id}",
                f"ota.device.{progress.step}",
                "device",
                now,
                campaign=campaign.id,
                release=campaign.release,
                detail=progress.detail[:200],
            )

    def _evaluate(self, session: Session, row: OtaCampaignRow, now: dt.datetime) -> Evaluation:
        snapshot = _snapshot(row)
        stats = self._stats(session, row.id, len(snapshot.policy.waves))
        evaluation = evaluate(snapshot, stats, now)
        if evaluation.campaign != snapshot:
            _store_snapshot(row, evaluation.campaign, now)
            if evaluation.campaign.state != snapshot.state or evaluation.decision is Decision.CASCADE:
                self._event(
                    session,
                    row.id,
                    f"ota.campaign.{evaluation.decision}",
                    "fleetguard ota",
                    now,
                    reason="; ".join(evaluation.reasons)[:500],
                    state=str(evaluation.campaign.state),
                )
        return evaluation

    def _stats(self, session: Session, campaign_id: str, waves: int) -> tuple[WaveStats, ...]:
        rows = session.execute(
            select(
                OtaCampaignDeviceRow.wave,
                OtaCampaignDeviceRow.step,
                OtaCampaignDeviceRow.retry_at.is_(None),
                func.count(),
            )
            .where(OtaCampaignDeviceRow.campaign_id == campaign_id)
            .group_by(
                OtaCampaignDeviceRow.wave, OtaCampaignDeviceRow.step, OtaCampaignDeviceRow.retry_at.is_(None)
            )
        ).all()
        counts = [dict.fromkeys(DeviceOutcome, 0) for _ in range(waves)]
        for wave, step, final, count in rows:
            probe = DeviceProgress(
                "c",
                "d",
                0,
                0,
                "r",
                DeviceStep(step),
                1,
                dt.datetime.min.replace(tzinfo=dt.UTC),
                retry_at=None if final else dt.datetime.max.replace(tzinfo=dt.UTC),
            )
            counts[wave][device_outcome(probe)] += count
        return tuple(
            WaveStats(
                wave=i,
                total=sum(c.values()),
                committed=c[DeviceOutcome.COMMITTED],
                failed=c[DeviceOutcome.FAILED],
                retrying=c[DeviceOutcome.RETRYING],
            )
            for i, c in enumerate(counts)
        )

    def _act(
        self,
        session: Session,
        row: OtaCampaignRow,
        action: CampaignAction,
        *,
        actor: str,
        now: dt.datetime,
        reason: str,
    ) -> None:
        after = apply_action(_snapshot(row), action, now, reason)
        _store_snapshot(row, after, now)
        self._event(
            session, row.id, f"ota.campaign.{action}", actor, now, reason=reason[:500], state=str(after.state)
        )
        if action is CampaignAction.ABORT:
            session.execute(
                update(OtaCampaignDeviceRow)
                .where(
                    OtaCampaignDeviceRow.campaign_id == row.id,
                    OtaCampaignDeviceRow.step == DeviceStep.PENDING,
                )
                .values(detail="campaign aborted")
            )

    def _row(self, campaign_id: str) -> OtaCampaignRow:
        with self._database.reading() as session:
            row = session.get(OtaCampaignRow, campaign_id)
        if row is None:
            raise CampaignNotFound(f"no campaign {campaign_id[:80]!r}")
        return row

    def _locked(self, session: Session, campaign_id: str) -> OtaCampaignRow:
        row = session.get(OtaCampaignRow, campaign_id, with_for_update=True)
        if row is None:
            raise CampaignNotFound(f"no campaign {campaign_id[:80]!r}")
        return row

    def _event(
        self, session: Session, subject: str, action: str, actor: str, now: dt.datetime, **data: str | int
    ) -> None:
        name = subject if ":" in subject else f"campaign:{subject}"
        self._log.append(
            session, NewEvent(actor=actor, subject=name, action=action, data=dict(data)), now=now
        )


def _snapshot(row: OtaCampaignRow) -> CampaignSnapshot:
    return CampaignSnapshot(
        id=row.id, state=CampaignState(row.state), policy=policy_from_dict(row.policy),
        open_waves=row.open_waves, wave_opened_at=row.wave_opened_at, success_since=row.success_since,
        reason=row.reason,
    )  # fmt: skip


def _store_snapshot(row: OtaCampaignRow, snapshot: CampaignSnapshot, now: dt.datetime) -> None:
    row.state = snapshot.state
    row.open_waves = snapshot.open_waves
    row.wave_opened_at = snapshot.wave_opened_at
    row.success_since = snapshot.success_since
    row.reason = snapshot.reason
    row.updated_at = now


def _progress(row: OtaCampaignDeviceRow, release: str) -> DeviceProgress:
    return DeviceProgress(
        campaign=row.campaign_id, device_id=row.device_id, wave=row.wave, bucket=row.bucket,
        release=release, step=DeviceStep(row.step), attempt=row.attempt, step_since=row.step_since,
        deadline_at=row.deadline_at, retry_at=row.retry_at, detail=row.detail,
    )  # fmt: skip


def _store_progress(row: OtaCampaignDeviceRow, progress: DeviceProgress) -> None:
    row.step = progress.step
    row.attempt = progress.attempt
    row.step_since = progress.step_since
    row.deadline_at = progress.deadline_at
    row.retry_at = progress.retry_at
    row.detail = progress.detail[:1024]


def _campaign(row: OtaCampaignRow, stats: Sequence[WaveStats]) -> Campaign:
    names = [wave["name"] for wave in row.policy["waves"]]
    return Campaign(
        id=row.id, hardware_id=row.hardware_id, release=row.release, state=CampaignState(row.state),
        devices=row.devices, scope_ppm=row.scope_ppm, not_before=row.not_before, not_after=row.not_after,
        reason=row.reason, actor=row.actor, created_at=row.created_at, updated_at=row.updated_at,
        waves=tuple(WaveView(i, names[i], i < row.open_waves, s) for i, s in enumerate(stats)),
    )  # fmt: skip
