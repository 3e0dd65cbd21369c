"""CampaignService on a real installation (SQLite, and PostgreSQL through scripts/test): targeting,
signed-scope approval (staged under a 2-of-2 release role until reconciled), operator actions,
check-ins (offers only to open waves, withdrawals for quarantined devices, director renewal,
maintenance windows), step reports (nonsense changes nothing; an error threshold pauses at once),
and the tick (timeouts, retries with backoff).

Eight devices ``cam-0`` .. ``cam-7`` run release 1.0 of ``cam-x``; campaigns offer 2.0 in two waves,
a canary of 25 % (two devices) and the rest.
"""

from __future__ import annotations

import datetime as dt

import pytest

from fleetguard.errors import Conflict
from fleetguard.inventory.lifecycle import Action
from fleetguard.ota.campaigns import Campaign
from fleetguard.ota.director import DirectorTarget
from fleetguard.ota.errors import CampaignNotFound, CampaignStateError, ReportInvalid
from fleetguard.ota.rollout import (
    CampaignAction,
    CampaignState,
    Decision,
    DeviceProgress,
    DeviceStep,
    PlanInvalid,
    RetryPolicy,
    Target,
    WaveStats,
    backoff,
)
from fleetguard.ota.wire import CheckIn, CheckInReply, StepReport

from .conftest import HW, HW2, SALT, T0, Ota, needs_mksquashfs, policy

pytestmark = needs_mksquashfs

DEVICES = [f"cam-{i}" for i in range(8)]
SUCCESS = ("downloading", "downloaded", "installed", "rebooted", "healthy", "committed")


@pytest.fixture
def ota_database_url(database_url: str) -> str:
    """Both databases (the PostgreSQL half is skipped without FLEETGUARD_TEST_POSTGRES_URL)."""
    return database_url


@pytest.fixture
def fleet(ota: Ota) -> Ota:
    ota.publish(ota.images.v1, "1.0", 1)
    ota.publish(ota.images.v2, "2.0", 2)
    for device_id in DEVICES:
        ota.register(device_id)
    return ota


def create(ota: Ota, campaign_id: str = "c1", **kwargs: object) -> Campaign:
    kwargs.setdefault("policy", policy())
    return ota.campaigns.create(
        hardware_id=HW,
        release="2.0",
        actor="alice",
        campaign_id=campaign_id,
        **kwargs,  # type: ignore[arg-type]
    )


def running(ota: Ota, campaign_id: str = "c1", **kwargs: object) -> Campaign:
    create(ota, campaign_id, **kwargs)
    ota.campaigns.approve(campaign_id, [ota.keys.hw], actor="bob")
    return ota.campaigns.act(campaign_id, CampaignAction.START, actor="bob")


def waves(ota: Ota, campaign_id: str = "c1") -> list[list[str]]:
    result: list[list[str]] = [[] for _ in ota.campaigns.get(campaign_id).waves]
    for progress in ota.campaigns.devices(campaign_id):
        result[progress.wave].append(progress.device_id)
    return result


def progress(ota: Ota, device_id: str, campaign_id: str = "c1") -> DeviceProgress:
    (found,) = [p for p in ota.campaigns.devices(campaign_id) if p.device_id == device_id]
    return found


def check_in(ota: Ota, device_id: str, version: int = 0, hardware_id: str = HW) -> CheckInReply:
    return ota.campaigns.check_in(device_id, CheckIn(hardware_id, "1.0", 1, version))


def report(
    ota: Ota, device_id: str, step: str, *, campaign_id: str = "c1", release: str = "2.0", detail: str = ""
) -> None:
    ota.campaigns.report(device_id, StepReport(campaign_id, release, step, detail, ota.clock.now))


def stats(ota: Ota, campaign_id: str = "c1") -> list[WaveStats]:
    return [wave.stats for wave in ota.campaigns.get(campaign_id).waves]


def assignment(ota: Ota, device_id: str) -> tuple[int, tuple[DirectorTarget, ...]] | None:
    current = ota.repositories.director.current(device_id)
    return None if current is None else (current.version, current.targets)


def offered_target(ota: Ota, campaign_id: str = "c1") -> DirectorTarget:
    one, two = ota.releases.get(HW, "1.0"), ota.releases.get(HW, "2.0")
    return DirectorTarget(
        path=two.target_path, length=two.length, sha256=two.sha256, hardware_id=HW, release_counter=2,
        campaign=campaign_id, delta_path=f"{HW}/deltas/{one.sha256[:16]}-{two.sha256[:16]}.delta",
    )  # fmt: skip


