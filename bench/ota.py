"""Benchmark: the OTA figures of issue 8, each printed beside its goal.

(p) plan      ``CampaignService.create`` for a campaign over ``--devices`` (100,000) active devices of one
              hardware id: the inventory query, wave planning in bucket order and the bulk insert of
              every device's progress row, in one transaction on SQLite. Goal <= 5 s. Median of ``--runs``
              (each run aborts the previous campaign, so that the next one plans the same fleet).
(c) checkin   ``POST /ota/v1/checkin`` over mutual TLS against the real ``fleetguard up`` (``--est-workers``
              processes serving the mTLS endpoint, default 2: one per core; SQLite, the
              100,000-device fleet and the running campaign above) from a separate load process. The
              devices that check in hold operational certificates and sit in the campaign's last wave,
              which is not open: the real "no update" path (certificate lookup, the device's campaign
              row, its firmware status, its director metadata). (1) closed loop over ``--connections``
              keep-alive connections: check-ins per second, goal >= 600/s on 2 cores; (2) open loop at
              ``--rate`` (600/s): latency from the scheduled send time, goal p99 < 50 ms; and the bytes
              of one "no update" exchange (request and response, headers included), goal <= 2 requests
              and <= 1 KB.
(d) delta     a small change to a ~16 MiB squashfs image (``bench/ota_delta.py``): the delta's size as a
              share of the full compressed (zstd -19) image. Goal <= 5 %.
(t) pause     an error threshold breached by a device's report: the time from the report to the
              campaign paused (read back from the database). Goal <= one evaluation interval
              (``FLEETGUARD_OTA_EVALUATE_S``, 10 s): the report that breaches it pauses the campaign itself.

Run: ``.venv/bin/python bench/ota.py [--only plan,checkin,delta,pause] [--devices 100000] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from enroll import (
    HOST,
    PASSPHRASE,
    PASSPHRASE_ENV,
    _cn,
    _Connection,
    _cpu_s,
    _csr,
    _free_port,
    _percentile,
    _start_server,
    _wait_for_est,
    _write_device,
)
from firmware_images import small_squashfs
from fleetguard.config import Settings
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.lifecycle import Action
from fleetguard.inventory.model import DeviceSpec
from fleetguard.ota.keys import generate_key_file, load_signer
from fleetguard.ota.policy import default_policy
from fleetguard.ota.repository import RoleKeys
from fleetguard.ota.rollout import CampaignAction, CampaignState
from fleetguard.ota.wire import CHECKIN_PATH, CheckIn, StepReport
from fleetguard.types import utc_now

HARDWARE = "cam-x"
TRUST_DOMAIN = "bench.example"
_CHUNK = 5000
_WAVES = (("canary", 10_000), ("early", 100_000), ("broad", 1_000_000))


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def _device_id(n: int) -> str:
    return f"cam-{n:07d}"


# --- set-up ------------------------------------------------------------------------------------------


def _installation(root: Path, devices: int) -> tuple[Runtime, dict[str, object]]:
    """An installation with the CA, OTA repositories, two releases and ``devices`` active devices."""
    os.environ[PASSPHRASE_ENV] = PASSPHRASE
    settings = Settings(data_dir=root / "data")
    initialize(settings, TRUST_DOMAIN, now=utc_now())
    runtime = Runtime(settings)
    runtime.pki.initialize(actor="bench", now=utc_now())
    keys = root / "keys"
    keys.mkdir()
    signers = {}
    for name in ("root", "targets", "director", "release"):
        generate_key_file(keys / f"{name}.pem")
        signers[name] = load_signer(keys / f"{name}.pem")
    one = lambda name: RoleKeys((signers[name].public_key,), 1)  # noqa: E731
    runtime.ota.initialize(
        image_root=one("root"), image_targets=one("targets"), director_root=one("director"),
        image_root_signers=[signers["root"]], image_targets_signers=[signers["targets"]],
        director_root_signers=[signers["director"]],
    )  # fmt: skip
    runtime.ota.add_hardware(HARDWARE, one("release"), [signers["targets"]])
    app = os.urandom(64 * 1024)
    for counter, name in ((1, "1.0"), (2, "2.0")):
        image = small_squashfs(
            root / f"{name}.sqfs", {"/etc/version": name.encode(), "/bin/app": app + name.encode()}
        )
        runtime.releases.publish(
            image, hardware_ids=[HARDWARE], release=name, counter=counter, signers=[signers["release"]],
            actor="bench", scan=True,
        )  # fmt: skip
    ids = [_device_id(n) for n in range(devices)]
    for start in range(0, devices, _CHUNK):
        chunk = ids[start : start + _CHUNK]
        specs = [
            DeviceSpec(id=d, serial=f"SN{d}", manufacturer="Acme", model=HARDWARE, firmware_version="1.0")
            for d in chunk
        ]
        runtime.inventory.import_devices(specs, actor="bench")
        now = utc_now()
        for action in (Action.PROVISION, Action.ACTIVATE):
            with runtime.database.transaction() as session:
                runtime.inventory.transition_devices(
                    session, chunk, action, actor="bench", reason="", now=now
                )
    return runtime, {"release": signers["release"]}


def bench_plan(runtime: Runtime, signers: dict[str, object], args: argparse.Namespace) -> str:
    """(p): plan and persist campaigns over the whole fleet; return the id of the last (started) one."""
    times = []
    campaign_id = ""
    for run in range(args.runs):
        if campaign_id:
            runtime.campaigns.act(campaign_id, CampaignAction.ABORT, actor="bench")
        policy = default_policy(waves=_WAVES)
        started = time.perf_counter()
        campaign = runtime.campaigns.create(
            hardware_id=HARDWARE, release="2.0", policy=policy, actor="bench", campaign_id=f"bench-{run}"
        )
        times.append(time.perf_counter() - started)
        campaign_id = campaign.id
        print(f"    run {run + 1}: {campaign.devices:,} devices in {times[-1]:.2f} s "
              f"(waves {', '.join(f'{w.name}={w.stats.total}' for w in campaign.waves)})")  # fmt: skip
    median = statistics.median(times)
    print(f"(p) plan and persist a rollout to {args.devices:,} devices: median {median:.2f} s — goal <= 5 s: "
          f"{_verdict(median <= 5)}")  # fmt: skip
    runtime.campaigns.approve(campaign_id, [signers["release"]], actor="bench")  # type: ignore[list-item]
    runtime.campaigns.act(campaign_id, CampaignAction.START, actor="bench")
    return campaign_id


# --- (c) check-ins ------------------------------------------------------------------------------------


def _certificates(runtime: Runtime, campaign_id: str, count: int, material: Path) -> list[str]:
    """Issue operational certificates to ``count`` devices of the campaign's last (closed) wave."""
    last = len(_WAVES) - 1
    devices = [p.device_id for p in runtime.campaigns.devices(campaign_id, limit=100_000) if p.wave == last][
        :count
    ]
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in devices]
    records = runtime.pki.issue_devices(
        [(d, _csr(k, _cn(d))) for d, k in zip(devices, keys, strict=True)], actor="bench"
    )
    material.mkdir()
    for device_id, key, record in zip(devices, keys, records, strict=True):
        _write_device(material, device_id, key, record.der)
    root = runtime.pki.authorities()[0].certificate
    from cryptography.hazmat.primitives.serialization import Encoding

    (material / "root.pem").write_bytes(root.public_bytes(Encoding.PEM))
    return devices


