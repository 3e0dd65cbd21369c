"""Which software an image contains, with exact versions and the evidence each version came from.

Theory of operation
    A declarative table (:data:`_SIGNATURES`) says, per component, which files are *candidates*
    (file-name patterns: ``libcrypto*`` for OpenSSL) and which byte patterns give its version. Each
    pattern starts with a literal *anchor* found with ``bytes.find`` (memchr speed), and a regex
    matched only at the anchor checks the context and captures the version. Candidate files get all
    of their components' signatures; every other ELF file gets only the ``everywhere`` ones (BusyBox,
    OpenSSL, Dropbear, OpenSSH, libcurl, the kernel banner), which find statically linked or renamed
    copies. Other files are not read past their first four bytes. Files are mapped, not read, and
    only the first :data:`_SCAN_LIMIT` bytes of a file are searched.

    Paths are evidence too: ``/lib/modules/4.14.90/``, ``libuClibc-0.9.33.2.so``,
    ``/usr/lib/pppd/2.4.7/``, a ``libssl.so.1.0.0`` library name (the SONAME, an ABI version), and
    OpenWrt's opkg package database.

Avoiding wrong versions
    Every pattern needs the component's own words around the version: ``OpenSSL 1.0.2k  26 Jan
    2017`` needs the release date, so neither an ``OpenSSL %s`` template nor a stray mention gives
    a version; ``OpenSSH_7.4*`` (a compatibility pattern inside every OpenSSH binary) is refused;
    BusyBox's applet list never matches ``BusyBox v<digits>``. A "lone version" (musl, net-snmp,
    iptables keep only a bare ``1.2.3`` string) is believed only in a candidate file, and only when
    exactly one distinct version-shaped string is there.

Strength and deduplication
    Each piece of evidence has a strength: a release string (3) beats a path, vermagic or lone
    version (2), which beats an ABI version (SONAME, highest ``GLIBC_x.y``) (1). For each component
    only the strongest kind found anywhere in the image is kept (a ``GLIBC_2.28`` must not add a
    second glibc next to the release banner), and each (name, version) is reported once, with its
    strongest evidence (ties: the first path in sort order).

Identifiers are a ``pkg:generic`` purl and a CPE 2.3 name with the vendor and product NVD uses.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import mmap
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from fleetguard.firmware.model import Component, EntryKind, ExtractedTree, FileEntry

__all__ = ["detect_components"]

_SCAN_LIMIT = 64 * 1024 * 1024  # bytes searched per file: kernels and libcrypto are well under
_MAX_HITS = 256  # anchor occurrences examined per file and signature (a string table repeats)
_MAX_LINK_HOPS = 8
_MAX_PACKAGE_DB = 4 * 1024 * 1024
_ELF_MAGIC = b"\x7fELF"


class _Strength(enum.IntEnum):
    """How much a piece of evidence pins the exact version."""

    ABI = 1  # a SONAME or the highest symbol version: a series, not a release
    CONTEXT = 2  # a path, vermagic, a package database, a lone version string
    RELEASE = 3  # the component's own release banner


@dataclass(frozen=True, slots=True)
class _Signature:
    """A byte pattern that gives ``name``'s version (group 1), searched in candidate files."""

    name: str
    anchors: tuple[bytes, ...]
    pattern: re.Pattern[bytes]
    files: tuple[str, ...]  # fnmatch patterns on the lower-case file name
    strength: _Strength = _Strength.RELEASE
    everywhere: bool = False  # also searched in every ELF file
    linked_as: bytes = b""  # the shared library that, when linked, holds the component instead


@dataclass(frozen=True, slots=True)
class _LoneVersion:
    """A bare NUL-delimited version string, believed only when it is the one such string in the file."""

    name: str
    pattern: re.Pattern[bytes]
    files: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _PathRule:
    """A version in a path inside the image (a directory or file name)."""

    name: str
    pattern: re.Pattern[str]
    strength: _Strength
    what: str


@dataclass(frozen=True, slots=True)
class _Product:
    """How a component is named in a CPE 2.3 (NVD's vendor and product)."""

    part: str  # "a" application, "o" operating system
    vendor: str
    product: str


@dataclass(frozen=True, slots=True)
class _Hit:
    name: str
    version: str
    path: str
    evidence: str
    offset: int | None
    strength: _Strength
    incidental: bool = False  # in a file not named as the component's (a static copy, a header text)


