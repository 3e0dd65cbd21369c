"""The event log: read entries, sign and read checkpoints, verify the log, and prove entries.

Auditors verify the whole log (``/verify`` answers 200 with ``intact: false`` and the findings when it
was tampered with: the report is the answer, not an error), and fetch RFC 9162 inclusion and
consistency proofs to check against a signed checkpoint with the public key, without the database.
Fixed paths are declared before ``/{seq}``, which would otherwise match them.
"""

from __future__ import annotations

import enum
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import PlainTextResponse

from fleetguard.api import schemas
from fleetguard.api.auth import require
from fleetguard.api.context import RuntimeDep
from fleetguard.api.problems import problem_responses
from fleetguard.api.tokens import Permission, TokenInfo
from fleetguard.errors import InvalidInput, NotFound
from fleetguard.types import utc_now

__all__ = ["router"]

router = APIRouter(prefix="/v1/events", tags=["events"], responses=problem_responses(401, 403, 422, 503))

_Reader = Annotated[TokenInfo, Depends(require(Permission.EVENTS_READ))]
_Auditor = Annotated[TokenInfo, Depends(require(Permission.EVENTS_AUDIT))]
_Admin = Annotated[TokenInfo, Depends(require(Permission.TOKENS_ADMIN))]
_Size = Annotated[int, Query(ge=1)]


class Order(enum.StrEnum):
    """Listing order by sequence number."""

    ASC = "asc"
    DESC = "desc"


@router.get("", summary="List event-log entries")
def list_events(
    *,
    runtime: RuntimeDep,
    _token: _Reader,
    subject: Annotated[str | None, Query(max_length=256, examples=["device:sensor-1"])] = None,
    action: Annotated[str | None, Query(max_length=128, examples=["device.quarantine"])] = None,
    after: Annotated[int, Query(ge=0, description="Cursor: entries after (asc) or before (desc) it.")] = 0,
    limit: Annotated[int | None, Query(ge=1)] = None,
    order: Order = Order.ASC,
) -> schemas.EventPage:
    """Return one page of entries, optionally of one subject or action, oldest or newest first."""
    maximum = runtime.settings.max_page_size
    size = min(100, maximum) if limit is None else limit
    if size > maximum:
        raise InvalidInput(f"limit {size} exceeds the maximum page size {maximum}")
    entries = runtime.log.entries(
        after_seq=after, limit=size, subject=subject, action=action, newest_first=order is Order.DESC
    )
    return schemas.EventPage(
        items=[schemas.EventEntry.of(entry) for entry in entries],
        next_after=entries[-1].seq if len(entries) == size else None,
    )


@router.get(
    "/checkpoints/latest", summary="Get the newest signed checkpoint", responses=problem_responses(404)
)
def latest_checkpoint(runtime: RuntimeDep, _token: _Reader) -> schemas.SignedTreeHead:
    """Return the newest signed tree head; 404 before the first checkpoint."""
    signed = runtime.log.latest_checkpoint()
    if signed is None:
        raise NotFound("no checkpoint has been signed yet", hint="POST /v1/events/checkpoints signs one")
    return schemas.SignedTreeHead.of(signed)


@router.post("/checkpoints", summary="Sign a checkpoint now", responses=problem_responses(500))
def sign_checkpoint(runtime: RuntimeDep, _token: _Admin) -> schemas.SignedTreeHead:
    """Verify the entries since the last checkpoint and sign a tree head over the whole log.

    Returns the newest checkpoint unchanged when nothing was appended since; a tampered log is a 500
    (tamper-detected) and nothing is signed.
    """
    return schemas.SignedTreeHead.of(runtime.log.checkpoint(runtime.signer(), now=utc_now()))


@router.get("/verify", summary="Verify the whole event log")
def verify_log(runtime: RuntimeDep, _token: _Auditor) -> schemas.VerificationReport:
    """Recompute every hash, link and checkpointed root and check every signature; report findings."""
    report = runtime.log.verify(runtime.signer().public_key())
    return schemas.VerificationReport.of(report)


@router.get(
    "/proofs/inclusion", summary="Prove that an entry is in the log", responses=problem_responses(500)
)
def inclusion_proof(
    runtime: RuntimeDep,
    _token: _Auditor,
    seq: _Size,
    tree_size: Annotated[int | None, Query(ge=1, description="Default: the whole log.")] = None,
) -> schemas.InclusionProof:
    """Return the RFC 9162 inclusion proof of entry `seq` in the tree of `tree_size` entries."""
    return schemas.InclusionProof.of(runtime.log.prove_inclusion(seq, tree_size))


@router.get("/proofs/consistency", summary="Prove that the log only grew", responses=problem_responses(500))
def consistency_proof(
    runtime: RuntimeDep,
    _token: _Auditor,
    old_size: _Size,
    new_size: Annotated[int | None, Query(ge=1, description="Default: the whole log.")] = None,
) -> schemas.ConsistencyProof:
    """Return the RFC 9162 consistency proof that the tree of `new_size` extends `old_size`."""
    return schemas.ConsistencyProof.of(runtime.log.prove_consistency(old_size, new_size))


@router.get(
    "/public-key",
    summary="Get the checkpoint public key",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "Ed25519 SubjectPublicKeyInfo PEM."}},
)
def public_key(runtime: RuntimeDep, _token: _Reader) -> PlainTextResponse:
    """Return the Ed25519 public key (PEM, RFC 8410) that verifies checkpoint signatures."""
    return PlainTextResponse(runtime.signer().public_key_pem().decode("ascii"))


@router.get("/{seq}", summary="Get an event-log entry", responses=problem_responses(404))
def get_event(runtime: RuntimeDep, _token: _Reader, seq: Annotated[int, Path(ge=1)]) -> schemas.EventEntry:
    """Return entry `seq`, with its hashes."""
    return schemas.EventEntry.of(runtime.log.get(seq))