def _checkin_request(port: int) -> bytes:
    body = CheckIn(HARDWARE, "1.0", 1, 0).to_bytes()
    head = (
        f"POST {CHECKIN_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Device:
    """What ``enroll._Connection`` needs of a device: its id and TLS context."""

    def __init__(self, material: Path, device_id: str) -> None:
        import ssl

        self.id = device_id
        self.context = ssl.create_default_context(cafile=material / "root.pem")
        self.context.load_cert_chain(material / f"{device_id}.pem", material / f"{device_id}.key.pem")


def load_checkins(job: dict[str, object], results: multiprocessing.Queue[dict[str, object]]) -> None:  # type: ignore[type-arg]
    """The load process: ``job['mode']`` closed or open loop of check-ins; put the figures on ``results``."""
    material, port = Path(str(job["material"])), int(str(job["port"]))
    devices = [_Device(material, d) for d in job["devices"]]  # type: ignore[attr-defined]
    connections = [_Connection(d, port) for d in devices]  # type: ignore[arg-type]
    request = _checkin_request(port)
    latencies: list[float] = []
    failures: list[str] = []
    sizes: list[int] = []
    lock = threading.Lock()
    warm_until = time.perf_counter() + 2.0
    until = warm_until + float(str(job["seconds"]))
    rate = float(str(job["rate"]))

    def exchange(connection: _Connection, started: float) -> None:
        head, body = connection.exchange(request)
        latency = time.perf_counter() - started
        with lock:
            if not head.startswith(b"HTTP/1.1 200") or json.loads(body) != {
                "director_version": 0,
                "update": False,
            }:
                failures.append(head[:80].decode(errors="replace") + body[:200].decode(errors="replace"))
            elif started >= warm_until:
                latencies.append(latency)
                sizes.append(len(request) + len(head) + 4 + len(body))

    def closed(connection: _Connection) -> None:
        while (sent := time.perf_counter()) < until:
            exchange(connection, sent)

    def opened(connection: _Connection, index: int) -> None:
        start, count = time.perf_counter(), index
        while (due := start + count / rate) < until:
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            exchange(connection, due)
            count += len(connections)

    if job["mode"] == "closed":
        threads = [threading.Thread(target=closed, args=(c,)) for c in connections]
    else:
        threads = [threading.Thread(target=opened, args=(c, i)) for i, c in enumerate(connections)]
    cpu = _cpu_s()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    results.put({
        "requests": len(latencies), "seconds": float(str(job["seconds"])), "failures": len(failures),
        "first_failure": failures[0] if failures else None, "load_cpu_s": _cpu_s() - cpu,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99_ms": _percentile(latencies, 0.99) * 1000 if latencies else float("nan"),
        "bytes": statistics.median(sizes) if sizes else float("nan"),
    })  # fmt: skip


def _run_load(job: dict[str, object], server: int) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=load_checkins, args=(job, results), name="ota-load")
    cpu = _cpu_s(server)
    process.start()
    result: dict[str, float] = results.get(timeout=float(str(job["seconds"])) + 300)
    result["server_cpu_s"] = _cpu_s(server) - cpu
    process.join()
    if result["failures"]:
        raise SystemExit(f"{result['failures']} check-ins failed; first: {result['first_failure']}")
    return result


