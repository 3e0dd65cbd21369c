"""Zeek conn.log files read into :class:`~fleetguard.monitor.model.FlowRecord`, with labels when present.

Theory of operation. :func:`read_flows` takes the three forms conn.log is found in and tells them
apart by their first line:

* Zeek's own TSV (a ``#``-line header: ``#separator``, ``#unset_field``, ``#empty_field``,
  ``#fields``; https://docs.zeek.org/en/master/logs/index.html). A later ``#fields`` line (logs
  concatenated) replaces the columns. The IoT-23 ``conn.log.labeled`` files join their last three
  columns with spaces instead of tabs (``tunnel_parents   label   detailed-label``); such a column is
  split on whitespace;
* JSON Lines (``LogAscii::use_json``), with ``ts`` as epoch seconds or ISO 8601;
* CSV with a header line, as the labelled IoT-23 files are shipped
  (``ts,uid,id.orig_h,...,label,detailed-label``).

Fields are read as :mod:`fleetguard.segment.flows` reads them (the same address, port and count
rules). ``src_bytes``/``dst_bytes`` are the IP bytes (``orig_ip_bytes``/``resp_ip_bytes``), so that
they agree with NetFlow and captures; for ICMP, ``sport``/``dport`` are the type and code, as Zeek
writes them. ``label`` is ``"benign"`` for a benign flow and the detailed label (``"C&C"``,
``"PartOfAHorizontalPortScan"``, ...) for a malicious one (``"malicious"`` when there is none);
None when the file has no labels.

Lines are bounded in length (:data:`MAX_LINE_LENGTH`) and number (``max_records``). A line that
cannot be used is counted in :class:`~fleetguard.monitor.model.Skipped` under a reason that names the
field, never its value (so reasons stay few); reading goes on. Only a file whose header is not a
conn.log header raises :class:`~fleetguard.monitor.errors.FlowRecordInvalid`.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar

from fleetguard.monitor.errors import FlowRecordInvalid
from fleetguard.monitor.model import FlowRecord, Skipped
from fleetguard.segment.flows import (
    DEFAULT_MAX_RECORDS,
    MAX_LINE_LENGTH,
    ZEEK_REQUIRED_FIELDS,
    bounded_number,
    normalized_address,
    zeek_count,
)

__all__ = ["DEFAULT_MAX_RECORDS", "MAX_LINE_LENGTH", "read_flows"]

_PROTOCOLS = frozenset({"tcp", "udp", "icmp", "unknown_transport"})  # Zeek's transport_proto enum
_SECONDS = re.compile(r"\d{1,11}(?:\.\d{1,9})?")
_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
_MAX_STATE = 16  # Zeek conn_state values are at most 6 characters
_MAX_DETAILED_LABEL = 128
_BENIGN, _MALICIOUS = "benign", "malicious"
_NO_DETAIL = frozenset({"", "-", "(empty)"})

_LIMIT = "record limit reached (rest of file not read)"

_T = TypeVar("_T")
_Field = Callable[[str], "str | None"]  # a record's field by name; None: unset or absent


class _BadField(ValueError):
    """A field of a record is missing or out of range; ``reason`` names the field, not its value."""

    def __init__(self, name: str) -> None:
        super().__init__(f"bad {name}")
        self.reason = f"bad {name}"


def read_flows(
    path: str | os.PathLike[str],
    *,
    max_records: int = DEFAULT_MAX_RECORDS,
    max_line_length: int = MAX_LINE_LENGTH,
) -> tuple[list[FlowRecord], Skipped]:
    """Read a Zeek conn.log (TSV, JSON Lines or IoT-23 CSV); return its flows and the lines skipped.

    Raises ``FlowRecordInvalid`` when the first line is not a conn.log header (or JSON object), or a
    header lacks a required field (``ts``, ``id.orig_h``, ``id.orig_p``, ``id.resp_h``,
    ``id.resp_p``, ``proto``); ``OSError`` when the file cannot be opened.
    """
    with open(path, "rb") as stream:
        return parse_flows(stream, max_records=max_records, max_line_length=max_line_length)


def parse_flows(
    stream: BinaryIO,
    *,
    max_records: int = DEFAULT_MAX_RECORDS,
    max_line_length: int = MAX_LINE_LENGTH,
) -> tuple[list[FlowRecord], Skipped]:
    """Read conn.log records from a binary stream; return and raise as :func:`read_flows` does."""
    skipped = Skipped()
    lines = _lines(stream, max_line_length, skipped)
    first = next(lines, None)
    if first is None:
        return [], skipped
    if first.startswith("#"):
        tsv = _TsvReader()
        tsv.header(first)
        reader: _Reader = tsv
    elif first.startswith("{"):
        reader = _JsonReader()  # the first line is a record too: _chain yields it
    else:
        reader = _CsvReader(first)
    flows: list[FlowRecord] = []
    for text in _chain(first, lines, reader):
        if len(flows) >= max_records:
            skipped.add(_LIMIT)
            break
        try:
            record = reader.record(text)
        except _BadField as exc:
            skipped.add(exc.reason)
            continue
        if record is not None:
            flows.append(record)
    return flows, skipped


def _chain(first: str, lines: Iterator[str], reader: _Reader) -> Iterator[str]:
    if isinstance(reader, _JsonReader):
        yield first
    yield from lines


def _lines(stream: BinaryIO, max_length: int, skipped: Skipped) -> Iterator[str]:
    """Yield non-blank lines as text; count overlong and non-UTF-8 lines in ``skipped``."""
    while True:
        raw = stream.readline(max_length + 1)
        if not raw:
            return
        if len(raw) > max_length and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # the rest of the line, a bounded piece at a time
                raw = stream.readline(max_length + 1)
            skipped.add(f"line longer than {max_length} bytes")
            continue
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            skipped.add("line not UTF-8")
            continue
        if text.strip():
            yield text


# -- the three forms -------------------------------------------------------------------------------


class _Reader:
    def record(self, text: str) -> FlowRecord | None:
        """Return the flow of a line (None for a header or comment line); raise _BadField."""
        raise NotImplementedError


class _TsvReader(_Reader):
    """Zeek's ASCII log format: ``#`` header lines, then tab-separated values."""

    def __init__(self) -> None:
        self.separator, self.unset, self.empty = "\t", "-", "(empty)"
        self.columns: dict[str, tuple[int, int]] | None = None  # name -> (column, part in a joined column)
        self.joined: dict[int, int] = {}  # column index -> how many whitespace-joined fields it holds
        self.width = 0

    def header(self, text: str) -> None:
        """Take a ``#`` line: the separator, unset/empty markers and field names; others are ignored."""
        if text.startswith("#separator "):
            self.separator = _unescape(text.removeprefix("#separator ")) or "\t"
            return
        key, _, value = text.partition(self.separator)
        if key == "#unset_field":
            self.unset = value
        elif key == "#empty_field":
            self.empty = value
        elif key == "#fields":
            self._fields(value.split(self.separator))

    def _fields(self, names: list[str]) -> None:
        columns: dict[str, tuple[int, int]] = {}
        self.joined = {}
        for index, name in enumerate(names):
            parts = name.split()
            if len(parts) > 1:
                self.joined[index] = len(parts)
            for offset, part in enumerate(parts):
                columns[part] = (index, offset)
        _require_fields(set(columns), "#fields")
        self.columns = columns
        self.width = len(names)

    def record(self, text: str) -> FlowRecord | None:
        if text.startswith("#"):
            self.header(text)
            return None
        if self.columns is None:
            raise _BadField("line (before a #fields header)")
        values = text.split(self.separator)
        if len(values) != self.width:
            raise _BadField("line (wrong number of fields)")
        columns = self.columns

        def field(name: str) -> str | None:
            where = columns.get(name)
            if where is None:
                return None
            index, part = where
            value = values[index]
            if index in self.joined:
                pieces = value.split(None, self.joined[index] - 1)
                value = pieces[part] if part < len(pieces) else ""
            if value == self.unset:
                return None
            return "" if value == self.empty else value

        return _flow(field)


