"""Benchmark: the decision figures of issue 5, each beside its goal and beside raw cedarpy.

(a) uncached  decisions through ``PolicyDecisionPoint.decide`` for distinct devices (so neither the
              decision cache nor the entity cache answers), under the default policy set, one core,
              by the compiled evaluator. Goals: p99 <= 1 ms and >= 5,000 decisions/s.
              Beside it, for reference: the PDP with ``compile=False`` (every request through cedarpy,
              the fallback path), and raw cedarpy: ``is_authorized`` for the same requests with the
              same pre-parsed policies and the fewest entities a request needs (the device and the
              requested topic space, encoded as the PDP encodes them) built fresh per request.
(b) cached    the same requests again (every answer from the cache). Goal: p99 <= 20 µs.

Each figure is the median of ``--runs`` runs; latencies are per call with ``time.perf_counter_ns``.
The process is pinned to one core where the OS allows it.

Run: ``.venv/bin/python bench/trust.py [--devices 20000] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import cedarpy

from fleetguard.trust import (
    DEFAULT_POLICIES,
    Action,
    DeviceFacts,
    PolicyDecisionPoint,
    RequestContext,
    device_topic,
    parse_policy_set,
)
from fleetguard.trust.pdp import _entities  # the PDP's own entity encoding

_CONTEXT = RequestContext(12, "lan")


def _fleet(count: int) -> list[DeviceFacts]:
    states = ("active",) * 8 + ("quarantined", "provisioned")
    return [
        DeviceFacts(
            f"dev-{index}", states[index % len(states)], "Acme", "Cam-X", ("camera", "meter")[index % 2],
            f"site-{index % 50}", (f"ring={index % 3}",), certificate_valid=True, risk=index % 100,
        )
        for index in range(count)
    ]  # fmt: skip


def _percentile(samples: list[int], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1000.0  # µs


def _pdp_run(fleet: list[DeviceFacts], *, compile: bool = True) -> tuple[float, float, float, float]:
    pdp = PolicyDecisionPoint(parse_policy_set(DEFAULT_POLICIES), cache_size=len(fleet) * 2, compile=compile)
    uncached: list[int] = []
    start = time.perf_counter()
    for facts in fleet:
        t0 = time.perf_counter_ns()
        pdp.decide(facts, Action.PUBLISH, device_topic(facts.device_id), _CONTEXT)
        uncached.append(time.perf_counter_ns() - t0)
    rate = len(fleet) / (time.perf_counter() - start)
    cached: list[int] = []
    for facts in fleet:
        t0 = time.perf_counter_ns()
        pdp.decide(facts, Action.PUBLISH, device_topic(facts.device_id), _CONTEXT)
        cached.append(time.perf_counter_ns() - t0)
    return rate, _percentile(uncached, 0.5), _percentile(uncached, 0.99), _percentile(cached, 0.99)


def _cedarpy_run(fleet: list[DeviceFacts]) -> tuple[float, float]:
    policies = cedarpy.PolicySet.from_str(DEFAULT_POLICIES)
    samples: list[int] = []
    start = time.perf_counter()
    for facts in fleet:
        t0 = time.perf_counter_ns()
        entities = cedarpy.Entities.from_json_str(
            json.dumps(_entities(facts, (device_topic(facts.device_id),)))
        )
        cedarpy.is_authorized(
            {
                "principal": {"type": "Fleet::Device", "id": facts.device_id},
                "action": {"type": "Fleet::Action", "id": "publish"},
                "resource": {"type": "Fleet::DeviceTopic", "id": f"devices/{facts.device_id}/#"},
                "context": {"hour": _CONTEXT.hour, "network": _CONTEXT.network},
            },
            policies,
            entities,
        )
        samples.append(time.perf_counter_ns() - t0)
    return len(fleet) / (time.perf_counter() - start), _percentile(samples, 0.99)


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    fleet = _fleet(options.devices)
    ours = [_pdp_run(fleet) for _ in range(options.runs)]
    reference = [_pdp_run(fleet, compile=False) for _ in range(options.runs)]
    raw = [_cedarpy_run(fleet) for _ in range(options.runs)]
    rate, p50, p99, cached_p99 = (statistics.median(run[i] for run in ours) for i in range(4))
    ref_rate, ref_p50, ref_p99, _ = (statistics.median(run[i] for run in reference) for i in range(4))
    raw_rate, raw_p99 = (statistics.median(run[i] for run in raw) for i in range(2))
    print(f"devices {options.devices}, runs {options.runs}, one core, medians")
    print(
        f"uncached  {rate:9,.0f} decisions/s  p50 {p50:7.1f} µs  p99 {p99:7.1f} µs"
        "   goal >= 5,000/s, p99 <= 1,000 µs (compiled)"
    )
    print(
        f"pdp/cedar {ref_rate:9,.0f} decisions/s  p50 {ref_p50:7.1f} µs  p99 {ref_p99:7.1f} µs"
        "   (the PDP's cedarpy path, for reference)"
    )
    print(
        f"cedarpy   {raw_rate:9,.0f} decisions/s               p99 {raw_p99:7.1f} µs   (same requests, raw)"
    )
    print(f"cached                              p99 {cached_p99:7.1f} µs   goal p99 <= 20 µs")


if __name__ == "__main__":
    main()
