"""The native squashfs reader against Debian's mksquashfs/unsquashfs (4.0) and the 3.1 test writer."""

from __future__ import annotations

import os
import re
import shutil
import stat
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetguard.firmware.errors import ExtractionLimit, ImageInvalid
from fleetguard.firmware.model import EntryKind, FileEntry
from fleetguard.firmware.squashfs_native import SquashfsImage, UnsupportedSquashfs, read_squashfs
from squashfs3_writer import Node, build

SAMPLES = Path(__file__).resolve().parents[4] / "shared" / "data" / "firmware"
needs_squashfs_tools = pytest.mark.skipif(
    shutil.which("mksquashfs") is None or shutil.which("unsquashfs") is None, reason="squashfs-tools missing"
)

_LISTING = re.compile(r"^(\S{10}) (\d+)/(\d+)\s+(\d+|\d+,\s*\d+) \S+ \S+ (.*)$")
_KIND_LETTER = {"d": EntryKind.DIRECTORY, "-": EntryKind.FILE, "l": EntryKind.SYMLINK, "c": EntryKind.DEVICE}
_KIND_LETTER |= {"b": EntryKind.DEVICE, "p": EntryKind.FIFO, "s": EntryKind.SOCKET}


def _unsquashfs_listing(
    image: Path, offset: int = 0
) -> dict[str, tuple[EntryKind, str, int, int, int | None, str | None]]:
    """path -> (kind, permission string, uid, gid, size or None for devices, link target)."""
    listing = subprocess.run(
        ["unsquashfs", "-o", str(offset), "-lln", str(image)], capture_output=True, text=True, check=True
    ).stdout
    out = {}
    for line in listing.splitlines():
        match = _LISTING.match(line)
        if match is None:
            continue
        perms, uid, gid, size, name = match.groups()
        name, _, target = name.partition(" -> ")
        path = "/" + name.removeprefix("squashfs-root").lstrip("/")
        out[path] = (
            _KIND_LETTER[perms[0]],
            perms[1:],
            int(uid),
            int(gid),
            None if "," in size else int(size),
            target or None,
        )
    return out


def _ours(image: SquashfsImage) -> dict[str, tuple[EntryKind, str, int, int, int | None, str | None]]:
    out = {}
    for entry, _ in image.entries():
        size = None if entry.kind is EntryKind.DEVICE else entry.size
        out[entry.path] = (
            entry.kind,
            stat.filemode(entry.mode)[1:],
            entry.uid,
            entry.gid,
            size,
            entry.link_target,
        )
    return out


def _files(image: SquashfsImage) -> dict[str, bytes]:
    return {entry.path: read() for entry, read in image.entries() if read is not None}


# --- squashfs 4.0, against squashfs-tools ---------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    (root / "bin").mkdir()
    (root / "etc" / "deep" / "er").mkdir(parents=True)
    (root / "bin" / "su").write_bytes(b"\x7fELF" + os.urandom(5000) + b"A" * 300_000)
    (root / "bin" / "su").chmod(0o4755)
    (root / "bin" / "empty").write_bytes(b"")
    (root / "etc" / "motd").write_text("hello\n")
    (root / "etc" / "deep" / "er" / "x").write_bytes(bytes(range(256)) * 3)
    with (root / "sparse").open("wb") as sparse:
        sparse.truncate(3 * 131072)
        sparse.seek(3 * 131072 - 5)
        sparse.write(b"tail!")
    (root / "link").symlink_to("bin/su")
    (root / "dangling").symlink_to("/nowhere/at/all")
    return root


def _mksquashfs(tree: Path, out: Path, *extra: str) -> Path:
    pseudo = out.with_suffix(".pseudo")
    pseudo.write_text(
        "dev d 755 0 0\ndev/null c 666 0 0 1 3\ndev/sda b 640 0 6 8 0\netc/motd m 640 1000 50\n"
    )
    subprocess.run(
        [
            "mksquashfs",
            str(tree),
            str(out),
            "-noappend",
            "-quiet",
            "-no-progress",
            "-pf",
            str(pseudo),
            *extra,
        ],
        check=True,
        capture_output=True,
    )
    return out


@needs_squashfs_tools
@pytest.mark.parametrize(
    ("compression", "extra"),
    [
        ("gzip", ()),
        ("xz", ("-force-uid", "1000", "-force-gid", "100")),
        ("lzma", ()),
        ("gzip", ("-noI", "-noD", "-noF", "-b", "4096")),
        ("xz", ("-no-fragments", "-b", "1M")),
    ],
)
def test_v4_matches_unsquashfs(tree: Path, tmp_path: Path, compression: str, extra: tuple[str, ...]) -> None:
    image_path = _mksquashfs(tree, tmp_path / "image.sqfs", "-comp", compression, *extra)
    image = read_squashfs(image_path.read_bytes())
    assert (image.version, image.big_endian, image.compression) == ((4, 0), False, compression)
    ours = _ours(image)
    assert ours == _unsquashfs_listing(image_path)
    assert ours["/bin/su"][1] == "rwsr-xr-x"
    files = _files(image)
    for path in ("/bin/su", "/bin/empty", "/etc/deep/er/x", "/sparse"):
        assert files[path] == (tree / path.lstrip("/")).read_bytes()
    assert files["/etc/motd"] == b"hello\n"


