"""Benchmark: import 100k devices from CSV into SQLite and (with --postgres-url) PostgreSQL.

Goal (issue 2): <= 10 s into SQLite. Prints the median of --repeat runs for each backend, measured
end to end through the same code path the CLI uses (parse, validate, one transaction with an event
per device). Run: ``.venv/bin/python bench/import_devices.py`` or, for both backends,
``scripts/with-postgres sh -c 'exec .venv/bin/python bench/import_devices.py \
--postgres-url "$FLEETGUARD_TEST_POSTGRES_URL"'``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from fleetguard.events.log import EventLog
from fleetguard.inventory.service import Inventory
from fleetguard.inventory.transfer import parse_csv
from fleetguard.store.database import open_database


def make_csv(count: int) -> bytes:
    """Return a CSV of ``count`` realistic devices."""
    out = io.StringIO()
    out.write("id,serial,manufacturer,model,firmware_version,hardware_revision,owner,labels\n")
    for n in range(count):
        out.write(
            f'cam-{n:07d},SN{n:09d},Acme,C{n % 7},1.{n % 13}.0,rev{n % 3},ops,"{{""env"": ""prod""}}"\n'
        )
    return out.getvalue().encode()


def run_once(url: str, data: bytes) -> tuple[float, float]:
    """Import ``data`` into a fresh database at ``url``; return (parse seconds, total seconds)."""
    database = open_database(url)
    try:
        inventory = Inventory(database, EventLog(database, "bench/fleetguard/import"))
        start = time.perf_counter()
        specs = parse_csv(data, max_rows=2_000_000)
        parsed = time.perf_counter()
        inventory.import_devices(specs, actor="bench")
        done = time.perf_counter()
        assert inventory.count() == len(specs)
        return parsed - start, done - start
    finally:
        database.close()


def postgres_schema_url(base: str) -> str:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres-url", help="throwaway PostgreSQL URL (scripts/with-postgres exports one)")
    args = parser.parse_args()
    data = make_csv(args.count)
    print(f"CSV: {args.count} devices, {len(data) / 1e6:.1f} MB")
    backends: list[tuple[str, object]] = [("sqlite", None)]
    if args.postgres_url:
        backends.append(("postgresql", args.postgres_url))
    for name, base in backends:
        totals, parses = [], []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                url = (
                    f"sqlite:///{Path(tmp) / 'bench.db'}" if base is None else postgres_schema_url(str(base))
                )
                parse_s, total_s = run_once(url, data)
            parses.append(parse_s)
            totals.append(total_s)
        median = statistics.median(totals)
        print(
            f"{name:10s} import {args.count} devices: median {median:.2f} s "
            f"({args.count / median:,.0f} devices/s; parse {statistics.median(parses):.2f} s; "
            f"runs {', '.join(f'{t:.2f}' for t in totals)}) goal <= 10 s"
        )


if __name__ == "__main__":
    main()
