"""Monitoring end to end: ``fleetguard up`` collects NetFlow over UDP, detects, alerts, and responds.

Real parts: ``fleetguard up`` with its NetFlow/IPFIX collector on a loopback UDP port, NetFlow v5
datagrams from a socket (the format routers export), the event log, the trust capability and the
inventory. A device bound to an address (segmentation) brute-forces telnet; the collector's flows
raise a ``bruteforce.telnet`` alert about that device, its risk goes to zero trust, and the response
policy quarantines it. A datagram from an exporter that is not allowed changes nothing.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prerequisites import free_port
from up_process import fleetguard_command, open_runtime, running_up
from waiting import eventually

from fleetguard.config import Settings
from fleetguard.inventory.lifecycle import Action, State
from fleetguard.inventory.model import DeviceSpec

DEVICE_ADDRESS = "10.20.0.5"
TARGET = "10.20.0.9"


def _netflow_v5(records: list[tuple[str, str, int, int]], *, sequence: int = 0) -> bytes:
    """A NetFlow v5 export (Cisco's fixed format): records of (src, dst, sport, dport), TCP, short."""
    uptime_ms = 10_000_000
    now = int(time.time())
    header = struct.pack("!HHIIIIBBH", 5, len(records), uptime_ms, now, 0, sequence, 0, 0, 0)
    body = b"".join(
        struct.pack(
            "!4s4s4sHHIIIIHHBBBBHHBBH",
            ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed, b"\0" * 4, 0, 0,
            3, 180, uptime_ms - 1000 + i, uptime_ms - 900 + i, sport, dport, 0, 0x02, 6, 0, 0, 0, 24, 24, 0,
        )
        for i, (src, dst, sport, dport) in enumerate(records)
    )  # fmt: skip
    return header + body


@pytest.fixture
def monitored(tmp_path: Path) -> Iterator[tuple[Settings, int]]:
    data = tmp_path / "data"
    api_port, netflow_port = free_port(), free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLEETGUARD_")}
    env.update(
        FLEETGUARD_DATA_DIR=str(data), FLEETGUARD_EST_PORT="0", FLEETGUARD_MQTT_PORT="0",
        FLEETGUARD_NETFLOW_HOST="127.0.0.1", FLEETGUARD_NETFLOW_PORT=str(netflow_port),
        FLEETGUARD_NETFLOW_EXPORTERS="127.0.0.1", FLEETGUARD_MONITOR_QUARANTINE_AT="30",
    )  # fmt: skip
    subprocess.run(
        [*fleetguard_command(), "init", "--trust-domain", "example.org", "--json"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    settings = Settings(data_dir=data)
    with open_runtime(settings) as runtime:
        runtime.inventory.register(DeviceSpec(id="cam-1", serial="cam-1", manufacturer="Acme"), actor="t")
        runtime.inventory.transition("cam-1", Action.PROVISION, actor="t")
        runtime.inventory.transition("cam-1", Action.ACTIVATE, actor="t")
        runtime.segment.bind("cam-1", ipv4=DEVICE_ADDRESS, actor="t")
    with running_up(env, api_port):
        yield settings, netflow_port


def _alerts(settings: Settings) -> list[tuple[str, str | None, str]]:
    with open_runtime(settings) as runtime:
        return [(a.rule, a.device_id, a.state) for a in runtime.alerts.alerts()]


def test_flows_from_an_exporter_raise_an_alert_and_quarantine_the_device(
    monitored: tuple[Settings, int],
) -> None:
    settings, port = monitored
    attempts = [(DEVICE_ADDRESS, TARGET, 40000 + i, 23) for i in range(12)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoofer:
        spoofer.bind(("127.0.0.2", 0))  # not an allowed exporter
        spoofer.sendto(_netflow_v5(attempts), ("127.0.0.1", port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as exporter:
        exporter.sendto(_netflow_v5(attempts[:6], sequence=0), ("127.0.0.1", port))
        exporter.sendto(_netflow_v5(attempts[6:], sequence=6), ("127.0.0.1", port))
    eventually(lambda: _alerts(settings) == [("bruteforce.telnet", "cam-1", "new")], "the alert", timeout=20)
    with open_runtime(settings) as runtime:
        assert runtime.trust.facts("cam-1").risk == 35
        assert runtime.inventory.get("cam-1").state is State.QUARANTINED
        actions = [e.action for e in runtime.log.entries(limit=500) if e.subject == "device:cam-1"]
        assert "monitor.alert.raised" in actions
        assert "device.quarantine" in actions
        (raised,) = runtime.log.entries(action="monitor.alert.raised", limit=5)
        assert json.loads(json.dumps(raised.details()))["rule"] == "bruteforce.telnet"
