"""Firmware test images, built at test time with Debian's tools (and Python for TRX, cpio, tar).

Every image carries the same planted root filesystem (:data:`PLANTED`): a setuid-root busybox, a
world-writable file, a relative, an absolute and a dangling symlink, a file owned by 1000:100 and
a character device ``/dev/console`` (5, 1) declared as metadata (mksquashfs pseudo file, cpio/tar
headers, a mkfs.jffs2 device table) so nothing needs ``mknod``. Hostile images try path traversal,
absolute names, writing through a symlink, a decompression bomb; one squashfs is truncated and
one blob is random.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import stat
import struct
import subprocess
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = b"\x7fELF-pretend-busybox " * 64
PASSWD = b"root:x:0:0:root:/root:/bin/sh\n"


@dataclass(frozen=True)
class Planted:
    """One planted entry: path, type bits + permissions, owner, link target, content."""

    path: str
    mode: int
    uid: int = 0
    gid: int = 0
    link: str | None = None
    content: bytes | None = None
    rdev: tuple[int, int] = (0, 0)


PLANTED = (
    Planted("/bin", stat.S_IFDIR | 0o755),
    Planted("/bin/busybox", stat.S_IFREG | 0o4755, content=BUSYBOX),
    Planted("/bin/sh", stat.S_IFLNK | 0o777, link="busybox"),
    Planted("/etc", stat.S_IFDIR | 0o755),
    Planted("/etc/passwd", stat.S_IFREG | 0o644, content=PASSWD),
    Planted("/etc/world", stat.S_IFREG | 0o666, content=b"anyone may write\n"),
    Planted("/etc/owned", stat.S_IFREG | 0o640, uid=1000, gid=100, content=b"owned by 1000\n"),
    Planted("/etc/abs", stat.S_IFLNK | 0o777, link="/etc/passwd"),
    Planted("/etc/dangling", stat.S_IFLNK | 0o777, link="/nonexistent/target"),
    Planted("/dev", stat.S_IFDIR | 0o755),
    Planted("/dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
)


def _run(*argv: str, cwd: Path | None = None) -> None:
    subprocess.run(argv, check=True, capture_output=True, cwd=cwd)


def build_tree(root: Path) -> Path:
    """The planted tree on disk (without the device and owners: those come from metadata)."""
    for p in PLANTED:
        target = root / p.path.lstrip("/")
        if stat.S_ISDIR(p.mode):
            target.mkdir(parents=True, exist_ok=True)
        elif stat.S_ISLNK(p.mode):
            assert p.link is not None
            target.symlink_to(p.link)
        elif stat.S_ISREG(p.mode):
            target.write_bytes(p.content or b"")
            os.chmod(target, stat.S_IMODE(p.mode))
    return root


def build_squashfs(tree: Path, out: Path, comp: str = "gzip") -> Path:
    """mksquashfs with owners and modes as pseudo definitions (whoever runs it) and the device."""
    pseudo: list[str] = []
    for p in PLANTED:
        if stat.S_ISCHR(p.mode):
            pseudo += ["-p", f"{p.path} c {stat.S_IMODE(p.mode):o} {p.uid} {p.gid} {p.rdev[0]} {p.rdev[1]}"]
        elif not stat.S_ISLNK(p.mode):
            pseudo += ["-p", f"{p.path} m {stat.S_IMODE(p.mode):o} {p.uid} {p.gid}"]
    argv = ["mksquashfs", str(tree), str(out), "-comp", comp, "-noappend", "-quiet", "-no-progress"]
    _run(*argv, *pseudo)
    return out


def _newc(name: str, mode: int, data: bytes, p: Planted | None = None) -> bytes:
    uid, gid, rdev = (p.uid, p.gid, p.rdev) if p else (0, 0, (0, 0))
    fields = [1, mode, uid, gid, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\x00"
    header += b"\x00" * (-len(header) % 4)
    return header + data + b"\x00" * (-len(data) % 4)


def cpio_bytes(members: list[Planted]) -> bytes:
    """A newc cpio archive of ``members`` (names as given, relative unless they are hostile)."""
    body = b""
    for p in members:
        data = (p.link or "").encode() if stat.S_ISLNK(p.mode) else (p.content or b"")
        body += _newc(p.path, p.mode, data, p)
    body += _newc("TRAILER!!!", 0, b"")
    return body + b"\x00" * (-len(body) % 512)


def _relative(members: tuple[Planted, ...]) -> list[Planted]:
    return [Planted(p.path.lstrip("/"), p.mode, p.uid, p.gid, p.link, p.content, p.rdev) for p in members]


def tar_bytes(members: list[Planted]) -> bytes:
    """A ustar archive of ``members`` with their owners, modes, links and devices."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for p in members:
            info = tarfile.TarInfo(p.path)
            info.mode, info.uid, info.gid = stat.S_IMODE(p.mode), p.uid, p.gid
            kinds = {
                stat.S_IFDIR: tarfile.DIRTYPE,
                stat.S_IFLNK: tarfile.SYMTYPE,
                stat.S_IFCHR: tarfile.CHRTYPE,
            }
            info.type = kinds.get(stat.S_IFMT(p.mode), tarfile.REGTYPE)
            info.linkname = p.link or ""
            info.devmajor, info.devminor = p.rdev
            content = p.content or b""
            info.size = len(content) if info.type == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return buffer.getvalue()


