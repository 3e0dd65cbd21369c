"""fleetguard.monitor.zeek: conn.log as TSV, JSON Lines and IoT-23 CSV; malformed lines counted."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.monitor.errors import FlowRecordInvalid
from fleetguard.monitor.model import FlowRecord
from fleetguard.monitor.zeek import parse_flows, read_flows

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "net" / "iot23-conn"

FIELDS = [
    "ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service", "duration",
    "orig_bytes", "resp_bytes", "conn_state", "local_orig", "local_resp", "missed_bytes", "history",
    "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes", "tunnel_parents",
]  # fmt: skip
TSV_HEADER = "\n".join([
    r"#separator \x09", "#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-", "#path\tconn",
    "#fields\t" + "\t".join(FIELDS),
])  # fmt: skip
VALUES = [
    "1545403816.962094", "CrDn63WjJEmrWGjqf", "192.168.1.195", "41040", "185.244.25.235", "80", "tcp", "-",
    "3.139211", "0", "0", "S0", "-", "-", "0", "S", "3", "180", "0", "0", "(empty)",
]  # fmt: skip
TSV_LINE = "\t".join(VALUES)
EXPECTED = FlowRecord(
    start=1545403816.962094, duration=3.139211, src="192.168.1.195", dst="185.244.25.235", sport=41040,
    dport=80, proto="tcp", src_bytes=180, dst_bytes=0, src_packets=3, dst_packets=0, state="S0",
)  # fmt: skip


def parse(text: str, **limits: int) -> tuple[list[FlowRecord], dict[str, int]]:
    flows, skipped = parse_flows(io.BytesIO(text.encode()), **limits)
    return flows, dict(skipped.counts)


def test_tsv_conn_log() -> None:
    flows, skipped = parse(TSV_HEADER + "\n" + TSV_LINE + "\n#close\t2018-12-21-16-50-17\n")
    assert (flows, skipped) == ([EXPECTED], {})


def test_iot23_labelled_tsv_splits_the_space_joined_columns() -> None:
    header = TSV_HEADER.replace("tunnel_parents", "tunnel_parents   label   detailed-label")
    line = TSV_LINE.replace("(empty)", "(empty)   Malicious   PartOfAHorizontalPortScan")
    benign = TSV_LINE.replace("(empty)", "(empty)   Benign   -")
    flows, skipped = parse(f"{header}\n{line}\n{benign}\n")
    assert skipped == {}
    assert [flow.label for flow in flows] == ["PartOfAHorizontalPortScan", "benign"]


def test_json_lines_with_epoch_and_iso_timestamps() -> None:
    record = {
        "ts": 1545403816.962094, "uid": "C1", "id.orig_h": "192.168.1.195", "id.orig_p": 41040,
        "id.resp_h": "185.244.25.235", "id.resp_p": 80, "proto": "tcp", "duration": 3.139211,
        "conn_state": "S0", "orig_pkts": 3, "orig_ip_bytes": 180, "resp_pkts": 0, "resp_ip_bytes": 0,
    }  # fmt: skip
    iso = dict(record, ts="2018-12-21T14:50:16.962094Z")
    flows, skipped = parse(json.dumps(record) + "\n\n" + json.dumps(iso) + "\n")
    assert skipped == {}
    assert flows == [EXPECTED, EXPECTED]


def test_iot23_csv_labels() -> None:
    header = "ts,uid,id.orig_h,id.orig_p,id.resp_h,id.resp_p,proto,duration,conn_state,orig_pkts,label,"
    header += "detailed-label"
    rows = [
        "1.5,C1,10.0.0.1,1,10.0.0.2,2,udp,,S0,1,benign,-",
        "2.5,C2,10.0.0.1,3,10.0.0.2,4,tcp,0.5,SF,2,Malicious,C&C-FileDownload",
        "3.5,C3,fe80::1,8,ff02::1,0,icmp,-,OTH,1,Malicious,-",
    ]
    flows, skipped = parse("\n".join([header, *rows]))
    assert skipped == {}
    assert [flow.label for flow in flows] == ["benign", "C&C-FileDownload", "malicious"]
    assert [(flow.start, flow.duration, flow.sport, flow.dport) for flow in flows] == [
        (1.5, 0.0, 1, 2), (2.5, 0.5, 3, 4), (3.5, 0.0, 8, 0),
    ]  # fmt: skip
    assert flows[2].src_packets == 1
    assert flows[2].src_bytes == 0


@pytest.mark.parametrize(("line", "reason"), [
    (TSV_LINE.replace("192.168.1.195", "not-an-ip"), "bad id.orig_h"),
    (TSV_LINE.replace("41040", "70000"), "bad id.orig_p"),
    (TSV_LINE.replace("\ttcp\t", "\tsctp\t"), "bad proto"),
    (TSV_LINE.replace("1545403816.962094", "yesterday"), "bad ts"),
    (TSV_LINE.replace("1545403816.962094", "-"), "bad ts"),
    (TSV_LINE.replace("3.139211", "-1"), "bad duration"),
    (TSV_LINE.replace("\t180\t", "\t99999999999999999999\t"), "bad orig_ip_bytes"),
    (TSV_LINE.replace("\tS0\t", "\tS0<script>\t"), "bad conn_state"),
    (TSV_LINE + "\textra", "bad line (wrong number of fields)"),
    ("x" * 5000, "line longer than 4096 bytes"),
])  # fmt: skip
def test_malformed_tsv_lines_are_counted_and_reading_goes_on(line: str, reason: str) -> None:
    flows, skipped = parse(f"{TSV_HEADER}\n{line}\n{TSV_LINE}\n")
    assert flows == [EXPECTED]
    assert skipped == {reason: 1}


def test_non_utf8_and_bad_json_lines_are_counted() -> None:
    good = json.dumps(
        {
            "ts": 1,
            "id.orig_h": "10.0.0.1",
            "id.orig_p": 1,
            "id.resp_h": "10.0.0.2",
            "id.resp_p": 2,
            "proto": "udp",
        }
    )
    data = (
        (good + "\n{not json\n[1, 2]\n" + '{"ts": true}\n').encode()
        + b"\xff\xfe\n"
        + ("[" * 3000 + "\n").encode()
    )
    flows, skipped = parse_flows(io.BytesIO(data))
    assert len(flows) == 1
    assert dict(skipped.counts) == {
        "bad line (not JSON)": 2, "bad line (not a JSON object)": 1, "bad proto": 1, "line not UTF-8": 1,
    }  # fmt: skip


def test_tsv_data_before_fields_header_is_counted() -> None:
    flows, skipped = parse("#path\tconn\n" + TSV_LINE + "\n" + TSV_HEADER + "\n" + TSV_LINE + "\n")
    assert flows == [EXPECTED]
    assert skipped == {"bad line (before a #fields header)": 1}


def test_record_limit_is_counted() -> None:
    flows, skipped = parse(TSV_HEADER + ("\n" + TSV_LINE) * 5, max_records=2)
    assert len(flows) == 2
    assert skipped == {"record limit reached (rest of file not read)": 1}


@pytest.mark.parametrize("text", ["hello,world\n1,2\n", "#fields\tts\tuid\n", '"unterminated\n'])
def test_a_file_that_is_not_a_conn_log_is_invalid(text: str) -> None:
    with pytest.raises(FlowRecordInvalid, match=r"not a Zeek conn\.log header"):
        parse(text)


def test_empty_file_has_no_flows() -> None:
    assert parse("") == ([], {})


@settings(max_examples=150, deadline=None)
@given(tail=st.binary(max_size=2000))
def test_random_bytes_after_a_header_never_raise(tail: bytes) -> None:
    for header in (
        TSV_HEADER,
        "ts,uid,id.orig_h,id.orig_p,id.resp_h,id.resp_p,proto,label,detailed-label",
    ):
        flows, skipped = parse_flows(io.BytesIO(header.encode() + b"\n" + tail))
        assert len(flows) <= tail.count(b"\n") + 1
        assert skipped.total >= 0
    # with no header, the first line is a header, a record, or refused
    with contextlib.suppress(FlowRecordInvalid):
        parse_flows(io.BytesIO(tail))


@pytest.mark.skipif(not DATA.is_dir(), reason=f"the shared IoT-23 files are not at {DATA}")
def test_shared_iot23_files() -> None:
    labels: set[str | None] = set()
    total = 0
    for path in sorted(DATA.glob("*.csv")):
        flows, skipped = read_flows(path)
        assert skipped.total == 0, (path, skipped.counts)
        total += len(flows)
        labels |= {flow.label for flow in flows}
    assert total > 10_000
    assert {"benign", "C&C", "C&C-Torii", "DDoS"} <= labels
