"""Operator API tokens: list, create (the secret is shown once) and revoke. Admins only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from fleetguard.api import schemas
from fleetguard.api.auth import actor_of, require
from fleetguard.api.context import RuntimeDep
from fleetguard.api.problems import problem_responses
from fleetguard.api.tokens import Permission, TokenInfo
from fleetguard.types import utc_now

__all__ = ["router"]

router = APIRouter(prefix="/v1/tokens", tags=["tokens"], responses=problem_responses(401, 403, 422, 503))

_Admin = Annotated[TokenInfo, Depends(require(Permission.TOKENS_ADMIN))]


@router.get("", summary="List API tokens")
def list_tokens(runtime: RuntimeDep, _token: _Admin) -> list[schemas.Token]:
    """Return every token, oldest first, revoked ones included; never a secret."""
    return [schemas.Token.model_validate(info) for info in runtime.tokens.tokens()]


@router.post("", summary="Create an API token", status_code=201, responses=problem_responses(413))
def create_token(
    body: schemas.TokenCreation, runtime: RuntimeDep, token: _Admin, response: Response
) -> schemas.TokenCreated:
    """Create a token with a role; the answer holds its secret, which is never shown again."""
    info, secret = runtime.tokens.create(
        body.name, body.role, actor=actor_of(token), now=utc_now(), expires_at=body.expires_at
    )
    response.headers["Cache-Control"] = "no-store"  # the body is a credential (RFC 9111 5.2.2.5)
    return schemas.TokenCreated.of(info, secret)


@router.delete("/{token_id}", summary="Revoke an API token", responses=problem_responses(404))
def revoke_token(
    token_id: Annotated[str, Path(max_length=64)],
    runtime: RuntimeDep,
    token: _Admin,
    reason: Annotated[str, Query(max_length=4096)] = "",
) -> schemas.Token:
    """Revoke the token at once (idempotent); requests with it fail with 401 from then on."""
    info = runtime.tokens.revoke(token_id, actor=actor_of(token), now=utc_now(), reason=reason)
    return schemas.Token.model_validate(info)
