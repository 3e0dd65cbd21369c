"""HTTP views of firmware scans, exposure and the release gate."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from fleetguard.firmware.model import Component, Finding, Layer, Severity
from fleetguard.firmware.service import Exposure, GateDecision, StoredScan, Waiver

__all__ = [
    "ComponentView",
    "ExposureView",
    "FindingView",
    "GateSettings",
    "GateView",
    "LayerView",
    "ScanSummary",
    "ScanView",
    "WaiverRequest",
    "WaiverView",
]


class FindingView(BaseModel):
    """One finding: where, what, how bad, and the evidence (secrets redacted)."""

    rule: str
    category: str
    severity: Severity
    title: str
    path: str
    offset: int | None
    evidence: str
    details: dict[str, str]

    @classmethod
    def of(cls, f: Finding) -> FindingView:
        """Return the view of ``f``."""
        return cls(
            rule=f.rule,
            category=f.category.value,
            severity=f.severity,
            title=f.title,
            path=f.path,
            offset=f.offset,
            evidence=f.evidence,
            details=dict(f.details),
        )


class ComponentView(BaseModel):
    """A component with its exact version and the evidence for it."""

    name: str
    version: str
    path: str
    evidence: str
    purl: str | None
    cpe: str | None

    @classmethod
    def of(cls, c: Component) -> ComponentView:
        """Return the view of ``c``."""
        return cls(name=c.name, version=c.version, path=c.path, evidence=c.evidence, purl=c.purl, cpe=c.cpe)


class LayerView(BaseModel):
    """One container or filesystem found in the image, and what happened to it."""

    name: str
    format: str
    offset: int
    size: int
    status: str
    extractor: str
    detail: str

    @classmethod
    def of(cls, layer: Layer) -> LayerView:
        """Return the view of ``layer``."""
        return cls(
            name=layer.name,
            format=layer.format,
            offset=layer.offset,
            size=layer.size,
            status=layer.status.value,
            extractor=layer.extractor,
            detail=layer.detail,
        )


class ScanSummary(BaseModel):
    """A stored scan in brief."""

    id: str
    image_name: str
    image_sha256: str
    image_size: int
    firmware_version: str | None
    device_type: str | None
    risk: int = Field(ge=0, le=100)
    findings: dict[str, int]
    known_exploited: list[str]
    files: int
    extracted_nothing: bool
    scanned_at: dt.datetime

    @classmethod
    def of(cls, s: StoredScan) -> ScanSummary:
        """Return the summary of ``s``."""
        r = s.result
        return cls(
            id=s.id,
            image_name=r.image_name,
            image_sha256=r.image_sha256,
            image_size=r.image_size,
            firmware_version=s.firmware_version,
            device_type=s.device_type,
            risk=r.risk,
            findings={sev.value: sum(1 for f in r.findings if f.severity is sev) for sev in Severity},
            known_exploited=sorted(
                {f.rule for f in r.findings if dict(f.details).get("known_exploited") == "yes"}
            ),
            files=r.file_count,
            extracted_nothing=r.extracted_nothing,
            scanned_at=s.scanned_at,
        )


class ScanView(ScanSummary):
    """A stored scan in full."""

    layers: list[LayerView]
    unextracted: list[dict[str, float]]
    components: list[ComponentView]
    finding_list: list[FindingView]

    @classmethod
    def of(cls, s: StoredScan) -> ScanView:
        """Return the full view of ``s``."""
        r = s.result
        return cls(
            **ScanSummary.of(s).model_dump(),
            layers=[LayerView.of(layer) for layer in r.layers],
            unextracted=[{"offset": u.offset, "size": u.size, "entropy": u.entropy} for u in r.unextracted],
            components=[ComponentView.of(c) for c in r.components],
            finding_list=[FindingView.of(f) for f in r.findings],
        )


class ExposureView(BaseModel):
    """A device running firmware with vulnerabilities."""

    device_id: str
    firmware_version: str
    scan_id: str
    known_exploited: list[str]
    vulnerabilities: list[str]

    @classmethod
    def of(cls, e: Exposure) -> ExposureView:
        """Return the view of ``e``."""
        return cls(
            device_id=e.device.id,
            firmware_version=e.device.firmware_version,
            scan_id=e.scan_id,
            known_exploited=list(e.known_exploited),
            vulnerabilities=list(e.vulnerabilities),
        )


class GateSettings(BaseModel):
    """The release gate's threshold."""

    model_config = ConfigDict(extra="forbid")

    threshold: Severity


class GateView(BaseModel):
    """A gate decision and the findings behind it."""

    image_sha256: str
    scan_id: str | None
    threshold: Severity
    allowed: bool
    reason: str
    blocking: list[FindingView]
    waived: list[FindingView]

    @classmethod
    def of(cls, d: GateDecision) -> GateView:
        """Return the view of ``d``."""
        return cls(
            image_sha256=d.image_sha256,
            scan_id=d.scan_id,
            threshold=d.threshold,
            allowed=d.allowed,
            reason=d.reason,
            blocking=[FindingView.of(f) for f in d.blocking],
            waived=[FindingView.of(f) for f in d.waived],
        )


class WaiverRequest(BaseModel):
    """Waive one rule for one image (at one path, or anywhere), with a reason."""

    model_config = ConfigDict(extra="forbid")

    image_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rule: str = Field(min_length=1, max_length=128)
    path: str | None = Field(default=None, max_length=1024)
    reason: str = Field(min_length=1, max_length=1000)
    expires_at: dt.datetime | None = None


class WaiverView(BaseModel):
    """A recorded waiver."""

    id: str
    image_sha256: str
    rule: str
    path: str | None
    reason: str
    actor: str
    created_at: dt.datetime
    expires_at: dt.datetime | None

    @classmethod
    def of(cls, w: Waiver) -> WaiverView:
        """Return the view of ``w``."""
        return cls(
            id=w.id,
            image_sha256=w.image_sha256,
            rule=w.rule,
            path=w.path,
            reason=w.reason,
            actor=w.actor,
            created_at=w.created_at,
            expires_at=w.expires_at,
        )
