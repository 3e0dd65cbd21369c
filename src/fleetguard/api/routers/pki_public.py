"""What relying parties fetch without a token: CA certificates, CRLs and OCSP (RFC 5280, RFC 6960).

Everything served here is public and signed by the CA, so it needs no credentials (RFC 5280 4.2.1.13
even expects plain HTTP); these paths are listed in :data:`fleetguard.api.auth.PUBLIC_PATHS`. They
sit under ``/pki``, the path of the default ``Settings.resolved_pki_base_url``, which is what every
certificate's CRL distribution point, OCSP and CA-issuers URLs name; an installation that publishes
under another base URL maps it to these paths in its reverse proxy.

These are the hot paths of revocation checking, so the routes only decode, bound and delegate: the
:class:`~fleetguard.pki.publication.RevocationPublisher` answers from memory (CRLs re-signed on
revocation, pre-signed OCSP responses), and signs (and numbers) a CRL only when its cached one is
half-way through its validity. OCSP always answers 200 with an
``application/ocsp-response``: a request that cannot be decoded gets the unsigned
``malformedRequest`` response (RFC 6960 2.3), never a problem document, which OCSP clients cannot read.

Shared caches may keep a CRL or a GET OCSP answer for at most :data:`MAX_AGE_S` (and never past the
CRL's nextUpdate), so that a revocation reaches clients behind a cache within a minute.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Path, Request, Response

from fleetguard.api.context import RuntimeDep, runtime_of
from fleetguard.api.problems import problem_responses
from fleetguard.errors import NotFound
from fleetguard.installation import Runtime
from fleetguard.pki.errors import OcspMalformed, PkiError
from fleetguard.pki.ocsp import (
    CONTENT_TYPE_REQUEST,
    CONTENT_TYPE_RESPONSE,
    MAX_REQUEST_BYTES,
    ResponseStatus,
    request_from_get,
    request_from_post,
    unsuccessful_response,
)
from fleetguard.pki.service import ROOT_ID
from fleetguard.types import utc_now

__all__ = ["CA_CERT_MEDIA_TYPE", "CRL_MEDIA_TYPE", "MAX_AGE_S", "read_bounded_body", "router"]

CA_CERT_MEDIA_TYPE = "application/pkix-cert"  # RFC 2585 4.1
CRL_MEDIA_TYPE = "application/pkix-crl"  # RFC 2585 4.2
MAX_AGE_S = 60
"""Longest a shared cache may serve a CRL or OCSP answer: revocation is meant to take seconds."""

_MALFORMED = unsuccessful_response(ResponseStatus.MALFORMED_REQUEST)  # RFC 6960 4.2.1
_CA_CERT_MAX_AGE_S = 24 * 3600  # a CA certificate never changes under its id
# "<shard>", "full", and either with "-delta": fleetguard.pki.crl.crl_url; shards are at most 65536.
_CRL_NAME = re.compile(r"(full|0|[1-9][0-9]{0,4})(-delta)?")

# 422: FastAPI documents one for every route with parameters; it is a problem document like the rest.
router = APIRouter(prefix="/pki", tags=["pki: public"], responses=problem_responses(422))

_CaId = Annotated[
    str, Path(max_length=64, description="The CA's id, as in GET /v1/ca (`root`, `issuing-1`, ...).")
]
_CRL_NAME_DOC = "`<shard>` (the certificate's CRL distribution point), `full`, and either with `-delta`."
_OCSP_BODY = {
    "requestBody": {
        "required": True,
        "description": "A DER OCSPRequest (RFC 6960 4.1.1).",
        "content": {CONTENT_TYPE_REQUEST: {"schema": {"type": "string", "format": "binary"}}},
    }
}
_OCSP_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {CONTENT_TYPE_RESPONSE: {"schema": {"type": "string", "format": "binary"}}},
        "description": "A DER OCSPResponse: signed by the issuing CA, or an unsigned error status.",
    }
}


async def read_bounded_body(request: Request, limit: int) -> bytes | None:
    """Return the request body, or None if it is longer than ``limit`` bytes.

    Reading stops at the first byte over the limit, or before it starts when ``Content-Length``
    declares too much: an oversized body is never buffered.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


@router.get(
    "/ca/{ca_id}.der",
    summary="Get a CA certificate",
    response_class=Response,
    responses={
        200: {"content": {CA_CERT_MEDIA_TYPE: {}}, "description": "The DER certificate."},
        **problem_responses(404),
    },
)
def ca_certificate(ca_id: _CaId, runtime: RuntimeDep) -> Response:
    """Return a CA certificate in DER: what the AIA caIssuers URL of its certificates names."""
    for authority in runtime.pki.authorities():
        if authority.id == ca_id:
            return Response(
                authority.certificate.public_bytes(serialization.Encoding.DER),
                media_type=CA_CERT_MEDIA_TYPE,
                headers={"Cache-Control": f"public, max-age={_CA_CERT_MAX_AGE_S}"},
            )
    raise _no_ca(ca_id)


