"""Secrets in configuration: PPP, SNMP communities, Wi-Fi passphrases, hardcoded passwords and tokens.

Specific files are read by their format: PPP ``pap-secrets``/``chap-secrets`` (``client server
secret [addresses]``, pppd(8) "AUTHENTICATION"), ``snmpd.conf`` (``rocommunity``/``rwcommunity``,
``com2sec``; snmpd.conf(5)), ``wpa_supplicant*.conf`` (``psk``, ``password``, ``wep_key0..3``) and
``hostapd*.conf`` (``wpa_passphrase``, ``wpa_psk``, ``sae_password``). Configuration files and
scripts elsewhere are searched for literal values assigned to password-, secret- and token-like
names; every regular file is searched for AWS access key ids.

False positives are avoided by skipping comment lines, values that are placeholders or references
(``<your-password>``, ``${VAR}``, ``$1``, ``%s``, ``xxxx``, ``{{ secret }}``) and token-named values
of low entropy. A weak literal such as ``changeme`` *is* reported: it is the password the device
ships with. Evidence is redacted (:func:`fleetguard.firmware.redaction.redact`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from fleetguard.firmware.analyzers.content import (
    MEDIA_SUFFIXES,
    TEXT_LIMIT,
    basename,
    is_text,
    lines,
    read_head,
)
from fleetguard.firmware.model import Category, ExtractedTree, FileEntry, Finding, Severity
from fleetguard.firmware.redaction import redact

__all__ = ["MAX_BYTES", "CredentialAnalyzer", "is_placeholder", "scan_config_text"]

MAX_BYTES = 16 << 20  # per file, for the AWS key id search
MAX_FINDINGS_PER_FILE = 100
_MAX_LINE = 4096  # longer lines are data (minified code, base64), not assignments
_TOKEN_MIN_LENGTH = 16
_TOKEN_MIN_ENTROPY = 3.5  # bits per character: random base64 or hex tokens, not words

_CONFIG_SUFFIXES = (
    ".conf", ".cfg", ".cnf", ".ini", ".json", ".yaml", ".yml", ".toml", ".env", ".properties",
    ".xml", ".sh", ".py", ".lua", ".js", ".php", ".rb", ".pl", ".txt",
)  # fmt: skip
_CODE_SUFFIXES = (".py", ".lua", ".js", ".php", ".rb", ".pl", ".json")  # unquoted values are code
_COMMENT_PREFIXES = ("#", ";", "//", "<!--", "*", "/*", "--", "rem ", "REM ")

_AWS_RE = re.compile(rb"AKIA[0-9A-Z]{16}(?![0-9A-Za-z])")
_NAME = r"[A-Za-z0-9_.-]{0,40}?(?:passwd|password|passphrase|pwd|secret|token|api[_-]?key|access[_-]?key|auth[_-]?key)[A-Za-z0-9_.-]{0,40}"  # noqa: E501
_ASSIGNMENT_RE = re.compile(
    rf"(?<![A-Za-z0-9_])(?P<name>{_NAME})[\"']?\s{{0,8}}(?<![=!<>])[:=](?![=>])\s{{0,8}}"
    r"(?:\"(?P<dq>[^\"\r\n]{0,256})\"|'(?P<sq>[^'\r\n]{0,256})'|(?P<bare>[^\s\"'#;,]{1,256}))",
    re.IGNORECASE,
)
_XML_RE = re.compile(rf"<(?P<name>{_NAME})>(?P<value>[^<\r\n]{{1,256}})</(?P=name)>", re.IGNORECASE)
# Name parts that make a name hold something about a password, not one: lengths, paths, prompts.
_NOT_SECRET_PARTS = frozenset(
    {
        "len", "length", "min", "max", "minlen", "maxlen", "file", "path", "dir", "prompt", "policy",
        "expire", "expires", "expiry", "age", "hash", "hashed", "type", "field", "label", "enable",
        "enabled", "required", "require", "timeout", "retry", "retries", "url", "uri", "cmd", "command",
        "program", "method", "mode", "format", "reset", "change", "forgot", "show", "check", "verify",
        "valid", "validate", "input", "confirm", "name", "id", "ttl", "count", "size", "endpoint",
        "header", "encrypt", "encrypted", "encryption", "hint", "error", "msg", "message", "text",
    }
)  # fmt: skip
_NAME_PARTS_RE = re.compile(r"[_.\-]+|(?<=[a-z])(?=[A-Z])")
_PATH_RE = re.compile(r"/[\w./-]+")
_TOKEN_NAME_RE = re.compile(r"secret|token|api[_-]?key|access[_-]?key|auth[_-]?key", re.IGNORECASE)
_PLACEHOLDER_WORDS = frozenset(
    {
        "", "none", "null", "nil", "true", "false", "yes", "no", "on", "off", "undefined", "string",
        "required", "optional", "example", "placeholder", "dummy", "redacted", "hidden", "empty",
        "default", "str", "value", "todo", "fixme", "tbd", "your_password", "yourpassword",
    }
)  # fmt: skip
_PLACEHOLDER_RE = re.compile(
    r"^(?:<[^>]*>|\[[^\]]*\]|\{\{.*\}\}|\$.*|%.*|@[A-Za-z_]+@|`.*|(.)\1*)$"  # <x> [x] {{x}} $VAR %s @X@ xxxx
    r"|\byour[\s_-]?(?:own[\s_-]?)?(?:pass|secret|token|key|api|psk|wifi|network)",
    re.IGNORECASE,
)
_PPP_FILES = frozenset({"pap-secrets", "chap-secrets"})
_PPP_TOKEN_RE = re.compile(rb'"[^"]*"|\'[^\']*\'|[^\s"\']+')
_SNMP_DEFAULTS = frozenset({"public", "private"})
_WIFI_KEYS_RE = re.compile(
    rb"^\s*(psk|password|wep_key[0-3]|wpa_passphrase|wpa_psk|sae_password)\s*=\s*(.*?)\s*$"
)


def is_placeholder(value: str) -> bool:
    """True for values that stand for a secret rather than being one (``<pw>``, ``${PW}``, ``xxxx``)."""
    stripped = value.strip()
    return stripped.lower() in _PLACEHOLDER_WORDS or _PLACEHOLDER_RE.search(stripped) is not None


def _entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith(_COMMENT_PREFIXES)


def _unquote(token: bytes) -> str:
    text = token.decode("utf-8", "replace")
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


@dataclass(frozen=True, slots=True)
class _Secret:
    """A secret found on a line: what kind, the line, and the value (redacted when reported)."""

    rule: str
    severity: Severity
    title: str
    label: str
    value: str
    line: int
    offset: int


def _finding(path: str, secret: _Secret) -> Finding:
    return Finding(
        rule=secret.rule,
        category=Category.CREDENTIAL,
        severity=secret.severity,
        title=secret.title,
        path=path,
        evidence=f"line {secret.line}: {secret.label} = {redact(secret.value)}",
        offset=secret.offset,
        details=(("line", str(secret.line)), ("name", secret.label)),
    )


class CredentialAnalyzer:
    """Finds PPP secrets, SNMP communities, Wi-Fi passphrases, hardcoded passwords and tokens."""

    name = "credentials"

    def __init__(self, *, max_bytes: int = MAX_BYTES) -> None:
        self._max_bytes = max_bytes

    def analyze(self, tree: ExtractedTree) -> Iterator[Finding]:
        """Yield the credential findings of every regular file of ``tree``."""
        for entry in tree.files():
            if entry.path.lower().endswith(MEDIA_SUFFIXES):
                continue
            data = read_head(entry, self._max_bytes)
            if data:
                yield from _file_findings(entry, data)


def _file_findings(entry: FileEntry, data: bytes) -> Iterator[Finding]:
    secrets: list[_Secret] = []
    if len(data) <= TEXT_LIMIT and is_text(data):
        secrets.extend(scan_config_text(entry.path, data))
    secrets.extend(_aws_key_ids(data))
    for secret in secrets[:MAX_FINDINGS_PER_FILE]:
        yield _finding(entry.path, secret)


def scan_config_text(path: str, data: bytes) -> list[_Secret]:
    """The secrets in the text file ``path`` with content ``data``, by the file's kind."""
    name = basename(path)
    if name in _PPP_FILES:
        return list(_ppp_secrets(data))
    if name.startswith("snmpd") and name.endswith(".conf"):
        return list(_snmp_communities(data))
    if name.endswith(".conf") and ("wpa_supplicant" in name or "hostapd" in name):
        return list(_wifi_secrets(data))
    if _is_config_or_script(path, data) and name not in {"passwd", "shadow", "passwd-", "shadow-"}:
        return list(_assignments(path, data))
    return []


