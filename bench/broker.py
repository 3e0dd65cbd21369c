"""Benchmark: the MQTT gateway figures of issue 5, each beside its peer or goal, measured in one run.

(m) messages  QoS 0 message rate through Mosquitto with fleetguard's ACLs against the same Mosquitto
              without any, in the same run, alternating ``--rounds`` times. ``--publishers`` device
              clients (own certificate each, MQTT 3.1.1, raw sockets, from a separate load process)
              subscribe to ``devices/<id>/t`` and publish 64-byte messages there as fast as the broker
              takes them, for ``--seconds``; every message is checked twice by the broker (publish and
              delivery). Printed: delivered messages/s, the broker's CPU time per message (from
              /proc, so the figure holds even when the load process is the bottleneck), and the
              overhead of fleetguard's ACLs in per-cent of both.
              fleetguard: exactly what the product configures for a device with a type under the
                          default policy: TLS with client certificates, the ACL file pattern
                          ``devices/%u/#``, fleetguard's auth plugin in front of the dynamic-security
                          plugin (``--plugin off``: dynamic security alone), and each publisher
                          applied through ``GatewayService.enforcer.apply`` with its type's topics
                          (``types/bench/#``): with the auth plugin, a type in its table, which
                          decides each check in one hash lookup; without, a device role.
              open:       the same TLS listener and certificates, no ACL file, no plugin.
(q) quarantine ``--devices`` devices connected and idle (own certificate each: one TLS connection per
              device from a separate process of asyncio raw-socket clients, MQTT CONNECT and nothing
              more), each holding what the product gives a device with a type (written into the
              auth plugin's state file, or with ``--plugin off`` as device roles into
              ``dynsec.json``, before the broker starts, as 5,000 applies one by one would take
              minutes; ``--untyped`` leaves them out), then ``--samples`` of them quarantined one
              after another through ``GatewayService.enforcer.quarantine`` (with the plugin: state
              file rewritten, mark and kick; without: ``dynsec.json`` rewritten by the plugin).
              Printed: latency from the call to the device seeing its connection closed (the kick),
              and from the call to the verified result (state read back, the probe answered 0x87),
              p50 and p99. Goal: verified p99 <= 100 ms with 5,000 devices connected.

Certificates come from a throwaway CA made here (cryptography), not the installation's PKI: the
figures are the broker's and the gateway's. Both processes share the machine's cores unpinned; the
machine's core count is printed.

Run: ``.venv/bin/python bench/broker.py [--only messages|quarantine] [--devices 5000 --samples 200]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import json
import multiprocessing
import os
import pwd
import queue
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetguard.gateway import (
    Access,
    BrokerConfig,
    DeviceAccess,
    GatewayService,
    Outcome,
    TopicGrant,
    find_mosquitto,
)
from fleetguard.gateway.config import DEFAULT_GRANTS, render_dynsec_config
from fleetguard.gateway.plugin import DeviceState, PluginMode, render_state, resolve_auth_plugin
from fleetguard.gateway.roles import device_role

PEM = serialization.Encoding.PEM
PAYLOAD = b"x" * 64
CONNECT_CONCURRENCY = 200
TYPE_GRANT = (TopicGrant(Access.BOTH, "types/bench/#"),)
KEEPALIVE_S = 600


# -- a throwaway PKI -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    directory: Path
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def bundle(self) -> Path:
        return self.directory / "ca.pem"

    @classmethod
    def create(cls, directory: Path) -> Pki:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
        certificate = (
            _builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        pki = cls(directory, key, certificate)
        pki.bundle.write_bytes(certificate.public_bytes(PEM))
        return pki

    def issue(self, common_name: str, *, server: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = _builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
            self.certificate.subject,
            key.public_key(),
        ).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            address = x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))
            builder = builder.add_extension(x509.SubjectAlternativeName([address]), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.directory / f"{common_name}.pem", self.directory / f"{common_name}.key"
        cert_path.write_bytes(certificate.public_bytes(PEM))
        key_path.write_bytes(
            key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        key_path.chmod(0o600)
        return cert_path, key_path

    def crl(self) -> bytes:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - dt.timedelta(minutes=1))
            .next_update(now + dt.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
            .public_bytes(PEM)
        )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )


# -- MQTT 3.1.1 on raw sockets (OASIS MQTT 3.1.1 section 3) ----------------------------------------


def _remaining_length(size: int) -> bytes:
    encoded = bytearray()
    while True:
        size, digit = divmod(size, 128)
        encoded.append(digit | (0x80 if size else 0))
        if not size:
            return bytes(encoded)


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def connect_packet(client_id: str) -> bytes:
    body = _string("MQTT") + bytes([4, 0x02]) + KEEPALIVE_S.to_bytes(2, "big") + _string(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def subscribe_packet(topic: str) -> bytes:
    body = (1).to_bytes(2, "big") + _string(topic) + b"\x00"
    return b"\x82" + _remaining_length(len(body)) + body


def publish_packet(topic: str) -> bytes:
    body = _string(topic) + PAYLOAD
    return b"\x30" + _remaining_length(len(body)) + body


def client_context(pki_dir: Path, device_id: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki_dir / "ca.pem"))
    context.load_cert_chain(pki_dir / f"{device_id}.pem", pki_dir / f"{device_id}.key")
    return context


async def open_device(
    port: int, pki_dir: Path, device_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(pki_dir, device_id), server_hostname="127.0.0.1"
    )
    writer.write(connect_packet(device_id))
    await writer.drain()
    connack = await reader.readexactly(4)
    if connack != b"\x20\x02\x00\x00":
        raise RuntimeError(f"{device_id}: CONNACK {connack.hex()}")
    return reader, writer


# -- load processes --------------------------------------------------------------------------


def run_crowd(
    port: int, pki_dir: str, device_ids: Sequence[str], events: multiprocessing.Queue[tuple[str, str, float]]
) -> None:
    """Connect every device and keep it idle; report ('up', count) and ('closed', id, time)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (20_000, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    asyncio.run(_crowd(port, Path(pki_dir), device_ids, events))


async def _crowd(
    port: int, pki_dir: Path, device_ids: Sequence[str], events: multiprocessing.Queue[tuple[str, str, float]]
) -> None:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    up = 0

    async def idle(device_id: str) -> None:
        nonlocal up
        async with gate:
            reader, writer = await open_device(port, pki_dir, device_id)
        up += 1
        if up == len(device_ids):
            events.put(("up", str(up), time.monotonic()))
        while await reader.read(4096):
            pass
        events.put(("closed", device_id, time.monotonic()))
        writer.close()

    tasks = [asyncio.create_task(idle(device_id)) for device_id in device_ids]
    await asyncio.gather(*tasks, return_exceptions=True)


def run_publishers(
    port: int,
    pki_dir: str,
    device_ids: Sequence[str],
    seconds: float,
    results: multiprocessing.Queue[tuple[int, int]],
) -> None:
    """Publish to and receive from each device's own topic for ``seconds``; put (sent, delivered)."""
    results.put(asyncio.run(_publishers(port, Path(pki_dir), device_ids, seconds)))


async def _publishers(port: int, pki_dir: Path, device_ids: Sequence[str], seconds: float) -> tuple[int, int]:
    clients = [await open_device(port, pki_dir, device_id) for device_id in device_ids]
    for (reader, writer), device_id in zip(clients, device_ids, strict=True):
        writer.write(subscribe_packet(f"devices/{device_id}/t"))
        await writer.drain()
        suback = await reader.readexactly(5)
        if suback[-1] != 0:
            raise RuntimeError(f"{device_id}: SUBACK {suback.hex()}")
    deadline = time.monotonic() + seconds
    counts = await asyncio.gather(
        *(
            _publish(reader, writer, device_id, deadline)
            for (reader, writer), device_id in zip(clients, device_ids, strict=True)
        )
    )
    return sum(sent for sent, _ in counts), sum(delivered for _, delivered in counts)


async def _publish(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, device_id: str, deadline: float
) -> tuple[int, int]:
    packet = publish_packet(f"devices/{device_id}/t")
    burst = packet * 64
    received = 0

    async def read() -> None:
        nonlocal received
        while True:
            data = await reader.read(65536)
            if not data:
                return
            received += len(data)

    reading = asyncio.create_task(read())
    sent = 0
    while time.monotonic() < deadline:
        writer.write(burst)
        await writer.drain()
        sent += 64
    await asyncio.sleep(0.5)  # let deliveries in flight arrive
    reading.cancel()
    writer.close()
    return sent, received // len(packet)


# -- brokers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_gateway(pki: Pki, workdir: Path, mode: PluginMode, typed: Sequence[str] = ()) -> GatewayService:
    """Start the product's gateway; the devices in ``typed`` already hold their type's topics."""
    server_cert, server_key = pki.issue("broker", server=True)
    config = BrokerConfig(
        directory=workdir / f"gateway-{free_port()}", ca_bundle=pki.bundle, server_certificate=server_cert,
        server_key=server_key, listen_host="127.0.0.1", listen_port=free_port(), control_port=free_port(),
        max_connections=-1, auth_plugin=resolve_auth_plugin(mode, workdir / "plugin"),
    )  # fmt: skip
    config.directory.mkdir(mode=0o700, parents=True)
    if typed and config.auth_plugin is not None:
        state = {device_id: DeviceState(False, "bench", Access.BOTH) for device_id in typed}
        config.plugin_state_file.write_bytes(render_state(state))
        config.plugin_state_file.chmod(0o600)
    elif typed:
        config.dynsec_file.write_text(_dynsec_with_device_roles(typed))
    gateway = GatewayService(config, ready_timeout_s=60)
    print(f"    enforcement: {'fleetguard auth plugin' if config.auth_plugin else 'dynamic-security roles'}")
    gateway.start(pki.crl())
    return gateway


def _dynsec_with_device_roles(device_ids: Sequence[str]) -> str:
    """The dynsec.json the enforcer leaves after applying TYPE_GRANT to each of ``device_ids``."""
    document = json.loads(render_dynsec_config())
    for device_id in device_ids:
        role = device_role(TYPE_GRANT, DEFAULT_GRANTS, device_id)
        assert role is not None
        name, acls = role
        document["roles"].append({
            "rolename": name,
            "acls": [
                {"acltype": str(a.acltype), "topic": a.topic, "priority": a.priority, "allow": a.allow}
                for a in acls
            ],
        })  # fmt: skip
        document["clients"].append({"username": device_id, "roles": [{"rolename": name, "priority": 0}]})
    return json.dumps(document)


class OpenBroker:
    """The same TLS listener without ACL file or plugin: every client may do everything."""

    def __init__(self, pki: Pki, workdir: Path) -> None:
        self.port = free_port()
        server_cert, server_key = pki.directory / "broker.pem", pki.directory / "broker.key"
        conf = workdir / "open.conf"
        conf.write_text(
            "\n".join([
                f"user {pwd.getpwuid(os.geteuid()).pw_name}", "per_listener_settings false",
                "persistence false", "allow_anonymous true", "log_dest stderr", "log_type error",
                f"listener {self.port} 127.0.0.1", f"cafile {pki.bundle}", f"certfile {server_cert}",
                f"keyfile {server_key}", "require_certificate true", "use_identity_as_username true",
                "tls_version tlsv1.2", "set_tcp_nodelay true", "",
            ])
        )  # fmt: skip
        executable = find_mosquitto()
        assert executable is not None
        self.process = subprocess.Popen([str(executable), "-c", str(conf)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while not _listening(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("the open broker did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(5)


# -- figures ---------------------------------------------------------------------------------


def measure_rate(
    port: int, pid: int, pki: Pki, publishers: Sequence[str], seconds: float
) -> tuple[float, float]:
    """Return (delivered messages/s, broker CPU µs per delivered message)."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[tuple[int, int]] = context.Queue()
    process = context.Process(
        target=run_publishers, args=(port, str(pki.directory), publishers, seconds, results)
    )
    before = cpu_seconds(pid)
    process.start()
    _, delivered = results.get(timeout=seconds + 60)
    process.join()
    used = cpu_seconds(pid) - before
    return delivered / seconds, used / delivered * 1e6


def messages(pki: Pki, workdir: Path, options: argparse.Namespace) -> None:
    publishers = [f"pub-{index}" for index in range(options.publishers)]
    for device_id in publishers:
        pki.issue(device_id)
    gateway = start_gateway(pki, workdir, PluginMode(options.plugin))
    for device_id in publishers:
        result = gateway.enforcer.apply(DeviceAccess(device_id, TYPE_GRANT))
        assert result.outcome is Outcome.ENFORCED, result.detail
    open_broker = OpenBroker(pki, workdir)
    ours: list[tuple[float, float]] = []
    theirs: list[tuple[float, float]] = []
    try:
        for _ in range(options.rounds):
            pid = gateway.broker.pid
            assert pid is not None
            ours.append(measure_rate(gateway.config.listen_port, pid, pki, publishers, options.seconds))
            theirs.append(
                measure_rate(open_broker.port, open_broker.process.pid, pki, publishers, options.seconds)
            )
    finally:
        open_broker.stop()
        gateway.stop()
    rate, cost = statistics.median(r for r, _ in ours), statistics.median(c for _, c in ours)
    open_rate, open_cost = statistics.median(r for r, _ in theirs), statistics.median(c for _, c in theirs)
    runs = f"{options.seconds:g} s x {options.rounds}"
    print(f"(m) messages: {options.publishers} publishers, QoS 0, 64 B, {runs}, medians")
    print(f"    fleetguard ACLs  {rate:10,.0f} msg/s delivered   broker CPU {cost:6.2f} µs/msg")
    print(f"    open broker      {open_rate:10,.0f} msg/s delivered   broker CPU {open_cost:6.2f} µs/msg")
    print(
        f"    overhead         {(open_rate - rate) / open_rate * 100:+9.1f} % rate"
        f"                 {(cost - open_cost) / open_cost * 100:+6.1f} % CPU per message"
    )


def quarantine(pki: Pki, workdir: Path, options: argparse.Namespace) -> None:
    crowd = [f"idle-{index:05d}" for index in range(options.devices)]
    started = time.monotonic()
    for device_id in crowd:
        pki.issue(device_id)
    print(f"(q) quarantine: {options.devices} device certificates in {time.monotonic() - started:.1f} s")
    gateway = start_gateway(pki, workdir, PluginMode(options.plugin), () if options.untyped else crowd)
    roles = "untyped" if options.untyped else "a type each"
    state = gateway.config.plugin_state_file if gateway.plugin else gateway.config.dynsec_file
    print(f"    {state.name} {state.stat().st_size / 1e6:.1f} MB ({roles})")
    context = multiprocessing.get_context("spawn")
    events: multiprocessing.Queue[tuple[str, str, float]] = context.Queue()
    process = context.Process(
        target=run_crowd, args=(gateway.config.listen_port, str(pki.directory), crowd, events)
    )
    try:
        started = time.monotonic()
        process.start()
        kind, count, _ = events.get(timeout=600)
        assert kind == "up", (kind, count)
        print(f"    {count} devices connected in {time.monotonic() - started:.1f} s")
        step = max(1, len(crowd) // options.samples)
        kicks, verified = [], []
        for device_id in crowd[::step][: options.samples]:
            called = time.monotonic()
            result = gateway.enforcer.quarantine(device_id)
            verified.append(time.monotonic() - called)
            assert result.outcome is Outcome.ENFORCED, result.detail
            kicks.append(_closed_at(events, device_id) - called)
    finally:
        process.terminate()
        process.join()
        gateway.stop()
    print(f"    {len(verified)} quarantines, one after another, {options.devices} devices connected")
    print(f"    kick (call -> device sees close)  p50 {_ms(kicks, 50)} ms  p99 {_ms(kicks, 99)} ms")
    print(
        f"    verified (call -> enforced)       p50 {_ms(verified, 50)} ms  p99 {_ms(verified, 99)} ms"
        "   goal p99 <= 100 ms"
    )


def _closed_at(events: multiprocessing.Queue[tuple[str, str, float]], device_id: str) -> float:
    while True:
        try:
            kind, name, at = events.get(timeout=5)
        except queue.Empty as exc:
            raise RuntimeError(f"{device_id} was not kicked within 5 s") from exc
        if kind == "closed" and name == device_id:
            return at


def _ms(values: Sequence[float], percentile: int) -> str:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(percentile / 100 * len(ordered)) - 1))
    return f"{ordered[index] * 1000:6.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", action="append", choices=["messages", "quarantine"])
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--untyped", action="store_true", help="idle devices without a type")
    parser.add_argument(
        "--plugin", choices=[mode.value for mode in PluginMode], default="auto",
        help="fleetguard's auth plugin (FLEETGUARD_MQTT_PLUGIN); off: dynamic-security roles",
    )  # fmt: skip
    options = parser.parse_args()
    if find_mosquitto() is None:
        sys.exit("mosquitto is not installed")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, options.devices + 1024)), hard))
    print(f"mosquitto {find_mosquitto()}, {os.cpu_count()} cores")
    workdir = Path(tempfile.mkdtemp(prefix="bench-broker-"))
    try:
        (workdir / "pki").mkdir()
        pki = Pki.create(workdir / "pki")
        if not options.only or "messages" in options.only:
            messages(pki, workdir, options)
        if not options.only or "quarantine" in options.only:
            quarantine(pki, workdir, options)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
