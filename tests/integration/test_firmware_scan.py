"""Firmware scans end to end: images built with Debian's tools, planted findings found, decoys quiet.

The planted root filesystem (``tests/firmware_planted.py``) is packed as squashfs (gzip and xz),
a gzip'd cpio inside a U-Boot image, ext4 and JFFS2; each is scanned by the real pipeline (real
extractors, every analyzer, components, the shipped vulnerability database) and must report every
planted (rule, path) and none of the decoys. Then the stored scans drive the fleet link and the
release gate through the CLI, as an operator would.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prerequisites import require
from typer.testing import CliRunner

from firmware_images import build_squashfs, build_uimage
from firmware_planted import DECOYS, KNOWN_EXPLOITED, PLANTED, build_planted_rootfs
from fleetguard.cli.main import app
from fleetguard.config import Settings
from fleetguard.firmware.model import ScanResult
from fleetguard.firmware.scan import ScanOptions, scan_image
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.model import DeviceSpec
from fleetguard.types import utc_now

TOOLS = ("mksquashfs", "unsquashfs", "mkimage", "mkfs.jffs2", "mke2fs", "debugfs", "gcc", "openssl")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    for tool in TOOLS:
        require(shutil.which(tool) is not None or Path(f"/usr/sbin/{tool}").exists(), tool)
    require(os.geteuid() == 0, "root (the planted setuid binary must be owned by uid 0)")
    folder = tmp_path_factory.mktemp("planted")
    rootfs = build_planted_rootfs(folder / "rootfs")
    cpio = folder / "rootfs.cpio"
    names = subprocess.run(["find", "."], cwd=rootfs, capture_output=True, check=True).stdout
    packed = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=rootfs, input=names,
                            capture_output=True, check=True).stdout  # fmt: skip
    cpio.write_bytes(gzip.compress(packed))
    return {
        "squashfs-gzip": build_squashfs(rootfs, folder / "rootfs-gzip.sqsh", "gzip"),
        "squashfs-xz": build_squashfs(rootfs, folder / "rootfs-xz.sqsh", "xz"),
        "uimage-cpio": build_uimage(cpio, folder / "rootfs.uimage", "none"),
        "ext4": _made(folder / "rootfs.ext4", "mke2fs", "-q", "-F", "-t", "ext4", "-d", str(rootfs),
                      "-b", "1024", str(folder / "rootfs.ext4"), "8M"),
        "jffs2": _made(folder / "rootfs.jffs2", "mkfs.jffs2", "-l", "-U", "-r", str(rootfs),
                       "-o", str(folder / "rootfs.jffs2"), "-e", "64KiB"),
    }  # fmt: skip


def _made(out: Path, *argv: str) -> Path:
    subprocess.run(argv, check=True, capture_output=True)
    return out


def _pairs(result: ScanResult) -> set[tuple[str, str]]:
    return {(f.rule, f.path) for f in result.findings}


@pytest.mark.parametrize("kind", ["squashfs-gzip", "squashfs-xz", "uimage-cpio", "ext4", "jffs2"])
def test_every_planted_finding_is_found_and_no_decoy_is_reported(
    images: dict[str, Path], kind: str, tmp_path: Path
) -> None:
    result = scan_image(images[kind], ScanOptions(work_root=tmp_path), name=kind)

    found = _pairs(result)
    prefix = _prefix(result)
    planted = {(rule, prefix + path) for rule, path in PLANTED}
    decoys = {(rule, prefix + path) for rule, path in DECOYS}
    assert planted - found == set(), f"{kind}: missed {sorted(planted - found)}"
    assert found & decoys == set(), f"{kind}: decoys reported {sorted(found & decoys)}"
    heartbleed = [
        f for f in result.findings if KNOWN_EXPLOITED in (f.rule, dict(f.details).get("aliases", ""))
    ]
    assert heartbleed, f"{kind}: Heartbleed in OpenSSL 1.0.1f not matched"
    assert dict(heartbleed[0].details)["known_exploited"] == "yes"
    names = {(c.name, c.version) for c in result.components}
    assert {("busybox", "1.24.1"), ("openssl", "1.0.1f")} <= names
    assert not result.extracted_nothing
    assert result.risk >= 80  # a known-exploited vulnerability


def _prefix(result: ScanResult) -> str:
    # A filesystem found inside a container file lands under that file's ``_extract`` folder.
    shadow = [f.path for f in result.findings if f.rule == "passwd.default-credential"]
    return shadow[0].removesuffix("/etc/shadow") if shadow else ""


def test_an_encrypted_image_is_reported_as_unextracted_never_clean(tmp_path: Path) -> None:
    blob = tmp_path / "encrypted.bin"
    blob.write_bytes(os.urandom(256 * 1024))

    result = scan_image(blob, ScanOptions(work_root=tmp_path), name="encrypted.bin")

    assert result.extracted_nothing
    assert (
        next(f.rule for f in result.findings if f.rule.startswith("extraction."))
        == "extraction.nothing-extracted"
    )
    assert max(region.entropy for region in result.unextracted) > 7.9


@pytest.fixture
def installation(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data")
    initialize(settings, "example.org", now=utc_now())
    runtime = Runtime(settings)
    try:
        for n, version in enumerate(("1.0", "1.0", "2.0")):
            runtime.inventory.register(
                DeviceSpec(id=f"cam-{n}", serial=f"S{n}", manufacturer="Acme", firmware_version=version),
                actor="t",
            )
    finally:
        runtime.close()
    return settings


def test_the_cli_scans_links_exposed_devices_and_gates_the_release(
    images: dict[str, Path], installation: Settings, tmp_path: Path
) -> None:
    cli = CliRunner()
    data = ["--data-dir", str(installation.data_dir)]
    sbom, sarif, html = tmp_path / "sbom.json", tmp_path / "scan.sarif", tmp_path / "report.html"

    reports = ["--sbom", str(sbom), "--sarif", str(sarif), "--html", str(html), "--json"]
    scanned = cli.invoke(
        app, [*data, "firmware", "scan", str(images["squashfs-gzip"]), "--version", "1.0", *reports]
    )

    assert scanned.exit_code == 0, scanned.output
    result = json.loads(scanned.stdout)
    sha = result["image_sha256"]
    assert json.loads(sbom.read_text())["specVersion"] == "1.6"
    assert json.loads(sarif.read_text())["version"] == "2.1.0"
    assert "<html" in html.read_text().lower()

    exposed = cli.invoke(app, [*data, "firmware", "exposed", "--json"])
    assert exposed.exit_code == 0, exposed.output
    assert sorted(row["device"] for row in json.loads(exposed.stdout)) == ["cam-0", "cam-1"]

    blocked = cli.invoke(app, [*data, "firmware", "gate", "check", sha])
    assert blocked.exit_code == 1
    assert blocked.stdout.startswith("BLOCKED:")

    runtime = Runtime(installation)
    try:
        stored = runtime.firmware.latest(sha)
        assert stored is not None
        blocking = runtime.firmware.check_release(sha, actor="t").blocking
        expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
        for rule, path in sorted({(f.rule, f.path) for f in blocking}):
            waived = cli.invoke(app, [*data, "firmware", "waive", sha, rule, "--path", path,
                                      "--reason", "accepted for the lab", "--expires", expires])  # fmt: skip
            assert waived.exit_code == 0, waived.output
        allowed = cli.invoke(app, [*data, "firmware", "gate", "check", sha, "--json"])
        assert allowed.exit_code == 0, allowed.output
        assert json.loads(allowed.stdout)["allowed"] is True
        actions = [e.action for e in runtime.log.entries(limit=1000) if e.action.startswith("firmware.")]
    finally:
        runtime.close()
    assert actions[0] == "firmware.scanned"
    assert "firmware.gate_blocked" in actions
    assert actions[-1] == "firmware.gate_passed"
    assert actions.count("firmware.waived") == len({(f.rule, f.path) for f in blocking})


SHARED_FIRMWARE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "firmware"


def test_every_shared_firmware_sample_scans_without_error(tmp_path: Path) -> None:
    samples = sorted(p for p in SHARED_FIRMWARE.glob("*/*") if p.is_file())
    if not samples:
        pytest.skip(f"{SHARED_FIRMWARE} is absent (the shared firmware samples)")
    for sample in samples:
        result = scan_image(sample, ScanOptions(work_root=tmp_path), name=sample.name)
        assert result.image_size == sample.stat().st_size
        assert result.layers or result.extracted_nothing, sample.name
        assert list(tmp_path.iterdir()) == [], f"{sample.name}: the work directory was not removed"
