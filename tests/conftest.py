"""Shared fixtures: a fresh database on each backend the store supports.

``scripts/test`` starts a throwaway PostgreSQL cluster and exports ``FLEETGUARD_TEST_POSTGRES_URL``.
Without it the PostgreSQL half of the store suite is skipped, except under CI, where a missing
cluster is a failure (a skipped backend must not pass silently).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import typer.testing
from hypothesis import settings

from fleetguard.store.database import Database, open_database

POSTGRES_ENV = "FLEETGUARD_TEST_POSTGRES_URL"

# Under CI the property tests run the same examples every time (derandomize) and without a time
# deadline (CI machines are slower and noisier): a run passes or fails for the code, not the draw.
# Locally they keep exploring new random examples.
settings.register_profile("ci", derandomize=True, deadline=None, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# typer's CliRunner converts the whole Typer app into click commands on every invoke (every option of
# every group, through typing introspection): with all of fleetguard's groups that is most of a
# command's time in the CLI tests. The commands do not change while the tests run, so convert each
# app once. (typer.testing._get_command is private; this is the test harness only.)
_COMMANDS: dict[int, tuple[typer.Typer, object]] = {}  # the app is kept: its id stays its own
_get_command = typer.testing._get_command


def _cached_get_command(app: typer.Typer) -> object:
    cached = _COMMANDS.get(id(app))
    if cached is None:
        cached = _COMMANDS[id(app)] = (app, _get_command(app))
    return cached[1]


typer.testing._get_command = _cached_get_command  # type: ignore[assignment]


def postgres_url_or_skip() -> str:
    """Return the throwaway cluster's URL, or skip (fail under CI) when there is none."""
    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    if os.environ.get("CI"):
        pytest.fail(f"{POSTGRES_ENV} is not set under CI: scripts/test must start PostgreSQL")
    pytest.skip(f"{POSTGRES_ENV} not set: run the suite through scripts/test for PostgreSQL")


def fresh_postgres_url() -> str:
    """Create an empty schema in the throwaway cluster; return a URL whose search_path is it."""
    base = postgres_url_or_skip()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(base.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of a fresh, empty database: SQLite in tmp_path, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleetguard.db'}"
    return fresh_postgres_url()


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A migrated database on each backend."""
    db = open_database(database_url)
    yield db
    db.close()
