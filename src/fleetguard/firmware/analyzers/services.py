"""Insecure services the image enables: Telnet, FTP, TFTP, r-services, open UPnP, SSH root passwords.

Where a service is started is read from the files that start it:

* ``inetd.conf`` (inetd(8): ``service socket protocol wait user server [args]``), non-comment lines;
* init scripts and tables — ``/etc/init.d/*``, ``/etc/rc*``, ``/etc/init/*``, ``/etc/inittab``
  (BusyBox ``id::action:process``) and systemd units (``ExecStart=``) — where a daemon is in
  *command position* (line start, after ``;``, ``&&``, ``then``, ``exec``, ``busybox``,
  ``start-stop-daemon --exec``, an inittab action, ``ExecStart=``), so ``killall telnetd`` and
  ``[ -x /usr/sbin/telnetd ]`` are not starts;
* ``miniupnpd.conf`` ``secure_mode=no`` and OpenWrt's ``/etc/config/upnpd`` ``secure_mode '0'``
  (UPnP clients may then map ports to any host, not only to themselves);
* Dropbear started without ``-w`` (no root login) or ``-g`` (no root password login), and
  OpenWrt's ``/etc/config/dropbear`` without ``RootPasswordAuth``/``PasswordAuth`` off;
* ``sshd_config``: ``PermitRootLogin yes`` while ``PasswordAuthentication`` is not ``no``, with
  OpenSSH's defaults (``prohibit-password`` since 7.0, password authentication on) and its rule
  that the first value obtained wins; ``PermitEmptyPasswords yes``. Settings after the first
  ``Match`` are conditional and not read.

Each finding has the line number and, as offset, the byte offset of the line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from fleetguard.firmware.analyzers.content import TEXT_LIMIT, basename, is_text, lines, read_head
from fleetguard.firmware.model import Category, ExtractedTree, Finding, Severity

__all__ = ["ServiceAnalyzer", "scan_service_file"]


@dataclass(frozen=True, slots=True)
class _Daemon:
    rule: str
    severity: Severity
    title: str


_TELNET = _Daemon("service.telnet", Severity.HIGH, "Telnet server enabled")
_FTP = _Daemon("service.ftp", Severity.MEDIUM, "FTP server enabled (clear-text passwords)")
_TFTP = _Daemon("service.tftp", Severity.MEDIUM, "TFTP server enabled (no authentication)")
_RSERVICE = _Daemon("service.rservices", Severity.HIGH, "BSD r-service enabled (host-based trust)")
_DAEMONS = {
    **dict.fromkeys(("telnetd", "utelnetd", "in.telnetd"), _TELNET),
    **dict.fromkeys(("ftpd", "in.ftpd", "vsftpd", "proftpd", "pure-ftpd", "bftpd", "uftpd"), _FTP),
    **dict.fromkeys(("tftpd", "in.tftpd", "atftpd", "opentftpd"), _TFTP),
    **dict.fromkeys(("rlogind", "rshd", "rexecd", "in.rlogind", "in.rshd", "in.rexecd"), _RSERVICE),
}
_INETD_SERVICES = {
    "telnet": _TELNET,
    "ftp": _FTP,
    "tftp": _TFTP,
    "login": _RSERVICE,
    "shell": _RSERVICE,
    "exec": _RSERVICE,
}
_NO_AUTH = _Daemon("service.telnet-no-auth", Severity.CRITICAL, "Telnet server gives a shell without login")
_ROOT_PASSWORD = _Daemon(
    "service.ssh-root-password", Severity.MEDIUM, "SSH allows root login with a password"
)
_EMPTY_PASSWORDS = _Daemon("service.ssh-empty-passwords", Severity.HIGH, "SSH allows empty passwords")
_UPNP = _Daemon("service.upnp-insecure", Severity.MEDIUM, "UPnP IGD secure mode is off")

_DAEMON_NAMES = "|".join(re.escape(name) for name in sorted((*_DAEMONS, "dropbear"), key=len, reverse=True))
_LAUNCH_RE = re.compile(
    r"(?:^|[;&|()]|\bthen\b|\bdo\b|\belse\b|\bexec\b|\bnohup\b|\bbusybox\b|\bservice_start\b"
    r"|\bprocd_set_param\s+command\b|ExecStart(?:Pre)?=[-@+!:]*"
    r"|^[^:#]*:[^:]*:(?:respawn|once|sysinit|askfirst|wait|boot|bootwait):"
    r"|\bstart-stop-daemon\b[^;&|]*?(?:--exec|--startas|-x|-a)\s)"
    rf"\s*[\"']?(?:[\w./-]*/)?(?P<daemon>{_DAEMON_NAMES})(?![\w.-])(?P<args>[^;&|]*)"
)
_STOP_RE = re.compile(r"\bstart-stop-daemon\b.*\s(?:-K|--stop)\b")
_SHELL_LOGIN_RE = re.compile(r"-l\s*\S*/(?:ba|a|da|z)?sh\b|-l\s*(?:ba|a|da|z)?sh\b")
_DROPBEAR_ARG_FLAGS = frozenset("bcrpPIKWTD")  # options whose argument may follow in the same word


def _is_init_file(path: str) -> bool:
    if path.startswith(("/etc/init.d/", "/etc/rc", "/etc/init/", "/etc/inittab")):
        return True
    return "/systemd/" in path and path.endswith((".service", ".socket"))


class ServiceAnalyzer:
    """Finds insecure services that inetd, init scripts, systemd or their configuration enable."""

    name = "services"

    def analyze(self, tree: ExtractedTree) -> Iterator[Finding]:
        """Yield the findings of every inetd, init, UPnP and SSH configuration file of ``tree``."""
        for entry in tree.files():
            data = read_head(entry, TEXT_LIMIT) if _kind(entry.path) is not None else None
            if data is not None and is_text(data):
                yield from scan_service_file(entry.path, data)


def _kind(path: str) -> str | None:
    name = basename(path)
    if name == "inetd.conf":
        return "inetd"
    if name == "sshd_config":
        return "sshd"
    if (name.startswith("miniupnpd") and name.endswith(".conf")) or path.endswith("/config/upnpd"):
        return "upnp"
    if path.endswith("/config/dropbear"):
        return "dropbear-uci"
    if _is_init_file(path):
        return "init"
    return None


def scan_service_file(path: str, data: bytes) -> list[Finding]:
    """The findings of the service configuration file ``path`` with content ``data``."""
    kind = _kind(path)
    if kind == "inetd":
        return list(_inetd(path, data))
    if kind == "sshd":
        return list(_sshd(path, data))
    if kind == "upnp":
        return list(_upnp(path, data))
    if kind == "dropbear-uci":
        return list(_dropbear_uci(path, data))
    if kind == "init":
        return list(_init(path, data))
    return []


def _finding(daemon: _Daemon, path: str, number: int, offset: int, evidence: str) -> Finding:
    return Finding(
        rule=daemon.rule,
        category=Category.SERVICE,
        severity=daemon.severity,
        title=daemon.title,
        path=path,
        evidence=f"line {number}: {evidence[:200]}",
        offset=offset,
        details=(("line", str(number)),),
    )


def _text_lines(data: bytes) -> Iterator[tuple[int, int, str]]:
    """Non-empty, non-comment lines, stripped, as ``(number, offset, text)``."""
    for number, offset, raw in lines(data):
        text = raw.decode("utf-8", "replace").strip()
        if text and not text.startswith("#"):
            yield number, offset, text


def _inetd(path: str, data: bytes) -> Iterator[Finding]:
    for number, offset, text in _text_lines(data):
        fields = text.split()
        if len(fields) < 6:
            continue
        service = fields[0].rpartition(":")[2]
        programs = [basename(field) for field in fields[5:7]]
        daemon = _INETD_SERVICES.get(service) or next((_DAEMONS[p] for p in programs if p in _DAEMONS), None)
        if daemon is not None:
            yield _finding(_with_auth(daemon, " ".join(fields[5:])), path, number, offset, text)


def _with_auth(daemon: _Daemon, arguments: str) -> _Daemon:
    """Telnet that runs a shell instead of login(1) (``telnetd -l /bin/sh``) is unauthenticated."""
    return _NO_AUTH if daemon is _TELNET and _SHELL_LOGIN_RE.search(arguments) else daemon


def _init(path: str, data: bytes) -> Iterator[Finding]:
    for number, offset, text in _text_lines(data):
        if _STOP_RE.search(text):
            continue
        reported: set[str] = set()
        for match in _LAUNCH_RE.finditer(text):
            daemon = _launched(match.group("daemon"), match.group("args"))
            if daemon is not None and daemon.rule not in reported:
                reported.add(daemon.rule)
                yield _finding(daemon, path, number, offset, text)


def _launched(name: str, arguments: str) -> _Daemon | None:
    if name == "dropbear":
        return _ROOT_PASSWORD if _dropbear_allows_root_password(arguments) else None
    return _with_auth(_DAEMONS[name], arguments)


def _dropbear_allows_root_password(arguments: str) -> bool:
    """Whether ``dropbear ARGS`` lets root log in with a password (no ``-w`` or ``-g``).

    Dropbear reads flags bundled in one word (``-Fwg``) up to the first flag that takes an
    argument. A line whose arguments come from a variable cannot be decided and is not reported.
    """
    if "$" in arguments or "`" in arguments:
        return False
    for word in arguments.split():
        if not word.startswith("-") or word.startswith("--"):
            continue
        for flag in word[1:]:
            if flag in "wg":
                return False
            if flag in _DROPBEAR_ARG_FLAGS:
                break
    return True


_SSHD_KEYWORD_RE = re.compile(r"(\w+)(?:\s*=\s*|\s+)(\S+)")


def _sshd(path: str, data: bytes) -> Iterator[Finding]:
    settings: dict[str, tuple[str, int, int, str]] = {}
    for number, offset, text in _text_lines(data):
        match = _SSHD_KEYWORD_RE.match(text)
        if match is None:
            continue
        keyword = match.group(1).lower()
        if keyword == "match":
            break
        settings.setdefault(keyword, (match.group(2).lower(), number, offset, text))  # sshd_config(5)
    root = settings.get("permitrootlogin")
    password = settings.get("passwordauthentication")
    if root is not None and root[0] == "yes" and (password is None or password[0] != "no"):
        yield _finding(_ROOT_PASSWORD, path, root[1], root[2], root[3])
    empty = settings.get("permitemptypasswords")
    if empty is not None and empty[0] == "yes":
        yield _finding(_EMPTY_PASSWORDS, path, empty[1], empty[2], empty[3])


_UCI_OPTION_RE = re.compile(r"option\s+(\w+)\s+['\"]?([^'\"\s]*)")
_OFF = frozenset({"0", "off", "no", "false", "disabled"})


def _upnp(path: str, data: bytes) -> Iterator[Finding]:
    for number, offset, text in _text_lines(data):
        compact = text.replace(" ", "")
        option = _UCI_OPTION_RE.match(text)
        if compact == "secure_mode=no" or (
            option and option.group(1) == "secure_mode" and option.group(2) in _OFF
        ):
            yield _finding(_UPNP, path, number, offset, text)


def _dropbear_uci(path: str, data: bytes) -> Iterator[Finding]:
    """OpenWrt: ``config dropbear`` sections; RootPasswordAuth and PasswordAuth default to on."""
    section: tuple[int, int, str] | None = None
    refused = False
    why = "RootPasswordAuth and PasswordAuth are not off"
    for number, offset, text in _text_lines(data):
        if text.startswith("config"):
            if section is not None and not refused:
                yield _finding(_ROOT_PASSWORD, path, section[0], section[1], f"{section[2]}: {why}")
            section = (number, offset, text) if text.split()[1:2] == ["dropbear"] else None
            refused = False
            continue
        option = _UCI_OPTION_RE.match(text)
        if option and option.group(1) in {"RootPasswordAuth", "PasswordAuth"}:
            refused = refused or option.group(2).lower() in _OFF
    if section is not None and not refused:
        yield _finding(_ROOT_PASSWORD, path, section[0], section[1], f"{section[2]}: {why}")
