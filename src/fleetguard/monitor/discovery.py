"""Discovery of devices that are not in the inventory, and a fingerprint of what they are.

Theory of operation. :func:`discover_devices` reads flows and packet batches and returns a
:class:`DiscoveredDevice` for every address inside the local networks that is not a known inventory
address (broadcast, multicast and unspecified addresses are never devices). For each it gathers what
the traffic shows: the MAC address (from Ethernet frames or DHCP), the ports it listens on (it
answered a connection), the ports it uses (it opened one), and the hints the caller parsed from
payloads (:class:`Hints`: DHCP requests, DNS names queried, TLS server names). :func:`fingerprint`
turns those into a :class:`Fingerprint`: the vendor from the MAC's IEEE registration
(:class:`OuiTable`, Debian's ``ieee-data`` read at run time) and a guessed :class:`DeviceKind`.

Every clue is a vote for a kind with a weight from the declarative tables below; the kind with the
most combined weight wins, and its confidence is ``1 - prod(1 - weight)`` over its votes. Every vote
and every vendor source is a human reason in the fingerprint, so an operator sees why.

The payload parsers are bounded and total: :func:`parse_dhcp` (RFC 2131/2132) and
:func:`parse_client_hello` (RFC 8446 section 4.1.2, RFC 6066 section 3) return None for bytes that
are not their protocol and raise :class:`PayloadInvalid` for bytes that claim to be and are broken.
Everything here is pure except :meth:`OuiTable.load`, which reads the registry files.
"""

from __future__ import annotations

import csv
import ipaddress
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

import numpy as np

from fleetguard.errors import InvalidInput
from fleetguard.monitor.errors import MonitorError
from fleetguard.monitor.model import FlowRecord, PacketColumns, Skipped

__all__ = [
    "IEEE_DATA",
    "ClientHello",
    "DeviceKind",
    "DhcpInfo",
    "DiscoveredDevice",
    "Discovery",
    "Fingerprint",
    "Hints",
    "OuiTable",
    "PayloadInvalid",
    "discover_devices",
    "fingerprint",
    "parse_client_hello",
    "parse_dhcp",
]

IEEE_DATA: Final = Path("/usr/share/ieee-data")  # Debian package ieee-data
# Registry files in the order they are read: MA-L (24-bit), MA-M (28-bit), MA-S (36-bit), IAB (36-bit).
_REGISTRIES: Final = ("oui", "mam", "oui36", "iab")
_MAX_FILE = 64 * 1024 * 1024  # oui.txt is about 6 MiB today
_MAX_LINE = 1024
_MAX_ENTRIES = 200_000  # per table; the four registries hold about 60 000 together
_MAX_PAYLOAD = 65535  # a UDP payload or TCP segment
_MAX_NAMES = 64  # DNS names or server names kept per device
_MAX_DEVICES = 4096


class PayloadInvalid(InvalidInput, MonitorError):
    """A payload claims to be DHCP or a TLS ClientHello and is malformed or too large."""

    code = "monitor-payload-invalid"


# --- IEEE registry (MAC OUI) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OuiTable:
    """MAC prefixes to organization names, from the IEEE registries.

    ``entries`` maps (prefix bits, prefix value) to the organization. ``reason`` says why the table
    is empty or partial (package missing, file too large); ``skipped`` counts malformed lines.
    """

    entries: Mapping[tuple[int, int], str] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    skipped: Skipped = field(default_factory=Skipped)
    reason: str | None = None

    @classmethod
    def load(cls, path: Path | None = None) -> OuiTable:
        """Read a registry file (``.txt`` or ``.csv``), or every registry in a directory
        (default ``/usr/share/ieee-data``: oui, mam, oui36, iab; ``.csv`` preferred).

        Never raises for missing or malformed data: returns a table whose ``reason`` says what is
        missing and whose ``skipped`` counts bad lines.
        """
        directory = IEEE_DATA if path is None else path
        files = [directory] if directory.is_file() else _registry_files(directory)
        if not files:
            return cls(reason=f"no IEEE registry in {directory} (install Debian's ieee-data)")
        entries: dict[tuple[int, int], str] = {}
        skipped, reasons = Skipped(), []
        for file in files:
            try:
                reason = _read_registry(file, entries, skipped)
            except OSError as exc:  # unreadable: the table is partial, and says so
                reason = f"{file} cannot be read: {exc.strerror or exc}"
            if reason is not None:
                reasons.append(reason)
        sources = tuple(str(file) for file in files)
        return cls(entries, sources, skipped, "; ".join(reasons) or None)

    def vendor(self, mac: str | bytes | int) -> str | None:
        """Return the organization registered for ``mac`` (longest prefix first), or None."""
        value = _mac_int(mac)
        if value is None:
            return None
        for bits in (36, 28, 24):
            found = self.entries.get((bits, value >> (48 - bits)))
            if found is not None:
                return found
        return None


