"""``fleetguard devices``: register, list with filters, show, update, and the lifecycle."""

from __future__ import annotations

import json

import pytest

from fleetguard.cli.main import app

from .conftest import Cli, one_line


def _add(cli: Cli, device_id: str, serial: str, *extra: str) -> dict[str, object]:
    device = cli.json(
        "devices", "add", "--id", device_id, "--serial", serial, "--manufacturer", "Acme", *extra
    )
    assert isinstance(device, dict)
    return device


@pytest.fixture
def fleet(cli: Cli, initialized: None) -> Cli:
    """Three devices at two sites with one device type."""
    cli.ok("sites", "add", "berlin", "--name", "Berlin plant")
    cli.ok("sites", "add", "lyon")
    cli.ok("types", "add", "cam", "--manufacturer", "Acme", "--model", "C1")
    _add(cli, "cam-1", "S1", "--site", "berlin", "--type", "cam", "--label", "env=prod", "--firmware", "1.0")
    _add(cli, "cam-2", "S2", "--site", "berlin", "--type", "cam", "--label", "env=test", "--owner", "ops")
    _add(cli, "cam-3", "S3", "--site", "lyon", "--model", "C1-special")
    return cli


def _ids(cli: Cli, *filters: str) -> list[object]:
    devices = cli.json("devices", "list", *filters)
    assert isinstance(devices, list)
    return [device["id"] for device in devices]


def test_add_then_show_returns_every_field(fleet: Cli) -> None:
    device = fleet.json("devices", "show", "cam-1")
    assert isinstance(device, dict)
    assert device["serial"] == "S1"
    assert device["site"] == "berlin"
    assert device["device_type"] == "cam"
    assert device["labels"] == {"env": "prod"}
    assert device["state"] == "registered"
    assert device["version"] == 1


def test_show_for_people_lists_the_fields(fleet: Cli) -> None:
    result = fleet.ok("devices", "show", "cam-1")
    assert "env=prod" in result.stdout
    assert "registered" in result.stdout


def test_list_json_is_an_array_ordered_by_id(fleet: Cli) -> None:
    assert _ids(fleet) == ["cam-1", "cam-2", "cam-3"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (("--site", "berlin"), ["cam-1", "cam-2"]),
        (("--serial", "S3"), ["cam-3"]),
        (("--manufacturer", "Nobody"), []),
        (("--model", "C1-special"), ["cam-3"]),
        (("--type", "cam"), ["cam-1", "cam-2"]),
        (("--firmware", "1.0"), ["cam-1"]),
        (("--owner", "ops"), ["cam-2"]),
        (("--label", "env=prod"), ["cam-1"]),
        (("--label", "env=test", "--site", "berlin"), ["cam-2"]),
        (("--search", "special"), ["cam-3"]),
        (("--state", "registered", "--limit", "2"), ["cam-1", "cam-2"]),
        (("--after", "cam-1"), ["cam-2", "cam-3"]),
        (("--created-after", "2000-01-01T00:00:00Z"), ["cam-1", "cam-2", "cam-3"]),
        (("--created-before", "2000-01-01T00:00:00Z"), []),
    ],
)
def test_list_filters(fleet: Cli, filters: tuple[str, ...], expected: list[str]) -> None:
    assert _ids(fleet, *filters) == expected


def test_list_table_for_people(fleet: Cli) -> None:
    result = fleet.ok("devices", "list", "--site", "lyon")
    assert "cam-3" in result.stdout
    assert "cam-1" not in result.stdout


def test_bad_filter_values_are_usage_errors(fleet: Cli) -> None:
    assert fleet("devices", "list", "--label", "no-equals-sign").exit_code == 2
    assert fleet("devices", "list", "--created-after", "yesterday").exit_code == 2
    assert fleet("devices", "list", "--state", "asleep").exit_code == 2


def test_update_changes_fields_and_merges_labels(fleet: Cli) -> None:
    fleet.ok("devices", "update", "cam-1", "--owner", "alice", "--label", "rack=7", "--remove-label", "env")
    device = fleet.json("devices", "show", "cam-1")
    assert isinstance(device, dict)
    assert device["owner"] == "alice"
    assert device["labels"] == {"rack": "7"}
    assert device["version"] == 2


