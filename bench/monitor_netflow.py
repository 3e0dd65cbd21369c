"""Benchmark: NetFlow/IPFIX records/s accepted by the collector without loss (issue 9).

A separate sending process (multiprocessing, spawn) sends IPFIX and NetFlow v9 datagrams of
``--records`` records each (alternating; each exporter resends its template every 64 datagrams, as
exporters do) over loopback UDP to a :class:`~fleetguard.monitor.collector.FlowCollector`, paced
at a target rate for ``--seconds``. Loss is what the callback did not receive: kernel drops (the
socket buffer overflowed), queue drops and skipped records alike.

Two figures, each the median of ``--runs``:

* full speed: the sender blasts as fast as it can; accepted/sent and records/s accepted;
* zero loss: the rate is stepped up by ``--step`` from ``--start`` until a step loses records;
  the highest rate of a step with no loss at all.

Run: ``.venv/bin/python bench/monitor_netflow.py [--records 25] [--seconds 3] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from fleetguard.monitor.collector import FlowCollector
from fleetguard.monitor.model import FlowRecord

LOOPBACK = "127.0.0.1"
_TEMPLATE_EVERY = 64
# sourceIPv4Address destinationIPv4Address sourceTransportPort destinationTransportPort protocolIdentifier
# tcpControlBits octetDeltaCount packetDeltaCount + v9 FIRST/LAST_SWITCHED or IPFIX flowStart/EndMilliseconds
_V9_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (1, 4), (2, 4), (22, 4), (21, 4)]
_IPFIX_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 2), (1, 8), (2, 8), (152, 8), (153, 8)]


def _set(set_id: int, body: bytes) -> bytes:
    return struct.pack("!HH", set_id, 4 + len(body)) + body


def _template(template_id: int, fields: list[tuple[int, int]]) -> bytes:
    return struct.pack("!HH", template_id, len(fields)) + b"".join(
        struct.pack("!HH", *field) for field in fields
    )


def _v9(records: int, *, with_template: bool, sequence: int) -> bytes:
    now, uptime = int(time.time()), 3_600_000
    body = b"".join(
        struct.pack("!4s4sHHBBIIII", bytes([10, 0, n // 250, n % 250 + 1]), b"\xc0\x00\x02\x0a", 40000 + n,
                    443, 6, 0x1B, 1500 + n, 3, uptime - 5000, uptime - 1000)
        for n in range(records)
    )  # fmt: skip
    sets = (_set(0, _template(256, _V9_FIELDS)) if with_template else b"") + _set(256, body)
    return struct.pack("!HHIIII", 9, records, uptime, now, sequence, 1) + sets


def _ipfix(records: int, *, with_template: bool, sequence: int) -> bytes:
    now = int(time.time())
    body = b"".join(
        struct.pack("!4s4sHHBHQQQQ", bytes([10, 1, n // 250, n % 250 + 1]), b"\xc0\x00\x02\x0b", 50000 + n,
                    8883, 6, 0x1B, 900 + n, 2, now * 1000 - 4000, now * 1000 - 500)
        for n in range(records)
    )  # fmt: skip
    sets = (_set(2, _template(300, _IPFIX_FIELDS)) if with_template else b"") + _set(300, body)
    return struct.pack("!HHIII", 10, 16 + len(sets), now, sequence, 1) + sets


def _send(port: int, records: int, rate: float, seconds: float, sent: multiprocessing.Queue[int]) -> None:
    """The sending process: paced datagrams (rate 0: as fast as possible); puts the records sent."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    datagrams = [
        [_v9(records, with_template=True, sequence=0), _v9(records, with_template=False, sequence=0)],
        [_ipfix(records, with_template=True, sequence=0), _ipfix(records, with_template=False, sequence=0)],
    ]
    target = (LOOPBACK, port)
    total, count, start = 0, 0, time.perf_counter()
    interval = records / rate if rate else 0.0
    while (elapsed := time.perf_counter() - start) < seconds:
        if interval and count * interval > elapsed:
            time.sleep(min(count * interval - elapsed, 0.001))
            continue
        kind = datagrams[count % 2]
        sock.sendto(kind[0] if count // 2 % _TEMPLATE_EVERY == 0 else kind[1], target)
        count += 1
        total += records
    sock.close()
    sent.put(total)


@dataclass(frozen=True, slots=True)
class Trial:
    rate: float
    sent: int
    accepted: int
    seconds: float  # from the sender's start to the last record delivered

    @property
    def lost(self) -> int:
        return self.sent - self.accepted


class _Counter:
    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, batch: Sequence[FlowRecord]) -> None:
        with self._lock:
            self.count += len(batch)


def _trial(records: int, rate: float, seconds: float) -> Trial:
    counter = _Counter()
    context = multiprocessing.get_context("spawn")
    sent: multiprocessing.Queue[int] = context.Queue()
    with FlowCollector(counter, allowed_exporters=[LOOPBACK], host=LOOPBACK, port=0) as collector:
        sender = context.Process(target=_send, args=(collector.address[1], records, rate, seconds, sent))
        sender.start()
        total = sent.get(timeout=seconds + 60)
        began = time.perf_counter() - seconds  # the sender's start, near enough (spawn time excluded)
        sender.join()
        finished, last = time.perf_counter(), -1
        while counter.count < total and counter.count != last:  # until delivery stops progressing
            last = counter.count
            time.sleep(0.3)
            if counter.count != last:
                finished = time.perf_counter()
        if counter.count >= total:
            finished = time.perf_counter()
    return Trial(rate, total, counter.count, finished - began)


def _zero_loss_rate(records: int, seconds: float, start: float, step: float) -> float:
    best, rate = 0.0, start
    while True:
        trial = _trial(records, rate, seconds)
        print(f"    {rate:>10,.0f} records/s target: sent {trial.sent:,}, lost {trial.lost:,}")
        if trial.lost:
            return best
        best = trial.sent / seconds  # the rate sustained for the whole trial
        rate *= step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=25, help="records per datagram")
    parser.add_argument("--seconds", type=float, default=3.0, help="sending time of each trial")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--start", type=float, default=50_000, help="first target rate, records/s")
    parser.add_argument("--step", type=float, default=1.2, help="rate factor between steps")
    args = parser.parse_args()

    full = [_trial(args.records, 0, args.seconds) for _ in range(args.runs)]
    for trial in full:  # accepted over the time to deliver them: the collector's sustained rate
        share = trial.accepted / trial.sent
        took = trial.seconds
        print(f"  full speed: sent {trial.sent:,}, accepted {trial.accepted:,} ({share:.1%}) in {took:.1f} s")
    rates = []
    for run in range(args.runs):
        print(f"  run {run + 1}: stepping the rate")
        rates.append(_zero_loss_rate(args.records, args.seconds, args.start, args.step))
    accepted = statistics.median(trial.accepted / trial.seconds for trial in full)  # sustained
    ratio = statistics.median(trial.accepted / trial.sent for trial in full)
    print(
        f"full speed: {accepted:,.0f} records/s accepted, {ratio:.1%} of those sent (median of {args.runs})"
    )
    zero_loss = statistics.median(rates)
    print(f"zero loss: {zero_loss:,.0f} records/s (median of {args.runs}; {args.records} records/datagram)")


if __name__ == "__main__":
    main()
