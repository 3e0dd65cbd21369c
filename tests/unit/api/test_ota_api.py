"""OTA over HTTP: releases, staged metadata, campaigns (create, read, devices, operator actions),
compliance, permissions, and the image repository served as public static files (no traversal, no
director metadata); refusals answered with problem details, and nothing changed.

The repositories, hardware id and releases are set up through the runtime, as the command line does:
signing needs offline keys, which the API never sees. Images are tiny clean squashfs filesystems.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from securesystemslib.signer import Signer

from firmware_images import small_squashfs
from fleetguard.api.tokens import Role
from fleetguard.inventory.lifecycle import Action
from fleetguard.ota.keys import generate_key_file, load_signer
from fleetguard.ota.repository import RoleKeys

if TYPE_CHECKING:
    from conftest import Api

pytestmark = pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="needs mksquashfs")

CAMPAIGNS = "/v1/ota/campaigns"
DEVICES = ("cam-1", "cam-2", "cam-3")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ota-api")
    return {
        "v1": small_squashfs(base / "v1.sqfs", {"/etc/hostname": b"cam\n"}),
        "v2": small_squashfs(base / "v2.sqfs", {"/etc/hostname": b"cam\n", "/etc/version": b"2\n"}),
    }


def _signer(base: Path, name: str) -> Signer:
    path = base / f"{name}.pem"
    generate_key_file(path)
    return load_signer(path)


def _one(signer: Signer) -> RoleKeys:
    return RoleKeys((signer.public_key,), 1)


@pytest.fixture
def ota(api: Api, tmp_path: Path, images: dict[str, Path]) -> tuple[Api, Signer]:
    """OTA initialized; hardware cam (release key r1); 1.0 and 2.0 published; three active cam devices."""
    keys = tmp_path / "keys"
    keys.mkdir()
    root, targets, director, release = (_signer(keys, n) for n in ("root", "targets", "director", "r1"))
    runtime = api.runtime
    runtime.ota.initialize(
        image_root=_one(root), image_targets=_one(targets), director_root=_one(director),
        image_root_signers=[root], image_targets_signers=[targets], director_root_signers=[director],
    )  # fmt: skip
    runtime.ota.add_hardware("cam", _one(release), [targets])
    for name, counter in (("1.0", 1), ("2.0", 2)):
        runtime.releases.publish(
            images[f"v{counter}"], hardware_ids=["cam"], release=name, counter=counter, signers=[release],
            actor="test", scan=True,
        )  # fmt: skip
    for device in DEVICES:
        api.register(id=device, model="cam", firmware_version="1.0")
        for action in (Action.PROVISION, Action.ACTIVATE):
            runtime.inventory.transition(device, action, actor="test")
    return api, release


def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"https://fleetguard.dev/problems/{code}"
    return body


def _create(api: Api, role: Role = Role.OPERATOR, **body: Any) -> Any:
    payload = {"hardware": "cam", "release": "2.0", "id": "c1", **body}
    return api.client.post(CAMPAIGNS, json=payload, headers=api.headers(role))


# --- releases and staged ------------------------------------------------------------------------


def test_releases_are_listed_newest_first_and_filtered_for_a_read_only_token(ota: tuple[Api, Signer]) -> None:
    api, _ = ota
    listed = _ok(api.client.get("/v1/ota/releases", headers=api.headers(Role.READ_ONLY)))
    assert [(r["release"], r["release_counter"], r["state"]) for r in listed] == [
        ("2.0", 2, "published"), ("1.0", 1, "published")
    ]  # fmt: skip
    assert _ok(api.client.get("/v1/ota/releases?hardware=other", headers=api.headers(Role.AUDITOR))) == []


def test_staged_lists_what_waits_for_signatures(ota: tuple[Api, Signer], images: dict[str, Path]) -> None:
    api, _ = ota
    assert _ok(api.client.get("/v1/ota/staged", headers=api.headers(Role.READ_ONLY))) == []
    api.runtime.releases.publish(
        images["v2"], hardware_ids=["cam"], release="3.0", counter=3, signers=[], actor="test"
    )
    assert _ok(api.client.get("/v1/ota/staged", headers=api.headers())) == [
        {"repository": "image", "role": "hw-cam", "version": 3, "signatures": 0, "threshold": 1}
    ]


def test_staged_before_init_is_a_409_naming_the_command(api: Api) -> None:
    body = _problem(api.client.get("/v1/ota/staged", headers=api.headers()), 409, "ota-not-initialized")
    assert body["hint"] == "run: fleetguard ota init"


# --- campaigns ----------------------------------------------------------------------------------


def test_create_plans_a_draft_that_can_be_read_and_listed(ota: tuple[Api, Signer]) -> None:
    api, _ = ota
    created = _ok(
        _create(api, waves=[{"name": "canary", "percent": 34}, {"name": "all", "percent": 100}],
                target={"labels": {}}, soak_s=3600, windows=["Mon-Fri 01:00-05:00 UTC"]),
        201,
    )  # fmt: skip
    assert (created["id"], created["state"], created["devices"], created["scope_ppm"]) == (
        "c1",
        "draft",
        3,
        0,
    )
    assert [w["name"] for w in created["waves"]] == ["canary", "all"]
    assert created["actor"].startswith("token:")

    assert _ok(api.client.get(f"{CAMPAIGNS}/c1", headers=api.headers(Role.READ_ONLY))) == created
    assert [c["id"] for c in _ok(api.client.get(CAMPAIGNS, headers=api.headers(Role.READ_ONLY)))] == ["c1"]
    devices = _ok(api.client.get(f"{CAMPAIGNS}/c1/devices", headers=api.headers(Role.READ_ONLY)))
    assert sorted(d["device_id"] for d in devices) == list(DEVICES)
    assert {d["step"] for d in devices} == {"pending"}
    limited = _ok(api.client.get(f"{CAMPAIGNS}/c1/devices?step=pending&limit=1", headers=api.headers()))
    assert len(limited) == 1
    assert _ok(api.client.get(f"{CAMPAIGNS}/c1/devices?step=committed", headers=api.headers())) == []


def test_a_read_only_token_may_not_create_or_act(ota: tuple[Api, Signer]) -> None:
    api, _ = ota
    _problem(_create(api, Role.READ_ONLY), 403, "forbidden")
    _problem(_create(api, Role.AUDITOR), 403, "forbidden")
    _ok(_create(api), 201)
    before = api.log_size()
    response = api.client.post(f"{CAMPAIGNS}/c1/abort", headers=api.headers(Role.READ_ONLY))
    _problem(response, 403, "forbidden")
    assert api.log_size() == before
    assert _ok(api.client.get(f"{CAMPAIGNS}/c1", headers=api.headers()))["state"] == "draft"


def test_operator_actions_follow_the_campaign_table(ota: tuple[Api, Signer]) -> None:
    api, release_key = ota
    _ok(_create(api), 201)
    body = _problem(
        api.client.post(f"{CAMPAIGNS}/c1/start", headers=api.headers()), 409, "ota-campaign-state"
    )
    assert "from draft it may: approve, abort" in body["hint"]

    api.runtime.campaigns.approve("c1", [release_key], actor="test")  # the release key: CLI only
    started = _ok(api.client.post(f"{CAMPAIGNS}/c1/start", headers=api.headers()))
    assert (started["state"], started["waves"][0]["open"]) == ("running", True)
    paused = api.client.post(f"{CAMPAIGNS}/c1/pause", json={"reason": "canary alarms"}, headers=api.headers())
    assert (_ok(paused)["state"], _ok(paused)["reason"]) == ("paused", "canary alarms")
    assert _ok(api.client.post(f"{CAMPAIGNS}/c1/resume", headers=api.headers()))["state"] == "running"
    assert _ok(api.client.post(f"{CAMPAIGNS}/c1/abort", headers=api.headers()))["state"] == "aborted"
    _problem(api.client.post(f"{CAMPAIGNS}/c1/resume", headers=api.headers()), 409, "ota-campaign-state")


def test_approve_and_unknown_actions_are_not_routes(ota: tuple[Api, Signer]) -> None:
    api, _ = ota
    _ok(_create(api), 201)
    for action in ("approve", "complete", "explode"):
        _problem(api.client.post(f"{CAMPAIGNS}/c1/{action}", headers=api.headers()), 422, "invalid-input")
    assert _ok(api.client.get(f"{CAMPAIGNS}/c1", headers=api.headers()))["state"] == "draft"


def test_unknown_campaign_and_release_are_404(ota: tuple[Api, Signer]) -> None:
    api, _ = ota
    _problem(api.client.get(f"{CAMPAIGNS}/nope", headers=api.headers()), 404, "ota-campaign-not-found")
    _problem(
        api.client.get(f"{CAMPAIGNS}/nope/devices", headers=api.headers()), 404, "ota-campaign-not-found"
    )
    _problem(api.client.post(f"{CAMPAIGNS}/nope/start", headers=api.headers()), 404, "ota-campaign-not-found")
    _problem(_create(api, release="9.9"), 404, "ota-release-not-found")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"waves": [{"name": "a", "percent": 50}, {"name": "b", "percent": 40}]}, 422, "ota-plan-invalid"),
        ({"waves": [{"name": "a", "percent": 50}]}, 422, "ota-plan-invalid"),
        ({"waves": [{"name": "a", "percent": 0}]}, 422, "invalid-input"),
        ({"windows": ["weekends"]}, 422, "ota-plan-invalid"),
        ({"target": {"colour": "red"}}, 422, "invalid-input"),
        ({"id": "bad id"}, 422, "ota-plan-invalid"),
        ({"not_before": "2030-01-01T00:00:00"}, 422, "invalid-input"),
    ],
)
def test_invalid_campaigns_are_refused_and_nothing_is_stored(
    ota: tuple[Api, Signer], body: dict[str, Any], status: int, code: str
) -> None:
    api, _ = ota
    _problem(_create(api, **body), status, code)
    assert _ok(api.client.get(CAMPAIGNS, headers=api.headers())) == []


def test_a_duplicate_campaign_id_is_a_conflict(ota: tuple[Api, Signer]) -> None:
    api, _ = ota
    _ok(_create(api), 201)
    _ok(api.client.post(f"{CAMPAIGNS}/c1/abort", headers=api.headers()))  # its devices are free again
    _problem(_create(api), 409, "conflict")
    assert _ok(api.client.get(f"{CAMPAIGNS}/c1", headers=api.headers()))["state"] == "aborted"


# --- compliance ---------------------------------------------------------------------------------


def test_compliance_counts_devices_behind(ota: tuple[Api, Signer]) -> None:
    api, _ = ota
    report = _ok(api.client.get("/v1/ota/compliance?devices=true", headers=api.headers(Role.READ_ONLY)))
    assert report["counts"] == {"current": 0, "behind": 3, "unknown": 0}
    assert {d["device_id"] for d in report["devices"]} == set(DEVICES)
    assert {r["release"]: r["waiting"] for r in report["releases"]} == {"2.0": 3, "1.0": 0}
    assert _ok(api.client.get("/v1/ota/compliance?hardware=other", headers=api.headers()))["counts"] == {
        "current": 0, "behind": 0, "unknown": 0
    }  # fmt: skip


# --- the image repository, public ---------------------------------------------------------------


def test_image_metadata_and_targets_are_served_without_a_token(
    ota: tuple[Api, Signer], images: dict[str, Path]
) -> None:
    api, _ = ota
    for name in ("root.json", "1.root.json", "timestamp.json", "1.hw-cam.json"):
        response = api.client.get(f"/ota/image/metadata/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == "application/json"
        assert response.json()["signed"]
    (release,) = [r for r in api.runtime.releases.releases("cam") if r.release == "2.0"]
    response = api.client.get(f"/ota/image/targets/cam/2.0/{release.sha256}.v2.sqfs")
    assert response.status_code == 200
    assert response.content == images["v2"].read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/ota/image/metadata/..%2Fkeys%2Fimage-timestamp.pem",
        "/ota/image/metadata/..%2F..%2Fkeys%2Fimage-timestamp.pem",
        "/ota/image/metadata/%2Fetc%2Fpasswd",
        "/ota/image/metadata/.lock",
        "/ota/image/metadata/snapshot.json",
        "/ota/image/metadata/99.root.json",
        "/ota/image/targets/cam/..%2F..%2F..%2Fkeys/image-timestamp.pem",
        "/ota/image/targets/../../keys/image-snapshot.pem",
        "/ota/image/targets/%2E%2E/%2E%2E/.lock",
        "/ota/image/targets/cam/2.0/.hidden",
        "/ota/image/targets/cam/2.0/nope.sqfs",
        "/ota/director/metadata/root.json",
        "/ota/director/devices/cam-1/timestamp.json",
        "/ota/keys/image-timestamp.pem",
    ],
)
def test_static_files_refuse_traversal_hidden_files_and_director_metadata(
    ota: tuple[Api, Signer], path: str
) -> None:
    api, _ = ota
    response = api.client.get(path)
    assert response.status_code == 404, (path, response.text)
    assert b"PRIVATE KEY" not in response.content


def test_a_symlink_planted_in_the_targets_directory_is_not_followed_out(ota: tuple[Api, Signer]) -> None:
    api, _ = ota
    planted = api.runtime.ota.image.targets_dir / "cam" / "2.0" / "key.pem"
    planted.symlink_to(api.runtime.ota.keys_dir / "image-timestamp.pem")
    _problem(api.client.get("/ota/image/targets/cam/2.0/key.pem"), 404, "not-found")


def test_static_files_before_init_are_404(api: Api) -> None:
    _problem(api.client.get("/ota/image/metadata/root.json"), 404, "not-found")


# --- OpenAPI ------------------------------------------------------------------------------------


def test_openapi_documents_the_ota_routes_their_permissions_and_the_cli_only_operations(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    paths = document["paths"]
    assert paths["/v1/ota/releases"]["get"]["x-fleetguard-permission"] == "ota:read"
    assert paths["/v1/ota/campaigns"]["post"]["x-fleetguard-permission"] == "ota:write"
    assert paths["/v1/ota/campaigns/{campaign_id}/{action}"]["post"]["x-fleetguard-permission"] == "ota:write"
    assert paths["/v1/ota/compliance"]["get"]["x-fleetguard-permission"] == "ota:read"
    public = paths["/ota/image/targets/{hardware_id}/{directory}/{name}"]["get"]
    assert "x-fleetguard-permission" not in public
    assert "security" not in public
    assert "`fleetguard ota` commands only" in " ".join(document["info"]["description"].split())
    assert "CLI" not in paths["/v1/ota/staged"]["get"]["description"]
    assert "`fleetguard ota ...` commands" in paths["/v1/ota/staged"]["get"]["description"]