def _read_registry(file: Path, entries: dict[tuple[int, int], str], skipped: Skipped) -> str | None:
    """Add one registry file's entries; return why it was not read whole, or None."""
    if file.stat().st_size > _MAX_FILE:
        return f"{file} is larger than {_MAX_FILE} bytes"
    with file.open(encoding="utf-8", errors="replace", newline="") as stream:
        parse = _parse_csv if file.suffix == ".csv" else _parse_txt
        for key, organization in parse(stream, skipped):
            if len(entries) >= _MAX_ENTRIES:
                return f"more than {_MAX_ENTRIES} entries: the rest of {file} is ignored"
            entries.setdefault(key, organization)
    return None


def _registry_files(directory: Path) -> list[Path]:
    files = []
    for name in _REGISTRIES:
        for suffix in (".csv", ".txt"):
            candidate = directory / f"{name}{suffix}"
            if candidate.is_file():
                files.append(candidate)
                break
    return files


_HEX_LINE = re.compile(r"^\s*([0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){2})\s+\(hex\)\s*(.*)$")
_BASE16_LINE = re.compile(r"^\s*([0-9A-Fa-f]{6})(?:-([0-9A-Fa-f]{6}))?\s+\(base 16\)\s*(.*)$")


def _parse_txt(lines: Iterable[str], skipped: Skipped) -> Iterator[tuple[tuple[int, int], str]]:
    """Parse the IEEE text format: a ``XX-XX-XX (hex) Org`` line, then ``XXXXXX (base 16) Org`` for MA-L
    or ``X00000-XFFFFF (base 16) Org`` (a range inside the OUI) for MA-M, MA-S and IAB."""
    oui: int | None = None
    for line in lines:
        if len(line) > _MAX_LINE:
            skipped.add("line too long")
            continue
        if hex_match := _HEX_LINE.match(line):
            oui = int(hex_match.group(1).replace("-", ""), 16)
            continue
        match = _BASE16_LINE.match(line)
        if match is None:
            continue  # addresses, headers and blank lines
        organization = _organization(match.group(3))
        if organization is None:
            skipped.add("no organization")
            continue
        start, end = match.group(1).upper(), match.group(2)
        if end is None:
            yield (24, int(start, 16)), organization
        elif oui is None or (key := _range_key(oui, start, end.upper())) is None:
            skipped.add("malformed range")
        else:
            yield key, organization


def _range_key(oui: int, start: str, end: str) -> tuple[int, int] | None:
    """Return the key of an MA-M (one fixed hex digit) or MA-S/IAB (three) range, or None."""
    for digits in (1, 3):
        rest = len(start) - digits
        if start[:digits] == end[:digits] and start[digits:] == "0" * rest and end[digits:] == "F" * rest:
            return 24 + 4 * digits, (oui << (4 * digits)) | int(start[:digits], 16)
    return None


def _parse_csv(lines: Iterable[str], skipped: Skipped) -> Iterator[tuple[tuple[int, int], str]]:
    """Parse the IEEE CSV format: ``Registry,Assignment,Organization Name,Organization Address``."""
    bounded = (line if len(line) <= _MAX_LINE else "" for line in lines)
    for row in csv.reader(bounded):
        if not row or row[0] == "Registry":
            continue
        assignment = row[1].strip() if len(row) >= 3 else ""
        organization = _organization(row[2]) if len(row) >= 3 else None
        if len(assignment) not in (6, 7, 9) or not _is_hex(assignment) or organization is None:
            skipped.add("malformed csv row")
            continue
        yield (4 * len(assignment), int(assignment, 16)), organization


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def _organization(text: str) -> str | None:
    cleaned = "".join(c for c in text.strip() if c.isprintable())[:128]
    return cleaned or None


