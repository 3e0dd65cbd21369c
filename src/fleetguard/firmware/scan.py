"""The scan pipeline: extract, analyze, find components, match vulnerabilities offline, score.

Stages, each bounded: (1) hash the image; (2) extract it into a private work directory that is
removed afterwards (:mod:`fleetguard.firmware.extraction`); (3) run every analyzer and the ELF
hardening analyzer over the extracted tree; (4) detect components with exact versions; (5) match
them against the offline vulnerability database; (6) turn what could not be extracted into
findings, so that an encrypted or unknown image is reported as such (with its entropy), never as
clean; (7) score. No network is used at any stage.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleetguard.firmware.analyzers import ANALYZERS, run_analyzers
from fleetguard.firmware.analyzers.hardening import HardeningAnalyzer
from fleetguard.firmware.components import detect_components
from fleetguard.firmware.extraction import Limits, extract_image
from fleetguard.firmware.model import (
    Analyzer,
    Category,
    Component,
    ExtractedTree,
    Finding,
    LayerStatus,
    ScanResult,
    Severity,
)
from fleetguard.firmware.risk import risk_score
from fleetguard.firmware.vulndb import VulnDb

__all__ = ["ScanOptions", "scan_image"]

_HASH_CHUNK = 1024 * 1024
_TWO = 2

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """Where to work, what to match against, and the limits."""

    work_root: Path | None = None
    vulndb: VulnDb | None = None
    now: dt.datetime | None = None
    limits: Limits = field(default_factory=Limits)
    analyzers: Sequence[Analyzer] | None = None
    # Component detection and ELF hardening run in a second process (a fresh interpreter, so safe
    # beside the API's threads) while the other analyzers run here, when the tree holds more than
    # ``parallel_bytes`` and the machine has a second core.
    parallel_bytes: int = 32 * 1024 * 1024


def scan_image(
    image: Path, options: ScanOptions, *, name: str, progress: Progress | None = None
) -> ScanResult:
    """Scan one image; see the module docstring. Raises only for an unreadable image file."""
    started = time.perf_counter()
    now = options.now or dt.datetime.now(dt.UTC)
    report = progress or _quiet
    image = image.absolute()  # extractors run in their work directory: a relative path would miss
    sha256, size = _digest(image)
    report("extract", 0, size)
    with tempfile.TemporaryDirectory(prefix="fleetguard-fw-", dir=options.work_root) as work:
        tree = extract_image(
            image,
            Path(work).absolute(),
            limits=options.limits,
            progress=lambda done, total: report("extract", done, total),
        )
        report("analyze", 0, len(tree.entries))
        analyzers = list(options.analyzers if options.analyzers is not None else ANALYZERS)
        findings, components = _analyze(tree, analyzers, options)
    vulndb = options.vulndb or VulnDb.load_default()
    findings.extend(vulndb.match(components))
    findings.extend(_extraction_findings(tree))
    findings.sort(key=lambda f: (-f.severity.rank, f.path, f.offset or 0, f.rule))
    report("done", size, size)
    return ScanResult(
        image_name=name,
        image_sha256=sha256,
        image_size=size,
        layers=tree.layers,
        unextracted=tree.unextracted,
        file_count=sum(1 for _ in tree.files()),
        findings=tuple(findings),
        components=tuple(components),
        risk=risk_score(findings),
        scanned_at=now.astimezone(dt.UTC).isoformat(),
        seconds=time.perf_counter() - started,
        notes=tree.notes,
    )


def _analyze(
    tree: ExtractedTree, analyzers: Sequence[Analyzer], options: ScanOptions
) -> tuple[list[Finding], list[Component]]:
    extracted = sum(entry.size for entry in tree.files())
    if extracted <= options.parallel_bytes or (os.cpu_count() or 1) < _TWO:
        findings, components = _components_and_hardening(tree)
        return [*run_analyzers(tree, analyzers), *findings], components
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        other = pool.submit(_components_and_hardening, tree)
        findings = list(run_analyzers(tree, analyzers))
        hardening, components = other.result()
    return [*findings, *hardening], components


def _components_and_hardening(tree: ExtractedTree) -> tuple[list[Finding], list[Component]]:
    return list(run_analyzers(tree, (HardeningAnalyzer(),))), detect_components(tree)


def _extraction_findings(tree: ExtractedTree) -> list[Finding]:
    out: list[Finding] = []
    if tree.empty:
        entropy = max((region.entropy for region in tree.unextracted), default=0.0)
        out.append(
            Finding(
                rule="extraction.nothing-extracted",
                category=Category.EXTRACTION,
                severity=Severity.HIGH,
                title="Nothing could be extracted: the image is encrypted, obfuscated or of unknown format",
                path="/",
                evidence=f"highest entropy {entropy:.2f} bits/byte over {len(tree.unextracted)} region(s)",
            )
        )
    for layer in tree.layers:
        if layer.status in (LayerStatus.FAILED, LayerStatus.PARTIAL, LayerStatus.ENCRYPTED):
            severity = Severity.LOW if layer.status is LayerStatus.PARTIAL else Severity.MEDIUM
            out.append(
                Finding(
                    rule=f"extraction.{layer.status.value}",
                    category=Category.EXTRACTION,
                    severity=severity,
                    title=f"{layer.format} at offset {layer.offset} was {layer.status.value}",
                    path=layer.parent or "/",
                    offset=layer.offset,
                    evidence=layer.detail[:300] or layer.extractor,
                )
            )
    return out


def _digest(image: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with image.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _quiet(_stage: str, _done: int, _total: int) -> None:
    return None
