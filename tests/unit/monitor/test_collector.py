"""The UDP flow collector end to end on loopback: datagrams in, flow records out through the callback."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from fleetguard.monitor.collector import FlowCollector
from fleetguard.monitor.errors import MonitorError
from fleetguard.monitor.model import FlowRecord

NOW = int(time.time())
LOOPBACK, OTHER = "127.0.0.1", "127.0.0.2"  # Linux routes all of 127.0.0.0/8 to loopback


def ipfix_datagram(count: int, *, domain: int = 1) -> bytes:
    """An IPFIX message (RFC 7011) with a template and ``count`` records of it."""
    template = struct.pack("!HHHHHHHHHHHH", 256, 5, 8, 4, 12, 4, 7, 2, 11, 2, 4, 1)
    records = b"".join(
        struct.pack(
            "!4s4sHHB", bytes([10, 0, 0, index % 250 + 1]), bytes([10, 0, 1, 1]), 40000 + index, 443, 6
        )
        for index in range(count)
    )
    sets = (
        struct.pack("!HH", 2, 4 + len(template))
        + template
        + struct.pack("!HH", 256, 4 + len(records))
        + records
    )
    return struct.pack("!HHIII", 10, 16 + len(sets), NOW, 1, domain) + sets


@pytest.fixture
def sender() -> Iterator[Callable[[str], socket.socket]]:
    sockets: list[socket.socket] = []

    def bound(address: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, 0))
        sockets.append(sock)
        return sock

    yield bound
    for sock in sockets:
        sock.close()


class Sink:
    def __init__(self) -> None:
        self.records: list[FlowRecord] = []
        self.batches = 0
        self._lock = threading.Lock()

    def __call__(self, batch: Sequence[FlowRecord]) -> None:
        with self._lock:
            self.records.extend(batch)
            self.batches += 1

    def wait_for(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.records) < count and time.monotonic() < deadline:
            time.sleep(0.01)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_records_arrive_through_the_callback_in_batches(sender: Callable[[str], socket.socket]) -> None:
    sink = Sink()
    with FlowCollector(sink, allowed_exporters=[LOOPBACK], host=LOOPBACK, port=0, batch_size=16) as collector:
        sock = sender(LOOPBACK)
        for domain in range(4):
            sock.sendto(ipfix_datagram(20, domain=domain), collector.address)
        sink.wait_for(80)
        counters = collector.counters()
    assert len(sink.records) == 80
    assert sink.batches >= 5  # at most 16 records a batch
    first = sink.records[0]
    assert (first.src, first.dst, first.sport, first.dport, first.proto, first.source) == (
        "10.0.0.1", "10.0.1.1", 40000, 443, "tcp", "ipfix",
    )  # fmt: skip
    assert (counters.datagrams, counters.records, counters.delivered, counters.not_allowed) == (4, 80, 80, 0)
    assert counters.queue_drops == 0


def test_a_datagram_from_an_exporter_not_allowed_is_dropped_and_counted(
    sender: Callable[[str], socket.socket],
) -> None:
    sink = Sink()
    with FlowCollector(sink, allowed_exporters=[LOOPBACK], host=LOOPBACK, port=0) as collector:
        sender(OTHER).sendto(ipfix_datagram(5), collector.address)
        wait_until(lambda: collector.counters().not_allowed == 1)
        sender(LOOPBACK).sendto(ipfix_datagram(5), collector.address)
        sink.wait_for(5)
        counters = collector.counters()
    assert (counters.not_allowed, counters.datagrams, len(sink.records)) == (1, 1, 5)
    assert {record.src for record in sink.records} <= {f"10.0.0.{n}" for n in range(1, 6)}


def test_malformed_datagrams_are_counted_by_reason(sender: Callable[[str], socket.socket]) -> None:
    sink = Sink()
    with FlowCollector(sink, allowed_exporters=[LOOPBACK], host=LOOPBACK, port=0) as collector:
        sock = sender(LOOPBACK)
        sock.sendto(b"\x00\x0a\x00", collector.address)
        sock.sendto(b"garbage", collector.address)
        wait_until(lambda: collector.counters().datagrams == 2)
        counters = collector.counters()
    assert counters.skipped == {"short_header": 1, "unknown_version": 1}
    assert sink.records == []


def test_a_full_queue_drops_records_and_counts_them(sender: Callable[[str], socket.socket]) -> None:
    sink = Sink()
    with FlowCollector(
        sink, allowed_exporters=[LOOPBACK], host=LOOPBACK, port=0, queue_limit=10
    ) as collector:
        sock = sender(LOOPBACK)
        sock.sendto(ipfix_datagram(25), collector.address)  # more than the whole queue holds
        sock.sendto(ipfix_datagram(5), collector.address)
        sink.wait_for(5)
        wait_until(lambda: collector.counters().datagrams == 2)
        counters = collector.counters()
    assert (counters.queue_drops, counters.records, len(sink.records)) == (25, 5, 5)


def test_a_failing_callback_stops_the_collector_and_stop_reports_it(
    sender: Callable[[str], socket.socket],
) -> None:
    def fail(_: Sequence[FlowRecord]) -> None:
        raise RuntimeError("detector down")

    collector = FlowCollector(fail, allowed_exporters=[LOOPBACK], host=LOOPBACK, port=0, flush_interval=0.01)
    collector.start()
    sender(LOOPBACK).sendto(ipfix_datagram(3), collector.address)
    wait_until(lambda: collector.counters().records == 3)
    with pytest.raises(MonitorError, match="detector down"):
        collector.stop()
    assert collector.counters().delivered == 0


def test_an_empty_allow_list_is_refused() -> None:
    with pytest.raises(ValueError, match="allowed_exporters is empty"):
        FlowCollector(Sink(), allowed_exporters=[])


def test_start_twice_and_address_before_start_are_refused() -> None:
    collector = FlowCollector(Sink(), allowed_exporters=[LOOPBACK], host=LOOPBACK, port=0)
    with pytest.raises(MonitorError, match="not started"):
        _ = collector.address
    with collector:
        with pytest.raises(MonitorError, match="already started"):
            collector.start()
        assert collector.receive_buffer > 0