# --- create: targeting -----------------------------------------------------------------------------


def test_create_plans_the_targeted_devices_into_waves_as_a_draft(fleet: Ota) -> None:
    fleet.register("cam-new", version="2.0")  # runs the release already
    fleet.register("lamp-1", model="lamp")  # another hardware id
    fleet.register("cam-old")
    fleet.transition("cam-old", Action.DECOMMISSION)
    fleet.register("cam-fresh", active=False)  # registered only: planned, offered nothing until active

    campaign = create(fleet)

    planned = sorted([*DEVICES, "cam-fresh"])
    assert (campaign.id, campaign.state, campaign.devices, campaign.scope_ppm) == (
        "c1", CampaignState.DRAFT, 9, 0,
    )  # fmt: skip
    assert (campaign.not_before, campaign.not_after) == (T0, T0 + dt.timedelta(days=30))
    assert sorted([d for wave in waves(fleet) for d in wave]) == planned
    assert [(w.index, w.name, w.open, w.stats) for w in campaign.waves] == [
        (0, "canary", False, WaveStats(0, 3)),
        (1, "rest", False, WaveStats(1, 6)),
    ]
    assert {p.step for p in fleet.campaigns.devices("c1")} == {DeviceStep.PENDING}
    assert fleet.events("ota.campaign.created") == [
        (
            "alice",
            "campaign:c1",
            {"devices": 9, "release": "2.0", "hardware_id": HW, "waves": "canary=3, rest=6"},
        )
    ]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (Target(device_type="cam"), ["t-berlin", "t-paris"]),
        (Target(site="berlin"), ["t-berlin", "t-berlin-plain"]),
        (Target(labels={"ring": "beta"}), ["t-paris", "t-plain"]),
        (Target(site="berlin", labels={"ring": "beta"}), []),
        (Target(firmware_version="0.9"), ["t-plain"]),
        (Target(firmware_version_not="1.0"), ["t-plain"]),
    ],
)
def test_create_targets_by_type_site_labels_and_firmware_version(
    ota: Ota, target: Target, expected: list[str]
) -> None:
    ota.publish(ota.images.v1, "1.0", 1)
    ota.publish(ota.images.v2, "2.0", 2)
    ota.runtime.inventory.add_device_type("cam", actor="ops")
    ota.runtime.inventory.add_site("berlin", "Berlin", actor="ops")
    ota.runtime.inventory.add_site("paris", "Paris", actor="ops")
    ota.register("t-berlin", device_type="cam", site="berlin", labels={"ring": "stable"})
    ota.register("t-paris", device_type="cam", site="paris", labels={"ring": "beta"})
    ota.register("t-berlin-plain", site="berlin")
    ota.register("t-plain", version="0.9", labels={"ring": "beta"})

    if not expected:
        with pytest.raises(PlanInvalid, match=r"no device is targeted"):
            create(ota, target=target)
        assert ota.campaigns.campaigns() == []
        return
    create(ota, target=target)

    assert sorted([d for wave in waves(ota) for d in wave]) == expected


def test_devices_in_another_unfinished_campaign_are_left_out_until_it_ends(fleet: Ota) -> None:
    create(fleet, "c1", target=Target(labels={}, firmware_version="1.0"))
    fleet.register("cam-late")

    second = create(fleet, "c2")

    assert (second.devices, [d for wave in waves(fleet, "c2") for d in wave]) == (1, ["cam-late"])
    fleet.campaigns.act("c1", CampaignAction.ABORT, actor="bob")
    fleet.campaigns.act("c2", CampaignAction.ABORT, actor="bob")
    assert create(fleet, "c3").devices == 9


def test_no_targeted_device_is_plan_invalid_and_nothing_is_stored(fleet: Ota) -> None:
    count = fleet.event_count()

    with pytest.raises(PlanInvalid, match=r"no device is targeted"):
        create(fleet, target=Target(site="nowhere"))

    assert fleet.campaigns.campaigns() == []
    assert fleet.event_count() == count
    with pytest.raises(CampaignNotFound, match=r"no campaign 'c1'"):
        fleet.campaigns.get("c1")