def _sig(
    name: str,
    anchors: bytes | tuple[bytes, ...],
    pattern: bytes,
    files: tuple[str, ...],
    *,
    strength: _Strength = _Strength.RELEASE,
    everywhere: bool = False,
    linked_as: bytes = b"",
) -> _Signature:
    anchors = anchors if isinstance(anchors, tuple) else (anchors,)
    return _Signature(name, anchors, re.compile(pattern), files, strength, everywhere, linked_as)


_V3 = rb"(\d+\.\d+\.\d+)"
_END = rb"(?!\w|\.\d)"  # the version ends here: not "2.9x", not "1.4.45.1" read as "1.4.45"
_KERNEL_FILES = ("*vmlinu*", "*zimage*", "*uimage*", "*bzimage*", "image", "*kernel*")
_DROPBEAR_FILES = ("dropbear*", "dbclient", "ssh", "sshd", "scp")

_SIGNATURES: tuple[_Signature, ...] = (
    _sig(
        "busybox",
        b"BusyBox v",
        rb"BusyBox v" + _V3 + rb"(?:\.git|-[\w.]+)?(?=[\s\x00(])",
        ("busybox*",),
        everywhere=True,
    ),
    _sig(
        "openssl",
        b"OpenSSL ",
        # crypto/opensslv.h OPENSSL_VERSION_TEXT: "OpenSSL 1.0.2k  26 Jan 2017" (the date is required)
        rb"OpenSSL (\d+\.\d+\.\d+[a-z]{0,2})(?:-fips|-dev|-beta\d|-alpha\d|-pre\d+)?"
        rb" {1,2}\d{1,2} [A-Z][a-z]{2} \d{4}",
        ("libcrypto*", "libssl*", "openssl"),
        everywhere=True,
        linked_as=b"libcrypto.so",
    ),
    _sig(
        "dropbear",
        b"dropbear_",
        rb"dropbear_(\d{1,4}\.\d{1,3}(?:\.\d+)?)(?![\w.*])",
        _DROPBEAR_FILES,
        everywhere=True,
    ),
    _sig(
        "dropbear",
        b"Dropbear ",
        rb"Dropbear [\w -]{0,24}?v(\d{1,4}\.\d{1,3}(?:\.\d+)?)" + _END,
        _DROPBEAR_FILES,
    ),
    _sig(
        "openssh",
        b"OpenSSH_",
        # not "OpenSSH_7.4*" nor a ",OpenSSH_3.1*" list: compat.c's patterns for old peers
        rb"(?<![,*\w])OpenSSH_(\d+\.\d+(?:\.\d+)?(?:p\d+)?)(?=[\s\x00])",
        ("ssh", "sshd", "scp", "sftp", "sftp-server", "ssh-*"),
        everywhere=True,
    ),
    _sig("dnsmasq", b"dnsmasq-", rb"(?<![\w/-])dnsmasq-(\d+\.\d+(?:\.\d+)?)" + _END, ("dnsmasq",)),
    _sig("lighttpd", b"lighttpd/", rb"lighttpd/" + _V3 + _END, ("lighttpd*",)),
    _sig("uhttpd", (b"uhttpd/", b"uHTTPd/"), rb"(?i:uhttpd)/(\d+\.\d+(?:\.\d+)?)" + _END, ("uhttpd",)),
    _sig(
        "miniupnpd",
        (b"miniupnpd/", b"MiniUPnPd/"),
        rb"(?i:miniupnpd)/(\d+\.\d+(?:\.\d+)?)" + _END,
        ("miniupnpd",),
    ),
    _sig(
        "samba",
        b"Samba ",
        rb"Samba (\d+\.\d+\.\d+[a-z]?)" + _END,
        ("smbd", "nmbd", "samba*", "libsamba*", "libsmbconf*", "smbclient", "smbpasswd"),
    ),
    _sig("hostapd", b"hostapd v", rb"hostapd v(\d+\.\d+(?:\.\d+)?)" + _END, ("hostapd*", "wpad*")),
    _sig(
        "wpa_supplicant",
        b"wpa_supplicant v",
        rb"wpa_supplicant v(\d+\.\d+(?:\.\d+)?)" + _END,
        ("wpa_supplicant*", "wpad*", "wpa_cli"),
    ),
    _sig(
        "curl",
        b"libcurl/",
        rb"libcurl/" + _V3 + _END,
        ("curl", "libcurl*"),
        everywhere=True,
        linked_as=b"libcurl.so",
    ),
    _sig("curl", b"curl ", rb"(?<![\w/-])curl " + _V3 + rb"(?:-DEV)? \(", ("curl",)),
    _sig(
        "uclibc",
        b"uClibc",
        rb"uClibc(?:-ng)? (\d+\.\d+\.\d+(?:\.\d+)?)" + _END,
        ("libuclibc*", "ld-uclibc*", "libc.so*"),
    ),
    _sig(
        "glibc",
        b"GNU C Library",
        rb"GNU C Library \([^)\x00\n]{0,80}\) (?:stable )?release version (\d+\.\d+(?:\.\d+)?)" + _END,
        ("libc.so.6", "libc-*.so", "libc.so"),
    ),
    _sig(
        "linux",
        b"Linux version ",
        rb"Linux version (\d+\.\d+(?:\.\d+)?)[\w.+~-]* \(",  # init/version.c linux_banner
        _KERNEL_FILES,
        everywhere=True,
    ),
    _sig(
        "linux",
        b"vermagic=",
        rb"vermagic=(\d+\.\d+(?:\.\d+)?)[\w.+~-]* ",
        ("*.ko",),
        strength=_Strength.CONTEXT,
    ),
    _sig(
        "u-boot",
        b"U-Boot ",
        rb"U-Boot (?:SPL )?(\d{4}\.\d{2}(?:\.\d+)?|\d\.\d\.\d)(?:-rc\d+)?(?:-[\w.+-]*)? \(",
        ("*u-boot*", "*uboot*", "*boot*", "mtd*", "fw_printenv", "fw_setenv"),
    ),
    _sig(
        "net-snmp",
        b"NET-SNMP version",
        rb"NET-SNMP version:? +(\d+\.\d+(?:\.\d+){0,2})" + _END,
        ("snmp*", "libnetsnmp*"),
    ),
    _sig("pppd", b"pppd version ", rb"pppd version " + _V3 + _END, ("pppd",)),
    _sig("pppd", b"/pppd/", rb"/pppd/" + _V3 + _END, ("pppd",), strength=_Strength.CONTEXT),
    _sig(
        "iptables",
        b"iptables",
        rb"(?<![\w-])iptables(?:-multi|-legacy|-nft)? v" + _V3 + _END,
        ("iptables*", "ip6tables*", "xtables*", "libxtables*"),
    ),
)

