"""Component detection: planted version strings in noise, decoys that must not give versions,
deduplication by strength, and the real glibc/OpenSSL/OpenSSH of this machine."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.firmware.components import detect_components
from fleetguard.firmware.model import Component, EntryKind, ExtractedTree, FileEntry

ELF = b"\x7fELF\x01\x01\x01" + bytes(9)


class Image:
    """A tree under construction: files of noise with NUL-delimited strings planted in them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries: list[FileEntry] = []

    def file(self, path: str, *strings: bytes, elf: bool = False) -> Path:
        rng = random.Random(path)  # noqa: S311 - reproducible noise around the planted strings
        data = bytearray(ELF if elf else b"")
        for text in strings:
            data += rng.randbytes(37) + b"\x00" + text + b"\x00"
        data += rng.randbytes(41)
        disk = self.root / path.strip("/").replace("/", "__")
        disk.write_bytes(bytes(data))
        self.entries.append(FileEntry(path, EntryKind.FILE, 0o755, size=len(data), data=disk))
        return disk

    def text(self, path: str, text: str) -> None:
        disk = self.root / path.strip("/").replace("/", "__")
        disk.write_text(text)
        self.entries.append(FileEntry(path, EntryKind.FILE, 0o644, size=len(text), data=disk))

    def link(self, path: str, target: str) -> None:
        self.entries.append(FileEntry(path, EntryKind.SYMLINK, 0o777, link_target=target))

    def directory(self, path: str) -> None:
        self.entries.append(FileEntry(path, EntryKind.DIRECTORY, 0o755))

    def tree(self) -> ExtractedTree:
        return ExtractedTree("0" * 64, 0, tuple(self.entries), ())

    def found(self, name: str, version: str, path: str, text: str, cpe: str | None) -> Component:
        """The component a release string ``text`` in ``path`` must give, at its offset."""
        offset = self.offset(path, text.encode())
        return Component(name, version, path, f"{text!r} at {offset:#x}", offset, purl(name, version), cpe)

    def lone(self, name: str, version: str, path: str, cpe: str | None) -> Component:
        offset = self.offset(path, b"\x00" + version.encode() + b"\x00") + 1
        evidence = f"lone version string {version!r} at {offset:#x}"
        return Component(name, version, path, evidence, offset, purl(name, version), cpe)

    def offset(self, path: str, needle: bytes) -> int:
        entry = next(e for e in self.entries if e.path == path and e.data is not None)
        assert entry.data is not None
        return entry.data.read_bytes().index(needle)


def purl(name: str, version: str) -> str:
    return f"pkg:generic/{name}@{version}"


def cpe(vendor: str, product: str, version: str, update: str = "*", part: str = "a") -> str:
    return f"cpe:2.3:{part}:{vendor}:{product}:{version}:{update}:*:*:*:*:*:*"