def _mac_int(mac: str | bytes | int) -> int | None:
    if isinstance(mac, int):
        return mac if 0 < mac < 1 << 48 else None
    if isinstance(mac, bytes):
        return int.from_bytes(mac, "big") if len(mac) == 6 else None
    digits = re.sub(r"[:.\-]", "", mac)
    return int(digits, 16) if len(digits) == 12 and _is_hex(digits) else None


def _mac_text(value: int) -> str:
    return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))


# --- DHCP (RFC 2131 section 2, RFC 2132) ------------------------------------------------------

_DHCP_COOKIE: Final = b"\x63\x82\x53\x63"  # RFC 2131 section 3
_DHCP_FIXED: Final = 236  # op .. file, RFC 2131 figure 1
_OPT_PAD, _OPT_END = 0, 255
_OPT_HOSTNAME, _OPT_REQUESTED_IP, _OPT_MESSAGE_TYPE = 12, 50, 53
_OPT_PARAMETERS, _OPT_VENDOR_CLASS, _OPT_CLIENT_ID = 55, 60, 61


@dataclass(frozen=True, slots=True)
class DhcpInfo:
    """What a DHCP message says about its client."""

    op: int
    message_type: int | None
    mac: str | None
    hostname: str | None
    vendor_class: str | None
    parameter_request_list: tuple[int, ...]
    requested_address: str | None


def parse_dhcp(payload: bytes) -> DhcpInfo | None:
    """Parse a BOOTP/DHCP message (the UDP payload, port 67 or 68).

    Returns None when the bytes are not DHCP (too short, unknown op, no magic cookie). Raises
    :class:`PayloadInvalid` when the payload is over 65535 bytes or an option overruns the message.
    """
    if len(payload) > _MAX_PAYLOAD:
        raise PayloadInvalid(f"DHCP payload of {len(payload)} bytes exceeds {_MAX_PAYLOAD}")
    if len(payload) < _DHCP_FIXED + 4 or payload[0] not in (1, 2) or payload[236:240] != _DHCP_COOKIE:
        return None
    options = _dhcp_options(payload[240:])
    htype, hlen = payload[1], payload[2]
    mac = _mac_text(int.from_bytes(payload[28:34], "big")) if htype == 1 and hlen == 6 else None
    message_type = options.get(_OPT_MESSAGE_TYPE, b"")
    requested = options.get(_OPT_REQUESTED_IP, b"")
    return DhcpInfo(
        op=payload[0],
        message_type=message_type[0] if len(message_type) == 1 else None,
        mac=mac,
        hostname=_text(options.get(_OPT_HOSTNAME)),
        vendor_class=_text(options.get(_OPT_VENDOR_CLASS)),
        parameter_request_list=tuple(options.get(_OPT_PARAMETERS, b"")),
        requested_address=str(ipaddress.IPv4Address(requested)) if len(requested) == 4 else None,
    )


def _dhcp_options(data: bytes) -> dict[int, bytes]:
    """Return the options by code (RFC 2132 section 2; a repeated option concatenates, RFC 3396)."""
    options: dict[int, bytes] = {}
    at = 0
    while at < len(data):
        code = data[at]
        if code == _OPT_END:
            break
        if code == _OPT_PAD:
            at += 1
            continue
        if at + 2 > len(data) or at + 2 + data[at + 1] > len(data):
            raise PayloadInvalid(f"DHCP option {code} at offset {240 + at} overruns the message")
        length = data[at + 1]
        options[code] = options.get(code, b"") + data[at + 2 : at + 2 + length]
        at += 2 + length
    return options


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    text = "".join(c for c in value.decode("ascii", "replace").rstrip("\x00") if c.isprintable())
    return text[:255] or None


# --- TLS ClientHello (RFC 8446 section 4.1.2, RFC 6066 section 3, RFC 7301) --------------------

_TLS_HANDSHAKE, _CLIENT_HELLO = 22, 1
_EXT_SERVER_NAME, _EXT_ALPN = 0, 16
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252}[A-Za-z0-9_.])?", re.ASCII)


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a TLS ClientHello tells: the server name asked for and the application protocols offered."""

    server_name: str | None
    alpn: tuple[str, ...]


class _Reader:
    """A bounds-checked cursor; running past the end raises PayloadInvalid."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.at, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise PayloadInvalid(f"{self.what} is truncated at offset {self.at} (needs {n} more bytes)")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def number(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> _Reader:
        return _Reader(self.take(self.number(length_bytes)), self.what)

    @property
    def done(self) -> bool:
        return self.at >= len(self.data)


