"""Benchmark: the PKI figures of issue 3, each printed beside its goal.

(a) issue   certificates issued from CSRs per second on one core, including the store write: SQLite,
            ``runtime.pki.issue_device`` for pre-registered devices with pre-generated CSRs, the process
            pinned to one core; beside it ``openssl speed -seconds 3 ecdsap256`` sign/s on the same core,
            the physical limit. Goal >= 2,500/s.
(b) fleet   re-issue a fleet of ``--fleet`` devices with 2 worker processes, one core each, into SQLite
            (and PostgreSQL with ``--postgres-url``); total time, and its extrapolation to 1,000,000
            devices. Goal: 1M in <= 15 min. ``--fleet 1000000`` runs the real thing (well over an hour
            at today's rate).
(c) crl     every CRL shard for 1,000,000 revoked entries (``crl.build_crl_shards`` with the service's
            issuing CA key); build time and shard sizes. Goals <= 5 s and <= 100 KiB a shard. Also the
            latency of ``revoke`` (shard and delta re-signed, OCSP invalidated) when the shard holds as
            many entries as it would at 1M revoked. Goal <= 1 s.
(d) ocsp    POST /pki/ocsp requests per second against the real ``fleetguard up`` from a separate load
            process (keep-alive connections, many requests in flight), with p50/p99 latency; server and
            load on separate cores; then the same with a single connection (latency without queueing).
            Goals >= 5,000/s, p99 < 10 ms. Also ``runtime.revocation.ocsp`` in-process, one thread.

Re-issuing (b) calls ``issue_device`` as an operator's batch does: renewal (``renew_device``) is rate
limited for the fleet (``renewal_rate_per_s``) by design, which would measure the limit, not the
service. CSRs for (b) come from a pool of 256 per worker: validating a CSR costs the same whoever sent it.

``--batch N`` issues (a) and (b) through the proposed batch API ``CertificateService.issue_devices``
(one transaction, one inventory query and one relay pump per N certificates) where the build has it.

Run: ``.venv/bin/python bench/pki.py`` or, with PostgreSQL for (b), ``scripts/with-postgres sh -c
'exec .venv/bin/python bench/pki.py --postgres-url "$FLEETGUARD_TEST_POSTGRES_URL"'``.
``--only issue --only crl`` runs a subset.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from sqlalchemy import insert

from fleetguard.config import Settings
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.model import DeviceSpec
from fleetguard.pki.crl import build_crl, build_crl_shards, crl_url
from fleetguard.pki.csr import validate_csr
from fleetguard.pki.profile import DeviceProfile, PublicationUrls, new_serial
from fleetguard.pki.revocation import RevocationReason, RevokedEntry
from fleetguard.pki.service import CertificateStatus
from fleetguard.store.models import CertificateRow
from fleetguard.types import utc_now

TRUST_DOMAIN = "bench.example"
PASSPHRASE_ENV = "FLEETGUARD_CA_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
PASSPHRASE = "bench: a throwaway CA"  # noqa: S105 - encrypts the keys of a temporary installation
FLEETGUARD = str(Path(sys.executable).with_name("fleetguard"))
SHA1 = hashes.SHA1()  # noqa: S303 - the CertID hash OCSP clients send by default (RFC 6960 4.1.1)
ONE_MILLION = 1_000_000
_CSR_POOL = 256
_REVOCATION_SAMPLES = 20
_OPENSSL_P256 = re.compile(r"256 bits ecdsa \(nistp256\)\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)")


# --- shared set-up ---------------------------------------------------------------------------------


def _device_id(n: int) -> str:
    return f"cam-{n:07d}"


def _csrs(count: int) -> list[bytes]:
    """Return ``count`` DER CSRs, each for a new P-256 key."""
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "device")])
    return [
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
        for _ in range(count)
    ]


def _installation(data_dir: Path, devices: int, database_url: str | None = None) -> Settings:
    """Create an installation with a CA and ``devices`` registered devices; return its settings."""
    settings = Settings(data_dir=data_dir, database_url=database_url)
    initialize(settings, TRUST_DOMAIN, now=utc_now())
    runtime = Runtime(settings)
    try:
        runtime.pki.initialize(actor="bench", now=utc_now())
        for start in range(0, devices, 100_000):
            specs = [
                DeviceSpec(id=_device_id(n), serial=f"SN{n:09d}", manufacturer="Acme")
                for n in range(start, min(devices, start + 100_000))
            ]
            runtime.inventory.import_devices(specs, actor="bench")
    finally:
        runtime.close()
    return settings


def postgres_schema_url(base: str) -> str:
    """Create an empty schema in the cluster at ``base``; return a URL whose search_path is it."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"


