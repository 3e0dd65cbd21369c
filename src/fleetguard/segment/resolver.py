"""The addresses of the DNS names MUD profiles allow, kept current.

RFC 8520 section 8.1 lets a profile name its peers by DNS name; a firewall needs addresses. A
:class:`Resolver` answers one name with its A and AAAA addresses and the shortest TTL among them;
:class:`NameTable` remembers the answers and says which names are due again, so that the element
updates that follow DNS churn are small and come when the records expire, not on every packet.
A failed lookup keeps the last good answer until it expires plus a grace period, then empties the
name: a name that cannot be resolved allows nothing (fail closed), it never allows "any".
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import dns.exception
import dns.rdatatype
import dns.resolver

from fleetguard.segment.compiler import IpAddress

__all__ = ["DnsResolver", "NameTable", "Resolution", "Resolver", "StaticResolver"]

# Bounds: a name with more addresses than this keeps the first ones; TTLs are clamped so a zero TTL
# cannot make us re-resolve in a loop and a week-long one still gets checked.
MAX_ADDRESSES = 64
MIN_TTL_S = 5
MAX_TTL_S = 3600
# How long a name keeps its last addresses when the resolver fails.
GRACE_S = 300


@dataclass(frozen=True, slots=True)
class Resolution:
    """A name's addresses (sorted) and how long they may be used."""

    addresses: tuple[IpAddress, ...]
    ttl_s: int


class Resolver(Protocol):
    """Looks up one DNS name; raises :class:`LookupError` when it cannot."""

    def resolve(self, name: str) -> Resolution:
        """Return the A and AAAA addresses of ``name``."""


@dataclass(frozen=True, slots=True)
class StaticResolver:
    """Fixed answers (tests, and air-gapped sites that pin their cloud endpoints)."""

    answers: Mapping[str, Sequence[str]]
    ttl_s: int = MAX_TTL_S

    def resolve(self, name: str) -> Resolution:
        """Return the configured addresses; a name not configured is a :class:`LookupError`."""
        if name not in self.answers:
            raise LookupError(f"{name}: no configured addresses")
        return Resolution(_sorted(ipaddress.ip_address(a) for a in self.answers[name]), self.ttl_s)


@dataclass(slots=True)
class DnsResolver:
    """A DNS stub resolver (dnspython); ``nameservers`` default to the system's."""

    nameservers: Sequence[str] = ()
    port: int = 53
    timeout_s: float = 2.0
    _resolver: dns.resolver.Resolver = field(init=False)

    def __post_init__(self) -> None:
        self._resolver = dns.resolver.Resolver(configure=not self.nameservers)
        if self.nameservers:
            self._resolver.nameservers = list(self.nameservers)
        self._resolver.port = self.port
        self._resolver.lifetime = self.timeout_s

    def resolve(self, name: str) -> Resolution:
        """Ask for A and AAAA; a name with neither is a :class:`LookupError`."""
        addresses: list[IpAddress] = []
        ttls: list[int] = []
        failures: list[str] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = self._resolver.resolve(name, rdtype, search=False)
            except dns.resolver.NoAnswer:
                continue
            except dns.exception.DNSException as exc:
                failures.append(f"{rdtype.name}: {type(exc).__name__}")
                continue
            ttls.append(int(answer.rrset.ttl) if answer.rrset is not None else MIN_TTL_S)
            addresses.extend(ipaddress.ip_address(record.address) for record in answer)
        if not addresses:
            raise LookupError(f"{name}: no addresses ({', '.join(failures) or 'no A or AAAA records'})")
        return Resolution(_sorted(addresses), min(ttls))


def _sorted(addresses: Iterable[IpAddress]) -> tuple[IpAddress, ...]:
    unique = sorted(set(addresses), key=lambda a: (a.version, int(a)))
    return tuple(unique[:MAX_ADDRESSES])


@dataclass(slots=True)
class _Entry:
    addresses: tuple[IpAddress, ...]
    expires: float
    good_until: float


class NameTable:
    """The last good answer for each name, and when each is due to be asked again."""

    def __init__(self, resolver: Resolver, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._resolver = resolver
        self._entries: dict[str, _Entry] = {}
        self._monotonic = monotonic

    def addresses(self) -> dict[str, tuple[IpAddress, ...]]:
        """Every name's current addresses (empty for a name that could not be resolved)."""
        return {name: entry.addresses for name, entry in self._entries.items()}

    def refresh(self, names: Iterable[str], *, force: bool = False) -> set[str]:
        """Resolve the names that are due (all with ``force``); return those whose addresses changed.

        Names no longer wanted are forgotten (and count as changed).
        """
        wanted = set(names)
        changed = {name for name in self._entries if name not in wanted}
        for name in changed:
            del self._entries[name]
        now = self._monotonic()
        for name in sorted(wanted):
            entry = self._entries.get(name)
            if entry is not None and not force and now < entry.expires:
                continue
            before = entry.addresses if entry is not None else None
            self._entries[name] = self._ask(name, entry, now)
            if self._entries[name].addresses != before:
                changed.add(name)
        return changed

    def _ask(self, name: str, entry: _Entry | None, now: float) -> _Entry:
        try:
            answer = self._resolver.resolve(name)
        except LookupError:
            if entry is not None and now < entry.good_until:
                # Retried soon, and never later than the end of the grace period.
                return _Entry(entry.addresses, min(now + MIN_TTL_S, entry.good_until), entry.good_until)
            return _Entry((), now + MIN_TTL_S, now)
        ttl = min(max(answer.ttl_s, MIN_TTL_S), MAX_TTL_S)
        return _Entry(answer.addresses, now + ttl, now + ttl + GRACE_S)
