"""A readable, self-contained HTML report of one scan.

One file, no external assets (no scripts, fonts, images or style sheets from elsewhere; the page's
Content-Security-Policy forbids loading any), so that it can be attached to a ticket or opened
offline. Every value from the image (file names, evidence, versions, layer details) is escaped with
:func:`html.escape`, quotes included: an image cannot inject markup into the report.

Sections: summary (image, SHA-256, size, risk), extraction (layers, and regions nothing extracted
with their entropy, flagged as likely encrypted or compressed at 7.5 bits/byte and above),
vulnerabilities (with a KEV badge), findings grouped by severity, components, notes.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Final

from fleetguard.firmware.model import Category, Finding, ScanResult, Severity

__all__ = ["render_html"]

_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'"  # nothing loads from anywhere
_HIGH_ENTROPY: Final = 7.5  # bits per byte: compressed or encrypted data sits close to 8
_CSS: Final = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#1d1d1f;max-width:80rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top;font-size:.9rem}
th{background:#f4f4f6}code{font-family:ui-monospace,monospace;word-break:break-all}
.badge{display:inline-block;padding:.1rem .4rem;border-radius:.3rem;font-size:.8rem;color:#fff}
.critical{background:#7a0019}.high{background:#c62828}.medium{background:#ef6c00}
.low{background:#2e7d32}.info{background:#607d8b}.kev{background:#000}
.risk{font-size:2rem;font-weight:bold}.warn{background:#fff3cd;padding:.5rem;border:1px solid #e0c36a}
"""


def render_html(result: ScanResult) -> str:
    """Return the HTML report of ``result`` as one self-contained document."""
    title = f"Firmware scan: {result.image_name}"
    body = [
        f"<h1>{_e(title)}</h1>",
        _summary(result),
        _extraction(result),
        _vulnerabilities(result.findings),
        _findings(result.findings),
        _components(result),
        _notes(result.notes),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body></html>\n"
    )


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _badge(severity: Severity) -> str:
    return f'<span class="badge {severity.value}">{_e(severity.value)}</span>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table; ``rows`` hold HTML already escaped cell by cell."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary(result: ScanResult) -> str:
    counts = {s: sum(1 for f in result.findings if f.severity is s) for s in Severity}
    rows = [
        ("Image", f"<code>{_e(result.image_name)}</code>"),
        ("SHA-256", f"<code>{_e(result.image_sha256)}</code>"),
        ("Size", f"{result.image_size:,} bytes"),
        ("Scanned at", _e(result.scanned_at)),
        ("Duration", f"{result.seconds:.1f} s"),
        ("Files extracted", str(result.file_count)),
        ("Risk (0..100)", f'<span class="risk">{result.risk}</span>'),
        ("Findings", " ".join(f"{_badge(s)} {counts[s]}" for s in reversed(Severity))),
    ]
    warning = (
        '<p class="warn">Nothing could be extracted from this image (encrypted, obfuscated or of an '
        "unknown format): no finding does not mean clean.</p>"
        if result.extracted_nothing
        else ""
    )
    return "<h2>Summary</h2>" + warning + _table(("", ""), rows)


def _extraction(result: ScanResult) -> str:
    layers = _table(
        ("Layer", "Format", "Offset", "Size", "Status", "Extractor", "Parent", "Detail"),
        (
            (
                f"<code>{_e(layer.name)}</code>",
                _e(layer.format),
                f"{layer.offset:#x}",
                f"{layer.size:,}",
                _e(layer.status.value),
                _e(layer.extractor),
                _e(layer.parent or ""),
                _e(layer.detail),
            )
            for layer in result.layers
        ),
    )
    regions = _table(
        ("Offset", "Size", "Entropy (bits/byte)", "Reading"),
        (
            (
                f"{region.offset:#x}",
                f"{region.size:,}",
                f"{region.entropy:.2f}",
                "likely encrypted or compressed" if region.entropy >= _HIGH_ENTROPY else "",
            )
            for region in result.unextracted
        ),
    )
    return f"<h2>Extraction</h2><h3>Layers</h3>{layers}<h3>Regions not extracted</h3>{regions}"


def _vulnerabilities(findings: Sequence[Finding]) -> str:
    rows = []
    for finding in findings:
        if finding.category is not Category.VULNERABILITY:
            continue
        d = dict(finding.details)
        kev = ' <span class="badge kev">KEV</span>' if d.get("known_exploited") == "yes" else ""
        rows.append(
            (
                f"<code>{_e(d.get('id', finding.rule))}</code>{kev}",
                _e(d.get("aliases", "")),
                _e(f"{d.get('component', '')} {d.get('version', '')}".strip()),
                _e(d.get("fixed", "")),
                _e(d.get("cvss", "")),
                _badge(finding.severity),
                f"<code>{_e(finding.path)}</code>",
                _e(finding.title),
            )
        )
    headers = ("Id", "Aliases", "Component", "Fixed in", "CVSS", "Severity", "Path", "Title")
    return "<h2>Vulnerabilities</h2>" + (_table(headers, rows) if rows else "<p>None matched.</p>")


def _findings(findings: Sequence[Finding]) -> str:
    parts = ["<h2>Findings</h2>"]
    for severity in reversed(Severity):
        group = [f for f in findings if f.severity is severity]
        if not group:
            continue
        parts.append(f"<h3>{_badge(severity)} {len(group)}</h3>")
        rows = (
            (
                f"<code>{_e(f.rule)}</code>",
                _e(f.category.value),
                _e(f.title),
                f"<code>{_e(f.path)}</code>",
                "" if f.offset is None else f"{f.offset:#x}",
                f"<code>{_e(f.evidence)}</code>",
            )
            for f in group
        )
        parts.append(_table(("Rule", "Category", "Title", "Path", "Offset", "Evidence"), rows))
    return "".join(parts) if len(parts) > 1 else "<h2>Findings</h2><p>None.</p>"


def _components(result: ScanResult) -> str:
    rows = (
        (
            _e(c.name),
            _e(c.version),
            f"<code>{_e(c.path)}</code>",
            _e(c.evidence),
            f"<code>{_e(c.purl or '')}</code>",
            f"<code>{_e(c.cpe or '')}</code>",
        )
        for c in result.components
    )
    return "<h2>Components</h2>" + _table(("Name", "Version", "Path", "Evidence", "purl", "CPE"), rows)


def _notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    return "<h2>Notes</h2><ul>" + "".join(f"<li>{_e(note)}</li>" for note in notes) + "</ul>"
