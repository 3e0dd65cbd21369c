"""Secrets in configuration are found with redacted evidence; comments and placeholders are not."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_trees import tree_of
from fleetguard.firmware.analyzers.credentials import CredentialAnalyzer, is_placeholder
from fleetguard.firmware.model import Category, Finding, Severity


def keyed(findings: list[Finding]) -> set[tuple[str, Severity, str, int | None]]:
    return {(f.rule, f.severity, f.path, f.offset) for f in findings}


def offset_of(content: bytes, line_start: bytes) -> int:
    """The offset of the line that starts with ``line_start``."""
    return (b"\n" + content).index(b"\n" + line_start)


CHAP = (
    b"# Secrets for authentication using CHAP\n"
    b"# client\tserver\tsecret\t\t\tIP addresses\n"
    b'"isp-user"\t*\t"Sup3rS3cret!"\t*\n'
    b"dsl * @/etc/ppp/dsl-secret *\n"
    b"guest * <password> *\n"
)
SNMPD = (
    b"# rocommunity public  default\n"
    b"rocommunity public default -V systemonly\n"
    b"rwcommunity private 10.0.0.0/8\n"
    b"rocommunity N0tDefault\n"
    b"com2sec readonly default public\n"
    b"syslocation Office\n"
)
WPA = (
    b"ctrl_interface=/var/run/wpa_supplicant\n"
    b"network={\n"
    b'\tssid="office"\n'
    b'\tpsk="correct horse battery staple"\n'
    b"}\n"
    b"network={\n"
    b'\tssid="template"\n'
    b'\tpsk="<your-password>"\n'
    b'\t#psk="commented out"\n'
    b"}\n"
)
HOSTAPD = b"interface=wlan0\nwpa_passphrase=${WIFI_PSK}\nwpa_passphrase=changeme\n"
CONFIG = (
    b"[cloud]\n"
    b"# password = commented-secret\n"
    b"admin_password = changeme\n"
    b"password_min_length = 8\n"
    b"api_key = 9fK2xQ7vLp3ZrT8wNcY5bH1mJd6sGa4e\n"
    b"token = short\n"
    b"secret_token = aaaaaaaaaaaaaaaaaaaaaaaaa\n"
    b"password = ${ADMIN_PASSWORD}\n"
    b"password_file = /etc/secret\n"
    b"aws_key = AKIAIOSFODNN7EXAMPLE\n"
)
SCRIPT = b'#!/bin/sh\nPASSWORD="$1"\nPASS=$(cat /tmp/pw)\nDB_PASSWORD="s3cr3t-db"\nPWD=/root\n'
PYTHON = b'password = get_password()\nPASSWORD = "hunter2hunter2"\npassword = PASSWORD\n'


def test_planted_secrets_are_found_with_exact_rule_severity_and_offset(tmp_path: Path) -> None:
    files = {
        "/etc/ppp/chap-secrets": CHAP,
        "/etc/snmp/snmpd.conf": SNMPD,
        "/etc/wpa_supplicant.conf": WPA,
        "/etc/hostapd.conf": HOSTAPD,
        "/etc/cloud.ini": CONFIG,
        "/usr/bin/backup.sh": SCRIPT,
        "/usr/lib/app/settings.py": PYTHON,
    }
    tree = tree_of(tmp_path, {path: (content, 0o644) for path, content in files.items()})
    findings = list(CredentialAnalyzer().analyze(tree))
    assert keyed(findings) == {
        ("ppp.secret", Severity.MEDIUM, "/etc/ppp/chap-secrets", offset_of(CHAP, b'"isp-user"')),
        (
            "snmp.default-community",
            Severity.MEDIUM,
            "/etc/snmp/snmpd.conf",
            offset_of(SNMPD, b"rocommunity public"),
        ),
        ("snmp.default-community", Severity.HIGH, "/etc/snmp/snmpd.conf", offset_of(SNMPD, b"rwcommunity")),
        ("snmp.community", Severity.LOW, "/etc/snmp/snmpd.conf", offset_of(SNMPD, b"rocommunity N0t")),
        ("snmp.default-community", Severity.MEDIUM, "/etc/snmp/snmpd.conf", offset_of(SNMPD, b"com2sec")),
        ("wifi.psk", Severity.MEDIUM, "/etc/wpa_supplicant.conf", offset_of(WPA, b'\tpsk="correct')),
        ("wifi.psk", Severity.MEDIUM, "/etc/hostapd.conf", offset_of(HOSTAPD, b"wpa_passphrase=changeme")),
        (
            "secret.hardcoded-password",
            Severity.MEDIUM,
            "/etc/cloud.ini",
            offset_of(CONFIG, b"admin_password"),
        ),
        ("secret.token", Severity.MEDIUM, "/etc/cloud.ini", offset_of(CONFIG, b"api_key")),
        ("secret.aws-access-key-id", Severity.HIGH, "/etc/cloud.ini", CONFIG.index(b"AKIA")),
        (
            "secret.hardcoded-password",
            Severity.MEDIUM,
            "/usr/bin/backup.sh",
            offset_of(SCRIPT, b"DB_PASSWORD"),
        ),
        (
            "secret.hardcoded-password",
            Severity.MEDIUM,
            "/usr/lib/app/settings.py",
            offset_of(PYTHON, b"PASSWORD ="),
        ),
    }
    assert all(f.category is Category.CREDENTIAL for f in findings)


@pytest.mark.parametrize(
    "secret",
    ["Sup3rS3cret!", "correct horse battery staple", "9fK2xQ7vLp3ZrT8wNcY5bH1mJd6sGa4e", "N0tDefault"],
)
def test_evidence_is_redacted(tmp_path: Path, secret: str) -> None:
    files = {"/etc/ppp/chap-secrets": CHAP, "/etc/snmp/snmpd.conf": SNMPD, "/etc/wpa_supplicant.conf": WPA}
    files["/etc/cloud.ini"] = CONFIG
    tree = tree_of(tmp_path, {path: (content, 0o644) for path, content in files.items()})
    for finding in CredentialAnalyzer().analyze(tree):
        assert secret not in finding.evidence
        assert secret not in repr(finding.details)


def test_aws_key_id_in_a_binary(tmp_path: Path) -> None:
    binary = b"\x7fELF\0\0" + b"\x01" * 100 + b"AKIAIOSFODNN7EXAMPLE\0" + b"XAKIAIOSFODNN7EXAMPLE\0"
    tree = tree_of(tmp_path, {"/usr/bin/uploader": (binary, 0o755)})
    assert keyed(list(CredentialAnalyzer().analyze(tree))) == {
        ("secret.aws-access-key-id", Severity.HIGH, "/usr/bin/uploader", 106),
    }


@pytest.mark.parametrize(
    ("value", "placeholder"),
    [
        ("<your-password>", True),
        ("${VAR}", True),
        ("$PSK", True),
        ("xxxx", True),
        ("********", True),
        ("{{ wifi_psk }}", True),
        ("%s", True),
        ("YOUR_PASSWORD_HERE", True),
        ("", True),
        ("changeme", False),
        ("admin", False),
        ("hunter2", False),
    ],
)
def test_placeholders(value: str, placeholder: bool) -> None:
    assert is_placeholder(value) is placeholder


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(
        ["/etc/ppp/pap-secrets", "/etc/snmpd.conf", "/etc/wpa_supplicant.conf", "/etc/app.conf", "/bin/x"]
    ),
    content=st.one_of(st.binary(max_size=500), st.text(max_size=500).map(str.encode)),
)
def test_random_files_never_raise(tmp_path: Path, path: str, content: bytes) -> None:
    tree = tree_of(tmp_path, {path: (content, 0o644)})
    for finding in CredentialAnalyzer().analyze(tree):
        assert finding.path == path