def test_create_refuses_a_staged_release_a_bad_window_a_bad_id_and_a_duplicate(fleet: Ota) -> None:
    fleet.add_two_key_hardware()
    fleet.publish(fleet.images.v3, "3.0", 3, hardware_id=HW2, signers=[fleet.keys.hw])
    create(fleet, "c1")
    fleet.register("cam-dup")
    count = fleet.event_count()

    with pytest.raises(Conflict, match=r"release 3.0 of cam-y is staged, not published"):
        fleet.campaigns.create(hardware_id=HW2, release="3.0", policy=policy(), actor="alice")
    with pytest.raises(PlanInvalid, match=r"the campaign window ends before it starts"):
        create(fleet, "c2", not_before=T0, not_after=T0)
    with pytest.raises(PlanInvalid, match=r"campaign id 'c 2' must be letters"):
        create(fleet, "c 2")
    with pytest.raises(Conflict, match=r"campaign c1 exists already"):
        create(fleet, "c1")

    assert [c.id for c in fleet.campaigns.campaigns()] == ["c1"]
    assert fleet.event_count() == count


# --- approve: the signed scope ---------------------------------------------------------------------


def _scopes(ota: Ota) -> list[dict[str, object]]:
    custom = ota.image_targets()[ota.releases.get(HW, "2.0").target_path]
    scopes: list[dict[str, object]] = custom["fleetguard"]["scopes"]
    return scopes


def test_approve_signs_a_scope_covering_exactly_the_planned_waves(fleet: Ota) -> None:
    create(fleet)
    planned = fleet.campaigns.devices("c1")
    bound = max(p.bucket for p in planned) + 1
    canary_bound = max(p.bucket for p in planned if p.wave == 0) + 1
    version = fleet.image_version()

    approved = fleet.campaigns.approve("c1", [fleet.keys.hw], actor="bob", through_wave=0)

    assert (approved.state, approved.scope_ppm, approved.reason) == (
        CampaignState.APPROVED, canary_bound, f"scope of {canary_bound} ppm signed",
    )  # fmt: skip
    assert fleet.image_version() == version + 1
    assert _scopes(fleet) == [
        {
            "campaign": "c1", "fraction_ppm": canary_bound, "salt": SALT, "hardware_ids": [HW],
            "not_before": "2026-01-05T10:00:00Z", "not_after": "2026-02-04T10:00:00Z",
        }
    ]  # fmt: skip
    # The canary's devices are inside the fraction, every later one outside it.
    assert all(p.bucket < canary_bound for p in planned if p.wave == 0)
    assert all(p.bucket >= canary_bound for p in planned if p.wave > 0)
    assert canary_bound < bound <= 1_000_000
    assert [(e[0], e[2]["state"]) for e in fleet.events("ota.campaign.approve")] == [("bob", "approved")]


def test_approve_of_every_wave_covers_the_largest_planned_bucket(fleet: Ota) -> None:
    create(fleet)
    bound = max(p.bucket for p in fleet.campaigns.devices("c1")) + 1

    assert fleet.campaigns.approve("c1", [fleet.keys.hw], actor="bob").scope_ppm == bound
    assert [s["fraction_ppm"] for s in _scopes(fleet)] == [bound]


def test_approve_refuses_a_wave_that_does_not_exist_and_a_campaign_that_is_not_a_draft(fleet: Ota) -> None:
    create(fleet)
    version = fleet.image_version()

    with pytest.raises(PlanInvalid, match=r"the campaign has waves 0..1, not 2"):
        fleet.campaigns.approve("c1", [fleet.keys.hw], actor="bob", through_wave=2)
    assert (fleet.campaigns.get("c1").state, fleet.image_version()) == (CampaignState.DRAFT, version)

    fleet.campaigns.approve("c1", [fleet.keys.hw], actor="bob")
    with pytest.raises(CampaignStateError, match=r"campaign c1 is approved; only a draft is approved"):
        fleet.campaigns.approve("c1", [fleet.keys.hw], actor="bob")
    with pytest.raises(CampaignNotFound, match=r"no campaign 'c9'"):
        fleet.campaigns.approve("c9", [fleet.keys.hw], actor="bob")


