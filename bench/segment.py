"""Benchmark: the segmentation figures of issue 6, each beside its goal.

(a) compile  a fleet of ``--devices`` devices (default 50,000) spread over every MUD profile under
             ``../shared/data/mud`` (45 real profiles: MUDgee captures and NIST's abstraction tests;
             synthetic profiles when that folder is absent) into set elements and the nft script.
             DNS names resolve (statically) to 1-3 addresses each. Goal: <= 1 s.
(b) apply    that script with ``nft -f`` in a fresh network namespace: first apply, and re-apply over
             the table in force (one transaction). Goal: <= 2 s.
(c) quarantine  ``add element ... quarantine4`` (one nft process per update, as the service does),
             ``--samples`` times at the full fleet; p50/p99. Goal: p99 <= 20 ms.
             Beside it, in the same run and namespace: the per-device-chain design (one chain per
             device holding that device's rules, reached from a verdict map; quarantine replaces the
             device's chain with a drop), its apply time and its quarantine update p50/p99.

Medians of ``--runs``. Needs root (a network namespace) and nft.
Run: ``.venv/bin/python bench/segment.py [--devices 50000] [--samples 200] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fleetguard.segment.compiler import (
    CompiledFleet,
    DeviceBinding,
    FleetContext,
    compile_fleet,
    profile_names,
)
from fleetguard.segment.model import MudProfile
from fleetguard.segment.mud import parse_mud
from fleetguard.segment.nftables import quarantine_update, render_fleet, set_elements

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mud"


def _profiles() -> dict[str, MudProfile]:
    files = sorted(DATA.glob("*/*.json")) if DATA.is_dir() else []
    profiles: dict[str, MudProfile] = {}
    for path in files:
        profile = parse_mud(path.read_bytes())
        profiles.setdefault(profile.url, profile)
    if not profiles:
        for index in range(40):
            profile = parse_mud(json.dumps(_synthetic(index)).encode())
            profiles[profile.url] = profile
    return profiles


def _synthetic(index: int) -> dict[str, object]:
    url = f"https://maker{index % 8}.example.com/model-{index}"
    aces = [
        {
            "name": f"a{n}",
            "matches": {
                "ipv4": {"protocol": 6, "ietf-acldns:dst-dnsname": f"svc{n}.maker{index % 8}.example.com"},
                "tcp": {"destination-port": {"operator": "eq", "port": 443 + n}},
            },
            "actions": {"forwarding": "accept"},
        }
        for n in range(20)
    ]
    return {
        "ietf-mud:mud": {
            "mud-version": 1, "mud-url": url, "last-update": "2026-01-01T00:00:00+00:00",
            "cache-validity": 48, "is-supported": True, "systeminfo": f"model {index}",
            "from-device-policy": {"access-lists": {"access-list": [{"name": "f"}]}},
            "to-device-policy": {"access-lists": {"access-list": [{"name": "t"}]}},
        },
        "ietf-access-control-list:acls": {"acl": [
            {"name": "f", "type": "ipv4-acl-type", "aces": {"ace": aces}},
            {"name": "t", "type": "ipv4-acl-type", "aces": {"ace": []}},
        ]},
    }  # fmt: skip


def _dns(names: frozenset[str]) -> dict[str, tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]]:
    out: dict[str, tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]] = {}
    for name in sorted(names):
        digest = hashlib.sha256(name.encode()).digest()
        count = 1 + digest[0] % 3
        out[name] = tuple(
            ipaddress.IPv4Address(bytes([198, 18 + digest[1] % 2, digest[2 + n], 1 + digest[5 + n] % 254]))
            for n in range(count)
        )
    return out


def _context(profiles: dict[str, MudProfile]) -> FleetContext:
    controllers = {
        peer.value: (ipaddress.ip_address("10.255.0.53"),)
        for profile in profiles.values() for ace in profile.aces for peer in ace.peers
        if peer.kind.value == "controller"
    }  # fmt: skip
    return FleetContext(
        local_networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.0.0/16")),
        controllers=controllers,
        my_controllers={url: (ipaddress.ip_address("10.255.0.1"),) for url in profiles},
    )


_FIRST = int(ipaddress.IPv4Address("10.64.0.0"))


def _devices(count: int, urls: list[str]) -> list[DeviceBinding]:
    return [
        DeviceBinding(f"dev-{n}", urls[n % len(urls)], ipaddress.IPv4Address(_FIRST + n))
        for n in range(count)
    ]


def _compile(count: int) -> tuple[CompiledFleet, str, float, float]:
    profiles = _profiles()
    devices = _devices(count, sorted(profiles))
    dns = _dns(profile_names(profiles.values()))
    context = _context(profiles)
    start = time.perf_counter()
    fleet = compile_fleet(profiles, devices, context, dns)
    compiled = time.perf_counter()
    script = render_fleet(fleet, comment="bench")
    rendered = time.perf_counter()
    return fleet, script, compiled - start, rendered - compiled


def _per_device_script(fleet: CompiledFleet) -> str:
    # The design the issue compares against: one chain per device with its own rules, reached from
    # a verdict map before connection tracking (so that a quarantine can cut live flows).
    elements = set_elements(fleet)
    by_class_out: dict[str, list[str]] = {}
    for element in elements["out4"]:
        klass, rest = element.split(" . ", 1)
        by_class_out.setdefault(klass, []).append(rest)
    lines = ["table inet perdevice\ndelete table inet perdevice\ntable inet perdevice {"]
    vmap: list[str] = []
    for binding in fleet.devices.values():
        if binding.ipv4 is None:
            continue
        chain = f"d_{binding.device_id.replace('-', '_')}"
        vmap.append(f"{binding.ipv4} : jump {chain}")
        allowed = by_class_out.get(str(fleet.class_of(binding.device_id)), [])
        body = (
            f"\t\tmeta l4proto . ip daddr . th sport . th dport {{ {', '.join(allowed)} }} accept\n"
            if allowed
            else ""
        )
        lines.append(f"\tchain {chain} {{\n\t\tct state established,related accept\n{body}\t\tdrop\n\t}}")
    lines.append("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;")
    lines.append(f"\t\tip saddr vmap {{ {', '.join(vmap)} }}\n\t}}\n}}\n")
    return "\n".join(lines)


class NftFailed(RuntimeError):
    """nft refused or died."""


def _nft(namespace: str, *arguments: str, script: str | None = None) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False) as handle:
        if script is not None:
            handle.write(script)
        path = handle.name
    command = ["ip", "netns", "exec", namespace, "nft", *arguments]
    if script is not None:
        command += ["-f", path]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, check=False)
    took = time.perf_counter() - start
    os.unlink(path)
    if done.returncode != 0:
        raise NftFailed(
            f"nft failed (exit {done.returncode} after {took:.1f} s): {done.stderr.decode()[:300]}"
        )
    return took


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _quarantine_samples(namespace: str, fleet: CompiledFleet, samples: int) -> list[float]:
    addresses = list(fleet.members4)
    out = []
    for n in range(samples):
        address = addresses[(n * 7919) % len(addresses)]
        out.append(_nft(namespace, script=quarantine_update([address])))
        _nft(namespace, script=quarantine_update([address], release=True))
    return out


def _per_device_quarantine(namespace: str, fleet: CompiledFleet, samples: int) -> list[float]:
    ids = list(fleet.devices)
    out = []
    for n in range(samples):
        chain = f"d_{ids[(n * 7919) % len(ids)].replace('-', '_')}"
        out.append(
            _nft(
                namespace,
                script=f"flush chain inet perdevice {chain}\nadd rule inet perdevice {chain} drop\n",
            )
        )
    return out


def _per_device(namespace: str, fleet: CompiledFleet, options: argparse.Namespace) -> None:
    subprocess.run(["ip", "netns", "exec", namespace, "nft", "flush", "ruleset"], check=True)
    try:
        took = _nft(namespace, script=_per_device_script(fleet))
    except NftFailed as exc:
        print(f"per-device chains at {len(fleet.devices)} devices: {exc}")
        fallback = min(options.per_device_fallback, len(fleet.devices))
        print(f"per-device chains: measuring at {fallback} devices instead")
        fleet, *_ = _compile(fallback)
        took = _nft(namespace, script=_per_device_script(fleet))
    samples = _per_device_quarantine(namespace, fleet, options.samples)
    p50, p99 = 1000 * statistics.median(samples), 1000 * _percentile(samples, 0.99)
    print(f"per-device chains ({len(fleet.devices)} devices): apply {took:.3f} s; "
          f"quarantine update p50 {p50:.1f} ms, p99 {p99:.1f} ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=50_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--skip-per-device", action="store_true", help="leave out the per-device-chain design"
    )
    parser.add_argument("--per-device-fallback", type=int, default=10_000,
                        help="fleet size for the per-device design if nft cannot load --devices")  # fmt: skip
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/segment.py needs root (it creates a network namespace for nft)")
    compile_s, render_s = [], []
    fleet, script = None, ""
    for _ in range(options.runs):
        fleet, script, c, r = _compile(options.devices)
        compile_s.append(c)
        render_s.append(r)
    assert fleet is not None
    elements = set_elements(fleet)
    sizes = {name: len(values) for name, values in elements.items() if values}
    print(f"fleet: {options.devices} devices, {len(fleet.classes)} profiles; elements {sizes}")
    total = [c + r for c, r in zip(compile_s, render_s, strict=True)]
    print(f"compile: {statistics.median(compile_s):.3f} s + render {statistics.median(render_s):.3f} s "
          f"= {statistics.median(total):.3f} s (median of {options.runs}; goal <= 1 s); "
          f"script {len(script) / 1e6:.1f} MB")  # fmt: skip
    namespace = f"fgbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        first = _nft(namespace, script=script)
        again = [_nft(namespace, script=script) for _ in range(options.runs)]
        print(f"apply: first {first:.3f} s, re-apply median {statistics.median(again):.3f} s (goal <= 2 s)")
        quarantine = _quarantine_samples(namespace, fleet, options.samples)
        print(f"quarantine update (sets): p50 {1000 * statistics.median(quarantine):.1f} ms, "
              f"p99 {1000 * _percentile(quarantine, 0.99):.1f} ms over {options.samples} "
              "(goal p99 <= 20 ms)")  # fmt: skip
        if not options.skip_per_device:
            _per_device(namespace, fleet, options)
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)


if __name__ == "__main__":
    main()
