"""Rollout campaigns as a pure core: waves, thresholds, windows, phase timeouts and retries.

Theory of operation
-------------------
A *campaign* offers one release to a targeted set of devices in *waves*, canary first (Eclipse
hawkBit's rollout groups; Mender's phased deployments). Nothing here does I/O: the service keeps
every value below in its database and calls these functions with ``now``; each function returns the
new values to store, or raises before anything changed (all values are frozen).

1. **Campaign state** follows :data:`_TRANSITIONS` through :func:`transition`::

       draft --approve--> approved --start--> running --complete--> completed
                                               |  ^
                                          pause|  |resume
                                               v  |
                                              paused
       draft, approved, running, paused --abort--> aborted

   Approval before start is mandatory: ``start`` is legal only from ``approved``.
   :func:`apply_action` applies an action to a :class:`CampaignSnapshot` and keeps the wave clocks.

2. **Planning.** :func:`plan_waves` sorts the targeted devices by their bucket
   (:func:`fleetguard.ota.scope.device_bucket` of the campaign salt and the device id; ties by id)
   and cuts that order at each wave's **cumulative** share of the targeted devices
   (:attr:`WaveSpec.cumulative_ppm`, strictly increasing, the last one ``PPM``), rounding up so
   that the canary is never empty. A cut never splits a bucket: devices that share the bucket at a
   boundary all go to the earlier wave. Hence each wave has a *scope bound*, the largest bucket in
   waves ``0..k`` plus one, and a signed :class:`~fleetguard.ota.scope.RolloutScope` with
   ``fraction_ppm >= bound`` (and the same salt) lets exactly the planned devices of waves ``0..k``
   install; :func:`require_scope_covers` checks this at approval. The director offers only to
   planned devices, so untargeted devices under the bound get nothing; the scope is the ceiling
   that the offline keys approved.

3. **Device progress.** Each planned device has a :class:`DeviceProgress`. The server offers
   (:func:`offer`, ``pending -> offered``); the device reports the steps of :data:`_REPORTED`:
   ``offered -> downloading -> downloaded -> installed -> rebooted -> healthy -> committed``, or a
   failure. A device counts as updated only in ``committed``, reachable only from ``healthy``,
   reachable only from ``rebooted``. :func:`apply_report` raises :class:`ReportInvalid` for an
   unknown or server-only step, a step backwards or skipped, any step after a terminal or failed
   one, another device, campaign or release, or a timestamp off the server clock by more than
   :data:`MAX_CLOCK_SKEW`; repeating the current step is idempotent.

4. **Phases and timeouts.** Steps belong to phases (:class:`Phase`: offer, download, install,
   activate = reboot + health check + commit); entering a phase sets ``deadline_at`` from
   :class:`PhaseTimeouts`. A device still in that phase at ``deadline_at`` has gone silent:
   :func:`timeouts` moves it to ``timed_out``.

5. **Retries.** ``failed`` and ``timed_out`` are retried with exponential backoff and a cap, with
   a jitter derived from the device id and attempt (:func:`backoff`; deterministic, so tests are
   exact and devices still spread out). While a retry remains, ``retry_at`` says when
   :func:`due_retries` offers again; when none remains (``retry_at`` is None) the failure is final.
   ``rolled_back`` is final at once: the image booted and failed its health check, and offering the
   same image again would fail the same way.

6. **Evaluation.** :func:`evaluate` is called on every device report and on a timer, with the
   counts of each wave (:class:`WaveStats`; :func:`wave_stats` computes them from progress values,
   or the service counts them in SQL by :func:`device_outcome`). In ``running`` it decides, in
   this order: **abort** when an open wave's final failures reach its abort threshold; **pause**
   when they reach its error threshold; **complete** when every wave is open and every device is
   final (committed or failed for good); for the newest open wave, **cascade** (open the next wave)
   once its committed share reaches the success threshold and has soaked for ``soak``; **pause**
   when it settled (every device final) below its success threshold, or when its ``deadline``
   passed without success; otherwise **proceed**. Outside every maintenance window the decision
   still stands but ``may_offer`` is False: no new offers or retries, in-flight devices continue.
   In ``paused`` only the abort threshold is checked. A breach is therefore acted on in the same
   call that first sees it: at most one evaluation interval after it happened. Thresholds compare
   integers: ``count * PPM >= threshold_ppm * total``, so reaching a threshold exactly counts.

What counts as a failure for thresholds: only *final* failures (``rolled_back``; ``failed`` or
``timed_out`` with no retry left). A failure waiting for its retry does not count; set
``max_retries=0`` for every failure to count at once.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol, assert_never

from fleetguard.errors import InvalidInput
from fleetguard.ota.errors import CampaignStateError, OtaError, ReportInvalid
from fleetguard.ota.scope import PPM, RolloutScope, device_bucket

__all__ = [
    "MAX_CLOCK_SKEW",
    "MAX_DEVICES",
    "MAX_WAVES",
    "Assignment",
    "CampaignAction",
    "CampaignSnapshot",
    "CampaignState",
    "Decision",
    "DeviceOutcome",
    "DeviceProgress",
    "DeviceReport",
    "DeviceStep",
    "Evaluation",
    "MaintenanceWindow",
    "Phase",
    "PhaseTimeouts",
    "Plan",
    "PlanInvalid",
    "PlannedWave",
    "RetryPolicy",
    "RolloutPolicy",
    "Target",
    "TargetableDevice",
    "WaveSpec",
    "WaveStats",
    "allowed_actions",
    "apply_action",
    "apply_report",
    "backoff",
    "device_outcome",
    "due_retries",
    "evaluate",
    "offer",
    "pending_progress",
    "plan_waves",
    "require_scope_covers",
    "timeouts",
    "transition",
    "wave_stats",
]

MAX_WAVES = 32
MAX_DEVICES = 2_000_000
MAX_WINDOWS = 32
MAX_RETRIES = 20
MAX_DETAIL = 1024
MAX_CLOCK_SKEW = dt.timedelta(minutes=10)
"""A report's own timestamp may differ this much from the server clock. A device whose clock is
further off could not have checked TUF metadata expiry (TUF spec 5.3.10), so its report is nonsense."""
_MAX_PHASE = dt.timedelta(days=30)
_MAX_WAVE_TIME = dt.timedelta(days=90)
_MAX_LABELS = 64
# Same syntax as the signed scope's campaign name and salt (fleetguard.ota.scope).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_SALT = re.compile(r"[0-9a-f]{16,64}")


class PlanInvalid(InvalidInput, OtaError):
    """A rollout policy, plan, window or campaign snapshot is malformed or inconsistent."""

    code = "ota-plan-invalid"


def _require_aware(value: dt.datetime, what: str = "now") -> None:
    if value.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware (UTC)")


def _ppm_text(ppm: int) -> str:
    return f"{ppm / 10_000:g}%"


# --- campaign state ------------------------------------------------------------------------------


class CampaignState(enum.StrEnum):
    """Where a campaign is in its life."""

    DRAFT = "draft"
    APPROVED = "approved"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"


class CampaignAction(enum.StrEnum):
    """What an operator (or :func:`evaluate`) does to a campaign."""

    APPROVE = "approve"
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    COMPLETE = "complete"


_TRANSITIONS: dict[tuple[CampaignState, CampaignAction], CampaignState] = {
    (CampaignState.DRAFT, CampaignAction.APPROVE): CampaignState.APPROVED,
    (CampaignState.APPROVED, CampaignAction.START): CampaignState.RUNNING,
    (CampaignState.RUNNING, CampaignAction.PAUSE): CampaignState.PAUSED,
    (CampaignState.PAUSED, CampaignAction.RESUME): CampaignState.RUNNING,
    (CampaignState.RUNNING, CampaignAction.COMPLETE): CampaignState.COMPLETED,
    (CampaignState.DRAFT, CampaignAction.ABORT): CampaignState.ABORTED,
    (CampaignState.APPROVED, CampaignAction.ABORT): CampaignState.ABORTED,
    (CampaignState.RUNNING, CampaignAction.ABORT): CampaignState.ABORTED,
    (CampaignState.PAUSED, CampaignAction.ABORT): CampaignState.ABORTED,
}

_ACTION_TARGET = {action: target for (_, action), target in _TRANSITIONS.items()}


def allowed_actions(state: CampaignState) -> list[CampaignAction]:
    """Return the actions the table allows from ``state``, in table order."""
    return [action for (source, action) in _TRANSITIONS if source is state]


def transition(state: CampaignState, action: CampaignAction) -> CampaignState:
    """Return the state ``action`` leads to from ``state``; raise :class:`CampaignStateError` if illegal."""
    target = _TRANSITIONS.get((state, action))
    if target is None:
        allowed = ", ".join(allowed_actions(state)) or "nothing (it is final)"
        raise CampaignStateError(
            f"campaign cannot go from {state} to {_ACTION_TARGET[action]} ({action})",
            hint=f"from {state} it may: {allowed}",
        )
    return target


# --- maintenance windows -------------------------------------------------------------------------

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(
    r"\s*(?P<days>[A-Za-z,-]+)\s+(?P<sh>[0-9]{2}):(?P<sm>[0-9]{2})-(?P<eh>[0-9]{2}):(?P<em>[0-9]{2})(?:\s+UTC)?\s*"
)


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """A weekly window in UTC, such as ``Mon-Fri 01:00-05:00 UTC``.

    ``days`` are ``datetime.weekday()`` numbers (0 = Monday) on which the window *starts*;
    ``start_minute`` is in ``0..1439`` and ``end_minute`` in ``1..1440``. When the end is not after
    the start, the window runs across midnight into the next day (``Fri 22:00-02:00`` ends Saturday).
    """

    days: tuple[int, ...]
    start_minute: int
    end_minute: int

    def __post_init__(self) -> None:
        if not self.days or self.days != tuple(sorted(set(self.days))) or not set(self.days) <= set(range(7)):
            raise PlanInvalid("window days must be distinct weekday numbers 0..6 in ascending order")
        if not 0 <= self.start_minute < 1440 or not 0 < self.end_minute <= 1440:
            raise PlanInvalid("window start must be in 00:00..23:59 and end in 00:01..24:00")
        if self.start_minute == self.end_minute:
            raise PlanInvalid("window start and end are the same time; use 00:00-24:00 for all day")

    @classmethod
    def parse(cls, text: str) -> MaintenanceWindow:
        """Parse ``'Mon-Fri 01:00-05:00 UTC'`` (days: names, ranges, lists, ``daily``; UTC only).

        Raises :class:`PlanInvalid` saying what is wrong.
        """
        match = _WINDOW.fullmatch(text[:80])
        if match is None or len(text) > 80:
            raise PlanInvalid(f"window {text[:80]!r} is not like 'Mon-Fri 01:00-05:00 UTC'")
        start = _minute(match["sh"], match["sm"], allow_24=False)
        end = _minute(match["eh"], match["em"], allow_24=True) or 1440
        return cls(days=_parse_days(match["days"]), start_minute=start, end_minute=end)

    def __str__(self) -> str:
        return f"{_render_days(self.days)} {_clock(self.start_minute)}-{_clock(self.end_minute)} UTC"

    def contains(self, now: dt.datetime) -> bool:
        """Whether ``now`` falls inside the window (start inclusive, end exclusive)."""
        _require_aware(now)
        utc = now.astimezone(dt.UTC)
        second = utc.hour * 3600 + utc.minute * 60 + utc.second
        start, end, day = self.start_minute * 60, self.end_minute * 60, utc.weekday()
        if end > start:
            return day in self.days and start <= second < end
        return (day in self.days and second >= start) or ((day - 1) % 7 in self.days and second < end)


def _minute(hours: str, minutes: str, *, allow_24: bool) -> int:
    value = int(hours) * 60 + int(minutes)
    if int(minutes) > 59 or value > (1440 if allow_24 else 1439):
        raise PlanInvalid(f"{hours}:{minutes} is not a time of day")
    return value


def _parse_days(text: str) -> tuple[int, ...]:
    if text.lower() == "daily":
        return tuple(range(7))
    days: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.partition("-")
        start = _day(first)
        stop = _day(last) if dash else start
        days.update((start + offset) % 7 for offset in range((stop - start) % 7 + 1))
    return tuple(sorted(days))


def _day(name: str) -> int:
    try:
        return _DAYS.index(name.lower())
    except ValueError:
        raise PlanInvalid(f"{name[:20]!r} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)") from None


def _render_days(days: tuple[int, ...]) -> str:
    runs: list[list[int]] = []
    for day in days:
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    names = [_DAYS[run[0]].title() + ("" if len(run) == 1 else "-" + _DAYS[run[-1]].title()) for run in runs]
    return ",".join(names)


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


# --- policy --------------------------------------------------------------------------------------


class Phase(enum.StrEnum):
    """A part of an update with its own timeout."""

    OFFER = "offer"
    DOWNLOAD = "download"
    INSTALL = "install"
    ACTIVATE = "activate"
    """Reboot into the new image, health check, commit."""


def _require_duration(value: dt.timedelta, what: str, limit: dt.timedelta) -> None:
    if not dt.timedelta(0) < value <= limit:
        raise PlanInvalid(f"{what} must be more than 0 and at most {limit}")


@dataclass(frozen=True, slots=True)
class PhaseTimeouts:
    """How long a device may stay in each phase before it counts as silent (timed out)."""

    offer: dt.timedelta = dt.timedelta(days=1)
    download: dt.timedelta = dt.timedelta(hours=2)
    install: dt.timedelta = dt.timedelta(minutes=30)
    activate: dt.timedelta = dt.timedelta(minutes=15)

    def __post_init__(self) -> None:
        for phase in Phase:
            _require_duration(self.of(phase), f"the {phase} timeout", _MAX_PHASE)

    def of(self, phase: Phase) -> dt.timedelta:
        """Return the timeout of ``phase``."""
        match phase:
            case Phase.OFFER:
                return self.offer
            case Phase.DOWNLOAD:
                return self.download
            case Phase.INSTALL:
                return self.install
            case Phase.ACTIVATE:
                return self.activate
            case _:
                assert_never(phase)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of ``failed`` and ``timed_out`` devices: exponential backoff from ``base`` up to ``cap``.

    ``jitter_ppm`` is the largest share taken off a delay (deterministically, per device and attempt).
    """

    max_retries: int = 3
    base: dt.timedelta = dt.timedelta(minutes=5)
    cap: dt.timedelta = dt.timedelta(hours=4)
    jitter_ppm: int = 500_000

    def __post_init__(self) -> None:
        if not 0 <= self.max_retries <= MAX_RETRIES:
            raise PlanInvalid(f"max_retries must be in 0..{MAX_RETRIES}")
        _require_duration(self.base, "the retry base delay", _MAX_PHASE)
        _require_duration(self.cap, "the retry cap", _MAX_PHASE)
        if self.cap < self.base:
            raise PlanInvalid("the retry cap is shorter than the base delay")
        if not 0 <= self.jitter_ppm < PPM:
            raise PlanInvalid(f"jitter must be in 0..{PPM - 1} ppm")