def test_a_staged_approval_stays_a_draft_until_reconciled(fleet: Ota) -> None:
    fleet.add_two_key_hardware()
    fleet.publish(fleet.images.v1, "1.0", 1, hardware_id=HW2, signers=[fleet.keys.hw, fleet.keys.hw2])
    for device_id in ("y-1", "y-2"):
        fleet.register(device_id, model=HW2, version="0.9")
    fleet.campaigns.create(hardware_id=HW2, release="1.0", policy=policy(), actor="alice", campaign_id="cy")

    staged = fleet.campaigns.approve("cy", [fleet.keys.hw], actor="bob")

    bound = staged.scope_ppm
    assert (staged.state, staged.reason) == (
        CampaignState.DRAFT, f"scope of {bound} ppm staged: 1 of 2 signatures",
    )  # fmt: skip
    assert [e[2] for e in fleet.events("ota.campaign.approval-staged")] == [{"scope_ppm": bound}]
    with pytest.raises(CampaignStateError, match=r"cannot go from draft to running"):
        fleet.campaigns.act("cy", CampaignAction.START, actor="bob")
    assert fleet.campaigns.reconcile() == []

    fleet.repositories.image.sign_staged("hw-cam-y", [fleet.keys.hw2])

    assert fleet.campaigns.reconcile() == ["cy"]
    assert fleet.campaigns.get("cy").state is CampaignState.APPROVED
    assert [(e[0], e[2]["state"]) for e in fleet.events("ota.campaign.approve")] == [
        ("fleetguard ota sign", "approved")
    ]
    assert fleet.campaigns.reconcile() == []
    assert fleet.campaigns.act("cy", CampaignAction.START, actor="bob").state is CampaignState.RUNNING


# --- operator actions ------------------------------------------------------------------------------


def test_start_is_refused_before_approval_and_nothing_changes(fleet: Ota) -> None:
    before = create(fleet)
    count = fleet.event_count()

    with pytest.raises(CampaignStateError, match=r"campaign cannot go from draft to running \(start\)"):
        fleet.campaigns.act("c1", CampaignAction.START, actor="bob")

    assert fleet.campaigns.get("c1") == before
    assert fleet.event_count() == count
    assert check_in(fleet, "cam-0") == CheckInReply(update=False, director_version=0)


@pytest.mark.parametrize("action", [CampaignAction.APPROVE, CampaignAction.COMPLETE])
def test_approve_and_complete_are_not_operator_actions(fleet: Ota, action: CampaignAction) -> None:
    create(fleet)

    with pytest.raises(CampaignStateError, match=rf"{action} is not an operator action here"):
        fleet.campaigns.act("c1", action, actor="bob")

    assert fleet.campaigns.get("c1").state is CampaignState.DRAFT


def test_start_after_the_signed_window_ended_is_refused(fleet: Ota) -> None:
    create(fleet, not_after=T0 + dt.timedelta(hours=1))
    fleet.campaigns.approve("c1", [fleet.keys.hw], actor="bob")
    fleet.clock.advance(dt.timedelta(hours=1))

    with pytest.raises(CampaignStateError, match=r"campaign c1's signed window ended at"):
        fleet.campaigns.act("c1", CampaignAction.START, actor="bob")

    assert fleet.campaigns.get("c1").state is CampaignState.APPROVED


def test_start_opens_the_first_wave(fleet: Ota) -> None:
    campaign = running(fleet)

    assert (campaign.state, [w.open for w in campaign.waves]) == (CampaignState.RUNNING, [True, False])
    assert [(e[0], e[2]) for e in fleet.events("ota.campaign.start")] == [
        ("bob", {"reason": "start by bob", "state": "running"})
    ]


def test_abort_stops_offers_and_withdraws_what_was_offered(fleet: Ota) -> None:
    running(fleet)
    canary, rest = waves(fleet)
    check_in(fleet, canary[0])

    aborted = fleet.campaigns.act("c1", CampaignAction.ABORT, actor="bob", reason="bad build")

    assert (aborted.state, aborted.reason) == (CampaignState.ABORTED, "bad build")
    assert {progress(fleet, d).detail for d in rest} == {"campaign aborted"}
    assert progress(fleet, canary[0]).detail == ""
    assert check_in(fleet, canary[0], 1) == CheckInReply(update=True, director_version=2)
    assert assignment(fleet, canary[0]) == (2, ())
    assert check_in(fleet, canary[1]) == CheckInReply(update=False, director_version=0)
    with pytest.raises(CampaignStateError, match=r"campaign cannot go from aborted to running"):
        fleet.campaigns.act("c1", CampaignAction.RESUME, actor="bob")
    assert [e[2] for e in fleet.events("ota.campaign.abort")] == [{"reason": "bad build", "state": "aborted"}]