def _is_config_or_script(path: str, data: bytes) -> bool:
    return path.lower().endswith(_CONFIG_SUFFIXES) or path.startswith("/etc/") or data.startswith(b"#!")


def _ppp_secrets(data: bytes) -> Iterator[_Secret]:
    for number, offset, raw in lines(data):
        tokens = _PPP_TOKEN_RE.findall(raw)
        if len(tokens) < 3 or tokens[0].startswith(b"#"):
            continue
        client, secret = _unquote(tokens[0]), _unquote(tokens[2])
        if secret.startswith("#") or secret.startswith("@") or is_placeholder(secret):
            continue  # "@file" reads the secret from a file (pppd(8))
        yield _Secret(
            "ppp.secret",
            Severity.MEDIUM,
            "PPP secret in the image",
            f"secret of {client}",
            secret,
            number,
            offset,
        )


def _snmp_communities(data: bytes) -> Iterator[_Secret]:
    for number, offset, raw in lines(data):
        tokens = raw.decode("utf-8", "replace").split()
        if not tokens or tokens[0].startswith("#"):
            continue
        directive = tokens[0].lower()
        if directive in {"rocommunity", "rwcommunity", "rocommunity6", "rwcommunity6"} and len(tokens) >= 2:
            community, writable = tokens[1], directive.startswith("rw")
        elif directive in {"com2sec", "com2sec6"} and len(tokens) >= 4:
            community, writable = tokens[-1], False  # the access it grants is set by group/access lines
        else:
            continue
        yield _community(community, writable, directive, number, offset)


