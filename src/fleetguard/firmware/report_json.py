"""A scan result as JSON, and back: how scans are stored in the database and exchanged.

``from_json(to_json(result)) == result`` for every :class:`ScanResult` (floats are written with
Python's shortest round-tripping repr). The document carries ``format`` and ``version`` so that a
later layout can still read stored scans; :func:`from_json` checks every field's type and raises
:class:`ScanJsonInvalid` naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, TypeVar

from fleetguard.errors import InvalidInput
from fleetguard.firmware.errors import FirmwareError
from fleetguard.firmware.model import (
    Category,
    Component,
    Finding,
    Layer,
    LayerStatus,
    ScanResult,
    Severity,
    UnextractedRegion,
)

__all__ = ["FORMAT", "VERSION", "ScanJsonInvalid", "from_json", "to_json"]

FORMAT: Final = "fleetguard-firmware-scan"
VERSION: Final = 1

_T = TypeVar("_T")


class ScanJsonInvalid(InvalidInput, FirmwareError):
    """A stored or uploaded scan document is not one :func:`to_json` wrote."""

    code = "firmware-scan-json-invalid"


def to_json(result: ScanResult) -> dict[str, object]:
    """Return ``result`` as a JSON-compatible dict (see :func:`from_json`)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "image_name": result.image_name,
        "image_sha256": result.image_sha256,
        "image_size": result.image_size,
        "layers": [_layer_json(layer) for layer in result.layers],
        "unextracted": [
            {"offset": r.offset, "size": r.size, "entropy": r.entropy} for r in result.unextracted
        ],
        "file_count": result.file_count,
        "findings": [_finding_json(f) for f in result.findings],
        "components": [_component_json(c) for c in result.components],
        "risk": result.risk,
        "scanned_at": result.scanned_at,
        "seconds": result.seconds,
        "notes": list(result.notes),
    }


def _layer_json(layer: Layer) -> dict[str, object]:
    return {
        "name": layer.name,
        "format": layer.format,
        "offset": layer.offset,
        "size": layer.size,
        "status": layer.status.value,
        "extractor": layer.extractor,
        "parent": layer.parent,
        "detail": layer.detail,
    }


def _finding_json(finding: Finding) -> dict[str, object]:
    return {
        "rule": finding.rule,
        "category": finding.category.value,
        "severity": finding.severity.value,
        "title": finding.title,
        "path": finding.path,
        "evidence": finding.evidence,
        "offset": finding.offset,
        "details": [[key, value] for key, value in finding.details],
    }


def _component_json(component: Component) -> dict[str, object]:
    return {
        "name": component.name,
        "version": component.version,
        "path": component.path,
        "evidence": component.evidence,
        "offset": component.offset,
        "purl": component.purl,
        "cpe": component.cpe,
    }


def from_json(document: object) -> ScanResult:
    """Return the :class:`ScanResult` of a :func:`to_json` document; raise :class:`ScanJsonInvalid`."""
    doc = _Fields(document, "scan")
    if doc.text("format") != FORMAT or doc.integer("version") != VERSION:
        raise ScanJsonInvalid(f"not a {FORMAT} version {VERSION} document")
    return ScanResult(
        image_name=doc.text("image_name"),
        image_sha256=doc.text("image_sha256"),
        image_size=doc.integer("image_size"),
        layers=doc.items("layers", _layer),
        unextracted=doc.items("unextracted", _region),
        file_count=doc.integer("file_count"),
        findings=doc.items("findings", _finding),
        components=doc.items("components", _component),
        risk=doc.integer("risk"),
        scanned_at=doc.text("scanned_at"),
        seconds=doc.number("seconds"),
        notes=tuple(doc.list_of("notes", str)),
    )


def _layer(f: _Fields) -> Layer:
    return Layer(
        name=f.text("name"),
        format=f.text("format"),
        offset=f.integer("offset"),
        size=f.integer("size"),
        status=f.enum("status", LayerStatus),
        extractor=f.text("extractor"),
        parent=f.optional("parent", str),
        detail=f.text("detail"),
    )


def _region(f: _Fields) -> UnextractedRegion:
    return UnextractedRegion(offset=f.integer("offset"), size=f.integer("size"), entropy=f.number("entropy"))


def _finding(f: _Fields) -> Finding:
    pairs = f.list_of("details", list)
    if not all(len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], str) for p in pairs):
        raise ScanJsonInvalid(f"{f.where}.details: expected [key, value] string pairs")
    return Finding(
        rule=f.text("rule"),
        category=f.enum("category", Category),
        severity=f.enum("severity", Severity),
        title=f.text("title"),
        path=f.text("path"),
        evidence=f.text("evidence"),
        offset=f.optional("offset", int),
        details=tuple((str(p[0]), str(p[1])) for p in pairs),
    )


def _component(f: _Fields) -> Component:
    return Component(
        name=f.text("name"),
        version=f.text("version"),
        path=f.text("path"),
        evidence=f.text("evidence"),
        offset=f.optional("offset", int),
        purl=f.optional("purl", str),
        cpe=f.optional("cpe", str),
    )


class _Fields:
    """Typed access to one JSON object's fields; errors name the field's path."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, Mapping):
            raise ScanJsonInvalid(f"{where}: expected an object")
        self.where = where
        self._value: Mapping[str, object] = value

    def _get(self, key: str, kind: type[_T]) -> _T:
        value = self._value.get(key)
        # bool is an int subclass; a JSON true is never a count.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ScanJsonInvalid(f"{self.where}.{key}: expected {kind.__name__}")
        return value

    def text(self, key: str) -> str:
        return self._get(key, str)

    def integer(self, key: str) -> int:
        return self._get(key, int)

    def number(self, key: str) -> float:
        value = self._value.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return self._get(key, float)

    def optional(self, key: str, kind: type[_T]) -> _T | None:
        return None if self._value.get(key) is None else self._get(key, kind)

    def enum(self, key: str, kind: Callable[[str], _T]) -> _T:
        text = self.text(key)
        try:
            return kind(text)
        except ValueError as exc:
            raise ScanJsonInvalid(f"{self.where}.{key}: unknown value {text[:40]!r}") from exc

    def list_of(self, key: str, kind: type[_T]) -> list[_T]:
        items = self._get(key, list)
        if not all(isinstance(item, kind) for item in items):
            raise ScanJsonInvalid(f"{self.where}.{key}: expected a list of {kind.__name__}")
        return items

    def items(self, key: str, parse: Callable[[_Fields], _T]) -> tuple[_T, ...]:
        return tuple(
            parse(_Fields(item, f"{self.where}.{key}[{i}]")) for i, item in enumerate(self._get(key, list))
        )