_LONE_VERSIONS: tuple[_LoneVersion, ...] = (
    # musl's src/internal/version.c: __libc_version, a bare "1.2.3" beside "musl libc (%s)"
    _LoneVersion(
        "musl", re.compile(rb"(?<=\x00)(1\.\d\.\d{1,2})(?=\x00)"), ("ld-musl-*.so.1", "libc.musl-*.so.1")
    ),
    # net-snmp's snmplib/snmp_version.c NetSnmpVersionInfo
    _LoneVersion(
        "net-snmp", re.compile(rb"(?<=\x00)(5\.\d{1,2}(?:\.\d{1,2}){0,2})(?=\x00)"), ("libnetsnmp.so*",)
    ),
    # iptables' PACKAGE_VERSION in the xtables multi-binary
    _LoneVersion(
        "iptables",
        re.compile(rb"(?<=\x00)(1\.\d\.\d{1,2})(?=\x00)"),
        ("xtables-multi", "xtables-legacy-multi", "xtables-nft-multi", "iptables"),
    ),
    # Samba 3's SAMBA_VERSION_STRING from version.h, returned by samba_version_string()
    _LoneVersion("samba", re.compile(rb"(?<=\x00)([34]\.\d{1,2}\.\d{1,2}[a-z]?)(?=\x00)"), ("smbd", "nmbd")),
)

# The highest GLIBC_x.y symbol version libc itself defines: the release, or an earlier one when a
# release added no symbols. Weaker than the banner.
_GLIBC_SYMBOL_VERSION = re.compile(rb"(?<=\x00)GLIBC_(2\.\d{1,2})(?=\x00)")
_GLIBC_FILES = ("libc.so.6", "libc-*.so")