def bench_checkin(root: Path, runtime: Runtime, campaign_id: str, args: argparse.Namespace) -> None:
    """(c): check-ins against a real ``fleetguard up`` from a separate process."""
    material = root / "devices"
    devices = _certificates(runtime, campaign_id, args.connections, material)
    runtime.close()
    port = _free_port()
    server_args = argparse.Namespace(est_workers=args.est_workers, mqtt=False)
    server = _start_server(root, port, server_args)
    try:
        _wait_for_est(port, root, server)
        base = {"material": str(material), "port": port, "devices": devices, "seconds": args.seconds}
        closed = [_run_load({**base, "mode": "closed", "rate": 0}, server.pid) for _ in range(args.runs)]
        rates = [r["requests"] / r["seconds"] for r in closed]
        median = statistics.median(rates)
        server_cpu = statistics.median(r["server_cpu_s"] / max(1, r["requests"]) * 1000 for r in closed)
        load_cpu = statistics.median(r["load_cpu_s"] / max(1, r["requests"]) * 1000 for r in closed)
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"(c1) check-ins, closed loop, {args.connections} keep-alive connections: median "
              f"{median:,.0f}/s (runs: {runs}; CPU per check-in: server {server_cpu:.2f} ms, "
              f"load {load_cpu:.2f} ms) "
              f"— goal >= 600/s: {_verdict(median >= 600)}")  # fmt: skip
        opened = [
            _run_load({**base, "mode": "open", "rate": args.rate}, server.pid) for _ in range(args.runs)
        ]
        p99 = statistics.median(r["p99_ms"] for r in opened)
        p50 = statistics.median(r["p50_ms"] for r in opened)
        size = statistics.median(r["bytes"] for r in closed)
        print(f"(c2) 'no update' check-in at {args.rate:.0f}/s (open loop): p50 {p50:.1f} ms, "
              f"p99 {p99:.1f} ms — goal p99 < 50 ms: {_verdict(p99 < 50)}")  # fmt: skip
        print(f"(c3) one 'no update' check: 1 request, {size:.0f} bytes (request + response, headers "
              f"included) — goal <= 2 requests and <= 1 KB: {_verdict(size <= 1024)}")  # fmt: skip
    finally:
        server.terminate()
        server.wait(30)