def test_pause_stops_new_offers_but_not_devices_in_flight(fleet: Ota) -> None:
    running(fleet)
    canary, _ = waves(fleet)
    check_in(fleet, canary[0])

    fleet.campaigns.act("c1", CampaignAction.PAUSE, actor="bob")

    assert check_in(fleet, canary[1]) == CheckInReply(update=False, director_version=0)
    assert progress(fleet, canary[1]).step is DeviceStep.PENDING
    assert check_in(fleet, canary[0], 1) == CheckInReply(update=False, director_version=1)
    report(fleet, canary[0], "downloading")
    assert progress(fleet, canary[0]).step is DeviceStep.DOWNLOADING

    fleet.campaigns.act("c1", CampaignAction.RESUME, actor="bob")
    assert check_in(fleet, canary[1]) == CheckInReply(update=True, director_version=1)


# --- check-in --------------------------------------------------------------------------------------


def test_only_devices_of_an_open_wave_are_offered(fleet: Ota) -> None:
    running(fleet)
    canary, rest = waves(fleet)

    for device_id in canary:
        assert check_in(fleet, device_id) == CheckInReply(update=True, director_version=1)
        assert assignment(fleet, device_id) == (1, (offered_target(fleet),))
        offered = progress(fleet, device_id)
        assert (offered.step, offered.attempt, offered.step_since, offered.deadline_at) == (
            DeviceStep.OFFERED, 1, T0, T0 + dt.timedelta(days=1),
        )  # fmt: skip
    for device_id in rest:
        assert check_in(fleet, device_id) == CheckInReply(update=False, director_version=0)
        assert assignment(fleet, device_id) is None
        assert progress(fleet, device_id).step is DeviceStep.PENDING
    # A second check-in with the version it holds changes nothing.
    assert check_in(fleet, canary[0], 1) == CheckInReply(update=False, director_version=1)
    assert progress(fleet, canary[0]).attempt == 1


def test_check_in_records_what_the_device_runs(fleet: Ota) -> None:
    fleet.register("cam-solo")

    assert check_in(fleet, "cam-solo") == CheckInReply(update=False, director_version=0)

    assert fleet.status("cam-solo") == (HW, "1.0", 1, T0, None)
    assert assignment(fleet, "cam-solo") is None
    fleet.clock.advance(dt.timedelta(minutes=5))
    fleet.campaigns.check_in("cam-solo", CheckIn(HW, "2.0", 2, 0))
    assert fleet.status("cam-solo") == (HW, "2.0", 2, T0 + dt.timedelta(minutes=5), None)


def test_a_quarantined_devices_unstarted_offer_is_withdrawn_and_it_is_offered_nothing(fleet: Ota) -> None:
    running(fleet)
    first, second = waves(fleet)[0]
    check_in(fleet, first)
    fleet.transition(first, Action.QUARANTINE)
    fleet.transition(second, Action.QUARANTINE)

    assert check_in(fleet, first, 1) == CheckInReply(update=True, director_version=2)
    assert assignment(fleet, first) == (2, ())
    assert check_in(fleet, second) == CheckInReply(update=False, director_version=0)
    assert assignment(fleet, second) is None
    assert progress(fleet, second).step is DeviceStep.PENDING

    fleet.transition(first, Action.RELEASE)  # back to active: the offer it never acted on stands again
    assert check_in(fleet, first, 2) == CheckInReply(update=True, director_version=3)
    assert assignment(fleet, first) == (3, (offered_target(fleet),))


def test_a_device_that_claims_another_hardware_id_is_not_offered(fleet: Ota) -> None:
    running(fleet)
    device_id = waves(fleet)[0][0]

    assert check_in(fleet, device_id, hardware_id="cam-z") == CheckInReply(update=False, director_version=0)

    assert progress(fleet, device_id).step is DeviceStep.PENDING
    assert assignment(fleet, device_id) is None


def test_no_offer_before_the_campaign_window_opens(fleet: Ota) -> None:
    running(fleet, not_before=T0 + dt.timedelta(hours=2))
    device_id = waves(fleet)[0][0]

    assert check_in(fleet, device_id) == CheckInReply(update=False, director_version=0)
    assert progress(fleet, device_id).step is DeviceStep.PENDING

    fleet.clock.advance(dt.timedelta(hours=2))
    assert check_in(fleet, device_id) == CheckInReply(update=True, director_version=1)