_PATH_RULES: tuple[_PathRule, ...] = (
    _PathRule(
        "linux",
        re.compile(r"^/lib/modules/(\d+\.\d+(?:\.\d+)?)[^/]*(?:/|$)"),
        _Strength.CONTEXT,
        "module directory",
    ),
    _PathRule(
        "uclibc",
        re.compile(r"/(?:lib|ld-)uClibc-(\d+\.\d+\.\d+(?:\.\d+)?)\.so$"),
        _Strength.CONTEXT,
        "library name",
    ),
    _PathRule(
        "glibc", re.compile(r"/(?:libc|ld)-(2\.\d{1,2}(?:\.\d+)?)\.so$"), _Strength.CONTEXT, "library name"
    ),
    _PathRule("pppd", re.compile(r"/lib/pppd/(\d+\.\d+\.\d+)/"), _Strength.CONTEXT, "plugin directory"),
    _PathRule("openssl", re.compile(r"/lib(?:ssl|crypto)\.so\.(\d+(?:\.\d+)*)$"), _Strength.ABI, "SONAME"),
)

# opkg (OpenWrt) package -> component, for packages whose version is the upstream one plus "-<release>".
_PACKAGES = {"uhttpd": "uhttpd", "dropbear": "dropbear", "dnsmasq": "dnsmasq", "busybox": "busybox"}
_PACKAGE_DB = re.compile(r"^/usr/lib/opkg/(?:status|info/[\w.+-]+\.control)$")
_PACKAGE_FIELD = re.compile(r"^(Package|Version): *(\S+)", re.MULTILINE)
_PACKAGE_RELEASE = re.compile(r"-\d+(?:\.\d+)*$")

_PRODUCTS: dict[str, _Product] = {
    "busybox": _Product("a", "busybox", "busybox"),
    "openssl": _Product("a", "openssl", "openssl"),
    "dropbear": _Product("a", "dropbear_ssh_project", "dropbear_ssh"),
    "openssh": _Product("a", "openbsd", "openssh"),
    "dnsmasq": _Product("a", "thekelleys", "dnsmasq"),
    "lighttpd": _Product("a", "lighttpd", "lighttpd"),
    "miniupnpd": _Product("a", "miniupnp_project", "miniupnpd"),
    "samba": _Product("a", "samba", "samba"),
    "hostapd": _Product("a", "w1.fi", "hostapd"),
    "wpa_supplicant": _Product("a", "w1.fi", "wpa_supplicant"),
    "curl": _Product("a", "haxx", "curl"),
    "uclibc": _Product("a", "uclibc", "uclibc"),
    "uclibc-ng": _Product("a", "uclibc-ng_project", "uclibc-ng"),
    "musl": _Product("a", "musl-libc", "musl"),
    "glibc": _Product("a", "gnu", "glibc"),
    "linux": _Product("o", "linux", "linux_kernel"),
    "u-boot": _Product("a", "denx", "u-boot"),
    "net-snmp": _Product("a", "net-snmp", "net-snmp"),
    "pppd": _Product("a", "point-to-point_protocol_project", "point-to-point_protocol"),
    "iptables": _Product("a", "netfilter", "iptables"),
    # uhttpd: NVD has no product entry of its own (its CVEs are filed against openwrt:openwrt)
}


def detect_components(tree: ExtractedTree) -> list[Component]:
    """Return the components found in ``tree``, one per (name, version), sorted by name and version.

    Never raises for file content; unreadable files are skipped.
    """
    hits = list(_path_hits(tree.entries))
    for image_path, disk_path in _files_with_links(tree):
        hits.extend(_file_hits(image_path, disk_path))
    return [_component(hit) for hit in _strongest(hits)]


# -- which files -----------------------------------------------------------------------------------


def _candidates(basename: str) -> tuple[tuple[_Signature, ...], tuple[_LoneVersion, ...], bool]:
    """The signatures and lone versions whose file patterns name ``basename``, and whether glibc's is."""
    lower = basename.lower()
    sigs = tuple(s for s in _SIGNATURES if _named(lower, s.files))
    lones = tuple(lv for lv in _LONE_VERSIONS if _named(lower, lv.files))
    return sigs, lones, _named(lower, _GLIBC_FILES)


def _is_candidate(basename: str) -> bool:
    sigs, lones, glibc = _candidates(basename)
    return bool(sigs or lones or glibc)


def _named(lower: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(lower, pattern) for pattern in patterns)


