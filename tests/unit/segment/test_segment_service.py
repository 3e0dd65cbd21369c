"""SegmentationService on a real database with a recording nft: refused input changes nothing."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetguard.errors import InvalidInput
from fleetguard.events.log import EventLog
from fleetguard.inventory.errors import DeviceNotFound
from fleetguard.inventory.lifecycle import Action
from fleetguard.inventory.model import DeviceSpec
from fleetguard.inventory.service import Inventory
from fleetguard.segment.errors import MudInvalid, MudSignatureInvalid, RulesetRejected
from fleetguard.segment.nftables import Violation
from fleetguard.segment.resolver import StaticResolver
from fleetguard.segment.service import Binding, SegmentationService, SignaturePolicy
from fleetguard.segment.signature import sign_mud
from fleetguard.store.database import Database

T0 = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
THERMOSTAT = "https://things.example.com/thermostat/v1"
CAMERA = "https://things.example.com/camera/v2"
SIGNER_SUBJECT = "CN=MUD signer,O=Example Things"
Json = dict[str, Any]

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=1)
        return self.now


@dataclass
class RecordingNft:
    """Records every script; refuses the real (not check-only) run when ``refuse`` is set."""

    runs: list[tuple[str, bool]] = field(default_factory=list)
    refuse: bool = False
    answers: dict[tuple[str, ...], str] = field(default_factory=dict)

    def run(self, script: str, *, check_only: bool = False) -> None:
        self.runs.append((script, check_only))
        if self.refuse and not check_only:
            raise RulesetRejected("nft refused the change (exit 1); the ruleset in force is unchanged: boom")

    def query(self, *arguments: str) -> str:
        return self.answers[arguments]


def ace(name: str, matches: Json) -> Json:
    return {"name": name, "matches": matches, "actions": {"forwarding": "accept"}}


def mud(url: str, from_aces: list[Json], to_aces: list[Json] | None = None) -> bytes:
    document = {
        "ietf-mud:mud": {
            "mud-version": 1,
            "mud-url": url,
            "last-update": "2024-03-01T12:00:00+02:00",
            "is-supported": True,
            "systeminfo": "A test device",
            "from-device-policy": {"access-lists": {"access-list": [{"name": "out"}]}},
            "to-device-policy": {"access-lists": {"access-list": [{"name": "in"}]}},
        },
        "ietf-access-control-list:acls": {
            "acl": [
                {"name": "out", "type": "ipv4-acl-type", "aces": {"ace": from_aces}},
                {"name": "in", "type": "ipv4-acl-type", "aces": {"ace": to_aces or []}},
            ]
        },
    }
    return json.dumps(document).encode()


THERMOSTAT_MUD = mud(
    THERMOSTAT,
    [
        ace("cloud", {"ipv4": {"protocol": 6, "ietf-acldns:dst-dnsname": "cloud.example.com"},
                      "tcp": {"destination-port": {"operator": "eq", "port": 443}}}),
    ],
)  # fmt: skip
CAMERA_MUD = mud(
    CAMERA,
    [
        ace("ntp", {"ipv4": {"destination-ipv4-network": "192.0.2.0/24"},
                    "udp": {"destination-port": {"port": 123}}}),
    ],
)  # fmt: skip


@pytest.fixture
def log(database: Database) -> EventLog:
    return EventLog(database, "example.org/fleetguard/test")


@pytest.fixture
def inventory(database: Database, log: EventLog) -> Inventory:
    """Active devices t-1 and t-2 of type thermostat (t-2 with its own MUD URL), cam-1 and lamp (none)."""
    inventory = Inventory(database, log, clock=Clock())
    inventory.add_device_type("thermostat", actor="ops", mud_url=THERMOSTAT)
    specs = [
        DeviceSpec(id="t-1", serial="T1", manufacturer="Acme", device_type="thermostat"),
        DeviceSpec(id="t-2", serial="T2", manufacturer="Acme", device_type="thermostat", mud_url=CAMERA),
        DeviceSpec(id="cam-1", serial="C1", manufacturer="Acme", mud_url=CAMERA),
        DeviceSpec(id="lamp", serial="L1", manufacturer="Acme"),
    ]
    for spec in specs:
        inventory.register(spec, actor="ops")
        inventory.transition(spec.id, Action.PROVISION, actor="ops")
        inventory.transition(spec.id, Action.ACTIVATE, actor="ops")
    return inventory


@pytest.fixture
def nft() -> RecordingNft:
    return RecordingNft()


@pytest.fixture
def service(
    database: Database, log: EventLog, inventory: Inventory, nft: RecordingNft
) -> SegmentationService:
    return SegmentationService(
        database,
        log,
        inventory,
        nft=nft,
        resolver=StaticResolver({"cloud.example.com": ["192.0.2.10", "198.51.100.7"]}),
        clock=Clock(),
    )


def events(log: EventLog, action: str) -> list[tuple[str, str, dict[str, object]]]:
    return [(e.actor, e.subject, dict(e.details())) for e in log.entries(action=action, limit=1000)]


def segment_events(log: EventLog) -> list[str]:
    return [e.action for e in log.entries(limit=1000) if e.action.startswith("segment.")]


# --- profiles ---------------------------------------------------------------------------------------


def test_a_profile_is_stored_and_logged(service: SegmentationService, log: EventLog) -> None:
    stored = service.add_profile(THERMOSTAT_MUD, actor="alice", source="url")

    assert (stored.profile.url, stored.source, stored.actor) == (THERMOSTAT, "url", "alice")
    assert stored.signer is None
    assert stored.added_at == T0 + dt.timedelta(seconds=1)
    assert service.profiles() == [stored]
    assert service.profile(THERMOSTAT) == stored
    assert events(log, "segment.profile_added") == [
        (
            "alice",
            f"mud:{THERMOSTAT}",
            {"url": THERMOSTAT, "digest": stored.profile.digest, "signer": "", "source": "url", "aces": 1},
        )
    ]


def test_an_invalid_mud_file_is_refused_and_nothing_is_stored(
    service: SegmentationService, log: EventLog
) -> None:
    bad = mud(THERMOSTAT, [ace("x", {"ietf-mud:mud": {"same-model": [None]}})])

    with pytest.raises(MudInvalid) as raised:
        service.add_profile(bad, actor="alice")

    assert raised.value.path == (
        "/ietf-access-control-list:acls/acl/0/aces/ace/0/matches/ietf-mud:mud/same-model"
    )
    assert raised.value.detail == "unknown MUD abstraction 'same-model'"
    assert service.profiles() == []
    assert segment_events(log) == []


def test_a_replaced_profile_keeps_one_row(service: SegmentationService) -> None:
    service.add_profile(THERMOSTAT_MUD, actor="alice")
    newer = mud(THERMOSTAT, [ace("ntp", {"ipv4": {"destination-ipv4-network": "192.0.2.0/24"}, "udp": {}})])

    stored = service.add_profile(newer, actor="bob")

    assert service.profiles() == [stored]
    assert [a.name for a in service.profile(THERMOSTAT).profile.aces] == ["ntp"]


# --- signatures -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    ca_pem: bytes
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None
) -> x509.Certificate:
    name = x509.Name.from_rfc4514_string(subject)
    issuer_name, issuer_key = issuer or (name, key)
    ca = issuer is None
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0 - dt.timedelta(days=30))
        .not_valid_after(T0 + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(issuer_key, hashes.SHA256())
    )  # fmt: skip


@pytest.fixture(scope="module")
def signer() -> Signer:
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("CN=Example Things MUD CA", ca_key, None)
    certificate = _certificate(SIGNER_SUBJECT, key, (ca.subject, ca_key))
    return Signer(ca.public_bytes(serialization.Encoding.PEM), key, certificate)


def test_an_unsigned_profile_is_refused_where_signatures_are_required(
    service: SegmentationService, log: EventLog, signer: Signer
) -> None:
    service.set_signature_policy(SignaturePolicy(required=True, trusted_pem=signer.ca_pem), actor="ops")

    with pytest.raises(MudSignatureInvalid, match=r"^this installation requires signed MUD files and none"):
        service.add_profile(THERMOSTAT_MUD, actor="alice")

    assert service.profiles() == []
    assert events(log, "segment.profile_added") == []


@needs_openssl
def test_a_signed_profile_is_stored_with_its_signer(
    service: SegmentationService, log: EventLog, signer: Signer
) -> None:
    service.set_signature_policy(SignaturePolicy(required=True, trusted_pem=signer.ca_pem), actor="ops")
    signature = sign_mud(THERMOSTAT_MUD, signer.key, signer.certificate)

    stored = service.add_profile(THERMOSTAT_MUD, actor="alice", signature=signature)

    assert stored.signer == SIGNER_SUBJECT
    assert service.profiles() == [stored]
    [(_, _, data)] = events(log, "segment.profile_added")
    assert data["signer"] == SIGNER_SUBJECT


@needs_openssl
def test_a_signature_of_other_bytes_is_refused_and_nothing_is_stored(
    service: SegmentationService, log: EventLog, signer: Signer
) -> None:
    service.set_signature_policy(SignaturePolicy(required=True, trusted_pem=signer.ca_pem), actor="ops")
    signature = sign_mud(CAMERA_MUD, signer.key, signer.certificate)

    with pytest.raises(MudSignatureInvalid):
        service.add_profile(THERMOSTAT_MUD, actor="alice", signature=signature)

    assert service.profiles() == []
    assert events(log, "segment.profile_added") == []


def test_a_signature_without_trusted_signers_is_refused(service: SegmentationService) -> None:
    with pytest.raises(MudSignatureInvalid, match=r"^a signature was given but no trusted MUD signers are"):
        service.add_profile(THERMOSTAT_MUD, actor="alice", signature=b"\x30\x00")

    assert service.profiles() == []


def test_requiring_signatures_needs_a_signer(service: SegmentationService, log: EventLog) -> None:
    with pytest.raises(InvalidInput, match=r"^requiring signatures needs at least one trusted signer"):
        service.set_signature_policy(SignaturePolicy(required=True, trusted_pem=b""), actor="ops")

    assert service.signature_policy() == SignaturePolicy(required=False, trusted_pem=b"")
    assert segment_events(log) == []


def test_trusted_signers_that_are_not_pem_certificates_are_refused(
    service: SegmentationService, log: EventLog
) -> None:
    # The service is the boundary: cryptography's ValueError must come out as InvalidInput.
    with pytest.raises(InvalidInput):
        service.set_signature_policy(
            SignaturePolicy(required=False, trusted_pem=b"not a PEM file"), actor="ops"
        )

    assert service.signature_policy() == SignaturePolicy(required=False, trusted_pem=b"")
    assert segment_events(log) == []


# --- bindings ---------------------------------------------------------------------------------------


def test_binding_an_unknown_device_is_refused(service: SegmentationService, log: EventLog) -> None:
    with pytest.raises(DeviceNotFound):
        service.bind("ghost", actor="ops", ipv4="10.1.0.2")

    assert service.bindings() == []
    assert segment_events(log) == []


def test_an_address_another_device_holds_is_refused_naming_the_holder(
    service: SegmentationService, log: EventLog
) -> None:
    service.bind("t-1", actor="ops", ipv4="10.1.0.2", mac="02-00-00-00-00-01")
    service.bind("cam-1", actor="ops", ipv4="10.1.0.3")
    before = service.bindings()

    with pytest.raises(InvalidInput) as by_address:
        service.bind("cam-1", actor="ops", ipv4="10.1.0.2", ipv6="2001:db8::3")
    with pytest.raises(InvalidInput) as by_mac:
        service.bind("cam-1", actor="ops", ipv4="10.1.0.4", mac="02:00:00:00:00:01")

    assert (by_address.value.message, by_address.value.hint) == (
        "10.1.0.2 is bound to device 't-1'",
        "fleetguard segment unbind t-1",
    )
    assert by_mac.value.message == "02:00:00:00:00:01 is bound to device 't-1'"

    assert (
        service.bindings()
        == before
        == [
            Binding("cam-1", ipaddress.IPv4Address("10.1.0.3"), None, None),
            Binding("t-1", ipaddress.IPv4Address("10.1.0.2"), None, "02:00:00:00:00:01"),
        ]
    )
    assert segment_events(log) == ["segment.device_bound", "segment.device_bound"]


def test_rebinding_a_device_to_its_own_address_is_allowed(service: SegmentationService) -> None:
    service.bind("t-1", actor="ops", ipv4="10.1.0.2")

    binding = service.bind("t-1", actor="ops", ipv4="10.1.0.2", ipv6="2001:db8::2")

    assert service.bindings() == [binding]


# --- compile and apply ------------------------------------------------------------------------------


@pytest.fixture
def bound(service: SegmentationService) -> SegmentationService:
    service.add_profile(THERMOSTAT_MUD, actor="ops")
    service.add_profile(CAMERA_MUD, actor="ops")
    service.bind("t-1", actor="ops", ipv4="10.1.0.2")
    service.bind("t-2", actor="ops", ipv4="10.1.0.4")
    service.bind("cam-1", actor="ops", ipv4="10.1.0.3", ipv6="2001:db8::3")
    service.bind("lamp", actor="ops", ipv4="10.1.0.9")
    return service


def test_a_devices_mud_url_falls_back_to_its_device_types(bound: SegmentationService) -> None:
    fleet, quarantined = bound.compile()

    assert {d: b.mud_url for d, b in fleet.devices.items()} == {
        "t-1": THERMOSTAT,  # the type's
        "t-2": CAMERA,  # its own wins over the type's
        "cam-1": CAMERA,
        "lamp": None,
    }
    assert fleet.classes == {CAMERA: 1, THERMOSTAT: 2}
    assert fleet.unprofiled == ("lamp",)
    assert quarantined == []


def test_apply_checks_then_applies_and_counts_generations(
    bound: SegmentationService, nft: RecordingNft, log: EventLog
) -> None:
    first = bound.apply(actor="alice")

    [(checked, check_only), (applied, real_run)] = nft.runs
    assert (checked, check_only, real_run) == (applied, True, False)
    assert '\tcomment "fleetguard generation 1"' in applied.splitlines()
    assert (first.generation, first.dry_run, first.devices, first.profiles) == (1, False, 4, 2)
    assert first.unprofiled == ("lamp",)
    assert first.elements["out4"] == 3  # two cloud addresses, one NTP network

    second = bound.apply(actor="bob")

    assert second.generation == 2
    history = [(g, d, a) for g, d, _, a, _ in bound.history()]
    assert history == [(2, second.digest, "bob"), (1, first.digest, "alice")]
    assert [data["generation"] for _, _, data in events(log, "segment.applied")] == [1, 2]


def test_a_refused_apply_records_nothing(
    bound: SegmentationService, nft: RecordingNft, log: EventLog
) -> None:
    nft.refuse = True

    with pytest.raises(RulesetRejected, match=r"exit 1"):
        bound.apply(actor="alice")

    assert [check for _, check in nft.runs] == [True, False]
    assert bound.history() == []
    assert events(log, "segment.applied") == []
    nft.refuse = False
    assert bound.apply(actor="alice").generation == 1


def test_a_dry_run_only_checks_and_records_nothing(
    bound: SegmentationService, nft: RecordingNft, log: EventLog
) -> None:
    result = bound.apply(actor="alice", dry_run=True)

    assert (result.generation, result.dry_run) == (0, True)
    assert [check for _, check in nft.runs] == [True]
    assert bound.history() == []
    assert events(log, "segment.applied") == []


def test_a_quarantined_device_is_in_the_rendered_quarantine_sets(
    bound: SegmentationService, inventory: Inventory, nft: RecordingNft
) -> None:
    inventory.transition("cam-1", Action.QUARANTINE, actor="ops")
    inventory.transition("lamp", Action.DECOMMISSION, actor="ops")

    result = bound.apply(actor="alice")

    script = nft.runs[-1][0].splitlines()
    assert "\tset quarantine4 { type ipv4_addr; counter; elements = { 10.1.0.3," in script
    assert "\t\t10.1.0.9 }; }" in script
    assert "\tset quarantine6 { type ipv6_addr; counter; elements = { 2001:db8::3 }; }" in script
    assert result.quarantined == 3


# --- quarantine element updates ---------------------------------------------------------------------


def test_enforce_state_quarantines_and_releases_by_element_update(
    bound: SegmentationService, inventory: Inventory, nft: RecordingNft, log: EventLog
) -> None:
    inventory.transition("cam-1", Action.QUARANTINE, actor="ops")

    assert bound.enforce_state("cam-1", actor="fleetguard") is True
    assert nft.runs == [
        (
            "add element inet fleetguard quarantine4 { 10.1.0.3 }\n"
            "add element inet fleetguard quarantine6 { 2001:db8::3 }\n",
            False,
        )
    ]
    assert events(log, "segment.quarantined") == [
        ("fleetguard", "device:cam-1", {"addresses": "10.1.0.3,2001:db8::3", "state": "quarantined"})
    ]

    inventory.transition("cam-1", Action.RELEASE, actor="ops")

    assert bound.enforce_state("cam-1", actor="fleetguard") is False
    assert nft.runs[-1] == (
        "add element inet fleetguard quarantine4 { 10.1.0.3 }\n"
        "delete element inet fleetguard quarantine4 { 10.1.0.3 }\n"
        "add element inet fleetguard quarantine6 { 2001:db8::3 }\n"
        "delete element inet fleetguard quarantine6 { 2001:db8::3 }\n",
        False,
    )
    assert events(log, "segment.released") == [
        ("fleetguard", "device:cam-1", {"addresses": "10.1.0.3,2001:db8::3", "state": "active"})
    ]


def test_enforce_state_of_an_unbound_device_does_nothing(
    service: SegmentationService, nft: RecordingNft, log: EventLog
) -> None:
    assert service.enforce_state("t-1", actor="fleetguard") is False
    assert nft.runs == []
    assert segment_events(log) == []


def test_enforce_state_of_an_unknown_device_is_refused(
    service: SegmentationService, nft: RecordingNft
) -> None:
    with pytest.raises(DeviceNotFound):
        service.enforce_state("ghost", actor="fleetguard")

    assert nft.runs == []


# --- detection --------------------------------------------------------------------------------------


def _violations(kind: str, elements: list[tuple[str, str, str, int]]) -> str:
    return json.dumps(
        {
            "nftables": [
                {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
                {
                    "set": {
                        "family": "inet", "name": f"violations{kind}", "table": "fleetguard",
                        "type": [f"ipv{kind}_addr", "inet_proto", f"ipv{kind}_addr", "inet_service"],
                        "handle": 4, "size": 65536, "flags": ["timeout"], "timeout": 3600,
                        "elem": [{"elem": {"val": {"concat": list(e)}, "expires": 3000}} for e in elements],
                    }
                },
            ]
        }
    )  # fmt: skip


def test_detect_logs_each_new_violation_once(
    bound: SegmentationService, nft: RecordingNft, log: EventLog
) -> None:
    nft.answers = {
        ("list", "set", "inet", "fleetguard", "violations4"): _violations(
            "4",
            [
                ("10.1.0.2", "tcp", "203.0.113.9", 22),
                ("203.0.113.9", "udp", "10.1.0.3", 161),
                ("10.77.0.1", "tcp", "203.0.113.9", 80),  # not a managed device's
            ],
        ),
        ("list", "set", "inet", "fleetguard", "violations6"): _violations("6", []),
    }

    found = bound.detect()

    addr = ipaddress.ip_address
    assert found == [
        ("t-1", Violation(addr("10.1.0.2"), 6, addr("203.0.113.9"), 22, 3000)),
        ("cam-1", Violation(addr("203.0.113.9"), 17, addr("10.1.0.3"), 161, 3000)),
    ]
    assert events(log, "segment.violation") == [
        ("fleetguard segment", "device:t-1",
         {"source": "10.1.0.2", "destination": "203.0.113.9", "protocol": 6, "destination_port": 22,
          "direction": "from-device"}),
        ("fleetguard segment", "device:cam-1",
         {"source": "203.0.113.9", "destination": "10.1.0.3", "protocol": 17, "destination_port": 161,
          "direction": "to-device"}),
    ]  # fmt: skip

    assert bound.detect() == []
    assert len(events(log, "segment.violation")) == 2


def test_detect_in_another_process_does_not_report_again_what_is_still_in_the_set(
    bound: SegmentationService,
    nft: RecordingNft,
    log: EventLog,
    database: Database,
    inventory: Inventory,
) -> None:
    nft.answers = {
        ("list", "set", "inet", "fleetguard", "violations4"): _violations(
            "4", [("10.1.0.2", "tcp", "203.0.113.9", 22)]
        ),
        ("list", "set", "inet", "fleetguard", "violations6"): _violations("6", []),
    }
    assert len(bound.detect()) == 1
    # A second service on the same store, as `fleetguard segment detect` run again would be.
    again = SegmentationService(database, log, inventory, nft=nft, resolver=StaticResolver({}), clock=Clock())
    assert again.detect() == []
    nft.answers[("list", "set", "inet", "fleetguard", "violations4")] = _violations(
        "4", [("10.1.0.2", "tcp", "203.0.113.9", 22), ("10.1.0.2", "tcp", "203.0.113.9", 23)]
    )
    assert [v.destination_port for _, v in again.detect()] == [23]
    assert len(events(log, "segment.violation")) == 2
