"""extract_image: every format yields the planted files with the filesystem's own metadata;
hostile images write nothing outside the work directory; limits stop bombs; unknown blobs are
reported with their entropy."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_images import BUSYBOX, PASSWD, build_all
from fleetguard.firmware.errors import ExtractionLimit, ImageInvalid
from fleetguard.firmware.extraction import Limits, extract_image
from fleetguard.firmware.model import EntryKind, ExtractedTree, FileEntry, LayerStatus

SAMPLES = Path("/work/shared/data/firmware")

# image -> the image path prefix its planted root filesystem appears under
FORMATS = {
    "squashfs-gzip": "",
    "squashfs-xz": "",
    "squashfs-at-offset": "",
    "cpio": "",
    "tar": "",
    "ext4": "",
    "jffs2-le": "",
    "jffs2-be": "",
    "ubi": "",
    "uimage": "",
    "trx": "",
    "nested": "/boot/rootfs.sqfs_extract",
}
WITH_DEVICE = [f for f in FORMATS if f != "ext4"]


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("firmware-images"))


@pytest.fixture(scope="session")
def extracted(images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExtractedTree]:
    base = tmp_path_factory.mktemp("extracted")
    return {name: extract_image(images[name], base / name) for name in FORMATS}


def _entry(tree: ExtractedTree, path: str) -> FileEntry:
    entry = tree.get(path)
    assert entry is not None, f"{path} missing: {sorted(e.path for e in tree.entries)}"
    return entry


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            yield Path(dirpath) / name


def _listing(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in _walk(directory)}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_yields_the_planted_files(extracted: dict[str, ExtractedTree], name: str) -> None:
    tree, prefix = extracted[name], FORMATS[name]
    busybox = _entry(tree, f"{prefix}/bin/busybox")
    passwd = _entry(tree, f"{prefix}/etc/passwd")
    assert busybox.data is not None
    assert busybox.data.read_bytes() == BUSYBOX
    assert passwd.data is not None
    assert passwd.data.read_bytes() == PASSWD
    assert all(layer.status is LayerStatus.EXTRACTED for layer in tree.layers), tree.layers


@pytest.mark.parametrize("name", list(FORMATS))
def test_setuid_mode_and_owner_come_from_the_filesystem(
    extracted: dict[str, ExtractedTree], name: str
) -> None:
    tree, prefix = extracted[name], FORMATS[name]
    busybox = _entry(tree, f"{prefix}/bin/busybox")
    assert busybox.kind is EntryKind.FILE
    assert busybox.mode == 0o4755
    assert busybox.uid == 0
    assert _entry(tree, f"{prefix}/etc/world").mode == 0o666
    assert busybox.data is not None
    assert stat.S_IMODE(busybox.data.stat().st_mode) == 0o600  # not setuid on disk


@pytest.mark.parametrize("name", [f for f in FORMATS if f != "ext4"])
def test_owner_other_than_root_is_recorded(extracted: dict[str, ExtractedTree], name: str) -> None:
    owned = _entry(extracted[name], f"{FORMATS[name]}/etc/owned")
    assert (owned.uid, owned.gid, owned.mode) == (1000, 100, 0o640)


@pytest.mark.parametrize("name", list(FORMATS))
def test_symlink_targets_are_recorded_and_not_created(extracted: dict[str, ExtractedTree], name: str) -> None:
    tree, prefix = extracted[name], FORMATS[name]
    targets = {p: _entry(tree, f"{prefix}{p}") for p in ("/bin/sh", "/etc/abs", "/etc/dangling")}
    assert {p: (e.kind, e.link_target, e.data) for p, e in targets.items()} == {
        "/bin/sh": (EntryKind.SYMLINK, "busybox", None),
        "/etc/abs": (EntryKind.SYMLINK, "/etc/passwd", None),
        "/etc/dangling": (EntryKind.SYMLINK, "/nonexistent/target", None),
    }


@pytest.mark.parametrize("name", WITH_DEVICE)
def test_device_node_is_recorded_never_created(
    extracted: dict[str, ExtractedTree], name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    console = _entry(extracted[name], f"{FORMATS[name]}/dev/console")
    assert (console.kind, console.mode, console.data) == (EntryKind.DEVICE, 0o600, None)


def test_work_directory_holds_only_directories_and_regular_files(
    images: dict[str, Path], tmp_path: Path
) -> None:
    for name in FORMATS:
        extract_image(images[name], tmp_path / name)
    kinds = {stat.S_IFMT(p.lstat().st_mode) for p in _walk(tmp_path)}
    assert kinds <= {stat.S_IFDIR, stat.S_IFREG}


def test_nested_recursion_names_each_layer_with_its_parent(extracted: dict[str, ExtractedTree]) -> None:
    layers = extracted["nested"].layers
    assert [layer.format for layer in layers] == ["uimage", "cpio", "squashfs"]
    assert layers[1].parent == layers[0].name
    assert layers[2].parent == layers[1].name
    assert _entry(extracted["nested"], "/boot/rootfs.sqfs").kind is EntryKind.FILE


def test_depth_limit_stops_recursion_with_a_note(images: dict[str, Path], tmp_path: Path) -> None:
    tree = extract_image(images["nested"], tmp_path / "w", limits=Limits(max_depth=1))
    assert [layer.format for layer in tree.layers] == ["uimage", "cpio"]
    assert any("depth limit 1" in note for note in tree.notes)


def test_trx_partitions_are_carved(extracted: dict[str, ExtractedTree]) -> None:
    formats = [layer.format for layer in extracted["trx"].layers]
    assert formats == ["trx", "gzip", "squashfs"]
    kernel = _entry(extracted["trx"], "/gzip-0.bin")
    assert kernel.data is not None
    assert kernel.data.read_bytes().startswith(b"Linux version 4.14.0")


def test_squashfs_at_an_offset_leaves_the_prefix_unextracted(extracted: dict[str, ExtractedTree]) -> None:
    tree = extracted["squashfs-at-offset"]
    assert tree.layers[0].offset == 3000
    assert tree.unextracted[0].offset == 0
    assert tree.unextracted[0].size == 3000


@pytest.mark.parametrize("name", ["hostile-tar", "hostile-cpio"])
def test_hostile_archive_writes_nothing_outside_the_workdir(
    images: dict[str, Path], tmp_path: Path, name: str
) -> None:
    outer = tmp_path / "outer"
    workdir = outer / "a" / "b" / "work"
    workdir.mkdir(parents=True)
    before = _listing(tmp_path)
    tmp_before = set(os.listdir("/tmp"))  # noqa: S108 - the absolute member targets /tmp
    tree = extract_image(images[name], workdir)
    assert _listing(tmp_path) - before == {p for p in _listing(tmp_path) if p.startswith("outer/a/b/work/")}
    assert "escaped-absolute" not in set(os.listdir("/tmp")) - tmp_before  # noqa: S108
    assert not any(".." in e.path.split("/") for e in tree.entries)
    (layer,) = tree.layers
    assert layer.status is LayerStatus.PARTIAL
    assert "2 unsafe member(s) refused" in layer.detail
    good = _entry(tree, "/good")
    assert good.data is not None
    assert good.data.read_bytes() == b"harmless"
    through = _entry(tree, "/link/escaped-through-link")
    assert through.data is not None
    assert through.data.is_relative_to(workdir)


def test_gzip_bomb_stops_at_the_ratio_limit_and_is_partial(images: dict[str, Path], tmp_path: Path) -> None:
    image_size = images["bomb"].stat().st_size
    tree = extract_image(images["bomb"], tmp_path / "w")
    (layer,) = tree.layers
    assert layer.status is LayerStatus.PARTIAL
    assert "output size limit reached" in layer.detail
    written = sum(p.stat().st_size for p in _walk(tmp_path) if p.is_file())
    assert written <= 200 * image_size
    assert any("stopped early" in note for note in tree.notes)


def test_gzip_bomb_stops_at_the_total_limit(images: dict[str, Path], tmp_path: Path) -> None:
    tree = extract_image(images["bomb"], tmp_path / "w", limits=Limits(max_total_bytes=8 << 20))
    assert tree.layers[0].status is LayerStatus.PARTIAL
    assert sum(p.stat().st_size for p in _walk(tmp_path) if p.is_file()) <= 8 << 20


def test_file_count_limit_gives_a_partial_layer(images: dict[str, Path], tmp_path: Path) -> None:
    tree = extract_image(images["cpio"], tmp_path / "w", limits=Limits(max_files=2))
    assert tree.layers[0].status is LayerStatus.PARTIAL
    assert "file count limit" in tree.layers[0].detail
    assert len(list(tree.files())) == 2


def test_truncated_squashfs_is_failed_with_detail(images: dict[str, Path], tmp_path: Path) -> None:
    tree = extract_image(images["truncated-squashfs"], tmp_path / "w")
    (layer,) = tree.layers
    assert layer.format == "squashfs"
    assert layer.status in {LayerStatus.FAILED, LayerStatus.PARTIAL}
    assert layer.detail.startswith("unsquashfs")


def test_random_blob_is_reported_encrypted_with_its_entropy(images: dict[str, Path], tmp_path: Path) -> None:
    tree = extract_image(images["random"], tmp_path / "w")
    assert tree.entries == ()
    assert tree.empty
    (region,) = tree.unextracted
    assert (region.offset, region.size) == (0, 256 * 1024)
    assert region.entropy > 7.9
    (layer,) = tree.layers
    assert (layer.status, layer.format, layer.size) == (LayerStatus.ENCRYPTED, "unknown", 256 * 1024)


def test_progress_reports_the_whole_image(images: dict[str, Path], tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    extract_image(images["trx"], tmp_path / "w", progress=lambda done, total: calls.append((done, total)))
    size = images["trx"].stat().st_size
    assert calls[-1] == (size, size)
    assert all(done <= total for done, total in calls)


def test_empty_image_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ImageInvalid, match="empty"):
        extract_image(tmp_path / "empty.bin", tmp_path / "w")


def test_image_hash_and_size(images: dict[str, Path], extracted: dict[str, ExtractedTree]) -> None:
    import hashlib

    data = images["cpio"].read_bytes()
    assert extracted["cpio"].image_sha256 == hashlib.sha256(data).hexdigest()
    assert extracted["cpio"].image_size == len(data)


# --- real samples -----------------------------------------------------------------------------

SAMPLE_FILES = sorted(p for p in SAMPLES.rglob("*") if p.is_file()) if SAMPLES.is_dir() else []


@pytest.mark.skipif(not SAMPLE_FILES, reason=f"{SAMPLES} is absent")
@pytest.mark.parametrize("sample", SAMPLE_FILES, ids=lambda p: p.name)
def test_real_sample_extracts_without_raising(sample: Path, tmp_path: Path) -> None:
    tree = extract_image(sample, tmp_path / "w")
    assert tree.image_size == sample.stat().st_size
    assert not any(p.is_symlink() for p in _walk(tmp_path))


def _sample(name: str) -> Path:
    path = SAMPLES / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def test_binwalk_squashfs_sample_file_list(tmp_path: Path) -> None:
    tree = extract_image(_sample("binwalk-tests/squashfs.bin"), tmp_path / "w")
    assert [(e.path, e.kind, e.mode, e.uid, e.size) for e in tree.entries] == [
        ("/lsb-release", EntryKind.FILE, 0o644, 1000, 104)
    ]
    data = tree.entries[0].data
    assert data is not None
    assert data.read_bytes().startswith(b"DISTRIB_ID=Ubuntu")


def test_fact_jffs2_big_endian_sample_file_list(tmp_path: Path) -> None:
    tree = extract_image(_sample("fact-tests/jffs2_be.img"), tmp_path / "w")
    assert sorted(e.path for e in tree.entries) == [
        "/generic folder",
        "/generic folder/test file 3_.txt",
        "/testfile1",
        "/testfile2",
    ]


def test_fact_fit_sample_reaches_the_squashfs_in_the_rootfs_image(tmp_path: Path) -> None:
    tree = extract_image(_sample("fact-tests/fit.itb"), tmp_path / "w")
    random_data = _entry(tree, "/root/random-data")
    assert random_data.size == 1 << 20
    assert random_data.mode == 0o664
    assert {layer.format for layer in tree.layers} == {"fdt", "gzip", "squashfs"}


def test_fact_ubi_sample_reports_ubifs_as_failed(tmp_path: Path) -> None:
    tree = extract_image(_sample("fact-tests/ubi.img"), tmp_path / "w")
    ubifs = [layer for layer in tree.layers if layer.format == "ubifs"]
    assert [layer.status for layer in ubifs] == [LayerStatus.FAILED]
    assert "UBIFS" in ubifs[0].detail


# --- property: arbitrary bytes ---------------------------------------------------------------------

_MAGICS = [
    b"hsqs",
    b"070701",
    b"\x1f\x8b\x08\x00",
    b"\xfd7zXZ\x00",
    b"\x5d\x00\x00\x80\x00",
    b"BZh9",
    b"UBI#\x01",
]
_MAGICS += [
    b"\x27\x05\x19\x56",
    b"\xd0\x0d\xfe\xed",
    b"HDR0",
    b"\x85\x19",
    b"\x19\x85",
    b"PK\x03\x04",
    b"-rom1fs-",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.binary(min_size=1, max_size=4096),
        st.builds(lambda m, b: m + b, st.sampled_from(_MAGICS), st.binary(max_size=4096)),
    )
)
def test_random_bytes_never_raise_or_escape(tmp_path: Path, blob: bytes) -> None:
    case = tmp_path / os.urandom(6).hex()
    case.mkdir()
    (case / "image.bin").write_bytes(blob)
    with contextlib.suppress(ImageInvalid, ExtractionLimit):
        extract_image(case / "image.bin", case / "work")
    assert {p.name for p in case.iterdir()} <= {"image.bin", "work"}
    assert all(stat.S_IFMT(p.lstat().st_mode) in {stat.S_IFDIR, stat.S_IFREG} for p in _walk(case))