def _community(community: str, writable: bool, directive: str, number: int, offset: int) -> _Secret:
    access = "read-write" if writable else "read-only"
    if community in _SNMP_DEFAULTS:
        severity = Severity.HIGH if writable else Severity.MEDIUM
        return _Secret(
            "snmp.default-community",
            severity,
            f"Default SNMP community ({access})",
            directive,
            community,
            number,
            offset,
        )
    severity = Severity.MEDIUM if writable else Severity.LOW
    return _Secret(
        "snmp.community", severity, f"SNMP community ({access})", directive, community, number, offset
    )


def _wifi_secrets(data: bytes) -> Iterator[_Secret]:
    for number, offset, raw in lines(data):
        match = _WIFI_KEYS_RE.match(raw)
        if match is None:
            continue
        value = _unquote(match.group(2))
        if is_placeholder(value):
            continue
        key = match.group(1).decode()
        yield _Secret(
            "wifi.psk", Severity.MEDIUM, "Wi-Fi passphrase or key in the image", key, value, number, offset
        )


def _assignments(path: str, data: bytes) -> Iterator[_Secret]:
    code = path.lower().endswith(_CODE_SUFFIXES)
    for number, offset, raw in lines(data):
        if len(raw) > _MAX_LINE:
            continue
        line = raw.decode("utf-8", "replace")
        if _is_comment(line):
            continue
        for name, value in _named_values(line, code=code):
            secret = _classify(name, value, number, offset)
            if secret is not None:
                yield secret


def _named_values(line: str, *, code: bool) -> Iterator[tuple[str, str]]:
    for match in _ASSIGNMENT_RE.finditer(line):
        quoted = match.group("dq") if match.group("dq") is not None else match.group("sq")
        if quoted is not None:
            yield match.group("name"), quoted
        elif not code:
            yield match.group("name"), match.group("bare")
    for match in _XML_RE.finditer(line):
        yield match.group("name"), match.group("value")


def _classify(name: str, value: str, number: int, offset: int) -> _Secret | None:
    parts = {part.lower() for part in _NAME_PARTS_RE.split(name)}
    if parts & _NOT_SECRET_PARTS or name.upper() in {"PWD", "OLDPWD"} or is_placeholder(value):
        return None
    if _PATH_RE.fullmatch(value):
        return None  # a file holding the secret, not the secret
    if any(char in value for char in "()`$"):
        return None  # an expression or a substitution, not a literal
    if _TOKEN_NAME_RE.search(name):
        if len(value) < _TOKEN_MIN_LENGTH or _entropy(value) < _TOKEN_MIN_ENTROPY:
            return None
        return _Secret(
            "secret.token", Severity.MEDIUM, "Hardcoded token or secret", name, value, number, offset
        )
    return _Secret(
        "secret.hardcoded-password", Severity.MEDIUM, "Hardcoded password", name, value, number, offset
    )


def _aws_key_ids(data: bytes) -> Iterator[_Secret]:
    """AWS access key ids (``AKIA`` and 16 upper-case letters or digits); offset is the id's own."""
    position = data.find(b"AKIA")
    count = line = counted_to = 0
    while position >= 0 and count < MAX_FINDINGS_PER_FILE:
        match = _AWS_RE.match(data, position)
        before = data[position - 1 : position] if position else b""
        if match is not None and not (before.isalnum() and before.isascii()):
            count += 1
            line += data.count(b"\n", counted_to, position)
            counted_to = position
            title = "AWS access key id in the image"
            value = match.group(0).decode()
            yield _Secret(
                "secret.aws-access-key-id",
                Severity.HIGH,
                title,
                "AWS access key id",
                value,
                line + 1,
                position,
            )
        position = data.find(b"AKIA", position + 4)
