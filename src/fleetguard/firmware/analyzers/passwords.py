"""Accounts of the image: empty passwords, known default passwords, weak hash schemes.

Reads ``passwd``, ``shadow``, their backups (``passwd-``, ``shadow-``), BSD ``master.passwd``,
``*.passwd``/``*.shadow`` and ``.htpasswd`` anywhere in the tree. An account is the first two
fields of a line (user, password field); uid and shell come from the ``passwd`` next to a
``shadow`` (or ``/etc/passwd``). Each hash is tried against the shipped list of default IoT
credentials (``data/default_credentials.txt``): the user's own defaults first, then every other
password on the list, with the crypt schemes of :mod:`.crypthash`.

The work is bounded: hashes above :data:`MAX_ROUNDS` rounds, hashes past :data:`MAX_HASHES`, and
hashes once :data:`WORK_BUDGET` hash rounds have been spent are not tried, each with an INFO
finding saying so (never silently skipped). Identical hashes are tried once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources

from fleetguard.firmware.analyzers.content import TEXT_LIMIT, basename, is_text, lines, read_head
from fleetguard.firmware.analyzers.crypthash import CryptHash, Scheme, parse_hash, verify_password
from fleetguard.firmware.model import Category, ExtractedTree, FileEntry, Finding, Severity
from fleetguard.firmware.redaction import redact

__all__ = [
    "MAX_HASHES",
    "MAX_ROUNDS",
    "WORK_BUDGET",
    "DefaultCredential",
    "PasswordAnalyzer",
    "load_default_credentials",
]

MAX_ROUNDS = 100_000  # per hash: sha-crypt allows 999,999,999 (a denial of service on the scanner)
MAX_HASHES = 32  # distinct hashes tried per image
WORK_BUDGET = 4_000_000  # hash rounds per image: a few seconds of pure-Python SHA-crypt
MAX_ACCOUNTS_PER_FILE = 1000

_ACCOUNT_FILES = frozenset({"passwd", "passwd-", "shadow", "shadow-", "master.passwd", ".htpasswd"})
_ACCOUNT_SUFFIXES = (".passwd", ".shadow", ".htpasswd")
_NO_LOGIN_SHELLS = ("/nologin", "/false", "/true", "/sync", "/shutdown", "/halt")
# The password field of an account that cannot log in with a password: locked or disabled; "x"
# alone says the hash is in shadow.
_LOCKED_PREFIXES = ("!", "*")


@dataclass(frozen=True, slots=True)
class DefaultCredential:
    """One line of the credential list: a user and the password it ships with."""

    user: str
    password: str
    line: int


@functools.cache
def load_default_credentials() -> tuple[DefaultCredential, ...]:
    """Return the shipped list (``fleetguard/firmware/data/default_credentials.txt``)."""
    text = resources.files("fleetguard.firmware").joinpath("data/default_credentials.txt").read_text("utf-8")
    credentials = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#") or ":" not in line:
            continue
        user, _, password = line.partition(":")
        credentials.append(DefaultCredential(user, password, number))
    return tuple(credentials)


@dataclass(frozen=True, slots=True)
class _Account:
    user: str
    password_field: str
    uid: int | None
    shell: str | None
    line: int
    offset: int

    @property
    def is_root(self) -> bool:
        return self.uid == 0 or (self.uid is None and self.user == "root")

    @property
    def can_log_in(self) -> bool:
        return self.shell is None or not self.shell.endswith(_NO_LOGIN_SHELLS)


def _is_account_file(path: str) -> bool:
    name = basename(path)
    return name in _ACCOUNT_FILES or name.endswith(_ACCOUNT_SUFFIXES)


def _passwd_fields(data: bytes) -> Iterator[tuple[int, int, list[str]]]:
    """Yield ``(line number, offset, fields)`` of the non-comment lines of a passwd-like file."""
    for number, offset, raw in lines(data):
        line = raw.decode("utf-8", "replace").strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        yield number, offset, line.split(":")


def _uid_shell(fields: list[str]) -> tuple[int | None, str | None]:
    """uid and shell of a passwd (7 fields) or master.passwd (10 fields) line; None elsewhere."""
    if len(fields) in (7, 10) and fields[2].isdigit():
        return int(fields[2]), fields[-1]
    return None, None


def _users_of(tree: ExtractedTree, shadow_path: str) -> dict[str, tuple[int | None, str | None]]:
    """uid and shell by user, from the passwd next to ``shadow_path`` or else ``/etc/passwd``."""
    directory = shadow_path.rpartition("/")[0]
    for candidate in (f"{directory}/passwd", "/etc/passwd"):
        entry = tree.get(candidate)
        data = read_head(entry, TEXT_LIMIT) if entry is not None else None
        if data is not None:
            return {fields[0]: _uid_shell(fields) for _, _, fields in _passwd_fields(data)}
    return {}


def _accounts(tree: ExtractedTree, entry: FileEntry, data: bytes) -> Iterator[_Account]:
    shadow_like = "shadow" in basename(entry.path)
    users = _users_of(tree, entry.path) if shadow_like else {}
    for count, (number, offset, fields) in enumerate(_passwd_fields(data)):
        if count >= MAX_ACCOUNTS_PER_FILE:
            return
        uid, shell = users.get(fields[0], (None, None)) if shadow_like else _uid_shell(fields)
        yield _Account(fields[0], fields[1], uid, shell, number, offset)


class _Budget:
    """How many more hashes and hash rounds this image may cost."""

    def __init__(self) -> None:
        self.hashes = MAX_HASHES
        self.rounds = WORK_BUDGET
        self.results: dict[str, DefaultCredential | None] = {}


class PasswordAnalyzer:
    """Finds empty passwords, default credentials and weak hash schemes in account files."""

    name = "passwords"

    def __init__(self, credentials: Iterable[DefaultCredential] | None = None) -> None:
        self._credentials = tuple(credentials) if credentials is not None else None

    def analyze(self, tree: ExtractedTree) -> Iterator[Finding]:
        """Yield the findings about every account file of ``tree``."""
        budget = _Budget()
        for entry in tree.files():
            if not _is_account_file(entry.path):
                continue
            data = read_head(entry, TEXT_LIMIT)
            if data is None or not is_text(data):
                continue
            for account in _accounts(tree, entry, data):
                yield from self._account_findings(entry.path, account, budget)

    def _account_findings(self, path: str, account: _Account, budget: _Budget) -> Iterator[Finding]:
        field = account.password_field
        if field == "":
            yield _empty_password(path, account)
            return
        if field == "x" or field.startswith(_LOCKED_PREFIXES):
            return
        parsed = parse_hash(field)
        if parsed.scheme is Scheme.UNKNOWN:
            return
        if not parsed.verifiable:
            yield _not_checked(path, account, parsed, "the scheme is not implemented")
            return
        reason = _over_budget(parsed, budget)
        if reason is not None:
            yield _not_checked(path, account, parsed, reason)
            return
        match = self._match(account.user, parsed, budget)
        if match is not None:
            yield _default_credential(path, account, parsed, match)
        elif parsed.scheme in (Scheme.DES, Scheme.MD5, Scheme.APR1):
            yield _weak_hash(path, account, parsed)

    def _match(self, user: str, parsed: CryptHash, budget: _Budget) -> DefaultCredential | None:
        if parsed.text in budget.results:
            return budget.results[parsed.text]
        budget.hashes -= 1
        found = None
        for candidate in self._candidates(user):
            budget.rounds -= parsed.rounds
            if verify_password(candidate.password.encode(), parsed):
                found = candidate
                break
        budget.results[parsed.text] = found
        return found

    def _candidates(self, user: str) -> list[DefaultCredential]:
        """The user's own defaults first, then each other password of the list once."""
        credentials = self._credentials if self._credentials is not None else load_default_credentials()
        own = [c for c in credentials if c.user == user]
        seen = {c.password for c in own}
        others = []
        for credential in credentials:
            if credential.password not in seen:
                seen.add(credential.password)
                others.append(credential)
        return own + others