def backoff(policy: RetryPolicy, device_id: str, attempt: int) -> dt.timedelta:
    """Return the delay before retrying after ``attempt`` (1 = the first offer) failed.

    ``min(cap, base * 2**(attempt-1))``, less a jitter in ``[0, jitter_ppm]`` ppm of it that is
    derived from SHA-256 of the device id and attempt, so that devices that failed together do not
    come back together, and the same inputs always give the same delay.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    unit = dt.timedelta(microseconds=1)
    delay = min(policy.cap // unit, (policy.base // unit) << min(attempt - 1, 62))
    digest = hashlib.sha256(f"{device_id}\x00{attempt}".encode()).digest()
    jitter = int.from_bytes(digest[:8], "big") % (policy.jitter_ppm + 1)
    return unit * (delay - delay * jitter // PPM)


@dataclass(frozen=True, slots=True)
class WaveSpec:
    """One wave: its cumulative size and the thresholds that decide what follows it.

    ``cumulative_ppm`` is the share of the targeted devices in this wave *and all before it*.
    Thresholds are shares of this wave's devices: ``success_threshold_ppm`` committed to cascade
    (after ``soak``), ``error_threshold_ppm`` failed for good to pause, ``abort_threshold_ppm``
    failed for good to abort. ``deadline`` is the longest the wave may run without reaching success
    before the campaign pauses (None: no deadline).
    """

    name: str
    cumulative_ppm: int
    success_threshold_ppm: int = 950_000
    error_threshold_ppm: int = 50_000
    abort_threshold_ppm: int | None = None
    soak: dt.timedelta = dt.timedelta(0)
    deadline: dt.timedelta | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise PlanInvalid(f"wave name {self.name[:80]!r} is not a valid name")
        for what, ppm in (
            ("size", self.cumulative_ppm),
            ("success threshold", self.success_threshold_ppm),
            ("error threshold", self.error_threshold_ppm),
        ):
            if not 0 < ppm <= PPM:
                raise PlanInvalid(f"wave {self.name}: {what} {ppm} ppm is outside 1..{PPM}")
        abort = self.abort_threshold_ppm
        if abort is not None and not self.error_threshold_ppm <= abort <= PPM:
            raise PlanInvalid(f"wave {self.name}: the abort threshold must be in error threshold..{PPM}")
        if not dt.timedelta(0) <= self.soak <= _MAX_WAVE_TIME:
            raise PlanInvalid(f"wave {self.name}: soak must be in 0..{_MAX_WAVE_TIME}")
        if self.deadline is not None:
            _require_duration(self.deadline, f"wave {self.name}: the deadline", _MAX_WAVE_TIME)


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """Everything that decides how a campaign proceeds; stored with the campaign.

    ``waves`` run canary first; ``windows`` empty means offers are allowed at any time.
    """

    salt: str
    waves: tuple[WaveSpec, ...]
    windows: tuple[MaintenanceWindow, ...] = ()
    timeouts: PhaseTimeouts = field(default_factory=PhaseTimeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not _SALT.fullmatch(self.salt):
            raise PlanInvalid("the salt must be 16 to 64 lower-case hex digits (as in the signed scope)")
        if not 0 < len(self.waves) <= MAX_WAVES:
            raise PlanInvalid(f"a rollout has 1 to {MAX_WAVES} waves, not {len(self.waves)}")
        if len(self.windows) > MAX_WINDOWS:
            raise PlanInvalid(f"at most {MAX_WINDOWS} maintenance windows")
        if len({wave.name for wave in self.waves}) != len(self.waves):
            raise PlanInvalid("wave names must be distinct")
        sizes = [wave.cumulative_ppm for wave in self.waves]
        if any(later <= earlier for earlier, later in itertools.pairwise(sizes)):
            raise PlanInvalid("wave sizes are cumulative and must increase strictly")
        if sizes[-1] != PPM:
            raise PlanInvalid(f"the last wave must reach {PPM} ppm (every targeted device)")

    def in_window(self, now: dt.datetime) -> bool:
        """Whether new offers are allowed at ``now`` (inside a window, or no windows at all)."""
        return not self.windows or any(window.contains(now) for window in self.windows)


# --- targeting -----------------------------------------------------------------------------------


class TargetableDevice(Protocol):
    """What targeting reads of a device (``fleetguard.inventory.model.Device`` has it)."""

    @property
    def device_type(self) -> str | None: ...
    @property
    def site(self) -> str | None: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def firmware_version(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Target:
    """A query for the devices a campaign targets; every criterion given must hold.

    ``firmware_version_not`` leaves out devices already on a version (usually the release's own).
    A target with no criterion at all is refused: the whole fleet is named explicitly by type.
    """

    device_type: str | None = None
    site: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    firmware_version: str | None = None
    firmware_version_not: str | None = None

    def __post_init__(self) -> None:
        values = (self.device_type, self.site, self.firmware_version, self.firmware_version_not)
        if all(value is None for value in values) and not self.labels:
            raise PlanInvalid("a target needs at least one criterion (type, site, label or version)")
        if any(value == "" for value in values):
            raise PlanInvalid("a target criterion must not be empty (leave it out instead)")
        if len(self.labels) > _MAX_LABELS:
            raise PlanInvalid(f"a target names at most {_MAX_LABELS} labels")

    def matches(self, device: TargetableDevice) -> bool:
        """Whether ``device`` is targeted."""
        return (
            _same(self.device_type, device.device_type)
            and _same(self.site, device.site)
            and _same(self.firmware_version, device.firmware_version)
            and (self.firmware_version_not is None or device.firmware_version != self.firmware_version_not)
            and all(device.labels.get(key) == value for key, value in self.labels.items())
        )


def _same(wanted: str | None, actual: str | None) -> bool:
    return wanted is None or wanted == actual


# --- planning ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assignment:
    """One targeted device's place in the plan."""

    device_id: str
    wave: int
    bucket: int


@dataclass(frozen=True, slots=True)
class PlannedWave:
    """A wave of a plan: ``Plan.assignments[start:end]``, and the scope fraction that covers it.

    ``scope_bound_ppm`` is the largest bucket in this wave and every earlier one, plus one: a signed
    scope with ``fraction_ppm >= scope_bound_ppm`` lets the devices of waves ``0..index`` install,
    and no planned device of a later wave.
    """

    index: int
    name: str
    start: int
    end: int
    scope_bound_ppm: int

    @property
    def size(self) -> int:
        """How many devices are in this wave."""
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Plan:
    """Targeted devices in bucket order (ties by id), cut into waves.

    ``device_ids[i]`` has bucket ``buckets[i]``; wave ``k`` is ``device_ids[waves[k].start :
    waves[k].end]``. Parallel tuples rather than one object per device keep a 100,000-device plan
    cheap to build; :meth:`assignments` gives one row per device to persist.
    """

    salt: str
    device_ids: tuple[str, ...]
    buckets: tuple[int, ...]
    waves: tuple[PlannedWave, ...]

    def assignments(self) -> Iterator[Assignment]:
        """Yield one :class:`Assignment` per device, in plan order."""
        for wave in self.waves:
            for offset in range(wave.start, wave.end):
                yield Assignment(self.device_ids[offset], wave.index, self.buckets[offset])


def plan_waves(device_ids: Sequence[str], policy: RolloutPolicy) -> Plan:
    """Return the plan of ``policy``'s waves over ``device_ids`` (the targeted devices).

    Raises :class:`PlanInvalid` when there is no device, too many, or a duplicate id.
    """
    _require_targets(device_ids)
    # Sort by id, then (stable) by bucket: ties stay in id order, and sorting ints by key is
    # cheaper than comparing (bucket, id) tuples.
    by_id = sorted(device_ids)
    by_id_buckets = list(map(partial(device_bucket, policy.salt), by_id))
    order = sorted(range(len(by_id)), key=by_id_buckets.__getitem__)
    buckets = tuple(by_id_buckets[i] for i in order)
    ids = tuple(by_id[i] for i in order)
    waves, start = [], 0
    for index, (spec, end) in enumerate(zip(policy.waves, _wave_ends(buckets, policy.waves), strict=True)):
        waves.append(PlannedWave(index, spec.name, start, end, buckets[end - 1] + 1))
        start = end
    return Plan(salt=policy.salt, device_ids=ids, buckets=buckets, waves=tuple(waves))


def _require_targets(device_ids: Sequence[str]) -> None:
    if not device_ids:
        raise PlanInvalid("no device is targeted", hint="check the campaign's target query")
    if len(device_ids) > MAX_DEVICES:
        raise PlanInvalid(f"{len(device_ids)} devices targeted; at most {MAX_DEVICES} per campaign")
    if len(set(device_ids)) != len(device_ids):
        raise PlanInvalid("a device is targeted twice")


def _wave_ends(buckets: Sequence[int], waves: Sequence[WaveSpec]) -> list[int]:
    """Return each wave's end offset: its cumulative share, rounded up, never splitting a bucket."""
    total, end, ends = len(buckets), 0, []
    for wave in waves:
        end = max(end, -(-total * wave.cumulative_ppm // PPM))
        while 0 < end < total and buckets[end] == buckets[end - 1]:
            end += 1
        ends.append(end)
    return ends


def require_scope_covers(plan: Plan, scope: RolloutScope, through_wave: int) -> None:
    """Raise :class:`PlanInvalid` unless ``scope`` lets waves ``0..through_wave`` of ``plan`` install."""
    if not 0 <= through_wave < len(plan.waves):
        raise PlanInvalid(f"the plan has no wave {through_wave}")
    if scope.salt != plan.salt:
        raise PlanInvalid(f"scope of campaign {scope.campaign} has another salt than the plan")
    bound = plan.waves[through_wave].scope_bound_ppm
    if scope.fraction_ppm < bound:
        raise PlanInvalid(
            f"scope of campaign {scope.campaign} covers {scope.fraction_ppm} ppm; waves "
            f"0..{through_wave} need {bound} ppm",
            hint="sign a scope with a larger fraction",
        )


# --- device progress -----------------------------------------------------------------------------


class DeviceStep(enum.StrEnum):
    """Where one device is in the campaign."""

    PENDING = "pending"
    OFFERED = "offered"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLED = "installed"
    REBOOTED = "rebooted"
    HEALTHY = "healthy"
    COMMITTED = "committed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    TIMED_OUT = "timed_out"


_SUCCESS_PATH = (
    DeviceStep.OFFERED,
    DeviceStep.DOWNLOADING,
    DeviceStep.DOWNLOADED,
    DeviceStep.INSTALLED,
    DeviceStep.REBOOTED,
    DeviceStep.HEALTHY,
    DeviceStep.COMMITTED,
)

_REPORTED: dict[DeviceStep, frozenset[DeviceStep]] = {
    DeviceStep.OFFERED: frozenset({DeviceStep.DOWNLOADING, DeviceStep.FAILED}),
    DeviceStep.DOWNLOADING: frozenset({DeviceStep.DOWNLOADED, DeviceStep.FAILED}),
    DeviceStep.DOWNLOADED: frozenset({DeviceStep.INSTALLED, DeviceStep.FAILED}),
    # A boot of the new image that fails falls back to the old slot before the agent can report.
    DeviceStep.INSTALLED: frozenset({DeviceStep.REBOOTED, DeviceStep.FAILED, DeviceStep.ROLLED_BACK}),
    DeviceStep.REBOOTED: frozenset({DeviceStep.HEALTHY, DeviceStep.ROLLED_BACK}),
    DeviceStep.HEALTHY: frozenset({DeviceStep.COMMITTED, DeviceStep.ROLLED_BACK}),
}
"""Steps a device may report from each step; steps not listed accept no report at all."""

_SERVER_STEPS = frozenset({DeviceStep.PENDING, DeviceStep.OFFERED, DeviceStep.TIMED_OUT})
_RETRYABLE = frozenset({DeviceStep.FAILED, DeviceStep.TIMED_OUT})


def _phase(step: DeviceStep) -> Phase | None:
    match step:
        case DeviceStep.OFFERED:
            return Phase.OFFER
        case DeviceStep.DOWNLOADING:
            return Phase.DOWNLOAD
        case DeviceStep.DOWNLOADED:
            return Phase.INSTALL
        case DeviceStep.INSTALLED | DeviceStep.REBOOTED | DeviceStep.HEALTHY:
            return Phase.ACTIVATE
        case (
            DeviceStep.PENDING
            | DeviceStep.COMMITTED
            | DeviceStep.FAILED
            | DeviceStep.ROLLED_BACK
            | DeviceStep.TIMED_OUT
        ):
            return None
        case _:
            assert_never(step)


@dataclass(frozen=True, slots=True)
class DeviceProgress:
    """One device's progress in one campaign; every field is a column to persist.

    ``attempt`` counts offers (0 while pending). ``deadline_at`` is set while the device is in a
    phase with a timeout; ``retry_at`` while a failure waits for its retry (None after a failure:
    final). ``detail`` is the last thing the device or the server said about it.
    """

    campaign: str
    device_id: str
    wave: int
    bucket: int
    release: str
    step: DeviceStep
    attempt: int
    step_since: dt.datetime
    deadline_at: dt.datetime | None = None
    retry_at: dt.datetime | None = None
    detail: str = ""


def pending_progress(plan: Plan, *, campaign: str, release: str, now: dt.datetime) -> list[DeviceProgress]:
    """Return the initial (pending) progress of every planned device, in plan order."""
    _require_aware(now)
    if not _NAME.fullmatch(campaign) or not release or len(release) > 128:
        raise PlanInvalid("campaign must be a valid name and release a non-empty version (<= 128)")
    return [
        DeviceProgress(campaign, a.device_id, a.wave, a.bucket, release, DeviceStep.PENDING, 0, now)
        for a in plan.assignments()
    ]


@dataclass(frozen=True, slots=True)
class DeviceReport:
    """A device's report, as received: ``step`` is the raw string that :func:`apply_report` checks."""

    device_id: str
    campaign: str
    release: str
    step: str
    at: dt.datetime
    detail: str = ""


def apply_report(
    progress: DeviceProgress, report: DeviceReport, policy: RolloutPolicy, now: dt.datetime
) -> DeviceProgress:
    """Return ``progress`` after ``report``; repeating the current step returns it unchanged.

    Raises :class:`ReportInvalid` (and changes nothing) for another device, campaign or release,
    an unknown or server-only step, a timestamp off by more than :data:`MAX_CLOCK_SKEW`, an
    oversized detail, or a step that :data:`_REPORTED` does not allow from the current one.
    """
    _require_aware(now)
    _require_same_offer(progress, report)
    step = _parse_step(report.step)
    _require_sane_report(progress, report, now)
    if step is progress.step:
        return progress
    if step not in _REPORTED.get(progress.step, frozenset()):
        raise ReportInvalid(_refusal(progress, step), hint="the report was ignored; nothing changed")
    return _enter(progress, step, policy, now, report.detail)


def _require_same_offer(progress: DeviceProgress, report: DeviceReport) -> None:
    if report.device_id != progress.device_id or report.campaign != progress.campaign:
        raise ReportInvalid(
            f"device {report.device_id[:128]!r} is not in campaign {report.campaign[:128]!r} "
            f"(this progress is device {progress.device_id} in campaign {progress.campaign})"
        )
    if report.release != progress.release:
        raise ReportInvalid(
            f"device {progress.device_id} reported release {report.release[:128]!r} but was offered "
            f"{progress.release!r}"
        )


def _parse_step(text: str) -> DeviceStep:
    try:
        step = DeviceStep(text)
    except ValueError:
        raise ReportInvalid(f"unknown step {text[:40]!r}") from None
    if step in _SERVER_STEPS:
        raise ReportInvalid(f"step {step} is set by the server; a device cannot report it")
    return step


def _require_sane_report(progress: DeviceProgress, report: DeviceReport, now: dt.datetime) -> None:
    if report.at.tzinfo is None:
        raise ReportInvalid(f"device {progress.device_id}: report time has no UTC offset")
    if report.at > now + MAX_CLOCK_SKEW or report.at < progress.step_since - MAX_CLOCK_SKEW:
        raise ReportInvalid(
            f"device {progress.device_id}: report time {report.at.isoformat()} is outside "
            f"{progress.step_since.isoformat()} .. {now.isoformat()} (+- {MAX_CLOCK_SKEW})",
            hint="the device clock is wrong",
        )
    if len(report.detail) > MAX_DETAIL:
        raise ReportInvalid(f"device {progress.device_id}: detail longer than {MAX_DETAIL} characters")


def _refusal(progress: DeviceProgress, step: DeviceStep) -> str:
    where = f"device {progress.device_id} is {progress.step}"
    if progress.step is DeviceStep.PENDING:
        return f"{where}: it was not offered release {progress.release} and cannot report {step}"
    if progress.step not in _REPORTED:
        return f"{where}, which is final for this attempt: {step} cannot follow"
    if step in _SUCCESS_PATH and progress.step in _SUCCESS_PATH:
        skipped = _SUCCESS_PATH.index(step) - _SUCCESS_PATH.index(progress.step)
        direction = "goes back" if skipped < 0 else "skips a step"
        return (
            f"{where}: {step} {direction} (next is {_SUCCESS_PATH[_SUCCESS_PATH.index(progress.step) + 1]})"
        )
    return f"{where}: {step} cannot follow"


def _enter(
    progress: DeviceProgress, step: DeviceStep, policy: RolloutPolicy, now: dt.datetime, detail: str
) -> DeviceProgress:
    """Return ``progress`` moved to ``step`` at ``now``, with its phase deadline and retry time."""
    phase = _phase(step)
    if phase is None:
        deadline = None
    elif phase is _phase(progress.step):
        deadline = progress.deadline_at
    else:
        deadline = now + policy.timeouts.of(phase)
    retry_at = _retry_at(progress, policy, now) if step in _RETRYABLE else None
    return replace(
        progress, step=step, step_since=now, deadline_at=deadline, retry_at=retry_at, detail=detail
    )


def _retry_at(progress: DeviceProgress, policy: RolloutPolicy, now: dt.datetime) -> dt.datetime | None:
    if progress.attempt - 1 >= policy.retry.max_retries:
        return None
    return now + backoff(policy.retry, progress.device_id, progress.attempt)


def timeouts(
    progresses: Iterable[DeviceProgress], policy: RolloutPolicy, now: dt.datetime
) -> list[DeviceProgress]:
    """Return the new values of the devices that went silent: past ``deadline_at`` in their phase.

    Each becomes ``timed_out`` (with a retry time while retries remain); others are left out.
    """
    _require_aware(now)
    return [
        _enter(p, DeviceStep.TIMED_OUT, policy, now, f"silent in the {_phase(p.step)} phase past its timeout")
        for p in progresses
        if p.deadline_at is not None and p.deadline_at <= now and _phase(p.step) is not None
    ]


class DeviceOutcome(enum.StrEnum):
    """How a device counts in :class:`WaveStats`."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    RETRYING = "retrying"
    COMMITTED = "committed"
    FAILED = "failed"
    """Failed for good: rolled back, or failed / timed out with no retry left."""


def device_outcome(progress: DeviceProgress) -> DeviceOutcome:
    """Return how ``progress`` counts (in SQL: by step, and ``retry_at IS NULL`` for failures)."""
    match progress.step:
        case DeviceStep.PENDING:
            return DeviceOutcome.PENDING
        case DeviceStep.COMMITTED:
            return DeviceOutcome.COMMITTED
        case DeviceStep.ROLLED_BACK:
            return DeviceOutcome.FAILED
        case DeviceStep.FAILED | DeviceStep.TIMED_OUT:
            return DeviceOutcome.FAILED if progress.retry_at is None else DeviceOutcome.RETRYING
        case (
            DeviceStep.OFFERED
            | DeviceStep.DOWNLOADING
            | DeviceStep.DOWNLOADED
            | DeviceStep.INSTALLED
            | DeviceStep.REBOOTED
            | DeviceStep.HEALTHY
        ):
            return DeviceOutcome.IN_FLIGHT
        case _:
            assert_never(progress.step)


# --- evaluation ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WaveStats:
    """Counts of one wave's devices; the rest of ``total`` is pending or in flight."""

    wave: int
    total: int
    committed: int = 0
    failed: int = 0
    retrying: int = 0

    def __post_init__(self) -> None:
        counts = (self.total, self.committed, self.failed, self.retrying)
        if min(counts) < 0 or self.committed + self.failed + self.retrying > self.total:
            raise PlanInvalid(f"wave {self.wave}: inconsistent counts {counts}")

    @property
    def settled(self) -> bool:
        """Whether every device of the wave is final (committed, or failed for good)."""
        return self.committed + self.failed == self.total


def wave_stats(progresses: Iterable[DeviceProgress], wave_count: int) -> tuple[WaveStats, ...]:
    """Count ``progresses`` per wave (``wave_count`` waves) by :func:`device_outcome`."""
    counts = [dict.fromkeys(DeviceOutcome, 0) for _ in range(wave_count)]
    for progress in progresses:
        counts[progress.wave][device_outcome(progress)] += 1
    return tuple(
        WaveStats(
            wave=index,
            total=sum(count.values()),
            committed=count[DeviceOutcome.COMMITTED],
            failed=count[DeviceOutcome.FAILED],
            retrying=count[DeviceOutcome.RETRYING],
        )
        for index, count in enumerate(counts)
    )


@dataclass(frozen=True, slots=True)
class CampaignSnapshot:
    """What is stored of a campaign besides its devices.

    ``open_waves`` waves (``0..open_waves-1``) may be offered; ``wave_opened_at`` starts the newest
    open wave's deadline (restarted on resume); ``success_since`` is when the newest open wave
    first reached its success threshold (its soak starts then). ``reason`` says why the last change.
    """

    id: str
    state: CampaignState
    policy: RolloutPolicy
    open_waves: int = 0
    wave_opened_at: dt.datetime | None = None
    success_since: dt.datetime | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.id):
            raise PlanInvalid(f"campaign id {self.id[:80]!r} is not a valid name")
        if not 0 <= self.open_waves <= len(self.policy.waves):
            raise PlanInvalid(f"campaign {self.id}: {self.open_waves} open waves of {len(self.policy.waves)}")
        if self.open_waves > 0 and self.wave_opened_at is None:
            raise PlanInvalid(f"campaign {self.id}: an open wave needs the time it opened")
        if self.state in (CampaignState.RUNNING, CampaignState.PAUSED) and self.open_waves == 0:
            raise PlanInvalid(f"campaign {self.id} is {self.state} with no open wave")


def apply_action(
    campaign: CampaignSnapshot, action: CampaignAction, now: dt.datetime, reason: str = ""
) -> CampaignSnapshot:
    """Return ``campaign`` after ``action`` at ``now``; raise :class:`CampaignStateError` if illegal.

    ``start`` opens the first wave; ``resume`` restarts the newest wave's deadline (an operator
    looked at it).
    """
    _require_aware(now)
    state = transition(campaign.state, action)
    why = reason[:MAX_DETAIL] or str(action)
    match action:
        case CampaignAction.START:
            return replace(
                campaign, state=state, open_waves=1, wave_opened_at=now, success_since=None, reason=why
            )
        case CampaignAction.RESUME:
            return replace(campaign, state=state, wave_opened_at=now, reason=why)
        case CampaignAction.APPROVE | CampaignAction.PAUSE | CampaignAction.ABORT | CampaignAction.COMPLETE:
            return replace(campaign, state=state, reason=why)
        case _:
            assert_never(action)


class Decision(enum.StrEnum):
    """What :func:`evaluate` decided."""

    IDLE = "idle"
    """The campaign is not running (draft, approved, paused, completed, aborted)."""
    PROCEED = "proceed"
    WAIT_WINDOW = "wait_window"
    """Would proceed, but it is outside every maintenance window: no new offers."""
    CASCADE = "cascade"
    PAUSE = "pause"
    ABORT = "abort"
    COMPLETE = "complete"


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A decision with its reasons, the campaign to store, and whether devices may be offered now."""

    decision: Decision
    campaign: CampaignSnapshot
    may_offer: bool
    reasons: tuple[str, ...]


def evaluate(campaign: CampaignSnapshot, stats: Sequence[WaveStats], now: dt.datetime) -> Evaluation:
    """Decide what the campaign does at ``now``, given the counts of each of its waves (in order).

    Store ``Evaluation.campaign`` when it differs from ``campaign``. Raises :class:`PlanInvalid`
    when ``stats`` does not have one entry per wave, in order.
    """
    _require_aware(now)
    if [s.wave for s in stats] != list(range(len(campaign.policy.waves))):
        raise PlanInvalid(
            f"campaign {campaign.id}: stats must list waves 0..{len(campaign.policy.waves) - 1}"
        )
    match campaign.state:
        case CampaignState.RUNNING:
            return _evaluate_running(campaign, stats, now)
        case CampaignState.PAUSED:
            return _abort_breach(campaign, stats, now) or _idle(campaign)
        case CampaignState.DRAFT | CampaignState.APPROVED | CampaignState.COMPLETED | CampaignState.ABORTED:
            return _idle(campaign)
        case _:
            assert_never(campaign.state)


def _idle(campaign: CampaignSnapshot) -> Evaluation:
    return Evaluation(Decision.IDLE, campaign, False, (f"campaign {campaign.id} is {campaign.state}",))


def _evaluate_running(campaign: CampaignSnapshot, stats: Sequence[WaveStats], now: dt.datetime) -> Evaluation:
    breach = _abort_breach(campaign, stats, now) or _error_breach(campaign, stats, now)
    if breach is not None:
        return breach
    if campaign.open_waves == len(stats) and all(s.settled for s in stats):
        committed, total = sum(s.committed for s in stats), sum(s.total for s in stats)
        reason = f"every wave is open and every device is final: {committed} of {total} committed"
        return _conclude(campaign, Decision.COMPLETE, CampaignAction.COMPLETE, now, reason)
    return _evaluate_newest(campaign, stats, now)


def _reached(count: int, total: int, threshold_ppm: int) -> bool:
    return count * PPM >= threshold_ppm * total


def _breach_reason(kind: str, wave: WaveSpec, stats: WaveStats, threshold_ppm: int) -> str:
    return (
        f"wave {wave.name}: {stats.failed} of {stats.total} devices failed for good, reaching its "
        f"{kind} threshold of {_ppm_text(threshold_ppm)}"
    )


def _abort_breach(
    campaign: CampaignSnapshot, stats: Sequence[WaveStats], now: dt.datetime
) -> Evaluation | None:
    for wave, counts in zip(campaign.policy.waves[: campaign.open_waves], stats, strict=False):
        threshold = wave.abort_threshold_ppm
        if threshold is not None and counts.failed and _reached(counts.failed, counts.total, threshold):
            reason = _breach_reason("abort", wave, counts, threshold)
            return _conclude(campaign, Decision.ABORT, CampaignAction.ABORT, now, reason)
    return None


def _error_breach(
    campaign: CampaignSnapshot, stats: Sequence[WaveStats], now: dt.datetime
) -> Evaluation | None:
    for wave, counts in zip(campaign.policy.waves[: campaign.open_waves], stats, strict=False):
        threshold = wave.error_threshold_ppm
        if counts.failed and _reached(counts.failed, counts.total, threshold):
            reason = _breach_reason("error", wave, counts, threshold)
            return _conclude(campaign, Decision.PAUSE, CampaignAction.PAUSE, now, reason)
    return None


def _conclude(
    campaign: CampaignSnapshot, decision: Decision, action: CampaignAction, now: dt.datetime, reason: str
) -> Evaluation:
    return Evaluation(decision, apply_action(campaign, action, now, reason), False, (reason,))


def _evaluate_newest(campaign: CampaignSnapshot, stats: Sequence[WaveStats], now: dt.datetime) -> Evaluation:
    index = campaign.open_waves - 1
    wave, counts = campaign.policy.waves[index], stats[index]
    progress = f"wave {wave.name}: {counts.committed} of {counts.total} committed, {counts.failed} failed"
    if _reached(counts.committed, counts.total, wave.success_threshold_ppm):
        return _after_success(campaign, stats, now)
    if counts.settled:
        reason = f"{progress}: every device is final below the success threshold"
        return _conclude(campaign, Decision.PAUSE, CampaignAction.PAUSE, now, reason)
    assert campaign.wave_opened_at is not None  # CampaignSnapshot guarantees it for an open wave
    if wave.deadline is not None and now >= campaign.wave_opened_at + wave.deadline:
        reason = f"{progress}: its deadline of {wave.deadline} passed without reaching success"
        return _conclude(campaign, Decision.PAUSE, CampaignAction.PAUSE, now, reason)
    return _proceed(campaign, now, f"{progress}; success needs {_ppm_text(wave.success_threshold_ppm)}")


def _after_success(campaign: CampaignSnapshot, stats: Sequence[WaveStats], now: dt.datetime) -> Evaluation:
    index = campaign.open_waves - 1
    wave = campaign.policy.waves[index]
    since = campaign.success_since or now
    soaked = replace(campaign, success_since=since)
    if index + 1 == len(stats):
        return _proceed(
            soaked, now, f"last wave {wave.name} reached success; waiting for its devices to finish"
        )
    if now < since + wave.soak:
        return _proceed(soaked, now, f"wave {wave.name} reached success; soaking until {since + wave.soak}")
    return _cascade(campaign, stats, now)


def _cascade(campaign: CampaignSnapshot, stats: Sequence[WaveStats], now: dt.datetime) -> Evaluation:
    opened = campaign.open_waves + 1
    while opened < len(stats) and stats[opened - 1].total == 0:
        opened += 1
    waves = campaign.policy.waves
    reason = (
        f"wave {waves[campaign.open_waves - 1].name} reached success and soaked; "
        f"opening {', '.join(w.name for w in waves[campaign.open_waves : opened])}"
    )
    cascaded = replace(campaign, open_waves=opened, wave_opened_at=now, success_since=None, reason=reason)
    may_offer = campaign.policy.in_window(now)
    reasons = (reason,) if may_offer else (reason, "outside every maintenance window: no new offers")
    return Evaluation(Decision.CASCADE, cascaded, may_offer, reasons)


def _proceed(campaign: CampaignSnapshot, now: dt.datetime, reason: str) -> Evaluation:
    if campaign.policy.in_window(now):
        return Evaluation(Decision.PROCEED, campaign, True, (reason,))
    windows = ", ".join(str(window) for window in campaign.policy.windows)
    return Evaluation(
        Decision.WAIT_WINDOW, campaign, False, (reason, f"outside every maintenance window ({windows})")
    )


# --- offers and retries ----------------------------------------------------------------------------


def _require_may_offer(progress: DeviceProgress, evaluation: Evaluation) -> None:
    campaign = evaluation.campaign
    if progress.campaign != campaign.id:
        raise CampaignStateError(f"device {progress.device_id} is not in campaign {campaign.id}")
    if not evaluation.may_offer:
        raise CampaignStateError(
            f"campaign {campaign.id} offers nothing now: {'; '.join(evaluation.reasons)}"
        )
    if progress.wave >= campaign.open_waves:
        raise CampaignStateError(f"device {progress.device_id} is in wave {progress.wave}, which is not open")


def offer(progress: DeviceProgress, evaluation: Evaluation, now: dt.datetime) -> DeviceProgress:
    """Return a pending device's progress once offered the release (its first attempt).

    Raises :class:`CampaignStateError` when the latest evaluation allows no offer, the device's
    wave is not open, or the device is not pending.
    """
    _require_aware(now)
    _require_may_offer(progress, evaluation)
    if progress.step is not DeviceStep.PENDING:
        raise CampaignStateError(f"device {progress.device_id} is {progress.step}, not pending")
    return _offered(progress, evaluation.campaign.policy, now)


def _offered(progress: DeviceProgress, policy: RolloutPolicy, now: dt.datetime) -> DeviceProgress:
    deadline = now + policy.timeouts.of(Phase.OFFER)
    return replace(
        progress,
        step=DeviceStep.OFFERED,
        attempt=progress.attempt + 1,
        step_since=now,
        deadline_at=deadline,
        retry_at=None,
        detail="",
    )


def due_retries(
    progresses: Iterable[DeviceProgress], evaluation: Evaluation, now: dt.datetime
) -> list[DeviceProgress]:
    """Return the re-offered values of failed or timed-out devices whose retry is due at ``now``.

    Empty when the evaluation allows no offers (paused, outside the maintenance window, ...).
    """
    _require_aware(now)
    if not evaluation.may_offer:
        return []
    policy, open_waves = evaluation.campaign.policy, evaluation.campaign.open_waves
    return [
        _offered(p, policy, now)
        for p in progresses
        if p.campaign == evaluation.campaign.id
        and p.step in _RETRYABLE
        and p.retry_at is not None
        and p.retry_at <= now
        and p.wave < open_waves
    ]
