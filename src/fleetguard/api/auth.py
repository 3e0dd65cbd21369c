"""Operator authentication: bearer API tokens, and the permission every route requires.

A route declares what it needs with ``Depends(require(Permission.X))``; the dependency authenticates
``Authorization: Bearer <token>`` against the token store (which keeps only hashes) and checks the
token's role. :func:`permission_of` reads the requirement back from a route, which lets the app
refuse to start with an unprotected route and lets the OpenAPI document name each permission.
Tokens are never logged: only the token id and name become the event-log actor.

No ``from __future__ import annotations`` here: FastAPI reads the signature of
``_Requirement.__call__`` at run time, and must see real types.
"""

from typing import Annotated

from fastapi import Depends
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fleetguard.api.context import RuntimeDep
from fleetguard.api.tokens import AuthenticationFailed, Permission, TokenInfo
from fleetguard.types import utc_now

__all__ = ["BEARER", "PUBLIC_PATHS", "actor_of", "permission_of", "require"]

PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        # Relying parties fetch CA certificates, CRLs and OCSP answers without credentials: the data
        # is signed, and RFC 5280 4.2.1.13 and RFC 6960 A.1 expect plain HTTP (routers/pki_public.py).
        # Listed one by one rather than as a /pki prefix, so that no route becomes public by its path.
        "/pki/ca/{ca_id}.der",
        "/pki/ca/{ca_id}/crl/{name}.crl",
        "/pki/ocsp",
        "/pki/ocsp/{request}",
        # The OTA image repository: signed TUF metadata and the targets it names (routers/ota.py).
        "/ota/image/metadata/{name}",
        "/ota/image/targets/{hardware_id}/{directory}/{name}",
    }
)
"""The only API routes that need no token (besides the OpenAPI document and /docs)."""

BEARER = HTTPBearer(
    scheme_name="bearer",
    bearerFormat="fgt_<id>_<secret>",
    description="An API token from `fleetguard tokens create` or POST /v1/tokens.",
    auto_error=False,  # we raise AuthenticationFailed ourselves, so that the answer is a problem
)


class _Requirement:
    """The dependency that authenticates the caller and checks one permission."""

    __slots__ = ("permission",)

    def __init__(self, permission: Permission) -> None:
        self.permission = permission

    def __call__(
        self,
        runtime: RuntimeDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> TokenInfo:
        if credentials is None:
            raise AuthenticationFailed(
                "no API token",
                hint="send Authorization: Bearer <token>; an admin creates one: fleetguard tokens create",
            )
        info = runtime.tokens.authenticate(credentials.credentials, now=utc_now())
        info.require(self.permission)
        return info


def require(permission: Permission) -> _Requirement:
    """Return a dependency that yields the caller's :class:`TokenInfo` if it holds ``permission``.

    The dependency raises ``AuthenticationFailed`` (401) or ``Forbidden`` (403).
    """
    return _Requirement(permission)


def actor_of(token: TokenInfo) -> str:
    """Return the event-log actor for changes made with ``token``."""
    return f"token:{token.id}:{token.name}"


def permission_of(route: APIRoute) -> Permission | None:
    """Return the permission ``route`` requires, or None when it requires none."""
    return _find(route.dependant)


def _find(dependant: Dependant) -> Permission | None:
    if isinstance(dependant.call, _Requirement):
        return dependant.call.permission
    for child in dependant.dependencies:
        found = _find(child)
        if found is not None:
            return found
    return None
