"""Zero trust over HTTP: the policy (read, validate, diff, apply with If-Match), decisions, a device's
trust status and signals; invalid and empty policies refused with where, and nothing stored.

The fleet: two active cameras of type ``cam`` (firmware 1.0 and 2.0) and a registered spare, none
with a certificate. The shipped default forbids devices without a valid certificate, so every
decision is a deny; ``OPEN`` is the default without that forbid, which lets the active cameras in.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import pytest

from fleetguard.api.routers.trust import MAX_POLICY_BODY
from fleetguard.api.tokens import Role
from fleetguard.inventory.lifecycle import Action
from fleetguard.inventory.model import DeviceSpec
from fleetguard.trust import DEFAULT_POLICIES, parse_policy_set
from fleetguard.trust.evaluator import ContinuousEvaluator, EnforcementReport
from fleetguard.trust.policy import MAX_POLICY_BYTES
from fleetguard.trust.service import AccessPlan
from fleetguard.types import utc_now

if TYPE_CHECKING:
    from conftest import Api

_UNTRUSTED_START = DEFAULT_POLICIES.index('@id("untrusted-identity-nothing")')
_UNTRUSTED_END = DEFAULT_POLICIES.index('@id("end-of-life-firmware-nothing")')
OPEN = DEFAULT_POLICIES[:_UNTRUSTED_START] + DEFAULT_POLICIES[_UNTRUSTED_END:]
BAD = DEFAULT_POLICIES.replace('principal.state == "quarantined"', 'principal.nope == "quarantined"')
TEXT = {"Content-Type": "text/plain; charset=utf-8"}


@pytest.fixture
def fleet(api: Api) -> Api:
    response = api.client.post("/v1/device-types", json={"id": "cam"}, headers=api.headers())
    assert response.status_code == 201, response.text
    inventory = api.runtime.inventory
    for device_id, firmware in (("cam-1", "1.0"), ("cam-2", "2.0")):
        spec = DeviceSpec(id=device_id, serial=device_id, manufacturer="acme", device_type="cam",
                          firmware_version=firmware)  # fmt: skip
        inventory.register(spec, actor="test")
        inventory.transition(device_id, Action.PROVISION, actor="test")
        inventory.transition(device_id, Action.ACTIVATE, actor="test")
    inventory.register(DeviceSpec(id="spare", serial="spare", manufacturer="acme"), actor="test")
    return api


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"https://fleetguard.dev/problems/{code}"
    return body


def _where(text: str, needle: str) -> tuple[int, int]:
    offset = text.index(needle)
    return text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset)


def _apply(api: Api, text: str, version: int, role: Role = Role.ADMIN, **fields: object) -> Any:
    return api.client.put(
        "/v1/policies",
        json={"text": text, **fields},
        headers=api.headers(role, **{"If-Match": f'"{version}"'}),
    )


def _history(api: Api) -> list[dict[str, Any]]:
    response = api.client.get("/v1/policies/versions", headers=api.headers(Role.READ_ONLY))
    assert response.status_code == 200, response.text
    history: list[dict[str, Any]] = response.json()
    return history


# -- reading ---------------------------------------------------------------------------------


def test_the_default_policy_is_in_force_with_etag_0(fleet: Api) -> None:
    response = fleet.client.get("/v1/policies", headers=fleet.headers(Role.READ_ONLY))
    assert response.status_code == 200
    assert response.headers["etag"] == '"0"'
    default = parse_policy_set(DEFAULT_POLICIES)
    assert response.json() == {
        "version": 0,
        "digest": default.digest,
        "policies": list(default.ids),
        "firmware": {"minimum": {}, "end_of_life": []},
        "actor": "fleetguard",
        "reason": "the shipped default",
        "created_at": None,
        "text": DEFAULT_POLICIES,
    }
    assert _history(fleet) == []
    shipped = fleet.client.get("/v1/policies/versions/0", headers=fleet.headers(Role.READ_ONLY))
    assert shipped.json()["text"] == DEFAULT_POLICIES


def test_an_unknown_version_is_404(fleet: Api) -> None:
    response = fleet.client.get("/v1/policies/versions/7", headers=fleet.headers())
    body = _problem(response, 404, "policy-version-not-found")
    assert body["detail"] == "no policy version 7"


# -- validate --------------------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True])
def test_validate_answers_the_ids_and_digest(fleet: Api, as_json: bool) -> None:
    headers = fleet.headers(Role.READ_ONLY)
    if as_json:
        response = fleet.client.post("/v1/policies/validate", json={"text": OPEN}, headers=headers)
    else:
        response = fleet.client.post("/v1/policies/validate", content=OPEN, headers={**headers, **TEXT})
    assert response.status_code == 200, response.text
    parsed = parse_policy_set(OPEN)
    assert response.json() == {"valid": True, "digest": parsed.digest, "policies": list(parsed.ids)}


def test_an_invalid_policy_is_422_with_line_column_and_policy_id(fleet: Api) -> None:
    response = fleet.client.post("/v1/policies/validate", content=BAD, headers=fleet.headers(**TEXT))
    body = _problem(response, 422, "policy-invalid")
    line, column = _where(BAD, "nope")
    assert (body["line"], body["column"], body["policy_id"]) == (line, column, "quarantined-devices-nothing")
    assert body["detail"].startswith(f"line {line}, column {column} (policy 'quarantined-devices-nothing'): ")
    assert body["hint"] == "fix the policy; nothing was applied"


def test_a_parse_error_names_where_without_a_policy_id(fleet: Api) -> None:
    text = '@id("a")\npermit (principal, action resource);\n'
    response = fleet.client.post("/v1/policies/validate", json={"text": text}, headers=fleet.headers())
    body = _problem(response, 422, "policy-invalid")
    assert (body["line"], body["column"], body["policy_id"]) == (2, 27, None)


def test_an_empty_policy_set_is_422(fleet: Api) -> None:
    response = fleet.client.post("/v1/policies/validate", content="// none\n", headers=fleet.headers(**TEXT))
    body = _problem(response, 422, "policy-set-empty")
    assert "refused" in body["detail"]


def test_a_policy_that_is_not_utf8_is_422_naming_the_byte(fleet: Api) -> None:
    data = b'@id("a")\npermit (principal, action, resource) when { principal.model == "caf\xe9" };\n'
    response = fleet.client.post("/v1/policies/validate", content=data, headers=fleet.headers(**TEXT))
    body = _problem(response, 422, "policy-invalid")
    assert (body["line"], body["column"]) == _where(data.decode("latin-1"), "\xe9")


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"permit", {"Content-Type": "application/x-cedar"}, 415, "unsupported-media-type"),
        (b"{", {"Content-Type": "application/json"}, 400, "malformed-json"),
        (b'{"text": "x", "nope": 1}', {"Content-Type": "application/json"}, 422, "invalid-input"),
        (b'{"policy": "x"}', {"Content-Type": "application/json"}, 422, "invalid-input"),
    ],
)
def test_malformed_bodies_are_problems(
    fleet: Api, content: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    response = fleet.client.post("/v1/policies/validate", content=content, headers=fleet.headers(**headers))
    _problem(response, status, code)


def test_policy_bodies_are_bounded(fleet: Api) -> None:
    validate = "/v1/policies/validate"
    too_long = "/" * (MAX_POLICY_BYTES + 1)
    _problem(
        fleet.client.post(validate, content=too_long, headers=fleet.headers(**TEXT)), 413, "body-too-large"
    )
    huge = {"text": "\n" * (MAX_POLICY_BODY // 2)}  # escaped as \n: two bytes a character
    _problem(fleet.client.post(validate, json=huge, headers=fleet.headers()), 413, "body-too-large")
    fits = {"text": "// x\n" * (MAX_POLICY_BYTES // 5 + 1)}  # under the body bound, over the policy bound
    body = _problem(fleet.client.post(validate, json=fits, headers=fleet.headers()), 422, "invalid-input")
    assert body["errors"][0]["loc"] == ["body", "text"]
    wide = {"text": "\u00e9" * (MAX_POLICY_BYTES // 2 + 1)}  # few characters, too many UTF-8 bytes
    body = _problem(fleet.client.post(validate, json=wide, headers=fleet.headers()), 422, "policy-invalid")
    assert body["detail"] == f"line 1, column 1: the policy set is larger than {MAX_POLICY_BYTES} bytes"
    response = fleet.client.put("/v1/policies", json=huge, headers=fleet.headers(**{"If-Match": '"0"'}))
    _problem(response, 413, "body-too-large")
    assert _history(fleet) == []


# -- diff ------------------------------------------------------------------------------------


def test_diff_lists_exactly_the_changed_devices_and_applies_nothing(fleet: Api) -> None:
    size = fleet.log_size()
    response = fleet.client.post(
        "/v1/policies/diff", content=OPEN, headers=fleet.headers(Role.OPERATOR, **TEXT)
    )
    assert response.status_code == 200, response.text
    diff = response.json()
    assert (diff["current_version"], diff["devices"], diff["changed_devices"]) == (0, 3, 2)
    assert diff["changed_decisions"] == len(diff["changes"]) == 10
    assert {change["device_id"] for change in diff["changes"]} == {"cam-1", "cam-2"}
    assert {
        "device_id": "cam-2",
        "action": "subscribe",
        "resource": "types/cam/#",
        "before": "deny",
        "after": "allow",
        "before_policies": ["untrusted-identity-nothing"],
        "after_policies": ["active-devices-type-topics"],
    } in diff["changes"]
    assert fleet.log_size() == size
    assert _history(fleet) == []


def test_diff_with_a_firmware_policy_and_a_limit(fleet: Api) -> None:
    body = {"text": OPEN, "end_of_life": ["cam@1.0"]}
    response = fleet.client.post("/v1/policies/diff?limit=2", json=body, headers=fleet.headers())
    assert response.status_code == 200, response.text
    diff = response.json()
    assert (diff["changed_devices"], diff["changed_decisions"], len(diff["changes"])) == (1, 5, 2)
    assert {change["device_id"] for change in diff["changes"]} == {"cam-2"}


# -- apply -----------------------------------------------------------------------------------


def test_apply_creates_version_1_then_2(fleet: Api) -> None:
    first = _apply(fleet, OPEN, 0, Role.OPERATOR, reason="lab without certificates")
    assert first.status_code == 200, first.text
    assert first.headers["etag"] == '"1"'
    assert (first.json()["version"], first.json()["text"]) == (1, OPEN)
    second = fleet.client.put(
        "/v1/policies", json={"text": DEFAULT_POLICIES, "expected_version": 1}, headers=fleet.headers()
    )
    assert second.status_code == 200, second.text
    assert second.json()["version"] == 2

    history = _history(fleet)
    assert [(h["version"], h["reason"]) for h in history] == [(2, ""), (1, "lab without certificates")]
    assert history[1]["actor"].startswith("token:")
    assert history[1]["actor"].endswith(":test operator")
    assert "text" not in history[0]
    assert history[1]["digest"] == parse_policy_set(OPEN).digest
    one = fleet.client.get("/v1/policies/versions/1", headers=fleet.headers(Role.AUDITOR))
    assert one.json()["text"] == OPEN
    current = fleet.client.get("/v1/policies", headers=fleet.headers())
    assert (current.headers["etag"], current.json()["text"]) == ('"2"', DEFAULT_POLICIES)
    applied = fleet.runtime.log.entries(action="trust.policy_applied")
    assert [entry.details()["version"] for entry in applied] == [1, 2]


def test_a_stale_version_is_409_and_changes_nothing(fleet: Api) -> None:
    assert _apply(fleet, OPEN, 0).status_code == 200
    size = fleet.log_size()
    body = _problem(_apply(fleet, DEFAULT_POLICIES, 0), 409, "policy-conflict")
    assert body["detail"] == "policy version 1 is in force, not 0"
    assert fleet.log_size() == size
    assert len(_history(fleet)) == 1


@pytest.mark.parametrize(
    ("headers", "fields", "status", "code"),
    [
        ({}, {}, 428, "precondition-required"),
        ({"If-Match": "*"}, {}, 422, "invalid-input"),
        ({"If-Match": '"0"'}, {"expected_version": 1}, 422, "invalid-input"),
    ],
)
def test_apply_must_name_one_version(
    fleet: Api, headers: dict[str, str], fields: dict[str, object], status: int, code: str
) -> None:
    response = fleet.client.put(
        "/v1/policies", json={"text": OPEN, **fields}, headers=fleet.headers(**headers)
    )
    _problem(response, status, code)
    assert _history(fleet) == []


@pytest.mark.parametrize(
    ("text", "code"), [(BAD, "policy-invalid"), ("", "policy-set-empty"), ("// none\n", "policy-set-empty")]
)
def test_an_invalid_or_empty_policy_is_not_applied(fleet: Api, text: str, code: str) -> None:
    size = fleet.log_size()
    body = _problem(_apply(fleet, text, 0), 422, code)
    if code == "policy-invalid":
        assert (body["line"], body["column"]) == _where(BAD, "nope")
    assert fleet.log_size() == size
    assert _history(fleet) == []
    assert fleet.client.get("/v1/policies", headers=fleet.headers()).json()["version"] == 0


def test_apply_replaces_the_parts_of_the_firmware_policy_it_names(fleet: Api) -> None:
    response = _apply(fleet, OPEN, 0, firmware_minimum={"cam": "1.5"}, end_of_life=["0.9"])
    assert response.json()["firmware"] == {"minimum": {"cam": "1.5"}, "end_of_life": ["0.9"]}
    response = _apply(fleet, OPEN, 1, end_of_life=[])
    assert response.json()["firmware"] == {"minimum": {"cam": "1.5"}, "end_of_life": []}
    facts = fleet.client.get("/v1/devices/cam-1/trust", headers=fleet.headers()).json()["facts"]
    assert facts["posture"]["firmware_compliant"] is False
    body = _problem(_apply(fleet, OPEN, 2, firmware_minimum={"cam": "!!"}), 422, "trust-input-invalid")
    assert "is not a version" in body["detail"]
    assert len(_history(fleet)) == 2


# -- permissions -----------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.READ_ONLY, Role.AUDITOR])
def test_viewers_read_and_decide_but_cannot_change_anything(fleet: Api, role: Role) -> None:
    size = fleet.log_size()
    assert fleet.client.get("/v1/policies", headers=fleet.headers(role)).status_code == 200
    decision = {"device_id": "cam-1", "action": "connect"}
    assert fleet.client.post("/v1/decisions", json=decision, headers=fleet.headers(role)).status_code == 200
    forbidden = [
        _apply(fleet, OPEN, 0, role),
        fleet.client.post("/v1/policies/diff", content=OPEN, headers=fleet.headers(role, **TEXT)),
        fleet.client.post("/v1/devices/cam-1/signals", json={"risk": 90}, headers=fleet.headers(role)),
    ]
    for response in forbidden:
        body = _problem(response, 403, "forbidden")
        assert body["detail"].startswith(f"role {role} may not ")
    assert fleet.log_size() == size
    assert _history(fleet) == []
    assert fleet.runtime.trust.facts("cam-1").risk == 0


# -- decisions, device trust, signals --------------------------------------------------------


def test_a_decision_names_its_policies_and_inputs(fleet: Api) -> None:
    request = {"device_id": "cam-1", "action": "connect"}
    response = fleet.client.post("/v1/decisions", json=request, headers=fleet.headers(Role.READ_ONLY))
    assert response.status_code == 200, response.text
    decision = response.json()
    assert (decision["outcome"], decision["policies"], decision["errors"]) == (
        "deny",
        ["untrusted-identity-nothing"],
        [],
    )
    assert decision["resource"] == {"kind": "Broker", "name": "mqtt", "owner": ""}
    assert decision["policy_digest"] == parse_policy_set(DEFAULT_POLICIES).digest
    assert decision["facts"]["certificate_valid"] is False
    assert decision["facts"]["posture"]["firmware_version"] == "1.0"
    assert 0 <= decision["hour"] <= 23

    assert _apply(fleet, OPEN, 0).status_code == 200
    request = {"device_id": "cam-1", "action": "subscribe", "topic": "types/cam/status/#"}
    decision = fleet.client.post("/v1/decisions", json=request, headers=fleet.headers()).json()
    assert (decision["outcome"], decision["policies"]) == ("allow", ["active-devices-type-topics"])
    assert decision["resource"] == {"kind": "TypeTopic", "name": "types/cam/#", "owner": "cam"}


@pytest.mark.parametrize(
    ("request_body", "status", "code"),
    [
        ({"device_id": "ghost", "action": "connect"}, 404, "device-not-found"),
        ({"device_id": "cam-1", "action": "publish", "topic": "elsewhere/x"}, 422, "trust-input-invalid"),
        ({"device_id": "cam-1", "action": "connect", "topic": "devices/cam-1/#"}, 422, "trust-input-invalid"),
        ({"device_id": "cam-1", "action": "fly"}, 422, "invalid-input"),
    ],
)
def test_malformed_decision_requests_are_problems(
    fleet: Api, request_body: dict[str, str], status: int, code: str
) -> None:
    response = fleet.client.post("/v1/decisions", json=request_body, headers=fleet.headers())
    body = _problem(response, status, code)
    if code == "device-not-found":
        assert body["device_id"] == "ghost"


class _RefusingPoint:
    """An enforcement point that cannot apply any plan."""

    name = "broker"

    def enforce(self, plan: AccessPlan) -> EnforcementReport:
        return EnforcementReport(self.name, False, f"broker down for {plan.device_id}")


def test_device_trust_shows_facts_plan_and_enforcement(fleet: Api) -> None:
    response = fleet.client.get("/v1/devices/cam-1/trust", headers=fleet.headers(Role.READ_ONLY))
    assert response.status_code == 200, response.text
    trust = response.json()
    assert trust["facts"]["device_id"] == "cam-1"
    assert (trust["access"]["connect"], trust["access"]["grants"], trust["enforcement"]) == ("deny", [], None)
    assert len(trust["access"]["decisions"]) == 5

    assert _apply(fleet, OPEN, 0).status_code == 200
    runtime = fleet.runtime
    evaluator = ContinuousEvaluator(
        runtime.trust, [_RefusingPoint()], runtime.database, runtime.log, clock=utc_now
    )
    evaluator.reconcile(["cam-1"])
    trust = fleet.client.get("/v1/devices/cam-1/trust", headers=fleet.headers()).json()
    assert trust["access"]["connect"] == "allow"
    assert trust["access"]["policy_version"] == 1
    assert {(grant["action"], grant["topic_filter"]) for grant in trust["access"]["grants"]} == {
        ("publish", "devices/cam-1/#"),
        ("subscribe", "devices/cam-1/#"),
        ("publish", "types/cam/#"),
        ("subscribe", "types/cam/#"),
    }
    enforcement = trust["enforcement"]
    assert (enforcement["status"], enforcement["policy_version"], enforcement["attempts"]) == ("failed", 1, 1)
    assert enforcement["detail"] == "broker: broker down for cam-1"
    assert enforcement["next_attempt_at"] is not None
    missing = fleet.client.get("/v1/devices/ghost/trust", headers=fleet.headers())
    _problem(missing, 404, "device-not-found")


def test_signals_change_the_facts_and_are_logged_with_the_token(fleet: Api) -> None:
    attested = (utc_now() - dt.timedelta(minutes=1)).isoformat()
    body = {"risk": 55, "known_vulnerable": True, "attested_at": attested, "reason": "scanner"}
    response = fleet.client.post("/v1/devices/cam-2/signals", json=body, headers=fleet.headers(Role.OPERATOR))
    assert response.status_code == 200, response.text
    facts = response.json()
    assert facts["risk"] == 55
    assert (facts["posture"]["known_vulnerable"], facts["posture"]["attestation_fresh"]) == (True, True)
    response = fleet.client.post("/v1/devices/cam-2/signals", json={"risk": 5}, headers=fleet.headers())
    assert (response.json()["risk"], response.json()["posture"]["known_vulnerable"]) == (5, True)
    entries = fleet.runtime.log.entries(action="trust.signals_changed")
    assert [(entry.subject, entry.reason) for entry in entries] == [
        ("device:cam-2", "scanner"),
        ("device:cam-2", ""),
    ]
    assert entries[0].actor.endswith(":test operator")


@pytest.mark.parametrize(
    ("device_id", "body", "status", "code"),
    [
        ("cam-1", {}, 422, "invalid-input"),
        ("cam-1", {"reason": "nothing"}, 422, "invalid-input"),
        ("cam-1", {"risk": 101}, 422, "invalid-input"),
        ("cam-1", {"attested_at": "2999-01-01T00:00:00Z"}, 422, "invalid-input"),
        ("cam-1", {"attested_at": "2025-01-01T00:00:00"}, 422, "invalid-input"),  # no offset
        ("ghost", {"risk": 1}, 404, "device-not-found"),
    ],
)
def test_bad_signals_are_refused_and_change_nothing(
    fleet: Api, device_id: str, body: dict[str, object], status: int, code: str
) -> None:
    size = fleet.log_size()
    response = fleet.client.post(f"/v1/devices/{device_id}/signals", json=body, headers=fleet.headers())
    _problem(response, status, code)
    assert fleet.log_size() == size


# -- OpenAPI ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "permission", "statuses"),
    [
        ("get", "/v1/policies", "policy:read", {"200"}),
        ("put", "/v1/policies", "policy:write", {"200", "409", "413", "428"}),
        ("get", "/v1/policies/versions", "policy:read", {"200"}),
        ("get", "/v1/policies/versions/{version}", "policy:read", {"200", "404"}),
        ("post", "/v1/policies/validate", "policy:read", {"200", "400", "413", "415"}),
        ("post", "/v1/policies/diff", "policy:write", {"200", "400", "413", "415"}),
        ("post", "/v1/decisions", "policy:read", {"200", "404"}),
        ("get", "/v1/devices/{device_id}/trust", "policy:read", {"200", "404"}),
        ("post", "/v1/devices/{device_id}/signals", "signals:write", {"200", "404"}),
    ],
)
def test_openapi_documents_the_trust_operations(
    api: Api, method: str, path: str, permission: str, statuses: set[str]
) -> None:
    operation = api.client.get("/openapi.json").json()["paths"][path][method]
    assert operation["x-fleetguard-permission"] == permission
    assert statuses | {"401", "403", "422", "503"} <= set(operation["responses"])
    assert operation["tags"] == ["trust"]


def test_openapi_documents_both_policy_body_media_types(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    for path in ("/v1/policies/validate", "/v1/policies/diff"):
        content = document["paths"][path]["post"]["requestBody"]["content"]
        assert content["text/plain"]["schema"]["maxLength"] == MAX_POLICY_BYTES
        assert set(content["application/json"]["schema"]["properties"]) == {
            "text",
            "firmware_minimum",
            "end_of_life",
        }
    ok = document["paths"]["/v1/policies"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"] == {"$ref": "#/components/schemas/PolicyView"}
