"""``fleetguard monitor alerts``: list, show and triage alerts raised by the detectors."""

from __future__ import annotations

import datetime as dt

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
