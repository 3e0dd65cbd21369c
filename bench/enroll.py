"""Benchmark: the enrollment figures of issue 4, each printed beside its goal.

(r) reenroll  ``POST /.well-known/est/simplereenroll`` over mutual TLS against the real ``fleetguard up``
              (SQLite, ``--devices`` devices holding operational certificates) from a separate load
              process. Each request is a real re-enrollment: the device's own certificate and key on
              the TLS connection, a fresh CSR for the device's key (pre-generated before the timed
              part) in the body, a new certificate recorded with its ``cert.renewed`` event.
              (1) closed loop: ``--connections`` keep-alive connections, one device each, one request
                  in flight on each, as fast as the server answers: requests per second.
                  Goal >= 500/s on 2 cores.
              (2) open loop at a steady ``--rate`` (250/s) over keep-alive connections: latency from the
                  *scheduled* send time (a stall is not hidden by coordinated omission), p50 and p99.
                  Goal p99 < 50 ms at 250/s.
              (3) one new TLS connection per request, a different device each time (a full handshake
                  with the client certificate, as a device that renews once a month does): requests
                  per second, closed loop; no goal, for comparison.
(b) batch     manufacturing batches: ``bench/enroll_batch.py``, run from here when it is in the build.

The renewal rate limits (``FLEETGUARD_RENEWAL_RATE_PER_S``/``_BURST`` for the fleet,
``FLEETGUARD_DEVICE_RENEWALS_PER_HOUR``/``_BURST`` per device) are raised for the server under test,
since a device renews once a month, not hundreds of times a minute: the benchmark measures the service,
not the limit. EST is served by ``--est-workers`` processes (``FLEETGUARD_EST_WORKERS``, default 2
here: one per core; 1 is a thread of ``up``). ``up``'s MQTT broker is off (``FLEETGUARD_MQTT_PORT=0``),
and with it the trust evaluator, which re-decides a device's access on each of its events (each
renewal): ``--mqtt`` turns both on. Each figure prints the settings it ran with, and the CPU time the
server (all its processes) and the load process spent per request. Server and load process share
the machine's cores unpinned (the goal is for 2 cores, both of them; pin both with ``taskset -c``);
every run uses devices that no earlier run used; each figure is the median of ``--runs`` runs.

Run: ``.venv/bin/python bench/enroll.py [--only reenroll] [--runs 3 --seconds 10] [--est-workers 1]``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import queue
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetguard.config import Settings
from fleetguard.enroll.est import decode_certs_only, encode_pkcs10_body
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.model import DeviceSpec
from fleetguard.types import utc_now

TRUST_DOMAIN = "bench.example"
PASSPHRASE_ENV = "FLEETGUARD_CA_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
PASSPHRASE = "bench: a throwaway CA"  # noqa: S105 - encrypts the keys of a temporary installation
FLEETGUARD = str(Path(sys.executable).with_name("fleetguard"))
HOST = "127.0.0.1"
REENROLL_PATH = "/.well-known/est/simplereenroll"
_ISSUE_BATCH = 500
_WARMUP_S = 2.0
_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")

# What the server under test allows: a device renews once a month, the bench hundreds of times a minute.
RATE_LIMITS = {
    "FLEETGUARD_RENEWAL_RATE_PER_S": "100000",
    "FLEETGUARD_RENEWAL_BURST": "100000",
    "FLEETGUARD_DEVICE_RENEWALS_PER_HOUR": "1000000",
    "FLEETGUARD_DEVICE_RENEWAL_BURST": "100000",
}


def _device_id(n: int) -> str:
    return f"cam-{n:07d}"


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --- set-up: an installation whose devices hold certificates ---------------------------------------


def _csr(key: ec.EllipticCurvePrivateKey, subject: x509.Name) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _installation(root: Path, devices: int) -> Path:
    """Create an installation whose ``devices`` devices hold certificates; write them under ``root``.

    Returns the directory with ``root.pem`` and ``<device id>.pem`` / ``<device id>.key.pem``.
    """
    settings = Settings(data_dir=root / "data")
    initialize(settings, TRUST_DOMAIN, now=utc_now())
    runtime = Runtime(settings)
    material = root / "devices"
    material.mkdir()
    try:
        runtime.pki.initialize(actor="bench", now=utc_now())
        ids = [_device_id(n) for n in range(devices)]
        specs = [DeviceSpec(id=d, serial=f"SN{n:09d}", manufacturer="Acme") for n, d in enumerate(ids)]
        runtime.inventory.import_devices(specs, actor="bench")
        for start in range(0, devices, _ISSUE_BATCH):
            chunk = ids[start : start + _ISSUE_BATCH]
            keys = [ec.generate_private_key(ec.SECP256R1()) for _ in chunk]
            requests = [(d, _csr(k, _cn(d))) for d, k in zip(chunk, keys, strict=True)]
            records = runtime.pki.issue_devices(requests, actor="bench")
            for device_id, key, record in zip(chunk, keys, records, strict=True):
                _write_device(material, device_id, key, record.der)
        root_certificate = runtime.pki.authorities()[0].certificate
        (material / "root.pem").write_bytes(root_certificate.public_bytes(serialization.Encoding.PEM))
    finally:
        runtime.close()
    return material


def _cn(device_id: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, device_id)])


def _write_device(directory: Path, device_id: str, key: ec.EllipticCurvePrivateKey, der: bytes) -> None:
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    (directory / f"{device_id}.pem").write_bytes(pem)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (directory / f"{device_id}.key.pem").write_bytes(key_pem)


# --- the load process -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadJob:
    """What one run of the load process does; plain values, so that it pickles for ``spawn``."""

    mode: str  # "closed", "open" or "handshake"
    port: int
    material: str
    devices: tuple[str, ...]
    connections: int
    seconds: float
    rate: float
    csrs_per_device: int


class _Device:
    """One device's TLS context and its pre-made requests (a fresh CSR each)."""

    def __init__(self, material: Path, device_id: str, port: int, count: int) -> None:
        self.id = device_id
        certificate = x509.load_pem_x509_certificate((material / f"{device_id}.pem").read_bytes())
        key = serialization.load_pem_private_key((material / f"{device_id}.key.pem").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.certificate = certificate
        self.context = ssl.create_default_context(cafile=material / "root.pem")
        self.context.load_cert_chain(material / f"{device_id}.pem", material / f"{device_id}.key.pem")
        self.requests = [_request(port, _csr(key, certificate.subject)) for _ in range(count)]
        self.sent = 0

    def next_request(self) -> bytes:
        request = self.requests[self.sent % len(self.requests)]
        self.sent += 1
        return request


def _request(port: int, csr: bytes) -> bytes:
    body = encode_pkcs10_body(csr)
    head = (
        f"POST {REENROLL_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/pkcs10\r\n"
        f"Content-Transfer-Encoding: base64\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Connection:
    """A keep-alive TLS connection of one device, one request in flight."""

    def __init__(self, device: _Device, port: int) -> None:
        raw = socket.create_connection((HOST, port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = device.context.wrap_socket(raw, server_hostname=HOST)
        self.device = device
        self.buffer = b""

    def exchange(self, request: bytes) -> tuple[bytes, bytes]:
        """Send ``request``; return the response's head and body."""
        self.sock.sendall(request)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
        match = _CONTENT_LENGTH.search(head)
        length = int(match[1]) if match else 0
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return head, body

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def _check_issued(device: _Device, head: bytes, body: bytes) -> str | None:
    """Return why a response is not a certificate renewed for ``device``, or None when it is."""
    if not head.startswith(b"HTTP/1.1 200"):
        return head.split(b"\r\n", 1)[0].decode(errors="replace") + " " + body[:200].decode(errors="replace")
    (issued,) = decode_certs_only(body)
    same_key = issued.public_key() == device.certificate.public_key()
    if issued.subject != device.certificate.subject or not same_key:
        return "the renewed certificate has another subject or key"
    if issued.serial_number == device.certificate.serial_number:
        return "the renewed certificate has the old serial"
    return None


class _Tally:
    """Latencies and failures shared by the load threads; the measured window starts at ``warm_until``."""

    def __init__(self, warm_until: float) -> None:
        self.warm_until = warm_until
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.checked: set[str] = set()
        self.completed = 0  # warm-up included: what the server did while its CPU time was counted

    def record(self, device: _Device, response: tuple[bytes, bytes], started: float) -> None:
        """Check and count one response to a request sent (or scheduled) at ``started``."""
        latency = time.perf_counter() - started
        head, body = response
        problem = None
        if not head.startswith(b"HTTP/1.1 200") or device.id not in self.checked:
            problem = _check_issued(device, head, body)  # decode the first answer of each device fully
        with self.lock:
            self.completed += 1
            self.checked.add(device.id)
            if problem is not None:
                self.failures.append(problem)
            elif started >= self.warm_until:
                self.latencies.append(latency)


def _closed_loop(connection: _Connection, tally: _Tally, until: float) -> None:
    while (sent := time.perf_counter()) < until:
        tally.record(connection.device, connection.exchange(connection.device.next_request()), sent)


def _open_loop(connection: _Connection, tally: _Tally, schedule: queue.Queue[float | None]) -> None:
    while (scheduled := schedule.get()) is not None:
        tally.record(connection.device, connection.exchange(connection.device.next_request()), scheduled)


def _dispatch(schedule: queue.Queue[float | None], rate: float, until: float, workers: int) -> None:
    """Put send times on ``schedule`` at ``rate`` per second until ``until``, then one None per worker."""
    start = time.perf_counter()
    count = 0
    while (due := start + count / rate) < until:
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        schedule.put(due)
        count += 1
    for _ in range(workers):
        schedule.put(None)


def _handshakes(devices: list[_Device], port: int, tally: _Tally, until: float) -> None:
    """A new connection for each request, each time as the next of ``devices``."""
    turn = 0
    while (sent := time.perf_counter()) < until:
        device = devices[turn % len(devices)]
        turn += 1
        connection = _Connection(device, port)
        try:
            response = connection.exchange(device.next_request())
        finally:
            connection.close()
        tally.record(device, response, sent)


def load_run(job: LoadJob, results: multiprocessing.Queue[dict[str, object]]) -> None:  # type: ignore[type-arg]
    """The load process: prepare the devices' requests, run ``job``, put its figures on ``results``."""
    material = Path(job.material)
    devices = [_Device(material, d, job.port, job.csrs_per_device) for d in job.devices]
    connections = []
    if job.mode != "handshake":
        connections = [_Connection(device, job.port) for device in devices[: job.connections]]
    cpu = _cpu_s()
    tally = _Tally(time.perf_counter() + _WARMUP_S)
    until = tally.warm_until + job.seconds
    schedule: queue.Queue[float | None] = queue.Queue()
    threads = []
    for index in range(job.connections):
        if job.mode == "closed":
            target, arguments = _closed_loop, (connections[index], tally, until)
        elif job.mode == "open":
            target, arguments = _open_loop, (connections[index], tally, schedule)
        else:
            target, arguments = _handshakes, (devices[index :: job.connections], job.port, tally, until)
        threads.append(threading.Thread(target=target, args=arguments, daemon=True))
    for thread in threads:
        thread.start()
    if job.mode == "open":
        _dispatch(schedule, job.rate, until, job.connections)
    for thread in threads:
        thread.join()
    cpu = _cpu_s() - cpu
    for connection in connections:
        connection.close()
    latencies = sorted(tally.latencies)
    results.put(
        {
            "requests": len(latencies), "seconds": job.seconds, "completed": tally.completed,
            "failures": len(tally.failures), "first_failure": tally.failures[0] if tally.failures else None,
            "p50_ms": statistics.median(latencies) * 1000 if latencies else math.nan,
            "p99_ms": _percentile(latencies, 0.99) * 1000 if latencies else math.nan,
            "max_ms": latencies[-1] * 1000 if latencies else math.nan, "load_cpu_s": cpu,
            "csrs_reused": sum(max(0, device.sent - len(device.requests)) for device in devices),
        }
    )  # fmt: skip


def _cpu_s(pid: int | None = None) -> float:
    """Return the CPU seconds (user + system) used so far by this process, or by ``pid`` and its children.

    A child that exited is not counted: the figures are taken while the server's workers run.
    """
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    total = 0.0
    for process in _process_tree(pid):
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: proc(5)
    return total


def _process_tree(pid: int) -> list[int]:
    """Return ``pid`` and its descendants (read from every ``/proc/<pid>/stat``'s ppid)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, []))
    return tree


def _load(job: LoadJob, server: int) -> dict[str, float]:
    """Run ``job`` in a separate (spawned) process; return its figures, or exit on a failed request.

    ``server_cpu_s`` is the CPU time process ``server`` used meanwhile (the load's set-up included:
    the server idles through it).
    """
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=load_run, args=(job, results), name="est-load")
    cpu = _cpu_s(server)
    process.start()
    result: dict[str, float] = results.get(timeout=job.seconds + 600)
    result["server_cpu_s"] = _cpu_s(server) - cpu
    process.join()
    if result["failures"]:
        raise SystemExit(f"{result['failures']} re-enrollments failed; first: {result['first_failure']}")
    return result


# --- the server ----------------------------------------------------------------------------------


def _start_server(root: Path, est_port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, **RATE_LIMITS, "FLEETGUARD_DATA_DIR": str(root / "data"),
        "FLEETGUARD_EST_HOST": HOST, "FLEETGUARD_EST_PORT": str(est_port),
        "FLEETGUARD_EST_WORKERS": str(args.est_workers),
        "FLEETGUARD_MQTT_PORT": str(_free_port() if args.mqtt else 0),
    }  # fmt: skip
    log = (root / "up.log").open("wb")  # one line per EST request: a pipe nobody reads would fill up
    return subprocess.Popen(
        [FLEETGUARD, "up", "--port", str(_free_port())], env=env, stdout=subprocess.DEVNULL, stderr=log
    )


def _wait_for_est(port: int, root: Path, server: subprocess.Popen[bytes]) -> None:
    context = ssl.create_default_context(cafile=root / "devices" / "root.pem")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log = (root / "up.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"fleetguard up exited early:\n{log}")
        try:
            with (
                socket.create_connection((HOST, port), timeout=1) as raw,
                context.wrap_socket(raw, server_hostname=HOST) as sock,
            ):
                sock.sendall(f"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            time.sleep(0.2)
    log = (root / "up.log").read_text(errors="replace")[-3000:]
    raise SystemExit(f"the EST endpoint of fleetguard up did not answer in 60 s; its log ends:\n{log}")


# --- (r) reenroll ---------------------------------------------------------------------------------


class _Devices:
    """Hands out devices that no earlier run used."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._next = 0

    def take(self, count: int) -> tuple[str, ...]:
        if self._next + count > self._count:
            raise SystemExit(f"--devices {self._count} is too few for the runs asked for")
        taken = tuple(_device_id(n) for n in range(self._next, self._next + count))
        self._next += count
        return taken


def bench_reenroll(root: Path, args: argparse.Namespace) -> None:
    """(r): simplereenroll over mutual TLS against a real ``fleetguard up``, from a separate process."""
    started = time.perf_counter()
    material = _installation(root, args.devices)
    print(f"    set-up: {args.devices:,} devices with certificates in {time.perf_counter() - started:.0f} s")
    est_port = _free_port()
    server = _start_server(root, est_port, args)
    devices = _Devices(args.devices)
    try:
        _wait_for_est(est_port, root, server)
        jobs = _Jobs(est_port, material, devices, args)
        closed = [_load(jobs.closed(), server.pid) for _ in range(args.runs)]
        opened = [_load(jobs.opened(), server.pid) for _ in range(args.runs)]
        handshakes = [_load(jobs.handshakes(), server.pid) for _ in range(args.runs)]
    finally:
        server.terminate()
        server.wait(timeout=30)
    _report(args, closed, opened, handshakes)


@dataclass(frozen=True, slots=True)
class _Jobs:
    """Makes the load jobs of the three figures, each with devices of its own."""

    port: int
    material: Path
    devices: _Devices
    args: argparse.Namespace

    def closed(self) -> LoadJob:
        return self._keep_alive("closed", self.args.connections, self.args.max_rate)

    def opened(self) -> LoadJob:
        return self._keep_alive("open", self.args.open_connections, self.args.rate)

    def handshakes(self) -> LoadJob:
        # Each thread cycles over its share of the devices, with a few CSRs each.
        count = min(self.args.devices // (self.args.runs * 3), self.args.connections * 64)
        return self._job("handshake", self.devices.take(count), self.args.connections, 0.0, 4)

    def _keep_alive(self, mode: str, connections: int, rate: float) -> LoadJob:
        per_connection = rate * (self.args.seconds + _WARMUP_S) / connections
        return self._job(
            mode, self.devices.take(connections), connections, rate, math.ceil(per_connection * 1.2)
        )

    def _job(self, mode: str, devices: tuple[str, ...], connections: int, rate: float, csrs: int) -> LoadJob:
        return LoadJob(
            mode, self.port, str(self.material), devices, connections, self.args.seconds, rate, csrs
        )


def _report(
    args: argparse.Namespace,
    closed: list[dict[str, float]],
    opened: list[dict[str, float]],
    handshakes: list[dict[str, float]],
) -> None:
    limits = ", ".join(f"{name.removeprefix('FLEETGUARD_').lower()}={v}" for name, v in RATE_LIMITS.items())
    print(
        f"(r) simplereenroll over mutual TLS, real `fleetguard up` (SQLite, {args.devices:,} devices, "
        f"FLEETGUARD_EST_WORKERS={args.est_workers}, MQTT broker and trust evaluator "
        f"{'on' if args.mqtt else 'off'}), separate load process, server and load sharing cpus "
        f"{sorted(os.sched_getaffinity(0))}; rate limits raised: {limits}"
    )
    rates = [r["requests"] / r["seconds"] for r in closed]
    print(
        f"    (1) closed loop, {args.connections} keep-alive connections, one device each: "
        f"median {statistics.median(rates):,.0f} req/s (runs {', '.join(f'{r:,.0f}' for r in rates)}) "
        f"goal >= 500/s; latency p50 {statistics.median(r['p50_ms'] for r in closed):.1f} ms, "
        f"p99 {statistics.median(r['p99_ms'] for r in closed):.1f} ms; {_cpu_per_request(closed)}"
    )
    p50s = [r["p50_ms"] for r in opened]
    p99s = [r["p99_ms"] for r in opened]
    achieved = statistics.median(r["requests"] / r["seconds"] for r in opened)
    print(
        f"    (2) open loop at {args.rate:.0f} req/s ({achieved:,.0f}/s completed), "
        f"{args.open_connections} keep-alive connections: p50 median {statistics.median(p50s):.1f} ms "
        f"(runs {', '.join(f'{v:.1f}' for v in p50s)}), p99 median {statistics.median(p99s):.1f} ms "
        f"(runs {', '.join(f'{v:.1f}' for v in p99s)}) goal p99 < 50 ms; "
        f"max {max(r['max_ms'] for r in opened):.0f} ms; {_cpu_per_request(opened)}"
    )
    rates = [r["requests"] / r["seconds"] for r in handshakes]
    print(
        f"    (3) a new TLS connection per request (full handshake), {args.connections} at a time: "
        f"median {statistics.median(rates):,.0f} req/s (runs {', '.join(f'{r:,.0f}' for r in rates)}); "
        f"latency p50 {statistics.median(r['p50_ms'] for r in handshakes):.1f} ms; "
        f"{_cpu_per_request(handshakes)}"
    )
    reused = sum(r["csrs_reused"] for r in (*closed, *opened))
    if reused:
        print(f"    note: {reused} keep-alive requests repeated a CSR (raise --max-rate to pre-make more)")


def _cpu_per_request(results: list[dict[str, float]]) -> str:
    server = statistics.median(r["server_cpu_s"] / r["completed"] for r in results)
    load = statistics.median(r["load_cpu_s"] / r["completed"] for r in results)
    return f"CPU per request: server {server * 1000:.2f} ms, load {load * 1000:.2f} ms"


# --- (b) batch ------------------------------------------------------------------------------------


def bench_batch() -> None:
    """(b): manufacturing batches, measured by ``bench/enroll_batch.py`` where the build has it."""
    script = Path(__file__).with_name("enroll_batch.py")
    if not script.exists():
        print("(b) batch: bench/enroll_batch.py is not in this build; skipped")
        return
    subprocess.run([sys.executable, str(script)], check=True)


# --- main -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", action="append", choices=["reenroll", "batch"])
    parser.add_argument("--devices", type=int, default=2000, help="devices holding certificates")
    parser.add_argument("--runs", type=int, default=3, help="runs of each figure; the median is printed")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds of each run")
    parser.add_argument("--connections", type=int, default=16, help="connections of the closed loops")
    parser.add_argument("--open-connections", type=int, default=32, help="connections of the open loop")
    parser.add_argument("--rate", type=float, default=250.0, help="requests per second of the open loop")
    parser.add_argument(
        "--max-rate", type=float, default=1000.0, help="closed-loop rate to pre-make fresh CSRs for"
    )
    parser.add_argument(
        "--est-workers", type=int, default=2, help="EST worker processes of the server (1: a thread of it)"
    )
    parser.add_argument(
        "--mqtt",
        action="store_true",
        help="let up start its MQTT broker and trust evaluator too (off: FLEETGUARD_MQTT_PORT=0)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the installation and the server's log")
    args = parser.parse_args()
    os.environ.setdefault(PASSPHRASE_ENV, PASSPHRASE)
    only = set(args.only or ["reenroll", "batch"])
    print(f"cpus available: {sorted(os.sched_getaffinity(0))}; python {sys.version.split()[0]}")
    if "reenroll" in only:
        tmp = Path(tempfile.mkdtemp(prefix="fleetguard-bench-enroll-"))
        try:
            bench_reenroll(tmp, args)
        finally:
            if args.keep:
                print(f"    installation and server log kept in {tmp}")
            else:
                shutil.rmtree(tmp)
    if "batch" in only:
        bench_batch()


if __name__ == "__main__":
    main()
