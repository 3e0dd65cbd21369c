"""Bulk import and export of devices, in the CSV and JSON formats of :mod:`fleetguard.inventory.transfer`.

Import reads the raw body (up to ``FLEETGUARD_MAX_IMPORT_BYTES``, enforced by
:class:`fleetguard.api.limits.BodyLimit`) only after the caller is authenticated, and registers every
device or none: a bad row is a 422 naming the row. Export streams a page of devices at a time, so that
its memory does not grow with the fleet. The app includes this router before the devices router, so
that ``/v1/devices/export`` is not read as the device id ``export``.
"""

from __future__ import annotations

import enum
import io
import itertools
import json
from collections.abc import Iterable, Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from fleetguard.api import schemas
from fleetguard.api.auth import actor_of, require
from fleetguard.api.context import RuntimeDep
from fleetguard.api.errors import UnsupportedMediaType
from fleetguard.api.problems import problem_responses
from fleetguard.api.routers.devices import DeviceCriteria
from fleetguard.api.tokens import Permission, TokenInfo
from fleetguard.installation import Runtime
from fleetguard.inventory.model import Device
from fleetguard.inventory.transfer import export_record, parse_csv, parse_json, write_csv

__all__ = ["IMPORT_PATH", "Format", "router"]

router = APIRouter(prefix="/v1/devices", tags=["devices"], responses=problem_responses(401, 403, 422, 503))

IMPORT_PATH = f"{router.prefix}/import"
_BATCH = 1000  # devices per streamed chunk


class Format(enum.StrEnum):
    """Bulk formats."""

    CSV = "csv"
    JSON = "json"


_MEDIA_TYPES = {Format.CSV: "text/csv", Format.JSON: "application/json"}
_Reader = Annotated[TokenInfo, Depends(require(Permission.DEVICES_READ))]
_Writer = Annotated[TokenInfo, Depends(require(Permission.DEVICES_WRITE))]
_IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "description": "CSV with a header row, or a JSON array of devices (the export formats).",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
        },
    }
}


@router.get(
    "/export",
    summary="Export devices",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}, "application/json": {}}, "description": "The devices."}},
)
def export_devices(
    runtime: RuntimeDep,
    _token: _Reader,
    criteria: DeviceCriteria,
    output: Annotated[Format, Query(alias="format")] = Format.CSV,
) -> StreamingResponse:
    """Stream every matching device, by id, as CSV or as a JSON array; import accepts both."""
    devices = runtime.inventory.iterate(criteria, batch=_BATCH)
    chunks = _csv_chunks(devices) if output is Format.CSV else _json_chunks(devices)
    disposition = f'attachment; filename="devices.{output.value}"'
    return StreamingResponse(
        chunks, media_type=_MEDIA_TYPES[output], headers={"Content-Disposition": disposition}
    )


@router.post(
    "/import",
    summary="Import devices",
    openapi_extra=_IMPORT_BODY,
    responses=problem_responses(409, 413, 415),
)
async def import_devices(
    request: Request,
    runtime: RuntimeDep,
    token: _Writer,
    source: Annotated[
        Format | None, Query(alias="format", description="Default: from the Content-Type.")
    ] = None,
    reason: Annotated[str, Query(max_length=4096)] = "",
) -> schemas.ImportResult:
    """Register every device in the body, or none: a bad row is a 422 with its `row` number."""
    kind = source or _format_of(request.headers.get("content-type", ""))
    data = await request.body()
    count = await run_in_threadpool(_import, runtime, kind, data, actor_of(token), reason)
    return schemas.ImportResult(imported=count)


def _import(runtime: Runtime, kind: Format, data: bytes, actor: str, reason: str) -> int:
    parse = parse_csv if kind is Format.CSV else parse_json
    specs = parse(data, max_rows=runtime.settings.max_import_rows)
    return runtime.inventory.import_devices(specs, actor=actor, reason=reason)


def _format_of(content_type: str) -> Format:
    media_type = content_type.partition(";")[0].strip().lower()
    for kind, known in _MEDIA_TYPES.items():
        if media_type == known:
            return kind
    raise UnsupportedMediaType(
        f"cannot import {media_type or 'a body without a Content-Type'}",
        hint="send Content-Type: text/csv or application/json, or ?format=csv|json",
    )


def _batches(devices: Iterable[Device]) -> Iterator[list[Device]]:
    iterator = iter(devices)
    while batch := list(itertools.islice(iterator, _BATCH)):
        yield batch


def _csv_chunks(devices: Iterable[Device]) -> Iterator[str]:
    # transfer.write_csv writes the header and rows; each batch after the first drops its header.
    header = _written_csv([])
    yield header
    for batch in _batches(devices):
        yield _written_csv(batch).removeprefix(header)


def _written_csv(devices: list[Device]) -> str:
    buffer = io.StringIO()
    write_csv(devices, buffer)
    return buffer.getvalue()


def _json_chunks(devices: Iterable[Device]) -> Iterator[str]:
    # The framing of transfer.write_json, one batch of elements per chunk.
    yield "["
    written = 0
    for batch in _batches(devices):
        parts = []
        for device in batch:
            parts.append("\n  " if written == 0 else ",\n  ")
            parts.append(json.dumps(export_record(device), sort_keys=True, ensure_ascii=False))
            written += 1
        yield "".join(parts)
    yield "\n]\n" if written else "]\n"
