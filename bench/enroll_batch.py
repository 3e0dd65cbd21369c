"""Benchmark: a manufacturing batch in CSR mode (issue 4), printed beside its goal.

(b) batch   ``--count`` (10,000) devices in CSR mode, end to end through the function
            ``fleetguard enroll batch --csrs`` runs (``fleetguard.cli.enroll_batch.create_batch``): open
            the runtime, read the concatenated PEM file, check every CSR, sign every certificate, build
            and sign the manifest, write the bundle (tar, 0600), record devices, certificates, the batch
            and ~3 events per device in one SQLite transaction, publish the events (the one-shot
            process's relay pump), close. A fresh installation per run; the CSRs (a new P-256 key each)
            are made before the timed part, in parallel processes. Median of ``--runs``. Goal <= 10 s.
            Then the same batch once through the real ``fleetguard`` program in a subprocess, which
            adds the interpreter's start and imports (no goal; for comparison).

The stage times are those of the median run, read from the progress callback: checking (CSR
validation), signing, packing (manifest, signature and tar), recording (inserts), and the rest
(provisioning, commit, relay, close).

Run: ``.venv/bin/python bench/enroll_batch.py [--count 10000 --runs 3] [--no-cli]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.pool
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetguard.cli.enroll_batch import create_batch
from fleetguard.config import Settings
from fleetguard.enroll import BundleFile
from fleetguard.installation import Runtime, initialize
from fleetguard.types import utc_now

TRUST_DOMAIN = "bench.example"
MODEL = "cam-x"
GOAL_S = 10.0
PASSPHRASE_ENV = "FLEETGUARD_CA_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
PASSPHRASE = "bench: a throwaway CA"  # noqa: S105 - encrypts the keys of a temporary installation
FLEETGUARD = str(Path(sys.executable).with_name("fleetguard"))


def _csr_pem(device_id: str) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    key = ec.generate_private_key(ec.SECP256R1())
    request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM)


def _write_csrs(path: Path, prefix: str, count: int, pool: multiprocessing.pool.Pool) -> None:
    """Write ``count`` PEM CSRs (CN ``<prefix>-<n>``, a new key each) to ``path``, as a line would."""
    ids = [f"{prefix}-{n:06d}" for n in range(count)]
    path.write_bytes(b"".join(pool.map(_csr_pem, ids, chunksize=256)))


def _installation(data_dir: Path) -> Settings:
    """A fresh installation with a CA and the device type of the batch."""
    settings = Settings(data_dir=data_dir)
    initialize(settings, TRUST_DOMAIN, now=utc_now())
    runtime = Runtime(settings)
    try:
        runtime.pki.initialize(actor="bench", now=utc_now())
        runtime.inventory.add_device_type(MODEL, actor="bench", manufacturer="Acme", model="Cam X")
    finally:
        runtime.close()
    return settings


class _Stages:
    """Progress callback that notes when each stage finished."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.done: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if done == total:
            self.done[stage] = time.perf_counter() - self.start


def _one_run(root: Path, csrs: Path, count: int) -> tuple[float, dict[str, float]]:
    """Time one batch end to end (runtime open to close); return seconds and stage end times."""
    settings = _installation(root / "data")
    out = root / "batch.tar"
    start = time.perf_counter()
    stages = _Stages(start)
    runtime = Runtime(settings)
    try:
        bundle = BundleFile(out)
        bundle.require_free()
        issued = create_batch(runtime, MODEL, count, csrs=csrs, bundle=bundle, actor="bench", observer=stages)
    finally:
        runtime.close()
    elapsed = time.perf_counter() - start
    if issued.batch.count != count or out.stat().st_size == 0:
        raise SystemExit("the batch did not issue every certificate")
    return elapsed, stages.done


def _cli_run(root: Path, csrs: Path, count: int) -> float:
    """Time ``fleetguard enroll batch`` as a subprocess, interpreter start included."""
    settings = _installation(root / "data")
    command = [
        FLEETGUARD, "--data-dir", str(settings.data_dir), "enroll", "batch", "--model", MODEL,
        "--count", str(count), "--csrs", str(csrs), "--out", str(root / "batch.tar"), "--json",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def _breakdown(stages: dict[str, float], total: float) -> str:
    order = ["checking", "signing", "packing", "recording"]
    parts, previous = [], 0.0
    for stage in order:
        if stage in stages:
            parts.append(f"{stage} {stages[stage] - previous:.2f} s")
            previous = stages[stage]
    parts.append(f"provision + commit + relay + close {total - previous:.2f} s")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=10_000, help="devices per batch")
    parser.add_argument("--runs", type=int, default=3, help="timed runs; the median is printed")
    parser.add_argument("--no-cli", action="store_true", help="skip the run through the fleetguard program")
    args = parser.parse_args()
    os.environ.setdefault(PASSPHRASE_ENV, PASSPHRASE)
    print(f"cpus available: {sorted(os.sched_getaffinity(0))}; python {sys.version.split()[0]}")
    runs: list[tuple[float, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="fleetguard-bench-batch-") as tmp, multiprocessing.Pool() as pool:
        root = Path(tmp)
        made = time.perf_counter()
        for run in range(args.runs + (0 if args.no_cli else 1)):
            _write_csrs(root / f"csrs-{run}.pem", f"r{run}", args.count, pool)
        print(f"    (made {args.count:,} CSRs per run in {time.perf_counter() - made:.1f} s, not timed)")
        for run in range(args.runs):
            directory = root / f"run-{run}"
            directory.mkdir()
            runs.append(_one_run(directory, root / f"csrs-{run}.pem", args.count))
        cli_s = None
        if not args.no_cli:
            directory = root / "cli"
            directory.mkdir()
            cli_s = _cli_run(directory, root / f"csrs-{args.runs}.pem", args.count)
    runs.sort(key=lambda run: run[0])
    median_s, stages = runs[len(runs) // 2]
    verdict = "meets" if median_s <= GOAL_S else "misses"
    print(
        f"(b) batch, CSR mode, {args.count:,} devices, SQLite, end to end through create_batch: median "
        f"{median_s:.2f} s (runs {', '.join(f'{s:.2f}' for s, _ in runs)}; "
        f"{args.count / median_s:,.0f} devices/s) goal <= {GOAL_S:.0f} s: {verdict} it\n"
        f"    stages of the median run: {_breakdown(stages, median_s)}"
    )
    if cli_s is not None:
        print(
            f"    the same through the fleetguard program (interpreter start included), one run: "
            f"{cli_s:.2f} s"
        )


if __name__ == "__main__":
    main()
