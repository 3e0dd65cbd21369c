"""run_analyzers: every analyzer's findings, ordered, bounded; redaction of secrets in evidence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_trees import tree_of
from fleetguard.firmware.analyzers import ANALYZERS, TRUNCATED_RULE, run_analyzers
from fleetguard.firmware.model import Category, EntryKind, ExtractedTree, FileEntry, Finding, Severity
from fleetguard.firmware.redaction import fingerprint, redact


class FixedAnalyzer:
    """An analyzer that returns the findings it is given."""

    name = "fixed"

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = findings

    def analyze(self, tree: ExtractedTree) -> Iterator[Finding]:
        return iter(self.findings)


def finding(severity: Severity, path: str, offset: int | None, rule: str = "test.rule") -> Finding:
    return Finding(rule, Category.SERVICE, severity, "t", path, "e", offset)


EMPTY = ExtractedTree(image_sha256="0" * 64, image_size=0, entries=(), layers=())


def test_findings_are_ordered_by_severity_path_and_offset() -> None:
    given = [
        finding(Severity.LOW, "/a", 5),
        finding(Severity.CRITICAL, "/b", 9),
        finding(Severity.LOW, "/a", None),
        finding(Severity.CRITICAL, "/a", 100),
        finding(Severity.LOW, "/a", 1),
    ]
    ordered = run_analyzers(EMPTY, [FixedAnalyzer(given[:2]), FixedAnalyzer(given[2:])])
    assert [(f.severity, f.path, f.offset) for f in ordered] == [
        (Severity.CRITICAL, "/a", 100),
        (Severity.CRITICAL, "/b", 9),
        (Severity.LOW, "/a", None),
        (Severity.LOW, "/a", 1),
        (Severity.LOW, "/a", 5),
    ]


def test_findings_over_the_limit_keep_the_most_severe_and_say_what_was_dropped() -> None:
    many = [finding(Severity.LOW, f"/f{i:03d}", 0, "perm.low") for i in range(50)]
    many.append(finding(Severity.HIGH, "/z", 0, "perm.high"))
    kept = run_analyzers(EMPTY, [FixedAnalyzer(many)], limit_findings=10)
    assert len(kept) == 10
    assert kept[0].rule == "perm.high"
    assert [f.path for f in kept[1:9]] == [f"/f{i:03d}" for i in range(8)]
    assert kept[-1].rule == TRUNCATED_RULE
    assert kept[-1].severity is Severity.INFO
    assert kept[-1].details == (("perm.low", "42"),)
    assert run_analyzers(EMPTY, [FixedAnalyzer(many)], limit_findings=51) == sorted(
        many, key=lambda f: (-f.severity.rank, f.path)
    )


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        run_analyzers(EMPTY, [], limit_findings=0)


def test_default_analyzers_over_a_small_image(tmp_path: Path) -> None:
    tree = tree_of(
        tmp_path,
        {
            "/etc/shadow": (b"root::18000:0:99999:7:::\n", 0o600),
            "/etc/inetd.conf": (b"telnet stream tcp nowait root /usr/sbin/telnetd telnetd\n", 0o644),
            "/etc/snmpd.conf": (b"rwcommunity private\n", 0o644),
            "/bin/busybox": (b"\x7fELF-----BEGIN RSA PRIVATE KEY-----\0", 0o4755),
        },
        extra=[FileEntry(path="/bin/su", kind=EntryKind.SYMLINK, mode=0o4777, link_target="busybox")],
    )
    assert [(f.rule, f.severity, f.path) for f in run_analyzers(tree)] == [
        ("passwd.empty-password", Severity.CRITICAL, "/etc/shadow"),
        ("service.telnet", Severity.HIGH, "/etc/inetd.conf"),
        ("snmp.default-community", Severity.HIGH, "/etc/snmpd.conf"),
        ("perm.setuid", Severity.MEDIUM, "/bin/busybox"),
    ]
    assert {analyzer.name for analyzer in ANALYZERS} == {
        "keys",
        "passwords",
        "credentials",
        "services",
        "permissions",
    }


def test_redact_shows_prefix_length_and_digest_prefix_only() -> None:
    assert redact("correct horse") == "co… (13 chars, sha256:" + fingerprint(b"correct horse")[7:19] + ")"
    assert redact("short") == "… (5 chars, sha256:" + fingerprint(b"short")[7:19] + ")"
    assert redact(b"\x00\x01secretvalue").startswith("??…")
    assert fingerprint(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