def parse_client_hello(data: bytes) -> ClientHello | None:
    """Parse the TLS record that starts a TCP stream, if it is a ClientHello.

    Returns None when it is not a TLS handshake record carrying a ClientHello. Raises
    :class:`PayloadInvalid` for more than 65535 bytes, a truncated record or vector, or a server
    name that is not a DNS host name. Only the first record is read (a ClientHello split across
    records is reported as truncated).
    """
    if len(data) > _MAX_PAYLOAD:
        raise PayloadInvalid(f"TLS payload of {len(data)} bytes exceeds {_MAX_PAYLOAD}")
    if len(data) < 6 or data[0] != _TLS_HANDSHAKE or data[1] != 3 or data[5] != _CLIENT_HELLO:
        return None
    record = _Reader(data, "TLS record")
    record.take(3)  # content type, legacy_record_version
    hello = record.vector(2)
    hello.take(1)  # msg_type
    body = hello.vector(3)
    body.take(2 + 32)  # legacy_version, random
    body.vector(1)  # legacy_session_id
    body.vector(2)  # cipher_suites
    body.vector(1)  # legacy_compression_methods
    if body.done:
        return ClientHello(None, ())  # no extensions (TLS 1.2 and earlier allow it)
    extensions = body.vector(2)
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    while not extensions.done:
        kind, value = extensions.number(2), extensions.vector(2)
        if kind == _EXT_SERVER_NAME:
            server_name = _server_name(value)
        elif kind == _EXT_ALPN:
            alpn = _alpn(value)
    return ClientHello(server_name, alpn)


def _server_name(ext: _Reader) -> str | None:
    names = ext.vector(2)
    while not names.done:
        name_type, name = names.number(1), names.vector(2).data
        if name_type == 0:  # host_name, RFC 6066 section 3
            text = name.decode("ascii", "replace")
            if not _HOST_NAME.fullmatch(text):
                raise PayloadInvalid(f"TLS server name {text[:64]!r} is not a host name")
            return text.lower()
    return None


def _alpn(ext: _Reader) -> tuple[str, ...]:
    protocols = ext.vector(2)
    offered: list[str] = []
    while not protocols.done and len(offered) < 16:
        offered.append(protocols.vector(1).data.decode("ascii", "replace"))
    return tuple(offered)


# --- Fingerprints -----------------------------------------------------------------------------


class DeviceKind(StrEnum):
    """What a device seems to be."""

    CAMERA = "camera"
    PRINTER = "printer"
    SMART_PLUG = "smart-plug"
    HUB = "hub"
    MQTT_CLIENT = "mqtt-client"
    MEDIA = "media"
    COMPUTER = "computer"
    PHONE = "phone"
    UNKNOWN = "unknown"