def test_planted_versions_are_reported_exactly(tmp_path: Path) -> None:
    img = Image(tmp_path)
    img.file("/bin/busybox", b"BusyBox v1.31.1 (2020-01-01 00:00:00 UTC) multi-call binary.", elf=True)
    img.file("/usr/lib/libcrypto.so.1.0.0", b"OpenSSL %s", b"OpenSSL 1.0.2k  26 Jan 2017", b"OpenSSL 1.0.2k")
    img.file("/usr/lib/libssl.so.1.0.0", b"SSLv3 part of OpenSSL 1.0.2k  26 Jan 2017")
    img.file("/usr/sbin/dropbear", b"SSH-2.0-dropbear_2019.78", b"Dropbear sshd v2019.78")
    img.file("/usr/sbin/sshd", b"OpenSSH_7.4*,OpenSSH_7.5*", b"OpenSSH_7.4", b"OpenSSH_7.4p1", elf=True)
    img.file("/usr/sbin/dnsmasq", b"Dnsmasq version %s  %s", b"dnsmasq-2.80")
    img.file("/usr/sbin/lighttpd", b"lighttpd/1.4.45")
    img.file("/usr/sbin/miniupnpd", b"Linux/4.14 UPnP/1.1 MiniUPnPd/2.1")
    img.file("/usr/sbin/smbd", b"Version %s", b"Samba 3.0.37")
    img.file("/usr/sbin/hostapd", b"hostapd v2.9")
    img.file("/usr/sbin/wpa_supplicant", b"wpa_supplicant v2.9")
    img.file("/usr/lib/libcurl.so.4", b"libcurl/7.64.0")
    img.file("/lib/libuClibc-0.9.33.2.so")
    img.file("/lib/libc.so", b"musl libc (%s)", b"Version %s", b"1.1.24")
    img.link("/lib/ld-musl-armhf.so.1", "libc.so")
    img.file(
        "/lib/libc.so.6",
        b"GLIBC_2.27",
        b"GLIBC_2.28",
        b"GNU C Library (GNU libc) stable release version 2.28.",
    )
    img.directory("/lib/modules/4.14.90")
    img.file("/lib/modules/4.14.90/kernel/nf_nat.ko", b"vermagic=4.14.90 SMP mod_unload ARMv7 ")
    img.file("/boot/vmlinux", b"Linux version 4.14.90 (builder@host) (gcc version 7.3.0) #0 SMP", elf=True)
    img.file("/boot/u-boot.bin", b"U-Boot 2019.07 (Jul 01 2019 - 12:00:00 +0000)")
    img.file("/usr/lib/libnetsnmp.so.35", b"NET-SNMP version:  %s", b"5.8")
    img.file("/usr/sbin/pppd", b"pppd version 2.4.7", b"/usr/lib/pppd/2.4.7")
    img.file("/usr/sbin/xtables-multi", b"%s v%s: %s", b"1.8.2")
    img.text("/usr/lib/opkg/status", "Package: uhttpd\nVersion: 2021-03-21-15346de8-2\nDepends: libc\n\n")

    components = detect_components(img.tree())

    uclibc_evidence = "library name /lib/libuClibc-0.9.33.2.so"
    assert components == [
        img.found(
            "busybox", "1.31.1", "/bin/busybox", "BusyBox v1.31.1", cpe("busybox", "busybox", "1.31.1")
        ),
        img.found("curl", "7.64.0", "/usr/lib/libcurl.so.4", "libcurl/7.64.0", cpe("haxx", "curl", "7.64.0")),
        img.found(
            "dnsmasq", "2.80", "/usr/sbin/dnsmasq", "dnsmasq-2.80", cpe("thekelleys", "dnsmasq", "2.80")
        ),
        img.found(
            "dropbear",
            "2019.78",
            "/usr/sbin/dropbear",
            "dropbear_2019.78",
            cpe("dropbear_ssh_project", "dropbear_ssh", "2019.78"),
        ),
        img.found(
            "glibc",
            "2.28",
            "/lib/libc.so.6",
            "GNU C Library (GNU libc) stable release version 2.28",
            cpe("gnu", "glibc", "2.28"),
        ),
        img.found("hostapd", "2.9", "/usr/sbin/hostapd", "hostapd v2.9", cpe("w1.fi", "hostapd", "2.9")),
        img.lone("iptables", "1.8.2", "/usr/sbin/xtables-multi", cpe("netfilter", "iptables", "1.8.2")),
        img.found(
            "lighttpd",
            "1.4.45",
            "/usr/sbin/lighttpd",
            "lighttpd/1.4.45",
            cpe("lighttpd", "lighttpd", "1.4.45"),
        ),
        img.found(
            "linux",
            "4.14.90",
            "/boot/vmlinux",
            "Linux version 4.14.90 (",
            cpe("linux", "linux_kernel", "4.14.90", part="o"),
        ),
        img.found(
            "miniupnpd",
            "2.1",
            "/usr/sbin/miniupnpd",
            "MiniUPnPd/2.1",
            cpe("miniupnp_project", "miniupnpd", "2.1"),
        ),
        Component(
            "musl",
            "1.1.24",
            "/lib/ld-musl-armhf.so.1",
            f"lone version string '1.1.24' at {img.offset('/lib/libc.so', b'1.1.24'):#x}",
            img.offset("/lib/libc.so", b"1.1.24"),
            purl("musl", "1.1.24"),
            cpe("musl-libc", "musl", "1.1.24"),
        ),
        img.lone("net-snmp", "5.8", "/usr/lib/libnetsnmp.so.35", cpe("net-snmp", "net-snmp", "5.8")),
        img.found(
            "openssh", "7.4p1", "/usr/sbin/sshd", "OpenSSH_7.4p1", cpe("openbsd", "openssh", "7.4", "p1")
        ),
        img.found(
            "openssl",
            "1.0.2k",
            "/usr/lib/libcrypto.so.1.0.0",
            "OpenSSL 1.0.2k  26 Jan 2017",
            cpe("openssl", "openssl", "1.0.2k"),
        ),
        img.found(
            "pppd",
            "2.4.7",
            "/usr/sbin/pppd",
            "pppd version 2.4.7",
            cpe("point-to-point_protocol_project", "point-to-point_protocol", "2.4.7"),
        ),
        img.found("samba", "3.0.37", "/usr/sbin/smbd", "Samba 3.0.37", cpe("samba", "samba", "3.0.37")),
        img.found(
            "u-boot", "2019.07", "/boot/u-boot.bin", "U-Boot 2019.07 (", cpe("denx", "u-boot", "2019.07")
        ),
        Component(
            "uclibc",
            "0.9.33.2",
            "/lib/libuClibc-0.9.33.2.so",
            uclibc_evidence,
            None,
            purl("uclibc", "0.9.33.2"),
            cpe("uclibc", "uclibc", "0.9.33.2"),
        ),
        Component(
            "uhttpd",
            "2021-03-21-15346de8",
            "/usr/lib/opkg/status",
            "opkg package uhttpd 2021-03-21-15346de8-2",
            0,
            purl("uhttpd", "2021-03-21-15346de8"),
            None,  # NVD files uhttpd's CVEs under openwrt:openwrt
        ),
        img.found(
            "wpa_supplicant",
            "2.9",
            "/usr/sbin/wpa_supplicant",
            "wpa_supplicant v2.9",
            cpe("w1.fi", "wpa_supplicant", "2.9"),
        ),
    ]


