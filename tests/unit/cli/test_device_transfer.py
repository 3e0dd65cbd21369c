"""``fleetguard devices import`` and ``export``: all-or-nothing import, round trips, size limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetguard.cli.device_transfer import _replacing

from .conftest import Cli, one_line

_GOOD_CSV = (
    'serial,manufacturer,site,labels\nA1,Acme,berlin,"{""env"": ""prod""}"\nA2,Acme,,\nA3,Beta,berlin,\n'
)


@pytest.fixture
def site(cli: Cli, initialized: None) -> Cli:
    cli.ok("sites", "add", "berlin")
    return cli


def _count(cli: Cli) -> int:
    devices = cli.json("devices", "list", "--limit", "10000")
    assert isinstance(devices, list)
    return len(devices)


def test_import_csv_imports_every_row(site: Cli, tmp_path: Path) -> None:
    source = tmp_path / "devices.csv"
    source.write_text(_GOOD_CSV, encoding="utf-8")
    result = site.ok("devices", "import", str(source), "--reason", "initial load")
    assert result.stdout.strip() == "imported 3 devices"
    devices = site.json("devices", "list", "--label", "env=prod")
    assert isinstance(devices, list)
    assert [d["serial"] for d in devices] == ["A1"]


def test_one_bad_row_rejects_the_whole_import(site: Cli, tmp_path: Path) -> None:
    source = tmp_path / "devices.csv"
    source.write_text("serial,manufacturer,site\nA1,Acme,berlin\nA2,Acme,mars\nA3,Acme,\n", encoding="utf-8")
    result = site("devices", "import", str(source))
    assert result.exit_code == 1
    line = one_line(result.stderr)
    assert line == "error: import rejected at row 2: no site 'mars'; nothing was imported"
    assert _count(site) == 0


def test_a_row_that_repeats_another_is_named(site: Cli, tmp_path: Path) -> None:
    source = tmp_path / "devices.json"
    source.write_text(json.dumps([{"serial": "A1", "manufacturer": "Acme"}] * 2), encoding="utf-8")
    result = site("devices", "import", str(source))
    assert result.exit_code == 1
    assert "at row 2: serial 'A1' of 'Acme' repeats row 1" in one_line(result.stderr)
    assert _count(site) == 0


def test_import_json(site: Cli, tmp_path: Path) -> None:
    source = tmp_path / "devices.json"
    records = [{"serial": f"J{i}", "manufacturer": "Acme", "labels": {"batch": "7"}} for i in range(5)]
    source.write_text(json.dumps({"devices": records}), encoding="utf-8")
    assert site.ok("devices", "import", str(source)).stdout.strip() == "imported 5 devices"
    assert _count(site) == 5


def test_import_from_stdin_needs_a_format(site: Cli) -> None:
    assert site("devices", "import", "-", stdin=_GOOD_CSV).exit_code == 2
    result = site("devices", "import", "-", "--format", "csv", stdin=_GOOD_CSV)
    assert result.exit_code == 0, result.output
    assert _count(site) == 3


def test_an_unknown_extension_needs_a_format(site: Cli, tmp_path: Path) -> None:
    source = tmp_path / "devices.txt"
    source.write_text(_GOOD_CSV, encoding="utf-8")
    assert site("devices", "import", str(source)).exit_code == 2
    assert site("devices", "import", str(source), "--format", "csv").exit_code == 0


def test_oversize_import_is_refused_before_reading(site: Cli, tmp_path: Path) -> None:
    source = tmp_path / "devices.csv"
    rows = "".join(f"S{i:06},Acme,,\n" for i in range(100))
    source.write_text("serial,manufacturer,site,labels\n" + rows, encoding="utf-8")
    result = site("devices", "import", str(source), env={"FLEETGUARD_MAX_IMPORT_BYTES": "1024"})
    assert result.exit_code == 1
    line = one_line(result.stderr)
    assert "larger than the import limit of 1024 bytes" in line
    assert "FLEETGUARD_MAX_IMPORT_BYTES" in line
    assert _count(site) == 0


def test_oversize_stdin_is_refused(site: Cli) -> None:
    rows = "".join(f"S{i:06},Acme\n" for i in range(200))
    result = site(
        "devices", "import", "-", "--format", "csv",
        env={"FLEETGUARD_MAX_IMPORT_BYTES": "1024"}, stdin="serial,manufacturer\n" + rows,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "larger than the import limit" in one_line(result.stderr)


def test_missing_import_file_is_one_line(site: Cli, tmp_path: Path) -> None:
    result = site("devices", "import", str(tmp_path / "absent.csv"))
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith("error: No such file or directory")


def test_export_csv_imports_into_another_installation_unchanged(site: Cli, tmp_path: Path) -> None:
    source = tmp_path / "devices.csv"
    source.write_text(_GOOD_CSV, encoding="utf-8")
    site.ok("devices", "import", str(source))
    exported = tmp_path / "export.csv"
    result = site.ok("devices", "export", str(exported))
    assert result.stderr.strip() == f"exported 3 devices to {exported}"

    other = Cli(site.runner, tmp_path / "other")
    other.ok("init", "--trust-domain", "other.example", "--json")
    other.ok("sites", "add", "berlin")
    assert other.ok("devices", "import", str(exported)).stdout.strip() == "imported 3 devices"
    assert _fields(other) == _fields(site)


def _fields(cli: Cli) -> list[dict[str, object]]:
    devices = cli.json("devices", "list")
    assert isinstance(devices, list)
    operator_set = (
        "id",
        "serial",
        "manufacturer",
        "model",
        "device_type",
        "site",
        "owner",
        "labels",
        "mud_url",
    )
    return [{name: device[name] for name in operator_set} for device in devices]


def test_export_json_to_stdout_with_filters(site: Cli, tmp_path: Path) -> None:
    source = tmp_path / "devices.csv"
    source.write_text(_GOOD_CSV, encoding="utf-8")
    site.ok("devices", "import", str(source))
    result = site.ok("devices", "export", "-", "--format", "json", "--manufacturer", "Acme")
    exported = json.loads(result.stdout)
    assert [d["serial"] for d in sorted(exported, key=lambda d: d["serial"])] == ["A1", "A2"]
    assert result.stderr.strip() == "exported 2 devices"


def test_export_csv_to_stdout_by_default(site: Cli) -> None:
    site.ok("devices", "add", "--id", "d1", "--serial", "S1", "--manufacturer", "Acme")
    lines = site.ok("devices", "export").stdout.splitlines()
    assert lines[0].startswith("id,serial,manufacturer,")
    assert lines[1].startswith("d1,S1,Acme,")


def test_a_failed_export_leaves_the_old_file_and_no_partial_one(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old export\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="disk gone"):
        _write_then_fail(target)
    assert target.read_text(encoding="utf-8") == "old export\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def _write_then_fail(target: Path) -> None:
    with _replacing(target) as out:
        out.write("partial")
        raise RuntimeError("disk gone")
