"""Bulk import and export of devices as CSV and JSON.

Parsing is all-or-nothing: the first bad row raises :class:`ImportRejected` naming the row (1-based,
counting data rows, the CSV header being row 0) and why, before anything reaches the store. The
formats are the ones export writes, so an export can be imported into another installation; the
export-only columns (state, created_at, updated_at, last_seen, version) are accepted and ignored,
because imported devices always start ``registered``.

CSV: a header row naming columns from :data:`DEVICE_FIELDS` (``id``, ``serial``, ``manufacturer`` …),
UTF-8, ``labels`` as a JSON object in one cell. JSON: an array of objects, or ``{"devices": [...]}``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterable, Mapping
from typing import TextIO

from fleetguard.errors import InvalidInput
from fleetguard.inventory.errors import ImportRejected
from fleetguard.inventory.model import DEVICE_FIELDS, Device, DeviceSpec

__all__ = [
    "EXPORT_FIELDS",
    "parse_csv",
    "parse_json",
    "write_csv",
    "write_json",
]

EXPORT_FIELDS = (*DEVICE_FIELDS, "state", "created_at", "updated_at", "last_seen", "version")
_IGNORED = frozenset(EXPORT_FIELDS) - frozenset(DEVICE_FIELDS)
_REQUIRED = ("serial", "manufacturer")
_OPTIONAL_REFERENCES = ("device_type", "site", "mud_url")
_MAX_FIELD_CHARS = 64 * 1024


def parse_csv(data: bytes, *, max_rows: int) -> list[DeviceSpec]:
    """Parse CSV ``data`` into specs; raise :class:`ImportRejected` at the first bad row."""
    text = _decode(data)
    csv.field_size_limit(_MAX_FIELD_CHARS)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ImportRejected(0, f"malformed CSV: {exc}") from exc
    if header is None:
        raise ImportRejected(0, "the file is empty: a header row is required")
    columns = _check_header([name.strip() for name in header])
    specs: list[DeviceSpec] = []
    number = 0
    try:
        for number, cells in enumerate(reader, start=1):
            if not any(cell.strip() for cell in cells):
                raise ImportRejected(number, "blank row")
            if len(cells) != len(columns):
                raise ImportRejected(number, f"{len(cells)} cells but {len(columns)} columns")
            _require_room(number, max_rows)
            specs.append(_spec(number, dict(zip(columns, cells, strict=True)), from_csv=True))
    except csv.Error as exc:
        raise ImportRejected(number + 1, f"malformed CSV: {exc}") from exc
    return specs


def parse_json(data: bytes, *, max_rows: int) -> list[DeviceSpec]:
    """Parse a JSON array (or ``{"devices": [...]}``) into specs; raise at the first bad row."""
    try:
        document = json.loads(_decode(data))
    except json.JSONDecodeError as exc:
        raise ImportRejected(0, f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if isinstance(document, dict) and set(document) == {"devices"}:
        document = document["devices"]
    if not isinstance(document, list):
        raise ImportRejected(0, 'expected a JSON array of devices or {"devices": [...]}')
    specs: list[DeviceSpec] = []
    for number, item in enumerate(document, start=1):
        _require_room(number, max_rows)
        if not isinstance(item, dict):
            raise ImportRejected(number, "each device must be a JSON object")
        _check_header(list(item), row=number)
        specs.append(_spec(number, item, from_csv=False))
    return specs


def write_csv(devices: Iterable[Device], out: TextIO) -> int:
    """Write ``devices`` as CSV with a header; return how many were written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_FIELDS)
    count = 0
    for device in devices:
        record = export_record(device)
        writer.writerow(
            [json.dumps(record[name], sort_keys=True) if name == "labels" else _cell(record[name])
             for name in EXPORT_FIELDS]
        )  # fmt: skip
        count += 1
    return count


def write_json(devices: Iterable[Device], out: TextIO) -> int:
    """Write ``devices`` as a JSON array, streaming; return how many were written."""
    out.write("[")
    count = 0
    for count, device in enumerate(devices, start=1):
        out.write("\n  " if count == 1 else ",\n  ")
        out.write(json.dumps(export_record(device), sort_keys=True, ensure_ascii=False))
    out.write("\n]\n" if count else "]\n")
    return count


def export_record(device: Device) -> dict[str, object]:
    """Return the JSON-ready export view of ``device``."""
    return {
        "id": device.id,
        "serial": device.serial,
        "manufacturer": device.manufacturer,
        "model": device.model,
        "device_type": device.device_type,
        "hardware_revision": device.hardware_revision,
        "firmware_version": device.firmware_version,
        "mud_url": device.mud_url,
        "site": device.site,
        "owner": device.owner,
        "labels": dict(device.labels),
        "state": device.state.value,
        "created_at": _time(device.created_at),
        "updated_at": _time(device.updated_at),
        "last_seen": None if device.last_seen is None else _time(device.last_seen),
        "version": device.version,
    }


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportRejected(0, f"not UTF-8 (invalid byte at offset {exc.start})") from exc


def _check_header(columns: list[str], *, row: int = 0) -> list[str]:
    known = set(EXPORT_FIELDS)
    unknown = [name for name in columns if name not in known]
    if unknown:
        raise ImportRejected(row, f"unknown field {unknown[0][:80]!r} (known: {', '.join(DEVICE_FIELDS)})")
    if row == 0:
        missing = [name for name in _REQUIRED if name not in columns]
        if missing:
            raise ImportRejected(0, f"required column {missing[0]!r} is missing")
        if len(set(columns)) != len(columns):
            raise ImportRejected(0, "a column is named twice")
    return columns


def _require_room(number: int, max_rows: int) -> None:
    if number > max_rows:
        raise ImportRejected(number, f"more than {max_rows} rows; split the import")


def _spec(number: int, record: Mapping[str, object], *, from_csv: bool) -> DeviceSpec:
    values: dict[str, object] = {}
    for name, raw in record.items():
        if name in _IGNORED:
            continue
        value = _labels(number, raw) if name == "labels" and from_csv else raw
        if name in _OPTIONAL_REFERENCES and value == "":
            value = None
        if name == "labels":
            value = _require_labels(number, value)
        elif value is not None and not isinstance(value, str):
            raise ImportRejected(number, f"{name} must be a string")
        elif value is None and name not in _OPTIONAL_REFERENCES:
            raise ImportRejected(number, f"{name} must not be null")
        values[name] = value
    for name in _REQUIRED:
        if not values.get(name):
            raise ImportRejected(number, f"{name} is required")
    try:
        return DeviceSpec(**values)  # type: ignore[arg-type]
    except InvalidInput as exc:
        raise ImportRejected(number, exc.message) from exc


def _labels(number: int, cell: object) -> object:
    if not isinstance(cell, str) or not cell.strip():
        return {}
    try:
        return json.loads(cell)
    except json.JSONDecodeError as exc:
        raise ImportRejected(
            number, f'labels must be a JSON object like {{"env": "prod"}}: {exc.msg}'
        ) from exc


def _require_labels(number: int, value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ImportRejected(number, "labels must be an object of string values")
    return value


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def _time(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")