def _files_with_links(tree: ExtractedTree) -> Iterator[tuple[str, Path]]:
    """Every regular file, and each symlink (as itself) whose target is a file on disk.

    A link matters when only its name says what the target is: ``ld-musl-armhf.so.1 -> libc.so``.
    """
    yield from ((entry.path, entry.data) for entry in tree.files() if entry.data is not None)
    for entry in tree.entries:
        if entry.kind is EntryKind.SYMLINK:
            target = _follow(tree, entry)
            if (
                target is not None
                and target.data is not None
                and _is_candidate(posixpath.basename(entry.path))
            ):
                yield entry.path, target.data


def _follow(tree: ExtractedTree, entry: FileEntry) -> FileEntry | None:
    current: FileEntry | None = entry
    for _ in range(_MAX_LINK_HOPS):
        if current is None or current.kind is not EntryKind.SYMLINK or current.link_target is None:
            return current
        target = posixpath.join(posixpath.dirname(current.path), current.link_target)
        current = tree.get(posixpath.normpath(target))
    return None


# -- evidence in bytes -----------------------------------------------------------------------------


def _file_hits(image_path: str, path: Path) -> list[_Hit]:
    sigs, lones, glibc = _candidates(posixpath.basename(image_path))
    try:
        with path.open("rb") as handle:
            is_elf = handle.read(4) == _ELF_MAGIC
            if not (sigs or lones or glibc or is_elf) or handle.seek(0, 2) == 0:
                return []
            named = {s.name for s in sigs}
            if is_elf:
                sigs = sigs + tuple(s for s in _SIGNATURES if s.everywhere and s.name not in named)
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                hits = list(_signature_hits(data, image_path, sigs, own=named))
                hits.extend(_lone_hits(data, image_path, lones))
                if glibc:
                    hits.extend(_glibc_symbol_hits(data, image_path))
                return _drop_truncated(hits)
    except (OSError, ValueError):
        return []


def _signature_hits(
    data: mmap.mmap, image_path: str, sigs: Iterable[_Signature], *, own: set[str]
) -> Iterator[_Hit]:
    """Hits of ``sigs``; ``own`` names the components whose candidate file this is.

    Elsewhere, a signature whose library the file links to (``libcrypto.so`` among its strings,
    as DT_NEEDED) is skipped: its banner there is the header text the program was compiled
    against, not a statically linked copy.
    """
    end = min(len(data), _SCAN_LIMIT)
    for sig in sigs:
        incidental = sig.name not in own
        if incidental and sig.linked_as and data.find(sig.linked_as, 0, end) >= 0:
            continue
        for anchor in sig.anchors:
            for offset in _occurrences(data, anchor, end):
                match = sig.pattern.match(data, offset, min(offset + 256, end))
                if match is not None:
                    evidence = f"{_printable(match.group(0))!r} at {offset:#x}"
                    version = match.group(1).decode()
                    yield _Hit(sig.name, version, image_path, evidence, offset, sig.strength, incidental)


def _occurrences(data: mmap.mmap, anchor: bytes, end: int) -> Iterator[int]:
    offset = data.find(anchor, 0, end)
    for _ in range(_MAX_HITS):
        if offset < 0:
            return
        yield offset
        offset = data.find(anchor, offset + 1, end)


def _lone_hits(data: mmap.mmap, image_path: str, lones: Iterable[_LoneVersion]) -> Iterator[_Hit]:
    end = min(len(data), _SCAN_LIMIT)
    for lone in lones:
        found: dict[bytes, int] = {}
        for match in lone.pattern.finditer(data, 0, end):
            found.setdefault(match.group(1), match.start())
            if len(found) > 1:
                break
        if len(found) == 1:
            ((version, offset),) = found.items()
            evidence = f"lone version string {version.decode()!r} at {offset:#x}"
            yield _Hit(lone.name, version.decode(), image_path, evidence, offset, _Strength.CONTEXT)


def _glibc_symbol_hits(data: mmap.mmap, image_path: str) -> Iterator[_Hit]:
    best: tuple[tuple[int, ...], str, int] | None = None
    for match in _GLIBC_SYMBOL_VERSION.finditer(data, 0, min(len(data), _SCAN_LIMIT)):
        text = match.group(1).decode()
        key = tuple(int(part) for part in text.split("."))
        if best is None or key > best[0]:
            best = (key, text, match.start())
    if best is not None:
        _, version, offset = best
        evidence = f"highest symbol version 'GLIBC_{version}' at {offset:#x}"
        yield _Hit("glibc", version, image_path, evidence, offset, _Strength.ABI)


