"""TrustService and ContinuousEvaluator over a real installation (SQLite, and PostgreSQL via scripts/test).

The facts come from the inventory, the PKI and the signals table; policies are stored as versions
with an event each; the evaluator re-decides on events, drives fake enforcement points, and records
"enforced" only when every point verified the plan.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetguard.config import Settings
from fleetguard.errors import FleetguardError
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.lifecycle import Action as Lifecycle
from fleetguard.inventory.model import DeviceSpec
from fleetguard.pki.revocation import RevocationReason
from fleetguard.trust import (
    DEFAULT_POLICIES,
    Action,
    FirmwarePolicy,
    Outcome,
    PolicyConflict,
    PolicyInvalid,
    PolicySetEmpty,
    device_topic,
)
from fleetguard.trust.evaluator import ALERT_AFTER, ContinuousEvaluator, EnforcementReport
from fleetguard.trust.service import AccessPlan, TopicGrant, TrustService
from fleetguard.types import utc_now

RISKY = (
    DEFAULT_POLICIES
    + '\n@id("risky-devices-nothing")\nforbid (principal, action, resource)\nwhen { principal.risk >= 80 };\n'
)


@pytest.fixture
def runtime(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """An installation with a CA, device type camera, and cam-1/cam-2 active with certificates."""
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", "correct horse battery staple")
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    initialize(settings, "fleet.example.org", now=utc_now())
    runtime = Runtime(settings)
    runtime.pki.initialize(actor="ops", now=utc_now())
    runtime.inventory.add_device_type("camera", actor="ops")
    for device_id in ("cam-1", "cam-2"):
        spec = DeviceSpec(
            id=device_id, serial=device_id.upper(), manufacturer="Acme", device_type="camera",
            firmware_version="1.2.0",
        )  # fmt: skip
        runtime.inventory.register(spec, actor="ops")
        runtime.pki.issue_device(device_id, _csr(device_id), actor="ops")
        runtime.inventory.transition(device_id, Lifecycle.PROVISION, actor="ops")
        runtime.inventory.transition(device_id, Lifecycle.ACTIVATE, actor="ops")
    yield runtime
    runtime.close()


def _csr(device_id: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.DER)


def _events(runtime: Runtime, action: str) -> list[tuple[str, dict[str, object]]]:
    return [(e.subject, dict(e.details())) for e in runtime.log.entries(action=action, limit=1000)]


# -- facts, access plans, policies ------------------------------------------------------------------


def test_facts_come_from_the_inventory_the_pki_and_the_firmware_policy(runtime: Runtime) -> None:
    facts = runtime.trust.facts("cam-1")
    assert (facts.state, facts.device_type, facts.manufacturer) == ("active", "camera", "Acme")
    assert (facts.certificate_valid, facts.revoked, facts.risk) == (True, False, 0)
    assert facts.posture.firmware_version == "1.2.0"
    assert facts.posture.firmware_compliant


def test_an_active_device_gets_its_own_and_its_type_topics(runtime: Runtime) -> None:
    plan = runtime.trust.access("cam-1")
    assert plan.connect is Outcome.ALLOW
    assert set(plan.grants) == {
        TopicGrant(Action.PUBLISH, "devices/cam-1/#"),
        TopicGrant(Action.SUBSCRIBE, "devices/cam-1/#"),
        TopicGrant(Action.PUBLISH, "types/camera/#"),
        TopicGrant(Action.SUBSCRIBE, "types/camera/#"),
    }
    assert plan.policy_version == 0


def test_quarantine_and_revocation_deny_everything(runtime: Runtime) -> None:
    runtime.inventory.transition("cam-1", Lifecycle.QUARANTINE, actor="ops")
    plan = runtime.trust.access("cam-1")
    assert plan.denied_everything
    assert plan.decisions[0].policies == ("quarantined-devices-nothing",)
    [record] = runtime.pki.certificates(device_id="cam-2")
    runtime.pki.revoke(record.serial, RevocationReason.KEY_COMPROMISE, actor="ops")
    revoked = runtime.trust.access("cam-2")
    assert revoked.denied_everything
    assert runtime.trust.facts("cam-2").revoked
    assert revoked.decisions[0].policies == ("untrusted-identity-nothing",)


def test_a_device_s_facts_judge_its_certificates_as_the_pki_does(runtime: Runtime) -> None:
    [first] = runtime.pki.certificates(device_id="cam-2")
    runtime.pki.revoke(first.serial, RevocationReason.SUPERSEDED, actor="ops")
    runtime.pki.issue_device("cam-2", _csr("cam-2"), actor="ops")
    runtime.inventory.register(DeviceSpec(id="cam-3", serial="CAM-3", manufacturer="Acme"), actor="ops")
    runtime.trust.report_signals("cam-1", actor="monitor", risk=40, known_vulnerable=True)
    for now in (utc_now(), first.not_after + dt.timedelta(seconds=1)):
        identities = runtime.pki.identity_status(["cam-1", "cam-2", "cam-3"], now=now)
        for device_id in ("cam-1", "cam-2", "cam-3"):
            facts = runtime.trust.facts(device_id, now=now)
            identity = identities.get(device_id)
            assert (facts.certificate_valid, facts.revoked) == (
                identity is not None and identity.certificate_valid,
                identity is not None and identity.revoked,
            ), (device_id, now)
    assert (runtime.trust.facts("cam-2").certificate_valid, runtime.trust.facts("cam-2").revoked) == (
        True,
        False,
    )
    cam_3 = runtime.trust.facts("cam-3")
    assert (cam_3.state, cam_3.device_type, cam_3.certificate_valid, cam_3.revoked) == (
        "registered",
        "",
        False,
        False,
    )
    cam_1 = runtime.trust.facts("cam-1")
    assert (cam_1.risk, cam_1.posture.known_vulnerable) == (40, True)


def test_a_firmware_below_the_minimum_is_not_compliant(runtime: Runtime) -> None:
    runtime.trust.apply(DEFAULT_POLICIES, actor="ops", firmware=FirmwarePolicy({"camera": "1.10"}))
    assert not runtime.trust.facts("cam-1").posture.firmware_compliant
    runtime.trust.apply(
        DEFAULT_POLICIES, actor="ops", firmware=FirmwarePolicy(end_of_life=frozenset({"camera@1.2.0"}))
    )
    assert runtime.trust.access("cam-1").denied_everything


def test_apply_stores_a_version_with_an_event_and_decisions_follow(runtime: Runtime) -> None:
    stored = runtime.trust.apply(RISKY, actor="ops", reason="risk gate")
    assert stored.version == 1
    assert stored.policies.ids[-1] == "risky-devices-nothing"
    [(subject, data)] = _events(runtime, "trust.policy_applied")
    assert (subject, data["version"], data["digest"]) == ("trust:policy", 1, stored.policies.digest)
    runtime.trust.report_signals("cam-1", actor="monitor", risk=90, reason="port scan")
    decision = runtime.trust.decide("cam-1", Action.PUBLISH, device_topic("cam-1"))
    assert (decision.outcome, decision.policies) == (Outcome.DENY, ("risky-devices-nothing",))
    assert decision.device.risk == 90
    assert runtime.trust.access("cam-2").connect is Outcome.ALLOW


def test_an_invalid_or_empty_policy_set_is_refused_and_nothing_is_stored(runtime: Runtime) -> None:
    with pytest.raises(PolicyInvalid, match=r"line 25, column 18 .*attribute `stat`"):
        runtime.trust.apply(
            DEFAULT_POLICIES.replace('principal.state == "quarantined"', 'principal.stat == "quarantined"'),
            actor="ops",
        )
    with pytest.raises(PolicySetEmpty):
        runtime.trust.apply("// nothing here\n", actor="ops")
    assert runtime.trust.history() == []
    assert runtime.trust.policy().version == 0
    assert _events(runtime, "trust.policy_applied") == []


def test_apply_with_a_stale_expected_version_conflicts(runtime: Runtime) -> None:
    runtime.trust.apply(DEFAULT_POLICIES, actor="ops")
    with pytest.raises(PolicyConflict, match="policy version 1 is in force, not 0"):
        runtime.trust.apply(RISKY, actor="ops", expected_version=0)
    assert runtime.trust.policy().version == 1


def test_diff_lists_the_requests_a_proposed_set_changes(runtime: Runtime) -> None:
    runtime.trust.report_signals("cam-2", actor="monitor", risk=85)
    changes = runtime.trust.diff(RISKY)
    assert {(c.device_id, c.action, c.resource) for c in changes} == {
        ("cam-2", Action.CONNECT, "mqtt"),
        ("cam-2", Action.PUBLISH, "devices/cam-2/#"),
        ("cam-2", Action.SUBSCRIBE, "devices/cam-2/#"),
        ("cam-2", Action.PUBLISH, "types/camera/#"),
        ("cam-2", Action.SUBSCRIBE, "types/camera/#"),
    }
    assert all(c.before is Outcome.ALLOW and c.after_policies == ("risky-devices-nothing",) for c in changes)
    assert runtime.trust.policy().version == 0  # nothing applied


def test_signals_are_bounded(runtime: Runtime) -> None:
    with pytest.raises(FleetguardError, match="risk must be 0-100, not 101"):
        runtime.trust.report_signals("cam-1", actor="monitor", risk=101)


# -- continuous evaluation -----------------------------------------------------------------------------


@dataclass
class FakePoint:
    """An enforcement point that records plans and verifies them unless told to fail."""

    fail: bool = False
    plans: list[AccessPlan] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "fake-broker"

    def enforce(self, plan: AccessPlan) -> EnforcementReport:
        self.plans.append(plan)
        if self.fail:
            return EnforcementReport(self.name, False, "broker refused the control command")
        return EnforcementReport(self.name, True, "verified by probe")


def _evaluator(runtime: Runtime, point: FakePoint, clock: list[dt.datetime]) -> ContinuousEvaluator:
    return ContinuousEvaluator(
        runtime.trust, [point], runtime.database, runtime.log, clock=lambda: clock[0],
        all_devices=lambda: ["cam-1", "cam-2"],
    )  # fmt: skip


def test_a_quarantine_event_re_decides_and_enforces_once(runtime: Runtime) -> None:
    point, clock = FakePoint(), [utc_now()]
    evaluator = _evaluator(runtime, point, clock)
    evaluator.reconcile(["cam-1"])
    runtime.inventory.transition("cam-1", Lifecycle.QUARANTINE, actor="ops")
    [entry] = runtime.log.entries(action="device.quarantine", limit=10)

    [outcome] = evaluator.handle(entry.to_json())

    assert (outcome.status, outcome.changed) == ("enforced", True)
    assert point.plans[-1].denied_everything
    assert evaluator.handle(entry.to_json())[0].changed is False  # same plan, already enforced
    assert len(point.plans) == 2
    subjects = [subject for subject, _ in _events(runtime, "trust.enforced")]
    assert subjects == ["device:cam-1", "device:cam-1"]


def test_a_policy_change_re_decides_every_device(runtime: Runtime) -> None:
    point, clock = FakePoint(), [utc_now()]
    evaluator = _evaluator(runtime, point, clock)
    runtime.trust.apply(RISKY, actor="ops")
    [entry] = runtime.log.entries(action="trust.policy_applied", limit=10)
    outcomes = evaluator.handle(entry.to_json())
    assert sorted(o.device_id for o in outcomes) == ["cam-1", "cam-2"]


def test_a_failed_enforcement_is_recorded_retried_with_backoff_and_alerted(runtime: Runtime) -> None:
    point, clock = FakePoint(fail=True), [utc_now()]
    evaluator = _evaluator(runtime, point, clock)

    [outcome] = evaluator.reconcile(["cam-1"])

    assert outcome.status == "failed"
    row = evaluator.status("cam-1")
    assert row is not None
    assert (row.status, row.attempts) == ("failed", 1)
    assert row.next_attempt_at == clock[0] + dt.timedelta(seconds=1)
    assert evaluator.retry_due() == []  # not due yet
    for attempt in range(2, ALERT_AFTER + 1):
        clock[0] += dt.timedelta(seconds=600)
        [retried] = evaluator.retry_due()
        assert retried.status == "failed"
        assert evaluator.status("cam-1").attempts == attempt  # type: ignore[union-attr]
    assert [s for s, _ in _events(runtime, "trust.enforcement_alert")] == ["device:cam-1"]
    assert len(_events(runtime, "trust.enforcement_failed")) == ALERT_AFTER
    assert _events(runtime, "trust.enforced") == []
    point.fail = False
    clock[0] += dt.timedelta(seconds=600)
    [recovered] = evaluator.retry_due()
    assert recovered.status == "enforced"
    assert evaluator.status("cam-1").attempts == 0  # type: ignore[union-attr]


def test_a_renewal_after_the_certificate_expired_is_re_decided(runtime: Runtime) -> None:
    [expired] = runtime.pki.certificates(device_id="cam-1")
    clock = [expired.not_after + dt.timedelta(minutes=1)]
    trust = TrustService(
        runtime.database, runtime.log, runtime.inventory, runtime.pki, clock=lambda: clock[0]
    )
    point = FakePoint()
    evaluator = ContinuousEvaluator(trust, [point], runtime.database, runtime.log, clock=lambda: clock[0])
    [denied] = evaluator.reconcile(["cam-1"])
    assert (denied.changed, point.plans[-1].denied_everything) == (True, True)
    renewed: dict[str, object] = {"action": "cert.renewed", "subject": "device:cam-1"}
    assert evaluator.handle(renewed)[0].changed is False  # nothing changed yet: the same plan

    runtime.pki.issue_device("cam-1", _csr("cam-1"), actor="ops", now=clock[0])
    [outcome] = evaluator.handle(renewed)

    assert (outcome.status, outcome.changed) == ("enforced", True)
    assert point.plans[-1].connect is Outcome.ALLOW
    assert evaluator.handle(renewed)[0].changed is False


def test_events_that_are_not_about_inputs_are_ignored(runtime: Runtime) -> None:
    evaluator = _evaluator(runtime, FakePoint(), [utc_now()])
    assert evaluator.affected_by({"action": "trust.enforced", "subject": "device:cam-1"}) == []
    assert evaluator.affected_by({"action": "cert.revoked", "subject": "device:cam-1"}) == ["cam-1"]
    assert evaluator.affected_by({"action": "trust.policy_applied", "subject": "trust:policy"}) is None


def test_an_attestation_time_in_the_future_is_refused(runtime: Runtime) -> None:
    with pytest.raises(FleetguardError, match="attestation time in the future"):
        runtime.trust.report_signals("cam-1", actor="attestor", attested_at=utc_now() + dt.timedelta(hours=1))
    assert not runtime.trust.facts("cam-1").posture.attestation_fresh
