"""Benchmark: GET /v1/devices/{id} latency p50/p99 at a steady 200 requests/s.

The server is the real ``fleetguard up`` (uvicorn, SQLite, 10,000 devices) in its own process; the
load comes from a separate process that sends requests open-loop on a fixed schedule (latency counts
from the *scheduled* send time, so a stall is not hidden by coordinated omission) over keep-alive
connections. Run: ``.venv/bin/python bench/api_latency.py [--rate 200 --seconds 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

FLEETGUARD = str(Path(sys.executable).with_name("fleetguard"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _load(url: str, token: str, ids: list[str], rate: float, seconds: float) -> list[float]:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits
    ) as client:

        async def one(scheduled: float, device_id: str) -> None:
            nonlocal errors
            response = await client.get(f"/v1/devices/{device_id}")
            if response.status_code != 200:
                errors += 1
            latencies.append(time.perf_counter() - scheduled)

        start = time.perf_counter()
        tasks = []
        for n in range(int(rate * seconds)):
            scheduled = start + n / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled, random.choice(ids))))
        await asyncio.gather(*tasks)
    if errors:
        raise SystemExit(f"{errors} requests failed")
    return latencies


def load_main(args: argparse.Namespace) -> None:
    """The load process: print latencies in ms as JSON."""
    ids = [f"cam-{n:07d}" for n in range(args.devices)]
    latencies = asyncio.run(_load(args.url, args.token, ids, args.rate, args.seconds))
    print(json.dumps([lat * 1000 for lat in latencies]))


def _prepare(data_dir: Path, devices: int) -> str:
    env = {**os.environ, "FLEETGUARD_DATA_DIR": str(data_dir)}
    init = subprocess.run([FLEETGUARD, "init", "--trust-domain", "bench.example", "--json"],
                          env=env, check=True, capture_output=True, text=True)  # fmt: skip
    token = str(json.loads(init.stdout)["admin_token"])
    csv_path = data_dir / "devices.csv"
    rows = "".join(f"cam-{n:07d},SN{n:09d},Acme\n" for n in range(devices))
    csv_path.write_text("id,serial,manufacturer\n" + rows)
    subprocess.run([FLEETGUARD, "devices", "import", str(csv_path)], env=env, check=True, capture_output=True)
    return token


def _wait_healthy(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("fleetguard up exited early")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("fleetguard up did not become healthy in 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        load_main(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        token = _prepare(data_dir, args.devices)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "FLEETGUARD_DATA_DIR": str(data_dir)}
        server = subprocess.Popen([FLEETGUARD, "up", "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            _wait_healthy(url, server)
            load = subprocess.run(
                [sys.executable, __file__, "--load", "--url", url, "--token", token, "--rate", str(args.rate),
                 "--seconds", str(args.seconds), "--devices", str(args.devices)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)
    latencies = sorted(json.loads(load.stdout))
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(
        f"GET /v1/devices/{{id}} at {args.rate:.0f} req/s for {args.seconds:.0f} s "
        f"({len(latencies)} requests, "
        f"{args.devices} devices, SQLite): p50 {statistics.median(latencies):.2f} ms, p99 {p99:.2f} ms, "
        f"max {latencies[-1]:.2f} ms"
    )


if __name__ == "__main__":
    main()
