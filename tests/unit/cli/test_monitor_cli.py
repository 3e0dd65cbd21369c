"""``fleetguard monitor alerts``: list, show and triage alerts raised by the detectors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from fleetguard.config import Settings
from fleetguard.installation import Runtime
from fleetguard.inventory.model import DeviceSpec
from fleetguard.monitor.alerts import AlertInput, Severity

from .conftest import Cli, one_line


def _raise(cli: Cli) -> str:
    runtime = Runtime(Settings(data_dir=cli.data_dir))
    try:
        runtime.inventory.register(DeviceSpec(id="cam-1", serial="cam-1", manufacturer="Acme"), actor="t")
        alert = runtime.alerts.raise_alert(
            AlertInput(
                rule="bruteforce.ssh", detector="rules", severity=Severity.HIGH, address="10.0.0.5",
                reason="31 short connections to 10.0.0.9:22 in 60 s (threshold 20)",
                at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), device_id="cam-1", target="10.0.0.9",
                evidence={"attempts": 31},
            )
        )  # fmt: skip
    finally:
        runtime.close()
    assert alert is not None
    return alert.id


def test_alerts_are_listed_shown_and_triaged(cli: Cli, initialized: None) -> None:
    alert_id = _raise(cli)
    listed = cli.json("monitor", "alerts", "list", "--json")
    assert isinstance(listed, list)
    assert [(a["id"], a["state"], a["subject"], a["severity"]) for a in listed] == [
        (alert_id, "new", "cam-1", "high")
    ]
    table = cli.ok("monitor", "alerts", "list").stdout
    assert "bruteforce.ssh" in table
    assert "31 short connections" in table
    shown = cli.json("monitor", "alerts", "show", alert_id, "--json")
    assert isinstance(shown, dict)
    assert shown["evidence"] == {"attempts": 31}
    done = cli.ok("monitor", "alerts", "triage", alert_id, "false_positive", "--note", "pen test")
    assert done.stdout.strip() == f"alert {alert_id} is false_positive"
    assert cli.json("monitor", "alerts", "list", "--state", "new", "--json") == []
    again = cli("monitor", "alerts", "triage", alert_id, "resolved")
    assert again.exit_code == 1
    assert "is false_positive; it may become: nothing" in one_line(again.stderr)
    missing = cli("monitor", "alerts", "show", "nope")
    assert missing.exit_code == 1
    assert "no alert 'nope'" in one_line(missing.stderr)


def _pcap(path: Path, frames: list[tuple[bytes, str, str, int, int, int]]) -> Path:
    """A pcap of Ethernet/IPv4/TCP frames: (source MAC, source, destination, sport, dport, flags)."""
    import ipaddress
    import struct

    records = []
    for index, (mac, src, dst, sport, dport, flags) in enumerate(frames):
        tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 1024, 0, 0)
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), index, 0, 64, 6, 0,
            ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
        )  # fmt: skip
        frame = b"\xff" * 6 + mac + b"\x08\x00" + ip + tcp
        records.append(struct.pack("<IIII", 1_700_000_000 + index, 0, len(frame), len(frame)) + frame)
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + b"".join(records))
    return path


def test_unknown_addresses_are_discovered_then_adopted_or_rejected(
    cli: Cli, initialized: None, tmp_path: Path
) -> None:
    camera_mac = bytes.fromhex("f4b85eff2b1b")
    capture = _pcap(tmp_path / "lan.pcap", [
        (camera_mac, "192.168.1.129", "192.168.1.1", 40000, 443, 0x02),
        (bytes.fromhex("001c7f53d028"), "192.168.1.1", "192.168.1.129", 443, 40000, 0x12),
        (camera_mac, "192.168.1.129", "8.8.8.8", 40001, 53, 0x02),
    ])  # fmt: skip
    found = cli.json("monitor", "discover", str(capture), "--json")
    assert isinstance(found, dict)
    assert found["new"] == 2
    assert sorted(d["address"] for d in found["devices"]) == ["192.168.1.1", "192.168.1.129"]
    assert "8.8.8.8" not in str(found)  # outside the local networks
    assert cli.ok("monitor", "adopt", "192.168.1.129", "--id", "cam-9").stdout.strip() == (
        "192.168.1.129 adopted as device cam-9"
    )
    assert cli.json("devices", "show", "cam-9", "--json")["id"] == "cam-9"  # type: ignore[index]
    cli.ok("monitor", "reject", "192.168.1.1")
    states = {d["address"]: d["state"] for d in cli.json("monitor", "discovered", "--json")}  # type: ignore[union-attr]
    assert states == {"192.168.1.1": "rejected", "192.168.1.129": "adopted"}
    again = cli.json("monitor", "discover", str(capture), "--json")
    assert again["devices"] == []  # type: ignore[index]  # decided addresses are not reported again
    twice = cli("monitor", "reject", "192.168.1.1")
    assert twice.exit_code == 1
    assert "is rejected already" in one_line(twice.stderr)