def test_a_maintenance_window_closes_offers(fleet: Ota) -> None:
    running(fleet, policy=policy(windows=["Mon 12:00-13:00 UTC"]))  # T0 is Monday 10:00
    first, second = waves(fleet)[0]

    assert check_in(fleet, first) == CheckInReply(update=False, director_version=0)
    (evaluation,) = fleet.campaigns.tick()
    assert evaluation.decision is Decision.WAIT_WINDOW

    fleet.clock.advance(dt.timedelta(hours=2))
    assert check_in(fleet, first) == CheckInReply(update=True, director_version=1)
    fleet.clock.advance(dt.timedelta(hours=1))
    assert check_in(fleet, second) == CheckInReply(update=False, director_version=0)
    assert progress(fleet, second).step is DeviceStep.PENDING
    # In flight continues outside the window.
    report(fleet, first, "downloading")
    assert progress(fleet, first).step is DeviceStep.DOWNLOADING


def test_director_metadata_is_renewed_past_half_its_life(fleet: Ota) -> None:
    running(fleet)
    first, second = waves(fleet)[0]
    check_in(fleet, first)
    check_in(fleet, second)
    for step in SUCCESS:
        report(fleet, second, step)

    fleet.clock.advance(dt.timedelta(hours=11, minutes=59))
    assert check_in(fleet, first, 1) == CheckInReply(update=False, director_version=1)
    assert check_in(fleet, second, 1) == CheckInReply(update=False, director_version=1)

    fleet.clock.advance(dt.timedelta(minutes=2))
    assert check_in(fleet, first, 1) == CheckInReply(update=True, director_version=2)
    assert check_in(fleet, second, 1) == CheckInReply(update=True, director_version=2)
    current = fleet.repositories.director.current(first)
    assert current is not None
    assert (current.targets, current.expires) == (
        (offered_target(fleet),),
        fleet.clock.now + dt.timedelta(days=1),
    )
    assert assignment(fleet, second) == (2, (offered_target(fleet),))


# --- reports ---------------------------------------------------------------------------------------


def test_a_device_reporting_every_step_to_committed_is_counted_and_recorded(fleet: Ota) -> None:
    running(fleet)
    device_id = waves(fleet)[0][0]
    check_in(fleet, device_id)

    for minutes, step in enumerate(SUCCESS, start=1):
        fleet.clock.advance(dt.timedelta(minutes=1))
        report(fleet, device_id, step, detail=f"step {minutes}")
        assert progress(fleet, device_id).step is DeviceStep(step)

    done = progress(fleet, device_id)
    assert (done.step_since, done.deadline_at, done.retry_at, done.detail) == (
        T0 + dt.timedelta(minutes=6), None, None, "step 6",
    )  # fmt: skip
    assert fleet.status(device_id) == (
        HW,
        "2.0",
        2,
        T0 + dt.timedelta(minutes=6),
        T0 + dt.timedelta(minutes=6),
    )
    assert stats(fleet) == [WaveStats(0, 2, committed=1), WaveStats(1, 6)]
    assert fleet.events("ota.device.committed") == [
        ("device", f"device:{device_id}", {"campaign": "c1", "release": "2.0"})
    ]
    # Repeating the last step is idempotent.
    report(fleet, device_id, "committed")
    assert len(fleet.events("ota.device.committed")) == 1


def test_the_canary_succeeding_opens_the_next_wave_and_the_last_completes(fleet: Ota) -> None:
    running(fleet)
    canary, rest = waves(fleet)
    for wave in (canary, rest):
        for device_id in wave:
            assert check_in(fleet, device_id).update
            for step in SUCCESS:
                report(fleet, device_id, step)

    campaign = fleet.campaigns.get("c1")
    assert campaign.state is CampaignState.COMPLETED
    assert [w.stats for w in campaign.waves] == [WaveStats(0, 2, committed=2), WaveStats(1, 6, committed=6)]
    assert [e[2]["state"] for e in fleet.events("ota.campaign.cascade")] == ["running"]
    assert [e[2]["state"] for e in fleet.events("ota.campaign.complete")] == ["completed"]


