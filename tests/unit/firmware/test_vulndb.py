"""The offline vulnerability database: shipped records, range evaluation, imports, persistence."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleetguard.firmware import vulndb
from fleetguard.firmware.errors import VulnDbInvalid
from fleetguard.firmware.model import Category, Component, Finding, Severity
from fleetguard.firmware.versions import parse_version
from fleetguard.firmware.vulndb import (
    VulnDb,
    canonical_package,
    cvss3_base_score,
    parse_osv,
    severity_for_score,
    to_osv,
)

SHIPPED = VulnDb.load_default()
FULL = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"


def component(name: str, version: str, path: str = "/usr/lib/x.so") -> Component:
    return Component(name, version, path, f"'{name} {version}' at 0x40", 0x40)


def rules(db: VulnDb, name: str, version: str) -> set[str]:
    return {f.rule for f in db.match([component(name, version)])}


def osv(
    vuln_id: str = "FG-TEST-1",
    *,
    events: list[dict[str, str]] | None = None,
    versions: list[str] | None = None,
    modified: str = "2024-01-01T00:00:00Z",
    package: str = "widget",
    **extra: object,
) -> dict[str, object]:
    affected: dict[str, object] = {"package": {"name": package, "ecosystem": "fleetguard-embedded"}}
    if events is not None:
        affected["ranges"] = [{"type": "ECOSYSTEM", "events": events}]
    if versions is not None:
        affected["versions"] = versions
    return {"id": vuln_id, "modified": modified, "affected": [affected], **extra}


# --- the shipped records -------------------------------------------------------------------------


def test_shipped_database_covers_at_least_30_embedded_components() -> None:
    assert len(SHIPPED.packages()) >= 30
    assert {"busybox", "openssl", "dropbear", "openssh", "dnsmasq", "linux", "u-boot", "uclibc"} <= (
        SHIPPED.packages()
    )


def test_shipped_records_are_complete_osv() -> None:
    folder = Path(vulndb.__file__).parent / "data" / "osv"
    files = sorted(folder.glob("*.json"))
    assert len(files) == len(SHIPPED) >= 60
    for path in files:
        raw = json.loads(path.read_text())
        assert raw["id"] == path.stem
        assert raw["schema_version"] == "1.6.0"
        assert raw["severity"][0]["type"] == "CVSS_V3"
        assert isinstance(raw["database_specific"]["cisa_kev"], bool)
        assert all(a["package"]["ecosystem"] == "fleetguard-embedded" for a in raw["affected"])


def test_shipped_scores_agree_with_their_vectors() -> None:
    for record in SHIPPED:
        assert record.cvss_vector is not None
        assert cvss3_base_score(record.cvss_vector) == record.cvss_score, record.id


def test_shipped_records_survive_the_osv_round_trip() -> None:
    for record in SHIPPED:
        assert parse_osv(json.loads(json.dumps(to_osv(record))), where="rt") == record


@pytest.mark.parametrize(
    ("name", "version", "vuln_id", "affected"),
    [
        ("openssl", "1.0.0t", "CVE-2014-0160", False),
        ("openssl", "1.0.1", "CVE-2014-0160", True),  # introduced: inclusive
        ("openssl", "1.0.1f", "CVE-2014-0160", True),
        ("openssl", "1.0.1g", "CVE-2014-0160", False),  # fixed: exclusive
        ("openssl", "1.0.2zc", "CVE-2022-0778", True),
        ("openssl", "1.0.2zd", "CVE-2022-0778", False),
        ("openssl", "1.1.1m", "CVE-2022-0778", True),
        ("openssl", "3.0.1", "CVE-2022-0778", True),
        ("openssl", "3.0.2", "CVE-2022-0778", False),
        ("openssl", "3.0.6", "CVE-2022-3602", True),
        ("openssl", "3.0.7", "CVE-2022-3602", False),
        ("openssh", "4.3p2", "CVE-2024-6387", True),
        ("openssh", "4.4p1", "CVE-2024-6387", False),
        ("openssh", "8.4p1", "CVE-2024-6387", False),
        ("openssh", "8.5p1", "CVE-2024-6387", True),
        ("openssh", "9.7p1", "CVE-2024-6387", True),
        ("openssh", "9.8p1", "CVE-2024-6387", False),
        ("openssh", "7.7p1", "CVE-2018-15473", True),
        ("dropbear", "2016.73", "CVE-2016-7406", True),
        ("dropbear", "2016.74", "CVE-2016-7406", False),
        ("dnsmasq", "2.82", "CVE-2020-25681", True),
        ("dnsmasq", "2.83", "CVE-2020-25681", False),
        ("busybox", "1.33.1", "CVE-2021-42373", True),
        ("busybox", "1.34.0", "CVE-2021-42373", False),
        ("busybox", "1.27.2", "CVE-2017-16544", True),  # last_affected: inclusive
        ("busybox", "1.28.0", "CVE-2017-16544", False),
        ("samba", "3.4.17", "CVE-2017-7494", False),
        ("samba", "4.5.9", "CVE-2017-7494", True),
        ("samba", "4.5.10", "CVE-2017-7494", False),
        ("samba", "4.6.4", "CVE-2017-7494", False),
        ("linux", "5.7.19", "CVE-2022-0847", False),
        ("linux", "5.8", "CVE-2022-0847", True),
        ("linux", "5.10.101", "CVE-2022-0847", True),
        ("linux", "5.10.102", "CVE-2022-0847", False),
        ("linux", "5.16.10", "CVE-2022-0847", True),
        ("linux", "5.16.11", "CVE-2022-0847", False),
        ("u-boot", "2019.07", "CVE-2019-14192", True),
        ("u-boot", "2019.10", "CVE-2019-14192", False),
        ("ppp", "2.4.1", "CVE-2020-8597", False),
        ("ppp", "2.4.8", "CVE-2020-8597", True),
        ("ppp", "2.4.9", "CVE-2020-8597", False),
        ("sudo", "1.9.5p1", "CVE-2021-3156", True),
        ("sudo", "1.9.5p2", "CVE-2021-3156", False),
        ("xz", "5.6.1", "CVE-2024-3094", True),  # explicit versions list
        ("xz", "5.6.2", "CVE-2024-3094", False),
        ("apache-httpd", "2.4.50", "CVE-2021-41773", False),
        ("boa", "0.94.14rc21", "CVE-2017-9833", True),
        ("uclibc", "0.9.33.2", "CVE-2022-30295", True),
        ("uclibc", "1.0.40", "CVE-2022-30295", True),
        ("uclibc", "1.0.41", "CVE-2022-30295", False),
    ],
)
def test_shipped_ranges_at_their_boundaries(name: str, version: str, vuln_id: str, affected: bool) -> None:
    assert (vuln_id in rules(SHIPPED, name, version)) is affected


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("libssl", "openssl"),
        ("libcrypto", "openssl"),
        ("Linux Kernel", "linux"),
        ("linux-kernel", "linux"),
        ("uClibc-ng", "uclibc"),
        ("pppd", "ppp"),
        ("libcurl", "curl"),
        ("wpa-supplicant", "wpa_supplicant"),
        ("BusyBox", "busybox"),
    ],
)
def test_package_aliases(alias: str, canonical: str) -> None:
    assert canonical_package(alias) == canonical


def test_alias_component_names_match() -> None:
    assert "CVE-2014-0160" in rules(SHIPPED, "libcrypto", "1.0.1c")
    assert "CVE-2022-0847" in rules(SHIPPED, "Linux Kernel", "5.15.0")
    assert "CVE-2020-8597" in rules(SHIPPED, "pppd", "2.4.7")


def test_finding_carries_id_fix_kev_and_the_component_evidence() -> None:
    heartbleed = Component("libssl", "1.0.1f", "/usr/lib/libssl.so.1.0.0", "'OpenSSL 1.0.1f' at 0x9c", 0x9C)
    finding = next(f for f in SHIPPED.match([heartbleed]) if f.rule == "CVE-2014-0160")
    assert finding.category is Category.VULNERABILITY
    assert finding.severity is Severity.HIGH  # 7.5
    assert (finding.path, finding.evidence, finding.offset) == (heartbleed.path, heartbleed.evidence, 0x9C)
    details = dict(finding.details)
    assert details["id"] == "CVE-2014-0160"
    assert details["fixed"] == "1.0.1g"
    assert details["known_exploited"] == "yes"
    assert details["cvss"] == "7.5"
    assert details["component_index"] == "0"


def test_not_known_exploited_says_no() -> None:
    finding = next(f for f in SHIPPED.match([component("openssl", "1.0.1a")]) if f.rule == "CVE-2016-2108")
    assert dict(finding.details)["known_exploited"] == "no"
    assert finding.severity is Severity.CRITICAL


def test_fixed_is_the_fix_of_the_version_s_own_branch() -> None:
    findings = SHIPPED.match([component("bash", "4.2.10"), component("sudo", "1.8.20")])
    fixed = {(dict(f.details)["component"], f.rule): dict(f.details)["fixed"] for f in findings}
    assert fixed[("bash", "CVE-2014-6271")] == "4.2.48"
    assert fixed[("sudo", "CVE-2021-3156")] == "1.8.32"


def test_unparsable_versions_and_unknown_packages_match_nothing() -> None:
    assert SHIPPED.match([component("openssl", "..."), component("no-such-thing", "1.0")]) == []


def test_findings_are_ordered_worst_first_per_component() -> None:
    findings = SHIPPED.match([component("openssl", "1.0.1a"), component("busybox", "1.20.0")])
    first_busybox = next(i for i, f in enumerate(findings) if dict(f.details)["component"] == "busybox")
    for group in (findings[:first_busybox], findings[first_busybox:]):
        ranks = [f.severity.rank for f in group]
        assert ranks == sorted(ranks, reverse=True)


# --- range evaluation ----------------------------------------------------------------------------


def db_of(*documents: dict[str, object]) -> VulnDb:
    return VulnDb(parse_osv(d, where="test") for d in documents)


def test_introduced_inclusive_fixed_exclusive() -> None:
    db = db_of(osv(events=[{"introduced": "1.2"}, {"fixed": "1.4"}]))
    assert [bool(rules(db, "widget", v)) for v in ("1.1.9", "1.2", "1.3.9", "1.4", "1.5")] == [
        False,
        True,
        True,
        False,
        False,
    ]


def test_last_affected_inclusive() -> None:
    db = db_of(osv(events=[{"introduced": "0"}, {"last_affected": "2.0"}]))
    assert [bool(rules(db, "widget", v)) for v in ("0.1", "2.0", "2.0.0", "2.0.1")] == [
        True,
        True,
        True,
        False,
    ]


def test_introduced_zero_includes_pre_releases_and_words() -> None:
    db = db_of(osv(events=[{"introduced": "0"}, {"fixed": "1.0"}]))
    assert rules(db, "widget", "0-rc1") == {"FG-TEST-1"}
    assert rules(db, "widget", "alpha") == {"FG-TEST-1"}


def test_events_in_any_order_and_several_branches() -> None:
    events = [{"fixed": "2.5"}, {"introduced": "2.0"}, {"fixed": "1.5"}, {"introduced": "1.0"}]
    db = db_of(osv(events=events))
    assert [bool(rules(db, "widget", v)) for v in ("0.9", "1.0", "1.6", "2.0", "2.4", "2.5")] == [
        False,
        True,
        False,
        True,
        True,
        False,
    ]


def test_explicit_versions_list() -> None:
    db = db_of(osv(versions=["3.1", "3.3"]))
    assert [bool(rules(db, "widget", v)) for v in ("3.1", "3.1.0", "3.2", "3.3")] == [True, True, False, True]


def test_git_ranges_are_ignored() -> None:
    document = osv()
    document["affected"] = [
        {"package": {"name": "widget"}, "ranges": [{"type": "GIT", "events": [{"introduced": "abc123"}]}]}
    ]
    assert rules(db_of(document), "widget", "1.0") == set()


@pytest.mark.parametrize(
    ("score", "severity"),
    [
        (None, "medium"),
        (0.0, "info"),
        (3.9, "low"),
        (4.0, "medium"),
        (6.9, "medium"),
        (7.0, "high"),
        (9.0, "critical"),
    ],
)
def test_severity_from_score(score: float | None, severity: str) -> None:
    assert severity_for_score(score).value == severity


@pytest.mark.parametrize(
    ("vector", "score"),
    [
        (FULL, 9.8),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N", 7.5),
        ("CVSS:3.1/AV:L/AC:H/PR:L/UI:N/S:U/C:H/I:H/A:H", 7.0),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0),
        ("CVSS:3.0/AV:N/AC:L/PR:L/UI:N/S:C/C:L/I:L/A:N", 6.4),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", 0.0),
    ],
)
def test_cvss3_base_score(vector: str, score: float) -> None:
    assert cvss3_base_score(vector) == score


def test_severity_comes_from_the_vector_without_a_stored_score() -> None:
    db = db_of(osv(events=[{"introduced": "0"}], severity=[{"type": "CVSS_V3", "score": FULL}]))
    assert db.match([component("widget", "1")])[0].severity is Severity.CRITICAL


# --- imports -------------------------------------------------------------------------------------


def write(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document))
    return path


def test_import_osv_record_and_list(tmp_path: Path) -> None:
    db = VulnDb()
    single = db.import_file(write(tmp_path / "one.json", osv("FG-1", events=[{"introduced": "0"}])))
    several = db.import_file(
        write(tmp_path / "list.json", [osv("FG-2", versions=["1.0"]), osv("FG-3", versions=["2.0"])])
    )
    assert (single.format, single.records, single.added) == ("osv", 1, 1)
    assert (several.records, several.added) == (2, 2)
    assert {r.id for r in db} == {"FG-1", "FG-2", "FG-3"}


def test_newer_modified_wins_and_older_is_ignored(tmp_path: Path) -> None:
    db = db_of(osv("FG-1", versions=["1.0"], modified="2024-01-01T00:00:00Z"))
    older = db.import_file(
        write(tmp_path / "a.json", osv("FG-1", versions=["9"], modified="2023-01-01T00:00:00Z"))
    )
    assert (older.updated, older.unchanged) == (0, 1)
    assert rules(db, "widget", "1.0") == {"FG-1"}
    newer = db.import_file(
        write(tmp_path / "b.json", osv("FG-1", versions=["9"], modified="2025-01-01T00:00:00Z"))
    )
    assert newer.updated == 1
    assert rules(db, "widget", "1.0") == set()
    assert rules(db, "widget", "9") == {"FG-1"}


def nvd_document() -> dict[str, object]:
    def match(criteria: str, **bounds: str) -> dict[str, object]:
        return {"vulnerable": True, "criteria": criteria, "matchCriteriaId": "X", **bounds}

    return {
        "resultsPerPage": 3,
        "format": "NVD_CVE",
        "version": "2.0",
        "timestamp": "2024-07-01T00:00:00.000",
        "vulnerabilities": [
            {
                "cve": {
                    "id": "CVE-2099-0001",
                    "published": "2099-01-01T10:00:00.000",
                    "lastModified": "2099-01-02T10:00:00.000",
                    "cisaExploitAdd": "2099-01-03",
                    "descriptions": [
                        {"lang": "es", "value": "Desbordamiento"},
                        {"lang": "en", "value": "Overflow in dnsmasq."},
                    ],
                    "metrics": {
                        "cvssMetricV31": [
                            {
                                "type": "Secondary",
                                "cvssData": {"baseScore": 5.0, "vectorString": "CVSS:3.1/x"},
                            },
                            {"type": "Primary", "cvssData": {"baseScore": 9.8, "vectorString": FULL}},
                        ]
                    },
                    "configurations": [
                        {
                            "nodes": [
                                {
                                    "operator": "OR",
                                    "cpeMatch": [
                                        match(
                                            "cpe:2.3:a:thekelleys:dnsmasq:*:*:*:*:*:*:*:*",
                                            versionStartIncluding="2.60",
                                            versionEndExcluding="2.90",
                                        ),
                                        match(
                                            "cpe:2.3:a:openbsd:openssh:7.4:p1:*:*:*:*:*:*",
                                        ),
                                        match(
                                            "cpe:2.3:a:busybox:busybox:*:*:*:*:*:*:*:*",
                                            versionEndIncluding="1.36.1",
                                        ),
                                        {
                                            "vulnerable": False,
                                            "criteria": "cpe:2.3:o:linux:linux_kernel:*:*:*:*:*:*:*:*",
                                        },
                                    ],
                                }
                            ]
                        }
                    ],
                }
            },
            {
                "cve": {
                    "id": "CVE-2099-0002",
                    "lastModified": "2099-01-02T10:00:00.000",
                    "descriptions": [{"lang": "en", "value": "A desktop application bug."}],
                    "metrics": {"cvssMetricV2": [{"type": "Primary", "cvssData": {"baseScore": 4.3}}]},
                    "configurations": [
                        {"nodes": [{"cpeMatch": [match("cpe:2.3:a:example:desktop_app:1.0:*:*:*:*:*:*:*")]}]}
                    ],
                }
            },
        ],
    }


def test_import_nvd_converts_known_cpes(tmp_path: Path) -> None:
    db = VulnDb()
    report = db.import_file(write(tmp_path / "nvd.json", nvd_document()))
    assert (report.format, report.records, report.added, report.skipped) == ("nvd", 1, 1, 1)
    assert report.skipped_ids == ("CVE-2099-0002",)
    record = db.get("CVE-2099-0001")
    assert record is not None
    assert record.known_exploited
    assert (record.cvss_score, record.cvss_vector) == (9.8, FULL)
    assert record.summary == "Overflow in dnsmasq."
    assert record.modified == datetime(2099, 1, 2, 10, tzinfo=UTC)
    assert {a.name for a in record.affected} == {"dnsmasq", "openssh", "busybox"}
    assert rules(db, "dnsmasq", "2.59") == set()
    assert rules(db, "dnsmasq", "2.60") == {"CVE-2099-0001"}
    assert rules(db, "dnsmasq", "2.89") == {"CVE-2099-0001"}
    assert rules(db, "dnsmasq", "2.90") == set()
    assert rules(db, "openssh", "7.4p1") == {"CVE-2099-0001"}
    assert rules(db, "openssh", "7.4p2") == set()
    assert rules(db, "busybox", "1.36.1") == {"CVE-2099-0001"}
    assert rules(db, "busybox", "1.37.0") == set()
    assert rules(db, "linux", "5.0") == set()
    finding = db.match([component("dnsmasq", "2.80")])[0]
    assert dict(finding.details)["known_exploited"] == "yes"
    assert dict(finding.details)["fixed"] == "2.90"


def test_save_and_load_keep_imported_records(tmp_path: Path) -> None:
    db = VulnDb.load_default()
    db.import_file(write(tmp_path / "nvd.json", nvd_document()))
    written = db.save(tmp_path / "vulndb")
    assert written == 1  # only what differs from the shipped records
    assert [p.name for p in (tmp_path / "vulndb").iterdir()] == ["CVE-2099-0001.json"]
    loaded = VulnDb.load(tmp_path / "vulndb")
    assert len(loaded) == len(SHIPPED) + 1
    assert loaded.get("CVE-2099-0001") == db.get("CVE-2099-0001")


def test_saved_newer_record_overrides_the_shipped_one(tmp_path: Path) -> None:
    shipped = SHIPPED.get("CVE-2014-0160")
    assert shipped is not None
    newer = to_osv(shipped) | {"modified": "2099-01-01T00:00:00Z", "summary": "updated"}
    older = to_osv(shipped) | {"id": "CVE-2016-2108", "modified": "2000-01-01T00:00:00Z", "summary": "stale"}
    write(tmp_path / "CVE-2014-0160.json", newer)
    write(tmp_path / "CVE-2016-2108.json", older)
    loaded = VulnDb.load(tmp_path)
    assert loaded.get("CVE-2014-0160").summary == "updated"  # type: ignore[union-attr]
    assert loaded.get("CVE-2016-2108") == SHIPPED.get("CVE-2016-2108")


def test_load_of_a_missing_directory_is_the_shipped_database(tmp_path: Path) -> None:
    assert len(VulnDb.load(tmp_path / "absent")) == len(SHIPPED)


# --- malformed input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ({"modified": "2024-01-01T00:00:00Z"}, r"bad\.json\.id: expected a string"),
        (
            {"id": "../../etc/passwd", "modified": "2024-01-01T00:00:00Z"},
            r"bad\.json\.id: not a vulnerability id",
        ),
        ({"id": "FG-1", "modified": "yesterday"}, r"bad\.json\.modified: not an RFC 3339"),
        (osv(events=[{"fixed": "1.0"}]), r"bad\.json\.affected\[0\]\.ranges\[0\]\.events: a range needs"),
        (osv(events=[{"introduced": "0", "fixed": "1"}]), r"events\[0\]: expected exactly one"),
        (osv(events=[{"introduced": "..."}]), r"events\[0\]\.introduced: not a version"),
        (
            osv(versions=[1.0]),  # type: ignore[list-item]
            r"bad\.json\.affected\[0\]\.versions\[0\]: expected a string",
        ),
        (osv(severity=[{"type": "CVSS_V3", "score": "CVSS:3.1/AV:X"}]), r"bad\.json\.severity\[0\]\.score"),
        (osv(database_specific={"cisa_kev": "yes"}), r"database_specific\.cisa_kev: expected true or false"),
        ([osv(), "nope"], r"bad\.json\[1\]: expected an object"),
        ({"vulnerabilities": [{"cve": []}]}, r"bad\.json\.vulnerabilities\[0\]\.cve: expected an object"),
    ],
)
def test_malformed_input_is_refused_with_where(tmp_path: Path, document: object, where: str) -> None:
    db = VulnDb.load_default()
    with pytest.raises(VulnDbInvalid, match=where):
        db.import_file(write(tmp_path / "bad.json", document))
    assert len(db) == len(SHIPPED)


def test_bad_cpe_is_refused_with_where(tmp_path: Path) -> None:
    document = nvd_document()
    cve = document["vulnerabilities"][0]["cve"]  # type: ignore[index]
    cve["configurations"][0]["nodes"][0]["cpeMatch"][0]["criteria"] = "cpe:/a:thekelleys:dnsmasq"
    db = VulnDb()
    with pytest.raises(VulnDbInvalid, match=r"vulnerabilities\[0\]\.cve\.configurations\[0\]\.nodes\[0\]"):
        db.import_file(write(tmp_path / "nvd.json", document))
    assert len(db) == 0


def test_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b"\xff{not json")
    with pytest.raises(VulnDbInvalid, match=r"x\.json: not JSON"):
        VulnDb().import_file(path)


def test_oversized_file_is_refused_before_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vulndb, "MAX_IMPORT_BYTES", 64)
    path = write(tmp_path / "big.json", [osv(f"FG-{i}", versions=["1"]) for i in range(10)])
    with pytest.raises(VulnDbInvalid, match="larger than 64 bytes"):
        VulnDb().import_file(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VulnDbInvalid, match="cannot read"):
        VulnDb().import_file(tmp_path / "absent.json")


def test_version_of_events_parses_like_components() -> None:
    record = parse_osv(osv(events=[{"introduced": "1.0.2"}, {"fixed": "1.0.2zd"}]), where="t")
    (event_range,) = record.affected[0].ranges
    assert event_range.contains(parse_version("1.0.2k"))
    assert not event_range.contains(parse_version("1.0.2zd"))


def test_match_returns_findings() -> None:
    assert all(isinstance(f, Finding) for f in SHIPPED.match([component("openssl", "1.0.1")]))