# Ports a device listens on: IANA registry, and the vendors' documented services.
_LISTENING: Final[Mapping[int, tuple[DeviceKind, str]]] = {
    554: (DeviceKind.CAMERA, "RTSP"),
    8554: (DeviceKind.CAMERA, "RTSP alternate"),
    9100: (DeviceKind.PRINTER, "raw printing (JetDirect)"),
    631: (DeviceKind.PRINTER, "IPP"),
    515: (DeviceKind.PRINTER, "LPD"),
    9999: (DeviceKind.SMART_PLUG, "TP-Link Kasa local control"),
    6668: (DeviceKind.SMART_PLUG, "Tuya local control"),
    1883: (DeviceKind.HUB, "an MQTT broker"),
    8123: (DeviceKind.HUB, "Home Assistant"),
    5683: (DeviceKind.HUB, "CoAP"),
    8008: (DeviceKind.MEDIA, "Google Cast"),
    8009: (DeviceKind.MEDIA, "Google Cast"),
    7000: (DeviceKind.MEDIA, "AirPlay"),
}
# Services a device uses (as a client).
_USED: Final[Mapping[int, tuple[DeviceKind, str]]] = {
    1883: (DeviceKind.MQTT_CLIENT, "MQTT"),
    8883: (DeviceKind.MQTT_CLIENT, "MQTT over TLS"),
    5683: (DeviceKind.HUB, "CoAP"),
}
# DNS or TLS server names (suffixes) the vendors' clouds use.
_NAMES: Final[Sequence[tuple[str, DeviceKind, str]]] = (
    ("tplinkcloud.com", DeviceKind.SMART_PLUG, "TP-Link"),
    ("tuyaus.com", DeviceKind.SMART_PLUG, "Tuya"),
    ("tuyaeu.com", DeviceKind.SMART_PLUG, "Tuya"),
    ("tuyacn.com", DeviceKind.SMART_PLUG, "Tuya"),
    ("wemo2.com", DeviceKind.SMART_PLUG, "Belkin"),
    ("immedia-semi.com", DeviceKind.CAMERA, "Blink"),
    ("ring.com", DeviceKind.CAMERA, "Ring"),
    ("dropcam.com", DeviceKind.CAMERA, "Google Nest"),
    ("hik-connect.com", DeviceKind.CAMERA, "Hikvision"),
    ("meethue.com", DeviceKind.HUB, "Philips Hue"),
    ("smartthings.com", DeviceKind.HUB, "Samsung SmartThings"),
    ("hpeprint.com", DeviceKind.PRINTER, "HP"),
    ("epsonconnect.com", DeviceKind.PRINTER, "Epson"),
)
# DHCP vendor class identifiers (option 60) as clients send them.
_VENDOR_CLASSES: Final[Sequence[tuple[str, DeviceKind]]] = (
    ("msft", DeviceKind.COMPUTER),
    ("android-dhcp", DeviceKind.PHONE),
    ("hp printer", DeviceKind.PRINTER),
    ("udhcp", DeviceKind.UNKNOWN),  # busybox: embedded Linux, any kind; a reason but no vote
)
_HOSTNAMES: Final[Sequence[tuple[re.Pattern[str], DeviceKind]]] = (
    (re.compile(r"cam|ipc|dvr|nvr", re.IGNORECASE), DeviceKind.CAMERA),
    (re.compile(r"print|^hp[0-9a-f]{6}|^brn|^epson", re.IGNORECASE), DeviceKind.PRINTER),
    (re.compile(r"plug|^hs1[01]0|^kp[0-9]{3}", re.IGNORECASE), DeviceKind.SMART_PLUG),
    (re.compile(r"iphone|android|galaxy|pixel", re.IGNORECASE), DeviceKind.PHONE),
    (re.compile(r"desktop-|laptop|macbook", re.IGNORECASE), DeviceKind.COMPUTER),
)
# Registered organizations that make one kind of device.
_VENDOR_KINDS: Final[Sequence[tuple[str, DeviceKind]]] = (
    ("hikvision", DeviceKind.CAMERA),
    ("axis communications", DeviceKind.CAMERA),
    ("dahua", DeviceKind.CAMERA),
    ("brother industries", DeviceKind.PRINTER),
    ("seiko epson", DeviceKind.PRINTER),
    ("tp-link", DeviceKind.SMART_PLUG),
    ("philips lighting", DeviceKind.HUB),
)
_W_LISTENING, _W_USED, _W_NAME, _W_VENDOR_CLASS, _W_HOSTNAME, _W_VENDOR = 0.5, 0.3, 0.4, 0.4, 0.3, 0.2


@dataclass(frozen=True, slots=True)
class Hints:
    """What the caller parsed from one device's payloads."""

    dhcp: tuple[DhcpInfo, ...] = ()
    dns_names: tuple[str, ...] = ()
    server_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """The guess: vendor (or None), kind, confidence in [0, 1], and the reasons for each part."""

    vendor: str | None
    guessed_type: DeviceKind
    confidence: float
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Vote:
    kind: DeviceKind
    weight: float
    reason: str


def fingerprint(
    *,
    mac: str | None,
    oui: OuiTable,
    hints: Hints = Hints(),
    listening_ports: Collection[int] = (),
    used_ports: Collection[int] = (),
) -> Fingerprint:
    """Return the vendor and guessed kind of a device from what was seen of it (module docstring)."""
    registered = _registered_vendor(mac, oui)
    vendor, reasons = registered or _cloud_vendor(mac, hints)
    votes = [*_port_votes(listening_ports, used_ports), *_name_votes(hints), *_dhcp_votes(hints, reasons)]
    if registered is not None:  # a vendor guessed from names already voted through those names
        votes += [
            _Vote(k, _W_VENDOR, f"{vendor} makes {k}s")
            for s, k in _VENDOR_KINDS
            if s in registered[0].lower()
        ]
    if not votes:
        return Fingerprint(vendor, DeviceKind.UNKNOWN, 0.0, tuple(reasons))
    scores: dict[DeviceKind, float] = {}
    for vote in votes:
        scores[vote.kind] = 1 - (1 - scores.get(vote.kind, 0.0)) * (1 - vote.weight)
    order = list(DeviceKind)
    kind = max(scores, key=lambda k: (scores[k], -order.index(k)))
    reasons += [vote.reason for vote in votes if vote.kind is kind]
    return Fingerprint(vendor, kind, round(scores[kind], 4), tuple(reasons))


