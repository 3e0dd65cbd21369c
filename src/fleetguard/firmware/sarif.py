"""A scan result as SARIF 2.1.0 (OASIS Static Analysis Results Interchange Format, 2.1.0 errata 01).

One run of the ``fleetguard`` driver. Its rules are the distinct rule ids of the findings (OSV/CVE ids
for vulnerabilities), each with the worst level its findings have and a ``security-severity`` property
(the CVSS-like number code-scanning services sort by). Each finding is one result:

* ``level`` from the severity: critical and high are ``error``, medium ``warning``, low and info
  ``note`` (SARIF 3.27.10);
* one location: the file inside the image, as a URI relative to the base id ``IMAGEROOT`` (the root
  of the extracted filesystems, described in ``originalUriBaseIds``, SARIF 3.14.14), with a
  ``byteOffset`` region when the finding has an offset (SARIF 3.30.2);
* ``partialFingerprints["fleetguard/v1"]``: a hash of rule, path, offset and evidence, stable across
  scans of the same image so that a triage decision follows the result (SARIF 3.27.17).

The image itself is ``artifacts[0]``, with its SHA-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Final
from urllib.parse import quote

from fleetguard.firmware.model import Finding, ScanResult, Severity

__all__ = ["SARIF_VERSION", "level_for", "sarif"]

SARIF_VERSION: Final = "2.1.0"
_SCHEMA: Final = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
_BASE: Final = "IMAGEROOT"
_FINGERPRINT: Final = "fleetguard/v1"
_LEVEL: Final[Mapping[Severity, str]] = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
# GitHub code scanning's security-severity bands: > 9.0 critical, 7.0-8.9 high, 4.0-6.9 medium.
_SECURITY_SEVERITY: Final[Mapping[Severity, str]] = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "2.0",
    Severity.INFO: "0.0",
}


def level_for(severity: Severity) -> str:
    """The SARIF result level of ``severity``."""
    return _LEVEL[severity]


def sarif(result: ScanResult) -> dict[str, object]:
    """Return the SARIF 2.1.0 log (as a dict) of ``result``: one run, one result per finding."""
    rules = _rules(result.findings)
    index = {rule_id: i for i, rule_id in enumerate(rules)}
    run: dict[str, object] = {
        "tool": {
            "driver": {
                "name": "fleetguard",
                "version": _tool_version(),
                "rules": [_rule(rule_id, findings) for rule_id, findings in rules.items()],
            }
        },
        "originalUriBaseIds": {
            _BASE: {
                "description": {"text": f"The root of the filesystems extracted from {result.image_name}"}
            }
        },
        "artifacts": [
            {
                "location": {"uri": quote(result.image_name)},
                "length": result.image_size,
                "hashes": {"sha-256": result.image_sha256.lower()},
                "roles": ["analysisTarget"],
            }
        ],
        "invocations": [_invocation(result)],
        "results": [_result(f, index[f.rule]) for f in result.findings],
    }
    return {"$schema": _SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def _tool_version() -> str:
    try:
        return version("fleetguard")
    except PackageNotFoundError:
        return "unknown"


def _rules(findings: Sequence[Finding]) -> dict[str, list[Finding]]:
    rules: dict[str, list[Finding]] = {}
    for finding in findings:
        rules.setdefault(finding.rule, []).append(finding)
    return dict(sorted(rules.items()))


def _rule(rule_id: str, findings: Sequence[Finding]) -> dict[str, object]:
    worst = max((f.severity for f in findings), key=lambda s: s.rank)
    first = findings[0]
    details = dict(first.details)
    cvss = details.get("cvss", "")
    return {
        "id": rule_id,
        "shortDescription": {"text": first.title[:1000] or rule_id},
        "defaultConfiguration": {"level": _LEVEL[worst]},
        "properties": {
            "tags": ["security", first.category.value],
            "security-severity": cvss if cvss.replace(".", "", 1).isdigit() else _SECURITY_SEVERITY[worst],
        },
    }


def _invocation(result: ScanResult) -> dict[str, object]:
    invocation: dict[str, object] = {"executionSuccessful": True, "endTimeUtc": result.scanned_at}
    if result.notes:
        invocation["toolExecutionNotifications"] = [
            {"level": "note", "message": {"text": note}} for note in result.notes
        ]
    return invocation


def _result(finding: Finding, rule_index: int) -> dict[str, object]:
    physical: dict[str, object] = {
        "artifactLocation": {"uri": _relative_uri(finding.path), "uriBaseId": _BASE}
    }
    if finding.offset is not None and finding.offset >= 0:
        physical["region"] = {"byteOffset": finding.offset}
    return {
        "ruleId": finding.rule,
        "ruleIndex": rule_index,
        "kind": "fail",
        "level": _LEVEL[finding.severity],
        "message": {"text": f"{finding.title}: {finding.evidence}" if finding.evidence else finding.title},
        "locations": [
            {"physicalLocation": physical, "logicalLocations": [{"fullyQualifiedName": finding.path}]}
        ],
        "partialFingerprints": {_FINGERPRINT: _fingerprint(finding)},
        "properties": {
            "category": finding.category.value,
            "severity": finding.severity.value,
            "details": dict(finding.details),
        },
    }


def _relative_uri(path: str) -> str:
    # SARIF 3.4.3: a relative reference against uriBaseId; "/" alone is the image root.
    return quote(path.lstrip("/")) or "."


def _fingerprint(finding: Finding) -> str:
    offset = "" if finding.offset is None else str(finding.offset)
    material = "\0".join((finding.rule, finding.path, offset, finding.evidence))
    return hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()
