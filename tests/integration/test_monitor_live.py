"""Live capture on a real interface (loopback, AF_PACKET): frames become the same columns as files."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from prerequisites import free_port
from up_process import fleetguard_command, open_runtime, running_up
from waiting import eventually

from fleetguard.config import Settings
from fleetguard.monitor.live import LiveCapture
from fleetguard.monitor.model import address_key


def _require_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("live capture needs root under CI")
        pytest.skip("live capture needs root (CAP_NET_RAW)")


def test_udp_datagrams_on_loopback_are_captured_as_columns() -> None:
    _require_root()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        port = receiver.getsockname()[1]
        stop = threading.Event()

        def send() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                while not stop.is_set():
                    sender.sendto(b"x" * 100, ("127.0.0.1", port))
                    time.sleep(0.01)

        with LiveCapture("lo", batch=64, timeout_s=2.0) as capture:
            thread = threading.Thread(target=send, daemon=True)
            thread.start()
            try:
                packets, skipped = capture.read_batch()
            finally:
                stop.set()
                thread.join()
    ours = packets.dport == port
    assert ours.sum() >= 10
    assert set(packets.proto[ours].tolist()) == {17}
    assert set(packets.length[ours].tolist()) == {14 + 20 + 8 + 100}
    assert set(packets.src[ours].tolist()) == {address_key("127.0.0.1")}
    assert skipped.total == 0


def test_an_unknown_interface_is_a_clear_error() -> None:
    _require_root()
    from fleetguard.monitor.errors import MonitorError

    with pytest.raises(MonitorError, match="cannot capture on 'no-such-if0'"), LiveCapture("no-such-if0"):
        pass


def test_up_captures_live_traffic_and_alerts_on_a_port_scan(tmp_path: Path) -> None:
    _require_root()
    data = tmp_path / "data"
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLEETGUARD_")}
    env.update(
        FLEETGUARD_DATA_DIR=str(data), FLEETGUARD_EST_PORT="0", FLEETGUARD_MQTT_PORT="0",
        FLEETGUARD_MONITOR_INTERFACE="lo",
    )  # fmt: skip
    subprocess.run(
        [*fleetguard_command(), "init", "--trust-domain", "example.org", "--json"],
        env=env, capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    settings = Settings(data_dir=data)
    with running_up(env, free_port()):
        time.sleep(1.0)  # the capture thread is listening

        def scanned() -> bool:
            for port in range(41000, 41030):  # closed ports: a SYN, a reset
                with socket.socket() as probe:
                    probe.settimeout(0.2)
                    probe.connect_ex(("127.0.0.1", port))
            with open_runtime(settings) as runtime:
                return any(a.rule == "scan.port" for a in runtime.alerts.alerts())

        eventually(scanned, "a scan.port alert from the live capture", timeout=30)