# --- (d) delta, (t) pause ---------------------------------------------------------------------------------


def bench_delta(args: argparse.Namespace) -> None:
    """(d): ``bench/ota_delta.py``'s measurement at 16 MiB."""
    from ota_delta import measure

    figures = measure(size_mib=16, runs=1)
    share = 100 * figures["ratio"]
    print(f"(d) delta for a small change to a {figures['image_bytes'] / 1e6:.1f} MB squashfs: "
          f"{figures['chosen_bytes']:,.0f} of {figures['full_compressed_bytes']:,.0f} bytes = "
          f"{share:.3f} % of the full compressed image — goal <= 5 %: {_verdict(share <= 5)}")  # fmt: skip


def bench_pause(root: Path, args: argparse.Namespace) -> None:
    """(t): the report that breaches the error threshold pauses the campaign in the same request."""
    runtime, signers = _installation(root, 40)
    try:
        times = []
        for run in range(args.runs):
            policy = default_policy(waves=(("all", 1_000_000),), error_ppm=100_000, max_retries=0)
            campaign = runtime.campaigns.create(
                hardware_id=HARDWARE, release="2.0", policy=policy, actor="bench", campaign_id=f"pause-{run}"
            )
            runtime.campaigns.approve(campaign.id, [signers["release"]], actor="bench")  # type: ignore[list-item]
            runtime.campaigns.act(campaign.id, CampaignAction.START, actor="bench")
            devices = [p.device_id for p in runtime.campaigns.devices(campaign.id)]
            for device_id in devices:
                runtime.campaigns.check_in(device_id, CheckIn(HARDWARE, "1.0", 1, 0))
            failing = devices[: len(devices) // 10]
            for device_id in failing[:-1]:
                runtime.campaigns.report(
                    device_id, StepReport(campaign.id, "2.0", "failed", "bench", utc_now())
                )
            started = time.perf_counter()
            runtime.campaigns.report(
                failing[-1], StepReport(campaign.id, "2.0", "failed", "bench", utc_now())
            )
            state = runtime.campaigns.get(campaign.id).state
            times.append(time.perf_counter() - started)
            if state is not CampaignState.PAUSED:
                raise SystemExit(f"the breach did not pause the campaign: {state}")
            runtime.campaigns.act(campaign.id, CampaignAction.ABORT, actor="bench")
        median = statistics.median(times) * 1000
        interval = Settings(data_dir=root).ota_evaluate_s
        print(f"(t) error threshold breached -> campaign paused: median {median:.1f} ms (the breaching "
              f"report pauses it) — goal <= one evaluation interval ({interval:.0f} s): "
              f"{_verdict(median / 1000 <= interval)}")  # fmt: skip
    finally:
        runtime.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default="plan,checkin,delta,pause", help="comma-separated: plan, checkin, delta, pause"
    )
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=600.0)
    parser.add_argument(
        "--est-workers", type=int, default=2, help="processes serving the mTLS endpoint (one per core)"
    )
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    print(f"bench/ota.py on {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="fleetguard-bench-ota-") as directory:
        root = Path(directory)
        if only & {"plan", "checkin"}:
            started = time.perf_counter()
            runtime, signers = _installation(root / "fleet", args.devices)
            took = time.perf_counter() - started
            print(f"    set-up: {args.devices:,} active devices, 2 releases in {took:.0f} s")
            campaign_id = bench_plan(runtime, signers, args)
            if "checkin" in only:
                bench_checkin(root / "fleet", runtime, campaign_id, args)
            else:
                runtime.close()
        if "delta" in only:
            bench_delta(args)
        if "pause" in only:
            bench_pause(root / "pause", args)


if __name__ == "__main__":
    main()
