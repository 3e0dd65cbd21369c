"""Mode findings come from the filesystem's metadata; links, devices and sticky directories are ignored."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleetguard.firmware.analyzers.permissions import PermissionAnalyzer, mode_findings
from fleetguard.firmware.model import Category, EntryKind, ExtractedTree, FileEntry, Severity

IMAGE_TMP = "/tmp"  # noqa: S108 - a path inside the image, not one this process uses


def entry(path: str, mode: int, kind: EntryKind = EntryKind.FILE, uid: int = 0) -> FileEntry:
    return FileEntry(path=path, kind=kind, mode=mode, uid=uid)


def analyze(*entries: FileEntry) -> set[tuple[str, Severity, str]]:
    tree = ExtractedTree(image_sha256="0" * 64, image_size=0, entries=entries, layers=())
    findings = list(PermissionAnalyzer().analyze(tree))
    assert all(f.category is Category.PERMISSION and f.offset is None for f in findings)
    return {(f.rule, f.severity, f.path) for f in findings}


def test_setuid_and_setgid_by_location_and_owner() -> None:
    assert analyze(
        entry("/bin/busybox", 0o4755),
        entry("/usr/bin/passwd", 0o4755),
        entry("/www/cgi-bin/admin.cgi", 0o4755),
        entry("/usr/bin/crontab", 0o2755),
        entry("/opt/app/helper", 0o2755),
        entry("/usr/libexec/game", 0o4755, uid=1000),
        entry("/opt/game", 0o4755, uid=1000),
        entry("/bin/ls", 0o755),
    ) == {
        ("perm.setuid", Severity.MEDIUM, "/bin/busybox"),
        ("perm.setuid", Severity.MEDIUM, "/usr/bin/passwd"),
        ("perm.setuid", Severity.HIGH, "/www/cgi-bin/admin.cgi"),
        ("perm.setgid", Severity.LOW, "/usr/bin/crontab"),
        ("perm.setgid", Severity.MEDIUM, "/opt/app/helper"),
        ("perm.setuid", Severity.LOW, "/usr/libexec/game"),
        ("perm.setuid", Severity.MEDIUM, "/opt/game"),
    }


def test_world_writable_by_location() -> None:
    assert analyze(
        entry("/etc/init.d/rcS", 0o777),
        entry("/etc", 0o777, EntryKind.DIRECTORY),
        entry("/usr/sbin/httpd", 0o757),
        entry("/www/index.html", 0o666),
        entry(f"{IMAGE_TMP}/state", 0o666),
        entry("/var/run", 0o777, EntryKind.DIRECTORY),
        entry("/", 0o777, EntryKind.DIRECTORY),
        entry("/sbin/suid-and-writable", 0o4777),
    ) == {
        ("perm.world-writable-file", Severity.HIGH, "/etc/init.d/rcS"),
        ("perm.world-writable-dir", Severity.HIGH, "/etc"),
        ("perm.world-writable-file", Severity.HIGH, "/usr/sbin/httpd"),
        ("perm.world-writable-file", Severity.MEDIUM, "/www/index.html"),
        ("perm.world-writable-file", Severity.LOW, f"{IMAGE_TMP}/state"),
        ("perm.world-writable-dir", Severity.LOW, "/var/run"),
        ("perm.world-writable-dir", Severity.HIGH, "/"),
        ("perm.world-writable-setuid", Severity.CRITICAL, "/sbin/suid-and-writable"),
    }


def test_links_devices_fifos_and_sticky_directories_are_ignored() -> None:
    assert (
        analyze(
            entry("/bin/su", 0o4777, EntryKind.SYMLINK),
            entry("/usr/bin/sudo", 0o6777, EntryKind.SYMLINK),
            entry("/dev/null", 0o666, EntryKind.DEVICE),
            entry("/dev/log", 0o777, EntryKind.SOCKET),
            entry("/var/fifo", 0o666, EntryKind.FIFO),
            entry(IMAGE_TMP, 0o1777, EntryKind.DIRECTORY),
            entry("/etc/shared", 0o1777, EntryKind.DIRECTORY),
            entry("/var/mail", 0o2775, EntryKind.DIRECTORY),  # setgid directory: group inheritance
        )
        == set()
    )


def test_evidence_shows_the_mode() -> None:
    (finding,) = mode_findings(entry("/www/cgi-bin/admin.cgi", 0o4755))
    assert finding.evidence.startswith("-rwsr-xr-x 0:0 (4755)")


@given(
    mode=st.integers(min_value=0, max_value=0o177777),
    kind=st.sampled_from(list(EntryKind)),
    path=st.text(min_size=1, max_size=30).map(lambda p: "/" + p),
)
def test_any_mode_never_raises(mode: int, kind: EntryKind, path: str) -> None:
    for finding in mode_findings(entry(path, mode, kind)):
        assert finding.path == path