def _registered_vendor(mac: str | None, oui: OuiTable) -> tuple[str, list[str]] | None:
    value = None if mac is None else _mac_int(mac)
    if value is None or value >> 41 & 1:  # IEEE 802 locally administered (U/L) bit: not registered
        return None
    registered = oui.vendor(value)
    return None if registered is None else (registered, [f"MAC {mac} is registered to {registered}"])


def _cloud_vendor(mac: str | None, hints: Hints) -> tuple[str | None, list[str]]:
    reasons: list[str] = []
    value = None if mac is None else _mac_int(mac)
    if value is not None and value >> 41 & 1:
        reasons.append(f"MAC {mac} is locally administered (random), no vendor registration")
    for name in (*hints.dns_names, *hints.server_names):
        for suffix, _, maker in _NAMES:
            if _under(name, suffix):
                reasons.append(f"talks to {name} ({maker}'s cloud)")
                return maker, reasons
    return None, reasons


def _under(name: str, suffix: str) -> bool:
    name = name.lower().rstrip(".")
    return name == suffix or name.endswith("." + suffix)


def _port_votes(listening: Collection[int], used: Collection[int]) -> list[_Vote]:
    votes = []
    for port in sorted(listening):
        if port in _LISTENING:
            kind, service = _LISTENING[port]
            votes.append(_Vote(kind, _W_LISTENING, f"listens on {port} ({service})"))
    for port in sorted(used):
        if port in _USED:
            kind, service = _USED[port]
            votes.append(_Vote(kind, _W_USED, f"connects to port {port} ({service})"))
    return votes


def _name_votes(hints: Hints) -> list[_Vote]:
    votes: list[_Vote] = []
    for source, names in (("looks up", hints.dns_names), ("opens TLS to", hints.server_names)):
        for name in sorted(set(names))[:_MAX_NAMES]:
            votes.extend(
                _Vote(kind, _W_NAME, f"{source} {name} ({maker})")
                for suffix, kind, maker in _NAMES
                if _under(name, suffix)
            )
    return votes


def _dhcp_votes(hints: Hints, reasons: list[str]) -> list[_Vote]:
    votes: list[_Vote] = []
    for info in hints.dhcp[:_MAX_NAMES]:
        if info.vendor_class is not None:
            for prefix, kind in _VENDOR_CLASSES:
                if info.vendor_class.lower().startswith(prefix):
                    reason = f"DHCP vendor class {info.vendor_class!r}"
                    if kind is DeviceKind.UNKNOWN:
                        reasons.append(f"{reason} (embedded Linux)")
                    else:
                        votes.append(_Vote(kind, _W_VENDOR_CLASS, reason))
        if info.hostname is not None:
            votes.extend(
                _Vote(kind, _W_HOSTNAME, f"DHCP host name {info.hostname!r}")
                for pattern, kind in _HOSTNAMES
                if pattern.search(info.hostname)
            )
    return votes


# --- Discovery --------------------------------------------------------------------------------

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Zeek conn_state values where the responder answered (Zeek base/protocols/conn/main.zeek).
_ANSWERED: Final = frozenset({"SF", "S1", "S2", "S3", "RSTO", "RSTR", "RSTRH", "SHR"})
_PORTED: Final = frozenset({"tcp", "udp"})


@dataclass(frozen=True, slots=True)
class DiscoveredDevice:
    """An address not in the inventory, when it was seen, and what it seems to be."""

    address: str
    mac: str | None
    first_seen: float
    last_seen: float
    listening_ports: tuple[int, ...]
    used_ports: tuple[int, ...]
    fingerprint: Fingerprint


@dataclass(frozen=True, slots=True)
class Discovery:
    """The devices discovered (sorted by address) and the input not used, by reason."""

    devices: tuple[DiscoveredDevice, ...]
    skipped: Skipped


@dataclass(slots=True)
class _Sighting:
    first: float
    last: float
    mac: str | None = None
    listening: set[int] = field(default_factory=set)
    used: set[int] = field(default_factory=set)


_MAX_PORTS = 256


