"""The CA hierarchy and device certificates: issuance from a CSR, renewal, revocation, fleet views.

A CSR is the request body itself, as EST clients send it (RFC 7030 4.2.1): ``application/pkcs10``
carries the DER request or its base64, ``application/x-pem-file`` and ``text/plain`` carry PEM. The
body is read only once the caller is authenticated, and never more than :data:`MAX_CSR_BODY` bytes;
a CSR over :data:`~fleetguard.pki.csr.MAX_CSR_BYTES` (as PEM, or as DER once decoded) is a 413.
Only the key is taken from a CSR: subject and SANs come from the inventory (no identity injection,
see :mod:`fleetguard.pki.csr`).

A certificate is answered as JSON, or with ``Accept: application/pem-certificate-chain`` (RFC 8555
9.1) as the PEM chain: the certificate, then its issuing CA. Serial numbers are hex in paths, query
strings and bodies. What relying parties fetch without a token (CRLs, OCSP, CA certificates) is in
:mod:`fleetguard.api.routers.pki_public`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
from dataclasses import dataclass
from typing import Annotated

from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response

from fleetguard.api import schemas
from fleetguard.api.auth import actor_of, require
from fleetguard.api.context import RuntimeDep
from fleetguard.api.errors import ApiError, UnsupportedMediaType
from fleetguard.api.problems import problem_responses
from fleetguard.api.routers.pki_public import read_bounded_body
from fleetguard.api.tokens import Permission, TokenInfo
from fleetguard.errors import InvalidInput, LimitExceeded
from fleetguard.installation import Runtime
from fleetguard.pki.ca import ChainFormat
from fleetguard.pki.csr import MAX_CSR_BYTES
from fleetguard.pki.errors import CsrRejected
from fleetguard.pki.service import CertificateRecord, FleetView
from fleetguard.types import utc_now

__all__ = ["CHAIN_MEDIA_TYPES", "MAX_CSR_BODY", "PEM_CHAIN", "PKCS10", "CsrTooLarge", "router"]

PEM_CHAIN = "application/pem-certificate-chain"  # RFC 8555 9.1
PKCS10 = "application/pkcs10"  # RFC 5967
CHAIN_MEDIA_TYPES = {
    ChainFormat.PEM: PEM_CHAIN,
    ChainFormat.DER: "application/pkix-cert",  # RFC 2585 4.1
    ChainFormat.PKCS7: "application/pkcs7-mime; smime-type=certs-only",  # RFC 8551 3.2.2, RFC 7030 4.1.3
}
MAX_CSR_BODY = 4 * math.ceil(MAX_CSR_BYTES / 3) * 66 // 64
"""Largest CSR body read: a MAX_CSR_BYTES request in base64 with CRLF after every 64 characters."""

_CSR_MEDIA_TYPES = (PKCS10, "application/x-pem-file", "text/plain")
_CHAIN_SUFFIX = {ChainFormat.PEM: "pem", ChainFormat.DER: "der", ChainFormat.PKCS7: "p7c"}
_DEFAULT_PAGE = 100

router = APIRouter(tags=["pki"], responses=problem_responses(401, 403, 422, 503))

_Reader = Annotated[TokenInfo, Depends(require(Permission.CERTS_READ))]
_Issuer = Annotated[TokenInfo, Depends(require(Permission.CERTS_ISSUE))]
_Revoker = Annotated[TokenInfo, Depends(require(Permission.CERTS_REVOKE))]
_CaAdmin = Annotated[TokenInfo, Depends(require(Permission.CA_ADMIN))]
_SERIAL = r"^[0-9a-fA-F]{1,40}$"  # RFC 5280 4.1.2.2: at most 20 octets
_Serial = Annotated[str, Path(pattern=_SERIAL, description="The certificate's serial number, hex.")]
_Accept = Annotated[str | None, Header(max_length=1024, description=f"`{PEM_CHAIN}` for the PEM chain.")]


class CsrTooLarge(LimitExceeded, ApiError):
    """A CSR over MAX_CSR_BYTES: no device key needs one."""

    code = "csr-too-large"

    def __init__(self) -> None:
        super().__init__(
            f"the CSR exceeds {MAX_CSR_BYTES} bytes",
            hint="send one PKCS#10 request (an RSA-8192 one with a long subject is about 2 KiB)",
        )


async def _csr(request: Request) -> bytes:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type not in _CSR_MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"a CSR cannot be read from {media_type or 'a body without a Content-Type'}",
            hint=f"send Content-Type: {PKCS10} (DER or base64) or application/x-pem-file (PEM)",
        )
    body = await read_bounded_body(request, MAX_CSR_BODY)
    if body is None:
        raise CsrTooLarge()
    csr = _pkcs10(body) if media_type == PKCS10 else body
    if len(csr) > MAX_CSR_BYTES:
        raise CsrTooLarge()
    return csr


def _pkcs10(body: bytes) -> bytes:
    # RFC 7030 4.2.1: EST sends the base64 of the DER ("Content-Transfer-Encoding: base64"), which
    # starts with "M"; other clients send the DER itself, which starts with the SEQUENCE tag 0x30,
    # or PEM, which validate_csr reads itself.
    if body[:1] == b"\x30" or body.lstrip().startswith(b"-----BEGIN"):
        return body
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CsrRejected(f"{PKCS10} body is neither DER nor base64: {exc}") from exc


_Csr = Annotated[bytes, Depends(_csr)]
_CSR_BODY = {
    "requestBody": {
        "required": True,
        "description": f"A PKCS#10 CSR (RFC 2986) of at most {MAX_CSR_BYTES} bytes; only its key is used.",
        "content": {
            PKCS10: {"schema": {"type": "string", "format": "binary"}},
            "application/x-pem-file": {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
}
_CERTIFICATE_CONTENT = {
    "content": {PEM_CHAIN: {"schema": {"type": "string"}}},
    "description": f"The certificate as JSON, or with `Accept: {PEM_CHAIN}` the PEM chain.",
}


@dataclass(frozen=True, slots=True)
class _Page:
    view: FleetView
    within_days: int
    limit: int | None
    after: int | None


def _page(
    view: Annotated[
        FleetView, Query(description="`expiring` (within `within_days`), `expired`, `revoked`.")
    ] = FleetView.ALL,
    within_days: Annotated[int, Query(ge=1, le=3650, description="The `expiring` horizon.")] = 7,
    limit: Annotated[int | None, Query(ge=1, description="Page size; at most the configured max.")] = None,
    after: Annotated[
        str | None, Query(pattern=_SERIAL, description="The previous page's next_after.")
    ] = None,
) -> _Page:
    return _Page(view, within_days, limit, None if after is None else int(after, 16))


_PageQuery = Annotated[_Page, Depends(_page)]


# -- the CA ----------------------------------------------------------------------------------


@router.get("/v1/ca", summary="List the CAs")
def list_authorities(runtime: RuntimeDep, _token: _Reader) -> list[schemas.Authority]:
    """Return the root and every issuing CA, active and retired; which key backend holds each key,
    never where."""
    return [schemas.Authority.of(record) for record in runtime.pki.authorities()]


@router.post("/v1/ca", summary="Initialize the CA", status_code=201, responses=problem_responses(409, 413))
def initialize_ca(
    runtime: RuntimeDep, token: _CaAdmin, body: schemas.CaCreation | None = None
) -> list[schemas.Authority]:
    """Create the root (P-384, key file) and the first issuing CA (P-256, key file or PKCS#11).

    An installation with a CA already is a 409. Key files are encrypted with the passphrase the
    server reads from `FLEETGUARD_CA_PASSPHRASE` (or the configured file); without it, a 503.
    """
    hsm = body is not None and body.hsm
    records = runtime.pki.initialize(actor=actor_of(token), now=utc_now(), hsm=hsm)
    return [schemas.Authority.of(record) for record in records]


@router.post(
    "/v1/ca/rotate", summary="Rotate the issuing CA", status_code=201, responses=problem_responses(409, 413)
)
def rotate_ca(
    runtime: RuntimeDep, token: _CaAdmin, body: schemas.CaCreation | None = None
) -> schemas.Authority:
    """Create a new issuing CA under the root and issue with it from now on; return it.

    The old issuing CA is retired for issuance only: it keeps its CRLs and OCSP, and certificates it
    issued verify until they expire.
    """
    hsm = body is not None and body.hsm
    return schemas.Authority.of(runtime.pki.rotate(actor=actor_of(token), now=utc_now(), hsm=hsm))


@router.get(
    "/v1/ca/chain",
    summary="Export the CA chain",
    response_class=Response,
    responses={
        200: {
            "content": {
                media_type: {"schema": {"type": "string"}} for media_type in CHAIN_MEDIA_TYPES.values()
            },
            "description": "The trust bundle in the format asked for.",
        }
    },
)
def ca_chain(
    runtime: RuntimeDep,
    _token: _Reader,
    fmt: Annotated[ChainFormat, Query(alias="format")] = ChainFormat.PEM,
) -> Response:
    """Return what relying parties trust: every unexpired issuing CA and the root, as PEM or PKCS#7
    certs-only (what EST /cacerts returns); `der` is the issuing CA that issues now, alone."""
    disposition = f'attachment; filename="fleetguard-ca.{_CHAIN_SUFFIX[fmt]}"'
    return Response(
        runtime.pki.trust_bundle(fmt),
        media_type=CHAIN_MEDIA_TYPES[fmt],
        headers={"Content-Disposition": disposition},
    )


# -- device certificates ---------------------------------------------------------------------


@router.post(
    "/v1/devices/{device_id}/certificates",
    summary="Issue a device certificate",
    status_code=201,
    response_model=schemas.Certificate,
    openapi_extra=_CSR_BODY,
    responses={201: _CERTIFICATE_CONTENT, **problem_responses(404, 409, 413, 415)},
)
def issue_certificate(
    *,
    device_id: str,
    runtime: RuntimeDep,
    token: _Issuer,
    csr: _Csr,
    response: Response,
    accept: _Accept = None,
) -> schemas.Certificate | Response:
    """Issue the device's operational certificate for the key in the CSR; answer 201 with its Location.

    Subject and SAN come from the inventory (`CN=<device id>`, `spiffe://<trust domain>/device/<id>`),
    never from the CSR. A CSR that is malformed, badly signed, has a weak key or asks for a CA is a
    422; a quarantined or decommissioned device is a 409. Nothing is recorded for a refusal.
    """
    record = runtime.pki.issue_device(device_id, csr, actor=actor_of(token))
    return _created(runtime, record, response, accept)


@router.post(
    "/v1/devices/{device_id}/certificates/{serial}/renewal",
    summary="Renew a device certificate",
    status_code=201,
    response_model=schemas.Certificate,
    openapi_extra=_CSR_BODY,
    responses={201: _CERTIFICATE_CONTENT, **problem_responses(403, 404, 409, 413, 415)},
)
def renew_certificate(
    *,
    device_id: str,
    serial: _Serial,
    runtime: RuntimeDep,
    token: _Issuer,
    csr: _Csr,
    response: Response,
    accept: _Accept = None,
) -> schemas.Certificate | Response:
    """Issue the device a new certificate that renews `serial` (which may have expired within the
    grace window).

    Renewals are rate limited per device and for the fleet: a refusal is a 503 with `Retry-After`.
    A certificate expired beyond the grace window is a 403 (enrol again); one that is revoked or not
    the device's is a 409.
    """
    record = runtime.pki.renew_device(device_id, csr, serial=int(serial, 16), actor=actor_of(token))
    return _created(runtime, record, response, accept)


@router.get(
    "/v1/devices/{device_id}/certificates",
    summary="List a device's certificates",
    responses=problem_responses(404),
)
def list_device_certificates(
    device_id: str, runtime: RuntimeDep, _token: _Reader, page: _PageQuery
) -> schemas.CertificatePage:
    """Return one page of the device's certificates in a fleet view, by expiry then serial."""
    runtime.inventory.get(device_id)  # an unknown device is a 404, not an empty page
    return _listed(runtime, page, device_id)


@router.post(
    "/v1/devices/{device_id}/revocation",
    summary="Revoke a device's certificates",
    responses=problem_responses(404, 413),
)
def revoke_device(
    device_id: str, body: schemas.Revocation, runtime: RuntimeDep, token: _Revoker
) -> list[schemas.Certificate]:
    """Revoke every valid certificate of the device; return those revoked now.

    Each is on its CRL shard, and answered revoked by OCSP, before this returns.
    """
    runtime.inventory.get(device_id)
    records = runtime.pki.revoke_device(device_id, body.reason, actor=actor_of(token))
    return [_certificate(runtime, record) for record in records]


# -- certificates ----------------------------------------------------------------------------


@router.get("/v1/certificates", summary="List certificates (fleet views)")
def list_certificates(runtime: RuntimeDep, _token: _Reader, page: _PageQuery) -> schemas.CertificatePage:
    """Return one page of a fleet view: all certificates, those expiring within `within_days`,
    expired ones (not revoked), or revoked ones; by expiry, then serial."""
    return _listed(runtime, page, None)


@router.get(
    "/v1/certificates/{serial}",
    summary="Get a certificate",
    response_model=schemas.Certificate,
    responses={200: _CERTIFICATE_CONTENT, **problem_responses(404)},
)
def get_certificate(
    serial: _Serial, runtime: RuntimeDep, _token: _Reader, accept: _Accept = None
) -> schemas.Certificate | Response:
    """Return a certificate's record, or with `Accept: application/pem-certificate-chain` its chain."""
    record = runtime.pki.certificate(int(serial, 16))
    if _wants_chain(accept):
        return Response(_chain_pem(runtime, record), media_type=PEM_CHAIN)
    return _certificate(runtime, record)


@router.post(
    "/v1/certificates/{serial}/revocation",
    summary="Revoke a certificate",
    responses=problem_responses(404, 413),
)
def revoke_certificate(
    serial: _Serial, body: schemas.Revocation, runtime: RuntimeDep, token: _Revoker
) -> schemas.Certificate:
    """Revoke the certificate with an RFC 5280 reason; return its record (unchanged if it was
    revoked already). Its CRL shard and OCSP answer say so before this returns."""
    record = runtime.pki.revoke(int(serial, 16), body.reason, actor=actor_of(token))
    return _certificate(runtime, record)


# -- helpers ---------------------------------------------------------------------------------


def _created(
    runtime: Runtime, record: CertificateRecord, response: Response, accept: str | None
) -> schemas.Certificate | Response:
    location = f"/v1/certificates/{record.serial:x}"
    if _wants_chain(accept):
        return Response(
            _chain_pem(runtime, record), status_code=201, media_type=PEM_CHAIN, headers={"Location": location}
        )
    response.headers["Location"] = location
    return _certificate(runtime, record)


def _certificate(runtime: Runtime, record: CertificateRecord) -> schemas.Certificate:
    return schemas.Certificate.of(record, renew_at=runtime.pki.renewal_due(record))


def _listed(runtime: Runtime, page: _Page, device_id: str | None) -> schemas.CertificatePage:
    size = _page_size(page.limit, runtime.settings.max_page_size)
    records = runtime.pki.certificates(
        view=page.view,
        device_id=device_id,
        within=dt.timedelta(days=page.within_days),
        limit=size,
        after=page.after,
    )
    return schemas.CertificatePage(
        items=[_certificate(runtime, record) for record in records],
        next_after=f"{records[-1].serial:x}" if len(records) == size else None,
    )


def _chain_pem(runtime: Runtime, record: CertificateRecord) -> bytes:
    issuing = next(a.certificate for a in runtime.pki.authorities() if a.id == record.issuer_id)
    return record.pem() + issuing.public_bytes(serialization.Encoding.PEM)


def _wants_chain(accept: str | None) -> bool:
    """Whether ``Accept`` prefers the PEM chain to JSON (RFC 9110 12.5.1); JSON wins ties."""
    chain = json = 0.0
    for media_range in (accept or "").split(","):
        media_type, _, parameters = media_range.partition(";")
        quality = _quality(parameters)
        match media_type.strip().lower():
            case "application/pem-certificate-chain":
                chain = max(chain, quality)
            case "application/json" | "application/*" | "*/*":
                json = max(json, quality)
    return chain > json


def _quality(parameters: str) -> float:
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return min(1.0, max(0.0, float(value)))
            except ValueError:
                return 0.0  # a malformed weight accepts nothing rather than everything
    return 1.0


def _page_size(limit: int | None, maximum: int) -> int:
    if limit is None:
        return min(_DEFAULT_PAGE, maximum)
    if limit > maximum:
        raise InvalidInput(f"limit {limit} exceeds the maximum page size {maximum}")
    return limit