def test_templates_applet_lists_and_compat_patterns_give_no_version(tmp_path: Path) -> None:
    img = Image(tmp_path)
    img.file(
        "/usr/lib/libcrypto.so", b"OpenSSL %s  %s", b"OpenSSL 1.0.2k", b"built on OpenSSL 1.0.2 or later"
    )
    applets = b"\x00".join([b"[", b"[[", b"acpid", b"ash", b"busybox", b"1.31.1", b"sh"])
    img.file("/bin/busybox", b"BusyBox v%s (%s) multi-call binary.", applets, b"busybox 1.31.1", elf=True)
    img.file(
        "/usr/sbin/sshd", b"OpenSSH_7.4*,OpenSSH_7.5*", b"OpenSSH_2.*,OpenSSH_3.0*", b"OpenSSH_%s", elf=True
    )
    img.file("/bin/uname", b"Linux version %s (%s)", b"Linux version 2.6", elf=True)
    img.file("/usr/bin/app", b"libcrypto.so.1.1", b"OpenSSL 1.1.1w  11 Sep 2023", elf=True)  # header text
    img.file("/lib/ld-musl-mips.so.1", b"1.2.3", b"1.1.24")  # two candidates: neither is believed
    img.file("/usr/sbin/snmpd", b"NET-SNMP version:  %s")
    img.file("/usr/sbin/pppd", b"pppd version %s", b"pppd %s started by %s, uid %d")
    img.file("/usr/sbin/dnsmasq", b"dnsmasq-%s", b"Dnsmasq version %s")
    img.file("/usr/sbin/hostapd", b"hostapd v%s", b"hostapd v2.9x")
    img.file("/usr/bin/curl", b"curl %s (%s) %s", b"libcurl/%s")
    img.file("/usr/sbin/lighttpd", b"lighttpd/1.4.45.1.2")
    img.file("/etc/banner", b"BusyBox v1.31.1 (2020-01-01) built-in shell")  # not a candidate, not ELF

    assert detect_components(img.tree()) == []


