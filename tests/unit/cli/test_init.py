"""``fleetguard init``: the installation, the admin token shown once, and refusing to re-initialize."""

from __future__ import annotations

import json

from fleetguard.cli.context import load_settings
from fleetguard.installation import Runtime, load_installation
from fleetguard.types import utc_now

from .conftest import Cli, one_line


def test_init_prints_the_installation_and_a_working_admin_token(cli: Cli) -> None:
    result = cli.ok("init", "--trust-domain", "example.org", "--json")
    created = json.loads(result.stdout)
    assert set(created) == {"installation_id", "trust_domain", "data_dir", "admin_token"}
    assert created["trust_domain"] == "example.org"
    assert created["data_dir"] == str(cli.data_dir.resolve())
    assert load_installation(cli.data_dir).id == created["installation_id"]
    runtime = Runtime(load_settings(cli.data_dir, None))
    try:
        info = runtime.tokens.authenticate(created["admin_token"], now=utc_now())
    finally:
        runtime.close()
    assert info.role == "admin"


def test_init_for_people_shows_the_token_once_with_a_warning(cli: Cli) -> None:
    result = cli.ok("init", "--trust-domain", "example.org")
    assert "example.org" in result.stdout
    assert str(cli.data_dir.resolve()) in result.stdout
    assert "fgt_" in result.stdout
    assert "shown only this once" in result.stdout


def test_init_twice_fails_with_one_line_and_keeps_the_installation(cli: Cli, admin_token: str) -> None:
    before = load_installation(cli.data_dir)
    result = cli("init", "--trust-domain", "other.example")
    assert result.exit_code == 1
    line = one_line(result.stderr)
    assert line.startswith("error: ")
    assert "already holds an installation" in line
    assert "Traceback" not in result.output
    assert load_installation(cli.data_dir) == before


def test_init_refuses_a_trust_domain_that_is_not_a_dns_name(cli: Cli) -> None:
    result = cli("init", "--trust-domain", "Not A Domain")
    assert result.exit_code == 1
    assert "lower-case DNS name" in one_line(result.stderr)
    assert not (cli.data_dir / "installation.json").exists()


def test_commands_before_init_say_to_run_init(cli: Cli) -> None:
    result = cli("devices", "list")
    assert result.exit_code == 1
    assert one_line(result.stderr) == f"error: no installation in {cli.data_dir} (run: fleetguard init)"
