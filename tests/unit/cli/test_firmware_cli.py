"""``fleetguard firmware``: scan (with SBOM, SARIF, HTML and JSON outputs), scans, show in every
format, exposed, gate set/check, waive, vulndb info/import, driven through the command line against a
real installation; errors are one line and exit 1, and change nothing.

Images are tiny squashfs filesystems built with ``mksquashfs``: ``gate`` has a default root password
and telnet enabled, ``kev`` an OpenSSL 1.0.1f (Heartbleed, CISA KEV), ``made_up`` a BusyBox version
no shipped record knows; ``encrypted`` is random bytes.
"""

from __future__ import annotations

import json
import random
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from firmware_images import elf_with, small_squashfs

from .conftest import Cli, one_line

pytestmark = pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="needs mksquashfs")

Json = dict[str, Any]
ROOT_DEFAULT = b"root:$1$abcdefgh$/ehdsgh6T85pypwniuldr1:19000:0:99999:7:::\n"  # xc3511 (Mirai)
HEARTBLEED = "CVE-2014-0160"
MADE_UP = "FG-TEST-0001"
GATE_HIGH = {
    ("passwd.default-credential", "/etc/shadow"),
    ("service.telnet", "/etc/inetd.conf"),
    ("service.telnet", "/etc/init.d/rcS"),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fw-cli")
    encrypted = base / "encrypted.bin"
    encrypted.write_bytes(random.Random(3).randbytes(32 * 1024))  # noqa: S311 - test data
    return {
        "gate": small_squashfs(
            base / "gate.sqfs",
            {
                "/etc/shadow": ROOT_DEFAULT,
                "/etc/inetd.conf": b"telnet stream tcp nowait root /usr/sbin/telnetd telnetd\n",
                "/etc/init.d/rcS": b"#!/bin/sh\n/usr/sbin/telnetd -l /bin/login &\n",
            },
        ),
        "kev": small_squashfs(
            base / "kev.sqfs", {"/usr/lib/libcrypto.so.1.0.0": elf_with(b"OpenSSL 1.0.1f 6 Jan 2014", 1)}
        ),
        "made_up": small_squashfs(
            base / "made-up.sqfs",
            {"/bin/busybox": elf_with(b"BusyBox v9.8.7 (2099-01-01 00:00:00 UTC) multi-call binary.", 4)},
        ),
        "encrypted": encrypted,
    }


@pytest.fixture
def fleet(cli: Cli, initialized: None) -> Cli:
    for device_id, version in (("cam-1", "1.0"), ("cam-2", "2.0")):
        cli.ok("devices", "add", "--id", device_id, "--serial", device_id, "--manufacturer", "Acme",
               "--firmware", version)  # fmt: skip
    return cli


def _object(cli: Cli, *args: str) -> Json:
    value = cli.json(*args)
    assert isinstance(value, dict)
    return value


def _list(cli: Cli, *args: str) -> list[Json]:
    value = cli.json(*args)
    assert isinstance(value, list)
    return value


def _failed(result: Result) -> str:
    assert result.exit_code == 1, result.output
    return one_line(result.stderr)


def _scan(cli: Cli, image: Path, *args: str) -> Json:
    return _object(cli, "firmware", "scan", str(image), *args)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- scan --------------------------------------------------------------------------------------------


def test_scan_writes_private_sbom_sarif_and_html_reports_and_prints_json(
    fleet: Cli, images: dict[str, Path], tmp_path: Path
) -> None:
    sbom, sarif, html = tmp_path / "out.cdx.json", tmp_path / "out.sarif", tmp_path / "out.html"
    html.write_text("stale")
    html.chmod(0o644)

    result = _scan(fleet, images["kev"], "--version", "1.0", "--type", "cam",
                   "--sbom", str(sbom), "--sarif", str(sarif), "--html", str(html))  # fmt: skip

    assert result["image_name"] == "kev.sqfs"
    assert isinstance(result["id"], str)
    assert (_mode(sbom), _mode(sarif), _mode(html)) == (0o600, 0o600, 0o600)
    document = json.loads(sbom.read_text())
    assert document["specVersion"] == "1.6"
    assert [(c["name"], c["version"]) for c in document["components"]] == [("openssl", "1.0.1f")]
    assert json.loads(sarif.read_text())["version"] == "2.1.0"
    assert html.read_text().lower().startswith("<!doctype html")
    assert list(tmp_path.glob(".*.tmp")) == []
    (stored,) = _list(fleet, "firmware", "scans")
    assert (stored["id"], stored["version"], stored["type"]) == (result["id"], "1.0", "cam")


def test_scan_prints_a_summary_with_the_findings(fleet: Cli, images: dict[str, Path]) -> None:
    output = fleet.ok("firmware", "scan", str(images["gate"])).stdout

    assert "gate.sqfs" in output
    assert "3 files from 1 layer(s)" in output
    assert "known exploited" in output
    rows = [line.split() for line in output.splitlines()]
    assert ["critical", "password", "passwd.default-credential", "/etc/shadow"] in [r[:4] for r in rows]
    assert ["high", "insecure-service", "service.telnet", "/etc/init.d/rcS"] in [r[:4] for r in rows]


def test_scan_of_an_encrypted_blob_says_nothing_was_extracted(fleet: Cli, images: dict[str, Path]) -> None:
    output = fleet.ok("firmware", "scan", str(images["encrypted"])).stdout

    assert "NOTHING (see the extraction findings)" in output
    assert "extraction.nothing-extracted" in output


def test_scan_of_a_missing_file_is_a_usage_error(fleet: Cli, tmp_path: Path) -> None:
    result = fleet("firmware", "scan", str(tmp_path / "missing.bin"))

    assert result.exit_code == 2
    assert _list(fleet, "firmware", "scans") == []


def test_scan_with_a_bad_version_fails_in_one_line_and_stores_nothing(
    fleet: Cli, images: dict[str, Path]
) -> None:
    line = _failed(fleet("firmware", "scan", str(images["gate"]), "--version", "x" * 129))

    assert line.startswith("error: firmware version must be 1 to 128 printable characters")
    assert _list(fleet, "firmware", "scans") == []


# --- scans and show ----------------------------------------------------------------------------------


def test_scans_lists_newest_first(fleet: Cli, images: dict[str, Path]) -> None:
    assert "no scans yet: fleetguard firmware scan IMAGE" in fleet.ok("firmware", "scans").output
    first = _scan(fleet, images["kev"], "--version", "1.0")
    second = _scan(fleet, images["gate"])

    listed = _list(fleet, "firmware", "scans")

    assert [s["id"] for s in listed] == [second["id"], first["id"]]
    assert listed[1]["sha256"] == first["image_sha256"]
    assert (listed[1]["image"], listed[1]["version"], listed[1]["type"]) == ("kev.sqfs", "1.0", None)
    table = fleet.ok("firmware", "scans").stdout
    assert str(first["id"]) in table
    assert str(second["id"]) in table


def test_show_prints_each_format(fleet: Cli, images: dict[str, Path]) -> None:
    scan_id = str(_scan(fleet, images["kev"])["id"])

    summary = fleet.ok("firmware", "show", scan_id).stdout
    assert scan_id in summary
    assert HEARTBLEED in summary
    as_json = json.loads(fleet.ok("firmware", "show", scan_id, "--format", "json").stdout)
    assert (as_json["id"], as_json["image_name"]) == (scan_id, "kev.sqfs")
    sbom = json.loads(fleet.ok("firmware", "show", scan_id, "--format", "sbom").stdout)
    assert (sbom["bomFormat"], sbom["specVersion"]) == ("CycloneDX", "1.6")
    assert HEARTBLEED in {v["id"] for v in sbom["vulnerabilities"]}
    sarif = json.loads(fleet.ok("firmware", "show", scan_id, "--format", "sarif").stdout)
    assert sarif["version"] == "2.1.0"
    assert HEARTBLEED in {r["ruleId"] for r in sarif["runs"][0]["results"]}
    html = fleet.ok("firmware", "show", scan_id, "--format", "html").stdout
    assert html.lower().startswith("<!doctype html")
    assert HEARTBLEED in html


def test_show_of_an_unknown_scan_fails_in_one_line(fleet: Cli) -> None:
    line = _failed(fleet("firmware", "show", "nope"))

    assert line.startswith("error: no firmware scan 'nope'")
    assert "fleetguard firmware scans" in line


def test_show_with_an_unknown_format_fails_in_one_line(fleet: Cli, images: dict[str, Path]) -> None:
    scan_id = str(_scan(fleet, images["kev"])["id"])

    line = _failed(fleet("firmware", "show", scan_id, "--format", "pdf"))

    assert line.startswith("error: unknown --format 'pdf': use summary, json, sbom, sarif or html")


# --- exposed -----------------------------------------------------------------------------------------


def test_exposed_lists_the_devices_running_known_exploited_firmware(
    fleet: Cli, images: dict[str, Path]
) -> None:
    assert "no device runs firmware with such a vulnerability" in fleet.ok("firmware", "exposed").output
    kev = _scan(fleet, images["kev"], "--version", "1.0")
    _scan(fleet, images["gate"], "--version", "2.0")

    (row,) = _list(fleet, "firmware", "exposed")

    assert (row["device"], row["firmware_version"], row["scan"]) == ("cam-1", "1.0", kev["id"])
    assert row["known_exploited"] == [HEARTBLEED]
    assert HEARTBLEED in row["vulnerabilities"]
    assert "cam-1" in fleet.ok("firmware", "exposed").stdout
    assert [r["device"] for r in _list(fleet, "firmware", "exposed", "--any")] == ["cam-1"]


# --- the gate ----------------------------------------------------------------------------------------


def test_gate_check_exits_1_when_blocked_and_0_once_waived(fleet: Cli, images: dict[str, Path]) -> None:
    sha = str(_scan(fleet, images["gate"])["image_sha256"])

    blocked = fleet("firmware", "gate", "check", sha)
    assert blocked.exit_code == 1, blocked.output
    assert blocked.stdout.startswith("BLOCKED: 3 finding(s) at or above high not waived (threshold high)\n")
    as_json = fleet("firmware", "gate", "check", sha, "--json")
    assert as_json.exit_code == 1
    decision = json.loads(as_json.stdout)
    assert decision["allowed"] is False
    assert {(f["rule"], f["path"]) for f in decision["blocking"]} == GATE_HIGH

    for rule, path in sorted(GATE_HIGH):
        waived = fleet.ok("firmware", "waive", sha, rule, "--path", path, "--reason", "lab only",
                          "--expires", "2999-01-01T00:00:00Z")  # fmt: skip
        assert waived.stdout.startswith(f"waived {rule} for {sha[:16]}… (")

    allowed = fleet.ok("firmware", "gate", "check", sha.upper())
    assert allowed.stdout == "ALLOWED: no unwaived finding at or above high (threshold high)\n"


def test_gate_set_changes_what_blocks(fleet: Cli, images: dict[str, Path]) -> None:
    sha = str(_scan(fleet, images["gate"])["image_sha256"])

    changed = fleet.ok("firmware", "gate", "set", "critical")

    assert changed.stdout == "release gate: findings at or above critical block a release unless waived\n"
    result = fleet("firmware", "gate", "check", sha, "--json")
    assert result.exit_code == 1
    decision = json.loads(result.stdout)
    assert decision["threshold"] == "critical"
    assert [(f["rule"], f["path"]) for f in decision["blocking"]] == [
        ("passwd.default-credential", "/etc/shadow")
    ]


def test_gate_set_refuses_an_unknown_severity(fleet: Cli) -> None:
    result = fleet("firmware", "gate", "set", "severe")

    assert result.exit_code == 2
    assert "threshold high" in fleet("firmware", "gate", "check", "ab" * 32).stdout


def test_gate_check_of_a_never_scanned_image_exits_1(fleet: Cli) -> None:
    result = fleet("firmware", "gate", "check", "ab" * 32)

    assert result.exit_code == 1
    assert result.stdout == "BLOCKED: the image was never scanned (threshold high)\n"


def test_waive_errors_are_one_line_and_store_nothing(fleet: Cli, images: dict[str, Path]) -> None:
    sha = str(_scan(fleet, images["gate"])["image_sha256"])

    assert _failed(fleet("firmware", "waive", sha, "service.telnet", "--reason", "  ")) == (
        "error: a waiver needs a reason of 1 to 1000 characters"
    )
    line = _failed(fleet("firmware", "waive", "cd" * 32, "service.telnet", "--reason", "ok"))
    assert line.startswith(f"error: no scan of image {'cd' * 32}")
    assert _failed(
        fleet("firmware", "waive", sha, "service.telnet", "--reason", "ok", "--expires", "soon")
    ).startswith("error: ")
    assert fleet("firmware", "waive", sha, "service.telnet").exit_code == 2  # --reason is required
    assert fleet("firmware", "gate", "check", sha).stdout.startswith("BLOCKED: 3 finding(s)")


# --- vulndb ------------------------------------------------------------------------------------------


def _record() -> Json:
    return {
        "id": MADE_UP,
        "modified": "2025-01-01T00:00:00Z",
        "summary": "Made-up overflow",
        "affected": [{"package": {"name": "busybox"}, "versions": ["9.8.7"]}],
        "database_specific": {"cvss_score": 9.8, "cisa_kev": True},
    }


def test_vulndb_import_adds_records_the_next_scan_matches(
    fleet: Cli, images: dict[str, Path], tmp_path: Path
) -> None:
    before = _object(fleet, "firmware", "vulndb", "info")
    assert HEARTBLEED in before["known_exploited"]
    assert "busybox" in before["components"]
    assert "records" in fleet.ok("firmware", "vulndb", "info").stdout
    advisory = tmp_path / "advisory.json"
    advisory.write_text(json.dumps([_record()]))

    imported = fleet.ok("firmware", "vulndb", "import", str(advisory))

    assert imported.stdout == "imported 1 record(s) from advisory.json\n"
    after = _object(fleet, "firmware", "vulndb", "info")
    assert after["records"] == before["records"] + 1
    assert after["known_exploited"] == sorted([*before["known_exploited"], MADE_UP])
    scan = _scan(fleet, images["made_up"])
    assert MADE_UP in {f["rule"] for f in scan["findings"]}


def test_vulndb_import_of_a_malformed_file_fails_in_one_line_and_changes_nothing(
    fleet: Cli, images: dict[str, Path], tmp_path: Path
) -> None:
    before = _object(fleet, "firmware", "vulndb", "info")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**_record(), "modified": "yesterday"}))

    line = _failed(fleet("firmware", "vulndb", "import", str(bad)))

    assert line.startswith(f"error: {bad}.modified")
    assert _object(fleet, "firmware", "vulndb", "info") == before
    scan = _scan(fleet, images["made_up"])
    assert MADE_UP not in {f["rule"] for f in scan["findings"]}
