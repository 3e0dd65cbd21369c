"""DNS names become addresses: TTLs bounded, failures fail closed after a grace period, real DNS."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from fleetguard.segment.compiler import IpAddress
from fleetguard.segment.resolver import GRACE_S, DnsResolver, NameTable, Resolution, StaticResolver

CLOUD = "cloud.example.com"
A1, A2 = ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("198.51.100.7")
AAAA = ipaddress.ip_address("2001:db8::10")


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class ScriptedResolver:
    """Answers from ``answers`` (a Resolution, or None to fail) and records every question."""

    answers: dict[str, Resolution | None]
    asked: list[str] = field(default_factory=list)

    def resolve(self, name: str) -> Resolution:
        self.asked.append(name)
        answer = self.answers.get(name)
        if answer is None:
            raise LookupError(f"{name}: no addresses")
        return answer


@pytest.fixture
def clock() -> Clock:
    return Clock()


def table_with(answers: dict[str, Resolution | None], clock: Clock) -> tuple[NameTable, ScriptedResolver]:
    resolver = ScriptedResolver(answers)
    return NameTable(resolver, monotonic=clock), resolver


# --- NameTable ------------------------------------------------------------------------------------


def test_names_are_resolved_once_and_report_what_changed(clock: Clock) -> None:
    table, resolver = table_with(
        {CLOUD: Resolution((A1, A2), 60), "ntp.example.org": Resolution((AAAA,), 60)}, clock
    )

    assert table.refresh([CLOUD, "ntp.example.org"]) == {CLOUD, "ntp.example.org"}
    assert table.addresses() == {CLOUD: (A1, A2), "ntp.example.org": (AAAA,)}
    assert resolver.asked == [CLOUD, "ntp.example.org"]

    clock.now += 59.9
    assert table.refresh([CLOUD, "ntp.example.org"]) == set()
    assert resolver.asked == [CLOUD, "ntp.example.org"]  # not due yet: nobody was asked

    clock.now += 0.1
    resolver.answers[CLOUD] = Resolution((A2,), 60)
    assert table.refresh([CLOUD, "ntp.example.org"]) == {CLOUD}  # the same answer is no change
    assert resolver.asked == [CLOUD, "ntp.example.org", CLOUD, "ntp.example.org"]
    assert table.addresses() == {CLOUD: (A2,), "ntp.example.org": (AAAA,)}


@pytest.mark.parametrize(
    ("ttl", "kept_for"),
    [(0, 5), (4, 5), (5, 5), (300, 300), (3600, 3600), (86400, 3600)],
)
def test_the_ttl_is_clamped(clock: Clock, ttl: int, kept_for: int) -> None:
    table, resolver = table_with({CLOUD: Resolution((A1,), ttl)}, clock)
    table.refresh([CLOUD])

    clock.now += kept_for - 0.01
    table.refresh([CLOUD])
    assert resolver.asked == [CLOUD]

    clock.now += 0.01
    table.refresh([CLOUD])
    assert resolver.asked == [CLOUD, CLOUD]


def test_force_asks_again_before_expiry(clock: Clock) -> None:
    table, resolver = table_with({CLOUD: Resolution((A1,), 3600)}, clock)
    table.refresh([CLOUD])
    resolver.answers[CLOUD] = Resolution((A1, A2), 3600)

    assert table.refresh([CLOUD], force=True) == {CLOUD}
    assert resolver.asked == [CLOUD, CLOUD]
    assert table.addresses() == {CLOUD: (A1, A2)}


def test_a_failing_lookup_keeps_the_last_answer_for_the_grace_period_then_empties(clock: Clock) -> None:
    table, resolver = table_with({CLOUD: Resolution((A1,), 60)}, clock)
    table.refresh([CLOUD])
    start = clock.now
    resolver.answers[CLOUD] = None

    clock.now = start + 60
    assert table.refresh([CLOUD]) == set()
    assert table.addresses() == {CLOUD: (A1,)}

    # While failing, the name is asked again every 5 s.
    clock.now = start + 64.9
    table.refresh([CLOUD])
    assert resolver.asked == [CLOUD, CLOUD]
    clock.now = start + 60 + GRACE_S - 5
    assert table.refresh([CLOUD]) == set()
    assert table.addresses() == {CLOUD: (A1,)}
    assert resolver.asked == [CLOUD, CLOUD, CLOUD]

    clock.now = start + 60 + GRACE_S
    assert table.refresh([CLOUD]) == {CLOUD}
    assert table.addresses() == {CLOUD: ()}


def test_the_retry_interval_does_not_extend_the_grace_period(clock: Clock) -> None:
    # "A failed lookup keeps the last good answer until it expires plus a grace period, then empties
    # the name": a retry scheduled 5 s after a failure must not keep the addresses past that time.
    table, resolver = table_with({CLOUD: Resolution((A1,), 60)}, clock)
    table.refresh([CLOUD])
    start = clock.now
    resolver.answers[CLOUD] = None
    clock.now = start + 60 + GRACE_S - 2
    table.refresh([CLOUD])

    clock.now = start + 60 + GRACE_S
    table.refresh([CLOUD])

    assert table.addresses() == {CLOUD: ()}


def test_a_name_that_never_resolved_is_empty(clock: Clock) -> None:
    table, resolver = table_with({}, clock)

    assert table.refresh(["gone.example.com"]) == {"gone.example.com"}
    assert table.addresses() == {"gone.example.com": ()}

    clock.now += 5
    assert table.refresh(["gone.example.com"]) == set()
    assert resolver.asked == ["gone.example.com", "gone.example.com"]


def test_a_recovered_name_gets_its_new_addresses(clock: Clock) -> None:
    table, resolver = table_with({}, clock)
    table.refresh([CLOUD])
    resolver.answers[CLOUD] = Resolution((A1,), 60)

    clock.now += 5
    assert table.refresh([CLOUD]) == {CLOUD}
    assert table.addresses() == {CLOUD: (A1,)}


def test_names_no_longer_wanted_are_forgotten_and_count_as_changed(clock: Clock) -> None:
    table, resolver = table_with(
        {CLOUD: Resolution((A1,), 60), "old.example.com": Resolution((A2,), 60)}, clock
    )
    table.refresh([CLOUD, "old.example.com"])

    assert table.refresh([CLOUD]) == {"old.example.com"}
    assert table.addresses() == {CLOUD: (A1,)}
    assert resolver.asked == [CLOUD, "old.example.com"]


# --- StaticResolver ---------------------------------------------------------------------------------


def test_the_static_resolver_answers_sorted_unique_addresses() -> None:
    resolver = StaticResolver({CLOUD: ["2001:db8::10", "198.51.100.7", "192.0.2.10", "192.0.2.10"]}, ttl_s=30)

    assert resolver.resolve(CLOUD) == Resolution((A1, A2, AAAA), 30)


def test_the_static_resolver_refuses_an_unknown_name() -> None:
    with pytest.raises(LookupError, match=r"^nope\.example: no configured addresses$"):
        StaticResolver({CLOUD: ["192.0.2.10"]}).resolve("nope.example")


# --- DnsResolver against a real (tiny) DNS server ----------------------------------------------------


@dataclass
class Zone:
    """name -> rdtype -> (ttl, addresses); names not here are NXDOMAIN."""

    records: Mapping[str, Mapping[str, tuple[int, tuple[str, ...]]]]
    silent: bool = False
    questions: list[tuple[str, str]] = field(default_factory=list)


def _answer(zone: Zone, wire: bytes) -> bytes | None:
    query = dns.message.from_wire(wire)
    question = query.question[0]
    name, rdtype = question.name.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(question.rdtype)
    zone.questions.append((name, rdtype))
    if zone.silent:
        return None
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    if name not in zone.records:
        response.set_rcode(dns.rcode.NXDOMAIN)
    elif rdtype in zone.records[name]:
        ttl, addresses = zone.records[name][rdtype]
        response.answer.append(dns.rrset.from_text(question.name, ttl, "IN", rdtype, *addresses))
    return response.to_wire()


@pytest.fixture
def zone() -> Iterator[tuple[Zone, int]]:
    records: dict[str, dict[str, tuple[int, tuple[str, ...]]]] = {
        CLOUD: {"A": (300, ("198.51.100.7", "192.0.2.10")), "AAAA": (120, ("2001:db8::10",))},
        "v4.example.com": {"A": (30, ("192.0.2.1",))},
        "empty.example.com": {},
    }
    served = Zone(records)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                wire, peer = server.recvfrom(4096)
            except TimeoutError:
                continue
            reply = _answer(served, wire)
            if reply is not None:
                server.sendto(reply, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield served, server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_a_and_aaaa_are_asked_and_the_shortest_ttl_wins(zone: tuple[Zone, int]) -> None:
    served, port = zone

    result = DnsResolver(nameservers=["127.0.0.1"], port=port).resolve(CLOUD)

    assert result == Resolution((A1, A2, AAAA), 120)
    assert served.questions == [(CLOUD, "A"), (CLOUD, "AAAA")]


def test_a_name_with_only_a_records(zone: tuple[Zone, int]) -> None:
    _, port = zone

    result = DnsResolver(nameservers=["127.0.0.1"], port=port).resolve("v4.example.com")

    assert result == Resolution((ipaddress.ip_address("192.0.2.1"),), 30)


def test_nxdomain_is_a_lookup_error(zone: tuple[Zone, int]) -> None:
    _, port = zone

    with pytest.raises(
        LookupError, match=r"^nx\.example\.com: no addresses \(A: NXDOMAIN, AAAA: NXDOMAIN\)$"
    ):
        DnsResolver(nameservers=["127.0.0.1"], port=port).resolve("nx.example.com")


def test_a_name_without_address_records_is_a_lookup_error(zone: tuple[Zone, int]) -> None:
    _, port = zone

    with pytest.raises(LookupError, match=r"^empty\.example\.com: no addresses \(no A or AAAA records\)$"):
        DnsResolver(nameservers=["127.0.0.1"], port=port).resolve("empty.example.com")


def test_a_server_that_does_not_answer_is_a_lookup_error(zone: tuple[Zone, int]) -> None:
    served, port = zone
    served.silent = True

    with pytest.raises(
        LookupError,
        match=r"^cloud\.example\.com: no addresses \(A: LifetimeTimeout, AAAA: LifetimeTimeout\)$",
    ):
        DnsResolver(nameservers=["127.0.0.1"], port=port, timeout_s=0.3).resolve(CLOUD)


def test_the_name_table_over_the_real_resolver(zone: tuple[Zone, int], clock: Clock) -> None:
    served, port = zone
    table = NameTable(DnsResolver(nameservers=["127.0.0.1"], port=port), monotonic=clock)

    assert table.refresh([CLOUD, "nx.example.com"]) == {CLOUD, "nx.example.com"}

    expected: dict[str, tuple[IpAddress, ...]] = {CLOUD: (A1, A2, AAAA), "nx.example.com": ()}
    assert table.addresses() == expected
    assert len(served.questions) == 4
