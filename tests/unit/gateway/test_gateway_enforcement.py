"""The enforcer against in-memory fakes of dynamic security, the probe and the broker process.

The fake dynamic-security plugin keeps clients and roles and answers like Mosquitto 2.0.11 does
(``Client already exists``, ``Internal error`` for a role a client already holds); the fake probe
answers from that state, as the real broker does (0x87 for a quarantined username). Each test can
make a part fail or lie to check that nothing but a confirmed state is reported as enforced.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from fleetguard.gateway.config import DEFAULT_GRANTS
from fleetguard.gateway.dynsec import ClientRoles
from fleetguard.gateway.enforcement import BrokerEnforcer, probe_topic
from fleetguard.gateway.errors import BrokerCommandFailed, BrokerReloadFailed, BrokerUnavailable, CrlRejected
from fleetguard.gateway.model import Access, DeviceAccess, EnforcementAction, Outcome, TopicGrant
from fleetguard.gateway.probe import Permission, ProbeObservation
from fleetguard.gateway.roles import (
    DEVICE_ROLE_PREFIX,
    GRANTS_ROLE_PREFIX,
    QUARANTINE_PRIORITY,
    QUARANTINE_ROLE,
    AclType,
    RoleAcl,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
SENSOR = TopicGrant(Access.BOTH, "types/sensor/#")


@dataclass
class FakeDynsec:
    clients: dict[str, dict[str, int]] = field(default_factory=dict)
    roles: dict[str, tuple[RoleAcl, ...]] = field(default_factory=dict)
    kicked: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    down: bool = False
    refuse: Mapping[str, str] = field(default_factory=dict)
    ignore_role_changes: bool = False

    def _command(self, name: str) -> None:
        if self.down:
            raise BrokerUnavailable("cannot connect to the control listener 127.0.0.1:8884: refused")
        if name in self.refuse:
            raise BrokerCommandFailed(name, self.refuse[name])
        self.commands.append(name)

    def ensure_client(self, username: str) -> None:
        self._command("createClient")
        self.clients.setdefault(username, {})

    def client_roles(self, username: str) -> ClientRoles | None:
        self._command("getClient")
        roles = self.clients.get(username)
        return None if roles is None else ClientRoles(username, dict(roles))

    def add_client_role(self, username: str, rolename: str, priority: int) -> None:
        self._command("addClientRole")
        if rolename in self.clients[username]:
            raise BrokerCommandFailed("addClientRole", "Internal error")
        if not self.ignore_role_changes:
            self.clients[username][rolename] = priority
        self.kicked.append(username)

    def remove_client_role(self, username: str, rolename: str) -> None:
        self._command("removeClientRole")
        if rolename not in self.clients[username]:
            raise BrokerCommandFailed("removeClientRole", "Role not found")
        if not self.ignore_role_changes:
            del self.clients[username][rolename]
        self.kicked.append(username)

    def role_acls(self, rolename: str) -> tuple[RoleAcl, ...] | None:
        self._command("getRole")
        return self.roles.get(rolename)

    def ensure_role(self, rolename: str, acls: Sequence[RoleAcl]) -> None:
        self._command("createRole")
        self.roles[rolename] = tuple(sorted(acls))

    def delete_role(self, rolename: str) -> None:
        self._command("deleteRole")
        self.roles.pop(rolename, None)
        for roles in self.clients.values():
            if roles.pop(rolename, None) is not None:
                raise AssertionError(f"{rolename} was deleted while a client held it")

    def deny_by_default(self) -> None:
        self._command("setDefaultACLAccess")


@dataclass
class FakeProbe:
    dynsec: FakeDynsec
    probed: list[tuple[str, str]] = field(default_factory=list)
    failure: Exception | None = None
    lie: Permission | None = None

    def probe(self, device_id: str, topic: str) -> ProbeObservation:
        self.probed.append((device_id, topic))
        if self.failure is not None:
            raise self.failure
        quarantined = QUARANTINE_ROLE in self.dynsec.clients.get(device_id, {})
        permission = self.lie or (Permission.DENIED if quarantined else Permission.ALLOWED)
        code = 0x87 if permission is Permission.DENIED else 0x00
        return ProbeObservation(device_id, topic, permission, permission, code, code or 1, 0.004)


@dataclass
class FakeBroker:
    crls: list[bytes] = field(default_factory=list)
    reloads: int = 0
    reject: bool = False
    reload_fails: bool = False

    def install_crl(self, crl_pem: bytes) -> None:
        if self.reject:
            raise CrlRejected("the CRL from CN=issuing expired at 2026-02-01T00:00:00+00:00")
        self.crls.append(crl_pem)

    def reload(self) -> None:
        if self.reload_fails:
            raise BrokerReloadFailed("mosquitto's reload was not confirmed within 5 s")
        self.reloads += 1


@dataclass
class Gateway:
    dynsec: FakeDynsec
    probe: FakeProbe
    broker: FakeBroker
    enforcer: BrokerEnforcer


@pytest.fixture
def gw() -> Gateway:
    dynsec = FakeDynsec()
    probe = FakeProbe(dynsec)
    broker = FakeBroker()
    enforcer = BrokerEnforcer(dynsec, probe, broker, grants=DEFAULT_GRANTS, clock=lambda: NOW)
    return Gateway(dynsec, probe, broker, enforcer)


def test_prepare_sets_deny_defaults_and_the_quarantine_role(gw: Gateway) -> None:
    gw.enforcer.prepare()
    assert gw.dynsec.commands[0] == "setDefaultACLAccess"
    assert QUARANTINE_ROLE in gw.dynsec.roles


def test_quarantine_kicks_and_is_enforced_only_with_a_denying_probe(gw: Gateway) -> None:
    result = gw.enforcer.quarantine("dev-1")
    assert result.outcome is Outcome.ENFORCED
    assert result.verified
    assert result.action is EnforcementAction.QUARANTINE
    assert result.at == NOW
    assert gw.dynsec.clients["dev-1"] == {QUARANTINE_ROLE: QUARANTINE_PRIORITY}
    assert gw.dynsec.kicked == ["dev-1"]
    assert gw.probe.probed == [("dev-1", "devices/dev-1/fleetguard-probe")]
    assert "publish 0x87 (denied)" in result.detail


def test_quarantine_twice_does_not_kick_again(gw: Gateway) -> None:
    gw.enforcer.quarantine("dev-1")
    result = gw.enforcer.quarantine("dev-1")
    assert result.outcome is Outcome.ENFORCED
    assert result.detail.startswith("already quarantined")
    assert gw.dynsec.kicked == ["dev-1"]


def test_a_broker_that_is_down_gives_not_enforced_and_retryable(gw: Gateway) -> None:
    gw.dynsec.down = True
    result = gw.enforcer.quarantine("dev-1")
    assert result.outcome is Outcome.NOT_ENFORCED
    assert not result.verified
    assert result.retryable
    assert result.detail.startswith("BrokerUnavailable: cannot connect to the control listener")
    assert gw.probe.probed == []


def test_a_refused_command_names_the_broker_error(gw: Gateway) -> None:
    gw.dynsec.refuse = {"addClientRole": "Role not found"}
    result = gw.enforcer.quarantine("dev-1")
    assert result.outcome is Outcome.NOT_ENFORCED
    assert result.detail == "BrokerCommandFailed: broker refused addClientRole: Role not found"


def test_a_probe_that_cannot_connect_gives_not_enforced(gw: Gateway) -> None:
    gw.probe.failure = BrokerUnavailable("the probe cannot connect to 127.0.0.1:8884: timed out")
    result = gw.enforcer.quarantine("dev-1")
    assert result.outcome is Outcome.NOT_ENFORCED
    assert result.retryable
    assert "the probe cannot connect" in result.detail
    assert QUARANTINE_ROLE in gw.dynsec.clients["dev-1"]  # the command stands; only the proof is missing


def test_a_broker_that_still_allows_the_device_is_not_enforced(gw: Gateway) -> None:
    gw.probe.lie = Permission.ALLOWED
    result = gw.enforcer.quarantine("dev-1")
    assert result.outcome is Outcome.NOT_ENFORCED
    assert result.detail.startswith("not verified: probe: the broker still lets dev-1 act")


def test_a_role_that_does_not_read_back_is_not_enforced(gw: Gateway) -> None:
    gw.dynsec.ignore_role_changes = True
    result = gw.enforcer.quarantine("dev-1")
    assert result.outcome is Outcome.NOT_ENFORCED
    assert "read-back: dev-1 does not hold fleetguard-quarantine" in result.detail
    assert gw.probe.probed == []


@pytest.mark.parametrize("bad_id", ["dev/1", "", "fleetguard admin"])
def test_an_invalid_device_id_is_refused_without_a_command(gw: Gateway, bad_id: str) -> None:
    result = gw.enforcer.quarantine(bad_id)
    assert result.outcome is Outcome.NOT_ENFORCED
    assert not result.retryable
    assert result.detail.startswith("refused: invalid device id")
    assert gw.dynsec.commands == []


def test_release_removes_the_role_and_probes_an_accepted_publish(gw: Gateway) -> None:
    gw.enforcer.quarantine("dev-1")
    result = gw.enforcer.release("dev-1")
    assert result.outcome is Outcome.ENFORCED
    assert gw.dynsec.clients["dev-1"] == {}
    assert gw.dynsec.kicked == ["dev-1", "dev-1"]
    assert "publish 0x00 (allowed)" in result.detail


def test_release_of_a_device_never_quarantined_changes_nothing(gw: Gateway) -> None:
    result = gw.enforcer.release("dev-9")
    assert result.outcome is Outcome.ENFORCED
    assert result.detail.startswith("not quarantined")
    assert gw.dynsec.clients == {}


def test_a_release_the_broker_still_denies_is_not_enforced(gw: Gateway) -> None:
    gw.enforcer.quarantine("dev-1")
    gw.probe.lie = Permission.DENIED
    result = gw.enforcer.release("dev-1")
    assert result.outcome is Outcome.NOT_ENFORCED
    assert "denies dev-1 its own topic" in result.detail


def test_revoke_quarantines_then_installs_the_crl_and_reloads(gw: Gateway) -> None:
    result = gw.enforcer.revoke("dev-1", b"crl")
    assert result.outcome is Outcome.ENFORCED
    assert gw.broker.crls == [b"crl"]
    assert gw.broker.reloads == 1
    assert QUARANTINE_ROLE in gw.dynsec.clients["dev-1"]
    assert "reload confirmed" in result.detail


def test_a_refused_crl_leaves_the_device_quarantined_and_is_not_retryable(gw: Gateway) -> None:
    gw.broker.reject = True
    result = gw.enforcer.revoke("dev-1", b"stale")
    assert result.outcome is Outcome.NOT_ENFORCED
    assert not result.retryable
    assert "quarantine role added, live connections kicked, but the CRL was refused" in result.detail
    assert QUARANTINE_ROLE in gw.dynsec.clients["dev-1"]
    assert gw.broker.reloads == 0


def test_an_unconfirmed_reload_is_not_enforced(gw: Gateway) -> None:
    gw.broker.reload_fails = True
    result = gw.enforcer.revoke("dev-1", b"crl")
    assert result.outcome is Outcome.NOT_ENFORCED
    assert result.retryable
    assert "BrokerReloadFailed" in result.detail


def test_apply_without_extra_grants_sends_nothing_for_an_unknown_device(gw: Gateway) -> None:
    result = gw.enforcer.apply(DeviceAccess("dev-1", (TopicGrant(Access.BOTH, "devices/%u/#"),)))
    assert result.outcome is Outcome.ENFORCED
    assert result.detail.startswith("roles already match")
    assert gw.dynsec.clients == {}
    assert gw.dynsec.kicked == []


def test_apply_gives_each_device_its_own_role_with_its_subtree_and_type_topics(gw: Gateway) -> None:
    first = gw.enforcer.apply(DeviceAccess("dev-1", (SENSOR,)))
    second = gw.enforcer.apply(DeviceAccess("dev-2", (SENSOR,)))
    assert first.outcome is Outcome.ENFORCED
    assert second.outcome is Outcome.ENFORCED
    one, two = (next(iter(gw.dynsec.clients[device])) for device in ("dev-1", "dev-2"))
    assert one != two
    assert one.startswith(DEVICE_ROLE_PREFIX)
    assert set(gw.dynsec.roles) == {one, two}
    sends = {acl.topic for acl in gw.dynsec.roles[one] if acl.acltype is AclType.PUBLISH_CLIENT_SEND}
    assert sends == {"devices/dev-1/#", "types/sensor/#"}


def test_a_device_that_loses_its_type_topics_loses_its_role_and_the_role_is_deleted(gw: Gateway) -> None:
    gw.enforcer.apply(DeviceAccess("dev-1", (SENSOR,)))
    (old,) = gw.dynsec.clients["dev-1"]
    result = gw.enforcer.apply(DeviceAccess("dev-1", (TopicGrant(Access.BOTH, "devices/%u/#"),)))
    assert result.outcome is Outcome.ENFORCED
    assert gw.dynsec.clients["dev-1"] == {}
    assert gw.dynsec.roles == {}
    changes = [name for name in gw.dynsec.commands if name in {"removeClientRole", "deleteRole"}]
    assert changes == ["removeClientRole", "deleteRole"]
    assert old not in gw.dynsec.roles


def test_a_type_change_swaps_the_device_role_and_deletes_the_old_one(gw: Gateway) -> None:
    gw.enforcer.apply(DeviceAccess("dev-1", (SENSOR,)))
    (old,) = gw.dynsec.clients["dev-1"]
    camera = TopicGrant(Access.BOTH, "types/cam/#")
    result = gw.enforcer.apply(DeviceAccess("dev-1", (camera,)))
    assert result.outcome is Outcome.ENFORCED
    (new,) = gw.dynsec.clients["dev-1"]
    assert new != old
    assert set(gw.dynsec.roles) == {new}
    assert {acl.topic for acl in gw.dynsec.roles[new]} == {"devices/dev-1/#", "types/cam/#"}


def test_a_shared_grants_role_of_an_earlier_version_is_taken_but_not_deleted(gw: Gateway) -> None:
    legacy = f"{GRANTS_ROLE_PREFIX}{'0' * 32}"
    gw.dynsec.roles[legacy] = (RoleAcl(AclType.PUBLISH_CLIENT_SEND, "types/sensor/#", allow=True),)
    gw.dynsec.clients["dev-1"] = {legacy: 0}
    gw.dynsec.clients["dev-2"] = {legacy: 0}
    result = gw.enforcer.apply(DeviceAccess("dev-1", (SENSOR,)))
    assert result.outcome is Outcome.ENFORCED
    (held,) = gw.dynsec.clients["dev-1"]
    assert held.startswith(DEVICE_ROLE_PREFIX)
    assert legacy in gw.dynsec.roles
    assert gw.dynsec.clients["dev-2"] == {legacy: 0}
    assert "deleteRole" not in gw.dynsec.commands


def test_apply_is_idempotent(gw: Gateway) -> None:
    gw.enforcer.apply(DeviceAccess("dev-1", (SENSOR,), quarantined=True))
    kicks = list(gw.dynsec.kicked)
    result = gw.enforcer.apply(DeviceAccess("dev-1", (SENSOR,), quarantined=True))
    assert result.outcome is Outcome.ENFORCED
    assert result.detail.startswith("roles already match")
    assert gw.dynsec.kicked == kicks


def test_apply_swaps_grant_roles_and_lifts_quarantine_last(gw: Gateway) -> None:
    gw.enforcer.apply(DeviceAccess("dev-1", (SENSOR,), quarantined=True))
    camera = TopicGrant(Access.PUBLISH, "types/cam/#")
    gw.dynsec.commands.clear()
    result = gw.enforcer.apply(DeviceAccess("dev-1", (camera,)))
    assert result.outcome is Outcome.ENFORCED
    (held,) = gw.dynsec.clients["dev-1"]
    assert RoleAcl(AclType.PUBLISH_CLIENT_SEND, "types/cam/#", allow=True) in gw.dynsec.roles[held]
    assert RoleAcl(AclType.SUBSCRIBE_PATTERN, "types/sensor/#", allow=True) not in gw.dynsec.roles[held]
    changes = [name for name in gw.dynsec.commands if name in {"addClientRole", "removeClientRole"}]
    assert changes == ["addClientRole", "removeClientRole", "removeClientRole"]


def test_apply_quarantined_adds_quarantine_before_any_grant(gw: Gateway) -> None:
    result = gw.enforcer.apply(DeviceAccess("dev-1", (SENSOR,), quarantined=True))
    assert result.outcome is Outcome.ENFORCED
    assert next(iter(gw.dynsec.clients["dev-1"])) == QUARANTINE_ROLE
    assert "publish 0x87" in result.detail


def test_apply_leaves_roles_fleetguard_does_not_own(gw: Gateway) -> None:
    gw.dynsec.clients["dev-1"] = {"operator-debug": 5}
    result = gw.enforcer.apply(DeviceAccess("dev-1", (SENSOR,)))
    assert result.outcome is Outcome.ENFORCED
    assert "operator-debug" in gw.dynsec.clients["dev-1"]


def test_apply_with_a_client_id_grant_is_refused(gw: Gateway) -> None:
    result = gw.enforcer.apply(DeviceAccess("dev-1", (TopicGrant(Access.BOTH, "clients/%c/#"),)))
    assert result.outcome is Outcome.NOT_ENFORCED
    assert not result.retryable
    assert "%c cannot be expanded" in result.detail
    assert gw.dynsec.commands == []


def test_the_probe_topic_comes_from_the_first_publishing_pattern() -> None:
    assert probe_topic(DEFAULT_GRANTS, "dev-1") == "devices/dev-1/fleetguard-probe"
    grants = (TopicGrant(Access.SUBSCRIBE, "cmd/%u/#"), TopicGrant(Access.PUBLISH, "up/+/%u"))
    assert probe_topic(grants, "dev-1") == "up/fleetguard-probe/dev-1"
    assert probe_topic((TopicGrant(Access.BOTH, "c/%c/#"),), "dev-1") is None


def test_without_a_publishing_pattern_release_rests_on_the_read_back() -> None:
    dynsec = FakeDynsec()
    probe = FakeProbe(dynsec)
    enforcer = BrokerEnforcer(dynsec, probe, FakeBroker(), grants=(), clock=lambda: NOW)
    assert enforcer.quarantine("dev-1").outcome is Outcome.ENFORCED
    result = enforcer.release("dev-1")
    assert result.outcome is Outcome.ENFORCED
    assert "no broker-wide grant to probe" in result.detail
    assert probe.probed == [("dev-1", "devices/dev-1/fleetguard-probe")]