def _drop_truncated(hits: list[_Hit]) -> list[_Hit]:
    """Drop "9.2" where the same file also says "9.2p1": OpenSSH keeps SSH_VERSION beside SSH_RELEASE."""
    versions = {(h.name, h.version) for h in hits}
    return [h for h in hits if not any(_extends(v, h.version) for n, v in versions if n == h.name)]


def _extends(longer: str, prefix: str) -> bool:
    return len(longer) > len(prefix) and longer.startswith(prefix) and longer[len(prefix)].isalpha()


def _printable(raw: bytes) -> str:
    return raw[:120].decode("ascii", "replace")


# -- evidence in paths -----------------------------------------------------------------------------


def _path_hits(entries: Iterable[FileEntry]) -> Iterator[_Hit]:
    for entry in entries:
        for rule in _PATH_RULES:
            match = rule.pattern.search(entry.path)
            if match is not None:
                evidence = f"{rule.what} {entry.path}"
                yield _Hit(rule.name, match.group(1), entry.path, evidence, None, rule.strength)
        if entry.data is not None and _PACKAGE_DB.match(entry.path):
            yield from _package_hits(entry.path, entry.data)


def _package_hits(image_path: str, path: Path) -> Iterator[_Hit]:
    try:
        with path.open("rb") as handle:
            text = handle.read(_MAX_PACKAGE_DB).decode("utf-8", "replace")
    except OSError:
        return
    package, start = "", 0
    for match in _PACKAGE_FIELD.finditer(text):
        field, value = match.group(1), match.group(2)
        if field == "Package":
            package, start = value, match.start()
        elif package in _PACKAGES:
            upstream = _PACKAGE_RELEASE.sub("", value)
            evidence = f"opkg package {package} {value}"
            yield _Hit(_PACKAGES[package], upstream, image_path, evidence, start, _Strength.CONTEXT)
            package = ""


# -- deduplication and identifiers -----------------------------------------------------------------


def _canonical(hit: _Hit) -> _Hit:
    """uClibc-ng continued uClibc's code from 1.0.0 on, as another project (and another CPE)."""
    if hit.name == "uclibc" and not hit.version.startswith("0."):
        return dataclasses.replace(hit, name="uclibc-ng")
    return hit


def _strongest(hits: Iterable[_Hit]) -> list[_Hit]:
    canonical = [_canonical(hit) for hit in hits]
    strongest: dict[str, _Strength] = {}
    for hit in canonical:
        strongest[hit.name] = max(strongest.get(hit.name, hit.strength), hit.strength)
    best: dict[tuple[str, str], _Hit] = {}
    for hit in sorted(canonical, key=lambda h: (h.incidental, h.path, h.offset or 0)):
        key = (hit.name, hit.version)
        if hit.strength == strongest[hit.name] and key not in best:
            best[key] = hit
    return [best[key] for key in sorted(best)]


def _component(hit: _Hit) -> Component:
    return Component(
        name=hit.name,
        version=hit.version,
        path=hit.path,
        evidence=hit.evidence,
        offset=hit.offset,
        purl=_purl(hit.name, hit.version) if hit.strength > _Strength.ABI else None,
        cpe=_cpe(hit.name, hit.version) if hit.strength > _Strength.ABI else None,
    )


def _purl(name: str, version: str) -> str:
    """A ``pkg:generic`` package URL (purl-spec: the version is percent-encoded)."""
    return f"pkg:generic/{name}@{quote(version, safe='.-_~')}"


_OPENSSH_PORTABLE = re.compile(r"^(\d+\.\d+(?:\.\d+)?)(p\d+)$")
_CPE_SPECIAL = re.compile(r"([^A-Za-z0-9._-])")


def _cpe(name: str, version: str) -> str | None:
    """The CPE 2.3 formatted string (NISTIR 7695 section 6.2), or None for an unknown product.

    OpenSSH's portable suffix is the update field in NVD (``openssh:7.4:p1``). An ABI version is no
    release, so it gets no CPE.
    """
    product = _PRODUCTS.get(name)
    if product is None:
        return None
    update = "*"
    portable = _OPENSSH_PORTABLE.match(version) if name == "openssh" else None
    if portable is not None:
        version, update = portable.group(1), portable.group(2)
    escaped = _CPE_SPECIAL.sub(r"\\\1", version)
    return f"cpe:2.3:{product.part}:{product.vendor}:{product.product}:{escaped}:{update}:*:*:*:*:*:*"
