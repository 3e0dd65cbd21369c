"""A CycloneDX 1.6 SBOM of a scanned firmware image (JSON, ECMA-424 1st edition).

The BOM describes the image (``metadata.component``, type ``firmware``, with its SHA-256) and the
components found in it, each with its purl and CPE and the evidence of its version
(``evidence.identity`` and ``evidence.occurrences``, CycloneDX 1.6). Vulnerability findings become
``vulnerabilities`` with a CVSS rating, the affected component and, as the property
``fleetguard:cisa-kev``, whether CISA lists the vulnerability as known exploited.

The output is deterministic: the serial number is a UUIDv5 of the image hash, and the timestamp is
the scan's, so one scan always gives the same BOM.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Final

from fleetguard.firmware.model import Category, Component, Finding, ScanResult

__all__ = ["SPEC_VERSION", "cyclonedx"]

SPEC_VERSION: Final = "1.6"
_SCHEMA: Final = "http://cyclonedx.org/schema/bom-1.6.schema.json"
# A fixed namespace: the serial number of an image's BOM is a function of its hash (RFC 9562 5.5).
_SERIAL_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://fleetguard.invalid/firmware-sbom")
_KIND: Final[Mapping[str, str]] = {
    "linux": "operating-system",
    "u-boot": "firmware",
    "glibc": "library",
    "uclibc": "library",
    "musl": "library",
    "openssl": "library",
    "zlib": "library",
    "expat": "library",
    "libupnp": "library",
    "c-ares": "library",
    "libssh": "library",
    "sqlite": "library",
    "xz": "library",
}
# CycloneDX 1.6 evidence.identity[].methods[].technique, with the confidence fleetguard gives it.
_BINARY, _MANIFEST, _FILENAME = ("binary-analysis", 0.9), ("manifest-analysis", 0.8), ("filename", 0.6)


def cyclonedx(result: ScanResult) -> dict[str, object]:
    """Return the CycloneDX 1.6 JSON document (as a dict) of ``result``."""
    image_ref = f"firmware-{result.image_sha256}"
    document: dict[str, object] = {
        "$schema": _SCHEMA,
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid5(_SERIAL_NAMESPACE, result.image_sha256.lower())}",
        "version": 1,
        "metadata": _metadata(result, image_ref),
        "components": [_component(i, c) for i, c in enumerate(result.components)],
        "dependencies": [
            {"ref": image_ref, "dependsOn": [_component_ref(i) for i in range(len(result.components))]}
        ],
    }
    vulnerabilities = _vulnerabilities(result.findings, result.components, image_ref)
    if vulnerabilities:
        document["vulnerabilities"] = vulnerabilities
    return document


def _metadata(result: ScanResult, image_ref: str) -> dict[str, object]:
    return {
        "timestamp": result.scanned_at,
        "tools": {"components": [{"type": "application", "name": "fleetguard", "version": _tool_version()}]},
        "component": {
            "type": "firmware",
            "bom-ref": image_ref,
            "name": result.image_name,
            "hashes": [{"alg": "SHA-256", "content": result.image_sha256.lower()}],
            "properties": [{"name": "fleetguard:image-size", "value": str(result.image_size)}],
        },
    }


def _tool_version() -> str:
    try:
        return version("fleetguard")
    except PackageNotFoundError:
        return "unknown"


def _component_ref(index: int) -> str:
    return f"component-{index}"


def _component(index: int, component: Component) -> dict[str, object]:
    technique, confidence = _technique(component)
    occurrence: dict[str, object] = {"location": component.path, "additionalContext": component.evidence}
    if component.offset is not None:
        occurrence["offset"] = component.offset
    entry: dict[str, object] = {
        "type": _KIND.get(component.name, "application"),
        "bom-ref": _component_ref(index),
        "name": component.name,
        "version": component.version,
    }
    if component.purl:
        entry["purl"] = component.purl
    if component.cpe:
        entry["cpe"] = component.cpe
    entry["evidence"] = {
        "identity": [
            {
                "field": "version",
                "confidence": confidence,
                "concludedValue": component.version,
                "methods": [{"technique": technique, "confidence": confidence, "value": component.evidence}],
            }
        ],
        "occurrences": [occurrence],
    }
    return entry


def _technique(component: Component) -> tuple[str, float]:
    """How the version was found: an opkg database, a file name or path, or the file's bytes."""
    if component.evidence.startswith("opkg package"):
        return _MANIFEST
    if component.offset is None:
        return _FILENAME
    return _BINARY


def _vulnerabilities(
    findings: Sequence[Finding], components: Sequence[Component], image_ref: str
) -> list[dict[str, object]]:
    by_id: dict[str, dict[str, object]] = {}
    affects: dict[str, list[str]] = {}
    for finding in findings:
        if finding.category is not Category.VULNERABILITY:
            continue
        details = dict(finding.details)
        vuln_id = details.get("id", finding.rule)
        ref = _affected_ref(details, finding, components) or image_ref
        if ref not in affects.setdefault(vuln_id, []):
            affects[vuln_id].append(ref)
        by_id.setdefault(vuln_id, _vulnerability(vuln_id, finding, details))
    return [
        {**entry, "affects": [{"ref": ref} for ref in affects[vuln_id]]}
        for vuln_id, entry in sorted(by_id.items())
    ]


def _affected_ref(
    details: Mapping[str, str], finding: Finding, components: Sequence[Component]
) -> str | None:
    index = details.get("component_index", "")
    if index.isdigit() and int(index) < len(components):
        return _component_ref(int(index))
    for i, component in enumerate(components):
        if component.path == finding.path and component.name == details.get("component"):
            return _component_ref(i)
    return None


def _vulnerability(vuln_id: str, finding: Finding, details: Mapping[str, str]) -> dict[str, object]:
    rating: dict[str, object] = {"severity": finding.severity.value}
    score, vector = details.get("cvss", ""), details.get("cvss_vector", "")
    if score.replace(".", "", 1).isdigit():
        rating["score"] = float(score)
    if vector:
        rating["method"] = "CVSSv31" if vector.startswith("CVSS:3.1/") else "CVSSv3"
        rating["vector"] = vector
    entry: dict[str, object] = {"bom-ref": f"vulnerability-{vuln_id}", "id": vuln_id}
    if vuln_id.startswith("CVE-"):
        entry["source"] = {"name": "NVD", "url": f"https://nvd.nist.gov/vuln/detail/{vuln_id}"}
    aliases = [a for a in details.get("aliases", "").split(",") if a]
    if aliases:
        entry["references"] = [{"id": alias, "source": {"name": "alias"}} for alias in aliases]
    entry["ratings"] = [rating]
    entry["description"] = finding.title
    fixed = details.get("fixed", "none")
    if fixed != "none":
        entry["recommendation"] = f"Upgrade {details.get('component', 'the component')} to {fixed} or later."
    kev = details.get("known_exploited") == "yes"
    entry["properties"] = [{"name": "fleetguard:cisa-kev", "value": "true" if kev else "false"}]
    return entry
