"""Operator API tokens and roles.

A token reads ``fgt_<id>_<secret>``: ``id`` (12 hex digits) names the row, ``secret`` is 32 random bytes
(base64url). Only SHA-256 of the secret is stored, so a stolen database yields no usable token;
a fast hash suffices because the secret has 256 bits of entropy (no dictionary to search). Secrets
are compared in constant time. Roles map to permissions in one table; every route names the
permission it needs.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select

from fleetguard.errors import FleetguardError, InvalidInput, NotFound
from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.events.relay import publish_committed
from fleetguard.store.database import Database
from fleetguard.store.models import ApiTokenRow

__all__ = [
    "ROLE_PERMISSIONS",
    "AuthenticationFailed",
    "Forbidden",
    "Permission",
    "Role",
    "TokenInfo",
    "TokenStore",
]

_TOKEN = re.compile(r"fgt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


class Role(enum.StrEnum):
    """Operator roles, from most to least privileged."""

    ADMIN = "admin"
    OPERATOR = "operator"
    AUDITOR = "auditor"
    READ_ONLY = "read-only"


class Permission(enum.StrEnum):
    """What a route requires."""

    DEVICES_READ = "devices:read"
    DEVICES_WRITE = "devices:write"
    LIFECYCLE = "devices:lifecycle"
    INVENTORY_ADMIN = "inventory:admin"
    EVENTS_READ = "events:read"
    EVENTS_AUDIT = "events:audit"
    TOKENS_ADMIN = "tokens:admin"
    CERTS_READ = "certs:read"
    CERTS_ISSUE = "certs:issue"
    CERTS_REVOKE = "certs:revoke"
    CA_ADMIN = "ca:admin"
    ENROLL_READ = "enroll:read"
    ENROLL_ADMIN = "enroll:admin"
    POLICY_READ = "policy:read"
    POLICY_WRITE = "policy:write"
    SIGNALS_WRITE = "signals:write"
    SEGMENT_READ = "segment:read"
    SEGMENT_WRITE = "segment:write"
    FIRMWARE_READ = "firmware:read"
    FIRMWARE_WRITE = "firmware:write"
    OTA_READ = "ota:read"
    OTA_WRITE = "ota:write"
    MONITOR_READ = "monitor:read"
    MONITOR_WRITE = "monitor:write"


_OPERATOR = frozenset(
    {
        Permission.DEVICES_READ,
        Permission.DEVICES_WRITE,
        Permission.LIFECYCLE,
        Permission.INVENTORY_ADMIN,
        Permission.EVENTS_READ,
        Permission.CERTS_READ,
        Permission.CERTS_ISSUE,
        Permission.CERTS_REVOKE,
        Permission.ENROLL_READ,
        Permission.ENROLL_ADMIN,
        Permission.POLICY_READ,
        Permission.POLICY_WRITE,
        Permission.SIGNALS_WRITE,
        Permission.SEGMENT_READ,
        Permission.SEGMENT_WRITE,
        Permission.FIRMWARE_READ,
        Permission.FIRMWARE_WRITE,
        Permission.OTA_READ,
        Permission.OTA_WRITE,
        Permission.MONITOR_READ,
        Permission.MONITOR_WRITE,
    }
)
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: _OPERATOR,
    # An auditor reads everything and checks the log, but changes nothing.
    Role.AUDITOR: frozenset(
        {
            Permission.DEVICES_READ,
            Permission.EVENTS_READ,
            Permission.EVENTS_AUDIT,
            Permission.CERTS_READ,
            Permission.ENROLL_READ,
            Permission.POLICY_READ,
            Permission.SEGMENT_READ,
            Permission.FIRMWARE_READ,
            Permission.OTA_READ,
            Permission.MONITOR_READ,
        }
    ),
    Role.READ_ONLY: frozenset(
        {
            Permission.DEVICES_READ,
            Permission.CERTS_READ,
            Permission.ENROLL_READ,
            Permission.POLICY_READ,
            Permission.SEGMENT_READ,
            Permission.FIRMWARE_READ,
            Permission.OTA_READ,
            Permission.MONITOR_READ,
        }
    ),
}


class AuthenticationFailed(FleetguardError):
    """No token, a malformed one, or one that is unknown, revoked or expired."""

    status = 401
    code = "unauthenticated"


class Forbidden(FleetguardError):
    """The token's role lacks the permission the route needs."""

    status = 403
    code = "forbidden"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as listed: never its secret."""

    id: str
    name: str
    role: Role
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None

    def require(self, permission: Permission) -> None:
        """Raise :class:`Forbidden` unless this token's role grants ``permission``."""
        if permission not in ROLE_PERMISSIONS[self.role]:
            raise Forbidden(f"role {self.role} may not {permission}", hint="ask an admin for a token")