@needs_squashfs_tools
@pytest.mark.skipif(shutil.which("zstd") is None, reason="no zstd program")
def test_v4_zstd_through_the_zstd_program(tree: Path, tmp_path: Path) -> None:
    image_path = _mksquashfs(tree, tmp_path / "image.sqfs", "-comp", "zstd")
    image = read_squashfs(image_path.read_bytes())
    assert image.compression == "zstd"
    assert _ours(image) == _unsquashfs_listing(image_path)
    assert _files(image)["/bin/su"] == (tree / "bin" / "su").read_bytes()


@needs_squashfs_tools
@pytest.mark.parametrize("compression", ["lzo", "lz4"])
def test_v4_without_a_codec_is_reported_unsupported(tree: Path, tmp_path: Path, compression: str) -> None:
    image_path = _mksquashfs(tree, tmp_path / "image.sqfs", "-comp", compression)
    with pytest.raises(UnsupportedSquashfs, match=compression) as caught:
        read_squashfs(image_path.read_bytes())
    assert caught.value.variant == compression


@needs_squashfs_tools
def test_v4_at_an_offset_inside_a_larger_image(tree: Path, tmp_path: Path) -> None:
    image_path = _mksquashfs(tree, tmp_path / "image.sqfs")
    blob = b"\xff" * 0x10000 + image_path.read_bytes() + b"trailer"
    image = read_squashfs(memoryview(blob), offset=0x10000)
    assert _ours(image) == _unsquashfs_listing(image_path)


# --- squashfs 3.1, from the test writer -------------------------------------------------------------

NODES = [
    Node("/bin/busybox", "file", 0o4755, 0, 0, os.urandom(9000) + b"z" * 30_000),
    Node("/bin/sh", "symlink", 0o777, target="busybox"),
    Node("/etc/shadow", "file", 0o600, 0, 42, b"root:$1$x$y:0:0:99999:7:::\n"),
    Node("/etc/empty", "file", 0o644),
    Node("/home/user/notes", "file", 0o2640, 1000, 1000, b"n" * 4096),
    Node("/dev/null", "chr", 0o666, rdev=0x0103),
    Node("/dev/mtdblock0", "blk", 0o660, 0, 6, rdev=0x1F00),
    Node("/scratch", "dir", 0o1777),
    Node("/var/run/fifo", "fifo", 0o600, 33, 33),
    Node("/var/run/sock", "socket", 0o755, 33, 33),
    *(Node(f"/www/page{i:03}.html", "file", 0o644, 0, 0, f"<p>{i}</p>".encode() * i) for i in range(300)),
]
_KINDS = {
    "dir": EntryKind.DIRECTORY,
    "file": EntryKind.FILE,
    "symlink": EntryKind.SYMLINK,
    "chr": EntryKind.DEVICE,
    "blk": EntryKind.DEVICE,
    "fifo": EntryKind.FIFO,
    "socket": EntryKind.SOCKET,
}


def _expected(nodes: list[Node]) -> dict[str, tuple[EntryKind, int, int, int, str | None]]:
    return {n.path: (_KINDS[n.kind], n.mode, n.uid, n.gid, n.target or None) for n in nodes}


@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
@pytest.mark.parametrize("compression", ["zlib", "lzma-alone", "lzma-props", "lzma-raw"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"fragments": True},
        {"long_inodes": True, "check_data": True},
        {"lzma_magic": True, "fragments": True},
    ],
    ids=["plain", "fragments", "long-inodes-check-data", "shsq-magic"],
)
def test_v3_round_trip(big_endian: bool, compression: str, options: dict[str, bool]) -> None:
    image = read_squashfs(build(NODES, big_endian=big_endian, compression=compression, **options))
    assert (image.version, image.big_endian, image.compression) == ((3, 1), big_endian, compression)
    entries = {entry.path: entry for entry, _ in image.entries()}
    got = {
        p: (e.kind, e.mode, e.uid, e.gid, e.link_target) for p, e in entries.items() if p in _expected(NODES)
    }
    assert got == _expected(NODES)
    assert {"/", "/bin", "/etc", "/home", "/home/user", "/var", "/var/run", "/www"} <= set(entries)
    files = _files(image)
    for node in NODES:
        if node.kind == "file":
            assert files[node.path] == node.data
            assert entries[node.path].size == len(node.data)
    assert entries["/bin/sh"].size == len("busybox")


def test_v3_entries_are_in_directory_order_parents_first() -> None:
    paths = [entry.path for entry, _ in read_squashfs(build(NODES[:5])).entries()]
    assert paths == [
        *("/", "/bin", "/bin/busybox", "/bin/sh", "/etc", "/etc/empty", "/etc/shadow"),
        *("/home", "/home/user", "/home/user/notes"),
    ]


