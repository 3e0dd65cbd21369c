"""The ``fleetguard`` and ``fleetguard-agent`` programs: help everywhere, usage errors, exit statuses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from fleetguard import __version__
from fleetguard.agent.main import app as agent_app
from fleetguard.cli.exit_status import ExitStatus, ReportingGroup, failure_line
from fleetguard.cli.main import app
from fleetguard.errors import NotFound

from .conftest import Cli, one_line


def _command_paths(command: object, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _command_paths(sub, (*path, name))


_PATHS = list(_command_paths(get_command(app)))
_AGENT_PATHS = list(_command_paths(get_command(agent_app)))


def test_the_tree_has_every_command_group() -> None:
    assert {path[0] for path in _PATHS if path} == {
        "init",
        "up",
        "devices",
        "sites",
        "types",
        "events",
        "tokens",
        "ca",
        "certs",
        "enroll",
        "policy",
        "segment",
        "firmware",
        "ota",
        "monitor",
    }
    assert ("devices", "import") in _PATHS
    assert ("events", "verify") in _PATHS
    assert ("policy", "apply") in _PATHS
    assert ("firmware", "gate", "check") in _PATHS
    assert ("ota", "campaign", "approve") in _PATHS
    assert ("monitor", "alerts", "triage") in _PATHS


@pytest.mark.parametrize("path", _PATHS, ids=lambda path: " ".join(path) or "fleetguard")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout


@pytest.mark.parametrize("path", _AGENT_PATHS, ids=lambda path: " ".join(path) or "fleetguard-agent")
def test_every_agent_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(agent_app, [*path, "--help"])
    assert result.exit_code == 0, result.output


def test_top_level_help_documents_the_exit_statuses() -> None:
    text = " ".join(CliRunner().invoke(app, ["--help"]).stdout.split())
    assert "0 ok" in text
    assert "1 failure" in text
    assert "2 usage error" in text


def test_agent_version() -> None:
    result = CliRunner().invoke(agent_app, ["version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"fleetguard-agent {__version__}"


@pytest.mark.parametrize(
    "args",
    [
        ["--no-such-option"],
        ["devices", "add", "--manufacturer", "Acme"],  # --serial is required
        ["devices", "show"],
        ["events", "show", "not-a-number"],
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_2(cli: Cli, args: list[str]) -> None:
    result = cli(*args)
    assert result.exit_code == ExitStatus.USAGE
    assert "Usage:" in result.output


def test_a_bad_setting_is_one_line(cli: Cli) -> None:
    result = cli("devices", "list", env={"FLEETGUARD_API_PORT": "not-a-port"})
    assert result.exit_code == 1
    line = one_line(result.stderr)
    assert line.startswith("error: setting api_port is invalid:")
    assert "FLEETGUARD_API_PORT" in line


def test_database_url_option_overrides_the_data_dir_database(cli: Cli, initialized: None) -> None:
    elsewhere = cli.data_dir.parent / "elsewhere.db"
    cli.ok("--database-url", f"sqlite:///{elsewhere}", "devices", "list")
    assert elsewhere.exists()


def test_failure_lines_are_single_lines() -> None:
    assert failure_line(NotFound("no\nsuch thing", hint="look")) == "no such thing (look)"
    assert failure_line(FileNotFoundError(2, "No such file or directory", "x.csv")).startswith(
        "No such file or directory: x.csv"
    )
    assert "unexpected ValueError: boom" in failure_line(ValueError("boom"))


def test_an_unexpected_error_is_one_line_and_verbose_shows_it() -> None:
    broken = typer.Typer(cls=ReportingGroup)

    @broken.callback()
    def root(verbose: Annotated[bool, typer.Option("-v")] = False) -> None:
        """Root."""

    @broken.command()
    def fail() -> None:
        """Fail."""
        raise ValueError("boom")

    quiet = CliRunner().invoke(broken, ["fail"])
    assert quiet.exit_code == 1
    assert one_line(quiet.stderr).startswith("error: unexpected ValueError: boom")
    loud = CliRunner().invoke(broken, ["-v", "fail"])
    assert "Traceback" in loud.stderr
