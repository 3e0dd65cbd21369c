"""An offline vulnerability database for embedded components, in the OSV format.

Theory of operation
-------------------
Records are OSV 1.6 documents (https://ossf.github.io/osv-schema/). The ones fleetguard ships live in
``fleetguard/firmware/data/osv/*.json`` (ecosystem ``fleetguard-embedded``); an operator adds more by
importing OSV files or NVD CVE API 2.0 exports (:meth:`VulnDb.import_file`) and keeps them under the
service's data directory (:meth:`VulnDb.save`, :meth:`VulnDb.load`). When two records have the same
id, the one with the newer ``modified`` wins; on a tie the one already held stays. Nothing here
touches the network.

Matching (:meth:`VulnDb.match`) is by a canonical package name (:func:`canonical_package` maps
``libssl`` to ``openssl``, ``linux-kernel`` to ``linux``, ...) and the component's exact version,
ordered by :mod:`fleetguard.firmware.versions`. An affected entry matches when the version is in its
explicit ``versions`` list or inside one of its ``SEMVER``/``ECOSYSTEM`` ranges, evaluated as OSV
schema section "Evaluation" says: events sorted by version, ``introduced`` inclusive, ``fixed``
exclusive, ``last_affected`` inclusive, ``introduced: "0"`` meaning "from the first version". ``GIT``
ranges are ignored (an image has no commit hashes).

Severity comes from ``database_specific.cvss_score`` when present, else from the CVSS v3 base score
computed from the ``severity`` vector (CVSS v3.1 specification section 7), mapped to the CVSS v3.1
qualitative scale (section 5). ``database_specific.cisa_kev = true`` marks a record as in CISA's
Known Exploited Vulnerabilities catalog.

The shipped records were written by hand from public advisories; uncertain ranges are drawn wide
and say so in ``database_specific.note``. Import NVD data to refresh them.
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Final

from fleetguard.firmware.errors import VulnDbInvalid
from fleetguard.firmware.model import Category, Component, Finding, Severity
from fleetguard.firmware.versions import Version, VersionInvalid, parse_version

__all__ = [
    "ECOSYSTEM",
    "MAX_IMPORT_BYTES",
    "AffectedPackage",
    "Event",
    "EventKind",
    "ImportReport",
    "VersionRange",
    "VulnDb",
    "Vulnerability",
    "canonical_package",
    "cvss3_base_score",
    "parse_nvd",
    "parse_osv",
    "parse_records",
    "severity_for_score",
    "to_osv",
]

ECOSYSTEM: Final = "fleetguard-embedded"
MAX_IMPORT_BYTES: Final = 256 * 1024 * 1024
"""The largest file :meth:`VulnDb.import_file` reads: a year of NVD CVE API 2.0 output fits."""
_MAX_RECORD_FILE_BYTES: Final = 16 * 1024 * 1024
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_HINT = "fix or re-export the file (OSV schema 1.6, or NVD CVE API 2.0 JSON)"

# Names seen in firmware (package names, library sonames, CPE products) -> the canonical name.
_ALIASES: Final[Mapping[str, str]] = {
    "libssl": "openssl",
    "libcrypto": "openssl",
    "linux-kernel": "linux",
    "linux_kernel": "linux",
    "kernel": "linux",
    "openssh-server": "openssh",
    "openssh-client": "openssh",
    "openssh-portable": "openssh",
    "sshd": "openssh",
    "dropbear-ssh": "dropbear",
    "dropbear_ssh": "dropbear",
    "dropbear_ssh_server": "dropbear",
    "wpa-supplicant": "wpa_supplicant",
    "libc6": "glibc",
    "gnu-libc": "glibc",
    "libcurl": "curl",
    # uClibc-ng continues uClibc's numbering (0.9.33.2, then 1.0.0): one version line.
    "uclibc-ng": "uclibc",
    "uclibc_ng": "uclibc",
    "musl-libc": "musl",
    "uboot": "u-boot",
    "das-u-boot": "u-boot",
    "netsnmp": "net-snmp",
    "net_snmp": "net-snmp",
    "snmpd": "net-snmp",
    "pppd": "ppp",
    "point-to-point_protocol": "ppp",
    "pupnp": "libupnp",
    "portable-upnp-sdk": "libupnp",
    "libexpat": "expat",
    "smbd": "samba",
    "httpd": "apache-httpd",
    "http_server": "apache-httpd",
    "apache": "apache-httpd",
    "apache2": "apache-httpd",
    "liblzma": "xz",
    "xz-utils": "xz",
    "ntpd": "ntp",
    "libsqlite3": "sqlite",
    "sqlite3": "sqlite",
    "libssh0": "libssh",
    "libcares": "c-ares",
    "pkexec": "polkit",
}

# NVD CPE (vendor, product) pairs this database knows, as the canonical package name.
_CPE_PRODUCTS: Final[Mapping[tuple[str, str], str]] = {
    ("openssl", "openssl"): "openssl",
    ("busybox", "busybox"): "busybox",
    ("dropbear_ssh_project", "dropbear_ssh"): "dropbear",
    ("matt_johnston", "dropbear_ssh_server"): "dropbear",
    ("openbsd", "openssh"): "openssh",
    ("thekelleys", "dnsmasq"): "dnsmasq",
    ("lighttpd", "lighttpd"): "lighttpd",
    ("miniupnp_project", "miniupnpd"): "miniupnpd",
    ("samba", "samba"): "samba",
    ("w1.fi", "hostapd"): "hostapd",
    ("w1.fi", "wpa_supplicant"): "wpa_supplicant",
    ("haxx", "curl"): "curl",
    ("haxx", "libcurl"): "curl",
    ("gnu", "glibc"): "glibc",
    ("uclibc", "uclibc"): "uclibc",
    ("uclibc-ng_project", "uclibc-ng"): "uclibc",
    ("musl-libc", "musl"): "musl",
    ("linux", "linux_kernel"): "linux",
    ("denx", "u-boot"): "u-boot",
    ("net-snmp", "net-snmp"): "net-snmp",
    ("point-to-point_protocol_project", "point-to-point_protocol"): "ppp",
    ("samba", "ppp"): "ppp",
    ("libupnp_project", "libupnp"): "libupnp",
    ("pupnp_project", "pupnp"): "libupnp",
    ("zlib", "zlib"): "zlib",
    ("gnu", "zlib"): "zlib",
    ("libexpat_project", "libexpat"): "expat",
    ("sudo_project", "sudo"): "sudo",
    ("todd_miller", "sudo"): "sudo",
    ("gnu", "bash"): "bash",
    ("nginx", "nginx"): "nginx",
    ("f5", "nginx"): "nginx",
    ("apache", "http_server"): "apache-httpd",
    ("vsftpd_project", "vsftpd"): "vsftpd",
    ("beasts", "vsftpd"): "vsftpd",
    ("libssh", "libssh"): "libssh",
    ("c-ares_project", "c-ares"): "c-ares",
    ("c-ares", "c-ares"): "c-ares",
    ("tukaani", "xz"): "xz",
    ("sqlite", "sqlite"): "sqlite",
    ("polkit_project", "polkit"): "polkit",
    ("embedthis", "goahead"): "goahead",
    ("ntp", "ntp"): "ntp",
    ("proftpd", "proftpd"): "proftpd",
    ("boa", "boa"): "boa",
}


def canonical_package(name: str) -> str:
    """Return the canonical package name for ``name`` (lower-case, aliases resolved)."""
    key = " ".join(name.strip().lower().split()).replace(" ", "-")
    if key.startswith("linux") and "kernel" in key:
        return "linux"
    return _ALIASES.get(key, key)


def severity_for_score(score: float | None) -> Severity:
    """Map a CVSS base score to a severity (CVSS v3.1 specification section 5).

    An unknown score is MEDIUM: a vulnerability without a score is not thereby a minor one.
    """
    if score is None:
        return Severity.MEDIUM
    if score == 0.0:
        return Severity.INFO
    if score < 4.0:
        return Severity.LOW
    if score < 7.0:
        return Severity.MEDIUM
    if score < 9.0:
        return Severity.HIGH
    return Severity.CRITICAL


# CVSS v3.1 specification section 7.4, table 16: metric values.
_CVSS_WEIGHTS: Final[Mapping[str, Mapping[str, float]]] = {
    "AV": {"N": 0.85, "A": 0.62, "L": 0.55, "P": 0.2},
    "AC": {"L": 0.77, "H": 0.44},
    "PR": {"N": 0.85, "L": 0.62, "H": 0.27},
    "UI": {"N": 0.85, "R": 0.62},
    "S": {"U": 0.0, "C": 0.0},
    "C": {"H": 0.56, "L": 0.22, "N": 0.0},
    "I": {"H": 0.56, "L": 0.22, "N": 0.0},
    "A": {"H": 0.56, "L": 0.22, "N": 0.0},
}
_PR_CHANGED: Final[Mapping[str, float]] = {"N": 0.85, "L": 0.68, "H": 0.5}


def cvss3_base_score(vector: str) -> float:
    """Return the CVSS v3.0/v3.1 base score of ``vector``; raise :class:`VulnDbInvalid` if malformed.

    CVSS v3.1 specification section 7.1, with Roundup from its Appendix A.
    """
    metrics = _cvss3_metrics(vector)
    changed = metrics["S"] == "C"
    w = {name: _CVSS_WEIGHTS[name][value] for name, value in metrics.items()}
    if changed:
        w["PR"] = _PR_CHANGED[metrics["PR"]]
    iss = 1 - (1 - w["C"]) * (1 - w["I"]) * (1 - w["A"])
    impact = 7.52 * (iss - 0.029) - 3.25 * (iss - 0.02) ** 15 if changed else 6.42 * iss
    exploitability = 8.22 * w["AV"] * w["AC"] * w["PR"] * w["UI"]
    if impact <= 0:
        return 0.0
    total = 1.08 * (impact + exploitability) if changed else impact + exploitability
    return _roundup(min(total, 10.0))


def _cvss3_metrics(vector: str) -> dict[str, str]:
    prefix, _, body = vector.partition("/")
    if prefix not in ("CVSS:3.0", "CVSS:3.1"):
        raise VulnDbInvalid(f"not a CVSS v3 vector: {vector[:80]!r}", hint=_HINT)
    metrics: dict[str, str] = {}
    for part in body.split("/"):
        name, _, value = part.partition(":")
        metrics[name] = value
    for name, values in _CVSS_WEIGHTS.items():
        if metrics.get(name) not in values:
            raise VulnDbInvalid(f"CVSS v3 vector lacks a valid {name}: {vector[:80]!r}", hint=_HINT)
    return {name: metrics[name] for name in _CVSS_WEIGHTS}


def _roundup(value: float) -> float:
    # CVSS v3.1 Appendix A: round up to one decimal, robust to floating point error.
    scaled = round(value * 100_000)
    if scaled % 10_000 == 0:
        return scaled / 100_000.0
    return (math.floor(scaled / 10_000) + 1) / 10.0


class EventKind(enum.StrEnum):
    """An OSV range event (OSV schema, ``affected[].ranges[].events``)."""

    INTRODUCED = "introduced"
    FIXED = "fixed"
    LAST_AFFECTED = "last_affected"


# On equal versions a range that ends sorts before one that starts (adjacent ranges).
_EVENT_ORDER: Final[Mapping[EventKind, int]] = {
    EventKind.FIXED: 0,
    EventKind.LAST_AFFECTED: 1,
    EventKind.INTRODUCED: 2,
}


@dataclass(frozen=True, slots=True)
class Event:
    """One range event; ``version`` None is OSV's ``introduced: "0"`` (before every version)."""

    kind: EventKind
    version: Version | None

    @property
    def text(self) -> str:
        """The version as written in OSV (``"0"`` for the start of time)."""
        return "0" if self.version is None else self.version.text


