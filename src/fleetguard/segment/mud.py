"""Parse a MUD file (RFC 8520, with the ACL model of RFC 8519) into a :class:`MudProfile`.

The parser is a pure function of the bytes: :func:`parse_mud` returns a profile whose ACEs are
normalised as :mod:`fleetguard.segment.model` describes, or raises. It is strict where leniency
would widen what a device may do, and follows RFC 8520 where the RFC asks for leniency:

* Inside the ACLs (match containers, their fields, ``ietf-mud:mud`` abstractions, actions) anything
  not understood is :class:`MudInvalid` naming its JSON pointer. Ignoring an unknown *match* would
  turn an ACE into a wider allow rule, so we fail closed there.
* Nodes of ``ietf-mud:mud`` and root objects that are not RFC 8520's are ignored, whether or not
  ``extensions`` announces them: RFC 8520 section 3.9 says "Implementations MUST ignore any node in
  this file that they do not understand". This covers the extensions found in the wild
  (``ietf-mud-reporter-extension:reporter``, ``nist-mud:quarantined-device-policy``), which add
  reporting and quarantine behaviour, never access. ``extensions`` itself must be a list of names.
* Every ACE must accept: MUD policies here are allow-lists with a default deny, so ``drop`` and
  ``reject`` (which only make sense with a later, wider accept) are refused.
* An ACL referenced by neither policy is checked for its name, type and size, then ignored: no
  direction applies to it, so it grants nothing.
* MUD generators mix layers: MUDgee puts an ``eth`` match into IPv4 ACEs (DHCP to the broadcast
  MAC) and ``local-networks`` into eth ACEs (EAPOL). Both are kept on the :class:`Ace`
  (``ethertype``/``destination_mac`` on an IP ACE, ``peers`` on an eth ACE) so that enforcement
  sees every constraint; an IP ACE's EtherType must be its family's (0x0800, 0x86dd).
* Constraints on the device's own address (the source network of a from-device ACE, the
  destination of a to-device ACE) are refused: the device's address is the enforcement point's to
  know, and a file that pins it cannot be honoured faithfully.

Both spellings of the ACL root occur in real files: ``ietf-access-control-list:acls`` (RFC 8519) and
``ietf-access-control-list:access-lists`` (drafts, still written by MUDgee); one file may use one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from fleetguard.segment.errors import MudInvalid, MudTooLarge
from fleetguard.segment.model import ANY_PORT, Ace, Direction, Family, MudProfile, Peer, PeerKind, PortRange

__all__ = [
    "DEFAULT_CACHE_VALIDITY",
    "MAX_ACES",
    "MAX_ACLS",
    "MAX_DEPTH",
    "MAX_MUD_BYTES",
    "MAX_NAME",
    "MAX_SYSTEMINFO",
    "MAX_TEXT",
    "MAX_URL",
    "parse_mud",
]

MAX_MUD_BYTES = 1024 * 1024
"""The largest MUD file parsed; the 45 reference files are all under 80 KiB."""
MAX_DEPTH = 32
"""Deepest JSON nesting; a MUD ACE is about 10 levels deep."""
MAX_ACLS = 256
"""ACLs in the file, and references in each policy."""
MAX_ACES = 4096
"""ACEs in all ACLs together (the largest of the 45 reference files has 148)."""
MAX_NAME = 64
"""ACL and ACE names: RFC 8519 section 4.1 ``string { length "1..64"; }``."""
MAX_SYSTEMINFO = 60
"""RFC 8520 section 3.7: ``systeminfo`` is at most 60 characters."""
MAX_TEXT = 255
"""``mfg-name``, ``model-name``, ``firmware-rev``, ``software-rev`` and extension names."""
MAX_URL = 2048
"""MUD URL, signature URL, documentation and controller URIs."""
MAX_EXTENSIONS = 64
"""Entries of ``extensions`` (RFC 8520 section 3.9)."""
DEFAULT_CACHE_VALIDITY = 48
"""RFC 8520 section 3.5, the YANG default of ``cache-validity`` (hours)."""

_MUD = "ietf-mud:mud"
_ACL_ROOTS = ("ietf-access-control-list:acls", "ietf-access-control-list:access-lists")
_ACL_PREFIX = "ietf-access-control-list:"
_MAX_HOST = 253  # RFC 1035 section 2.3.4, without the trailing dot

# RFC 8519 section 4.1 acl-type identities; ethernet-acl-type is MUDgee's spelling of eth-acl-type.
_ACL_TYPES = {
    "ipv4-acl-type": Family.IPV4,
    "ipv6-acl-type": Family.IPV6,
    "eth-acl-type": Family.ETH,
    "ethernet-acl-type": Family.ETH,
}
_MIXED_ACL_TYPES = frozenset(
    {"mixed-eth-ipv4-acl-type", "mixed-eth-ipv6-acl-type", "mixed-eth-ipv4-ipv6-acl-type"}
)

_IP_PROTOCOLS = {"tcp": 6, "udp": 17}
_ICMP_PROTOCOL = {Family.IPV4: 1, Family.IPV6: 58}

# RFC 3339 section 5.6 date-time, the form of RFC 6991 yang:date-and-time.
_DATE_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
# RFC 6991 inet:domain-name labels (underscores allowed), compared in lower case.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?", re.ASCII)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[\x21-\x7e]+", re.ASCII)  # RFC 3986 section 3, no spaces
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}", re.ASCII)  # RFC 6991 yang:mac-address
_ETHERTYPE = re.compile(r"0x[0-9a-f]{1,4}", re.ASCII)


def parse_mud(data: bytes) -> MudProfile:
    """Parse and check one MUD file; return its profile (``digest`` is the SHA-256 of ``data``).

    Raises :class:`MudTooLarge` when the file, its ACLs or its ACEs are over ``MAX_*``, and
    :class:`MudInvalid` (with the JSON pointer of the offending node) for anything else.
    """
    if len(data) > MAX_MUD_BYTES:
        raise MudTooLarge(
            f"MUD file is {len(data)} bytes, over the limit of {MAX_MUD_BYTES}",
            hint="a MUD file this large is not a device profile",
        )
    root = _obj(_load_json(data), "")
    mud = _obj(_require(root, _MUD, ""), f"/{_MUD}")
    acls = _acls_by_name(root)
    from_device = _policy(mud, "from-device-policy", acls)
    to_device = _policy(mud, "to-device-policy", acls)
    both = sorted(set(from_device) & set(to_device))
    if both:
        raise MudInvalid(
            f"ACL {both[0]!r} is referenced by both from-device-policy and to-device-policy",
            path=f"/{_MUD}/to-device-policy",
        )
    aces = [
        ace for acl in acls.values() if acl.name in from_device for ace in acl.aces(Direction.FROM_DEVICE)
    ]
    aces += [ace for acl in acls.values() if acl.name in to_device for ace in acl.aces(Direction.TO_DEVICE)]
    return _profile(mud, hashlib.sha256(data).hexdigest(), tuple(aces))


# --- JSON -------------------------------------------------------------------------------------


class _Object(dict[str, object]):
    """A JSON object that remembers keys it saw twice (RFC 8259 section 4: names SHOULD be unique)."""

    duplicates: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, object]]) -> _Object:
    result = _Object(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicates: list[str] = []
        for key, _ in pairs:
            (duplicates.append if key in seen else seen.add)(key)
        result.duplicates = tuple(duplicates)
    return result


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # RFC 8259 section 6: no NaN or Infinity


def _load_json(data: bytes) -> object:
    try:
        text = data.decode("utf-8")  # RFC 8259 section 8.1
    except UnicodeDecodeError as exc:
        raise MudInvalid(f"not UTF-8 (byte {exc.start})") from exc
    try:
        document = json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise MudInvalid(f"JSON nested deeper than {MAX_DEPTH} levels") from exc
    except ValueError as exc:  # json.JSONDecodeError, and integers over Python's digit limit
        raise MudInvalid(f"not JSON: {exc}") from exc
    _check_tree(document, "", 0)
    return document


def _check_tree(value: object, path: str, depth: int) -> None:
    """Reject duplicate keys anywhere (even in ignored extensions) and nesting over ``MAX_DEPTH``."""
    if depth > MAX_DEPTH:
        raise MudInvalid(f"JSON nested deeper than {MAX_DEPTH} levels", path=path)
    if isinstance(value, _Object):
        if value.duplicates:
            raise MudInvalid(f"duplicate key {value.duplicates[0]!r}", path=path)
        for key, item in value.items():
            _check_tree(item, _ptr(path, key), depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_tree(item, _ptr(path, index), depth + 1)


def _ptr(path: str, key: str | int) -> str:
    """Append one reference token to a JSON pointer (RFC 6901 section 3)."""
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def _obj(value: object, path: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise MudInvalid("expected a JSON object", path=path)
    return value


def _list(value: object, path: str, limit: int) -> list[object]:
    if not isinstance(value, list):
        raise MudInvalid("expected a JSON array", path=path)
    if len(value) > limit:
        raise MudTooLarge(f"{path}: {len(value)} entries, over the limit of {limit}")
    return value


def _require(obj: dict[str, object], key: str, path: str) -> object:
    if key not in obj:
        raise MudInvalid(f"{key!r} is missing", path=path)
    return obj[key]


def _only(obj: dict[str, object], allowed: frozenset[str] | set[str], path: str, what: str) -> None:
    """Fail closed on a key we do not understand inside the ACL model."""
    for key in obj:
        if key not in allowed:
            raise MudInvalid(f"unknown or unsupported {what} {key!r}", path=_ptr(path, key))


def _string(value: object, path: str, limit: int) -> str:
    if not isinstance(value, str):
        raise MudInvalid("expected a string", path=path)
    if len(value) > limit:
        raise MudInvalid(f"longer than {limit} characters", path=path)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise MudInvalid("contains control characters", path=path)
    return value


def _int(value: object, path: str, low: int, high: int) -> int:
    if type(value) is not int:  # bool is an int subclass; 1.0 is not an integer in RFC 7951
        raise MudInvalid("expected an integer", path=path)
    if not low <= value <= high:
        raise MudInvalid(f"{value} is outside {low}..{high}", path=path)
    return value


def _empty(value: object, path: str) -> None:
    """An RFC 7951 section 6.9 ``empty`` leaf is encoded as ``[null]``."""
    if value != [None]:
        raise MudInvalid("expected [null] (a YANG empty leaf)", path=path)


# --- values -----------------------------------------------------------------------------------


def _https_url(value: object, path: str) -> str:
    url = _string(value, path, MAX_URL)
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise MudInvalid(f"{url!r} is not an https URL (RFC 8520 section 6: MUD URLs use https)", path=path)
    return url


def _uri(value: object, path: str) -> str:
    uri = _string(value, path, MAX_URL)
    if not _URI.fullmatch(uri):
        raise MudInvalid(f"{uri!r} is not an absolute URI (RFC 3986 section 4.3)", path=path)
    return uri


def _host(value: object, path: str) -> str:
    """An RFC 6991 inet:host name, lower-cased, without a trailing dot."""
    name = _string(value, path, _MAX_HOST + 1).lower().removesuffix(".")
    if not name or len(name) > _MAX_HOST or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise MudInvalid(f"{name!r} is not a valid host name", path=path)
    return name


def _date_time(value: object, path: str) -> dt.datetime:
    text = _string(value, path, 64)
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        raise MudInvalid(f"{text!r} is not an RFC 3339 date-time with a time zone", path=path)
    date, time, fraction, zone = match.groups()
    micro = f".{(fraction or '')[:6]:0<6}"
    offset = "+00:00" if zone in {"Z", "z"} else zone
    try:
        parsed = dt.datetime.fromisoformat(f"{date}T{time}{micro}{offset}")
    except ValueError as exc:
        raise MudInvalid(f"{text!r} is not a valid date-time: {exc}", path=path) from exc
    return parsed.astimezone(dt.UTC)


def _network(value: object, path: str, family: Family) -> Peer:
    text = _string(value, path, 64)
    if "/" not in text:
        raise MudInvalid(f"{text!r} has no prefix length (RFC 6991 ip-prefix)", path=path)
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise MudInvalid(f"{text!r} is not an address prefix: {exc}", path=path) from exc
    if network.version != (4 if family is Family.IPV4 else 6):
        raise MudInvalid(f"{text!r} is not an {family} prefix", path=path)
    return Peer(PeerKind.NETWORK, str(network))


# --- the ietf-mud:mud container ---------------------------------------------------------------


def _profile(mud: dict[str, object], digest: str, aces: tuple[Ace, ...]) -> MudProfile:
    base = f"/{_MUD}"

    def optional(key: str, parse: Callable[[object, str], str], default: str = "") -> str:
        return parse(mud[key], _ptr(base, key)) if key in mud else default

    def text(limit: int) -> Callable[[object, str], str]:
        return lambda value, path: _string(value, path, limit)

    _extensions(mud)
    signature = optional("mud-signature", _https_url)
    return MudProfile(
        url=_https_url(_require(mud, "mud-url", base), f"{base}/mud-url"),
        digest=digest,
        mud_version=_int(_require(mud, "mud-version", base), f"{base}/mud-version", 1, 1),  # section 3.1
        last_update=_date_time(_require(mud, "last-update", base), f"{base}/last-update"),  # section 3.4
        cache_validity=(
            _int(mud["cache-validity"], f"{base}/cache-validity", 1, 168)  # section 3.5
            if "cache-validity" in mud
            else DEFAULT_CACHE_VALIDITY
        ),
        is_supported=_bool(_require(mud, "is-supported", base), f"{base}/is-supported"),  # section 3.6
        systeminfo=optional("systeminfo", text(MAX_SYSTEMINFO)),  # section 3.7
        mfg_name=optional("mfg-name", text(MAX_TEXT)),  # section 3.8
        model_name=optional("model-name", text(MAX_TEXT)),
        firmware_rev=optional("firmware-rev", text(MAX_TEXT)),
        software_rev=optional("software-rev", text(MAX_TEXT)),
        documentation=optional("documentation", _uri),
        signature_url=signature or None,
        aces=aces,
    )


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise MudInvalid("expected true or false", path=path)
    return value


def _extensions(mud: dict[str, object]) -> None:
    """RFC 8520 section 3.9: a list of extension names; the extensions themselves are ignored."""
    if "extensions" in mud:
        path = f"/{_MUD}/extensions"
        for index, name in enumerate(_list(mud["extensions"], path, MAX_EXTENSIONS)):
            _string(name, _ptr(path, index), MAX_TEXT)


def _policy(mud: dict[str, object], key: str, acls: dict[str, _Acl]) -> tuple[str, ...]:
    """The ACL names one policy references (RFC 8520 section 3.3), each checked to exist."""
    if key not in mud:
        return ()
    path = _ptr(f"/{_MUD}", key)
    policy = _obj(mud[key], path)
    _only(policy, {"access-lists"}, path, "policy node")
    if "access-lists" not in policy:
        return ()
    path = f"{path}/access-lists"
    lists = _obj(policy["access-lists"], path)
    _only(lists, {"access-list"}, path, "policy node")
    path = f"{path}/access-list"
    names: list[str] = []
    for index, entry in enumerate(_list(lists.get("access-list", []), path, MAX_ACLS)):
        where = _ptr(path, index)
        reference = _obj(entry, where)
        _only(reference, {"name"}, where, "policy node")
        name = _string(_require(reference, "name", where), f"{where}/name", MAX_NAME)
        if name in names:
            raise MudInvalid(f"ACL {name!r} is referenced twice", path=f"{where}/name")
        if name not in acls:
            raise MudInvalid(f"references ACL {name!r}, which the file does not define", path=f"{where}/name")
        names.append(name)
    return tuple(names)


# --- ACLs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Acl:
    """One ACL as found in the file; its ACEs are interpreted once its direction is known."""

    name: str
    family: Family
    path: str
    entries: tuple[object, ...]

    def aces(self, direction: Direction) -> Iterator[Ace]:
        names: set[str] = set()
        for index, entry in enumerate(self.entries):
            ace = _ace(entry, f"{self.path}/aces/ace/{index}", self, direction)
            if ace.name in names:
                raise MudInvalid(f"ACE {ace.name!r} appears twice", path=f"{self.path}/aces/ace/{index}/name")
            names.add(ace.name)
            yield ace


def _acls_by_name(root: dict[str, object]) -> dict[str, _Acl]:
    present = [key for key in _ACL_ROOTS if key in root]
    if len(present) > 1:
        raise MudInvalid(f"both {_ACL_ROOTS[0]!r} and {_ACL_ROOTS[1]!r} are present; use one", path="")
    if not present:
        return {}
    path = _ptr("", present[0])
    container = _obj(root[present[0]], path)
    _only(container, {"acl"}, path, "ACL container node")
    acls: dict[str, _Acl] = {}
    total = 0
    for index, entry in enumerate(_list(container.get("acl", []), f"{path}/acl", MAX_ACLS)):
        acl = _acl(entry, f"{path}/acl/{index}")
        if acl.name in acls:
            raise MudInvalid(f"ACL {acl.name!r} is defined twice", path=f"{acl.path}/name")
        total += len(acl.entries)
        if total > MAX_ACES:
            raise MudTooLarge(f"more than {MAX_ACES} ACEs in the file", hint="split the device's policy")
        acls[acl.name] = acl
    return acls


def _acl(value: object, path: str) -> _Acl:
    acl = _obj(value, path)
    _only(acl, {"name", "type", "aces"}, path, "ACL node")
    name = _name(_require(acl, "name", path), f"{path}/name")
    family = _acl_type(_require(acl, "type", path), f"{path}/type")
    entries: list[object] = []
    if "aces" in acl:
        aces = _obj(acl["aces"], f"{path}/aces")
        _only(aces, {"ace"}, f"{path}/aces", "ACL node")
        entries = _list(aces.get("ace", []), f"{path}/aces/ace", MAX_ACES)
    return _Acl(name, family, path, tuple(entries))


def _name(value: object, path: str) -> str:
    name = _string(value, path, MAX_NAME)
    if not name:
        raise MudInvalid("empty name", path=path)
    return name


def _acl_type(value: object, path: str) -> Family:
    text = _string(value, path, MAX_TEXT)
    short = text.removeprefix(_ACL_PREFIX)
    if short in _MIXED_ACL_TYPES:
        raise MudInvalid(f"{text!r} ACLs are not supported; split them into eth and ip ACLs", path=path)
    if short not in _ACL_TYPES:
        raise MudInvalid(f"unknown ACL type {text!r} (RFC 8519 section 4.1)", path=path)
    return _ACL_TYPES[short]


# --- ACEs -------------------------------------------------------------------------------------

# MUDgee writes an eth match into IPv4 ACEs (DHCP to ff:ff:ff:ff:ff:ff) and abstractions into eth
# ACEs (EAPOL to local-networks); both are kept as constraints on the ACE rather than refused.
_MATCHES = {
    Family.IPV4: frozenset({"ipv4", "tcp", "udp", "icmp", "eth", _MUD}),
    Family.IPV6: frozenset({"ipv6", "tcp", "udp", "icmp", "eth", _MUD}),
    Family.ETH: frozenset({"eth", _MUD}),
}
_IP_ETHERTYPES = {Family.IPV4: 0x0800, Family.IPV6: 0x86DD}  # IEEE 802 numbers for IPv4 and IPv6
_KNOWN_MATCHES = frozenset({"eth", "ipv4", "ipv6", "tcp", "udp", "icmp", _MUD})


@dataclass(frozen=True, slots=True)
class _Transport:
    """What the tcp/udp/icmp container of one ACE says."""

    protocol: int | None = None
    remote_ports: tuple[PortRange, ...] = ANY_PORT
    device_ports: tuple[PortRange, ...] = ANY_PORT
    initiated: Direction | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None


def _ace(value: object, path: str, acl: _Acl, direction: Direction) -> Ace:
    ace = _obj(value, path)
    _only(ace, {"name", "matches", "actions"}, path, "ACE node")
    name = _name(_require(ace, "name", path), f"{path}/name")
    _actions(_require(ace, "actions", path), f"{path}/actions")
    matches = _obj(ace.get("matches", {}), f"{path}/matches")
    _check_match_keys(matches, f"{path}/matches", acl.family)
    ethertype, mac = _eth(matches.get("eth", {}), f"{path}/matches/eth", acl.family, direction)
    abstractions = _abstractions(matches.get(_MUD, {}), f"{path}/matches/{_MUD}")
    if acl.family is Family.ETH:
        return Ace(
            name,
            acl.name,
            direction,
            acl.family,
            peers=abstractions,
            ethertype=ethertype,
            destination_mac=mac,
        )
    ip_key = "ipv4" if acl.family is Family.IPV4 else "ipv6"
    protocol, peers = _ip(matches.get(ip_key, {}), f"{path}/matches/{ip_key}", acl.family, direction)
    transport = _transport(matches, f"{path}/matches", acl.family, direction, protocol)
    return Ace(
        name,
        acl.name,
        direction,
        acl.family,
        protocol=transport.protocol,
        peers=(*peers, *abstractions),
        remote_ports=transport.remote_ports,
        device_ports=transport.device_ports,
        initiated=transport.initiated,
        icmp_type=transport.icmp_type,
        icmp_code=transport.icmp_code,
        ethertype=ethertype,
        destination_mac=mac,
    )


def _actions(value: object, path: str) -> None:
    actions = _obj(value, path)
    _only(actions, {"forwarding", "logging"}, path, "action")
    forwarding = _string(_require(actions, "forwarding", path), f"{path}/forwarding", MAX_TEXT)
    if forwarding.removeprefix(_ACL_PREFIX) != "accept":
        raise MudInvalid(
            f"forwarding {forwarding!r} is not supported: MUD policies here are allow-lists with a "
            "default deny, so every ACE must accept",
            path=f"{path}/forwarding",
        )
    if "logging" in actions:  # RFC 8519 section 4.1: how to log, never what passes
        _string(actions["logging"], f"{path}/logging", MAX_TEXT)


def _check_match_keys(matches: dict[str, object], path: str, family: Family) -> None:
    for key in matches:
        if key not in _KNOWN_MATCHES:
            raise MudInvalid(f"unknown or unsupported match {key!r}", path=_ptr(path, key))
        if key not in _MATCHES[family]:
            raise MudInvalid(f"a {key!r} match cannot be in an {family} ACL", path=_ptr(path, key))
    layer4 = [key for key in ("tcp", "udp", "icmp") if key in matches]
    if len(layer4) > 1:
        raise MudInvalid(f"{layer4[0]!r} and {layer4[1]!r} cannot both match (RFC 8519 l4 choice)", path=path)


def _own_address(path: str) -> MudInvalid:
    return MudInvalid("constraints on the device's own address are not supported", path=path)


def _ip(value: object, path: str, family: Family, direction: Direction) -> tuple[int | None, list[Peer]]:
    """Protocol and remote-address peers of an ipv4/ipv6 match (RFC 8519, RFC 8520 section 8)."""
    container = _obj(value, path)
    v = "ipv4" if family is Family.IPV4 else "ipv6"
    remote, device = (
        ("destination", "source") if direction is Direction.FROM_DEVICE else ("source", "destination")
    )
    remote_dns, device_dns = ("dst", "src") if direction is Direction.FROM_DEVICE else ("src", "dst")
    remote_network, device_network = f"{remote}-{v}-network", f"{device}-{v}-network"
    remote_name, device_name = f"ietf-acldns:{remote_dns}-dnsname", f"ietf-acldns:{device_dns}-dnsname"
    _only(
        container, {"protocol", remote_network, device_network, remote_name, device_name}, path, f"{v} field"
    )
    for key in (device_network, device_name):
        if key in container:
            raise _own_address(_ptr(path, key))
    if remote_network in container and remote_name in container:
        raise MudInvalid(f"{remote_network!r} and {remote_name!r} cannot both match (one choice)", path=path)
    peers: list[Peer] = []
    if remote_network in container:
        peers.append(_network(container[remote_network], _ptr(path, remote_network), family))
    if remote_name in container:
        peers.append(Peer(PeerKind.DNS_NAME, _host(container[remote_name], _ptr(path, remote_name))))
    protocol = _int(container["protocol"], f"{path}/protocol", 0, 255) if "protocol" in container else None
    return protocol, peers


def _transport(
    matches: dict[str, object], path: str, family: Family, direction: Direction, protocol: int | None
) -> _Transport:
    ip_key = "ipv4" if family is Family.IPV4 else "ipv6"
    for key, number in (*_IP_PROTOCOLS.items(), ("icmp", _ICMP_PROTOCOL[family])):
        if key in matches and protocol not in {None, number}:
            raise MudInvalid(
                f"protocol {protocol} contradicts the {key!r} match (needs {number})",
                path=f"{path}/{ip_key}/protocol",
            )
    if "icmp" in matches:
        icmp_type, icmp_code = _icmp(matches["icmp"], f"{path}/icmp")
        return _Transport(_ICMP_PROTOCOL[family], icmp_type=icmp_type, icmp_code=icmp_code)
    for key, number in _IP_PROTOCOLS.items():
        if key in matches:
            return _ports(matches[key], f"{path}/{key}", key, number, direction)
    return _Transport(protocol)


def _ports(value: object, path: str, key: str, protocol: int, direction: Direction) -> _Transport:
    container = _obj(value, path)
    if key == "udp" and "ietf-mud:direction-initiated" in container:
        raise MudInvalid(
            "direction-initiated is only defined for tcp (RFC 8520 section 4.8)",
            path=f"{path}/ietf-mud:direction-initiated",
        )
    allowed = {"source-port", "destination-port"} | (
        {"ietf-mud:direction-initiated"} if key == "tcp" else set()
    )
    _only(container, allowed, path, f"{key} field")
    source = (
        _port_ranges(container["source-port"], f"{path}/source-port")
        if "source-port" in container
        else ANY_PORT
    )
    destination = (
        _port_ranges(container["destination-port"], f"{path}/destination-port")
        if "destination-port" in container
        else ANY_PORT
    )
    initiated = None
    if "ietf-mud:direction-initiated" in container:
        initiated = _direction(
            container["ietf-mud:direction-initiated"], f"{path}/ietf-mud:direction-initiated"
        )
    if direction is Direction.FROM_DEVICE:
        return _Transport(protocol, remote_ports=destination, device_ports=source, initiated=initiated)
    return _Transport(protocol, remote_ports=source, device_ports=destination, initiated=initiated)


def _direction(value: object, path: str) -> Direction:
    text = _string(value, path, MAX_TEXT)
    try:
        return Direction(text)
    except ValueError as exc:
        raise MudInvalid(f"{text!r} is neither 'from-device' nor 'to-device'", path=path) from exc


def _port_ranges(value: object, path: str) -> tuple[PortRange, ...]:
    """RFC 8519 port-range-or-operator: a lower/upper range, or an operator and a port."""
    spec = _obj(value, path)
    if "lower-port" in spec or "upper-port" in spec:
        _only(spec, {"lower-port", "upper-port"}, path, "port field")
        low = _int(_require(spec, "lower-port", path), f"{path}/lower-port", 0, 65535)
        high = _int(_require(spec, "upper-port", path), f"{path}/upper-port", 0, 65535)
        if low > high:
            raise MudInvalid(f"lower-port {low} is above upper-port {high}", path=path)
        return (PortRange(low, high),)
    _only(spec, {"operator", "port"}, path, "port field")
    port = _int(_require(spec, "port", path), f"{path}/port", 0, 65535)
    operator = _string(spec.get("operator", "eq"), f"{path}/operator", MAX_TEXT)  # YANG default eq
    if operator == "eq":
        return (PortRange(port, port),)
    if operator == "lte":
        return (PortRange(0, port),)
    if operator == "gte":
        return (PortRange(port, 65535),)
    if operator == "neq":
        below = (PortRange(0, port - 1),) if port > 0 else ()
        return below + ((PortRange(port + 1, 65535),) if port < 65535 else ())
    raise MudInvalid(f"unknown port operator {operator!r} (eq, lte, gte or neq)", path=f"{path}/operator")


def _icmp(value: object, path: str) -> tuple[int | None, int | None]:
    container = _obj(value, path)
    _only(container, {"type", "code"}, path, "icmp field")
    icmp_type = _int(container["type"], f"{path}/type", 0, 255) if "type" in container else None
    icmp_code = _int(container["code"], f"{path}/code", 0, 255) if "code" in container else None
    return icmp_type, icmp_code


def _eth(value: object, path: str, family: Family, direction: Direction) -> tuple[int | None, str | None]:
    container = _obj(value, path)
    _only(container, {"ethertype", "destination-mac-address"}, path, "eth field")
    ethertype = None
    if "ethertype" in container:
        ethertype = _ethertype(container["ethertype"], f"{path}/ethertype")
        if family is not Family.ETH and ethertype != _IP_ETHERTYPES[family]:
            raise MudInvalid(
                f"EtherType {ethertype:#06x} contradicts an {family} ACL ({_IP_ETHERTYPES[family]:#06x})",
                path=f"{path}/ethertype",
            )
    mac = None
    if "destination-mac-address" in container:
        where = f"{path}/destination-mac-address"
        if direction is Direction.TO_DEVICE:
            raise _own_address(where)
        mac = _string(container["destination-mac-address"], where, 17).lower()
        if not _MAC.fullmatch(mac):
            raise MudInvalid(f"{mac!r} is not a MAC address", path=where)
    return ethertype, mac


def _ethertype(value: object, path: str) -> int:
    """A 16-bit EtherType: a number, or the hex string (``"0x0800"``) MUD generators write."""
    if isinstance(value, str):
        if not _ETHERTYPE.fullmatch(value.lower()):
            raise MudInvalid(f"{value!r} is not an EtherType like '0x0800'", path=path)
        return int(value, 16)
    return _int(value, path, 0, 65535)


def _abstractions(value: object, path: str) -> tuple[Peer, ...]:
    """RFC 8520 section 4.1-4.7: the abstract peers of the ``ietf-mud:mud`` match container."""
    container = _obj(value, path)
    peers: list[Peer] = []
    for key, item in container.items():
        where = _ptr(path, key)
        if key == "manufacturer":
            peers.append(Peer(PeerKind.MANUFACTURER, _host(item, where)))
        elif key == "model":
            peers.append(Peer(PeerKind.MODEL, _https_url(item, where)))
        elif key == "controller":
            peers.append(Peer(PeerKind.CONTROLLER, _uri(item, where)))
        elif key in _EMPTY_ABSTRACTIONS:
            _empty(item, where)
            peers.append(Peer(_EMPTY_ABSTRACTIONS[key]))
        else:
            raise MudInvalid(f"unknown MUD abstraction {key!r}", path=where)
    return tuple(peers)


_EMPTY_ABSTRACTIONS = {
    "same-manufacturer": PeerKind.SAME_MANUFACTURER,
    "local-networks": PeerKind.LOCAL_NETWORKS,
    "my-controller": PeerKind.MY_CONTROLLER,
}
