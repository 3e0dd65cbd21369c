"""Rollout campaigns: the campaign table, planning, device reports, timeouts, retries, evaluation."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, overload

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.inventory.lifecycle import State
from fleetguard.inventory.model import Device
from fleetguard.ota.errors import CampaignStateError, ReportInvalid
from fleetguard.ota.rollout import (
    MAX_CLOCK_SKEW,
    MAX_DEVICES,
    CampaignAction,
    CampaignSnapshot,
    CampaignState,
    Decision,
    DeviceOutcome,
    DeviceProgress,
    DeviceReport,
    DeviceStep,
    Evaluation,
    MaintenanceWindow,
    Phase,
    PhaseTimeouts,
    Plan,
    PlanInvalid,
    RetryPolicy,
    RolloutPolicy,
    Target,
    WaveSpec,
    WaveStats,
    allowed_actions,
    apply_action,
    apply_report,
    backoff,
    device_outcome,
    due_retries,
    evaluate,
    offer,
    pending_progress,
    plan_waves,
    require_scope_covers,
    timeouts,
    transition,
    wave_stats,
)
from fleetguard.ota.scope import PPM, RolloutScope, device_bucket
from fleetguard.types import DeviceId

SALT = "00112233445566778899aabbccddeeff"
MONDAY = dt.datetime(2025, 1, 6, 12, 0, tzinfo=dt.UTC)
T0 = MONDAY
MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
S = DeviceStep
C = CampaignState
A = CampaignAction

CANARY = WaveSpec(
    "canary",
    10_000,
    success_threshold_ppm=900_000,
    error_threshold_ppm=100_000,
    abort_threshold_ppm=500_000,
    soak=HOUR,
    deadline=DAY,
)
MIDDLE = WaveSpec("middle", 100_000, success_threshold_ppm=950_000, error_threshold_ppm=50_000, soak=HOUR)
REST = WaveSpec("rest", PPM, success_threshold_ppm=950_000, error_threshold_ppm=50_000)
NO_JITTER = RetryPolicy(max_retries=2, base=5 * MINUTE, cap=HOUR, jitter_ppm=0)
TIMEOUTS = PhaseTimeouts(offer=DAY, download=2 * HOUR, install=30 * MINUTE, activate=15 * MINUTE)


def make_policy(**changes: object) -> RolloutPolicy:
    values: dict[str, object] = {
        "salt": SALT,
        "waves": (CANARY, MIDDLE, REST),
        "timeouts": TIMEOUTS,
        "retry": NO_JITTER,
    }
    values.update(changes)
    return RolloutPolicy(**values)  # type: ignore[arg-type]


POLICY = make_policy()


def running(policy: RolloutPolicy = POLICY, open_waves: int = 1, **changes: object) -> CampaignSnapshot:
    campaign = CampaignSnapshot(
        id="c-1", state=C.RUNNING, policy=policy, open_waves=open_waves, wave_opened_at=T0
    )
    return replace(campaign, **changes)  # type: ignore[arg-type]


def stats(*counts: tuple[int, int, int] | tuple[int, int, int, int]) -> tuple[WaveStats, ...]:
    """(total, committed, failed[, retrying]) per wave."""
    return tuple(WaveStats(index, *count) for index, count in enumerate(counts))


# --- campaign state table --------------------------------------------------------------------------

EXPECTED_CAMPAIGN = {
    (C.DRAFT, A.APPROVE): C.APPROVED,
    (C.APPROVED, A.START): C.RUNNING,
    (C.RUNNING, A.PAUSE): C.PAUSED,
    (C.PAUSED, A.RESUME): C.RUNNING,
    (C.RUNNING, A.COMPLETE): C.COMPLETED,
    (C.DRAFT, A.ABORT): C.ABORTED,
    (C.APPROVED, A.ABORT): C.ABORTED,
    (C.RUNNING, A.ABORT): C.ABORTED,
    (C.PAUSED, A.ABORT): C.ABORTED,
}
ACTION_TARGET = {
    A.APPROVE: C.APPROVED,
    A.START: C.RUNNING,
    A.PAUSE: C.PAUSED,
    A.RESUME: C.RUNNING,
    A.ABORT: C.ABORTED,
    A.COMPLETE: C.COMPLETED,
}


@pytest.mark.parametrize(("state", "action"), sorted(EXPECTED_CAMPAIGN))
def test_legal_campaign_transition(state: CampaignState, action: CampaignAction) -> None:
    assert transition(state, action) is EXPECTED_CAMPAIGN[state, action]


ILLEGAL = sorted(set(itertools.product(C, A)) - set(EXPECTED_CAMPAIGN))


@pytest.mark.parametrize(("state", "action"), ILLEGAL)
def test_illegal_campaign_transition_names_from_and_to(state: CampaignState, action: CampaignAction) -> None:
    with pytest.raises(CampaignStateError, match=f"from {state} to {ACTION_TARGET[action]} \\({action}\\)"):
        transition(state, action)


def test_start_needs_approval() -> None:
    with pytest.raises(CampaignStateError, match="from draft to running") as info:
        transition(C.DRAFT, A.START)
    assert info.value.hint == "from draft it may: approve, abort"


@pytest.mark.parametrize("state", [C.COMPLETED, C.ABORTED])
def test_final_campaign_states_allow_nothing(state: CampaignState) -> None:
    assert allowed_actions(state) == []
    with pytest.raises(CampaignStateError, match=r"nothing \(it is final\)"):
        transition(state, A.RESUME)


def test_start_opens_the_canary_and_its_clock() -> None:
    approved = CampaignSnapshot(id="c-1", state=C.APPROVED, policy=POLICY)
    started = apply_action(approved, A.START, T0, "go")
    assert started == replace(approved, state=C.RUNNING, open_waves=1, wave_opened_at=T0, reason="go")


def test_resume_restarts_the_deadline_and_keeps_the_soak() -> None:
    paused = running(state=C.PAUSED, success_since=T0 + MINUTE, open_waves=2)
    resumed = apply_action(paused, A.RESUME, T0 + DAY)
    assert resumed == replace(
        paused, state=C.RUNNING, wave_opened_at=T0 + DAY, reason="resume", success_since=T0 + MINUTE
    )


def test_illegal_action_leaves_the_snapshot_alone() -> None:
    draft = CampaignSnapshot(id="c-1", state=C.DRAFT, policy=POLICY)
    with pytest.raises(CampaignStateError):
        apply_action(draft, A.START, T0)
    assert draft.state is C.DRAFT
    assert draft.open_waves == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"id": "bad id"}, "not a valid name"),
        ({"open_waves": 4}, "4 open waves of 3"),
        ({"wave_opened_at": None}, "needs the time it opened"),
        ({"open_waves": 0, "wave_opened_at": None}, "running with no open wave"),
    ],
)
def test_inconsistent_snapshot_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanInvalid, match=message):
        running(**changes)


# --- maintenance windows ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "days", "start", "end", "canonical"),
    [
        ("Mon-Fri 01:00-05:00 UTC", (0, 1, 2, 3, 4), 60, 300, "Mon-Fri 01:00-05:00 UTC"),
        ("sat,sun 22:00-02:00", (5, 6), 1320, 120, "Sat-Sun 22:00-02:00 UTC"),
        ("Fri-Mon 22:00-00:00", (0, 4, 5, 6), 1320, 1440, "Mon,Fri-Sun 22:00-24:00 UTC"),
        ("daily 00:00-24:00", tuple(range(7)), 0, 1440, "Mon-Sun 00:00-24:00 UTC"),
        ("Tue 00:00-00:00", (1,), 0, 1440, "Tue 00:00-24:00 UTC"),
        ("Wed 03:30-03:45", (2,), 210, 225, "Wed 03:30-03:45 UTC"),
    ],
)
def test_window_parse(text: str, days: tuple[int, ...], start: int, end: int, canonical: str) -> None:
    window = MaintenanceWindow.parse(text)
    assert window == MaintenanceWindow(days, start, end)
    assert str(window) == canonical


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Mon-Fri 1:00-05:00", "is not like"),
        ("Mon-Fri 01:00-05:00 CET", "is not like"),
        ("", "is not like"),
        ("Mon " + "x" * 100, "is not like"),
        ("Mon-Fry 01:00-05:00", "'Fry' is not a day"),
        ("Mon 24:00-05:00", "24:00 is not a time of day"),
        ("Mon 01:60-05:00", "01:60 is not a time of day"),
        ("Mon 01:00-24:01", "24:01 is not a time of day"),
        ("Mon 01:00-01:00", "the same time"),
        ("Mon 05:00-05:00", "the same time"),
    ],
)
def test_window_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(PlanInvalid, match=message):
        MaintenanceWindow.parse(text)


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    """Day 0 = Monday 2025-01-06."""
    return dt.datetime(2025, 1, 6 + day, hour, minute, second, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "moment", "inside"),
    [
        ("Mon-Fri 01:00-05:00", at(0, 1), True),
        ("Mon-Fri 01:00-05:00", at(0, 4, 59, 59), True),
        ("Mon-Fri 01:00-05:00", at(0, 5), False),
        ("Mon-Fri 01:00-05:00", at(0, 0, 59, 59), False),
        ("Mon-Fri 01:00-05:00", at(4, 3), True),
        ("Mon-Fri 01:00-05:00", at(5, 3), False),
        ("Fri 22:00-02:00", at(4, 22), True),
        ("Fri 22:00-02:00", at(4, 21, 59, 59), False),
        ("Fri 22:00-02:00", at(5, 1, 59, 59), True),
        ("Fri 22:00-02:00", at(5, 2), False),
        ("Fri 22:00-02:00", at(3, 23), False),
        ("Fri 22:00-02:00", at(5, 22), False),
        ("Fri 22:00-02:00", at(4, 1), False),
        ("Sun 23:00-01:00", at(7, 0, 30), True),
        ("Sun 23:00-01:00", at(0, 0, 30), True),
        ("Sun 23:00-01:00", at(1, 0, 30), False),
        ("Sat 22:00-24:00", at(5, 23, 59, 59), True),
        ("Sat 22:00-24:00", at(6, 0), False),
        ("daily 00:00-24:00", at(3, 0), True),
    ],
)
def test_window_contains(text: str, moment: dt.datetime, inside: bool) -> None:
    assert MaintenanceWindow.parse(text).contains(moment) is inside


def test_window_reads_other_offsets_as_utc() -> None:
    window = MaintenanceWindow.parse("Mon-Fri 01:00-05:00")
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert not window.contains(dt.datetime(2025, 1, 6, 2, 0, tzinfo=plus_two))  # 00:00 UTC
    assert window.contains(dt.datetime(2025, 1, 6, 3, 0, tzinfo=plus_two))  # 01:00 UTC


def test_window_refuses_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        MaintenanceWindow.parse("daily 00:00-24:00").contains(dt.datetime(2025, 1, 6))  # noqa: DTZ001


window_fields = st.tuples(
    st.sets(st.integers(0, 6), min_size=1).map(lambda days: tuple(sorted(days))),
    st.integers(0, 1439),
    st.integers(1, 1440),
).filter(lambda fields: fields[1] != fields[2])


@given(window_fields)
def test_window_text_round_trips(fields: tuple[tuple[int, ...], int, int]) -> None:
    window = MaintenanceWindow(*fields)
    assert MaintenanceWindow.parse(str(window)) == window


@given(st.text(max_size=100))
def test_window_parse_raises_only_plan_invalid(text: str) -> None:
    try:
        window = MaintenanceWindow.parse(text)
    except PlanInvalid:
        return
    assert MaintenanceWindow.parse(str(window)) == window


# --- policy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: make_policy(salt="XYZ"), "16 to 64 lower-case hex"),
        (lambda: make_policy(waves=()), "1 to 32 waves, not 0"),
        (
            lambda: make_policy(waves=tuple(WaveSpec(f"w{i}", 30_000 * (i + 1)) for i in range(33))),
            "1 to 32 waves, not 33",
        ),
        (lambda: make_policy(waves=(CANARY, replace(MIDDLE, name="canary"), REST)), "distinct"),
        (
            lambda: make_policy(waves=(CANARY, replace(MIDDLE, cumulative_ppm=10_000), REST)),
            "increase strictly",
        ),
        (lambda: make_policy(waves=(MIDDLE, CANARY, REST)), "increase strictly"),
        (lambda: make_policy(waves=(CANARY, MIDDLE)), "last wave must reach 1000000 ppm"),
        (lambda: make_policy(windows=(MaintenanceWindow.parse("daily 00:00-24:00"),) * 33), "at most 32"),
        (lambda: WaveSpec("a b", PPM), "not a valid name"),
        (lambda: WaveSpec("w", 0), "size 0 ppm is outside"),
        (lambda: WaveSpec("w", PPM + 1), "size 1000001 ppm is outside"),
        (lambda: WaveSpec("w", PPM, success_threshold_ppm=0), "success threshold 0 ppm"),
        (lambda: WaveSpec("w", PPM, error_threshold_ppm=0), "error threshold 0 ppm"),
        (lambda: WaveSpec("w", PPM, error_threshold_ppm=100, abort_threshold_ppm=99), "abort threshold"),
        (lambda: WaveSpec("w", PPM, abort_threshold_ppm=PPM + 1), "abort threshold"),
        (lambda: WaveSpec("w", PPM, soak=-MINUTE), "soak"),
        (lambda: WaveSpec("w", PPM, deadline=dt.timedelta(0)), "deadline must be more than 0"),
        (lambda: PhaseTimeouts(install=dt.timedelta(0)), "install timeout"),
        (lambda: PhaseTimeouts(offer=dt.timedelta(days=31)), "offer timeout"),
        (lambda: RetryPolicy(max_retries=-1), "max_retries"),
        (lambda: RetryPolicy(max_retries=21), "max_retries"),
        (lambda: RetryPolicy(base=HOUR, cap=MINUTE), "cap is shorter"),
        (lambda: RetryPolicy(jitter_ppm=PPM), "jitter"),
    ],
)
def test_bad_policy_is_refused(make: Callable[[], object], message: str) -> None:
    with pytest.raises(PlanInvalid, match=message):
        make()


def test_abort_threshold_may_equal_the_error_threshold() -> None:
    assert WaveSpec("w", PPM, error_threshold_ppm=100, abort_threshold_ppm=100).abort_threshold_ppm == 100


def test_phase_timeouts_by_phase() -> None:
    assert [TIMEOUTS.of(phase) for phase in Phase] == [DAY, 2 * HOUR, 30 * MINUTE, 15 * MINUTE]


# --- backoff -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "delay"),
    [(1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (6, 60), (100, 60)],
)
def test_backoff_doubles_up_to_the_cap(attempt: int, delay: int) -> None:
    assert backoff(NO_JITTER, "dev-1", attempt) == delay * MINUTE


def test_backoff_jitter_is_derived_from_device_and_attempt() -> None:
    policy = RetryPolicy(base=5 * MINUTE, cap=HOUR, jitter_ppm=500_000)
    digest = hashlib.sha256(b"dev-1\x002").digest()
    jitter = int.from_bytes(digest[:8], "big") % 500_001
    full = 600_000_000  # 10 minutes in microseconds
    assert backoff(policy, "dev-1", 2) == dt.timedelta(microseconds=full - full * jitter // PPM)


@given(st.text(min_size=1, max_size=40), st.integers(1, 30))
def test_backoff_stays_within_jitter_and_cap(device_id: str, attempt: int) -> None:
    policy = RetryPolicy(base=5 * MINUTE, cap=HOUR, jitter_ppm=250_000)
    full = min(HOUR, 5 * MINUTE * 2 ** (attempt - 1))
    delay = backoff(policy, device_id, attempt)
    assert full * 3 / 4 <= delay <= full
    assert backoff(policy, device_id, attempt) == delay


def test_backoff_spreads_devices() -> None:
    policy = RetryPolicy(jitter_ppm=500_000)
    assert len({backoff(policy, f"dev-{i}", 1) for i in range(50)}) > 40


def test_backoff_attempt_counts_from_one() -> None:
    with pytest.raises(ValueError, match="attempt counts from 1"):
        backoff(NO_JITTER, "dev-1", 0)


# --- targeting ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeDevice:
    device_type: str | None = "gateway"
    site: str | None = "plant-1"
    labels: dict[str, str] = field(default_factory=lambda: {"ring": "beta", "line": "3"})
    firmware_version: str = "1.0"


@pytest.mark.parametrize(
    ("target", "matched"),
    [
        (Target(device_type="gateway"), True),
        (Target(device_type="camera"), False),
        (Target(site="plant-1", labels={"ring": "beta"}), True),
        (Target(site="plant-2"), False),
        (Target(labels={"ring": "beta", "line": "3"}), True),
        (Target(labels={"ring": "stable"}), False),
        (Target(labels={"missing": "x"}), False),
        (Target(firmware_version="1.0"), True),
        (Target(firmware_version="0.9"), False),
        (Target(device_type="gateway", firmware_version_not="2.0"), True),
        (Target(device_type="gateway", firmware_version_not="1.0"), False),
    ],
)
def test_target_matches(target: Target, matched: bool) -> None:
    assert target.matches(FakeDevice()) is matched


def test_target_on_an_untyped_device() -> None:
    assert not Target(device_type="gateway").matches(FakeDevice(device_type=None))


def test_target_reads_inventory_devices() -> None:
    device = Device(
        id=DeviceId("dev-1"),
        serial="S1",
        manufacturer="Acme",
        model="G1",
        device_type="gateway",
        hardware_revision="r2",
        firmware_version="1.0",
        mud_url=None,
        site="plant-1",
        owner="",
        labels=MappingProxyType({"ring": "beta"}),
        state=State.ACTIVE,
        created_at=T0,
        updated_at=T0,
        last_seen=None,
        version=1,
    )
    assert Target(device_type="gateway", labels={"ring": "beta"}, firmware_version_not="2.0").matches(device)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (Target, "at least one criterion"),
        (lambda: Target(site=""), "must not be empty"),
        (lambda: Target(labels={f"k{i}": "v" for i in range(65)}), "at most 64 labels"),
    ],
)
def test_bad_target_is_refused(make: Callable[[], object], message: str) -> None:
    with pytest.raises(PlanInvalid, match=message):
        make()


# --- planning ----------------------------------------------------------------------------------------


def ids(count: int, prefix: str = "dev") -> list[str]:
    return [f"{prefix}-{index:06d}" for index in range(count)]


def check_plan(plan: Plan, device_ids: list[str], policy: RolloutPolicy) -> None:
    """Every invariant a plan promises."""
    assert sorted(plan.device_ids) == sorted(device_ids)
    assert list(plan.buckets) == [device_bucket(policy.salt, d) for d in plan.device_ids]
    keys = list(zip(plan.buckets, plan.device_ids, strict=True))
    assert keys == sorted(keys)
    total, start = len(device_ids), 0
    for wave, spec in zip(plan.waves, policy.waves, strict=True):
        assert (wave.start, wave.name) == (start, spec.name)
        nominal = -(-total * spec.cumulative_ppm // PPM)
        assert wave.end >= nominal
        if wave.end > max(nominal, start):  # grown only to keep a bucket whole
            assert plan.buckets[wave.end - 1] == plan.buckets[max(nominal, start) - 1]
        if 0 < wave.end < total:
            assert plan.buckets[wave.end - 1] != plan.buckets[wave.end]
        covered = {d for d, b in zip(plan.device_ids, plan.buckets, strict=True) if b < wave.scope_bound_ppm}
        assert covered == set(plan.device_ids[: wave.end])
        start = wave.end
    assert plan.waves[-1].end == total
    assert plan.waves[0].size >= 1


def test_plan_is_canary_first_in_bucket_order() -> None:
    devices = ids(1000)
    plan = plan_waves(devices, POLICY)
    assert [wave.size for wave in plan.waves] == [10, 90, 900]
    check_plan(plan, devices, POLICY)
    rows = list(plan.assignments())
    assert [row.wave for row in rows] == [0] * 10 + [1] * 90 + [2] * 900
    assert [row.device_id for row in rows] == list(plan.device_ids)
    assert [row.bucket for row in rows] == list(plan.buckets)


def test_plan_is_deterministic_whatever_the_input_order() -> None:
    devices = ids(500)
    reordered = devices[1::2] + devices[::2][::-1]
    assert plan_waves(reordered, POLICY) == plan_waves(devices, POLICY)


def test_plan_depends_on_the_salt() -> None:
    other = make_policy(salt="ffeeddccbbaa99887766554433221100")
    assert plan_waves(ids(100), other).device_ids != plan_waves(ids(100), POLICY).device_ids


def test_the_canary_is_never_empty() -> None:
    plan = plan_waves(["only"], POLICY)
    assert [wave.size for wave in plan.waves] == [1, 0, 0]
    assert [wave.scope_bound_ppm for wave in plan.waves] == [device_bucket(SALT, "only") + 1] * 3


def colliding_pair() -> tuple[str, str]:
    seen: dict[int, str] = {}
    for index in itertools.count():
        device_id = f"dev-{index}"
        bucket = device_bucket(SALT, device_id)
        if bucket in seen:
            return seen[bucket], device_id
        seen[bucket] = device_id
    raise AssertionError


def test_a_wave_boundary_never_splits_a_bucket() -> None:
    first, second = colliding_pair()
    policy = make_policy(waves=(WaveSpec("half", 500_000), WaveSpec("rest", PPM)))
    plan = plan_waves([second, first], policy)
    assert [wave.size for wave in plan.waves] == [2, 0]
    assert plan.device_ids == tuple(sorted([first, second]))


@pytest.mark.parametrize(
    ("device_ids", "message"),
    [([], "no device is targeted"), (["a", "b", "a"], "targeted twice")],
)
def test_bad_target_set_is_refused(device_ids: list[str], message: str) -> None:
    with pytest.raises(PlanInvalid, match=message):
        plan_waves(device_ids, POLICY)


sizes = st.lists(st.integers(1, PPM - 1), max_size=6, unique=True).map(lambda s: [*sorted(s), PPM])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=300, unique=True), sizes)
def test_plan_properties(device_ids: list[str], cumulative: list[int]) -> None:
    policy = make_policy(waves=tuple(WaveSpec(f"w{i}", ppm) for i, ppm in enumerate(cumulative)))
    check_plan(plan_waves(device_ids, policy), device_ids, policy)


def test_plan_of_100k_devices() -> None:
    devices = ids(100_000)
    plan = plan_waves(devices, POLICY)
    assert len(plan.device_ids) == 100_000
    assert [wave.end for wave in plan.waves][-1] == 100_000
    assert 1000 <= plan.waves[0].size <= 1002
    assert 10_000 <= plan.waves[1].end <= 10_002
    buckets = plan.buckets
    assert len(set(buckets)) < 100_000  # buckets collide at this size; no wave boundary splits one
    check_plan(plan, devices, POLICY)


def scope(fraction_ppm: int, salt: str = SALT) -> RolloutScope:
    return RolloutScope("c-1", fraction_ppm, salt, ("hw-1",), T0, T0 + 30 * DAY)


def test_scope_must_cover_the_waves_it_approves() -> None:
    plan = plan_waves(ids(1000), POLICY)
    bound = plan.waves[1].scope_bound_ppm
    require_scope_covers(plan, scope(bound), 1)
    require_scope_covers(plan, scope(bound - 1), 0)
    with pytest.raises(PlanInvalid, match=f"covers {bound - 1} ppm; waves 0..1 need {bound} ppm"):
        require_scope_covers(plan, scope(bound - 1), 1)


def test_scope_with_another_salt_is_refused() -> None:
    plan = plan_waves(ids(10), POLICY)
    with pytest.raises(PlanInvalid, match="another salt"):
        require_scope_covers(plan, scope(PPM, salt="ab" * 8), 0)
    with pytest.raises(PlanInvalid, match="no wave 3"):
        require_scope_covers(plan, scope(PPM), 3)


# --- device progress -------------------------------------------------------------------------------


def progress(step: DeviceStep = S.OFFERED, **changes: object) -> DeviceProgress:
    value = DeviceProgress(
        campaign="c-1",
        device_id="dev-1",
        wave=0,
        bucket=42,
        release="2.0.0",
        step=step,
        attempt=0 if step is S.PENDING else 1,
        step_since=T0,
        deadline_at=T0 + DAY if step is S.OFFERED else None,
    )
    return replace(value, **changes)  # type: ignore[arg-type]


def report(value: DeviceProgress, step: str, **changes: object) -> DeviceReport:
    base = DeviceReport(value.device_id, value.campaign, value.release, step, value.step_since)
    return replace(base, **changes)  # type: ignore[arg-type]


def walk(value: DeviceProgress, steps: list[DeviceStep], every: dt.timedelta = MINUTE) -> DeviceProgress:
    for step in steps:
        now = value.step_since + every
        value = apply_report(value, report(value, step, at=now), POLICY, now)
    return value


HAPPY = [S.DOWNLOADING, S.DOWNLOADED, S.INSTALLED, S.REBOOTED, S.HEALTHY, S.COMMITTED]


def test_pending_progress_for_every_planned_device() -> None:
    plan = plan_waves(ids(200), POLICY)
    rows = pending_progress(plan, campaign="c-1", release="2.0.0", now=T0)
    assert [(r.device_id, r.wave, r.bucket) for r in rows] == [
        (a.device_id, a.wave, a.bucket) for a in plan.assignments()
    ]
    assert {(r.step, r.attempt, r.step_since, r.deadline_at, r.retry_at) for r in rows} == {
        (S.PENDING, 0, T0, None, None)
    }
    with pytest.raises(PlanInvalid, match="release a non-empty version"):
        pending_progress(plan, campaign="c-1", release="", now=T0)


def test_happy_path_sets_phase_deadlines() -> None:
    value = progress()
    seen = []
    for step in HAPPY:
        value = walk(value, [step])
        seen.append((value.step, value.deadline_at, value.retry_at))
    assert seen == [
        (S.DOWNLOADING, T0 + MINUTE + 2 * HOUR, None),
        (S.DOWNLOADED, T0 + 2 * MINUTE + 30 * MINUTE, None),
        (S.INSTALLED, T0 + 3 * MINUTE + 15 * MINUTE, None),
        (S.REBOOTED, T0 + 3 * MINUTE + 15 * MINUTE, None),  # same activate phase: same deadline
        (S.HEALTHY, T0 + 3 * MINUTE + 15 * MINUTE, None),
        (S.COMMITTED, None, None),
    ]
    assert device_outcome(value) is DeviceOutcome.COMMITTED
    assert value.step_since == T0 + 6 * MINUTE


def test_repeated_report_is_idempotent() -> None:
    value = walk(progress(), [S.DOWNLOADING])
    again = apply_report(value, report(value, "downloading"), POLICY, value.step_since + HOUR)
    assert again is value
    done = walk(progress(), HAPPY)
    assert apply_report(done, report(done, "committed"), POLICY, done.step_since + HOUR) is done


ALLOWED_REPORTS = {
    (S.OFFERED, S.DOWNLOADING),
    (S.OFFERED, S.FAILED),
    (S.DOWNLOADING, S.DOWNLOADED),
    (S.DOWNLOADING, S.FAILED),
    (S.DOWNLOADED, S.INSTALLED),
    (S.DOWNLOADED, S.FAILED),
    (S.INSTALLED, S.REBOOTED),
    (S.INSTALLED, S.FAILED),
    (S.INSTALLED, S.ROLLED_BACK),
    (S.REBOOTED, S.HEALTHY),
    (S.REBOOTED, S.ROLLED_BACK),
    (S.HEALTHY, S.COMMITTED),
    (S.HEALTHY, S.ROLLED_BACK),
}
SERVER_STEPS = {S.PENDING, S.OFFERED, S.TIMED_OUT}


@pytest.mark.parametrize(("current", "reported"), list(itertools.product(S, S)))
def test_report_table(current: DeviceStep, reported: DeviceStep) -> None:
    value = progress(current)
    before = replace(value)
    incoming = report(value, str(reported), at=T0 + MINUTE)
    if reported in SERVER_STEPS:
        with pytest.raises(ReportInvalid, match=f"step {reported} is set by the server"):
            apply_report(value, incoming, POLICY, T0 + MINUTE)
    elif reported is current:
        assert apply_report(value, incoming, POLICY, T0 + MINUTE) is value
    elif (current, reported) in ALLOWED_REPORTS:
        assert apply_report(value, incoming, POLICY, T0 + MINUTE).step is reported
    else:
        with pytest.raises(ReportInvalid, match=f"device dev-1 is {current}"):
            apply_report(value, incoming, POLICY, T0 + MINUTE)
    assert value == before


@pytest.mark.parametrize("current", [s for s in S if s is not S.HEALTHY and s is not S.COMMITTED])
def test_committed_only_after_healthy(current: DeviceStep) -> None:
    value = progress(current)
    with pytest.raises(ReportInvalid):
        apply_report(value, report(value, "committed"), POLICY, T0)


@pytest.mark.parametrize(
    ("current", "reported", "message"),
    [
        (S.DOWNLOADED, "downloading", "downloading goes back \\(next is installed\\)"),
        (S.OFFERED, "installed", "installed skips a step \\(next is downloading\\)"),
        (S.INSTALLED, "committed", "committed skips a step \\(next is rebooted\\)"),
        (S.PENDING, "downloading", "was not offered release 2.0.0"),
        (S.COMMITTED, "rolled_back", "is committed, which is final for this attempt"),
        (S.FAILED, "downloading", "is failed, which is final for this attempt"),
        (S.TIMED_OUT, "downloaded", "is timed_out, which is final for this attempt"),
        (S.ROLLED_BACK, "committed", "is rolled_back, which is final"),
        (S.REBOOTED, "failed", "failed cannot follow"),
    ],
)
def test_out_of_order_reports_say_why(current: DeviceStep, reported: str, message: str) -> None:
    value = progress(current)
    with pytest.raises(ReportInvalid, match=message):
        apply_report(value, report(value, reported), POLICY, T0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"step": "exploded"}, "unknown step 'exploded'"),
        ({"step": "COMMITTED"}, "unknown step 'COMMITTED'"),
        ({"step": "x" * 10_000}, "unknown step 'xxxx"),
        ({"release": "9.9.9"}, "reported release '9.9.9' but was offered '2.0.0'"),
        ({"release": ""}, "reported release '' but was offered"),
        ({"device_id": "dev-2"}, "device 'dev-2' is not in campaign 'c-1'"),
        ({"campaign": "c-2"}, "device 'dev-1' is not in campaign 'c-2'"),
        ({"at": T0 + MAX_CLOCK_SKEW + dt.timedelta(seconds=1)}, "outside .*the device clock is wrong"),
        ({"at": T0 - MAX_CLOCK_SKEW - dt.timedelta(seconds=1)}, "outside"),
        ({"at": dt.datetime(1970, 1, 1, tzinfo=dt.UTC)}, "outside"),
        ({"at": dt.datetime(2025, 1, 6, 12)}, "has no UTC offset"),  # noqa: DTZ001
        ({"detail": "x" * 1025}, "detail longer than 1024"),
    ],
)
def test_nonsense_report_is_refused_and_changes_nothing(changes: dict[str, Any], message: str) -> None:
    rows = [progress(S.DOWNLOADING), progress(S.COMMITTED, device_id="dev-2")]
    counts = wave_stats(rows, 1)
    value = rows[0]
    with pytest.raises(ReportInvalid, match=message):
        apply_report(value, replace(report(value, "downloaded"), **changes), POLICY, T0)
    assert rows[0] == progress(S.DOWNLOADING)
    assert wave_stats(rows, 1) == counts


def test_report_within_clock_skew_is_accepted() -> None:
    value = progress(S.DOWNLOADING)
    late = apply_report(value, report(value, "downloaded", at=T0 + MAX_CLOCK_SKEW), POLICY, T0)
    early = apply_report(value, report(value, "downloaded", at=T0 - MAX_CLOCK_SKEW), POLICY, T0)
    assert late.step is early.step is S.DOWNLOADED
    assert late.step_since == T0  # the server's clock is recorded, not the device's


def test_detail_is_kept() -> None:
    value = progress(S.DOWNLOADED)
    failed = apply_report(value, report(value, "failed", detail="disk full"), POLICY, T0)
    assert failed.detail == "disk full"


# --- failures, retries, timeouts -------------------------------------------------------------------


def open_evaluation(campaign: CampaignSnapshot | None = None) -> Evaluation:
    return Evaluation(Decision.PROCEED, campaign or running(), True, ("test",))


def test_failure_waits_for_a_retry_with_backoff() -> None:
    failed = apply_report(progress(S.DOWNLOADING), report(progress(), "failed"), POLICY, T0)
    assert (failed.step, failed.retry_at, failed.deadline_at) == (S.FAILED, T0 + 5 * MINUTE, None)
    assert device_outcome(failed) is DeviceOutcome.RETRYING
    evaluation = open_evaluation()
    assert due_retries([failed], evaluation, T0 + 5 * MINUTE - dt.timedelta(microseconds=1)) == []
    [retried] = due_retries([failed], evaluation, T0 + 5 * MINUTE)
    assert retried == replace(
        failed,
        step=S.OFFERED,
        attempt=2,
        step_since=T0 + 5 * MINUTE,
        deadline_at=T0 + 5 * MINUTE + DAY,
        retry_at=None,
        detail="",
    )


def test_retries_back_off_until_exhausted_then_fail_for_good() -> None:
    value, delays = progress(), []
    evaluation = open_evaluation()
    for _ in range(3):
        value = apply_report(value, report(value, "failed"), POLICY, value.step_since)
        delays.append(None if value.retry_at is None else value.retry_at - value.step_since)
        if value.retry_at is not None:
            [value] = due_retries([value], evaluation, value.retry_at)
    assert delays == [5 * MINUTE, 10 * MINUTE, None]
    assert value.attempt == 3
    assert device_outcome(value) is DeviceOutcome.FAILED
    assert due_retries([value], evaluation, value.step_since + 30 * DAY) == []


def test_no_retries_means_every_failure_is_final() -> None:
    policy = make_policy(retry=RetryPolicy(max_retries=0))
    failed = apply_report(progress(), report(progress(), "failed"), policy, T0)
    assert failed.retry_at is None
    assert device_outcome(failed) is DeviceOutcome.FAILED


def test_rollback_is_final_at_once() -> None:
    value = progress(S.HEALTHY)
    rolled = apply_report(value, report(value, "rolled_back"), POLICY, T0)
    assert (rolled.retry_at, rolled.deadline_at) == (None, None)
    assert device_outcome(rolled) is DeviceOutcome.FAILED
    assert due_retries([rolled], open_evaluation(), T0 + 30 * DAY) == []


def test_no_retries_while_offers_are_not_allowed() -> None:
    failed = apply_report(progress(), report(progress(), "failed"), POLICY, T0)
    closed = Evaluation(Decision.WAIT_WINDOW, running(), False, ("outside",))
    assert due_retries([failed], closed, T0 + DAY) == []
    other = open_evaluation(replace(running(), id="c-2"))
    assert due_retries([failed], other, T0 + DAY) == []


@pytest.mark.parametrize(
    ("step", "phase", "timeout"),
    [
        (S.OFFERED, Phase.OFFER, DAY),
        (S.DOWNLOADING, Phase.DOWNLOAD, 2 * HOUR),
        (S.DOWNLOADED, Phase.INSTALL, 30 * MINUTE),
        (S.INSTALLED, Phase.ACTIVATE, 15 * MINUTE),
    ],
)
def test_silent_device_times_out_at_its_phase_deadline(
    step: DeviceStep, phase: Phase, timeout: dt.timedelta
) -> None:
    path = HAPPY[: HAPPY.index(step) + 1] if step is not S.OFFERED else []
    value = walk(progress(), path)
    deadline = value.step_since + timeout
    assert value.deadline_at == deadline
    assert timeouts([value], POLICY, deadline - dt.timedelta(microseconds=1)) == []
    [timed_out] = timeouts([value], POLICY, deadline)
    assert (timed_out.step, timed_out.retry_at) == (S.TIMED_OUT, deadline + 5 * MINUTE)
    assert timed_out.detail == f"silent in the {phase} phase past its timeout"
    assert device_outcome(timed_out) is DeviceOutcome.RETRYING


def test_activate_phase_deadline_is_not_extended_by_its_steps() -> None:
    installed = walk(progress(), HAPPY[:3])
    healthy = walk(installed, [S.REBOOTED, S.HEALTHY], every=7 * MINUTE)
    assert healthy.deadline_at == installed.deadline_at == installed.step_since + 15 * MINUTE
    [timed_out] = timeouts([healthy], POLICY, installed.step_since + 15 * MINUTE)
    assert timed_out.step is S.TIMED_OUT


def test_final_and_pending_devices_never_time_out() -> None:
    rows = [
        progress(S.PENDING),
        walk(progress(), HAPPY),
        apply_report(progress(), report(progress(), "failed"), POLICY, T0),
    ]
    assert timeouts(rows, POLICY, T0 + 365 * DAY) == []


def test_exhausted_timeout_is_final() -> None:
    value = progress(attempt=3)
    [timed_out] = timeouts([value], POLICY, T0 + DAY)
    assert timed_out.retry_at is None
    assert device_outcome(timed_out) is DeviceOutcome.FAILED


def test_offer_opens_the_first_attempt() -> None:
    offered = offer(progress(S.PENDING), open_evaluation(), T0 + HOUR)
    assert (offered.step, offered.attempt, offered.deadline_at) == (S.OFFERED, 1, T0 + HOUR + DAY)


@pytest.mark.parametrize(
    ("value", "evaluation", "message"),
    [
        (progress(S.PENDING, wave=1), open_evaluation(), "wave 1, which is not open"),
        (
            progress(S.PENDING),
            Evaluation(Decision.WAIT_WINDOW, running(), False, ("outside every window",)),
            "offers nothing now: outside every window",
        ),
        (progress(S.OFFERED), open_evaluation(), "is offered, not pending"),
        (progress(S.PENDING, campaign="c-2"), open_evaluation(), "not in campaign c-1"),
    ],
)
def test_offer_refused(value: DeviceProgress, evaluation: Evaluation, message: str) -> None:
    with pytest.raises(CampaignStateError, match=message):
        offer(value, evaluation, T0)


def test_wave_stats_count_by_outcome() -> None:
    rows = [
        progress(S.PENDING),
        progress(S.DOWNLOADING),
        progress(S.COMMITTED),
        progress(S.COMMITTED, wave=1),
        progress(S.ROLLED_BACK),
        progress(S.FAILED, retry_at=T0),
        progress(S.TIMED_OUT, retry_at=None),
    ]
    assert wave_stats(rows, 3) == (
        WaveStats(0, total=6, committed=1, failed=2, retrying=1),
        WaveStats(1, total=1, committed=1),
        WaveStats(2, total=0),
    )


@pytest.mark.parametrize("counts", [(-1, 0, 0, 0), (5, 3, 2, 1), (5, 0, -1, 0)])
def test_inconsistent_wave_stats_are_refused(counts: tuple[int, int, int, int]) -> None:
    with pytest.raises(PlanInvalid, match="inconsistent counts"):
        WaveStats(0, *counts)


# --- evaluation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [C.DRAFT, C.APPROVED, C.COMPLETED, C.ABORTED])
def test_idle_when_not_running(state: CampaignState) -> None:
    campaign = CampaignSnapshot(id="c-1", state=state, policy=POLICY)
    evaluation = evaluate(campaign, stats((10, 0, 9), (90, 0, 0), (900, 0, 0)), T0)
    assert evaluation == Evaluation(Decision.IDLE, campaign, False, (f"campaign c-1 is {state}",))


def test_stats_must_list_every_wave_in_order() -> None:
    with pytest.raises(PlanInvalid, match=r"stats must list waves 0\.\.2"):
        evaluate(running(), stats((10, 0, 0), (90, 0, 0)), T0)


def test_proceed_below_the_success_threshold() -> None:
    evaluation = evaluate(running(), stats((10, 8, 0), (90, 0, 0), (900, 0, 0)), T0 + HOUR)
    assert evaluation.decision is Decision.PROCEED
    assert evaluation.may_offer
    assert evaluation.campaign == running()
    assert evaluation.reasons == ("wave canary: 8 of 10 committed, 0 failed; success needs 90%",)


@pytest.mark.parametrize(("committed", "reached"), [(19, True), (18, False)])
def test_success_threshold_boundary(committed: int, reached: bool) -> None:
    policy = make_policy(waves=(replace(CANARY, success_threshold_ppm=950_000), MIDDLE, REST))
    evaluation = evaluate(running(policy), stats((20, committed, 0), (90, 0, 0), (900, 0, 0)), T0)
    assert (evaluation.campaign.success_since == T0) is reached


def test_cascade_after_success_and_soak() -> None:
    counts = stats((10, 9, 0), (90, 0, 0), (900, 0, 0))
    first = evaluate(running(), counts, T0 + HOUR)
    assert first.decision is Decision.PROCEED
    assert first.campaign == running(success_since=T0 + HOUR)
    assert "soaking until 2025-01-06 14:00:00+00:00" in first.reasons[0]
    early = evaluate(first.campaign, counts, T0 + 2 * HOUR - dt.timedelta(microseconds=1))
    assert early.decision is Decision.PROCEED
    cascade = evaluate(first.campaign, counts, T0 + 2 * HOUR)
    assert cascade.decision is Decision.CASCADE
    assert cascade.may_offer
    assert cascade.campaign == running(open_waves=2, wave_opened_at=T0 + 2 * HOUR, reason=cascade.reasons[0])
    assert cascade.reasons == ("wave canary reached success and soaked; opening middle",)


def test_deadline_does_not_apply_while_soaking() -> None:
    soaking = running(success_since=T0 + DAY - MINUTE)
    evaluation = evaluate(soaking, stats((10, 9, 0), (90, 0, 0), (900, 0, 0)), T0 + DAY)
    assert evaluation.decision is Decision.PROCEED


def test_cascade_skips_empty_waves() -> None:
    evaluation = evaluate(running(success_since=T0), stats((1, 1, 0), (0, 0, 0), (0, 0, 0)), T0 + HOUR)
    assert evaluation.decision is Decision.CASCADE
    assert evaluation.campaign.open_waves == 3
    assert evaluation.reasons == ("wave canary reached success and soaked; opening middle, rest",)
    done = evaluate(evaluation.campaign, stats((1, 1, 0), (0, 0, 0), (0, 0, 0)), T0 + HOUR)
    assert done.decision is Decision.COMPLETE
    assert done.campaign.state is C.COMPLETED


@pytest.mark.parametrize(("total", "paused"), [(20, True), (21, False)])
def test_error_threshold_boundary(total: int, paused: bool) -> None:
    # 1 failed of 20 is exactly 5%: 1 * 1_000_000 >= 50_000 * 20; of 21 it is below.
    counts = stats((10, 9, 0), (total, 0, 1), (900, 0, 0))
    evaluation = evaluate(running(open_waves=2), counts, T0 + MINUTE)
    if paused:
        assert evaluation.decision is Decision.PAUSE
        assert evaluation.reasons == (
            "wave middle: 1 of 20 devices failed for good, reaching its error threshold of 5%",
        )
        assert evaluation.campaign.state is C.PAUSED
        assert evaluation.campaign.reason == evaluation.reasons[0]
        assert not evaluation.may_offer
    else:
        assert evaluation.decision is Decision.PROCEED


def test_retrying_failures_do_not_count_against_thresholds() -> None:
    evaluation = evaluate(running(), stats((10, 0, 0, 9), (90, 0, 0), (900, 0, 0)), T0)
    assert evaluation.decision is Decision.PROCEED


def test_an_earlier_wave_can_still_pause_the_rollout() -> None:
    counts = stats((10, 8, 1), (90, 10, 0), (900, 0, 0))  # canary: 1 of 10 is its 10% threshold
    evaluation = evaluate(running(open_waves=2), counts, T0)
    assert evaluation.decision is Decision.PAUSE
    assert evaluation.reasons[0].startswith("wave canary: 1 of 10 devices failed for good")


@pytest.mark.parametrize(("failed", "decision"), [(5, Decision.ABORT), (4, Decision.PAUSE)])
def test_abort_threshold_boundary_wins_over_pause(failed: int, decision: Decision) -> None:
    evaluation = evaluate(running(), stats((10, 0, failed), (90, 0, 0), (900, 0, 0)), T0)
    assert evaluation.decision is decision
    if decision is Decision.ABORT:
        assert evaluation.campaign.state is C.ABORTED
        assert evaluation.reasons == (
            "wave canary: 5 of 10 devices failed for good, reaching its abort threshold of 50%",
        )


def test_abort_threshold_applies_while_paused() -> None:
    paused = running(state=C.PAUSED)
    assert evaluate(paused, stats((10, 0, 4), (90, 0, 0), (900, 0, 0)), T0).decision is Decision.IDLE
    aborted = evaluate(paused, stats((10, 0, 5), (90, 0, 0), (900, 0, 0)), T0)
    assert (aborted.decision, aborted.campaign.state) == (Decision.ABORT, C.ABORTED)


@pytest.mark.parametrize(("elapsed", "decision"), [(DAY - MINUTE, Decision.PROCEED), (DAY, Decision.PAUSE)])
def test_deadline_without_success_pauses(elapsed: dt.timedelta, decision: Decision) -> None:
    evaluation = evaluate(running(), stats((10, 5, 0), (90, 0, 0), (900, 0, 0)), T0 + elapsed)
    assert evaluation.decision is decision
    if decision is Decision.PAUSE:
        assert evaluation.reasons == (
            "wave canary: 5 of 10 committed, 0 failed: its deadline of 1 day, 0:00:00 passed without "
            "reaching success",
        )
        resumed = apply_action(evaluation.campaign, A.RESUME, T0 + 2 * DAY)
        again = evaluate(resumed, stats((10, 5, 0), (90, 0, 0), (900, 0, 0)), T0 + 2 * DAY + HOUR)
        assert again.decision is Decision.PROCEED


def test_wave_settled_below_success_pauses() -> None:
    # 91% committed is below 95%, and 9% failed is below the 10% error threshold: it will never cascade.
    policy = make_policy(waves=(replace(CANARY, success_threshold_ppm=950_000), MIDDLE, REST))
    evaluation = evaluate(running(policy), stats((100, 91, 9), (90, 0, 0), (900, 0, 0)), T0)
    assert evaluation.decision is Decision.PAUSE
    assert evaluation.reasons == (
        "wave canary: 91 of 100 committed, 9 failed: every device is final below the success threshold",
    )


def test_last_wave_success_waits_for_every_device_then_completes() -> None:
    counts = stats((10, 10, 0), (90, 90, 0), (900, 880, 0))
    waiting = evaluate(running(open_waves=3), counts, T0)
    assert waiting.decision is Decision.PROCEED
    assert waiting.reasons == ("last wave rest reached success; waiting for its devices to finish",)
    assert waiting.campaign.success_since == T0
    later = evaluate(waiting.campaign, stats((10, 10, 0), (90, 90, 0), (900, 899, 0)), T0 + 30 * DAY)
    assert later.decision is Decision.PROCEED


def test_complete_when_every_device_is_final() -> None:
    final = stats((10, 10, 0), (90, 90, 0), (900, 890, 10))
    evaluation = evaluate(running(open_waves=3), final, T0)
    assert evaluation.decision is Decision.COMPLETE
    assert evaluation.campaign.state is C.COMPLETED
    assert evaluation.reasons == ("every wave is open and every device is final: 990 of 1000 committed",)


def test_outside_the_window_no_new_offers() -> None:
    policy = make_policy(windows=(MaintenanceWindow.parse("Mon-Fri 01:00-05:00"),))
    counts = stats((10, 5, 0), (90, 0, 0), (900, 0, 0))
    outside = evaluate(running(policy), counts, at(0, 12))
    assert (outside.decision, outside.may_offer) == (Decision.WAIT_WINDOW, False)
    assert outside.reasons[1] == "outside every maintenance window (Mon-Fri 01:00-05:00 UTC)"
    inside = evaluate(running(policy), counts, at(1, 2))
    assert (inside.decision, inside.may_offer) == (Decision.PROCEED, True)


def test_cascade_outside_the_window_opens_the_wave_without_offers() -> None:
    policy = make_policy(windows=(MaintenanceWindow.parse("Sat 22:00-02:00"),))
    campaign = running(policy, success_since=T0)
    evaluation = evaluate(campaign, stats((10, 10, 0), (90, 0, 0), (900, 0, 0)), at(0, 18))
    assert (evaluation.decision, evaluation.may_offer) == (Decision.CASCADE, False)
    assert evaluation.campaign.open_waves == 2
    assert evaluation.reasons[1] == "outside every maintenance window: no new offers"
    sunday_night = evaluate(evaluation.campaign, stats((10, 10, 0), (90, 0, 0), (900, 0, 0)), at(6, 1))
    assert sunday_night.may_offer


# --- a campaign end to end ---------------------------------------------------------------------------


def test_campaign_end_to_end_pauses_in_the_call_that_sees_the_breach() -> None:
    policy = make_policy(retry=RetryPolicy(max_retries=0))
    plan = plan_waves(ids(1000), policy)
    rows = {r.device_id: r for r in pending_progress(plan, campaign="c-1", release="2.0.0", now=T0)}
    campaign = apply_action(
        apply_action(CampaignSnapshot(id="c-1", state=C.DRAFT, policy=policy), A.APPROVE, T0), A.START, T0
    )
    now = T0

    def step_all(wave: int, steps: list[DeviceStep]) -> Evaluation:
        nonlocal now
        evaluation = evaluate(campaign, wave_stats(rows.values(), 3), now)
        for device_id in plan.device_ids[plan.waves[wave].start : plan.waves[wave].end]:
            value = offer(rows[device_id], evaluation, now)
            for step in steps:
                now += dt.timedelta(seconds=1)
                value = apply_report(value, report(value, step, at=now), policy, now)
            rows[device_id] = value
            evaluation = evaluate(campaign, wave_stats(rows.values(), 3), now)
            if evaluation.decision is not Decision.PROCEED:
                return evaluation
        return evaluation

    assert step_all(0, HAPPY).campaign.success_since is not None
    campaign = evaluate(campaign, wave_stats(rows.values(), 3), now).campaign
    now += HOUR
    cascade = evaluate(campaign, wave_stats(rows.values(), 3), now)
    assert cascade.decision is Decision.CASCADE
    campaign = cascade.campaign
    outcome = step_all(1, [S.DOWNLOADING, S.FAILED])
    # wave middle has 90 devices: 5% is 4.5, so the 5th final failure is the breach.
    assert outcome.decision is Decision.PAUSE
    assert Counter(r.step for r in rows.values() if r.wave == 1)[S.FAILED] == 5
    campaign = outcome.campaign
    assert campaign.state is C.PAUSED
    paused = evaluate(campaign, wave_stats(rows.values(), 3), now)
    pending = rows[plan.device_ids[plan.waves[1].end - 1]]
    with pytest.raises(CampaignStateError, match="offers nothing now"):
        offer(pending, paused, now)


@pytest.mark.parametrize(
    ("days", "start", "end", "message"),
    [
        ((), 0, 60, "distinct weekday numbers"),
        ((2, 1), 0, 60, "distinct weekday numbers"),
        ((1, 1), 0, 60, "distinct weekday numbers"),
        ((7,), 0, 60, "distinct weekday numbers"),
        ((0,), -1, 60, "start must be in 00:00..23:59"),
        ((0,), 1440, 60, "start must be in 00:00..23:59"),
        ((0,), 0, 0, "end in 00:01..24:00"),
        ((0,), 0, 1441, "end in 00:01..24:00"),
    ],
)
def test_window_values_are_checked(days: tuple[int, ...], start: int, end: int, message: str) -> None:
    with pytest.raises(PlanInvalid, match=message):
        MaintenanceWindow(days, start, end)


class HugeTargetSet(Sequence[str]):
    """Says it holds more devices than a campaign may target, without holding them."""

    def __len__(self) -> int:
        return MAX_DEVICES + 1

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        raise AssertionError("plan_waves must refuse before reading the devices")


def test_too_many_devices_are_refused_before_any_work() -> None:
    with pytest.raises(PlanInvalid, match=f"{MAX_DEVICES + 1} devices targeted; at most {MAX_DEVICES}"):
        plan_waves(HugeTargetSet(), POLICY)
