"""Benchmark: monitor capture parsing (issue 9), packets/s on one core, beside the goal.

Reads every ``*.pcap``/``*.pcapng`` under ``../shared/data/net`` (benign IoT devices and attacks)
with :func:`fleetguard.monitor.packets.read_packets`, ``--runs`` times, and prints per file and in
total the packets decoded, skipped, and packets/s (best run). Goal: >= 300,000 packets/s.
Run: ``.venv/bin/python bench/monitor_parse.py [--runs 5] [--data ../shared/data/net]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fleetguard.monitor.packets import read_packets

GOAL = 300_000
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "net"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    files = sorted(p for p in args.data.rglob("*") if p.suffix in (".pcap", ".pcapng"))
    if not files:
        raise SystemExit(f"no captures under {args.data}")
    total_packets, total_seconds = 0, 0.0
    for path in files:
        best = float("inf")
        for _ in range(args.runs):
            started = time.perf_counter()
            columns, skipped = read_packets(path)
            best = min(best, time.perf_counter() - started)
        total_packets += len(columns)
        total_seconds += best
        print(
            f"{path.parent.name}/{path.name:34} {len(columns):>8} packets  {skipped.total:>5} skipped"
            f"  {len(columns) / best:>12,.0f} packets/s"
        )
    rate = total_packets / total_seconds
    print(f"total {total_packets} packets in {total_seconds:.3f} s: {rate:,.0f} packets/s (goal >= {GOAL:,})")


if __name__ == "__main__":
    main()
