"""CSV and JSON import parsing and export, including hostile and random input."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.inventory.errors import ImportRejected
from fleetguard.inventory.lifecycle import State
from fleetguard.inventory.model import Device, DeviceSpec
from fleetguard.inventory.transfer import parse_csv, parse_json, write_csv, write_json
from fleetguard.types import DeviceId

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def test_csv_minimal() -> None:
    specs = parse_csv(b"serial,manufacturer\nSN1,Acme\nSN2,Acme\n", max_rows=10)
    assert specs == [
        DeviceSpec(serial="SN1", manufacturer="Acme"),
        DeviceSpec(serial="SN2", manufacturer="Acme"),
    ]


def test_csv_all_fields_and_labels_as_json() -> None:
    data = (
        b"id,serial,manufacturer,model,device_type,site,owner,labels,mud_url\n"
        b'd1,SN1,Acme,M1,,,ops,"{""env"": ""prod""}",https://mud.example.com/m1.json\n'
    )
    [spec] = parse_csv(data, max_rows=10)
    assert (spec.id, spec.model, spec.device_type, spec.site, spec.owner) == ("d1", "M1", None, None, "ops")
    assert spec.labels == {"env": "prod"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "in the header: the file is empty"),
        (b"serial\nSN1\n", "in the header: required column 'manufacturer' is missing"),
        (b"serial,manufacturer,colour\nS,A,red\n", "in the header: unknown field 'colour'"),
        (b"serial,manufacturer,serial\nS,A,B\n", "in the header: a column is named twice"),
        (b"serial,manufacturer\nS1,A\nS2\n", "at row 2: 1 cells but 2 columns"),
        (b"serial,manufacturer\nS1,A\n,\n", "at row 2: blank row"),
        (b"serial,manufacturer\nS1,\n", "at row 1: manufacturer is required"),
        (b"serial,manufacturer,id\nS1,A,bad/id\n", "at row 1: invalid device id 'bad/id'"),
        (b"serial,manufacturer,labels\nS1,A,env=prod\n", "at row 1: labels must be a JSON object"),
        (b"serial,manufacturer,mud_url\nS1,A,http://x\n", "at row 1: MUD URL 'http://x' must be an https"),
        (b"serial,manufacturer\nS1,\xff\n", "in the header: not UTF-8"),
        (b'serial,manufacturer\n"S1,A\n', "at row 1: malformed CSV"),
    ],
)
def test_csv_bad_input_names_the_row(data: bytes, message: str) -> None:
    with pytest.raises(ImportRejected, match=message):
        parse_csv(data, max_rows=10)


def test_csv_row_bound() -> None:
    with pytest.raises(ImportRejected, match="at row 3: more than 2 rows; split the import"):
        parse_csv(b"serial,manufacturer\nA,M\nB,M\nC,M\n", max_rows=2)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "in the header: malformed JSON at line 1 column 2"),
        (b'{"x": []}', "expected a JSON array of devices"),
        (b"[1]", "at row 1: each device must be a JSON object"),
        (b'[{"serial": "S", "manufacturer": "A", "color": "red"}]', "at row 1: unknown field 'color'"),
        (b'[{"serial": "S", "manufacturer": 5}]', "at row 1: manufacturer must be a string"),
        (b'[{"serial": "S", "manufacturer": "A", "labels": {"a": 1}}]', "labels must be an object of string"),
        (b'[{"serial": "S", "manufacturer": "A"}, {"serial": "T"}]', "at row 2: manufacturer is required"),
        (b'[{"serial": "S", "manufacturer": "A", "owner": null}]', "at row 1: owner must not be null"),
    ],
)
def test_json_bad_input_names_the_row(data: bytes, message: str) -> None:
    with pytest.raises(ImportRejected, match=message):
        parse_json(data, max_rows=10)


def test_json_accepts_wrapped_array() -> None:
    specs = parse_json(b'{"devices": [{"serial": "S", "manufacturer": "A", "site": null}]}', max_rows=5)
    assert specs == [DeviceSpec(serial="S", manufacturer="A")]


def _device(n: int, labels: dict[str, str]) -> Device:
    return Device(
        id=DeviceId(f"d{n}"), serial=f"S,{n}\"", manufacturer="Acme \u00e9", model="", device_type=None,
        hardware_revision="", firmware_version="1.0", mud_url=None, site=None, owner="", labels=labels,
        state=State.ACTIVE, created_at=T0, updated_at=T0, last_seen=None, version=3,
    )  # fmt: skip


def test_export_then_import_round_trips() -> None:
    devices = [_device(1, {"env": "prod"}), _device(2, {})]
    csv_out, json_out = io.StringIO(), io.StringIO()
    assert write_csv(devices, csv_out) == 2
    assert write_json(devices, json_out) == 2
    from_csv = parse_csv(csv_out.getvalue().encode(), max_rows=10)
    from_json = parse_json(json_out.getvalue().encode(), max_rows=10)
    assert from_csv == from_json
    assert [(s.id, s.serial, s.labels) for s in from_csv] == [
        ("d1", 'S,1"', {"env": "prod"}),
        ("d2", 'S,2"', {}),
    ]
    assert json.loads(json_out.getvalue())[0]["state"] == "active"


def test_empty_json_export_is_valid() -> None:
    out = io.StringIO()
    assert write_json([], out) == 0
    assert json.loads(out.getvalue()) == []


_TEXT = st.text(
    st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_categories=("Cs", "Cc")), max_size=20
)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_escape_as_anything_but_import_rejected(data: bytes) -> None:
    for parse in (parse_csv, parse_json):
        with contextlib.suppress(ImportRejected):
            parse(data, max_rows=50)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            _TEXT.filter(lambda s: s.strip() != ""),
            _TEXT.filter(lambda s: s.strip() != ""),
            _TEXT,
            st.dictionaries(st.from_regex(r"[a-z][a-z0-9.-]{0,10}", fullmatch=True), _TEXT, max_size=3),
        ),
        max_size=8,
    )
)
def test_any_valid_export_parses_back(rows: list[tuple[str, str, str, dict[str, str]]]) -> None:
    devices = [
        Device(
            id=DeviceId(f"d{i}"),
            serial=serial,
            manufacturer=maker,
            model=model,
            device_type=None,
            hardware_revision="",
            firmware_version="",
            mud_url=None,
            site=None,
            owner="",
            labels=labels,
            state=State.REGISTERED,
            created_at=T0,
            updated_at=T0,
            last_seen=None,
            version=1,
        )
        for i, (serial, maker, model, labels) in enumerate(rows)
    ]
    out = io.StringIO()
    write_csv(devices, out)
    specs = parse_csv(out.getvalue().encode(), max_rows=100)
    assert [(s.id, s.serial, s.manufacturer, s.model, dict(s.labels)) for s in specs] == [
        (d.id, d.serial, d.manufacturer, d.model, dict(d.labels)) for d in devices
    ]