class _JsonReader(_Reader):
    """JSON Lines: one object per line, Zeek's field names as keys."""

    def record(self, text: str) -> FlowRecord | None:
        try:
            record = json.loads(text)
        except (ValueError, RecursionError):  # JSONDecodeError; absurd nesting (bounded by the line length)
            raise _BadField("line (not JSON)") from None
        if not isinstance(record, dict):
            raise _BadField("line (not a JSON object)")
        return _flow(lambda name: _json_text(record.get(name), name))


def _json_text(value: object, name: str) -> str | None:
    """A JSON value as the text the TSV form would hold (numbers in plain decimal)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _BadField(name)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise _BadField(name)
        return f"{value:.6f}"
    if isinstance(value, str):
        return value
    raise _BadField(name)


class _CsvReader(_Reader):
    """CSV with a header line (the IoT-23 labelled files)."""

    def __init__(self, header: str) -> None:
        names = _csv_row(header)
        if names is None:
            raise FlowRecordInvalid("line 1: not a Zeek conn.log header (TSV, JSON Lines or CSV)")
        _require_fields(set(names), "CSV header")
        self.columns = {name: index for index, name in enumerate(names)}
        self.width = len(names)

    def record(self, text: str) -> FlowRecord | None:
        row = _csv_row(text)
        if row is None:
            raise _BadField("line (not CSV)")
        if len(row) != self.width:
            raise _BadField("line (wrong number of fields)")
        columns = self.columns

        def field(name: str) -> str | None:
            index = columns.get(name)
            return None if index is None or row[index] == "-" else row[index]

        return _flow(field)


def _csv_row(text: str) -> list[str] | None:
    try:
        return next(csv.reader([text], strict=True), [])
    except csv.Error:
        return None


def _require_fields(names: set[str], where: str) -> None:
    missing = [name for name in ZEEK_REQUIRED_FIELDS if name not in names]
    if missing:
        raise FlowRecordInvalid(
            f"{where} is not a Zeek conn.log header (missing {', '.join(missing)})",
            hint="give a Zeek conn.log (TSV, JSON Lines) or an IoT-23 labelled CSV",
        )


def _unescape(text: str) -> str:
    # Zeek writes the separator as "\x09".
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda match: chr(int(match[1], 16)), text)


# -- one record ------------------------------------------------------------------------------------


def _flow(field: _Field) -> FlowRecord:
    """Build a flow from a record's fields (see the module docstring); raise _BadField."""
    proto = (field("proto") or "").lower()
    if proto not in _PROTOCOLS:
        raise _BadField("proto")
    return FlowRecord(
        start=_seconds(field("ts"), "ts", required=True),
        duration=_seconds(field("duration"), "duration", required=False),
        src=_parsed(normalized_address, field("id.orig_h"), "id.orig_h"),
        dst=_parsed(normalized_address, field("id.resp_h"), "id.resp_h"),
        sport=_parsed(_port, field("id.orig_p"), "id.orig_p"),
        dport=_parsed(_port, field("id.resp_p"), "id.resp_p"),
        proto=proto,
        src_bytes=_counted(field, "orig_ip_bytes"),
        dst_bytes=_counted(field, "resp_ip_bytes"),
        src_packets=_counted(field, "orig_pkts"),
        dst_packets=_counted(field, "resp_pkts"),
        state=_state(field("conn_state")),
        source="zeek",
        label=_label(field("label"), field("detailed-label")),
    )


