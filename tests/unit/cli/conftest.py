"""Fixtures for the command-line tests: a runner bound to a temporary data directory."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from fleetguard.cli.main import app


@dataclass(frozen=True)
class Cli:
    """Runs ``fleetguard --data-dir <data_dir> ...`` in-process."""

    runner: CliRunner
    data_dir: Path

    def __call__(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
        return self.runner.invoke(app, ["--data-dir", str(self.data_dir), *args], env=env, input=stdin)

    def ok(self, *args: str) -> Result:
        """Run and require exit status 0."""
        result = self(*args)
        assert result.exit_code == 0, result.output
        return result

    def json(self, *args: str) -> object:
        """Run with ``--json``, require success, and return the decoded stdout."""
        return json.loads(self.ok(*args, "--json").stdout)

    @property
    def database(self) -> Path:
        return self.data_dir / "fleetguard.db"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the caller's FLEETGUARD_* variables from changing what the tests see."""
    for name in list(os.environ):
        if name.startswith("FLEETGUARD_"):
            monkeypatch.delenv(name)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(CliRunner(), tmp_path / "data")


@pytest.fixture
def admin_token(cli: Cli) -> str:
    """Initialize the installation; return the first admin token."""
    created = cli.json("init", "--trust-domain", "example.org")
    assert isinstance(created, dict)
    token = created["admin_token"]
    assert isinstance(token, str)
    return token


@pytest.fixture
def initialized(admin_token: str) -> None:
    """An initialized installation."""


def one_line(text: str) -> str:
    """Return the only line of ``text``; fail when there are more or none."""
    lines = text.strip("\n").splitlines()
    assert len(lines) == 1, text
    return lines[0]