@pytest.mark.parametrize(
    ("step", "campaign_id", "release", "message"),
    [
        ("exploded", "c1", "2.0", r"unknown step 'exploded'"),
        ("offered", "c1", "2.0", r"step offered is set by the server"),
        ("downloading", "c1", "2.0", r"is downloaded: downloading goes back \(next is installed\)"),
        ("rebooted", "c1", "2.0", r"is downloaded: rebooted skips a step"),
        ("installed", "c1", "1.0", r"reported release '1.0' but was offered '2.0'"),
        ("installed", "c2", "2.0", r"device cam-\d is not in campaign 'c2'"),
        ("installed", "nope", "2.0", r"device cam-\d is not in campaign 'nope'"),
    ],
)
def test_a_nonsense_report_is_refused_and_changes_nothing(
    fleet: Ota, step: str, campaign_id: str, release: str, message: str
) -> None:
    running(fleet)
    fleet.register("cam-other")
    create(fleet, "c2")
    device_id = waves(fleet)[0][0]
    check_in(fleet, device_id)
    report(fleet, device_id, "downloading")
    report(fleet, device_id, "downloaded")
    rows, before, count = fleet.device_rows("c1"), stats(fleet), fleet.event_count()

    with pytest.raises(ReportInvalid, match=message):
        report(fleet, device_id, step, campaign_id=campaign_id, release=release)

    assert fleet.device_rows("c1") == rows
    assert stats(fleet) == before
    assert fleet.event_count() == count


def test_a_report_after_the_final_step_or_from_a_clock_far_off_is_refused(fleet: Ota) -> None:
    running(fleet)
    first, second = waves(fleet)[0]
    check_in(fleet, first)
    check_in(fleet, second)
    for step in SUCCESS:
        report(fleet, first, step)
    rows, before = fleet.device_rows("c1"), stats(fleet)

    with pytest.raises(ReportInvalid, match=rf"device {first} is committed, which is final"):
        report(fleet, first, "downloading")
    with pytest.raises(ReportInvalid, match=rf"device {first} is committed, which is final"):
        report(fleet, first, "failed")
    late = StepReport("c1", "2.0", "downloading", "", fleet.clock.now + dt.timedelta(minutes=11))
    with pytest.raises(ReportInvalid, match=r"the device clock is wrong|is outside"):
        fleet.campaigns.report(second, late)
    with pytest.raises(ReportInvalid, match=r"cam-\d is pending: it was not offered"):
        report(fleet, waves(fleet)[1][0], "downloading")

    assert fleet.device_rows("c1") == rows
    assert stats(fleet) == before


def test_an_error_threshold_breach_pauses_the_campaign_in_the_same_report(fleet: Ota) -> None:
    running(fleet, policy=policy(error_ppm=500_000, max_retries=0))
    first, second = waves(fleet)[0]
    check_in(fleet, first)

    report(fleet, first, "failed", detail="disk full")

    campaign = fleet.campaigns.get("c1")
    reason = "wave canary: 1 of 2 devices failed for good, reaching its error threshold of 50%"
    assert (campaign.state, campaign.reason) == (CampaignState.PAUSED, reason)
    assert stats(fleet) == [WaveStats(0, 2, failed=1), WaveStats(1, 6)]
    assert fleet.events("ota.campaign.pause") == [
        ("fleetguard ota", "campaign:c1", {"reason": reason, "state": "paused"})
    ]
    assert fleet.events("ota.device.failed") == [
        ("device", f"device:{first}", {"campaign": "c1", "release": "2.0", "detail": "disk full"})
    ]
    assert check_in(fleet, second) == CheckInReply(update=False, director_version=0)


def test_a_failure_with_retries_left_does_not_count_against_the_threshold(fleet: Ota) -> None:
    running(fleet, policy=policy(error_ppm=500_000, max_retries=1))
    first = waves(fleet)[0][0]
    check_in(fleet, first)

    report(fleet, first, "failed")

    failed = progress(fleet, first)
    assert failed.retry_at == T0 + backoff(RetryPolicy(max_retries=1), first, 1)
    assert stats(fleet) == [WaveStats(0, 2, retrying=1), WaveStats(1, 6)]
    assert fleet.campaigns.get("c1").state is CampaignState.RUNNING


# --- tick: timeouts and retries ---------------------------------------------------------------------