def _cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _issue_all(runtime: Runtime, requests: list[tuple[str, bytes]], batch: int, actor: str) -> None:
    """Issue a certificate for each (device id, CSR): one ``issue_device`` call each, or in batches."""
    if batch <= 0:
        for device_id, csr in requests:
            runtime.pki.issue_device(device_id, csr, actor=actor)
        return
    issue_devices = getattr(runtime.pki, "issue_devices", None)  # the proposed batch API
    if issue_devices is None:
        raise SystemExit("--batch needs CertificateService.issue_devices, which this build does not have")
    for start in range(0, len(requests), batch):
        issue_devices(requests[start : start + batch], actor=actor)


def _mode(batch: int) -> str:
    return "one issue_device call each" if batch <= 0 else f"issue_devices in batches of {batch}"


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def _median_per_call(function: Callable[[], object], calls: int) -> float:
    """Return the median over 5 runs of the mean seconds per call of ``function``."""
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        runs.append((time.perf_counter() - start) / calls)
    return statistics.median(runs)


# --- (a) issuance on one core ------------------------------------------------------------------------


def _openssl_sign_per_s() -> float:
    result = subprocess.run(
        ["openssl", "speed", "-seconds", "3", "ecdsap256"], capture_output=True, text=True, check=True
    )
    match = _OPENSSL_P256.search(result.stdout)
    if match is None:
        raise SystemExit(f"cannot read openssl speed output:\n{result.stdout}")
    return float(match[1])


def bench_issue(root: Path, count: int, repeat: int, batch: int) -> None:
    """(a): issue_device per second on one core, beside openssl's ECDSA P-256 sign/s on that core."""
    core = _cores()[0]
    settings = _installation(root / "issue", count)
    csrs = _csrs(count)
    runtime = Runtime(settings)
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})  # inherited by openssl below
    try:
        rates = []
        for _ in range(repeat):
            start = time.perf_counter()
            _issue_all(runtime, [(_device_id(n), csr) for n, csr in enumerate(csrs)], batch, "bench")
            rates.append(count / (time.perf_counter() - start))
        csr_s, sign_s = _issue_stages(runtime, csrs[0])
        openssl_sign = _openssl_sign_per_s()
    finally:
        os.sched_setaffinity(0, previous)
        runtime.close()
    rate = statistics.median(rates)
    print(
        f"(a) issue from CSR, 1 core (cpu {core}), SQLite, {_mode(batch)}, incl. store write + event: "
        f"median {rate:,.0f} "
        f"certs/s (runs {', '.join(f'{r:,.0f}' for r in rates)}; {count} per run) goal >= 2,500/s\n"
        f"    openssl speed ecdsap256 on the same core: {openssl_sign:,.0f} sign/s (the physical limit)\n"
        f"    per certificate: {1e6 / rate:,.0f} us = CSR check {csr_s * 1e6:,.0f} us + build and sign "
        f"{sign_s * 1e6:,.0f} us + the rest (inventory read, store write, event, relay) "
        f"{(1 / rate - csr_s - sign_s) * 1e6:,.0f} us"
    )


def _issue_stages(runtime: Runtime, csr: bytes) -> tuple[float, float]:
    """Return the seconds per call of the CSR check and of building and signing one certificate."""
    ca = runtime.pki.authority()
    base = runtime.pki.ca_url(runtime.pki.active_issuer_id())
    urls = PublicationUrls(
        crl=crl_url(base, None), ocsp=f"{runtime.pki.base_url}/ocsp", ca_issuers=f"{base}.der"
    )
    profile = DeviceProfile(trust_domain=TRUST_DOMAIN, urls=urls)
    key = validate_csr(csr).public_key
    now = utc_now()
    csr_s = _median_per_call(lambda: validate_csr(csr), 500)
    sign_s = _median_per_call(
        lambda: ca.issue_device_certificate(
            profile, device_id="cam-0000000", public_key=key, serial=new_serial(), now=now
        ),
        500,
    )
    return csr_s, sign_s


