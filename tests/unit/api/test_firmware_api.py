"""Firmware analysis over HTTP: upload and scan (raw octet-stream, bounded), the stored scan and its
SBOM, SARIF and HTML reports, the fleet's exposure, the release gate and waivers, and permissions;
refusals answered with problem details, and nothing stored.

Images are tiny squashfs filesystems built with ``mksquashfs``: ``gate`` has a default root password
and telnet enabled, ``kev`` an OpenSSL 1.0.1f (Heartbleed, CISA KEV), ``clean`` only a host name.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from firmware_images import elf_with, small_squashfs
from fleetguard.api.tokens import Role

if TYPE_CHECKING:
    from conftest import Api

pytestmark = pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="needs mksquashfs")

SCANS = "/v1/firmware/scans"
LIMIT = 64 * 1024
ROOT_DEFAULT = b"root:$1$abcdefgh$/ehdsgh6T85pypwniuldr1:19000:0:99999:7:::\n"  # xc3511 (Mirai)
HEARTBLEED = "CVE-2014-0160"
OCTETS = {"Content-Type": "application/octet-stream"}
GATE_HIGH = {
    ("passwd.default-credential", "/etc/shadow"),
    ("service.telnet", "/etc/inetd.conf"),
    ("service.telnet", "/etc/init.d/rcS"),
}


def squashfs(out: Path, files: dict[str, bytes]) -> bytes:
    return small_squashfs(out, files).read_bytes()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    base = tmp_path_factory.mktemp("fw-api")
    return {
        "gate": squashfs(
            base / "gate.sqfs",
            {
                "/etc/shadow": ROOT_DEFAULT,
                "/etc/inetd.conf": b"telnet stream tcp nowait root /usr/sbin/telnetd telnetd\n",
                "/etc/init.d/rcS": b"#!/bin/sh\n/usr/sbin/telnetd -l /bin/login &\n",
            },
        ),
        "kev": squashfs(
            base / "kev.sqfs", {"/usr/lib/libcrypto.so.1.0.0": elf_with(b"OpenSSL 1.0.1f 6 Jan 2014", 1)}
        ),
        "clean": squashfs(base / "clean.sqfs", {"/etc/hostname": b"cam\n"}),
    }


@pytest.fixture
def fw(make_api: Any) -> Api:
    api: Api = make_api(max_firmware_bytes=LIMIT)
    return api


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"https://fleetguard.dev/problems/{code}"
    return body


def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def _upload(api: Api, image: bytes, params: dict[str, str] | None = None, role: Role = Role.OPERATOR) -> Any:
    return api.client.post(SCANS, content=image, params=params or {}, headers=api.headers(role, **OCTETS))


def _scan(api: Api, image: bytes, **params: str) -> dict[str, Any]:
    result: dict[str, Any] = _ok(_upload(api, image, params), 201)
    return result


def _uploads(api: Api) -> list[str]:
    folder = api.runtime.settings.data_dir / "firmware" / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _firmware_events(api: Api) -> list[str]:
    return [e.action for e in api.runtime.log.entries(limit=1000) if e.action.startswith("firmware.")]


# --- upload and scan ---------------------------------------------------------------------------------


def test_an_uploaded_image_is_scanned_stored_and_summarised(fw: Api, images: dict[str, bytes]) -> None:
    import hashlib

    summary = _scan(fw, images["kev"], name="cam-1.0.bin", version="1.0", type="cam")

    assert set(summary) == {
        "id", "image_name", "image_sha256", "image_size", "firmware_version", "device_type", "risk",
        "findings", "known_exploited", "files", "extracted_nothing", "scanned_at",
    }  # fmt: skip
    assert summary["image_name"] == "cam-1.0.bin"
    assert summary["image_sha256"] == hashlib.sha256(images["kev"]).hexdigest()
    assert summary["image_size"] == len(images["kev"])
    assert (summary["firmware_version"], summary["device_type"]) == ("1.0", "cam")
    assert summary["known_exploited"] == [HEARTBLEED]
    assert (summary["files"], summary["extracted_nothing"]) == (1, False)
    assert set(summary["findings"]) == {"info", "low", "medium", "high", "critical"}
    stored = fw.runtime.firmware.get_scan(summary["id"])
    assert summary["findings"]["high"] == sum(1 for f in stored.result.findings if f.severity == "high")
    assert summary["risk"] == stored.result.risk
    assert stored.actor.startswith("token:")
    assert _uploads(fw) == []  # the upload is removed once scanned
    assert _firmware_events(fw) == ["firmware.scanned"]


def test_the_image_name_defaults_to_image(fw: Api, images: dict[str, bytes]) -> None:
    summary = _scan(fw, images["clean"])

    assert (summary["image_name"], summary["firmware_version"], summary["device_type"]) == (
        "image",
        None,
        None,
    )


def test_a_wrong_content_type_is_415_and_nothing_is_stored(fw: Api, images: dict[str, bytes]) -> None:
    for content_type in ("application/json", "text/plain", "multipart/form-data; boundary=x"):
        headers = fw.headers(Role.ADMIN, **{"Content-Type": content_type})
        response = fw.client.post(SCANS, content=images["clean"], headers=headers)

        body = _problem(response, 415, "unsupported-media-type")
        assert body["detail"] == "send the image as application/octet-stream"
    assert fw.runtime.firmware.scans() == []
    assert _firmware_events(fw) == []


def test_a_body_over_the_firmware_limit_is_413_and_nothing_is_kept(fw: Api) -> None:
    oversize = random.Random(5).randbytes(LIMIT + 1)  # noqa: S311 - test data
    size = fw.log_size()

    response = _upload(fw, oversize)

    body = _problem(response, 413, "body-too-large")
    assert f"exceeds {LIMIT} bytes" in body["detail"]
    assert fw.runtime.firmware.scans() == []
    assert _uploads(fw) == []
    assert fw.log_size() == size


def test_a_chunked_body_over_the_firmware_limit_is_413_and_nothing_is_kept(fw: Api) -> None:
    oversize = random.Random(6).randbytes(LIMIT + 4096)  # noqa: S311 - test data

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(oversize), 4096):
            yield oversize[start : start + 4096]

    response = fw.client.post(SCANS, content=chunks(), headers=fw.headers(Role.OPERATOR, **OCTETS))

    assert "content-length" not in response.request.headers
    _problem(response, 413, "body-too-large")
    assert fw.runtime.firmware.scans() == []
    assert _uploads(fw) == []


def test_a_body_at_the_limit_is_scanned(fw: Api, images: dict[str, bytes]) -> None:
    padded = images["clean"] + b"\x00" * (LIMIT - len(images["clean"]))

    summary = _scan(fw, padded)

    assert summary["image_size"] == LIMIT
    assert summary["files"] == 1


def test_an_empty_body_is_refused_and_nothing_is_stored(fw: Api) -> None:
    response = _upload(fw, b"")

    body = _problem(response, 422, "firmware-image-invalid")
    assert body["detail"] == "the image is empty"
    assert fw.runtime.firmware.scans() == []
    assert _uploads(fw) == []


def test_bad_labels_are_422_and_nothing_is_stored(fw: Api, images: dict[str, bytes]) -> None:
    for params in ({"name": ""}, {"name": "x" * 257}, {"version": "v" * 129}, {"type": "t" * 129}):
        response = _upload(fw, images["clean"], params)

        _problem(response, 422, "invalid-input")
    response = _upload(fw, images["clean"], {"version": "1.0\n"})
    body = _problem(response, 422, "invalid-input")
    assert body["detail"] == "firmware version must be 1 to 128 printable characters"
    assert fw.runtime.firmware.scans() == []
    assert _uploads(fw) == []


def test_an_encrypted_blob_is_stored_as_extracted_nothing(fw: Api) -> None:
    blob = random.Random(9).randbytes(32 * 1024)  # noqa: S311 - test data

    summary = _scan(fw, blob)

    assert (summary["extracted_nothing"], summary["files"]) == (True, 0)
    assert summary["findings"]["high"] >= 1


# --- reading scans -----------------------------------------------------------------------------------


def test_scans_are_listed_newest_first_and_filtered_by_image(fw: Api, images: dict[str, bytes]) -> None:
    first = _scan(fw, images["kev"])
    second = _scan(fw, images["clean"])

    listed = _ok(fw.client.get(SCANS, headers=fw.headers(Role.READ_ONLY)))
    filtered = _ok(
        fw.client.get(SCANS, params={"sha256": first["image_sha256"]}, headers=fw.headers(Role.READ_ONLY))
    )

    assert [s["id"] for s in listed] == [second["id"], first["id"]]
    assert listed[1] == first
    assert [s["id"] for s in filtered] == [first["id"]]
    bad = fw.client.get(SCANS, params={"sha256": "XYZ"}, headers=fw.headers(Role.READ_ONLY))
    assert bad.status_code == 422


def test_a_scan_is_returned_in_full(fw: Api, images: dict[str, bytes]) -> None:
    summary = _scan(fw, images["gate"], version="9.0")

    scan = _ok(fw.client.get(f"{SCANS}/{summary['id']}", headers=fw.headers(Role.AUDITOR)))

    assert {k: scan[k] for k in summary} == summary
    assert [(layer["format"], layer["status"]) for layer in scan["layers"]] == [("squashfs", "extracted")]
    assert scan["components"] == []
    found = {(f["rule"], f["path"]) for f in scan["finding_list"] if f["severity"] in ("high", "critical")}
    assert found == GATE_HIGH
    shadow = next(f for f in scan["finding_list"] if f["rule"] == "passwd.default-credential")
    assert "xc3511" not in shadow["evidence"]  # the credential itself is never shown


def test_the_sbom_is_cyclonedx_1_6(fw: Api, images: dict[str, bytes]) -> None:
    summary = _scan(fw, images["kev"])

    sbom = _ok(fw.client.get(f"{SCANS}/{summary['id']}/sbom", headers=fw.headers(Role.READ_ONLY)))

    assert (sbom["bomFormat"], sbom["specVersion"]) == ("CycloneDX", "1.6")
    assert [(c["name"], c["version"]) for c in sbom["components"]] == [("openssl", "1.0.1f")]
    assert HEARTBLEED in {v["id"] for v in sbom["vulnerabilities"]}


def test_the_sarif_is_2_1_0(fw: Api, images: dict[str, bytes]) -> None:
    summary = _scan(fw, images["gate"])

    log = _ok(fw.client.get(f"{SCANS}/{summary['id']}/sarif", headers=fw.headers(Role.READ_ONLY)))

    assert log["version"] == "2.1.0"
    (run,) = log["runs"]
    results = {
        (r["ruleId"], r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"])
        for r in run["results"]
    }
    assert {(rule, path.lstrip("/")) for rule, path in GATE_HIGH} <= {(r, u.lstrip("/")) for r, u in results}


def test_the_html_report_has_a_strict_csp_and_escapes_the_image_name(
    fw: Api, images: dict[str, bytes]
) -> None:
    summary = _scan(fw, images["gate"], name="<script>alert(1)</script>.bin")

    response = fw.client.get(f"{SCANS}/{summary['id']}/report", headers=fw.headers(Role.READ_ONLY))

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == "default-src 'none'; style-src 'unsafe-inline'"
    assert "<script" not in response.text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.bin" in response.text


def test_an_unknown_scan_is_404(fw: Api) -> None:
    unknown = "00000000-0000-0000-0000-000000000000"
    for suffix in ("", "/sbom", "/sarif", "/report"):
        response = fw.client.get(f"{SCANS}/{unknown}{suffix}", headers=fw.headers(Role.READ_ONLY))

        body = _problem(response, 404, "firmware-scan-not-found")
        assert body["detail"] == f"no firmware scan '{unknown}'"


def test_a_scan_id_longer_than_a_uuid_is_422(fw: Api) -> None:
    response = fw.client.get(f"{SCANS}/{'a' * 37}", headers=fw.headers(Role.READ_ONLY))

    assert response.status_code == 422, response.text


# --- exposure ----------------------------------------------------------------------------------------


def test_exposed_lists_devices_running_a_known_exploited_version(fw: Api, images: dict[str, bytes]) -> None:
    cam = fw.register(firmware_version="1.0")
    fw.register(firmware_version="2.0")
    scan = _scan(fw, images["kev"], version="1.0")
    _scan(fw, images["gate"], version="2.0")

    exposed = _ok(fw.client.get("/v1/firmware/exposed", headers=fw.headers(Role.AUDITOR)))

    assert exposed == [
        {
            "device_id": cam["id"],
            "firmware_version": "1.0",
            "scan_id": scan["id"],
            "known_exploited": [HEARTBLEED],
            "vulnerabilities": sorted(
                f.rule
                for f in fw.runtime.firmware.get_scan(scan["id"]).result.findings
                if f.category == "vulnerability"
            ),
        }
    ]


def test_exposed_is_empty_once_the_version_is_rescanned_clean(fw: Api, images: dict[str, bytes]) -> None:
    fw.register(firmware_version="1.0")
    _scan(fw, images["kev"], version="1.0")
    _scan(fw, images["clean"], version="1.0")

    assert (
        _ok(fw.client.get("/v1/firmware/exposed", params={"any": "true"}, headers=fw.headers(Role.READ_ONLY)))
        == []
    )


# --- the gate and waivers ----------------------------------------------------------------------------


def test_the_gate_threshold_is_set_and_decides(fw: Api, images: dict[str, bytes]) -> None:
    sha = _scan(fw, images["gate"])["image_sha256"]

    blocked = _ok(fw.client.post(f"/v1/firmware/gate/{sha}", headers=fw.headers(Role.OPERATOR)))
    assert (blocked["allowed"], blocked["threshold"], blocked["reason"]) == (
        False, "high", "3 finding(s) at or above high not waived",
    )  # fmt: skip
    assert {(f["rule"], f["path"]) for f in blocked["blocking"]} == GATE_HIGH

    changed = _ok(
        fw.client.put("/v1/firmware/gate", json={"threshold": "critical"}, headers=fw.headers(Role.OPERATOR))
    )
    assert changed == {"threshold": "critical"}
    critical = _ok(fw.client.post(f"/v1/firmware/gate/{sha}", headers=fw.headers(Role.OPERATOR)))
    assert {(f["rule"], f["path"]) for f in critical["blocking"]} == {
        ("passwd.default-credential", "/etc/shadow")
    }
    assert _firmware_events(fw) == [
        "firmware.scanned", "firmware.gate_blocked", "firmware.gate_changed", "firmware.gate_blocked",
    ]  # fmt: skip


def test_a_bad_threshold_is_422_and_unchanged(fw: Api) -> None:
    for body in ({"threshold": "severe"}, {}, {"threshold": "high", "extra": 1}):
        response = fw.client.put("/v1/firmware/gate", json=body, headers=fw.headers(Role.OPERATOR))

        _problem(response, 422, "invalid-input")
    assert fw.runtime.firmware.gate_threshold() == "high"
    assert _firmware_events(fw) == []


def test_a_never_scanned_image_is_refused_by_the_gate(fw: Api) -> None:
    decision = _ok(fw.client.post(f"/v1/firmware/gate/{'ab' * 32}", headers=fw.headers(Role.OPERATOR)))

    assert decision == {
        "image_sha256": "ab" * 32, "scan_id": None, "threshold": "high", "allowed": False,
        "reason": "the image was never scanned", "blocking": [], "waived": [],
    }  # fmt: skip


def test_a_gate_check_needs_a_lower_case_sha256(fw: Api) -> None:
    response = fw.client.post(f"/v1/firmware/gate/{'AB' * 32}", headers=fw.headers(Role.OPERATOR))

    assert response.status_code == 422, response.text
    assert _firmware_events(fw) == []


def test_waivers_let_the_release_through(fw: Api, images: dict[str, bytes]) -> None:
    sha = _scan(fw, images["gate"])["image_sha256"]
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=7)).replace(microsecond=0)
    for rule, path in sorted(GATE_HIGH):
        body = {
            "image_sha256": sha,
            "rule": rule,
            "path": path,
            "reason": "lab only",
            "expires_at": expires.isoformat(),
        }
        waiver = _ok(
            fw.client.post("/v1/firmware/waivers", json=body, headers=fw.headers(Role.OPERATOR)), 201
        )
        assert (waiver["rule"], waiver["path"], waiver["reason"]) == (rule, path, "lab only")
        assert dt.datetime.fromisoformat(waiver["expires_at"]) == expires
        assert waiver["actor"].startswith("token:")

    decision = _ok(fw.client.post(f"/v1/firmware/gate/{sha}", headers=fw.headers(Role.OPERATOR)))

    assert (decision["allowed"], decision["blocking"]) == (True, [])
    assert {(f["rule"], f["path"]) for f in decision["waived"]} == GATE_HIGH
    assert _firmware_events(fw)[-1] == "firmware.gate_passed"


def test_a_malformed_waiver_is_422_and_nothing_is_stored(fw: Api, images: dict[str, bytes]) -> None:
    sha = _scan(fw, images["gate"])["image_sha256"]
    size = fw.log_size()
    changes: list[dict[str, object]] = [
        {"reason": ""}, {"reason": "x" * 1001}, {"image_sha256": "AB" * 32}, {"rule": ""}, {"unknown": 1},
    ]  # fmt: skip
    for change in changes:
        body = {"image_sha256": sha, "rule": "service.telnet", "reason": "lab only", **change}

        response = fw.client.post("/v1/firmware/waivers", json=body, headers=fw.headers(Role.OPERATOR))

        _problem(response, 422, "invalid-input")
    assert fw.runtime.firmware.waivers(sha) == []
    assert fw.log_size() == size


def test_a_blank_reason_is_refused_by_the_service(fw: Api, images: dict[str, bytes]) -> None:
    sha = _scan(fw, images["gate"])["image_sha256"]
    body = {"image_sha256": sha, "rule": "service.telnet", "reason": "   "}

    response = fw.client.post("/v1/firmware/waivers", json=body, headers=fw.headers(Role.OPERATOR))

    body_ = _problem(response, 422, "invalid-input")
    assert body_["detail"] == "a waiver needs a reason of 1 to 1000 characters"
    assert fw.runtime.firmware.waivers(sha) == []


def test_a_waiver_for_an_unscanned_image_is_404(fw: Api) -> None:
    body = {"image_sha256": "cd" * 32, "rule": "service.telnet", "reason": "lab only"}

    response = fw.client.post("/v1/firmware/waivers", json=body, headers=fw.headers(Role.OPERATOR))

    _problem(response, 404, "firmware-scan-not-found")
    assert fw.runtime.firmware.waivers("cd" * 32) == []


# --- permissions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.READ_ONLY, Role.AUDITOR])
def test_readers_can_read_but_not_scan_gate_or_waive(fw: Api, images: dict[str, bytes], role: Role) -> None:
    summary = _scan(fw, images["gate"])
    sha, scan_id = summary["image_sha256"], summary["id"]
    headers = fw.headers(role)
    for path in (SCANS, f"{SCANS}/{scan_id}", f"{SCANS}/{scan_id}/sbom", f"{SCANS}/{scan_id}/sarif",
                 f"{SCANS}/{scan_id}/report", "/v1/firmware/exposed"):  # fmt: skip
        assert fw.client.get(path, headers=headers).status_code == 200, path
    size = fw.log_size()

    _problem(_upload(fw, images["clean"], role=role), 403, "forbidden")
    _problem(fw.client.put("/v1/firmware/gate", json={"threshold": "low"}, headers=headers), 403, "forbidden")
    _problem(fw.client.post(f"/v1/firmware/gate/{sha}", headers=headers), 403, "forbidden")
    waiver = {"image_sha256": sha, "rule": "service.telnet", "reason": "lab only"}
    _problem(fw.client.post("/v1/firmware/waivers", json=waiver, headers=headers), 403, "forbidden")

    assert len(fw.runtime.firmware.scans()) == 1
    assert fw.runtime.firmware.gate_threshold() == "high"
    assert fw.runtime.firmware.waivers(sha) == []
    assert fw.log_size() == size


def test_without_a_token_every_route_is_401(fw: Api, images: dict[str, bytes]) -> None:
    assert fw.client.get(SCANS).status_code == 401
    _problem(fw.client.post(SCANS, content=images["clean"], headers=OCTETS), 401, "unauthenticated")
    assert fw.client.get("/v1/firmware/exposed").status_code == 401
    assert fw.client.put("/v1/firmware/gate", json={"threshold": "low"}).status_code == 401
    assert fw.runtime.firmware.scans() == []
    assert _uploads(fw) == []