def test_tick_times_out_silent_devices_and_retries_come_due_with_backoff(fleet: Ota) -> None:
    running(fleet)
    device_id = waves(fleet)[0][0]
    check_in(fleet, device_id)
    retry = RetryPolicy()

    fleet.clock.advance(dt.timedelta(hours=23, minutes=59))
    fleet.campaigns.tick()
    assert progress(fleet, device_id).step is DeviceStep.OFFERED

    fleet.clock.advance(dt.timedelta(minutes=1))
    (evaluation,) = fleet.campaigns.tick()
    first_timeout = fleet.clock.now
    timed_out = progress(fleet, device_id)
    assert (timed_out.step, timed_out.attempt, timed_out.deadline_at, timed_out.detail) == (
        DeviceStep.TIMED_OUT, 1, None, "silent in the offer phase past its timeout",
    )  # fmt: skip
    assert timed_out.retry_at == first_timeout + backoff(retry, device_id, 1)
    assert dt.timedelta(minutes=2, seconds=30) <= backoff(retry, device_id, 1) <= dt.timedelta(minutes=5)
    assert evaluation.decision is Decision.PROCEED
    assert stats(fleet)[0] == WaveStats(0, 2, retrying=1)

    # Not due yet: nothing changes (the director metadata is only renewed: past half its life).
    assert timed_out.retry_at is not None
    fleet.clock.now = timed_out.retry_at - dt.timedelta(seconds=1)
    assert check_in(fleet, device_id, 1) == CheckInReply(update=True, director_version=2)
    assert progress(fleet, device_id).step is DeviceStep.TIMED_OUT

    # Due: offered again.
    fleet.clock.now = timed_out.retry_at
    check_in(fleet, device_id, 2)
    again = progress(fleet, device_id)
    assert (again.step, again.attempt, again.retry_at) == (DeviceStep.OFFERED, 2, None)
    assert again.deadline_at == timed_out.retry_at + dt.timedelta(days=1)

    # The second silence waits twice as long (less its jitter).
    fleet.clock.advance(dt.timedelta(days=1))
    fleet.campaigns.tick()
    assert progress(fleet, device_id).retry_at == fleet.clock.now + backoff(retry, device_id, 2)
    assert dt.timedelta(minutes=5) <= backoff(retry, device_id, 2) <= dt.timedelta(minutes=10)


def test_a_retry_that_comes_due_moves_the_devices_director_metadata(fleet: Ota) -> None:
    running(fleet, policy=policy(max_retries=1))
    device_id = waves(fleet)[0][0]
    check_in(fleet, device_id)
    report(fleet, device_id, "failed", detail="download interrupted")
    retry_at = progress(fleet, device_id).retry_at
    assert retry_at == T0 + backoff(RetryPolicy(max_retries=1), device_id, 1)

    fleet.clock.now = retry_at - dt.timedelta(seconds=1)
    assert check_in(fleet, device_id, 1) == CheckInReply(update=False, director_version=1)
    fleet.clock.now = retry_at
    # The device holds version 1, which names the same image: only a new version tells it to try again.
    assert check_in(fleet, device_id, 1) == CheckInReply(update=True, director_version=2)
    assert assignment(fleet, device_id) == (2, (offered_target(fleet),))
    assert (progress(fleet, device_id).step, progress(fleet, device_id).attempt) == (DeviceStep.OFFERED, 2)
    report(fleet, device_id, "downloading")
    assert progress(fleet, device_id).step is DeviceStep.DOWNLOADING


def test_a_timeout_with_no_retry_left_is_final_and_can_pause(fleet: Ota) -> None:
    running(fleet, policy=policy(error_ppm=500_000, max_retries=0))
    first = waves(fleet)[0][0]
    check_in(fleet, first)
    report(fleet, first, "downloading")

    fleet.clock.advance(dt.timedelta(hours=2))
    (evaluation,) = fleet.campaigns.tick()

    assert (progress(fleet, first).step, progress(fleet, first).retry_at) == (DeviceStep.TIMED_OUT, None)
    assert evaluation.decision is Decision.PAUSE
    assert fleet.campaigns.get("c1").state is CampaignState.PAUSED
    assert [e[1] for e in fleet.events("ota.device.timed_out")] == [f"device:{first}"]


def test_tick_leaves_campaigns_that_are_not_live_alone(fleet: Ota) -> None:
    create(fleet)

    assert fleet.campaigns.tick() == []


def test_campaigns_are_listed_newest_first(fleet: Ota) -> None:
    create(fleet, "c1", target=Target(firmware_version="1.0", labels={}))
    fleet.register("cam-late")
    fleet.clock.advance(dt.timedelta(seconds=1))
    create(fleet, "c2")

    assert [(c.id, c.devices) for c in fleet.campaigns.campaigns()] == [("c2", 1), ("c1", 8)]
    assert [p.device_id for p in fleet.campaigns.devices("c2", step=DeviceStep.OFFERED)] == []
    assert len(fleet.campaigns.devices("c1", limit=3)) == 3