# --- corrupt input ---------------------------------------------------------------------------------


def _small_v3(**options: object) -> bytes:
    return build(NODES[:5], **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("keep", [0, 50, 119, 400, 1000])
def test_truncated_image_is_invalid(keep: int) -> None:
    with pytest.raises(ImageInvalid, match=r"superblock|truncated"):
        read_squashfs(_small_v3()[:keep])


def test_truncated_tables_are_invalid_with_the_offset() -> None:
    image = bytearray(_small_v3())
    used = struct.unpack_from("<Q", image, 63)[0]
    struct.pack_into("<Q", image, 63, used - 100)  # bytes_used now ends inside the tables
    with pytest.raises(ImageInvalid, match=r"at 0x[0-9a-f]+ .*outside the image"):
        list(read_squashfs(bytes(image)).entries())


def test_root_inode_past_the_end_is_invalid() -> None:
    image = bytearray(_small_v3())
    struct.pack_into("<Q", image, 43, 0x7FFF_0000)
    with pytest.raises(ImageInvalid, match="outside the image"):
        list(read_squashfs(bytes(image)).entries())


@pytest.mark.parametrize("big_endian", [False, True])
def test_directory_loop_is_invalid(big_endian: bool) -> None:
    image = read_squashfs(build(NODES[:5], big_endian=big_endian, loop_dir="/etc"))
    with pytest.raises(ImageInvalid, match=r"directory loop: /etc/again"):
        list(image.entries())


def test_corrupt_metadata_block_is_invalid() -> None:
    image = bytearray(_small_v3())
    inode_table = struct.unpack_from("<Q", image, 87)[0]
    image[inode_table + 4 : inode_table + 12] = b"\x00" * 8
    with pytest.raises(ImageInvalid, match=r"at 0x[0-9a-f]+"):
        list(read_squashfs(bytes(image)).entries())


def test_not_a_squashfs_is_invalid() -> None:
    with pytest.raises(ImageInvalid, match="no squashfs magic"):
        read_squashfs(b"\x00" * 4096)


def test_file_limit() -> None:
    image = read_squashfs(build(NODES), max_files=20)
    with pytest.raises(ExtractionLimit, match="more than 20 entries"):
        list(image.entries())


def test_byte_limit_counts_all_bytes_returned() -> None:
    image = read_squashfs(build(NODES[:3]), max_bytes=40_000)
    readers: dict[str, Callable[[], bytes]] = {e.path: r for e, r in image.entries() if r is not None}
    assert len(readers["/bin/busybox"]()) == 39_000
    with pytest.raises(ExtractionLimit, match="byte limit"):
        readers["/bin/busybox"]()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_images_fail_only_with_our_errors(data: st.DataObject) -> None:
    image = bytearray(_FUZZ_BASE[data.draw(st.sampled_from(range(len(_FUZZ_BASE))))])
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(image) - 1))
        image[position] = data.draw(st.integers(0, 255))
    try:
        squashfs = read_squashfs(bytes(image), max_files=1000, max_bytes=1 << 22)
        for _, read in squashfs.entries():
            if read is not None:
                read()
    except (ImageInvalid, ExtractionLimit):
        pass


_FUZZ_BASE = [
    build(NODES[:6], fragments=True),
    build(NODES[:6], big_endian=True, compression="lzma-raw", long_inodes=True),
    build(NODES[:6], compression="lzma-alone", check_data=True),
]


# --- real samples ----------------------------------------------------------------------------------


@needs_squashfs_tools
@pytest.mark.parametrize(
    ("sample", "offset"),
    [("binwalk-tests/squashfs.bin", 0), ("fact-tests/fit.itb", 1049425), ("fact-tests/test.tpl", 1180160)],
)
def test_real_samples_agree_with_unsquashfs(sample: str, offset: int, tmp_path: Path) -> None:
    """Where unsquashfs reads a sample we list and read the same; where it refuses one, so do we."""
    path = SAMPLES / sample
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    extracted = tmp_path / "root"
    theirs = subprocess.run(
        ["unsquashfs", "-o", str(offset), "-d", str(extracted), str(path)], capture_output=True, check=False
    )
    if theirs.returncode != 0:
        with pytest.raises(ImageInvalid, match=r"at 0x[0-9a-f]+"):
            list(read_squashfs(path.read_bytes(), offset=offset).entries())
        return
    image = read_squashfs(path.read_bytes(), offset=offset)
    assert _ours(image) == _unsquashfs_listing(path, offset)
    files = _files(image)
    assert files
    for name, content in files.items():
        assert (extracted / name.lstrip("/")).read_bytes() == content


def test_entries_are_file_entries_without_data() -> None:
    for entry, _ in read_squashfs(build(NODES[:3])).entries():
        assert isinstance(entry, FileEntry)
        assert entry.data is None