def _parsed(parse: Callable[[str], _T], text: str | None, name: str) -> _T:
    if text is None:
        raise _BadField(name)
    try:
        return parse(text)
    except ValueError:
        raise _BadField(name) from None


def _port(text: str) -> int:
    return bounded_number(text, 65535, "port")


def _counted(field: _Field, name: str) -> int:
    return _parsed(lambda text: zeek_count(text, name), field(name) or "", name)


def _seconds(text: str | None, name: str, *, required: bool) -> float:
    """Epoch seconds (or a duration): plain decimal, or ISO 8601 with an offset for JSON's ``ts``."""
    if text in (None, ""):
        if required:
            raise _BadField(name)
        return 0.0
    assert text is not None
    if _SECONDS.fullmatch(text):
        value = float(text)
    elif name == "ts":
        value = _iso_seconds(text)
    else:
        raise _BadField(name)
    if value > _MAX_SECONDS:
        raise _BadField(name)
    return value


def _iso_seconds(text: str) -> float:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _BadField("ts") from None
    if when.tzinfo is None:
        raise _BadField("ts")
    return when.timestamp()


def _state(text: str | None) -> str:
    if text is None:
        return ""
    if len(text) > _MAX_STATE or not text.isascii() or not text.isalnum():
        raise _BadField("conn_state")
    return text


def _label(label: str | None, detail: str | None) -> str | None:
    """IoT-23 labels: "benign", or the detailed label of a malicious flow (see the module docstring)."""
    if label is None:
        return None
    kind = label.strip().lower()
    if kind == _BENIGN:
        return _BENIGN
    if kind != _MALICIOUS:
        raise _BadField("label")
    detail = (detail or "").strip()
    if detail in _NO_DETAIL:
        return _MALICIOUS
    if len(detail) > _MAX_DETAILED_LABEL or not detail.isprintable():
        raise _BadField("detailed-label")
    return detail
