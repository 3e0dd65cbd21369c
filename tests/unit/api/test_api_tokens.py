"""API tokens over HTTP: the secret is shown once and works; listing never shows it; revoking ends it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetguard.api.tokens import Role

if TYPE_CHECKING:
    from conftest import Api


def test_created_token_works_with_its_role_and_is_never_listed_with_its_secret(api: Api) -> None:
    response = api.client.post("/v1/tokens", json={"name": "ci", "role": "auditor"}, headers=api.headers())
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    created = response.json()
    secret = created["secret"]
    assert secret.startswith(f"fgt_{created['id']}_")
    auditor = {"Authorization": f"Bearer {secret}"}
    assert api.client.get("/v1/events/verify", headers=auditor).status_code == 200
    assert api.client.post("/v1/sites", json={"id": "x"}, headers=auditor).status_code == 403
    listing = api.client.get("/v1/tokens", headers=api.headers())
    assert secret not in listing.text
    assert "secret" not in listing.json()[0]
    assert any(token["name"] == "ci" and token["role"] == "auditor" for token in listing.json())


def test_expired_and_bad_requests(api: Api) -> None:
    past = {"name": "old", "role": "admin", "expires_at": "2000-01-01T00:00:00Z"}
    assert api.client.post("/v1/tokens", json=past, headers=api.headers()).status_code == 422
    naive = {"name": "x", "role": "admin", "expires_at": "2999-01-01T00:00:00"}
    assert api.client.post("/v1/tokens", json=naive, headers=api.headers()).status_code == 422
    assert (
        api.client.post("/v1/tokens", json={"name": "x", "role": "root"}, headers=api.headers()).status_code
        == 422
    )


def test_revoke_is_idempotent_and_unknown_is_404(api: Api) -> None:
    token_id = api.token(Role.READ_ONLY).split("_")[1]
    first = api.client.delete(f"/v1/tokens/{token_id}", params={"reason": "left"}, headers=api.headers())
    assert first.status_code == 200
    assert first.json()["revoked_at"] is not None
    again = api.client.delete(f"/v1/tokens/{token_id}", headers=api.headers())
    assert again.json()["revoked_at"] == first.json()["revoked_at"]
    assert api.client.delete("/v1/tokens/ffffffffffff", headers=api.headers()).status_code == 404
    revocations = api.runtime.log.entries(action="token.revoked")
    assert [(e.subject, e.reason) for e in revocations] == [(f"token:{token_id}", "left")]