def test_a_statically_linked_copy_is_found_in_any_elf(tmp_path: Path) -> None:
    img = Image(tmp_path)
    img.file("/usr/bin/vpnd", b"OpenSSL 1.1.1w  11 Sep 2023", elf=True)

    [component] = detect_components(img.tree())

    assert (component.name, component.version, component.path) == ("openssl", "1.1.1w", "/usr/bin/vpnd")


def test_one_component_per_name_and_version_with_the_first_path(tmp_path: Path) -> None:
    img = Image(tmp_path)
    for path in ("/rescue/bin/busybox", "/bin/busybox"):
        img.file(path, b"BusyBox v1.31.1 (2020-01-01 00:00:00 UTC)")
    img.file("/recovery/busybox", b"BusyBox v1.24.1 (2016-01-01 00:00:00 UTC)")

    components = detect_components(img.tree())

    assert [(c.name, c.version, c.path) for c in components] == [
        ("busybox", "1.24.1", "/recovery/busybox"),
        ("busybox", "1.31.1", "/bin/busybox"),
    ]


def test_the_components_own_file_wins_over_a_static_copy(tmp_path: Path) -> None:
    img = Image(tmp_path)
    img.file("/opt/app", b"OpenSSL 1.0.2k  26 Jan 2017", elf=True)
    img.file("/usr/lib/libcrypto.so.1.0.0", b"OpenSSL 1.0.2k  26 Jan 2017")

    [component] = detect_components(img.tree())

    assert component.path == "/usr/lib/libcrypto.so.1.0.0"


def test_abi_versions_are_reported_only_without_a_release_string(tmp_path: Path) -> None:
    img = Image(tmp_path)
    img.file("/usr/lib/libssl.so.1.0.0")
    img.file("/usr/lib/libcrypto.so.1.0.0")
    img.file("/lib/libc.so.6", b"GLIBC_2.2.5", b"GLIBC_2.27", b"GLIBC_2.28", b"GLIBC_2.3")

    components = detect_components(img.tree())

    glibc_offset = img.offset("/lib/libc.so.6", b"GLIBC_2.28")
    assert components == [
        Component(
            "glibc",
            "2.28",
            "/lib/libc.so.6",
            f"highest symbol version 'GLIBC_2.28' at {glibc_offset:#x}",
            glibc_offset,
            None,
            None,
        ),
        Component("openssl", "1.0.0", "/usr/lib/libcrypto.so.1.0.0", "SONAME /usr/lib/libcrypto.so.1.0.0"),
    ]


def test_kernel_version_from_modules_without_a_kernel_image(tmp_path: Path) -> None:
    img = Image(tmp_path)
    img.directory("/lib/modules/4.14.90")
    img.file("/lib/modules/4.14.90/kernel/nf_nat.ko", b"vermagic=4.14.90 SMP mod_unload ARMv7 ")

    components = detect_components(img.tree())

    assert components == [
        Component(
            "linux",
            "4.14.90",
            "/lib/modules/4.14.90",
            "module directory /lib/modules/4.14.90",
            None,
            "pkg:generic/linux@4.14.90",
            "cpe:2.3:o:linux:linux_kernel:4.14.90:*:*:*:*:*:*:*",
        )
    ]


def test_uclibc_ng_is_its_own_product(tmp_path: Path) -> None:
    img = Image(tmp_path)
    img.file("/lib/libuClibc-1.0.30.so")

    [component] = detect_components(img.tree())

    assert (component.name, component.version, component.cpe) == (
        "uclibc-ng",
        "1.0.30",
        "cpe:2.3:a:uclibc-ng_project:uclibc-ng:1.0.30:*:*:*:*:*:*:*",
    )