@router.get(
    "/ca/{ca_id}/crl/{name}.crl",
    summary="Get a CRL",
    response_class=Response,
    responses={
        200: {"content": {CRL_MEDIA_TYPE: {}}, "description": "The DER CRL (RFC 5280 5)."},
        **problem_responses(404),
    },
)
def crl(
    ca_id: _CaId,
    name: Annotated[str, Path(max_length=16, description=_CRL_NAME_DOC)],
    runtime: RuntimeDep,
) -> Response:
    """Return an issuing CA's current CRL: one shard, or the complete CRL (`full`), or their delta.

    Shards are re-signed within a second of a revocation. `Cache-Control` lets a shared cache keep
    the CRL for a minute at most, never past its nextUpdate.
    """
    match = _CRL_NAME.fullmatch(name)
    if match is None or ca_id == ROOT_ID:  # the root publishes no CRL here
        raise NotFound(f"no CRL {name!r} of CA {ca_id!r}", hint=_CRL_NAME_DOC)
    partition = None if match[1] == "full" else int(match[1])
    try:
        signed = runtime.revocation.crl(ca_id, partition, delta=match[2] is not None)
    except PkiError as exc:
        # The publisher names an unknown CA with a server-side PkiError; to a relying party it is a 404.
        if exc.status >= 500 and not _is_issuing(runtime, ca_id):
            raise _no_ca(ca_id) from exc
        raise
    return Response(
        signed.der, media_type=CRL_MEDIA_TYPE, headers={"Cache-Control": _max_age(signed.next_update)}
    )


@router.post(
    "/ocsp",
    summary="Ask the OCSP responder (POST)",
    response_class=Response,
    openapi_extra=_OCSP_BODY,
    responses=_OCSP_RESPONSE,
)
async def ocsp_post(request: Request) -> Response:
    """Answer an `application/ocsp-request` (RFC 6960 A.1): always 200 with an OCSP response.

    Runs on the event loop with no dependency injection (the hottest public route): answers come
    from the pre-signed cache in microseconds; a miss costs one indexed read and one ECDSA
    signature. Requests over 4 KiB, of another media type or undecodable get `malformedRequest`;
    requests about another CA's certificates get `unauthorized`.
    """
    body = await read_bounded_body(request, MAX_REQUEST_BYTES)
    if body is None:
        return _ocsp_answer(_MALFORMED)
    try:
        query = request_from_post(request.headers.get("content-type"), body)
    except OcspMalformed:
        return _ocsp_answer(_MALFORMED)
    runtime = await runtime_of(request)
    return _ocsp_answer(runtime.revocation.ocsp(query))


@router.get(
    "/ocsp/{request}",
    summary="Ask the OCSP responder (GET)",
    response_class=Response,
    responses=_OCSP_RESPONSE,
)
async def ocsp_get(
    encoded: Annotated[
        str, Path(alias="request", description="The DER OCSPRequest in base64, then URL-encoded.")
    ],
    runtime: RuntimeDep,
) -> Response:
    """Answer a request in the URL (RFC 6960 A.1); always 200, cacheable for a minute (RFC 5019 6.2).

    The base64 text may contain `/`: encoded as `%2F` it is one path segment; left as it is, the
    request is still answered (by an undocumented twin of this route that takes the rest of the path).
    """
    return _ocsp_get_answer(runtime, encoded)


async def _ocsp_get_any_segments(request: Request) -> Response:
    return _ocsp_get_answer(await runtime_of(request), str(request.path_params["request"]))


# Base64 has '/' in its alphabet, and the server decodes %2F before routing: a request whose text
# holds one spans several path segments. A plain route takes those, and stays out of the OpenAPI
# document (and of api_routes()), which describe the route above.
router.add_route(  # a plain APIRouter.add_route does not add the router's prefix
    f"{router.prefix}/ocsp/{{request:path}}", _ocsp_get_any_segments, methods=["GET"], include_in_schema=False
)


def _ocsp_get_answer(runtime: Runtime, encoded: str) -> Response:
    try:
        query = request_from_get(encoded)
    except OcspMalformed:
        der = _MALFORMED
    else:
        der = runtime.revocation.ocsp(query)
    return _ocsp_answer(der, cache_control=f"public, max-age={MAX_AGE_S}, no-transform")


def _ocsp_answer(der: bytes, *, cache_control: str | None = None) -> Response:
    headers = None if cache_control is None else {"Cache-Control": cache_control}
    return Response(der, media_type=CONTENT_TYPE_RESPONSE, headers=headers)


def _max_age(next_update: dt.datetime) -> str:
    remaining = int((next_update - utc_now()).total_seconds())
    return f"public, max-age={max(0, min(MAX_AGE_S, remaining))}, no-transform"


def _is_issuing(runtime: Runtime, ca_id: str) -> bool:
    return any(a.id == ca_id and a.role == "issuing" for a in runtime.pki.authorities())


def _no_ca(ca_id: str) -> NotFound:
    return NotFound(f"no CA {ca_id[:64]!r} here", hint="GET /v1/ca lists the CAs")
