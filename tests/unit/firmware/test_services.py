"""Insecure services are found where they are started; stops, tests and comments are not starts."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_trees import tree_of
from fleetguard.firmware.analyzers.services import ServiceAnalyzer
from fleetguard.firmware.model import Category, Finding, Severity


def keyed(findings: list[Finding]) -> set[tuple[str, Severity, str, int | None]]:
    return {(f.rule, f.severity, f.path, f.offset) for f in findings}


def offset_of(content: bytes, line_start: bytes) -> int:
    """The offset of the line that starts with ``line_start``."""
    return (b"\n" + content).index(b"\n" + line_start)


INETD = (
    b"#telnet\tstream\ttcp\tnowait\troot\t/usr/sbin/telnetd\ttelnetd\n"
    b"ftp\tstream\ttcp\tnowait\troot\t/usr/sbin/ftpd\tftpd -w /srv\n"
    b"tftp\tdgram\tudp\twait\troot\t/usr/sbin/tftpd\ttftpd /srv/tftp\n"
    b"23\tstream\ttcp\tnowait\troot\t/bin/busybox\ttelnetd -i -l /bin/sh\n"
    b"daytime\tstream\ttcp\tnowait\troot\tinternal\n"
)
RCS = (
    b"#!/bin/sh\n"
    b"# /usr/sbin/telnetd -l /bin/login\n"
    b"killall telnetd\n"
    b"if [ -x /usr/sbin/telnetd ]; then\n"
    b"    /usr/sbin/telnetd -l /bin/login &\n"
    b"fi\n"
    b"start-stop-daemon -K -x /usr/sbin/utelnetd\n"
    b"echo 'starting dropbear'\n"
    b"dropbear -r /etc/dropbear/dropbear_rsa_host_key -p 22\n"
    b"/usr/sbin/dropbear -F -w -p 2222\n"
    b"/usr/sbin/dropbear -Fg\n"
    b"dropbear $DROPBEAR_ARGS\n"
)
INITTAB = b"::sysinit:/etc/init.d/rcS\n::respawn:/usr/sbin/utelnetd -d\nttyS0::askfirst:-/bin/sh\n"
UNIT = b"[Service]\nExecStart=-/usr/sbin/in.tftpd -s /srv/tftp\n"
VSFTPD_INIT = b"#!/bin/sh /etc/rc.common\nstart() {\n\tservice_start /usr/sbin/vsftpd\n}\n"
MINIUPNPD = b"ext_ifname=eth0\n# secure_mode=no\nsecure_mode=no\n"
UCI_UPNP = b"config upnpd 'config'\n\toption secure_mode '0'\n"
UCI_DROPBEAR = b"config dropbear\n\toption PasswordAuth 'on'\n\toption Port '22'\n"
UCI_DROPBEAR_SAFE = b"config dropbear\n\toption RootPasswordAuth 'off'\n"
SSHD = (
    b"# PermitRootLogin yes\n"
    b"PermitRootLogin yes\n"
    b"PermitRootLogin no\n"  # the first value wins: this line does nothing
    b"PermitEmptyPasswords yes\n"
    b"Match User backup\n"
    b"    PasswordAuthentication no\n"
)
SSHD_SAFE = b"PermitRootLogin prohibit-password\nPasswordAuthentication yes\n"
SSHD_NO_PASSWORDS = b"PermitRootLogin yes\nPasswordAuthentication no\n"


def test_planted_services_are_found_with_exact_rule_severity_and_offset(tmp_path: Path) -> None:
    files = {
        "/etc/inetd.conf": INETD,
        "/etc/init.d/rcS": RCS,
        "/etc/inittab": INITTAB,
        "/lib/systemd/system/tftpd.service": UNIT,
        "/etc/init.d/vsftpd": VSFTPD_INIT,
        "/etc/miniupnpd.conf": MINIUPNPD,
        "/etc/config/upnpd": UCI_UPNP,
        "/etc/config/dropbear": UCI_DROPBEAR,
        "/etc/ssh/sshd_config": SSHD,
    }
    tree = tree_of(tmp_path, {path: (content, 0o644) for path, content in files.items()})
    findings = list(ServiceAnalyzer().analyze(tree))
    assert keyed(findings) == {
        ("service.ftp", Severity.MEDIUM, "/etc/inetd.conf", offset_of(INETD, b"ftp")),
        ("service.tftp", Severity.MEDIUM, "/etc/inetd.conf", offset_of(INETD, b"tftp")),
        ("service.telnet-no-auth", Severity.CRITICAL, "/etc/inetd.conf", offset_of(INETD, b"23")),
        ("service.telnet", Severity.HIGH, "/etc/init.d/rcS", offset_of(RCS, b"    /usr/sbin/telnetd")),
        ("service.ssh-root-password", Severity.MEDIUM, "/etc/init.d/rcS", offset_of(RCS, b"dropbear -r")),
        ("service.telnet", Severity.HIGH, "/etc/inittab", offset_of(INITTAB, b"::respawn")),
        ("service.tftp", Severity.MEDIUM, "/lib/systemd/system/tftpd.service", offset_of(UNIT, b"ExecStart")),
        ("service.ftp", Severity.MEDIUM, "/etc/init.d/vsftpd", offset_of(VSFTPD_INIT, b"\tservice_start")),
        (
            "service.upnp-insecure",
            Severity.MEDIUM,
            "/etc/miniupnpd.conf",
            offset_of(MINIUPNPD, b"secure_mode"),
        ),
        ("service.upnp-insecure", Severity.MEDIUM, "/etc/config/upnpd", offset_of(UCI_UPNP, b"\toption")),
        ("service.ssh-root-password", Severity.MEDIUM, "/etc/config/dropbear", 0),
        (
            "service.ssh-root-password",
            Severity.MEDIUM,
            "/etc/ssh/sshd_config",
            offset_of(SSHD, b"PermitRootLogin yes"),
        ),
        (
            "service.ssh-empty-passwords",
            Severity.HIGH,
            "/etc/ssh/sshd_config",
            offset_of(SSHD, b"PermitEmpty"),
        ),
    }
    assert all(f.category is Category.SERVICE for f in findings)
    telnet = next(f for f in findings if f.path == "/etc/init.d/rcS" and f.rule == "service.telnet")
    assert ("line", "5") in telnet.details


def test_safe_configurations_are_not_reported(tmp_path: Path) -> None:
    files = {
        "/etc/ssh/sshd_config": SSHD_SAFE,
        "/etc/ssh2/sshd_config": SSHD_NO_PASSWORDS,
        "/etc/sshd/sshd_config": b"# defaults only\n",
        "/etc/config/dropbear": UCI_DROPBEAR_SAFE,
        "/etc/miniupnpd.conf": b"secure_mode=yes\n",
        "/etc/inetd.conf": b"#telnet stream tcp nowait root /usr/sbin/telnetd telnetd\n",
        "/usr/share/doc/inetd.conf.example": INETD,  # not where inetd reads
        "/etc/motd": b"/usr/sbin/telnetd -l /bin/sh\n",  # not an init file
    }
    tree = tree_of(tmp_path, {path: (content, 0o644) for path, content in files.items()})
    assert list(ServiceAnalyzer().analyze(tree)) == []


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(
        ["/etc/inetd.conf", "/etc/init.d/S50", "/etc/inittab", "/etc/ssh/sshd_config", "/etc/config/dropbear"]
    ),
    lines=st.lists(
        st.one_of(
            st.text(max_size=80),
            st.sampled_from(["telnetd -l /bin/sh", "dropbear -", "config dropbear", "PermitRootLogin yes"]),
        ),
        max_size=8,
    ),
)
def test_random_files_never_raise(tmp_path: Path, path: str, lines: list[str]) -> None:
    tree = tree_of(tmp_path, {path: ("\n".join(lines).encode("utf-8", "surrogatepass"), 0o644)})
    for finding in ServiceAnalyzer().analyze(tree):
        assert finding.path == path
