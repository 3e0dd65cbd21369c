"""Benchmark: event-log appends per second (batched) and ``events verify`` over 1M entries.

Goals (issue 2): >= 20,000 appends/s batched; verify 1,000,000 entries in <= 10 s. Both run on
SQLite through the same code as the service (``EventLog.append_many`` in one transaction per batch,
``EventLog.verify`` with a checkpoint every 100k entries). Also prints unbatched single appends
(one transaction each) for comparison. Run: ``.venv/bin/python bench/event_log.py``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetguard.events.checkpoint import CheckpointSigner
from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.store.database import open_database
from fleetguard.types import utc_now

ORIGIN = "bench.example/fleetguard/event-log"


def _events(start: int, count: int) -> list[NewEvent]:
    return [
        NewEvent(
            actor="bench",
            subject=f"device:cam-{n:07d}",
            action="device.activate",
            reason="benchmark",
            data={"from": "provisioned", "to": "active"},
        )
        for n in range(start, start + count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--checkpoint-every", type=int, default=100_000)
    parser.add_argument("--verify-repeat", type=int, default=3)
    args = parser.parse_args()
    signer = CheckpointSigner(Ed25519PrivateKey.generate(), ORIGIN)
    with tempfile.TemporaryDirectory() as tmp:
        database = open_database(f"sqlite:///{Path(tmp) / 'bench.db'}")
        log = EventLog(database, ORIGIN)
        rates = []
        written = 0
        while written < args.entries:
            count = min(args.batch, args.entries - written)
            events = _events(written, count)
            start = time.perf_counter()
            with database.transaction() as session:
                log.append_many(session, events, now=utc_now())
            rates.append(count / (time.perf_counter() - start))
            written += count
            if written % args.checkpoint_every == 0:
                log.checkpoint(signer, now=utc_now())
        print(
            f"append, batches of {args.batch}: median {statistics.median(rates):,.0f} entries/s "
            "(goal >= 20,000)"
        )
        single = []
        for n in range(200):
            [event] = _events(args.entries + n, 1)
            start = time.perf_counter()
            with database.transaction() as session:
                log.append(session, event, now=utc_now())
            single.append(1 / (time.perf_counter() - start))
        print(f"append, one transaction each: median {statistics.median(single):,.0f} entries/s")
        timings = []
        for _ in range(args.verify_repeat):
            start = time.perf_counter()
            report = log.verify(signer.public_key())
            timings.append(time.perf_counter() - start)
            assert report.intact, report.findings[:3]
        print(
            f"verify {report.entries:,} entries, {report.checkpoints} checkpoints: median "
            f"{statistics.median(timings):.2f} s "
            f"(runs {', '.join(f'{t:.2f}' for t in timings)}; goal <= 10 s)"
        )
        database.close()


if __name__ == "__main__":
    main()