class TokenStore:
    """Creates, authenticates, lists and revokes tokens; every change is in the event log."""

    def __init__(
        self, database: Database, log: EventLog, *, on_commit: Callable[[], object] | None = None
    ) -> None:
        self._db = database
        self._log = log
        self._on_commit = on_commit

    def _committed(self) -> None:
        publish_committed(self._on_commit)

    def create(
        self,
        name: str,
        role: Role,
        *,
        actor: str,
        now: dt.datetime,
        expires_at: dt.datetime | None = None,
    ) -> tuple[TokenInfo, str]:
        """Create a token; return its info and the secret token text (shown once, never stored)."""
        if not 1 <= len(name) <= 128:
            raise InvalidInput("token name must be 1-128 characters")
        if expires_at is not None and expires_at <= now:
            raise InvalidInput("token expiry must be in the future")
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        row = ApiTokenRow(
            id=token_id,
            name=name,
            role=role.value,
            secret_sha256=hashlib.sha256(secret.encode()).digest(),
            created_at=now,
            expires_at=expires_at,
            revoked_at=None,
        )
        with self._db.transaction() as session:
            session.add(row)
            self._log.append(
                session,
                NewEvent(actor=actor, subject=f"token:{token_id}", action="token.created",
                         data={"name": name, "role": role.value}),
                now=now,
            )  # fmt: skip
        self._committed()
        return _info(row), f"fgt_{token_id}_{secret}"

    def authenticate(self, token: str, *, now: dt.datetime) -> TokenInfo:
        """Return the info of a valid token; raise :class:`AuthenticationFailed` otherwise."""
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise AuthenticationFailed("malformed API token", hint="expected fgt_<id>_<secret>")
        token_id, secret = match.groups()
        with self._db.reading() as session:
            row = session.get(ApiTokenRow, token_id)
            info = None if row is None else _info(row)
            digest = b"" if row is None else bytes(row.secret_sha256)
        offered = hashlib.sha256(secret.encode()).digest()
        if info is None or not hmac.compare_digest(offered, digest):
            raise AuthenticationFailed("unknown API token")
        if info.revoked_at is not None:
            raise AuthenticationFailed("API token revoked")
        if info.expires_at is not None and info.expires_at <= now:
            raise AuthenticationFailed("API token expired")
        return info

    def tokens(self) -> list[TokenInfo]:
        """Return every token, oldest first."""
        with self._db.reading() as session:
            rows = session.execute(select(ApiTokenRow).order_by(ApiTokenRow.created_at)).scalars()
            return [_info(row) for row in rows]

    def revoke(self, token_id: str, *, actor: str, now: dt.datetime, reason: str = "") -> TokenInfo:
        """Revoke a token (idempotent); raise :class:`NotFound` if there is none."""
        with self._db.transaction() as session:
            row = session.get(ApiTokenRow, token_id)
            if row is None:
                raise NotFound(f"no API token {token_id!r}")
            if row.revoked_at is None:
                row.revoked_at = now
                self._log.append(
                    session,
                    NewEvent(actor=actor, subject=f"token:{token_id}", action="token.revoked", reason=reason),
                    now=now,
                )
            info = _info(row)
        self._committed()
        return info


def _info(row: ApiTokenRow) -> TokenInfo:
    return TokenInfo(row.id, row.name, Role(row.role), row.created_at, row.expires_at, row.revoked_at)