def test_unreadable_and_empty_files_are_skipped(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    entries = (
        FileEntry("/usr/lib/libcrypto.so.3", EntryKind.FILE, 0o644, data=empty),
        FileEntry("/bin/busybox", EntryKind.FILE, 0o755, data=tmp_path / "missing"),
        FileEntry("/bin/sh", EntryKind.SYMLINK, 0o777, link_target="sh"),  # a loop
    )

    components = detect_components(ExtractedTree("0" * 64, 0, entries, ()))

    assert [(c.name, c.version) for c in components] == [("openssl", "3")]  # the SONAME alone


# -- round trips -----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99)),
    st.sampled_from(["", "a", "k", "za"]),
    st.binary(max_size=256),
)
def test_planted_openssl_versions_round_trip(
    numbers: tuple[int, int, int], letter: str, noise: bytes
) -> None:
    version = ".".join(map(str, numbers)) + letter
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp) / "libcrypto"
        disk.write_bytes(noise + f"\x00OpenSSL {version}  26 Jan 2017\x00".encode() + noise)
        tree = ExtractedTree(
            "0" * 64, 0, (FileEntry("/lib/libcrypto.so", EntryKind.FILE, 0o644, data=disk),), ()
        )

        found = {(c.name, c.version) for c in detect_components(tree)}

    assert ("openssl", version) in found


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_in_every_candidate_never_raise(data: bytes) -> None:
    names = [
        "busybox",
        "libcrypto.so.1.1",
        "libc.so.6",
        "ld-musl-arm.so.1",
        "xtables-multi",
        "vmlinux",
        "smbd",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp) / "blob"
        disk.write_bytes(b"\x7fELF" + data)
        entries = tuple(FileEntry(f"/x/{name}", EntryKind.FILE, 0o755, data=disk) for name in names)

        components = detect_components(ExtractedTree("0" * 64, 0, entries, ()))

    assert all(c.version and c.path.startswith("/x/") for c in components)


# -- this machine's own libraries ------------------------------------------------------------------


def _copy_into(img: Image, image_path: str, source: Path) -> None:
    disk = img.root / image_path.strip("/").replace("/", "__")
    shutil.copyfile(source.resolve(), disk)
    img.entries.append(FileEntry(image_path, EntryKind.FILE, 0o755, size=disk.stat().st_size, data=disk))


def _first_existing(*candidates: str) -> Path | None:
    return next((Path(c) for c in candidates if Path(c).exists()), None)


def test_real_glibc_openssl_and_openssh_match_their_own_version_output(tmp_path: Path) -> None:
    libc = _first_existing(
        "/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6", "/lib64/libc.so.6"
    )
    libcrypto = _first_existing(
        "/usr/lib/x86_64-linux-gnu/libcrypto.so.3", "/usr/lib/aarch64-linux-gnu/libcrypto.so.3"
    )
    if libc is None or shutil.which("ldd") is None:
        pytest.skip("no glibc here")
    img = Image(tmp_path)
    _copy_into(img, "/lib/libc.so.6", libc)
    for name in ("ls", "cat", "ssh"):
        if (binary := shutil.which(name)) is not None:
            _copy_into(img, f"/usr/bin/{name}", Path(binary))
    if libcrypto is not None:
        _copy_into(img, "/usr/lib/libcrypto.so.3", libcrypto)

    found = {c.name: c.version for c in detect_components(img.tree())}

    ldd = subprocess.run(["ldd", "--version"], capture_output=True, text=True, check=True).stdout
    assert found["glibc"] == ldd.splitlines()[0].split()[-1]
    if libcrypto is not None and shutil.which("openssl") is not None:
        openssl = subprocess.run(["openssl", "version"], capture_output=True, text=True, check=True).stdout
        assert found["openssl"] == openssl.split()[1]
    if shutil.which("ssh") is not None:
        ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=True).stderr
        match = re.match(r"OpenSSH_(\S+?),? ", ssh)
        assert match is not None
        assert found["openssh"] == match.group(1)
    assert set(found) <= {"glibc", "openssl", "openssh"}
