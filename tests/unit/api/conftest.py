"""Fixtures for the API tests: a real installation on a temporary SQLite data directory, its app,
and a TestClient; tokens of every role on demand."""

from __future__ import annotations

import sqlite3
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fleetguard.api.app import create_app
from fleetguard.api.tokens import Role
from fleetguard.config import Settings
from fleetguard.installation import Runtime, initialize
from fleetguard.types import utc_now

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 and warns when the test client falls back to httpx.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


@dataclass
class Api:
    """One installation served by one app, and a client for it."""

    client: TestClient
    runtime: Runtime
    admin_token: str
    _tokens: dict[Role, str] = field(default_factory=dict)

    @property
    def database_path(self) -> Path:
        return self.runtime.settings.data_dir / "fleetguard.db"

    def __post_init__(self) -> None:
        # Every role's token exists from the start, so that no test's log counts include its creation.
        for role in (Role.OPERATOR, Role.AUDITOR, Role.READ_ONLY):
            _, self._tokens[role] = self.runtime.tokens.create(
                f"test {role}", role, actor="test", now=utc_now()
            )
        self._tokens[Role.ADMIN] = self.admin_token

    def token(self, role: Role) -> str:
        """Return the token of ``role``."""
        return self._tokens[role]

    def headers(self, role: Role | None = Role.ADMIN, **extra: str) -> dict[str, str]:
        """Return request headers with a token of ``role`` (none when ``role`` is None)."""
        headers = dict(extra)
        if role is not None:
            headers["Authorization"] = f"Bearer {self.token(role)}"
        return headers

    def register(self, **fields: Any) -> dict[str, Any]:
        """Register a device as admin; return its JSON."""
        body = {"serial": f"SN-{uuid.uuid4().hex[:12]}", "manufacturer": "acme", **fields}
        response = self.client.post("/v1/devices", json=body, headers=self.headers())
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    def log_size(self) -> int:
        return self.runtime.log.size()

    def sql(self, statement: str, *parameters: object) -> None:
        """Run one statement on the database file directly, as an attacker with file access would."""
        with sqlite3.connect(self.database_path) as connection:
            connection.execute(statement, parameters)
        connection.close()


ApiFactory = Callable[..., Api]


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[ApiFactory]:
    """Return a factory of :class:`Api` taking ``Settings`` overrides; everything is closed after."""
    opened: list[tuple[TestClient, Runtime]] = []

    def factory(**overrides: Any) -> Api:
        settings = Settings(data_dir=tmp_path / f"data{len(opened)}", **overrides)
        _, admin_token = initialize(settings, "example.org", now=utc_now())
        runtime = Runtime(settings)
        client = TestClient(create_app(runtime))
        client.__enter__()
        opened.append((client, runtime))
        return Api(client, runtime, admin_token)

    yield factory
    for client, runtime in reversed(opened):
        client.__exit__(None, None, None)
        runtime.close()


@pytest.fixture
def api(make_api: ApiFactory) -> Api:
    """An installation with default settings."""
    return make_api()