def _over_budget(parsed: CryptHash, budget: _Budget) -> str | None:
    if parsed.text in budget.results:
        return None
    if parsed.rounds > MAX_ROUNDS:
        return f"{parsed.rounds} rounds is over the limit of {MAX_ROUNDS}"
    if budget.hashes <= 0:
        return f"more than {MAX_HASHES} distinct hashes in the image"
    if budget.rounds <= 0:
        return f"the work budget of {WORK_BUDGET} hash rounds is spent"
    return None


def _details(account: _Account, parsed: CryptHash | None = None) -> tuple[tuple[str, str], ...]:
    details = [("user", account.user), ("line", str(account.line))]
    if account.uid is not None:
        details.append(("uid", str(account.uid)))
    if account.shell is not None:
        details.append(("shell", account.shell))
    if parsed is not None:
        details.append(("scheme", parsed.scheme.value))
    return tuple(details)


def _empty_password(path: str, account: _Account) -> Finding:
    if not account.can_log_in:
        severity = Severity.LOW
    elif account.is_root:
        severity = Severity.CRITICAL
    else:
        severity = Severity.HIGH
    return Finding(
        rule="passwd.empty-password",
        category=Category.PASSWORD,
        severity=severity,
        title=f"Account {account.user!r} has an empty password",
        path=path,
        evidence=f"line {account.line}: {account.user} has no password (shell {account.shell or 'unknown'})",
        offset=account.offset,
        details=_details(account),
    )


def _default_credential(path: str, account: _Account, parsed: CryptHash, match: DefaultCredential) -> Finding:
    severity = Severity.CRITICAL if account.is_root and account.can_log_in else Severity.HIGH
    return Finding(
        rule="passwd.default-credential",
        category=Category.PASSWORD,
        severity=severity,
        title=f"Account {account.user!r} has a known default password",
        path=path,
        evidence=(
            f"line {account.line}: the {parsed.scheme.value} hash of {account.user} matches the password "
            f"{redact(match.password)} of the default credential list (line {match.line})"
        ),
        offset=account.offset,
        details=(*_details(account, parsed), ("credential-list-line", str(match.line))),
    )


def _weak_hash(path: str, account: _Account, parsed: CryptHash) -> Finding:
    des = parsed.scheme is Scheme.DES
    why = "DES crypt uses 8 characters and a 56-bit key" if des else "MD5-crypt is fast to brute-force"
    return Finding(
        rule="passwd.weak-hash",
        category=Category.PASSWORD,
        severity=Severity.MEDIUM if des else Severity.LOW,
        title=f"Account {account.user!r} has a password hash of a weak scheme ({parsed.scheme.value})",
        path=path,
        evidence=f"line {account.line}: {why}",
        offset=account.offset,
        details=_details(account, parsed),
    )


def _not_checked(path: str, account: _Account, parsed: CryptHash, reason: str) -> Finding:
    return Finding(
        rule="passwd.hash-not-checked",
        category=Category.PASSWORD,
        severity=Severity.INFO,
        title=f"The password hash of {account.user!r} was not checked against default credentials",
        path=path,
        evidence=f"line {account.line}: {parsed.scheme.value} hash not tried: {reason}",
        offset=account.offset,
        details=_details(account, parsed),
    )
