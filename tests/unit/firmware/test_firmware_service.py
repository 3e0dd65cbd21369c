"""FirmwareService on a real database: stored and logged scans, the fleet's exposure, the release gate
with waivers, and vulnerability database imports; refused input changes nothing.

Images are tiny squashfs filesystems built with ``mksquashfs`` (module scope) so a scan takes a few
milliseconds: a known-exploited OpenSSL, a BusyBox with only ordinary vulnerabilities, a clean one,
one with a default root password and telnet (the gate image), one carrying a made-up BusyBox version
for the vulndb import, and a random (encrypted-looking) blob.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware_images import elf_with, small_squashfs
from fleetguard.errors import InvalidInput
from fleetguard.events.log import EventLog
from fleetguard.firmware.errors import ReleaseBlocked, ScanNotFound, VulnDbInvalid
from fleetguard.firmware.model import Category, Finding, Severity
from fleetguard.firmware.service import DEFAULT_GATE, FirmwareService, GateDecision
from fleetguard.inventory.model import DeviceSpec
from fleetguard.inventory.service import Inventory
from fleetguard.store.database import Database

T0 = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
# `openssl passwd -1 -salt abcdefgh xc3511`: Mirai's first default credential, for root.
ROOT_DEFAULT = "root:$1$abcdefgh$/ehdsgh6T85pypwniuldr1:19000:0:99999:7:::\n"
HEARTBLEED = "CVE-2014-0160"  # CISA KEV, in OpenSSL 1.0.1f
MADE_UP = "FG-TEST-0001"

needs_mksquashfs = pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="needs mksquashfs")
pytestmark = needs_mksquashfs


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=1)
        return self.now


@dataclass(frozen=True)
class Images:
    kev: Path
    nonkev: Path
    clean: Path
    gate: Path
    made_up: Path
    encrypted: Path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    base = tmp_path_factory.mktemp("fw-images")
    encrypted = base / "encrypted.bin"
    encrypted.write_bytes(random.Random(3).randbytes(64 * 1024))  # noqa: S311 - test data
    return Images(
        kev=small_squashfs(
            base / "kev.sqfs", {"/usr/lib/libcrypto.so.1.0.0": elf_with(b"OpenSSL 1.0.1f 6 Jan 2014", 1)}
        ),
        nonkev=small_squashfs(
            base / "nonkev.sqfs",
            {"/bin/busybox": elf_with(b"BusyBox v1.24.1 (2016-01-01 00:00:00 UTC) multi-call binary.", 2)},
        ),
        clean=small_squashfs(base / "clean.sqfs", {"/etc/hostname": b"cam\n"}),
        gate=small_squashfs(
            base / "gate.sqfs",
            {
                "/etc/shadow": ROOT_DEFAULT.encode(),
                "/etc/inetd.conf": b"telnet stream tcp nowait root /usr/sbin/telnetd telnetd\n"
                b"ftp stream tcp nowait root /usr/sbin/ftpd ftpd\n",
                "/etc/init.d/rcS": b"#!/bin/sh\n/usr/sbin/telnetd -l /bin/login &\n",
            },
        ),
        made_up=small_squashfs(
            base / "made-up.sqfs",
            {"/bin/busybox": elf_with(b"BusyBox v9.8.7 (2099-01-01 00:00:00 UTC) multi-call binary.", 4)},
        ),
        encrypted=encrypted,
    )


@pytest.fixture
def log(database: Database) -> EventLog:
    return EventLog(database, "example.org/fleetguard/test")


@pytest.fixture
def inventory(database: Database, log: EventLog) -> Inventory:
    """cam-1, cam-2 (type cam, 1.0), lamp-1 (no type, 1.0), cam-3 (cam, 2.0), plug-1 (no type, 2.0),
    cam-4 (cam, 3.0)."""
    inventory = Inventory(database, log, clock=Clock())
    inventory.add_device_type("cam", actor="ops")
    specs = [
        ("cam-1", "cam", "1.0"),
        ("cam-2", "cam", "1.0"),
        ("lamp-1", None, "1.0"),
        ("cam-3", "cam", "2.0"),
        ("plug-1", None, "2.0"),
        ("cam-4", "cam", "3.0"),
    ]
    for device_id, device_type, version in specs:
        spec = DeviceSpec(
            id=device_id, serial=device_id.upper(), manufacturer="Acme", device_type=device_type,
            firmware_version=version,
        )  # fmt: skip
        inventory.register(spec, actor="ops")
    return inventory


@pytest.fixture
def service(database: Database, log: EventLog, inventory: Inventory, tmp_path: Path) -> FirmwareService:
    return FirmwareService(database, log, inventory, data_dir=tmp_path / "data", clock=Clock())


def events(log: EventLog, action: str) -> list[tuple[str, str, str, dict[str, object]]]:
    return [(e.actor, e.subject, e.reason, dict(e.details())) for e in log.entries(action=action, limit=1000)]


def firmware_actions(log: EventLog) -> list[str]:
    return [e.action for e in log.entries(limit=1000) if e.action.startswith("firmware.")]


def pairs(findings: Iterable[Finding]) -> set[tuple[str, str]]:
    return {(f.rule, f.path) for f in findings}


# --- scans -------------------------------------------------------------------------------------------


def test_a_scan_is_stored_and_logged_with_its_counts(
    service: FirmwareService, log: EventLog, images: Images
) -> None:
    stored = service.scan(images.kev, actor="alice", firmware_version="1.0", device_type="cam")

    result = stored.result
    assert (stored.firmware_version, stored.device_type, stored.actor) == ("1.0", "cam", "alice")
    assert result.image_name == "kev.sqfs"
    assert [(c.name, c.version) for c in result.components] == [("openssl", "1.0.1f")]
    assert result.file_count == 1
    kev = [f.rule for f in result.findings if dict(f.details).get("known_exploited") == "yes"]
    assert kev == [HEARTBLEED]
    assert service.get_scan(stored.id) == stored
    assert service.latest(result.image_sha256) == stored
    assert service.scans() == [stored]
    assert events(log, "firmware.scanned") == [
        (
            "alice",
            f"firmware:{result.image_sha256}",
            "",
            {
                "scan": stored.id,
                "name": "kev.sqfs",
                "risk": result.risk,
                "findings": len(result.findings),
                "known_exploited": 1,
                "components": 1,
                "files": 1,
                "firmware_version": "1.0",
                "device_type": "cam",
            },
        )
    ]


def test_a_scan_can_be_named(service: FirmwareService, images: Images) -> None:
    stored = service.scan(images.clean, actor="alice", name="camera-fw-1.0.bin")

    assert stored.result.image_name == "camera-fw-1.0.bin"
    assert (stored.firmware_version, stored.device_type) == (None, None)


@pytest.mark.parametrize(
    ("version", "device_type", "message"),
    [
        ("1.0\n", None, "firmware version must be 1 to 128 printable characters"),
        ("  ", None, "firmware version must be 1 to 128 printable characters"),
        ("x" * 129, None, "firmware version must be 1 to 128 printable characters"),
        ("1.0", "cam\x00", "device type must be 1 to 128 printable characters"),
    ],
)
def test_a_scan_with_bad_labels_is_refused_and_nothing_is_stored(
    service: FirmwareService,
    log: EventLog,
    images: Images,
    *,
    version: str,
    device_type: str | None,
    message: str,
) -> None:
    size = log.size()

    with pytest.raises(InvalidInput, match=f"^{message}$"):
        service.scan(images.kev, actor="alice", firmware_version=version, device_type=device_type)

    assert service.scans() == []
    assert log.size() == size


def test_scans_are_newest_first_and_filtered_by_image(service: FirmwareService, images: Images) -> None:
    first = service.scan(images.kev, actor="a")
    second = service.scan(images.clean, actor="a")
    third = service.scan(images.kev, actor="a")

    assert [s.id for s in service.scans()] == [third.id, second.id, first.id]
    assert [s.id for s in service.scans(image_sha256=first.result.image_sha256)] == [third.id, first.id]
    assert [s.id for s in service.scans(limit=1)] == [third.id]
    assert service.latest(first.result.image_sha256) == third
    assert service.latest("0" * 64) is None


def test_an_unknown_scan_is_not_found(service: FirmwareService) -> None:
    with pytest.raises(ScanNotFound) as raised:
        service.get_scan("nope")

    assert (raised.value.message, raised.value.hint) == (
        "no firmware scan 'nope'",
        "fleetguard firmware scans",
    )


# --- exposure ----------------------------------------------------------------------------------------


def exposed_ids(service: FirmwareService, *, known_exploited_only: bool = True) -> list[str]:
    return sorted(e.device.id for e in service.exposed_devices(known_exploited_only=known_exploited_only))


def test_devices_running_a_known_exploited_version_of_their_type_are_exposed(
    service: FirmwareService, images: Images
) -> None:
    kev = service.scan(images.kev, actor="a", firmware_version="1.0", device_type="cam")
    service.scan(images.nonkev, actor="a", firmware_version="2.0", device_type="cam")
    service.scan(images.clean, actor="a", firmware_version="3.0", device_type="cam")

    exposures = service.exposed_devices()

    assert sorted(e.device.id for e in exposures) == ["cam-1", "cam-2"]  # not lamp-1: another type
    for exposure in exposures:
        assert exposure.scan_id == kev.id
        assert exposure.known_exploited == (HEARTBLEED,)
        vulns = {f.rule for f in kev.result.findings if f.category is Category.VULNERABILITY}
        assert exposure.vulnerabilities == tuple(sorted(vulns))
        assert HEARTBLEED in exposure.vulnerabilities


def test_any_vulnerability_also_lists_versions_without_known_exploited_ones(
    service: FirmwareService, images: Images
) -> None:
    service.scan(images.kev, actor="a", firmware_version="1.0", device_type="cam")
    nonkev = service.scan(images.nonkev, actor="a", firmware_version="2.0", device_type="cam")
    service.scan(images.clean, actor="a", firmware_version="3.0", device_type="cam")

    assert exposed_ids(service, known_exploited_only=False) == ["cam-1", "cam-2", "cam-3"]
    (cam3,) = [e for e in service.exposed_devices(known_exploited_only=False) if e.device.id == "cam-3"]
    assert cam3.scan_id == nonkev.id
    assert cam3.known_exploited == ()
    assert "CVE-2016-2148" in cam3.vulnerabilities  # BusyBox 1.24.1, not in KEV


def test_a_scan_without_a_device_type_covers_every_type_of_its_version(
    service: FirmwareService, images: Images
) -> None:
    service.scan(images.kev, actor="a", firmware_version="1.0")

    assert exposed_ids(service) == ["cam-1", "cam-2", "lamp-1"]


def test_a_scan_without_a_version_exposes_no_device(service: FirmwareService, images: Images) -> None:
    service.scan(images.kev, actor="a")

    assert service.exposed_devices(known_exploited_only=False) == []


def test_only_the_latest_scan_of_a_version_counts(service: FirmwareService, images: Images) -> None:
    service.scan(images.kev, actor="a", firmware_version="1.0", device_type="cam")
    assert exposed_ids(service) == ["cam-1", "cam-2"]

    service.scan(images.clean, actor="a", firmware_version="1.0", device_type="cam")
    assert service.exposed_devices(known_exploited_only=False) == []

    again = service.scan(images.kev, actor="a", firmware_version="1.0", device_type="cam")
    assert exposed_ids(service) == ["cam-1", "cam-2"]
    assert {e.scan_id for e in service.exposed_devices()} == {again.id}


def test_a_device_is_listed_once_when_typed_and_untyped_scans_of_its_version_are_vulnerable(
    service: FirmwareService, images: Images
) -> None:
    service.scan(images.kev, actor="a", firmware_version="1.0")
    service.scan(images.kev, actor="a", firmware_version="1.0", device_type="cam")

    assert exposed_ids(service) == ["cam-1", "cam-2", "lamp-1"]


# --- the release gate --------------------------------------------------------------------------------

GATE_HIGH = {
    ("passwd.default-credential", "/etc/shadow"),
    ("service.telnet", "/etc/inetd.conf"),
    ("service.telnet", "/etc/init.d/rcS"),
}


@pytest.fixture
def gate_sha(service: FirmwareService, images: Images) -> str:
    return service.scan(images.gate, actor="a", firmware_version="9.0").result.image_sha256


def test_the_default_threshold_is_high(service: FirmwareService) -> None:
    assert DEFAULT_GATE is Severity.HIGH
    assert service.gate_threshold() is Severity.HIGH


def test_a_never_scanned_image_is_refused_and_the_refusal_logged(
    service: FirmwareService, log: EventLog
) -> None:
    sha = "ab" * 32

    decision = service.check_release(sha, actor="ota")

    assert decision == GateDecision(sha, None, Severity.HIGH, False, (), (), "the image was never scanned")
    assert events(log, "firmware.gate_blocked") == [
        (
            "ota",
            f"firmware:{sha}",
            "",
            {
                "scan": "",
                "threshold": "high",
                "blocking": 0,
                "waived": 0,
                "reason": "the image was never scanned",
            },
        )
    ]
    with pytest.raises(ReleaseBlocked) as raised:
        service.require_release(sha, actor="ota")
    assert raised.value.message == f"release of {sha[:16]}… refused: the image was never scanned"


def test_an_image_that_extracted_nothing_is_refused(
    service: FirmwareService, log: EventLog, images: Images
) -> None:
    stored = service.scan(images.encrypted, actor="a")
    sha = stored.result.image_sha256
    assert stored.result.extracted_nothing
    assert "extraction.nothing-extracted" in {f.rule for f in stored.result.findings}

    decision = service.check_release(sha, actor="ota")

    assert (decision.allowed, decision.scan_id, decision.blocking) == (False, stored.id, ())
    assert decision.reason.startswith("nothing could be extracted")
    with pytest.raises(ReleaseBlocked, match="nothing could be extracted"):
        service.require_release(sha, actor="ota")
    assert firmware_actions(log) == ["firmware.scanned", "firmware.gate_blocked", "firmware.gate_blocked"]


def test_an_image_that_extracted_nothing_is_refused_even_with_every_finding_waived(
    service: FirmwareService, images: Images
) -> None:
    stored = service.scan(images.encrypted, actor="a")
    sha = stored.result.image_sha256
    for rule in sorted({f.rule for f in stored.result.findings}):
        service.waive(sha, rule, reason="we trust the vendor", actor="a")

    assert service.check_release(sha, actor="ota").allowed is False


def test_the_blocking_findings_are_listed_exactly(
    service: FirmwareService, log: EventLog, gate_sha: str
) -> None:
    stored = service.latest(gate_sha)
    assert stored is not None

    decision = service.check_release(gate_sha, actor="ota")

    assert decision.allowed is False
    assert (decision.scan_id, decision.threshold, decision.waived) == (stored.id, Severity.HIGH, ())
    assert pairs(decision.blocking) == GATE_HIGH
    assert len(decision.blocking) == 3
    assert decision.reason == "3 finding(s) at or above high not waived"
    assert events(log, "firmware.gate_blocked") == [
        (
            "ota",
            f"firmware:{gate_sha}",
            "",
            {"scan": stored.id, "threshold": "high", "blocking": 3, "waived": 0,
             "reason": "3 finding(s) at or above high not waived"},
        )
    ]  # fmt: skip


def test_a_waiver_for_a_rule_at_a_path_lets_exactly_that_finding_through(
    service: FirmwareService, log: EventLog, gate_sha: str
) -> None:
    waiver = service.waive(
        gate_sha, "service.telnet", path="/etc/inetd.conf", reason="lab network only", actor="bob"
    )

    decision = service.check_release(gate_sha, actor="ota")

    assert pairs(decision.waived) == {("service.telnet", "/etc/inetd.conf")}
    assert pairs(decision.blocking) == GATE_HIGH - {("service.telnet", "/etc/inetd.conf")}
    assert decision.allowed is False
    assert service.waivers(gate_sha) == [waiver]
    assert (waiver.rule, waiver.path, waiver.reason, waiver.actor) == (
        "service.telnet", "/etc/inetd.conf", "lab network only", "bob",
    )  # fmt: skip
    assert events(log, "firmware.waived") == [
        (
            "bob",
            f"firmware:{gate_sha}",
            "lab network only",
            {"rule": "service.telnet", "path": "/etc/inetd.conf", "waiver": waiver.id, "expires_at": ""},
        )
    ]
    assert events(log, "firmware.gate_blocked")[-1][3]["waived"] == 1


def test_a_waiver_without_a_path_covers_the_rule_anywhere(service: FirmwareService, gate_sha: str) -> None:
    service.waive(gate_sha, "service.telnet", reason="lab network only", actor="bob")

    decision = service.check_release(gate_sha, actor="ota")

    assert pairs(decision.blocking) == {("passwd.default-credential", "/etc/shadow")}
    assert len(decision.waived) == 2


def test_waiving_every_blocking_finding_passes_the_gate_and_is_logged(
    service: FirmwareService, log: EventLog, gate_sha: str
) -> None:
    for rule, path in sorted(GATE_HIGH):
        service.waive(gate_sha, rule, path=path, reason="accepted", actor="bob",
                      expires_at=T0 + dt.timedelta(days=30))  # fmt: skip

    decision = service.require_release(gate_sha, actor="ota")

    assert decision.allowed is True
    assert decision.blocking == ()
    assert pairs(decision.waived) == GATE_HIGH
    assert decision.reason == "no unwaived finding at or above high"
    (passed,) = events(log, "firmware.gate_passed")
    assert passed[3] == {
        "scan": decision.scan_id, "threshold": "high", "blocking": 0, "waived": 3,
        "reason": "no unwaived finding at or above high",
    }  # fmt: skip


def test_an_expired_waiver_does_not_let_the_finding_through(service: FirmwareService, gate_sha: str) -> None:
    for rule, path in sorted(GATE_HIGH):
        service.waive(gate_sha, rule, path=path, reason="accepted", actor="bob", expires_at=T0)

    decision = service.check_release(gate_sha, actor="ota")

    assert decision.allowed is False
    assert pairs(decision.blocking) == GATE_HIGH
    assert decision.waived == ()


def test_a_waiver_for_another_image_does_not_apply(
    service: FirmwareService, images: Images, gate_sha: str
) -> None:
    other = service.scan(images.clean, actor="a").result.image_sha256
    for rule, path in sorted(GATE_HIGH):
        service.waive(other, rule, path=path, reason="accepted", actor="bob")

    assert pairs(service.check_release(gate_sha, actor="ota").blocking) == GATE_HIGH
    assert service.waivers(gate_sha) == []


@pytest.mark.parametrize("reason", ["", "   ", "x" * 1001])
def test_a_waiver_without_a_reason_is_refused_and_nothing_is_stored(
    service: FirmwareService, log: EventLog, gate_sha: str, reason: str
) -> None:
    size = log.size()

    with pytest.raises(InvalidInput, match=r"^a waiver needs a reason of 1 to 1000 characters$"):
        service.waive(gate_sha, "service.telnet", reason=reason, actor="bob")

    assert service.waivers(gate_sha) == []
    assert log.size() == size


def test_a_waiver_with_a_bad_rule_is_refused_and_nothing_is_stored(
    service: FirmwareService, log: EventLog, gate_sha: str
) -> None:
    size = log.size()

    with pytest.raises(InvalidInput, match=r"^rule must be 1 to 128 printable characters$"):
        service.waive(gate_sha, "service.telnet\n", reason="ok", actor="bob")

    assert service.waivers(gate_sha) == []
    assert log.size() == size


def test_a_waiver_for_an_unscanned_image_is_not_found_and_nothing_is_stored(
    service: FirmwareService, log: EventLog
) -> None:
    size = log.size()
    sha = "cd" * 32

    with pytest.raises(ScanNotFound) as raised:
        service.waive(sha, "service.telnet", reason="ok", actor="bob")

    assert (raised.value.message, raised.value.hint) == (f"no scan of image {sha}", "scan it first")

    assert service.waivers(sha) == []
    assert log.size() == size


def test_require_release_names_the_blocking_rules(service: FirmwareService, gate_sha: str) -> None:
    with pytest.raises(ReleaseBlocked) as raised:
        service.require_release(gate_sha, actor="ota")

    assert raised.value.message == (
        f"release of {gate_sha[:16]}… refused: 3 finding(s) at or above high not waived "
        "(passwd.default-credential, service.telnet)"
    )
    assert raised.value.status == 409


def test_the_threshold_decides_what_blocks(service: FirmwareService, log: EventLog, gate_sha: str) -> None:
    service.set_gate_threshold(Severity.CRITICAL, actor="carol")

    assert service.gate_threshold() is Severity.CRITICAL
    critical = service.check_release(gate_sha, actor="ota")
    assert pairs(critical.blocking) == {("passwd.default-credential", "/etc/shadow")}
    assert critical.threshold is Severity.CRITICAL

    service.set_gate_threshold(Severity.LOW, actor="carol")

    low = service.check_release(gate_sha, actor="ota")
    assert pairs(low.blocking) == GATE_HIGH | {("service.ftp", "/etc/inetd.conf")}
    assert [(a, s, d) for a, s, _, d in events(log, "firmware.gate_changed")] == [
        ("carol", "firmware:gate", {"threshold": "critical"}),
        ("carol", "firmware:gate", {"threshold": "low"}),
    ]


def test_every_gate_decision_is_logged_in_order(
    service: FirmwareService, log: EventLog, gate_sha: str
) -> None:
    service.check_release(gate_sha, actor="ota")
    service.set_gate_threshold(Severity.CRITICAL, actor="carol")
    service.waive(gate_sha, "passwd.default-credential", path="/etc/shadow", reason="rotated", actor="bob")
    service.check_release(gate_sha, actor="ota")

    assert firmware_actions(log) == [
        "firmware.scanned",
        "firmware.gate_blocked",
        "firmware.gate_changed",
        "firmware.waived",
        "firmware.gate_passed",
    ]


def test_the_latest_scan_of_the_image_decides(
    service: FirmwareService, images: Images, gate_sha: str
) -> None:
    first = service.latest(gate_sha)
    again = service.scan(images.gate, actor="a")

    decision = service.check_release(gate_sha, actor="ota")

    assert first is not None
    assert decision.scan_id == again.id != first.id


# --- the vulnerability database ----------------------------------------------------------------------


def made_up_record(**extra: object) -> dict[str, object]:
    return {
        "id": MADE_UP,
        "modified": "2025-01-01T00:00:00Z",
        "summary": "Made-up overflow in the made-up BusyBox",
        "affected": [
            {"package": {"name": "busybox", "ecosystem": "fleetguard-embedded"}, "versions": ["9.8.7"]}
        ],
        "database_specific": {"cvss_score": 9.8, "cisa_kev": True},
        **extra,
    }


def vulnerability_rules(service: FirmwareService, image: Path) -> set[str]:
    stored = service.scan(image, actor="a")
    return {f.rule for f in stored.result.findings if f.category is Category.VULNERABILITY}


def test_an_imported_osv_record_is_matched_by_the_next_scan(
    service: FirmwareService, log: EventLog, images: Images, tmp_path: Path
) -> None:
    assert vulnerability_rules(service, images.made_up) == set()
    before = len(service.vulndb())
    osv = tmp_path / "advisory.json"
    osv.write_text(json.dumps(made_up_record()))

    assert service.import_vulndb(osv, actor="dave") == 1

    assert len(service.vulndb()) == before + 1
    stored = service.scan(images.made_up, actor="a", firmware_version="3.0", device_type="cam")
    (finding,) = [f for f in stored.result.findings if f.category is Category.VULNERABILITY]
    assert (finding.rule, finding.path, finding.severity) == (MADE_UP, "/bin/busybox", Severity.CRITICAL)
    assert dict(finding.details)["known_exploited"] == "yes"
    assert exposed_ids(service) == ["cam-4"]
    assert events(log, "firmware.vulndb_imported") == [
        ("dave", "firmware:vulndb", "", {"file": "advisory.json", "records": 1})
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON"),
        (json.dumps(made_up_record(id="")), r"\.id"),
        (json.dumps([made_up_record(id="FG-TEST-0002"), {"id": "FG-TEST-0003", "modified": "yesterday"}]),
         r"\[1\]\.modified"),
        (json.dumps(made_up_record(database_specific={"cisa_kev": "yes"})),
         "cisa_kev: expected true or false"),
    ],
)  # fmt: skip
def test_a_malformed_vulndb_file_is_refused_and_the_database_is_unchanged(
    service: FirmwareService, log: EventLog, images: Images, tmp_path: Path, *, content: str, message: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    before = {r.id for r in service.vulndb()}
    size = log.size()

    with pytest.raises(VulnDbInvalid, match=message):
        service.import_vulndb(bad, actor="dave")

    assert {r.id for r in service.vulndb()} == before
    assert not (tmp_path / "data" / "firmware" / "vulndb").exists()
    assert log.size() == size
    assert vulnerability_rules(service, images.made_up) == set()


def test_a_malformed_file_after_an_import_keeps_what_was_imported(
    service: FirmwareService, images: Images, tmp_path: Path
) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(made_up_record()))
    service.import_vulndb(good, actor="dave")
    saved = tmp_path / "data" / "firmware" / "vulndb"
    files = {p.name: p.read_bytes() for p in saved.iterdir()}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(made_up_record(modified="2026-01-01T00:00:00Z", affected="busybox")))

    with pytest.raises(VulnDbInvalid, match="affected"):
        service.import_vulndb(bad, actor="dave")

    assert {p.name: p.read_bytes() for p in saved.iterdir()} == files
    assert vulnerability_rules(service, images.made_up) == {MADE_UP}


def test_a_newer_clean_scan_for_a_device_type_ends_an_older_untyped_exposure_for_that_type(
    service: FirmwareService, images: Images
) -> None:
    service.scan(images.kev, actor="a", firmware_version="1.0")
    service.scan(images.clean, actor="a", firmware_version="1.0", device_type="cam")

    assert exposed_ids(service) == ["lamp-1"]  # the cameras' latest scan of 1.0 is clean