# --- (b) re-issuing a fleet on 2 cores ------------------------------------------------------------------


def fleet_worker(job: dict[str, object]) -> None:
    """A worker of (b): pin to one core, issue for devices [start, stop) after the go file appears."""
    os.sched_setaffinity(0, {int(str(job["core"]))})
    url = job["database_url"]
    settings = Settings(data_dir=Path(str(job["data_dir"])), database_url=None if url is None else str(url))
    runtime = Runtime(settings)
    csrs = _csrs(_CSR_POOL)
    go = Path(str(job["go"]))
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.001)
    start = time.time()
    first, last = int(str(job["start"])), int(str(job["stop"]))
    requests = [(_device_id(n), csrs[n % _CSR_POOL]) for n in range(first, last)]
    _issue_all(runtime, requests, int(str(job["batch"])), "bench re-issue")
    end = time.time()
    runtime.close()
    print(json.dumps({"start": start, "end": end, "issued": last - first}), flush=True)


def bench_fleet(root: Path, fleet: int, database_url: str | None, label: str, batch: int) -> None:
    """(b): 2 workers re-issue ``fleet`` devices; print the total and the extrapolation to 1M."""
    cores = _cores()
    settings = _installation(root / f"fleet-{label}", fleet, database_url)
    go = root / f"go-{label}"
    env = {**os.environ, PASSPHRASE_ENV: os.environ[PASSPHRASE_ENV]}
    half = fleet // 2
    workers = []
    for index, (start, stop) in enumerate([(0, half), (half, fleet)]):
        job = {
            "core": cores[index % len(cores)], "data_dir": str(settings.data_dir), "go": str(go),
            "database_url": database_url, "start": start, "stop": stop, "batch": batch,
        }  # fmt: skip
        workers.append(
            subprocess.Popen(
                [sys.executable, __file__, "--fleet-worker", json.dumps(job)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for worker in workers:
        assert worker.stdout is not None
        if worker.stdout.readline() != "ready\n":
            raise SystemExit("a fleet worker did not start")
    started = time.time()
    go.touch()
    results = []
    for worker in workers:
        out, _ = worker.communicate()
        if worker.returncode != 0:
            raise SystemExit(f"a fleet worker failed with {worker.returncode}")
        results.append(json.loads(out))
    total_s = max(result["end"] for result in results) - started
    issued = sum(result["issued"] for result in results)
    rate = issued / total_s
    used = sorted({cores[i % len(cores)] for i in range(2)})
    print(
        f"(b) re-issue {issued:,} devices, 2 workers on cpus {used}, {label}, {_mode(batch)}: "
        f"{total_s:.1f} s "
        f"({rate:,.0f} certs/s); 1,000,000 devices would take {ONE_MILLION / rate / 60:.1f} min "
        f"goal <= 15 min"
    )


# --- (c) CRLs of a million revoked certificates -------------------------------------------------------


def bench_crl(root: Path, entries_count: int, repeat: int) -> None:
    """(c): build every shard for ``entries_count`` revoked entries with the service's issuing CA key."""
    settings = _installation(root / "crl", _REVOCATION_SAMPLES)
    runtime = Runtime(settings)
    try:
        for n, csr in enumerate(_csrs(_REVOCATION_SAMPLES)):
            runtime.pki.issue_device(_device_id(n), csr, actor="bench")
        revocation = _revocation_latency(runtime)
        issuer_id = runtime.pki.active_issuer_id()
        ca = runtime.pki.authority()
        now = utc_now()
        generated = time.perf_counter()
        reasons = list(RevocationReason)
        entries = [
            RevokedEntry(
                serial=new_serial(),
                revoked_at=now - dt.timedelta(seconds=random.randint(0, 30 * 86400)),
                reason=random.choice(reasons),
                not_after=now + dt.timedelta(days=random.randint(1, 30)),
            )
            for _ in range(entries_count)
        ]
        generated = time.perf_counter() - generated
        common = {
            "issuer_cert": ca.issuing, "key": ca.key, "this_update": now,
            "next_update": now + dt.timedelta(hours=settings.crl_validity_hours),
            "base_url": runtime.pki.ca_url(issuer_id),
        }  # fmt: skip
        timings = []
        for number in range(1, repeat + 1):
            start = time.perf_counter()
            shards = build_crl_shards(
                entries, number=number, partitions=settings.crl_partitions, with_delta=True, **common
            )  # type: ignore[arg-type]
            timings.append(time.perf_counter() - start)
        start = time.perf_counter()
        complete = build_crl(entries, number=repeat + 1, partition=None, **common)  # type: ignore[arg-type]
        complete_s = time.perf_counter() - start
    finally:
        runtime.close()
    sizes = sorted(len(shard.der) for shard in shards)
    assert sum(shard.entries for shard in shards) == entries_count
    print(
        f"(c) CRL build, {entries_count:,} revoked entries into {len(shards)} shards (P-256 issuing CA key): "
        f"median {statistics.median(timings):.2f} s (runs {', '.join(f'{t:.2f}' for t in timings)}) "
        f"goal <= 5 s\n"
        f"    shard size: max {sizes[-1] / 1024:.1f} KiB, mean {statistics.mean(sizes) / 1024:.1f} KiB, "
        f"min {sizes[0] / 1024:.1f} KiB goal <= 100 KiB; "
        f"(entries generated in {generated:.1f} s, not counted)\n"
        f"    complete CRL (full.crl, built on request): {len(complete.der) / 1e6:.1f} MB "
        f"in {complete_s:.2f} s\n"
        f"    {revocation}"
    )


def _revocation_latency(runtime: Runtime, *, revoked: int = ONE_MILLION) -> str:
    """Time ``revoke`` (until the shard, its delta and OCSP are republished) with full shards; say how long.

    Each certificate revoked here shares its shard with as many revoked certificates as a shard holds
    at ``revoked`` revoked certificates in all; those are written straight into the table.
    """
    partitions = runtime.settings.crl_partitions
    per_shard = revoked // partitions
    victims = [
        r for r in runtime.pki.certificates(limit=_REVOCATION_SAMPLES) if r.status is CertificateStatus.VALID
    ]
    now = utc_now()
    for victim in victims:
        rows = [
            _revoked_row(victim.issuer_id, victim.crl_partition, partitions, now) for _ in range(per_shard)
        ]
        with runtime.database.transaction() as session:
            session.execute(insert(CertificateRow), rows)
    latencies = []
    for victim in victims:
        start = time.perf_counter()
        runtime.pki.revoke(victim.serial, RevocationReason.KEY_COMPROMISE, actor="bench")
        latencies.append(time.perf_counter() - start)
        shard = runtime.revocation.crl(victim.issuer_id, victim.crl_partition)
        assert shard.entries > per_shard, (shard.entries, per_shard)  # two victims may share a shard
    latencies.sort()
    return (
        f"revoke -> shard + delta CRL re-signed and OCSP invalidated, {per_shard} entries a shard "
        f"({revoked:,} revoked / {partitions} shards): median {statistics.median(latencies) * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms ({len(latencies)} revocations) goal <= 1 s"
    )


def _revoked_row(issuer_id: str, partition: int, partitions: int, now: dt.datetime) -> dict[str, object]:
    serial = new_serial()
    serial += partition - serial % partitions  # same shard as the victim
    if serial <= 0:
        serial += partitions
    return {
        "serial": f"{serial:040x}", "device_id": None, "profile": "device", "subject": "CN=bench",
        "issuer_id": issuer_id, "crl_partition": partition, "not_before": now,
        "not_after": now + dt.timedelta(days=30), "sha256": os.urandom(32), "status": "revoked",
        "revoked_at": now - dt.timedelta(hours=random.randint(1, 500)),
        "revocation_reason": random.choice(list(RevocationReason)).value, "renewed_from": None,
        "der": b"", "created_at": now,
    }  # fmt: skip


# --- (d) OCSP over HTTP -------------------------------------------------------------------------------


async def _ocsp_connection(
    host: str, port: int, requests: list[bytes], *, until: float, warm_until: float, latencies: list[float]
) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    errors = 0
    index = random.randrange(len(requests))
    try:
        while (sent := time.perf_counter()) < until:
            writer.write(requests[index % len(requests)])
            index += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
            body = await reader.readexactly(length)
            done = time.perf_counter()
            # A successful OCSPResponse: a SEQUENCE header of 2 to 4 octets, then ENUMERATED 0.
            if not head.startswith(b"HTTP/1.1 200") or b"\x0a\x01\x00" not in body[:7]:
                errors += 1
            if sent >= warm_until:
                latencies.append(done - sent)
    finally:
        writer.close()
    return errors


def ocsp_load(job: dict[str, object]) -> None:
    """The load process of (d): keep-alive connections each with one request in flight; print JSON."""
    os.sched_setaffinity(0, {int(str(job["core"]))})
    host, port = str(job["host"]), int(str(job["port"]))
    bodies = [bytes.fromhex(body) for body in job["requests"]]  # type: ignore[attr-defined]
    requests = [
        (
            f"POST /pki/ocsp HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/ocsp-request\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]
    latencies: list[float] = []

    async def run() -> int:
        warm_until = time.perf_counter() + float(str(job["warmup"]))
        until = warm_until + float(str(job["seconds"]))
        connections = [
            _ocsp_connection(host, port, requests, until=until, warm_until=warm_until, latencies=latencies)
            for _ in range(int(str(job["connections"])))
        ]
        return sum(await asyncio.gather(*connections))

    errors = asyncio.run(run())
    latencies.sort()
    print(
        json.dumps(
            {
                "requests": len(latencies),
                "seconds": float(str(job["seconds"])),
                "errors": errors,
                "p50_ms": statistics.median(latencies) * 1000,
                "p99_ms": _percentile(latencies, 0.99) * 1000,
                "max_ms": latencies[-1] * 1000,
            }
        )
    )


def _ocsp_requests(runtime: Runtime, certificates: int) -> list[bytes]:
    """Issue ``certificates`` certificates (revoking every tenth); return an OCSP request for each."""
    csrs = _csrs(min(certificates, _CSR_POOL))
    requests = []
    for n in range(certificates):
        record = runtime.pki.issue_device(_device_id(n), csrs[n % len(csrs)], actor="bench")
        if n % 10 == 0:
            runtime.pki.revoke(record.serial, RevocationReason.KEY_COMPROMISE, actor="bench")
        certificate = x509.load_der_x509_certificate(record.der)
        issuer = runtime.pki.issuer(record.issuer_id)[0]
        builder = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, SHA1)
        requests.append(builder.build().public_bytes(serialization.Encoding.DER))
    return requests


def bench_ocsp(root: Path, seconds: float, connections: int, certificates: int) -> None:
    """(d): POST /pki/ocsp from a separate load process, and the responder in-process."""
    settings = _installation(root / "ocsp", certificates)
    runtime = Runtime(settings)
    try:
        requests = _ocsp_requests(runtime, certificates)
        _ocsp_in_process(runtime, requests, seconds)
    finally:
        runtime.close()
    cores = _cores()
    port = _free_port()
    env = {**os.environ, "FLEETGUARD_DATA_DIR": str(settings.data_dir)}
    server = subprocess.Popen(
        [FLEETGUARD, "up", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    os.sched_setaffinity(server.pid, {cores[0]})  # threads started later inherit it
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, server)
        probe = httpx.post(
            f"{url}/pki/ocsp", content=requests[1], headers={"Content-Type": "application/ocsp-request"}
        )
        if probe.status_code != 200:
            print(f"(d) POST /pki/ocsp answered {probe.status_code}: only the in-process figure above")
            return
        status = ocsp.load_der_ocsp_response(probe.content).certificate_status
        assert status is ocsp.OCSPCertStatus.GOOD, status
        results = [
            (count, _ocsp_http_load(port, cores[-1], requests, seconds, count)) for count in (connections, 1)
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)
    where = f"server cpu {cores[0]}, load cpu {cores[-1]}" if len(cores) > 1 else "one cpu for both"
    print(
        f"(d) OCSP POST /pki/ocsp, real `fleetguard up`, HTTP/1.1 keep-alive, {certificates} certificates, "
        f"{where}"
    )
    for count, result in results:
        print(
            f"    {count} connection(s), one request in flight on each: "
            f"{result['requests'] / result['seconds']:,.0f} req/s goal >= 5,000/s; latency p50 "
            f"{result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, max {result['max_ms']:.1f} ms "
            "goal p99 < 10 ms"
        )


def _ocsp_http_load(
    port: int, core: int, requests: list[bytes], seconds: float, connections: int
) -> dict[str, float]:
    """Run the load process against ``port``; return its figures."""
    job = {
        "core": core, "host": "127.0.0.1", "port": port, "seconds": seconds, "warmup": 2.0,
        "connections": connections, "requests": [request.hex() for request in requests],
    }  # fmt: skip
    load = subprocess.run(
        [sys.executable, __file__, "--ocsp-load", "-"],
        input=json.dumps(job), capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, float] = json.loads(load.stdout)
    if result["errors"]:
        raise SystemExit(f"{result['errors']:.0f} OCSP requests failed")
    return result


def _ocsp_in_process(runtime: Runtime, requests: list[bytes], seconds: float) -> None:
    for request in requests:  # sign and cache every answer first, as a running responder has
        runtime.revocation.ocsp(request)
    latencies = []
    until = time.perf_counter() + seconds
    index = 0
    while (start := time.perf_counter()) < until:
        runtime.revocation.ocsp(requests[index % len(requests)])
        latencies.append(time.perf_counter() - start)
        index += 1
    latencies.sort()
    print(
        f"(d) OCSP responder in-process (runtime.revocation.ocsp, one thread, pre-signed answers): "
        f"{len(latencies) / seconds:,.0f} req/s; p50 {statistics.median(latencies) * 1e6:.0f} us, "
        f"p99 {_percentile(latencies, 0.99) * 1e6:.0f} us"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"fleetguard up exited early: {server.communicate()[1].decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("fleetguard up did not become healthy in 60 s")


# --- main -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", action="append", choices=["issue", "fleet", "crl", "ocsp"])
    parser.add_argument("--issue-count", type=int, default=1000, help="certificates per run of (a)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of (a) and (c)")
    parser.add_argument(
        "--fleet", type=int, default=20_000, help="devices re-issued in (b); 1000000 for real"
    )
    parser.add_argument(
        "--batch", type=int, default=0, help="issue (a) and (b) in batches of N (proposed issue_devices)"
    )
    parser.add_argument("--postgres-url", help="throwaway PostgreSQL URL for (b) (scripts/with-postgres)")
    parser.add_argument("--crl-entries", type=int, default=ONE_MILLION)
    parser.add_argument("--ocsp-seconds", type=float, default=10.0)
    parser.add_argument("--ocsp-connections", type=int, default=32)
    parser.add_argument("--ocsp-certificates", type=int, default=500)
    parser.add_argument("--fleet-worker", help=argparse.SUPPRESS)
    parser.add_argument("--ocsp-load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fleet_worker:
        fleet_worker(json.loads(args.fleet_worker))
        return
    if args.ocsp_load:
        ocsp_load(json.loads(sys.stdin.read()))
        return
    os.environ.setdefault(PASSPHRASE_ENV, PASSPHRASE)
    only = set(args.only or ["issue", "fleet", "crl", "ocsp"])
    print(f"cpus available: {_cores()}; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "issue" in only:
            bench_issue(root, args.issue_count, args.repeat, args.batch)
        if "fleet" in only:
            bench_fleet(root, args.fleet, None, "SQLite", args.batch)
            if args.postgres_url:
                url = postgres_schema_url(args.postgres_url)
                bench_fleet(root, args.fleet, url, "PostgreSQL", args.batch)
        if "crl" in only:
            bench_crl(root, args.crl_entries, args.repeat)
        if "ocsp" in only:
            bench_ocsp(root, args.ocsp_seconds, args.ocsp_connections, args.ocsp_certificates)


if __name__ == "__main__":
    main()