class _Sightings:
    def __init__(self, known: Collection[str], networks: Sequence[IpNetwork], max_devices: int) -> None:
        self.known, self.networks, self.max_devices = known, networks, max_devices
        self.seen: dict[str, _Sighting] = {}
        self.skipped = Skipped()

    def get(self, address: str, ts: float) -> _Sighting | None:
        sighting = self.seen.get(address)
        if sighting is None:
            if address in self.known or not self._candidate(address):
                return None
            if len(self.seen) >= self.max_devices:
                self.skipped.add("too many discovered devices (max_devices)")
                return None
            sighting = self.seen[address] = _Sighting(ts, ts)
        sighting.first, sighting.last = min(sighting.first, ts), max(sighting.last, ts)
        return sighting

    def _candidate(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            self.skipped.add("not an IP address")
            return False
        if ip.is_multicast or ip.is_unspecified or ip == ipaddress.IPv4Address("255.255.255.255"):
            return False
        return any(ip in network for network in self.networks)

    def port(self, ports: set[int], port: int) -> None:
        if len(ports) < _MAX_PORTS and port:
            ports.add(port)


def discover_devices(
    *,
    known: Collection[str],
    local_networks: Sequence[IpNetwork],
    oui: OuiTable,
    flows: Iterable[FlowRecord] = (),
    packets: Iterable[PacketColumns] = (),
    hints: Mapping[str, Hints] | None = None,
    max_devices: int = _MAX_DEVICES,
) -> Discovery:
    """Return the devices inside ``local_networks`` whose address is not in ``known``.

    A flow's initiator *used* its destination port; its responder *listens* on it when it answered
    (a Zeek state with a reply, or reply bytes). In packets, a SYN uses the port, a SYN-ACK shows the
    sender listening, and the sender's Ethernet address is its MAC. ``hints`` (per address) add
    DHCP, DNS and TLS clues; a DHCP message's client hardware address fills in a missing MAC.
    """
    sightings = _Sightings(known, local_networks, max_devices)
    for flow in flows:
        _add_flow(sightings, flow)
    for batch in packets:
        _add_packets(sightings, batch)
    hints = hints or {}
    devices = []
    for address in sorted(sightings.seen, key=_address_order):
        sighting = sightings.seen[address]
        device_hints = hints.get(address, Hints())
        mac = sighting.mac or next((d.mac for d in device_hints.dhcp if d.mac), None)
        found = fingerprint(
            mac=mac, oui=oui, hints=device_hints, listening_ports=sighting.listening, used_ports=sighting.used
        )
        devices.append(
            DiscoveredDevice(address, mac, sighting.first, sighting.last, tuple(sorted(sighting.listening)),
                             tuple(sorted(sighting.used)), found)
        )  # fmt: skip
    return Discovery(tuple(devices), sightings.skipped)


def _address_order(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def _add_flow(sightings: _Sightings, flow: FlowRecord) -> None:
    if (initiator := sightings.get(flow.src, flow.start)) is not None:
        sightings.port(initiator.used, flow.dport)
    answered = flow.state in _ANSWERED or flow.dst_bytes > 0 or flow.dst_packets > 0
    if answered and (responder := sightings.get(flow.dst, flow.start)) is not None and flow.proto in _PORTED:
        sightings.port(responder.listening, flow.dport)


def _add_packets(sightings: _Sightings, batch: PacketColumns) -> None:
    syn = (batch.proto == 6) & ((batch.tcp_flags & 0x12) == 0x02)
    syn_ack = (batch.proto == 6) & ((batch.tcp_flags & 0x12) == 0x12)
    keys = np.unique(batch.src)
    for key in keys.tolist():
        address = batch.addresses.get(key)
        if address is None:
            sightings.skipped.add("packet source without an address")
            continue
        mine = batch.src == key
        times = batch.ts[mine]
        sighting = sightings.get(address, float(times.min()))
        if sighting is None:
            continue
        sighting.last = max(sighting.last, float(times.max()))
        macs = batch.src_mac[mine]
        if sighting.mac is None and (macs != 0).any():
            sighting.mac = _mac_text(int(macs[macs != 0][0]))
        for port in np.unique(batch.dport[mine & syn]).tolist()[:_MAX_PORTS]:
            sightings.port(sighting.used, int(port))
        for port in np.unique(batch.sport[mine & syn_ack]).tolist()[:_MAX_PORTS]:
            sightings.port(sighting.listening, int(port))