@dataclass(frozen=True, slots=True)
class VersionRange:
    """An OSV ``SEMVER`` or ``ECOSYSTEM`` range: its events, sorted by version."""

    events: tuple[Event, ...]

    def contains(self, version: Version) -> bool:
        """True when ``version`` is affected (OSV schema, "Evaluation")."""
        affected = False
        for event in self.events:
            if event.version is None:
                affected = event.kind is EventKind.INTRODUCED or affected
            elif event.kind is EventKind.INTRODUCED:
                affected = affected or version >= event.version
            elif event.kind is EventKind.FIXED:
                affected = affected and version < event.version
            else:
                affected = affected and version <= event.version
        return affected

    def fixed_after(self, version: Version) -> Version | None:
        """The first ``fixed`` version above ``version``, or None (no fix, or last_affected)."""
        for event in self.events:
            if event.kind is EventKind.FIXED and event.version is not None and event.version > version:
                return event.version
        return None


_FLOOR: Final = parse_version("0")


def _sorted_events(events: Iterable[Event]) -> tuple[Event, ...]:
    """Sort by version, ``introduced: "0"`` first (OSV schema, "Evaluation")."""
    return tuple(
        sorted(events, key=lambda e: (e.version is not None, e.version or _FLOOR, _EVENT_ORDER[e.kind]))
    )


