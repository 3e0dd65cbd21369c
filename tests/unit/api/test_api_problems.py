"""Failures below the API become problem details: a locked database is a 503 with Retry-After that
changes nothing; a bug is a 500 that names an incident and nothing else."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from fleetguard.api.problems import UnhandledErrorGuard, install_problem_handlers
from fleetguard.api.tokens import Role

if TYPE_CHECKING:
    from conftest import Api


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold SQLite's write lock from another connection, as a second writer process would."""
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


@pytest.fixture
def impatient(make_api: Any) -> Api:
    api: Api = make_api(sqlite_busy_timeout_ms=50)
    return api


def test_locked_database_is_503_with_retry_after_and_changes_nothing(impatient: Api) -> None:
    size = impatient.log_size()
    with _locked(impatient.database_path):
        response = impatient.client.post(
            "/v1/devices", json={"serial": "1", "manufacturer": "acme"}, headers=impatient.headers()
        )
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    problem = response.json()
    assert problem["type"] == "https://fleetguard.dev/problems/store-unavailable"
    assert "locked" in problem["detail"]
    assert "another process holds the database lock" in problem["hint"]
    assert impatient.runtime.inventory.count() == 0
    assert impatient.log_size() == size
    after = impatient.client.post(
        "/v1/devices", json={"serial": "1", "manufacturer": "acme"}, headers=impatient.headers()
    )
    assert after.status_code == 201


def test_locked_database_during_import_writes_nothing(impatient: Api) -> None:
    with _locked(impatient.database_path):
        response = impatient.client.post(
            "/v1/devices/import",
            content=b"serial,manufacturer\n1,acme\n",
            headers=impatient.headers(Role.OPERATOR, **{"Content-Type": "text/csv"}),
        )
    assert response.status_code == 503
    assert impatient.runtime.inventory.count() == 0


def _app_failing_with(error: Exception, *, after_start: bool = False) -> TestClient:
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(UnhandledErrorGuard)

    @app.get("/boom")
    def boom() -> StreamingResponse:
        if not after_start:
            raise error

        def chunks() -> Iterator[str]:
            yield "partial"
            raise error

        return StreamingResponse(chunks())

    return TestClient(app)


def test_bug_is_500_naming_an_incident_and_nothing_else(caplog: pytest.LogCaptureFixture) -> None:
    client = _app_failing_with(RuntimeError("password=hunter2 in /srv/secret.py"))
    with caplog.at_level(logging.ERROR, logger="fleetguard.api.problems"):
        response = client.get("/boom")
    assert response.status_code == 500
    problem = response.json()
    assert problem["type"] == "https://fleetguard.dev/problems/internal"
    assert "hunter2" not in response.text
    assert "secret" not in response.text
    assert problem["incident"] in caplog.text
    assert "hunter2" in caplog.text  # the log keeps what the client must not see


def test_bug_after_the_response_started_aborts_it(caplog: pytest.LogCaptureFixture) -> None:
    client = _app_failing_with(RuntimeError("half-way"), after_start=True)
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="half-way"):
        client.get("/boom")
    assert "unhandled error" in caplog.text
