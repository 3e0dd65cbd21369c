"""Attacks on firmware analysis, each named after what the hostile image tries.

They go through the scan pipeline of a real :class:`FirmwareService` (a real database and event log,
the real extractors) with the work directory under the test's own folder, so that anything written
outside it shows up in the folder's listing; absolute and link targets point into an ``outside``
folder next to it. Each test checks what the scan reports, that the stored scan and its event agree,
and, where a release depends on it, what the gate says. Attacks that need smaller limits than the
service's defaults (a hung extractor) go through :func:`scan_image` with its own limits.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import os
import random
import shutil
import stat
import struct
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from firmware_images import Planted, cpio_bytes, tar_bytes
from fleetguard.events.log import EventLog
from fleetguard.firmware import extractors
from fleetguard.firmware.errors import ReleaseBlocked
from fleetguard.firmware.extraction import Limits
from fleetguard.firmware.model import LayerStatus, ScanResult
from fleetguard.firmware.scan import ScanOptions, scan_image
from fleetguard.firmware.service import FirmwareService, StoredScan
from fleetguard.inventory.service import Inventory
from fleetguard.store.database import Database

pytestmark = pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="needs mksquashfs")

T0 = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
SHADOW = b"root:$1$abcdefgh$/ehdsgh6T85pypwniuldr1:19000:0:99999:7:::\n"  # xc3511, Mirai's default
ESCAPE = f"fleetguard-escape-{os.getpid()}"
FILE = stat.S_IFREG | 0o644


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=1)
        return self.now


@pytest.fixture
def log(database: Database) -> EventLog:
    return EventLog(database, "example.org/fleetguard/test")


@pytest.fixture
def service(database: Database, log: EventLog, tmp_path: Path) -> FirmwareService:
    data = tmp_path / "data"
    (data / "firmware" / "work").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_bytes(b"untouched\n")
    (tmp_path / "images").mkdir()
    return FirmwareService(
        database, log, Inventory(database, log, clock=Clock()), data_dir=data, clock=Clock()
    )


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            yield Path(dirpath) / name


def listing(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (not the SQLite files) with its content (None for a directory)."""
    out: dict[str, bytes | None] = {}
    for path in _walk(root):
        rel = str(path.relative_to(root))
        if rel.startswith("fleetguard.db"):
            continue
        out[rel] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return out


def scan_confined(service: FirmwareService, log: EventLog, tmp_path: Path, image: Path) -> StoredScan:
    """Scan ``image``; check nothing changed under ``tmp_path`` or at ``/`` and the store agrees."""
    before = listing(tmp_path)

    stored = service.scan(image, actor="mallory-upload")

    assert listing(tmp_path) == before
    assert not Path("/", ESCAPE).exists()
    assert list((tmp_path / "data" / "firmware" / "work").iterdir()) == []
    assert_consistent(service, stored)
    assert_logged(log, stored)
    return stored


def assert_logged(log: EventLog, stored: StoredScan) -> None:
    """The last ``firmware.scanned`` event is this scan's, with its counts."""
    details = dict(log.entries(action="firmware.scanned", limit=1000)[-1].details())
    assert details["scan"] == stored.id
    assert (details["findings"], details["files"]) == (len(stored.result.findings), stored.result.file_count)


def assert_consistent(service: FirmwareService, stored: StoredScan) -> None:
    """The stored scan reads back as returned, is the image's latest, and its event has its counts."""
    assert service.get_scan(stored.id) == stored
    assert service.latest(stored.result.image_sha256) == stored
    assert service.scans(limit=1) == [stored]


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "images" / name
    path.write_bytes(data)
    return path


def squashfs(tmp_path: Path, name: str, files: dict[str, bytes]) -> bytes:
    tree = tmp_path / "trees" / name
    for path, content in files.items():
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    out = tmp_path / "trees" / f"{name}.sqfs"
    argv = ["mksquashfs", str(tree), str(out), "-noappend", "-quiet", "-no-progress", "-all-root"]
    subprocess.run(argv, check=True, capture_output=True)
    data = out.read_bytes()
    shutil.rmtree(tmp_path / "trees")
    return data


def noise(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)  # noqa: S311 - test data, not a secret


def rules(result: ScanResult) -> set[tuple[str, str]]:
    return {(f.rule, f.path) for f in result.findings}


def layers(result: ScanResult) -> list[tuple[str, LayerStatus]]:
    return [(layer.format, layer.status) for layer in result.layers]


