"""SARIF 2.1.0 output, checked field by field against the specification (no schema ships offline)."""

from __future__ import annotations

import json
from typing import Any

from fleetguard.firmware.model import Category, Component, Finding, ScanResult, Severity
from fleetguard.firmware.sarif import level_for, sarif
from fleetguard.firmware.vulndb import VulnDb

SHA = "ab" * 32
LEVELS = {"none", "note", "warning", "error"}  # SARIF 3.27.10


def scan(findings: tuple[Finding, ...] = (), notes: tuple[str, ...] = ()) -> ScanResult:
    components = (Component("busybox", "1.33.1", "/bin/busybox", "'BusyBox v1.33.1' at 0x10", 0x10),)
    found = (*findings, *VulnDb.load_default().match(components))
    return ScanResult(
        "fw image.bin", SHA, 100, (), (), 3, found, components, 60, "2026-11-26T10:00:00Z", 0.5, notes
    )


KEY = Finding(
    "key.rsa-private",
    Category.PRIVATE_KEY,
    Severity.HIGH,
    "RSA private key",
    "/etc/ssl/private/<server>.key",
    "-----BEGIN RSA… sha256:1234",
    offset=0,
)
SHADOW = Finding(
    "passwd.empty", Category.PASSWORD, Severity.CRITICAL, "Empty password", "/etc/shadow", "root::"
)


def check_structure(log: Any) -> None:
    """The requirements of SARIF 2.1.0 sections 3.13-3.30 that this output relies on."""
    assert log["version"] == "2.1.0"
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert isinstance(driver["name"], str)
    rule_ids = [rule["id"] for rule in driver["rules"]]
    assert len(rule_ids) == len(set(rule_ids))
    for rule in driver["rules"]:
        assert rule["defaultConfiguration"]["level"] in LEVELS
        assert rule["shortDescription"]["text"]
    for result in run["results"]:
        assert driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] in LEVELS
        assert result["message"]["text"]
        for location in result["locations"]:
            physical = location["physicalLocation"]
            assert physical["artifactLocation"]["uriBaseId"] in run["originalUriBaseIds"]
            assert not physical["artifactLocation"]["uri"].startswith("/")
            if "region" in physical:
                assert physical["region"]["byteOffset"] >= 0
        assert all(isinstance(v, str) for v in result["partialFingerprints"].values())
    json.dumps(log)  # serialisable as is


def test_structure() -> None:
    check_structure(sarif(scan((KEY, SHADOW), notes=("squashfs at 0x0: 3 files over the size limit",))))


def test_rules_are_the_distinct_rule_ids() -> None:
    log = sarif(scan((KEY, SHADOW, KEY)))
    rule_ids = [r["id"] for r in log["runs"][0]["tool"]["driver"]["rules"]]  # type: ignore[index]
    assert "key.rsa-private" in rule_ids
    assert "passwd.empty" in rule_ids
    assert "CVE-2021-42373" in rule_ids
    assert rule_ids == sorted(rule_ids)


def test_levels_follow_severity() -> None:
    assert [level_for(s) for s in Severity] == ["note", "note", "warning", "error", "error"]
    results = sarif(scan((KEY, SHADOW)))["runs"][0]["results"]  # type: ignore[index]
    assert results[0]["level"] == "error"


def test_location_is_the_file_in_the_image_with_its_byte_offset() -> None:
    key, shadow, busybox = sarif(scan((KEY, SHADOW)))["runs"][0]["results"][:3]  # type: ignore[index]
    physical = key["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"] == {
        "uri": "etc/ssl/private/%3Cserver%3E.key",
        "uriBaseId": "IMAGEROOT",
    }
    assert physical["region"] == {"byteOffset": 0}
    assert key["locations"][0]["logicalLocations"] == [
        {"fullyQualifiedName": "/etc/ssl/private/<server>.key"}
    ]
    assert "region" not in shadow["locations"][0]["physicalLocation"]
    assert busybox["locations"][0]["physicalLocation"]["region"] == {"byteOffset": 0x10}


def test_image_is_the_analysis_target() -> None:
    run = sarif(scan())["runs"][0]  # type: ignore[index]
    assert run["artifacts"] == [
        {
            "location": {"uri": "fw%20image.bin"},
            "length": 100,
            "hashes": {"sha-256": SHA},
            "roles": ["analysisTarget"],
        }
    ]


def test_fingerprints_are_stable_and_distinct() -> None:
    first = sarif(scan((KEY, SHADOW)))["runs"][0]["results"]  # type: ignore[index]
    again = sarif(scan((KEY, SHADOW)))["runs"][0]["results"]  # type: ignore[index]
    prints = [r["partialFingerprints"]["fleetguard/v1"] for r in first]
    assert prints == [r["partialFingerprints"]["fleetguard/v1"] for r in again]
    assert len(set(prints)) == len(prints)


def test_vulnerability_rule_carries_the_cvss_as_security_severity() -> None:
    rules = {r["id"]: r for r in sarif(scan())["runs"][0]["tool"]["driver"]["rules"]}  # type: ignore[index]
    assert rules["CVE-2021-42373"]["properties"]["security-severity"] == "5.5"


def test_notes_become_notifications() -> None:
    invocation = sarif(scan(notes=("partial",)))["runs"][0]["invocations"][0]  # type: ignore[index]
    assert invocation["toolExecutionNotifications"] == [{"level": "note", "message": {"text": "partial"}}]
