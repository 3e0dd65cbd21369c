"""One-time enrollment tokens: how a device without a factory certificate proves it may enroll.

A token reads ``fge_<id>_<secret>``: ``id`` (12 hex digits) names the row, ``secret`` is 32 random
bytes (base64url, 43 characters). As for API tokens (``fleetguard.api.tokens``) only SHA-256 of the
secret is stored, which suffices because the secret has 256 bits of entropy, and secrets are compared
in constant time. The device sends it as the password of HTTP Basic authentication with its device id
as the user name (RFC 7030 3.2.3).

Theory of operation. A token is bound to one device id and expires. Using it is two steps:
:meth:`EnrollmentTokens.verify` checks it without writing anything, so a request that fails later
checks (a bad CSR, a quarantined device) leaves it usable; :meth:`EnrollmentTokens.claim` then marks it
used in the same transaction that appends the enrollment decision to the event log, re-checking under
a row lock, so two concurrent requests with one token cannot both succeed. If issuing the certificate
then fails for a server-side reason, :meth:`EnrollmentTokens.release` gives the token back.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from fleetguard.enroll.errors import EnrollmentInputRejected, EnrollmentNotFound, TokenRejected
from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.inventory.service import device_event_subject
from fleetguard.store.database import Database
from fleetguard.store.models import EnrollmentTokenRow

__all__ = [
    "MAX_TOKEN_TTL",
    "MIN_TOKEN_TTL",
    "EnrollmentToken",
    "EnrollmentTokens",
    "TokenStatus",
    "TokenText",
    "parse_token",
]

MIN_TOKEN_TTL = dt.timedelta(minutes=1)
MAX_TOKEN_TTL = dt.timedelta(days=30)
"""A token is a bearer credential: it should not outlive the installation visit it was made for."""

_PREFIX = "fge_"
_ID_HEX = 12
_SECRET_CHARS = 43  # base64url of 32 bytes, unpadded
_TOKEN = re.compile(r"fge_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_TOKEN_LENGTH = len(_PREFIX) + _ID_HEX + 1 + _SECRET_CHARS
_MAX_SOURCE = 128


@dataclass(frozen=True, slots=True)
class TokenText:
    """A token's id and secret; ``str()`` gives the ``fge_<id>_<secret>`` text."""

    id: str
    secret: str

    def __str__(self) -> str:
        return f"{_PREFIX}{self.id}_{self.secret}"

    @classmethod
    def generate(cls) -> TokenText:
        """Return a new random token."""
        return cls(secrets.token_hex(_ID_HEX // 2), secrets.token_urlsafe(32))

    def secret_sha256(self) -> bytes:
        """Return the SHA-256 of the secret, as stored."""
        return hashlib.sha256(self.secret.encode()).digest()


def parse_token(text: str) -> TokenText:
    """Return the id and secret of ``fge_<id>_<secret>``; raise ``TokenRejected`` for anything else."""
    # Length first: a megabyte of garbage in a password field costs one comparison.
    match = _TOKEN.fullmatch(text) if len(text) == _TOKEN_LENGTH else None
    if match is None:
        raise TokenRejected("malformed token: expected fge_<id>_<secret>")
    return TokenText(match.group(1), match.group(2))


class TokenStatus(enum.StrEnum):
    """Whether a token can still be used."""

    ACTIVE = "active"
    USED = "used"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class EnrollmentToken:
    """A token as listed: never its secret."""

    id: str
    device_id: str
    created_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None
    used_source: str | None
    revoked_at: dt.datetime | None

    def status(self, now: dt.datetime) -> TokenStatus:
        """Return the token's status at ``now`` (revoked, then used, then expired, else active)."""
        if self.revoked_at is not None:
            return TokenStatus.REVOKED
        if self.used_at is not None:
            return TokenStatus.USED
        if self.expires_at <= now:
            return TokenStatus.EXPIRED
        return TokenStatus.ACTIVE

    def require_usable(self, device_id: str | None, now: dt.datetime) -> None:
        """Return if the token may enroll ``device_id`` at ``now``; raise ``TokenRejected`` saying why not."""
        if device_id is None:
            raise TokenRejected("no device id: send it as the HTTP Basic user name")
        if device_id != self.device_id:
            raise TokenRejected("the token was issued for another device", device_id=device_id)
        match self.status(now):
            case TokenStatus.ACTIVE:
                return
            case TokenStatus.USED:
                raise TokenRejected("already used", device_id=device_id)
            case TokenStatus.EXPIRED:
                raise TokenRejected(f"expired at {self.expires_at.isoformat()}", device_id=device_id)
            case TokenStatus.REVOKED:
                raise TokenRejected("revoked", device_id=device_id)


class EnrollmentTokens:
    """The enrollment tokens in ``database``; creation and revocation are in ``log``."""

    def __init__(self, database: Database, log: EventLog) -> None:
        self._db = database
        self._log = log

    def create(
        self, device_id: str, *, ttl: dt.timedelta, actor: str, now: dt.datetime
    ) -> tuple[EnrollmentToken, str]:
        """Create a token for ``device_id`` valid for ``ttl``; return it and its text (shown once).

        Raises ``EnrollmentInputRejected`` unless ``MIN_TOKEN_TTL <= ttl <= MAX_TOKEN_TTL``.
        """
        if not MIN_TOKEN_TTL <= ttl <= MAX_TOKEN_TTL:
            raise EnrollmentInputRejected(
                f"token lifetime must be between {MIN_TOKEN_TTL} and {MAX_TOKEN_TTL}"
            )
        text = TokenText.generate()
        row = EnrollmentTokenRow(
            id=text.id, device_id=device_id, secret_sha256=text.secret_sha256(), created_at=now,
            expires_at=now + ttl, used_at=None, used_source=None, revoked_at=None,
        )  # fmt: skip
        with self._db.transaction() as session:
            session.add(row)
            self._log.append(
                session,
                NewEvent(actor=actor, subject=device_event_subject(device_id), action="enroll.token-created",
                         data={"token": text.id, "expires_at": row.expires_at.isoformat()}),
                now=now,
            )  # fmt: skip
        return _token(row), str(text)

    def verify(self, text: str, *, device_id: str | None, now: dt.datetime) -> EnrollmentToken:
        """Return the token ``text`` if it may enroll ``device_id`` now; write nothing.

        Raises ``TokenRejected``: malformed, unknown, wrong secret, for another device, used, expired
        or revoked.
        """
        parsed = parse_token(text)
        with self._db.reading() as session:
            row = session.get(EnrollmentTokenRow, parsed.id)
            token = None if row is None else _token(row)
            digest = b"" if row is None else bytes(row.secret_sha256)
        if token is None or not hmac.compare_digest(parsed.secret_sha256(), digest):
            raise TokenRejected("unknown token", device_id=device_id)
        token.require_usable(device_id, now)
        return token

    def claim(self, token_id: str, decision: NewEvent, *, source: str, now: dt.datetime) -> None:
        """Mark the token used and append ``decision``, in one transaction.

        Raises ``TokenRejected`` if it was used, revoked or expired since :meth:`verify` (a replay
        racing the first use); then nothing is written.
        """
        with self._db.transaction() as session:
            row = session.get(EnrollmentTokenRow, token_id, with_for_update=True)
            if row is None:
                raise TokenRejected("unknown token")
            _token(row).require_usable(row.device_id, now)
            row.used_at = now
            row.used_source = source[:_MAX_SOURCE]
            self._log.append(session, decision, now=now)

    def release(self, token_id: str, failure: NewEvent, *, now: dt.datetime) -> None:
        """Make a claimed token usable again and append ``failure`` (issuing failed server-side)."""
        with self._db.transaction() as session:
            row = session.get(EnrollmentTokenRow, token_id, with_for_update=True)
            if row is not None:
                row.used_at = None
                row.used_source = None
            self._log.append(session, failure, now=now)

    def tokens(self, *, device_id: str | None = None, limit: int = 1000) -> list[EnrollmentToken]:
        """Return tokens (of one device, or all), newest first."""
        query = select(EnrollmentTokenRow).order_by(EnrollmentTokenRow.created_at.desc()).limit(limit)
        if device_id is not None:
            query = query.where(EnrollmentTokenRow.device_id == device_id)
        with self._db.reading() as session:
            return [_token(row) for row in session.execute(query).scalars()]

    def revoke(self, token_id: str, *, actor: str, now: dt.datetime) -> EnrollmentToken:
        """Revoke a token (idempotent); return it. Raises ``EnrollmentNotFound``."""
        with self._db.transaction() as session:
            row = session.get(EnrollmentTokenRow, token_id)
            if row is None:
                raise EnrollmentNotFound(f"no enrollment token {token_id[:32]!r}")
            if row.revoked_at is None:
                row.revoked_at = now
                self._log.append(
                    session,
                    NewEvent(actor=actor, subject=device_event_subject(row.device_id),
                             action="enroll.token-revoked", data={"token": token_id}),
                    now=now,
                )  # fmt: skip
            return _token(row)


def _token(row: EnrollmentTokenRow) -> EnrollmentToken:
    return EnrollmentToken(
        id=row.id, device_id=row.device_id, created_at=row.created_at, expires_at=row.expires_at,
        used_at=row.used_at, used_source=row.used_source, revoked_at=row.revoked_at,
    )  # fmt: skip
