"""The event log over HTTP: entries, checkpoints, verification (tampering found), and proofs that
check out against the signed checkpoint with nothing but the public key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetguard.api.tokens import Role
from fleetguard.events.checkpoint import SignedTreeHead, load_public_key, verify_tree_head
from fleetguard.events.merkle import verify_consistency, verify_inclusion

if TYPE_CHECKING:
    from conftest import Api


def _get(api: Api, path: str, role: Role = Role.AUDITOR, **params: Any) -> Any:
    response = api.client.get(path, params=params, headers=api.headers(role))
    assert response.status_code == 200, response.text
    return response.json()


def _sign(api: Api) -> dict[str, Any]:
    response = api.client.post("/v1/events/checkpoints", headers=api.headers())
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_list_in_both_orders_with_cursor(api: Api) -> None:
    base = api.log_size()
    for number in range(3):
        api.register(id=f"dev-{number}")
    everything = _get(api, "/v1/events", Role.OPERATOR)["items"]
    assert [entry["seq"] for entry in everything] == list(range(1, base + 4))
    first = everything[base]
    assert first["actor"].startswith("token:")
    assert (first["subject"], first["data"]["to"]) == ("device:dev-0", "registered")
    assert len(first["hash"]) == 64
    assert everything[base + 1]["prev_hash"] == first["hash"]
    last = base + 3
    page = _get(api, "/v1/events", limit=2, order="desc")
    assert ([e["seq"] for e in page["items"]], page["next_after"]) == ([last, last - 1], last - 1)
    page = _get(api, "/v1/events", limit=2, order="desc", after=last - 1)
    assert [e["seq"] for e in page["items"]] == [last - 2, last - 3]
    page = _get(api, "/v1/events", limit=2, after=last - 1)
    assert ([e["seq"] for e in page["items"]], page["next_after"]) == ([last], None)


def test_list_by_subject_and_action(api: Api) -> None:
    api.register(id="cam-1")
    api.register(id="cam-2")
    items = _get(api, "/v1/events", subject="device:cam-2")["items"]
    assert [(e["subject"], e["action"]) for e in items] == [("device:cam-2", "device.registered")]
    assert len(_get(api, "/v1/events", action="device.registered")["items"]) == 2


def test_get_one_entry_and_unknown_seq(api: Api) -> None:
    assert _get(api, "/v1/events/1")["seq"] == 1
    response = api.client.get("/v1/events/99", headers=api.headers())
    assert (response.status_code, response.json()["type"]) == (
        404,
        "https://fleetguard.dev/problems/not-found",
    )
    assert api.client.get("/v1/events/0", headers=api.headers()).status_code == 422


def test_no_checkpoint_yet_is_404(api: Api) -> None:
    response = api.client.get("/v1/events/checkpoints/latest", headers=api.headers())
    assert response.status_code == 404
    assert "POST /v1/events/checkpoints" in response.json()["hint"]


def test_signed_checkpoint_verifies_with_the_published_key(api: Api) -> None:
    api.register(id="cam-1")
    signed = _sign(api)
    assert signed["tree_size"] == api.log_size()
    latest = _get(api, "/v1/events/checkpoints/latest", Role.OPERATOR)
    assert latest == signed
    pem = api.client.get("/v1/events/public-key", headers=api.headers(Role.OPERATOR))
    assert pem.headers["content-type"].startswith("text/plain")
    head = SignedTreeHead.from_note(signed["note"])
    verify_tree_head(head, load_public_key(pem.content))
    assert head.head.root_hash.hex() == signed["root_hash"]


def test_inclusion_proof_checks_out_against_the_checkpoint(api: Api) -> None:
    for number in range(4):
        api.register(id=f"dev-{number}")
    signed = _sign(api)
    size, root = signed["tree_size"], bytes.fromhex(signed["root_hash"])
    for seq in range(1, size + 1):
        proof = _get(api, "/v1/events/proofs/inclusion", seq=seq, tree_size=size)
        assert proof["leaf_hash"] == _get(api, f"/v1/events/{seq}")["hash"]
        assert proof["root_hash"] == signed["root_hash"]
        path = [bytes.fromhex(node) for node in proof["path"]]
        verify_inclusion(bytes.fromhex(proof["leaf_hash"]), proof["leaf_index"], size, path, root)


def test_consistency_proof_links_two_checkpoints(api: Api) -> None:
    api.register(id="cam-1")
    old = _sign(api)
    api.register(id="cam-2")
    api.register(id="cam-3")
    new = _sign(api)
    proof = _get(api, "/v1/events/proofs/consistency", old_size=old["tree_size"], new_size=new["tree_size"])
    verify_consistency(
        old["tree_size"],
        new["tree_size"],
        bytes.fromhex(old["root_hash"]),
        bytes.fromhex(new["root_hash"]),
        [bytes.fromhex(node) for node in proof["path"]],
    )


def test_proof_out_of_range_is_422(api: Api) -> None:
    response = api.client.get("/v1/events/proofs/inclusion", params={"seq": 50}, headers=api.headers())
    assert response.status_code == 422
    response = api.client.get(
        "/v1/events/proofs/consistency", params={"old_size": 1, "new_size": 99}, headers=api.headers()
    )
    assert response.status_code == 422


def test_verify_reports_an_intact_log(api: Api) -> None:
    api.register(id="cam-1")
    _sign(api)
    report = _get(api, "/v1/events/verify")
    entries = api.log_size()
    assert report == {
        "intact": True,
        "entries": entries,
        "checkpoints": 1,
        "findings": [],
        "more_findings": 0,
    }


def test_verify_finds_an_entry_modified_in_the_database_file(api: Api) -> None:
    api.register(id="cam-1")
    api.sql("UPDATE event_log SET reason = ? WHERE seq = 2", "nothing to see here")
    report = _get(api, "/v1/events/verify")
    assert report["intact"] is False
    assert {"kind": "modified", "seq": 2} in [
        {"kind": f["kind"], "seq": f["seq"]} for f in report["findings"]
    ]


def test_signing_over_a_tampered_log_is_refused(api: Api) -> None:
    api.register(id="cam-1")
    api.sql("UPDATE event_log SET actor = ? WHERE seq = ?", "someone else", api.log_size())
    response = api.client.post("/v1/events/checkpoints", headers=api.headers())
    assert response.status_code == 500
    assert response.json()["type"] == "https://fleetguard.dev/problems/tamper-detected"
    assert api.runtime.log.latest_checkpoint() is None