def build_ext4(tree: Path, out: Path) -> Path:
    """mke2fs -d: owners are the tree's own (root when the tests run as root); no device node."""
    _run("mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), "-b", "1024", str(out), "1M")
    return out


def build_jffs2(tree: Path, out: Path, *, big_endian: bool) -> Path:
    """mkfs.jffs2 with owners squashed to root (-U), the device from a device table (-D)."""
    table = out.with_suffix(".devtable")
    table.write_text("/dev/console c 600 0 0 5 1 0 0 -\n/etc/owned f 640 1000 100 - - - - -\n")
    endian = "-b" if big_endian else "-l"
    _run("mkfs.jffs2", endian, "-U", "-D", str(table), "-r", str(tree), "-o", str(out), "-e", "64KiB")
    return out


def build_ubi(squashfs: Path, out: Path) -> Path:
    """ubinize of one dynamic volume holding ``squashfs``."""
    config = out.with_suffix(".ini")
    config.write_text(f"[rootfs]\nmode=ubi\nimage={squashfs}\nvol_id=0\nvol_type=dynamic\nvol_name=rootfs\n")
    _run("ubinize", "-o", str(out), "-p", "16KiB", "-m", "512", str(config))
    return out


def build_uimage(payload: Path, out: Path, compression: str = "gzip") -> Path:
    """mkimage: a legacy uImage around ``payload`` (already compressed as ``compression`` says)."""
    _run(
        "mkimage", "-A", "mips", "-O", "linux", "-T", "ramdisk", "-C", compression,
        "-n", "fleetguard test", "-d", str(payload), str(out),
    )  # fmt: skip
    return out


def trx_bytes(partitions: list[bytes]) -> bytes:
    """A Broadcom TRX v1: 28-byte header, partitions at 4-byte aligned offsets."""
    body, offsets = b"", []
    for part in partitions:
        offsets.append(28 + len(body))
        body += part + b"\x00" * (-len(part) % 4)
    offsets += [0] * (3 - len(offsets))
    length = 28 + len(body)
    tail = struct.pack("<HH3I", 0, 1, *offsets) + body
    return b"HDR0" + struct.pack("<II", length, zlib.crc32(tail) ^ 0xFFFFFFFF) + tail


def gzip_bomb(out: Path, gib: int = 1) -> Path:
    """``gib`` GiB of zeros as concatenated gzip members of 1 MiB each (about 1 KiB per MiB)."""
    member = gzip.compress(bytes(1 << 20), compresslevel=9, mtime=0)
    out.write_bytes(member * (1024 * gib))
    return out


HOSTILE = [
    Planted("../../escaped-dotdot", stat.S_IFREG | 0o644, content=b"dotdot"),
    Planted("/tmp/escaped-absolute", stat.S_IFREG | 0o644, content=b"absolute"),  # noqa: S108 - the attack
    Planted("link", stat.S_IFLNK | 0o777, link="../../.."),
    Planted("link/escaped-through-link", stat.S_IFREG | 0o644, content=b"through link"),
    Planted("abslink", stat.S_IFLNK | 0o777, link="/tmp"),  # noqa: S108 - the attack
    Planted("abslink/escaped-through-abslink", stat.S_IFREG | 0o644, content=b"through abs link"),
    Planted("good", stat.S_IFREG | 0o644, content=b"harmless"),
]


def build_all(root: Path) -> dict[str, Path]:
    """Build every image under ``root``; return them by name."""
    tree = build_tree(root / "tree")
    images: dict[str, Path] = {}
    images["squashfs-gzip"] = build_squashfs(tree, root / "rootfs-gzip.sqfs")
    images["squashfs-xz"] = build_squashfs(tree, root / "rootfs-xz.sqfs", "xz")
    cpio = cpio_bytes(_relative(PLANTED))
    (root / "rootfs.cpio").write_bytes(cpio)
    images["cpio"] = root / "rootfs.cpio"
    (root / "rootfs.tar").write_bytes(tar_bytes(_relative(PLANTED)))
    images["tar"] = root / "rootfs.tar"
    images["ext4"] = build_ext4(tree, root / "rootfs.ext4")
    images["jffs2-le"] = build_jffs2(tree, root / "rootfs-le.jffs2", big_endian=False)
    images["jffs2-be"] = build_jffs2(tree, root / "rootfs-be.jffs2", big_endian=True)
    images["ubi"] = build_ubi(images["squashfs-gzip"], root / "rootfs.ubi")
    (root / "rootfs.cpio.gz").write_bytes(gzip.compress(cpio, mtime=0))
    images["uimage"] = build_uimage(root / "rootfs.cpio.gz", root / "rootfs.uimg")
    kernel = gzip.compress(b"Linux version 4.14.0 (pretend kernel)\n" * 100, mtime=0)
    (root / "firmware.trx").write_bytes(trx_bytes([kernel, images["squashfs-xz"].read_bytes()]))
    images["trx"] = root / "firmware.trx"
    squashfs_member = Planted(
        "boot/rootfs.sqfs", stat.S_IFREG | 0o644, content=images["squashfs-gzip"].read_bytes()
    )
    nested_cpio = cpio_bytes([Planted("boot", stat.S_IFDIR | 0o755), squashfs_member])
    (root / "nested.cpio.gz").write_bytes(gzip.compress(nested_cpio, mtime=0))
    images["nested"] = build_uimage(root / "nested.cpio.gz", root / "nested.uimg")
    prefix = random.Random(7).randbytes(3000)  # noqa: S311 - test filler, not a secret
    (root / "offset.bin").write_bytes(prefix + images["squashfs-gzip"].read_bytes() + b"\xff" * 5000)
    images["squashfs-at-offset"] = root / "offset.bin"
    _build_hostile(root, images)
    return images


def _build_hostile(root: Path, images: dict[str, Path]) -> None:
    (root / "hostile.tar").write_bytes(tar_bytes(HOSTILE))
    images["hostile-tar"] = root / "hostile.tar"
    (root / "hostile.cpio").write_bytes(cpio_bytes(HOSTILE))
    images["hostile-cpio"] = root / "hostile.cpio"
    images["bomb"] = gzip_bomb(root / "bomb.gz")
    full = images["squashfs-xz"].read_bytes()
    (used,) = struct.unpack_from("<Q", full, 40)  # squashfs 4.0 superblock: bytes_used
    (root / "truncated.sqfs").write_bytes(full[: used // 2])
    images["truncated-squashfs"] = root / "truncated.sqfs"
    (root / "random.bin").write_bytes(random.Random(42).randbytes(256 * 1024))  # noqa: S311 - test data
    images["random"] = root / "random.bin"


def elf_with(text: bytes, seed: int) -> bytes:
    """An ELF magic, noise and a NUL-terminated string, as in a binary's string table."""
    noise = random.Random(seed)  # noqa: S311 - test filler
    return b"\x7fELF" + noise.randbytes(64) + b"\x00" + text + b"\x00" + noise.randbytes(64)


def small_squashfs(out: Path, files: dict[str, bytes]) -> Path:
    """A squashfs of ``{"/etc/shadow": content, ...}``, every file owned by root."""
    tree = out.with_suffix(".tree")
    for path, content in files.items():
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    argv = ["mksquashfs", str(tree), str(out), "-noappend", "-quiet", "-no-progress", "-all-root"]
    subprocess.run(argv, check=True, capture_output=True)
    return out