def pax_tar(members: list[Planted]) -> bytes:
    """A POSIX.1-2001 (pax) tar: link targets longer than ustar's 100 bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for p in members:
            info = tarfile.TarInfo(p.path)
            info.mode = stat.S_IMODE(p.mode)
            if p.link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, p.link
                archive.addfile(info)
            else:
                info.size = len(p.content or b"")
                archive.addfile(info, io.BytesIO(p.content or b""))
    return buffer.getvalue()


def hostile_members(outside: Path) -> list[Planted]:
    up = "../" * 30
    return [
        Planted(f"{up}{ESCAPE}", FILE, content=b"dotdot to the root"),
        Planted("../../../escaped-dotdot", FILE, content=b"dotdot"),
        Planted(str(outside / "escaped-absolute"), FILE, content=b"absolute"),
        Planted("etc", stat.S_IFDIR | 0o755),
        Planted("etc/shadow", FILE, content=SHADOW),
    ]


# --- path traversal ----------------------------------------------------------------------------------


@pytest.mark.parametrize("archive", ["tar", "cpio"])
def test_dotdot_and_absolute_member_names_are_refused_and_the_rest_is_scanned(
    service: FirmwareService, log: EventLog, tmp_path: Path, archive: str
) -> None:
    members = hostile_members(tmp_path / "outside")
    data = tar_bytes(members) if archive == "tar" else cpio_bytes(members)

    stored = scan_confined(service, log, tmp_path, write(tmp_path, f"traversal.{archive}", data))

    result = stored.result
    assert layers(result) == [(archive, LayerStatus.PARTIAL)]
    assert result.layers[0].detail.startswith("3 unsafe member(s) refused: ")
    assert {e for e in rules(result) if e[0] != "extraction.partial"} == {
        ("passwd.default-credential", "/etc/shadow")
    }
    assert ("extraction.partial", "/") in rules(result)
    assert result.file_count == 1


# --- links -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("archive", ["tar", "cpio"])
def test_writing_through_a_planted_symlink_stays_inside_the_work_directory(
    service: FirmwareService, log: EventLog, tmp_path: Path, archive: str
) -> None:
    outside = tmp_path / "outside"
    members = [
        Planted("rel", stat.S_IFLNK | 0o777, link="../" * 30 + str(outside).lstrip("/")),
        Planted("rel/keep.txt", FILE, content=b"overwritten through a relative link"),
        Planted("abs", stat.S_IFLNK | 0o777, link=str(outside)),
        Planted("abs/keep.txt", FILE, content=b"overwritten through an absolute link"),
        Planted("abs/new.txt", FILE, content=b"created through an absolute link"),
    ]
    data = pax_tar(members) if archive == "tar" else cpio_bytes(members)

    stored = scan_confined(service, log, tmp_path, write(tmp_path, f"links.{archive}", data))

    assert (tmp_path / "outside" / "keep.txt").read_bytes() == b"untouched\n"
    assert not (tmp_path / "outside" / "new.txt").exists()
    # The links are recorded, never created: the files behind them land in the work directory.
    assert layers(stored.result) == [(archive, LayerStatus.EXTRACTED)]
    assert stored.result.file_count == 3


def test_a_hardlink_to_a_host_file_neither_reads_nor_overwrites_it(
    service: FirmwareService, log: EventLog, tmp_path: Path
) -> None:
    secret = tmp_path / "outside" / "shadow"
    secret.write_bytes(SHADOW)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, linkname in (
            ("etc/shadow", str(secret)),
            ("etc/passwd", "../" * 20 + str(secret).lstrip("/")),
        ):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.LNKTYPE, linkname
            archive.addfile(link)
        overwrite = tarfile.TarInfo("etc/passwd")
        overwrite.size = 6
        archive.addfile(overwrite, io.BytesIO(b"pwned\n"))

    stored = scan_confined(service, log, tmp_path, write(tmp_path, "hardlink.tar", buffer.getvalue()))

    assert secret.read_bytes() == SHADOW
    # The host's shadow file must not be read as if it were the image's.
    assert ("passwd.default-credential", "/etc/shadow") not in rules(stored.result)


# --- bombs -------------------------------------------------------------------------------------------


def test_a_gzip_bomb_stops_at_the_output_limit(
    service: FirmwareService, log: EventLog, tmp_path: Path
) -> None:
    member = gzip.compress(bytes(1 << 20), compresslevel=9, mtime=0)
    image = write(tmp_path, "bomb.gz", member * 64)  # 64 MiB of zeros in about 64 KiB
    size = image.stat().st_size
    started = time.monotonic()

    stored = scan_confined(service, log, tmp_path, image)

    assert time.monotonic() - started < 10
    result = stored.result
    assert layers(result) == [("gzip", LayerStatus.PARTIAL)]
    assert result.layers[0].detail == f"output size limit reached ({200 * size} bytes)"
    assert f"extraction stopped early: output size limit reached ({200 * size} bytes)" in result.notes
    assert ("extraction.partial", "/") in rules(result)


def test_a_squashfs_bomb_is_listed_but_not_written(
    service: FirmwareService, log: EventLog, tmp_path: Path
) -> None:
    sqfs = squashfs(tmp_path, "bomb", {"/etc/shadow": SHADOW, "/filler": b"A" * (64 << 20)})

    stored = scan_confined(service, log, tmp_path, write(tmp_path, "bomb.sqfs", sqfs))

    result = stored.result
    assert layers(result) == [("squashfs", LayerStatus.PARTIAL)]
    assert result.layers[0].detail == "contents exceed the extraction limit: metadata only"
    assert result.file_count == 0
    assert result.extracted_nothing
    with pytest.raises(ReleaseBlocked, match="nothing could be extracted"):
        service.require_release(result.image_sha256, actor="ota")


def test_a_gzip_bomb_in_front_of_the_root_filesystem_does_not_get_it_released_unexamined(
    service: FirmwareService, log: EventLog, tmp_path: Path
) -> None:
    member = gzip.compress(bytes(1 << 20), compresslevel=9, mtime=0)
    rootfs = squashfs(tmp_path, "rootfs", {"/etc/shadow": SHADOW})
    image = write(tmp_path, "bomb-then-rootfs.bin", member * 64 + rootfs)

    stored = scan_confined(service, log, tmp_path, image)

    assert layers(stored.result) == [("gzip", LayerStatus.PARTIAL)]  # the squashfs was never reached
    decision = service.check_release(stored.result.image_sha256, actor="ota")
    assert decision.allowed is False, decision.reason


def test_a_squashfs_bomb_beside_a_decoy_archive_does_not_get_the_image_released_unexamined(
    service: FirmwareService, log: EventLog, tmp_path: Path
) -> None:
    sqfs = squashfs(tmp_path, "bomb", {"/etc/shadow": SHADOW, "/filler": b"A" * (64 << 20)})
    decoy = tar_bytes([Planted("readme", FILE, content=b"nothing to see\n")])

    stored = scan_confined(service, log, tmp_path, write(tmp_path, "bomb-and-decoy.bin", sqfs + decoy))

    assert layers(stored.result) == [("squashfs", LayerStatus.PARTIAL), ("tar", LayerStatus.EXTRACTED)]
    decision = service.check_release(stored.result.image_sha256, actor="ota")
    assert decision.allowed is False, decision.reason


# --- a hung extractor --------------------------------------------------------------------------------


def test_an_extractor_that_hangs_is_killed_at_the_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    hang = tools / "unsquashfs"
    hang.write_text(f"#!/bin/sh\nexec {shutil.which('sleep')} 60\n")
    hang.chmod(0o755)
    monkeypatch.setitem(extractors._TOOL_ENV, "PATH", str(tools))  # the tools' PATH
    image = tmp_path / "rootfs.sqfs"
    image.write_bytes(squashfs(tmp_path, "rootfs", {"/etc/shadow": SHADOW}))
    work = tmp_path / "work"
    work.mkdir()
    started = time.monotonic()

    result = scan_image(
        image, ScanOptions(work_root=work, limits=Limits(extractor_timeout_s=0.5)), name="hang"
    )

    assert time.monotonic() - started < 5
    assert layers(result) == [("squashfs", LayerStatus.FAILED)]
    assert result.layers[0].detail == "unsquashfs timed out after 0.5 s"
    assert {"extraction.failed", "extraction.nothing-extracted"} <= {f.rule for f in result.findings}
    assert list(work.iterdir()) == []


# --- truncation --------------------------------------------------------------------------------------


def test_a_truncated_squashfs_is_reported_failed_and_refused_by_the_gate(
    service: FirmwareService, log: EventLog, tmp_path: Path
) -> None:
    full = squashfs(tmp_path, "rootfs", {"/etc/shadow": SHADOW, "/etc/blob": noise(1, 200_000)})
    (used,) = struct.unpack_from("<Q", full, 40)  # squashfs 4.0 superblock: bytes_used

    stored = scan_confined(service, log, tmp_path, write(tmp_path, "truncated.sqfs", full[: used // 2]))

    result = stored.result
    assert layers(result) == [("squashfs", LayerStatus.FAILED)]
    assert result.layers[0].detail.startswith("unsquashfs cannot list it")
    assert {("extraction.failed", "/"), ("extraction.nothing-extracted", "/")} <= rules(result)
    assert service.check_release(result.image_sha256, actor="ota").allowed is False


def test_a_truncated_cpio_keeps_the_members_before_the_cut(
    service: FirmwareService, log: EventLog, tmp_path: Path
) -> None:
    data = cpio_bytes([
        Planted("etc", stat.S_IFDIR | 0o755),
        Planted("etc/shadow", FILE, content=SHADOW),
        Planted("etc/blob", FILE, content=b"x" * 4000),
    ])  # fmt: skip
    cut = data.index(b"etc/blob") + 100

    stored = scan_confined(service, log, tmp_path, write(tmp_path, "truncated.cpio", data[:cut]))

    result = stored.result
    assert layers(result) == [("cpio", LayerStatus.PARTIAL)]
    assert result.layers[0].detail.startswith("cpio truncated at ")
    assert ("passwd.default-credential", "/etc/shadow") in rules(result)
    assert ("extraction.partial", "/") in rules(result)


# --- names -------------------------------------------------------------------------------------------


def test_member_names_with_nul_are_refused_and_with_control_characters_are_kept_verbatim(
    service: FirmwareService, log: EventLog, tmp_path: Path
) -> None:
    data = cpio_bytes([
        Planted("etc", stat.S_IFDIR | 0o755),
        Planted(f"etc/x\x00/{'../' * 30}{ESCAPE}", FILE, content=b"nul"),
        Planted("etc/new\nline", FILE, content=b"newline"),
        Planted("etc/\x1b[2Jclear", FILE, content=b"escape"),
        Planted("etc/shadow", FILE, content=SHADOW),
    ])  # fmt: skip

    stored = scan_confined(service, log, tmp_path, write(tmp_path, "names.cpio", data))

    result = stored.result
    assert layers(result) == [("cpio", LayerStatus.PARTIAL)]
    assert result.layers[0].detail.startswith("1 unsafe member(s) refused: member name contains NUL")
    assert result.file_count == 3
    assert ("passwd.default-credential", "/etc/shadow") in rules(result)


def test_a_file_named_with_a_newline_in_a_squashfs_is_still_analysed(
    service: FirmwareService, log: EventLog, tmp_path: Path
) -> None:
    # unsquashfs lists one entry per line: a newline in a name must not hide the file's content.
    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files = {"/etc/ssl/plain.key": key, "/etc/ssl/server.key\nhidden": key}
    sqfs = squashfs(tmp_path, "names", files)

    stored = scan_confined(service, log, tmp_path, write(tmp_path, "newline.sqfs", sqfs))

    result = stored.result
    found = {path for rule, path in rules(result) if rule.startswith("key.")}
    assert "/etc/ssl/plain.key" in found  # the same key under a plain name is found
    assert found == set(files)
    assert result.file_count == 2


# --- encryption --------------------------------------------------------------------------------------


def test_an_encrypted_blob_is_never_reported_clean_and_the_gate_refuses_it(
    service: FirmwareService, log: EventLog, tmp_path: Path
) -> None:
    image = write(tmp_path, "encrypted.bin", noise(7, 128 * 1024))

    stored = scan_confined(service, log, tmp_path, image)

    result = stored.result
    assert result.extracted_nothing
    assert layers(result) == [("unknown", LayerStatus.ENCRYPTED)]
    assert result.unextracted[0].entropy > 7.9
    assert ("extraction.nothing-extracted", "/") in rules(result)
    assert result.risk > 0
    decision = service.check_release(result.image_sha256, actor="ota")
    assert decision.allowed is False
    assert decision.reason.startswith("nothing could be extracted")


def test_an_encrypted_payload_beside_a_decoy_filesystem_does_not_get_the_image_released(
    service: FirmwareService, log: EventLog, tmp_path: Path
) -> None:
    decoy = squashfs(tmp_path, "decoy", {"/etc/hostname": b"cam\n"})
    image = write(tmp_path, "decoy-and-encrypted.bin", decoy + noise(8, 128 * 1024))

    stored = scan_confined(service, log, tmp_path, image)

    assert ("unknown", LayerStatus.ENCRYPTED) in layers(stored.result)
    assert stored.result.file_count == 1
    decision = service.check_release(stored.result.image_sha256, actor="ota")
    assert decision.allowed is False, decision.reason
