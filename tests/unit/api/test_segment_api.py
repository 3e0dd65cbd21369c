"""Network segmentation over HTTP: MUD profiles (add, list, get, remove), bindings, the MUD context,
apply with a dry run, history and simulation; refusals answered with problem details, and nothing stored.

nft is faked: the installation's segmentation service is rebuilt (with its public constructor) around
a :class:`FakeNft` that records scripts, and a fixed DNS table. The fleet: cameras ``cam-1`` and
``cam-2`` of type ``cam``, whose MUD URL is :data:`CAM_URL`; the camera's profile lets it open TCP 443
to 203.0.113.10 only.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import pytest

from fleetguard.api.schemas_segment import MAX_PROFILE_BODY
from fleetguard.api.tokens import Role
from fleetguard.inventory.model import DeviceSpec
from fleetguard.segment.mud import parse_mud
from fleetguard.segment.resolver import StaticResolver
from fleetguard.segment.service import SegmentationService
from fleetguard.types import utc_now
from segment_doubles import RecordingNft as FakeNft
from segment_doubles import camera_mud

if TYPE_CHECKING:
    from conftest import Api

CAM_URL = "https://cam.example.com/cam.json"
CLOUD = "203.0.113.10"
CAM_MUD = camera_mud(CAM_URL, CLOUD)
CAM_TEXT = json.dumps(CAM_MUD, indent=2)
CAM_DIGEST = parse_mud(CAM_TEXT.encode()).digest
PROFILES = "/v1/segment/profiles"
START = "2025-06-01T12:00:00Z"


@pytest.fixture
def nft(api: Api) -> FakeNft:
    fake = FakeNft()
    runtime = api.runtime
    runtime.segment = SegmentationService(
        runtime.database,
        runtime.log,
        runtime.inventory,
        nft=fake,
        resolver=StaticResolver({"cloud.example.com": [CLOUD]}),
        clock=utc_now,
        on_commit=runtime.relay.notify,
    )
    return fake


@pytest.fixture
def fleet(api: Api, nft: FakeNft) -> Api:
    response = api.client.post(
        "/v1/device-types", json={"id": "cam", "mud_url": CAM_URL}, headers=api.headers()
    )
    assert response.status_code == 201, response.text
    for device_id in ("cam-1", "cam-2"):
        spec = DeviceSpec(id=device_id, serial=device_id, manufacturer="acme", device_type="cam")
        api.runtime.inventory.register(spec, actor="test")
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


def _add(api: Api, document: str = CAM_TEXT, role: Role = Role.ADMIN, **fields: object) -> Any:
    return api.client.post(PROFILES, json={"document": document, **fields}, headers=api.headers(role))


def _profiles(api: Api) -> list[dict[str, Any]]:
    return list(_ok(api.client.get(PROFILES, headers=api.headers(Role.READ_ONLY))))


def _bind(api: Api, device_id: str, **body: str) -> Any:
    return api.client.put(f"/v1/devices/{device_id}/binding", json=body, headers=api.headers(Role.OPERATOR))


def _history(api: Api) -> list[dict[str, Any]]:
    return list(_ok(api.client.get("/v1/segment/history", headers=api.headers(Role.AUDITOR))))


# -- profiles --------------------------------------------------------------------------------


def test_add_list_get_and_remove_a_profile(fleet: Api) -> None:
    added = _ok(_add(fleet, role=Role.OPERATOR), 201)
    assert {k: added[k] for k in ("url", "digest", "aces", "source", "signer", "model_name")} == {
        "url": CAM_URL,
        "digest": CAM_DIGEST,
        "aces": 2,
        "source": "api",
        "signer": None,
        "model_name": "Cam 1",
    }
    assert added["actor"].startswith("token:")
    assert [e["name"] for e in added["entries"]] == ["cloud", "cloud-replies"]
    [listed] = _profiles(fleet)
    assert listed["url"] == CAM_URL
    assert "entries" not in listed
    got = _ok(fleet.client.get(f"{PROFILES}/{CAM_URL}", headers=fleet.headers(Role.READ_ONLY)))
    assert got == added
    assert got["entries"][1] == {
        "name": "cloud-replies",
        "acl": "to-ipv4",
        "direction": "to-device",
        "family": "ipv4",
        "protocol": 6,
        "peers": [f"network:{CLOUD}/32"],
        "remote_ports": ["443-443"],
        "device_ports": ["0-65535"],
        "initiated": None,
        "icmp_type": None,
        "icmp_code": None,
        "ethertype": None,
        "destination_mac": None,
    }
    removed = fleet.client.delete(f"{PROFILES}/{CAM_URL}", headers=fleet.headers(Role.OPERATOR))
    assert removed.status_code == 204
    assert _profiles(fleet) == []
    missing = fleet.client.get(f"{PROFILES}/{CAM_URL}", headers=fleet.headers())
    assert _problem(missing, 404, "mud-profile-not-found")["detail"] == f"no MUD profile {CAM_URL!r}"
    _problem(
        fleet.client.delete(f"{PROFILES}/{CAM_URL}", headers=fleet.headers()), 404, "mud-profile-not-found"
    )


def test_an_invalid_profile_is_a_422_with_its_path_and_stores_nothing(fleet: Api) -> None:
    bad = json.loads(CAM_TEXT)
    bad["ietf-mud:mud"]["mud-url"] = "http://cam.example.com/cam.json"
    size = fleet.log_size()
    body = _problem(_add(fleet, json.dumps(bad)), 422, "mud-invalid")
    assert body["path"] == "/ietf-mud:mud/mud-url"
    assert body["detail"].startswith("/ietf-mud:mud/mud-url: ")
    assert body["hint"] == "fix the MUD file; nothing was applied"
    assert _profiles(fleet) == []
    assert fleet.log_size() == size


def test_profile_size_limits_are_413(fleet: Api) -> None:
    over = CAM_TEXT + " " * (1024 * 1024)
    assert _problem(_add(fleet, over), 413, "mud-too-large")["detail"].startswith("MUD file is ")
    response = fleet.client.post(
        PROFILES,
        content=b'{"document": "' + b"x" * MAX_PROFILE_BODY + b'"}',
        headers={**fleet.headers(), "Content-Type": "application/json"},
    )
    _problem(response, 413, "body-too-large")
    assert _profiles(fleet) == []


def test_signatures_are_checked_when_given_or_required(fleet: Api) -> None:
    bad = _problem(_add(fleet, signature="not base64!"), 422, "mud-signature-invalid")
    assert bad["detail"] == "the signature is not base64"
    untrusted = _add(fleet, signature=base64.b64encode(b"\x30\x00").decode())
    assert _problem(untrusted, 422, "mud-signature-invalid")["detail"] == (
        "a signature was given but no trusted MUD signers are configured"
    )
    assert _profiles(fleet) == []


def test_read_only_tokens_cannot_add_profiles(fleet: Api) -> None:
    _problem(_add(fleet, role=Role.READ_ONLY), 403, "forbidden")
    _problem(_add(fleet, role=Role.AUDITOR), 403, "forbidden")
    assert _profiles(fleet) == []


# -- bindings and context --------------------------------------------------------------------


def test_bind_devices_and_list_bindings(fleet: Api) -> None:
    assert _ok(_bind(fleet, "cam-1", ipv4="192.0.2.10", mac="AA:BB:CC:DD:EE:01")) == {
        "device_id": "cam-1",
        "ipv4": "192.0.2.10",
        "ipv6": None,
        "mac": "aa:bb:cc:dd:ee:01",
    }
    _ok(_bind(fleet, "cam-2", ipv6="2001:db8::2"))
    listed = _ok(fleet.client.get("/v1/segment/bindings", headers=fleet.headers(Role.READ_ONLY)))
    assert [(b["device_id"], b["ipv4"], b["ipv6"]) for b in listed] == [
        ("cam-1", "192.0.2.10", None),
        ("cam-2", None, "2001:db8::2"),
    ]
    size = fleet.log_size()
    taken = _problem(_bind(fleet, "cam-2", ipv4="192.0.2.10"), 422, "invalid-input")
    assert taken["detail"] == "192.0.2.10 is bound to device 'cam-1'"
    _problem(_bind(fleet, "ghost", ipv4="192.0.2.11"), 404, "device-not-found")
    _problem(_bind(fleet, "cam-2", ipv4="not-an-address"), 422, "invalid-input")
    _problem(_bind(fleet, "cam-2", port="1"), 422, "invalid-input")  # unknown field
    assert fleet.log_size() == size
    assert _ok(fleet.client.get("/v1/segment/bindings", headers=fleet.headers())) == listed


def test_context_round_trips_and_a_bad_one_changes_nothing(fleet: Api) -> None:
    empty: dict[str, object] = {"local_networks": [], "controllers": {}, "my_controllers": {}}
    assert _ok(fleet.client.get("/v1/segment/context", headers=fleet.headers(Role.READ_ONLY))) == empty
    context = {
        "local_networks": ["192.168.1.0/24"],
        "controllers": {"urn:ietf:params:mud:dns": ["192.168.1.1"]},
        "my_controllers": {CAM_URL: ["192.168.1.5", "2001:db8::5"]},
    }
    assert _ok(fleet.client.put("/v1/segment/context", json=context, headers=fleet.headers())) == context
    bad = {**context, "local_networks": ["192.168.1.1/24"]}
    detail = _problem(
        fleet.client.put("/v1/segment/context", json=bad, headers=fleet.headers()), 422, "invalid-input"
    )
    assert detail["detail"] == "invalid network '192.168.1.1/24' (use a prefix such as 10.0.0.0/8)"
    assert _ok(fleet.client.get("/v1/segment/context", headers=fleet.headers())) == context


# -- apply and history -----------------------------------------------------------------------


def test_dry_run_checks_and_records_nothing_then_apply_records_a_generation(fleet: Api, nft: FakeNft) -> None:
    _ok(_add(fleet), 201)
    _ok(_bind(fleet, "cam-1", ipv4="192.0.2.10"))
    dry = _ok(fleet.client.post("/v1/segment/apply", json={"dry_run": True}, headers=fleet.headers()))
    assert {k: v for k, v in dry.items() if k not in ("digest", "seconds")} == {
        "generation": 0,
        "dry_run": True,
        "devices": 1,
        "profiles": 1,
        "unprofiled": [],
        "unresolved": {},
        "quarantined": 0,
        "elements": {"class4": 1, "denied4": 1, "in4": 1, "out4": 1},
    }
    assert [check for _, check in nft.scripts] == [True]
    assert _history(fleet) == []
    applied = _ok(fleet.client.post("/v1/segment/apply", json={}, headers=fleet.headers(Role.OPERATOR)))
    assert (applied["generation"], applied["dry_run"], applied["digest"] != dry["digest"]) == (1, False, True)
    assert [check for _, check in nft.scripts] == [True, True, False]
    [entry] = _history(fleet)
    assert {k: v for k, v in entry.items() if k not in ("applied_at", "actor")} == {
        "generation": 1,
        "digest": applied["digest"],
        "devices": 1,
        "profiles": 1,
        "elements": {"class4": 1, "denied4": 1, "in4": 1, "out4": 1},
        "unprofiled": 0,
        "quarantined": 0,
    }


def test_a_refused_ruleset_is_a_503_and_records_nothing(fleet: Api, nft: FakeNft) -> None:
    _ok(_add(fleet), 201)
    nft.refuse = True
    response = fleet.client.post("/v1/segment/apply", json={"dry_run": False}, headers=fleet.headers())
    body = _problem(response, 503, "ruleset-rejected")
    assert body["detail"] == "nft refused the change (exit 1); the ruleset in force is unchanged: boom"
    assert _history(fleet) == []


# -- simulation ------------------------------------------------------------------------------


def _flow(source: str, destination: str, port: int) -> dict[str, object]:
    return {
        "start": START,
        "source": source,
        "destination": destination,
        "protocol": 6,
        "source_port": 40000,
        "destination_port": port,
    }


def test_simulate_reports_blocked_flows_and_stores_nothing(fleet: Api, nft: FakeNft) -> None:
    _ok(_add(fleet), 201)
    _ok(_bind(fleet, "cam-1", ipv4="192.0.2.10"))
    flows = [
        _flow("192.0.2.10", CLOUD, 443),
        _flow("192.0.2.10", "198.51.100.7", 443),
        _flow("192.0.2.99", "198.51.100.7", 80),
    ]
    size = fleet.log_size()
    result = _ok(fleet.client.post("/v1/segment/simulate", json={"flows": flows}, headers=fleet.headers()))
    assert {k: result[k] for k in ("flows", "unmanaged", "blocked", "proposed")} == {
        "flows": 3,
        "unmanaged": 1,
        "blocked": 1,
        "proposed": [],
    }
    [device] = result["devices"]
    assert (device["device_id"], device["allowed"]) == ("cam-1", 1)
    assert device["blocked"] == [
        {
            "flow": {
                **flows[1],
                "start": "2025-06-01T12:00:00Z",
                "icmp_type": None,
                "icmp_code": None,
                "packets": 1,
                "octets": 0,
                "established": False,
            },
            "verdict": "blocked",
            "reason": "not in cam-1's from-device policy",
        },
    ]

    wider = json.loads(CAM_TEXT)
    wider["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"][0]["matches"]["ipv4"][
        "destination-ipv4-network"
    ] = "198.51.100.0/24"
    body = {"flows": flows, "profiles": [json.dumps(wider)]}
    proposed = _ok(fleet.client.post("/v1/segment/simulate", json=body, headers=fleet.headers()))
    assert (proposed["blocked"], proposed["proposed"]) == (1, [CAM_URL])  # now the cloud address is blocked
    assert proposed["devices"][0]["blocked"][0]["flow"]["destination"] == CLOUD
    assert [p["digest"] for p in _profiles(fleet)] == [CAM_DIGEST]
    assert nft.scripts == []
    assert fleet.log_size() == size


def test_simulate_refuses_bad_input(fleet: Api) -> None:
    bad_flow = {"flows": [{**_flow("192.0.2.10", CLOUD, 443), "source": "nope"}]}
    _problem(
        fleet.client.post("/v1/segment/simulate", json=bad_flow, headers=fleet.headers()),
        422,
        "invalid-input",
    )
    naive = {"flows": [{**_flow("192.0.2.10", CLOUD, 443), "start": "2025-06-01T12:00:00"}]}
    _problem(
        fleet.client.post("/v1/segment/simulate", json=naive, headers=fleet.headers()), 422, "invalid-input"
    )
    bad_profile = {"flows": [], "profiles": ["{}"]}
    body = _problem(
        fleet.client.post("/v1/segment/simulate", json=bad_profile, headers=fleet.headers()),
        422,
        "mud-invalid",
    )
    assert body["path"] == ""
    _problem(
        fleet.client.post("/v1/segment/simulate", json={"flows": []}, headers=fleet.headers(Role.AUDITOR)),
        403,
        "forbidden",
    )


# -- OpenAPI ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "permission", "statuses"),
    [
        ("get", PROFILES, "segment:read", {"200"}),
        ("post", PROFILES, "segment:write", {"201", "400", "413"}),
        ("get", f"{PROFILES}/{{url}}", "segment:read", {"200", "404"}),
        ("delete", f"{PROFILES}/{{url}}", "segment:write", {"204", "404"}),
        ("put", "/v1/devices/{device_id}/binding", "segment:write", {"200", "404", "413"}),
        ("get", "/v1/segment/bindings", "segment:read", {"200"}),
        ("get", "/v1/segment/context", "segment:read", {"200"}),
        ("put", "/v1/segment/context", "segment:write", {"200", "413"}),
        ("post", "/v1/segment/apply", "segment:write", {"200", "413"}),
        ("get", "/v1/segment/history", "segment:read", {"200"}),
        ("post", "/v1/segment/simulate", "segment:write", {"200", "413"}),
    ],
)
def test_openapi_documents_the_segment_operations(
    api: Api, method: str, path: str, permission: str, statuses: set[str]
) -> None:
    operation = api.client.get("/openapi.json").json()["paths"][path][method]
    assert operation["x-fleetguard-permission"] == permission
    assert statuses | {"401", "403", "422", "503"} <= set(operation["responses"])
    assert operation["tags"] == ["segment"]
    ok = next(status for status in statuses if status.startswith("2"))
    if ok != "204":
        assert "schema" in operation["responses"][ok]["content"]["application/json"]