@dataclass(frozen=True, slots=True)
class AffectedPackage:
    """The versions of one package a vulnerability affects."""

    name: str  # canonical (see canonical_package)
    ranges: tuple[VersionRange, ...] = ()
    versions: tuple[Version, ...] = ()
    ecosystem: str = ECOSYSTEM

    def affects(self, version: Version) -> bool:
        """True when ``version`` is listed or inside one of the ranges."""
        return version in self.versions or any(r.contains(version) for r in self.ranges)

    def fixed_after(self, version: Version) -> Version | None:
        """The version that fixes ``version``, when a range says so."""
        fixes = [f for r in self.ranges if r.contains(version) and (f := r.fixed_after(version))]
        return min(fixes) if fixes else None


@dataclass(frozen=True, slots=True)
class Vulnerability:
    """One OSV record, reduced to what matching and reports use."""

    id: str
    modified: datetime
    affected: tuple[AffectedPackage, ...]
    aliases: tuple[str, ...] = ()
    summary: str = ""
    published: datetime | None = None
    cvss_score: float | None = None
    cvss_vector: str | None = None
    known_exploited: bool = False
    note: str = ""

    @property
    def severity(self) -> Severity:
        """The severity of the CVSS base score."""
        return severity_for_score(self.cvss_score)


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What :meth:`VulnDb.import_file` did: records read, added, updated, kept, skipped."""

    path: str
    format: str  # "osv" or "nvd"
    records: int  # records read (NVD entries converted)
    added: int
    updated: int
    unchanged: int  # same id, not newer than the record already held
    skipped: int = 0  # NVD entries with no CPE of a known embedded product
    skipped_ids: tuple[str, ...] = field(default=(), repr=False)


class VulnDb:
    """Vulnerability records by id, with a package index for matching."""

    def __init__(self, records: Iterable[Vulnerability] = ()) -> None:
        self._records: dict[str, Vulnerability] = {}
        self._by_package: dict[str, set[str]] = {}
        self.merge(records)

    @classmethod
    def load_default(cls) -> VulnDb:
        """Return the records shipped with fleetguard; raise :class:`VulnDbInvalid` if one is bad."""
        folder = resources.files("fleetguard.firmware").joinpath("data", "osv")
        records: list[Vulnerability] = []
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".json"):
                records.extend(parse_records(entry.read_bytes(), where=f"shipped {entry.name}"))
        return cls(records)

    @classmethod
    def load(cls, directory: Path) -> VulnDb:
        """Return the shipped records merged with those saved in ``directory`` (newer wins).

        A missing directory holds no records. Raises :class:`VulnDbInvalid` for a malformed file.
        """
        db = cls.load_default()
        if directory.is_dir():
            for path in sorted(directory.glob("*.json")):
                db.merge(parse_records(_read_bounded(path, _MAX_RECORD_FILE_BYTES), where=str(path)))
        return db

    def save(self, directory: Path) -> int:
        """Write every record that differs from the shipped one to ``directory``, one OSV file each.

        Files are replaced atomically. Returns the number of files written.
        """
        shipped = VulnDb.load_default()._records
        directory.mkdir(parents=True, exist_ok=True)
        written = 0
        for record in self:
            if shipped.get(record.id) != record:
                _write_atomic(directory / f"{record.id.replace(':', '_')}.json", to_osv(record))
                written += 1
        return written

    def merge(self, records: Iterable[Vulnerability]) -> tuple[int, int, int]:
        """Add ``records``; a record replaces one with its id only when its ``modified`` is newer.

        Returns (added, updated, unchanged).
        """
        added = updated = unchanged = 0
        for record in records:
            held = self._records.get(record.id)
            if held is not None and record.modified <= held.modified:
                unchanged += 1
                continue
            added, updated = (added + 1, updated) if held is None else (added, updated + 1)
            self._records[record.id] = record
            for package in record.affected:
                self._by_package.setdefault(package.name, set()).add(record.id)
        return added, updated, unchanged

    def import_file(self, path: Path) -> ImportReport:
        """Read an OSV (record or list) or NVD CVE API 2.0 JSON file and merge its records.

        Raises :class:`VulnDbInvalid` (the message starts with where) for malformed input, and for a
        file over :data:`MAX_IMPORT_BYTES`. The database is unchanged when it raises.
        """
        document = _load_json(_read_bounded(path, MAX_IMPORT_BYTES), str(path))
        skipped: list[str] = []
        if isinstance(document, dict) and "vulnerabilities" in document:
            records, skipped = parse_nvd(document, where=str(path))
            fmt = "nvd"
        else:
            records, fmt = _parse_osv_document(document, str(path)), "osv"
        added, updated, unchanged = self.merge(records)
        return ImportReport(
            str(path), fmt, len(records), added, updated, unchanged, len(skipped), tuple(skipped)
        )

    def get(self, vuln_id: str) -> Vulnerability | None:
        """The record with id ``vuln_id``, or None."""
        return self._records.get(vuln_id)

    def packages(self) -> frozenset[str]:
        """The canonical names of every package some record affects."""
        return frozenset(name for name, ids in self._by_package.items() if ids)

    def __iter__(self) -> Iterator[Vulnerability]:
        return iter(sorted(self._records.values(), key=lambda r: r.id))

    def __len__(self) -> int:
        return len(self._records)

    def match(self, components: Sequence[Component]) -> list[Finding]:
        """Return one VULNERABILITY finding per (component, affecting record).

        Components whose version does not parse are not matched. Findings come in component order,
        then by severity (worst first), then by id.
        """
        findings: list[Finding] = []
        for index, component in enumerate(components):
            try:
                version = parse_version(component.version)
            except VersionInvalid:
                continue
            found = [
                _finding(index, component, version, record, fixed)
                for record, fixed in self._affecting(canonical_package(component.name), version)
            ]
            findings.extend(sorted(found, key=lambda f: (-f.severity.rank, f.rule)))
        return findings

    def _affecting(self, package: str, version: Version) -> Iterator[tuple[Vulnerability, Version | None]]:
        for vuln_id in sorted(self._by_package.get(package, ())):
            record = self._records[vuln_id]
            hits = [a for a in record.affected if a.name == package and a.affects(version)]
            if hits:
                fixes = [f for a in hits if (f := a.fixed_after(version)) is not None]
                yield record, (min(fixes) if fixes else None)


def _finding(
    index: int, component: Component, version: Version, record: Vulnerability, fixed: Version | None
) -> Finding:
    score = "unknown" if record.cvss_score is None else f"{record.cvss_score:.1f}"
    title = f"{component.name} {component.version}: {record.id}"
    return Finding(
        rule=record.id,
        category=Category.VULNERABILITY,
        severity=record.severity,
        title=f"{title} {record.summary}".strip() if record.summary else title,
        path=component.path,
        evidence=component.evidence,
        offset=component.offset,
        details=(
            ("id", record.id),
            ("aliases", ",".join(record.aliases)),
            ("component", component.name),
            ("component_index", str(index)),
            ("version", str(version)),
            ("fixed", "none" if fixed is None else str(fixed)),
            ("cvss", score),
            ("cvss_vector", record.cvss_vector or ""),
            ("known_exploited", "yes" if record.known_exploited else "no"),
        ),
    )


# --- reading -------------------------------------------------------------------------------------


def _read_bounded(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise VulnDbInvalid(f"{path}: cannot read: {exc.strerror}", hint=_HINT) from exc
    if len(data) > limit:
        raise VulnDbInvalid(f"{path}: larger than {limit} bytes", hint="split the file")
    return data


def _load_json(data: bytes, where: str) -> object:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise VulnDbInvalid(f"{where}: not JSON: {exc}", hint=_HINT) from exc


def parse_records(data: bytes, *, where: str) -> list[Vulnerability]:
    """Parse an OSV file (one record or a list); raise :class:`VulnDbInvalid` naming where."""
    return _parse_osv_document(_load_json(data, where), where)


def _parse_osv_document(document: object, where: str) -> list[Vulnerability]:
    if isinstance(document, list):
        return [parse_osv(item, where=f"{where}[{i}]") for i, item in enumerate(document)]
    return [parse_osv(document, where=where)]


def _fail(where: str, problem: str) -> VulnDbInvalid:
    return VulnDbInvalid(f"{where}: {problem}", hint=_HINT)


def _object(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _fail(where, "expected an object")
    return value


def _list(value: object, where: str) -> list[object]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(where, "expected a list")
    return value


def _text(value: object, where: str, *, default: str | None = None) -> str:
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise _fail(where, "expected a string")
    return value


def _timestamp(value: object, where: str) -> datetime:
    text = _text(value, where)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _fail(where, f"not an RFC 3339 timestamp: {text[:40]!r}") from exc
    # NVD writes UTC without an offset; OSV requires the Z.
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _version(value: object, where: str) -> Version:
    try:
        return parse_version(_text(value, where))
    except VersionInvalid as exc:
        raise _fail(where, exc.message) from exc


def _vuln_id(value: object, where: str) -> str:
    text = _text(value, where)
    if not _ID.fullmatch(text):
        raise _fail(where, f"not a vulnerability id: {text[:40]!r}")
    return text


def parse_osv(document: object, *, where: str) -> Vulnerability:
    """Parse one OSV record; raise :class:`VulnDbInvalid` naming where."""
    record = _object(document, where)
    specific = _object(record.get("database_specific") or {}, f"{where}.database_specific")
    vector = _cvss_vector(_list(record.get("severity"), f"{where}.severity"), f"{where}.severity")
    score = specific.get("cvss_score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
        raise _fail(f"{where}.database_specific.cvss_score", "expected a number")
    kev = specific.get("cisa_kev", False)
    if not isinstance(kev, bool):
        raise _fail(f"{where}.database_specific.cisa_kev", "expected true or false")
    summary = _text(record.get("summary"), f"{where}.summary", default="")
    details = _text(record.get("details"), f"{where}.details", default="")
    return Vulnerability(
        id=_vuln_id(record.get("id"), f"{where}.id"),
        modified=_timestamp(record.get("modified"), f"{where}.modified"),
        published=_timestamp(record["published"], f"{where}.published") if "published" in record else None,
        aliases=tuple(
            _vuln_id(a, f"{where}.aliases[{i}]") for i, a in enumerate(_list(record.get("aliases"), where))
        ),
        summary=summary or details.split("\n", 1)[0][:200],
        affected=_affected_list(_list(record.get("affected"), f"{where}.affected"), f"{where}.affected"),
        cvss_score=float(score) if score is not None else (cvss3_base_score(vector) if vector else None),
        cvss_vector=vector,
        known_exploited=kev,
        note=_text(specific.get("note"), f"{where}.database_specific.note", default=""),
    )


def _cvss_vector(severities: list[object], where: str) -> str | None:
    for i, item in enumerate(severities):
        entry = _object(item, f"{where}[{i}]")
        if entry.get("type") == "CVSS_V3":
            vector = _text(entry.get("score"), f"{where}[{i}].score")
            try:
                cvss3_base_score(vector)
            except VulnDbInvalid as exc:
                raise _fail(f"{where}[{i}].score", exc.message) from exc
            return vector
    return None


def _affected_list(items: list[object], where: str) -> tuple[AffectedPackage, ...]:
    return tuple(_affected(item, f"{where}[{i}]") for i, item in enumerate(items))


def _affected(item: object, where: str) -> AffectedPackage:
    entry = _object(item, where)
    package = _object(entry.get("package"), f"{where}.package")
    ranges = []
    for i, raw in enumerate(_list(entry.get("ranges"), f"{where}.ranges")):
        spec = _object(raw, f"{where}.ranges[{i}]")
        if spec.get("type") in ("SEMVER", "ECOSYSTEM"):
            ranges.append(_range(spec.get("events"), f"{where}.ranges[{i}].events"))
        elif spec.get("type") != "GIT":
            raise _fail(f"{where}.ranges[{i}].type", "expected SEMVER, ECOSYSTEM or GIT")
    versions = _list(entry.get("versions"), f"{where}.versions")
    return AffectedPackage(
        name=canonical_package(_text(package.get("name"), f"{where}.package.name")),
        ecosystem=_text(package.get("ecosystem"), f"{where}.package.ecosystem", default=ECOSYSTEM),
        ranges=tuple(ranges),
        versions=tuple(_version(v, f"{where}.versions[{i}]") for i, v in enumerate(versions)),
    )


def _range(raw: object, where: str) -> VersionRange:
    events: list[Event] = []
    for i, item in enumerate(_list(raw, where)):
        event = _object(item, f"{where}[{i}]")
        kinds = [kind for kind in EventKind if kind.value in event]
        if len(kinds) != 1:
            raise _fail(f"{where}[{i}]", "expected exactly one of introduced, fixed, last_affected")
        kind = kinds[0]
        text = _text(event[kind.value], f"{where}[{i}].{kind.value}")
        zero = kind is EventKind.INTRODUCED and text == "0"
        events.append(Event(kind, None if zero else _version(text, f"{where}[{i}].{kind.value}")))
    if not any(e.kind is EventKind.INTRODUCED for e in events):
        raise _fail(where, "a range needs an introduced event")
    return VersionRange(_sorted_events(events))


# --- NVD CVE API 2.0 -------------------------------------------------------------------------------


def parse_nvd(document: object, *, where: str) -> tuple[list[Vulnerability], list[str]]:
    """Convert an NVD CVE API 2.0 document; return (records, ids skipped for want of a known CPE).

    Raises :class:`VulnDbInvalid` naming where.
    """
    items = _list(_object(document, where).get("vulnerabilities"), f"{where}.vulnerabilities")
    records: list[Vulnerability] = []
    skipped: list[str] = []
    for i, item in enumerate(items):
        here = f"{where}.vulnerabilities[{i}].cve"
        cve = _object(_object(item, f"{where}.vulnerabilities[{i}]").get("cve"), here)
        record = _nvd_record(cve, here)
        if record.affected:
            records.append(record)
        else:
            skipped.append(record.id)
    return records, skipped


def _nvd_record(cve: dict[str, object], where: str) -> Vulnerability:
    score, vector = _nvd_cvss(_object(cve.get("metrics") or {}, f"{where}.metrics"), f"{where}.metrics")
    english = [
        _text(_object(d, f"{where}.descriptions[{i}]").get("value"), f"{where}.descriptions[{i}].value")
        for i, d in enumerate(_list(cve.get("descriptions"), f"{where}.descriptions"))
        if isinstance(d, dict) and d.get("lang") == "en"
    ]
    return Vulnerability(
        id=_vuln_id(cve.get("id"), f"{where}.id"),
        modified=_timestamp(cve.get("lastModified"), f"{where}.lastModified"),
        published=_timestamp(cve["published"], f"{where}.published") if "published" in cve else None,
        summary=english[0][:200] if english else "",
        affected=_nvd_affected(_list(cve.get("configurations"), f"{where}.configurations"), where),
        cvss_score=score,
        cvss_vector=vector,
        # NVD 2.0 carries cisaExploitAdd only for CVEs in the KEV catalog.
        known_exploited="cisaExploitAdd" in cve,
    )


def _nvd_cvss(metrics: dict[str, object], where: str) -> tuple[float | None, str | None]:
    """The base score and CVSS v3 vector NVD gives: v3.1, else v3.0, else v2 (score only); Primary first."""
    for key in ("cvssMetricV31", "cvssMetricV30", "cvssMetricV2"):
        entries = [_object(m, f"{where}.{key}[{i}]") for i, m in enumerate(_list(metrics.get(key), where))]
        if not entries:
            continue
        chosen = next((i for i, m in enumerate(entries) if m.get("type") == "Primary"), 0)
        here = f"{where}.{key}[{chosen}].cvssData"
        data = _object(entries[chosen].get("cvssData"), here)
        score = data.get("baseScore")
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise _fail(f"{here}.baseScore", "expected a number")
        if key == "cvssMetricV2":
            return float(score), None
        vector = _text(data.get("vectorString"), f"{here}.vectorString")
        try:
            cvss3_base_score(vector)
        except VulnDbInvalid as exc:
            raise _fail(f"{here}.vectorString", exc.message) from exc
        return float(score), vector
    return None, None


def _nvd_affected(configurations: list[object], where: str) -> tuple[AffectedPackage, ...]:
    ranges: dict[str, list[VersionRange]] = {}
    versions: dict[str, list[Version]] = {}
    for c, config in enumerate(configurations):
        here = f"{where}.configurations[{c}]"
        for n, node in enumerate(_list(_object(config, here).get("nodes"), f"{here}.nodes")):
            node_where = f"{here}.nodes[{n}]"
            for m, match in enumerate(
                _list(_object(node, node_where).get("cpeMatch"), f"{node_where}.cpeMatch")
            ):
                _nvd_cpe_match(
                    _object(match, f"{node_where}.cpeMatch[{m}]"),
                    f"{node_where}.cpeMatch[{m}]",
                    ranges,
                    versions,
                )
    names = sorted(set(ranges) | set(versions))
    return tuple(
        AffectedPackage(name, tuple(ranges.get(name, ())), tuple(versions.get(name, ()))) for name in names
    )


_CPE_SPLIT = re.compile(r"(?<!\\):")


def _nvd_cpe_match(
    match: dict[str, object],
    where: str,
    ranges: dict[str, list[VersionRange]],
    versions: dict[str, list[Version]],
) -> None:
    if match.get("vulnerable") is not True:
        return
    fields = _CPE_SPLIT.split(_text(match.get("criteria"), f"{where}.criteria"))
    if len(fields) < 7 or fields[:2] != ["cpe", "2.3"]:
        raise _fail(f"{where}.criteria", "expected a CPE 2.3 name")
    package = _CPE_PRODUCTS.get((fields[3], fields[4]))
    if package is None:
        return
    bounds = {k: match[k] for k in _NVD_BOUNDS if k in match}
    if fields[5] not in ("*", "-") and not bounds:
        # cpe:2.3:a:openbsd:openssh:7.4:p1 names version 7.4p1.
        update = fields[6] if fields[6] not in ("*", "-") else ""
        versions.setdefault(package, []).append(_version(fields[5] + update, f"{where}.criteria"))
        return
    ranges.setdefault(package, []).append(_nvd_range(bounds, where))


_NVD_BOUNDS: Final[Mapping[str, EventKind]] = {
    # OSV has no exclusive start: versionStartExcluding is read as inclusive (wider, never narrower).
    "versionStartIncluding": EventKind.INTRODUCED,
    "versionStartExcluding": EventKind.INTRODUCED,
    "versionEndExcluding": EventKind.FIXED,
    "versionEndIncluding": EventKind.LAST_AFFECTED,
}


def _nvd_range(bounds: dict[str, object], where: str) -> VersionRange:
    events = [Event(_NVD_BOUNDS[key], _version(value, f"{where}.{key}")) for key, value in bounds.items()]
    if not any(e.kind is EventKind.INTRODUCED for e in events):
        events.append(Event(EventKind.INTRODUCED, None))
    return VersionRange(_sorted_events(events))


# --- writing -------------------------------------------------------------------------------------


def to_osv(record: Vulnerability) -> dict[str, object]:
    """Return ``record`` as an OSV 1.6 document (what :meth:`VulnDb.save` writes)."""
    specific: dict[str, object] = {"cisa_kev": record.known_exploited}
    if record.cvss_score is not None:
        specific["cvss_score"] = record.cvss_score
    if record.note:
        specific["note"] = record.note
    document: dict[str, object] = {
        "schema_version": "1.6.0",
        "id": record.id,
        "modified": _rfc3339(record.modified),
        "aliases": list(record.aliases),
        "summary": record.summary,
        "affected": [_affected_osv(a) for a in record.affected],
        "database_specific": specific,
    }
    if record.published is not None:
        document["published"] = _rfc3339(record.published)
    if record.cvss_vector is not None:
        document["severity"] = [{"type": "CVSS_V3", "score": record.cvss_vector}]
    return document


def _affected_osv(affected: AffectedPackage) -> dict[str, object]:
    entry: dict[str, object] = {"package": {"name": affected.name, "ecosystem": affected.ecosystem}}
    if affected.ranges:
        entry["ranges"] = [
            {"type": "ECOSYSTEM", "events": [{e.kind.value: e.text} for e in r.events]}
            for r in affected.ranges
        ]
    if affected.versions:
        entry["versions"] = [v.text for v in affected.versions]
    return entry


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _write_atomic(path: Path, document: Mapping[str, object]) -> None:
    data = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
