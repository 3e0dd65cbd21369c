"""The HTML report (escaped, self-contained) and the JSON form of a scan (exact round trip)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
from fleetguard.firmware.report_html import render_html
from fleetguard.firmware.report_json import ScanJsonInvalid, from_json, to_json
from fleetguard.firmware.vulndb import VulnDb

SCRIPT = "<script>alert('x')</script>"


def scan(**changes: object) -> ScanResult:
    components = (
        Component(
            "openssl",
            "1.0.1f",
            f"/usr/lib/{SCRIPT}.so",
            f"evidence {SCRIPT}",
            0x40,
            "pkg:generic/openssl@1.0.1f",
        ),
        Component("busybox", "1.36.1", "/bin/busybox", "'BusyBox v1.36.1' at 0x10", 0x10),
    )
    findings = (
        Finding(
            "key.rsa-private", Category.PRIVATE_KEY, Severity.HIGH, "RSA key", f"/etc/{SCRIPT}", "MII…", 0
        ),
        *VulnDb.load_default().match(components),
    )
    fields: dict[str, object] = {
        "image_name": f"fw-{SCRIPT}.bin",
        "image_sha256": "cd" * 32,
        "image_size": 1 << 20,
        "layers": (
            Layer("uimage@0x0", "uimage", 0, 64, LayerStatus.EXTRACTED, "native"),
            Layer(
                "squashfs@0x40",
                "squashfs",
                0x40,
                9000,
                LayerStatus.PARTIAL,
                "unsquashfs",
                "uimage@0x0",
                SCRIPT,
            ),
        ),
        "unextracted": (UnextractedRegion(0x10000, 0x8000, 7.98), UnextractedRegion(0x18000, 0x100, 1.5)),
        "file_count": 321,
        "findings": findings,
        "components": components,
        "risk": 80,
        "scanned_at": "2026-11-26T10:00:00Z",
        "seconds": 2.5,
        "notes": (f"note {SCRIPT}",),
    }
    fields.update(changes)
    return ScanResult(**fields)  # type: ignore[arg-type]


# --- HTML ----------------------------------------------------------------------------------------


def test_html_escapes_everything_from_the_image() -> None:
    page = render_html(scan())
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert page.count("&lt;script&gt;") >= 6  # name, path, evidence, layer detail, component, note


def test_html_is_self_contained() -> None:
    page = render_html(scan())
    assert not re.search(r"""(?i)\b(src|href)\s*=|@import|url\(""", page)
    assert "default-src 'none'" in page


def test_html_summary_layers_regions_and_kev() -> None:
    page = render_html(scan())
    assert "cd" * 32 in page
    assert '<span class="risk">80</span>' in page
    assert "squashfs@0x40" in page
    assert "partial" in page
    assert "7.98" in page
    assert "likely encrypted or compressed" in page
    assert 'CVE-2014-0160</code> <span class="badge kev">KEV</span>' in page


def test_html_groups_findings_worst_first() -> None:
    page = render_html(scan())
    critical, high = (
        page.index('<h3><span class="badge critical">'),
        page.index('<h3><span class="badge high">'),
    )
    assert critical < high


def test_html_says_when_nothing_was_extracted() -> None:
    page = render_html(scan(file_count=0, findings=(), components=(), layers=()))
    assert "Nothing could be extracted" in page
    assert "no finding does not mean clean" in page


# --- JSON ----------------------------------------------------------------------------------------


def test_json_round_trip_is_exact() -> None:
    result = scan()
    document = json.loads(json.dumps(to_json(result)))
    assert from_json(document) == result


_text = st.text(max_size=20)
_offset = st.integers(0, 2**40)
_findings = st.builds(
    Finding,
    rule=_text,
    category=st.sampled_from(list(Category)),
    severity=st.sampled_from(list(Severity)),
    title=_text,
    path=_text,
    evidence=_text,
    offset=st.none() | _offset,
    details=st.lists(st.tuples(_text, _text), max_size=3).map(tuple),
)
_components = st.builds(
    Component,
    name=_text,
    version=_text,
    path=_text,
    evidence=_text,
    offset=st.none() | _offset,
    purl=st.none() | _text,
    cpe=st.none() | _text,
)
_layers = st.builds(
    Layer,
    name=_text,
    format=_text,
    offset=_offset,
    size=_offset,
    status=st.sampled_from(list(LayerStatus)),
    extractor=_text,
    parent=st.none() | _text,
    detail=_text,
)
_regions = st.builds(
    UnextractedRegion,
    offset=_offset,
    size=_offset,
    entropy=st.floats(0, 8, allow_nan=False),
)
_results = st.builds(
    ScanResult,
    image_name=_text,
    image_sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
    image_size=_offset,
    layers=st.lists(_layers, max_size=3).map(tuple),
    unextracted=st.lists(_regions, max_size=3).map(tuple),
    file_count=st.integers(0, 10**6),
    findings=st.lists(_findings, max_size=4).map(tuple),
    components=st.lists(_components, max_size=3).map(tuple),
    risk=st.integers(0, 100),
    scanned_at=_text,
    seconds=st.floats(0, 1e6, allow_nan=False),
    notes=st.lists(_text, max_size=2).map(tuple),
)


@given(_results)
def test_json_round_trip_property(result: ScanResult) -> None:
    assert from_json(json.loads(json.dumps(to_json(result)))) == result


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d.update(format="other"), "not a fleetguard-firmware-scan"),
        (lambda d: d.update(version=2), "version 1"),
        (lambda d: d.update(risk="80"), r"scan\.risk: expected int"),
        (lambda d: d.update(file_count=True), r"scan\.file_count: expected int"),
        (lambda d: d["findings"][0].update(severity="dire"), r"scan\.findings\[0\]\.severity: unknown value"),
        (lambda d: d["findings"][1].update(details=[["a"]]), r"scan\.findings\[1\]\.details: expected"),
        (lambda d: d["layers"][1].update(offset=None), r"scan\.layers\[1\]\.offset: expected int"),
        (lambda d: d["components"].append(3), r"scan\.components\[2\]: expected an object"),
        (lambda d: d.update(notes=[1]), r"scan\.notes: expected a list of str"),
    ],
)
def test_from_json_refuses_what_to_json_never_writes(mutate: object, where: str) -> None:
    document = json.loads(json.dumps(to_json(scan())))
    mutate(document)  # type: ignore[operator]
    with pytest.raises(ScanJsonInvalid, match=where):
        from_json(document)


def test_from_json_refuses_a_non_object() -> None:
    with pytest.raises(ScanJsonInvalid, match="scan: expected an object"):
        from_json([])
