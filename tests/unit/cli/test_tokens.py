"""``fleetguard tokens``: the secret is printed once and works; revocation takes effect."""

from __future__ import annotations

import pytest

from fleetguard.api.tokens import AuthenticationFailed
from fleetguard.cli.context import load_settings
from fleetguard.installation import Runtime
from fleetguard.types import utc_now

from .conftest import Cli, one_line


def _authenticate(cli: Cli, token: str) -> str:
    runtime = Runtime(load_settings(cli.data_dir, None))
    try:
        return runtime.tokens.authenticate(token, now=utc_now()).role.value
    finally:
        runtime.close()


def test_create_list_revoke(cli: Cli, initialized: None) -> None:
    created = cli.json("tokens", "create", "ci-import", "--role", "operator", "--expires-in-days", "30")
    assert isinstance(created, dict)
    assert created["role"] == "operator"
    assert created["expires_at"] is not None
    assert _authenticate(cli, str(created["token"])) == "operator"

    listed = cli.json("tokens", "list")
    assert isinstance(listed, list)
    assert [t["name"] for t in listed] == ["initial admin", "ci-import"]
    assert all("token" not in t for t in listed)

    assert cli.ok("tokens", "revoke", str(created["id"]), "--reason", "rotated").stdout.startswith("revoked")
    with pytest.raises(AuthenticationFailed, match="revoked"):
        _authenticate(cli, str(created["token"]))


def test_create_for_people_prints_only_the_secret_on_stdout(cli: Cli, initialized: None) -> None:
    result = cli.ok("tokens", "create", "alice", "--role", "auditor")
    secret = one_line(result.stdout)
    assert secret.startswith("fgt_")
    assert "shown only this once" in result.stderr
    assert _authenticate(cli, secret) == "auditor"
    assert "alice" in cli.ok("tokens", "list").stdout


def test_unknown_role_is_a_usage_error(cli: Cli, initialized: None) -> None:
    assert cli("tokens", "create", "x", "--role", "root").exit_code == 2


def test_revoking_an_unknown_token_is_one_line(cli: Cli, initialized: None) -> None:
    result = cli("tokens", "revoke", "000000000000")
    assert result.exit_code == 1
    assert one_line(result.stderr) == "error: no API token '000000000000'"