def test_update_with_a_stale_version_fails_and_changes_nothing(fleet: Cli) -> None:
    fleet.ok("devices", "update", "cam-1", "--owner", "alice", "--expect-version", "1")
    result = fleet("devices", "update", "cam-1", "--owner", "mallory", "--expect-version", "1")
    assert result.exit_code == 1
    line = one_line(result.stderr)
    assert "is at version 2, not 1" in line
    assert "read it again and retry" in line
    device = fleet.json("devices", "show", "cam-1")
    assert isinstance(device, dict)
    assert device["owner"] == "alice"


def test_lifecycle_moves_through_the_table(fleet: Cli) -> None:
    assert "now provisioned" in fleet.ok("devices", "provision", "cam-1").stdout
    fleet.ok("devices", "activate", "cam-1", "--expect-version", "2")
    fleet.ok("devices", "quarantine", "cam-1", "--reason", "beaconing to a C2 host")
    fleet.ok("devices", "release", "cam-1")
    device = fleet.json("devices", "decommission", "cam-1", "--reason", "replaced")
    assert isinstance(device, dict)
    assert device["state"] == "decommissioned"


def test_illegal_transition_names_the_allowed_actions_and_keeps_the_state(fleet: Cli) -> None:
    result = fleet("devices", "quarantine", "cam-1", "--reason", "suspicious")
    assert result.exit_code == 1
    line = one_line(result.stderr)
    assert line == "error: device 'cam-1' is registered: cannot quarantine (allowed: provision, decommission)"
    device = fleet.json("devices", "show", "cam-1")
    assert isinstance(device, dict)
    assert device["state"] == "registered"
    assert device["version"] == 1


def test_quarantine_requires_a_reason(fleet: Cli) -> None:
    assert fleet("devices", "quarantine", "cam-1").exit_code == 2


def test_duplicate_serial_is_refused(fleet: Cli) -> None:
    result = fleet("devices", "add", "--serial", "S1", "--manufacturer", "Acme")
    assert result.exit_code == 1
    assert "S1" in one_line(result.stderr)


def test_unknown_site_is_refused(fleet: Cli) -> None:
    result = fleet("devices", "add", "--serial", "S9", "--manufacturer", "Acme", "--site", "mars")
    assert result.exit_code == 1
    assert one_line(result.stderr) == "error: no site 'mars' (create it first)"


def test_unknown_device_is_one_line_without_traceback(fleet: Cli) -> None:
    result = fleet("devices", "show", "nope")
    assert result.exit_code == 1
    assert one_line(result.stderr) == "error: no device with id 'nope' (list devices to see valid ids)"
    assert "Traceback" not in result.output


def test_verbose_adds_the_traceback(fleet: Cli) -> None:
    result = fleet.runner.invoke(app, ["-v", "--data-dir", str(fleet.data_dir), "devices", "show", "nope"])
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "DeviceNotFound" in result.stderr
    assert (
        result.stderr.rstrip().splitlines()[-1]
        == "error: no device with id 'nope' (list devices to see valid ids)"
    )


def test_every_change_is_in_the_event_log_with_the_cli_actor(fleet: Cli) -> None:
    fleet.ok("devices", "provision", "cam-2", "--reason", "identity issued")
    entries = fleet.json("events", "list", "--device", "cam-2")
    assert isinstance(entries, list)
    assert [entry["action"] for entry in entries] == ["device.registered", "device.provision"]
    assert entries[1]["reason"] == "identity issued"
    assert str(entries[1]["actor"]).startswith("cli:")


def test_sites_and_types_list(fleet: Cli) -> None:
    sites = fleet.json("sites", "list")
    assert isinstance(sites, list)
    assert [(s["id"], s["name"]) for s in sites] == [("berlin", "Berlin plant"), ("lyon", "lyon")]
    types = fleet.json("types", "list")
    assert isinstance(types, list)
    assert [(t["id"], t["model"]) for t in types] == [("cam", "C1")]
    assert "Berlin plant" in fleet.ok("sites", "list").stdout
    result = fleet("sites", "add", "berlin")
    assert result.exit_code == 1
    assert "exists already" in one_line(result.stderr)


def test_listing_nothing_says_so(cli: Cli, initialized: None) -> None:
    result = cli.ok("devices", "list")
    assert result.stdout == ""
    assert result.stderr.strip() == "no devices match"
    assert json.loads(cli.ok("devices", "list", "--json").stdout) == []
