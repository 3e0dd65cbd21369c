"""Labelled streams for evaluation: per-packet and range labels, captures joined in time order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetguard.monitor.dataset import concatenate, label_packets, labelled_captures
from fleetguard.monitor.errors import CaptureCorrupt
from fleetguard.monitor.model import PacketColumns, Skipped


def _packets(ts: list[float], src: int = 1) -> PacketColumns:
    n = len(ts)
    return PacketColumns(
        ts=np.array(ts, np.float64), src=np.full(n, src, np.uint64), dst=np.full(n, 2, np.uint64),
        sport=np.full(n, 1000, np.uint16), dport=np.full(n, 80, np.uint16), proto=np.full(n, 6, np.uint8),
        length=np.full(n, 60, np.uint32), tcp_flags=np.zeros(n, np.uint8), src_mac=np.zeros(n, np.uint64),
        addresses={src: f"10.0.0.{src}"},
    )  # fmt: skip


def test_per_packet_labels_must_match_the_packet_count(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("0\n1\n\nmalicious\n")
    assert label_packets(_packets([1, 2, 3]), labels).tolist() == [0, 1, 1]
    with pytest.raises(CaptureCorrupt, match="3 labels for 2 packets"):
        label_packets(_packets([1, 2]), labels)
    labels.write_text("0\nmaybe\n")
    with pytest.raises(CaptureCorrupt, match="'maybe' is not a label"):
        label_packets(_packets([1, 2]), labels)


def test_range_labels_mark_packets_inside_malicious_ranges(tmp_path: Path) -> None:
    labels = tmp_path / "ranges.csv"
    labels.write_text("start,end,label\n2,3,malicious\n4,5,benign\n")
    assert label_packets(_packets([1, 2, 2.5, 3, 3.5, 4.5]), labels).tolist() == [0, 1, 1, 1, 0, 0]
    labels.write_text("start,end,label\nx,3,1\n")
    with pytest.raises(CaptureCorrupt, match="numeric start and end"):
        label_packets(_packets([1]), labels)


def test_captures_follow_each_other_in_time_with_their_gaps_kept() -> None:
    joined = concatenate([_packets([100, 101, 105], src=1), _packets([7, 9], src=2), PacketColumns.empty()])
    assert joined.ts.tolist() == [0, 1, 5, 6, 8]
    assert joined.src.tolist() == [1, 1, 1, 2, 2]
    assert dict(joined.addresses) == {1: "10.0.0.1", 2: "10.0.0.2"}
    assert len(concatenate([])) == 0


def test_labelled_captures_label_benign_then_attack(tmp_path: Path) -> None:
    captures = {"b.pcap": _packets([1, 2]), "a.pcap": _packets([10, 11, 12], src=3)}

    def reader(path: Path) -> tuple[PacketColumns, Skipped]:
        skipped = Skipped()
        skipped.add("truncated record")
        return captures[path.name], skipped

    stream = labelled_captures([tmp_path / "b.pcap"], [tmp_path / "a.pcap"], reader)
    assert stream.labels.tolist() == [0, 0, 1, 1, 1]
    assert stream.packets.ts.tolist() == [0, 1, 2, 3, 4]
    assert stream.skipped.counts == {"b.pcap: truncated record": 1, "a.pcap: truncated record": 1}
