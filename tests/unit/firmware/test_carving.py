"""carving: each format is found at its offset with its size; false positives are refused."""

from __future__ import annotations

import gzip
import lzma
import random
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_images import build_all, trx_bytes
from fleetguard.firmware.carving import Carver, Format, Hit, hit_at, scan


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("carving-images"))


@pytest.mark.parametrize(
    ("name", "fmt", "variant"),
    [
        ("squashfs-gzip", Format.SQUASHFS, "v4-le"),
        ("squashfs-xz", Format.SQUASHFS, "v4-le"),
        ("cpio", Format.CPIO, "newc"),
        ("tar", Format.TAR, "ustar"),
        ("ext4", Format.EXT, ""),
        ("jffs2-le", Format.JFFS2, "le"),
        ("jffs2-be", Format.JFFS2, "be"),
        ("ubi", Format.UBI, ""),
        ("uimage", Format.UIMAGE, "gzip"),
        ("trx", Format.TRX, "v1"),
        ("bomb", Format.GZIP, ""),
    ],
)
def test_image_is_found_at_offset_zero(images: dict[str, Path], name: str, fmt: Format, variant: str) -> None:
    hit = hit_at(images[name].read_bytes(), 0)
    assert hit is not None
    assert (hit.offset, hit.format, hit.variant) == (0, fmt, variant)


def test_squashfs_size_is_bytes_used(images: dict[str, Path]) -> None:
    data = images["squashfs-gzip"].read_bytes()
    hit = hit_at(data)
    assert hit is not None
    assert hit.size == struct.unpack_from("<Q", data, 40)[0]


def test_ext_size_is_blocks_times_block_size(images: dict[str, Path]) -> None:
    hit = hit_at(images["ext4"].read_bytes())
    assert hit is not None
    assert hit.size == 1 << 20


def test_squashfs_after_a_random_prefix_is_found_at_its_offset(images: dict[str, Path]) -> None:
    hits = [h for h in scan(images["squashfs-at-offset"].read_bytes()) if h.format is Format.SQUASHFS]
    assert [h.offset for h in hits] == [3000]


def test_uimage_header_is_parsed(images: dict[str, Path]) -> None:
    data = images["uimage"].read_bytes()
    hit = hit_at(data)
    assert hit == Hit(0, Format.UIMAGE, len(data), "gzip", "fleetguard test")


def test_uimage_with_a_bad_header_crc_is_refused(images: dict[str, Path]) -> None:
    data = bytearray(images["uimage"].read_bytes())
    data[40] ^= 0xFF  # inside the name, covered by the header CRC
    assert all(h.format is not Format.UIMAGE for h in scan(bytes(data)))


def test_trx_partition_offsets_are_checked() -> None:
    good = trx_bytes([b"a" * 100, b"b" * 100])
    assert hit_at(good) == Hit(0, Format.TRX, len(good), "v1")
    bad = bytearray(good)
    struct.pack_into("<I", bad, 16, 10_000)  # partition beyond the image length
    assert hit_at(bytes(bad)) is None


def test_compression_streams_are_recognised() -> None:
    blob = b"\x00" * 16 + gzip.compress(b"x" * 100) + b"\x00" * 16 + lzma.compress(b"y" * 100)
    blob += b"\x00" * 16 + lzma.compress(b"z" * 100, format=lzma.FORMAT_ALONE)
    assert [h.format for h in scan(blob)] == [Format.GZIP, Format.XZ, Format.LZMA]


@pytest.mark.parametrize(
    "blob",
    [
        b"\x1f\x8b\x08\xff" + bytes(20),  # gzip with reserved flag bits set
        b"\xfd7zXZ\x00\x00\x01" + b"\x00\x00\x00\x00",  # xz stream flags with a wrong CRC
        b"\x5d\x00\x00\x00\x00" + b"\xff" * 9,  # lzma with a zero dictionary size
        b"BZh0" + bytes(10),  # bzip2 level 0
        b"hsqs" + bytes(92),  # squashfs with version 0.0
        b"070701" + b"z" * 110,  # newc with non-hex fields
    ],
)
def test_false_positives_are_refused(blob: bytes) -> None:
    assert scan(blob) == []


def test_skip_to_ignores_hits_inside_a_consumed_region() -> None:
    member = gzip.compress(b"abc")
    blob = member + member + b"\x00" * 8 + member
    carver = Carver(blob)
    found: list[int] = []
    for hit in carver:
        found.append(hit.offset)
        carver.skip_to(hit.offset + 2 * len(member))
    assert found == [0, 2 * len(member) + 8]


def test_many_candidates_are_scanned_quickly() -> None:
    # One 2-byte ext magic candidate every 64 bytes of a 4 MiB buffer: validated and refused.
    blob = (b"\x53\xef" + bytes(62)) * (1 << 16)
    assert scan(blob) == []


@given(st.binary(max_size=8192))
def test_scan_never_raises_and_hits_are_ordered(blob: bytes) -> None:
    hits = scan(blob)
    assert [h.offset for h in hits] == sorted(h.offset for h in hits)
    assert all(0 <= h.offset < len(blob) for h in hits)


def test_random_megabyte_has_no_strong_hits() -> None:
    blob = random.Random(3).randbytes(1 << 20)  # noqa: S311 - test data
    strong = {Format.SQUASHFS, Format.UIMAGE, Format.UBI, Format.SEVENZIP, Format.CRAMFS, Format.TRX}
    assert [h for h in scan(blob) if h.format in strong] == []
