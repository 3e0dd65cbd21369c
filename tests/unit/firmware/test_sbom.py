"""CycloneDX 1.6 SBOM, validated against the official schema shipped in cyclonedx-python-lib."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from fleetguard.firmware.model import Component, Layer, LayerStatus, ScanResult, UnextractedRegion
from fleetguard.firmware.sbom import cyclonedx
from fleetguard.firmware.vulndb import VulnDb

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
COMPONENTS = (
    Component(
        "openssl",
        "1.0.1f",
        "/usr/lib/libssl.so.1.0.0",
        "'OpenSSL 1.0.1f  6 Jan 2014' at 0x1c40",
        0x1C40,
        "pkg:generic/openssl@1.0.1f",
        "cpe:2.3:a:openssl:openssl:1.0.1f:*:*:*:*:*:*:*",
    ),
    Component("linux", "5.10.50", "/lib/modules/5.10.50/", "module directory /lib/modules/5.10.50/"),
    Component("dropbear", "2015.71", "/usr/sbin/dropbear", "opkg package dropbear 2015.71-1", 12),
)


def scan(components: tuple[Component, ...] = COMPONENTS) -> ScanResult:
    findings = tuple(VulnDb.load_default().match(components))
    return ScanResult(
        image_name="router-<v2>.bin",
        image_sha256=SHA,
        image_size=4096,
        layers=(Layer("squashfs@0x100", "squashfs", 0x100, 3000, LayerStatus.EXTRACTED, "native"),),
        unextracted=(UnextractedRegion(0, 0x100, 7.99),),
        file_count=12,
        findings=findings,
        components=components,
        risk=90,
        scanned_at="2026-11-26T10:00:00Z",
        seconds=1.25,
    )


def validate(document: dict[str, object]) -> None:
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(document))
    assert error is None, error


def test_valid_against_the_cyclonedx_1_6_schema() -> None:
    validate(cyclonedx(scan()))


def test_empty_scan_is_valid_too() -> None:
    document = cyclonedx(scan(()))
    validate(document)
    assert "vulnerabilities" not in document


def test_schema_validation_is_not_vacuous() -> None:
    document = cyclonedx(scan())
    document["components"][0]["type"] = "gadget"  # type: ignore[index]
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(document)) is not None


def test_header_and_image() -> None:
    document = cyclonedx(scan())
    assert (document["bomFormat"], document["specVersion"], document["version"]) == ("CycloneDX", "1.6", 1)
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", str(document["serialNumber"]))
    image = document["metadata"]["component"]  # type: ignore[index]
    assert image["type"] == "firmware"
    assert image["name"] == "router-<v2>.bin"
    assert image["hashes"] == [{"alg": "SHA-256", "content": SHA}]


def test_serial_number_is_a_function_of_the_image_hash() -> None:
    first, second = cyclonedx(scan()), cyclonedx(scan(COMPONENTS[:1]))
    assert first["serialNumber"] == second["serialNumber"]
    other = cyclonedx(dataclasses.replace(scan(), image_sha256="0" * 64))
    assert other["serialNumber"] != first["serialNumber"]
    assert cyclonedx(scan()) == first


def test_components_with_identifiers_and_evidence() -> None:
    document: Any = cyclonedx(scan())
    openssl, linux, dropbear = document["components"]
    assert (openssl["purl"], openssl["cpe"], openssl["type"]) == (
        "pkg:generic/openssl@1.0.1f",
        "cpe:2.3:a:openssl:openssl:1.0.1f:*:*:*:*:*:*:*",
        "library",
    )
    identity = openssl["evidence"]["identity"][0]
    assert identity["field"] == "version"
    assert identity["methods"][0] == {
        "technique": "binary-analysis",
        "confidence": 0.9,
        "value": "'OpenSSL 1.0.1f  6 Jan 2014' at 0x1c40",
    }
    assert openssl["evidence"]["occurrences"] == [
        {
            "location": "/usr/lib/libssl.so.1.0.0",
            "offset": 0x1C40,
            "additionalContext": identity["methods"][0]["value"],
        }
    ]
    assert linux["type"] == "operating-system"
    assert linux["evidence"]["identity"][0]["methods"][0]["technique"] == "filename"
    assert "offset" not in linux["evidence"]["occurrences"][0]
    assert dropbear["evidence"]["identity"][0]["methods"][0]["technique"] == "manifest-analysis"


def test_vulnerabilities_with_ratings_affects_and_kev() -> None:
    vulns = {v["id"]: v for v in cyclonedx(scan())["vulnerabilities"]}  # type: ignore[attr-defined]
    heartbleed = vulns["CVE-2014-0160"]
    assert heartbleed["affects"] == [{"ref": "component-0"}]
    assert heartbleed["ratings"] == [
        {
            "severity": "high",
            "score": 7.5,
            "method": "CVSSv31",
            "vector": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N",
        }
    ]
    assert heartbleed["properties"] == [{"name": "fleetguard:cisa-kev", "value": "true"}]
    assert heartbleed["recommendation"] == "Upgrade openssl to 1.0.1g or later."
    assert vulns["CVE-2016-2108"]["properties"] == [{"name": "fleetguard:cisa-kev", "value": "false"}]
    assert vulns["CVE-2016-7406"]["affects"] == [{"ref": "component-2"}]


@pytest.mark.parametrize("name", ['a"b', "<script>alert(1)</script>", "ü.bin"])
def test_odd_image_names_stay_valid(name: str) -> None:
    validate(cyclonedx(dataclasses.replace(scan(), image_name=name)))
