"""Labelled traffic for evaluation: captures and their labels, as one stream in time order.

Two ways to say what is malicious:

* a labels file beside one capture (``fleetguard monitor eval --pcap FILE --labels FILE``): either one
  ``0``/``1`` per line, one line per packet in capture order (Kitsune's format), or a CSV with the
  header ``start,end,label`` of time ranges (UNIX seconds, ``label`` 0/1 or benign/malicious), the
  rest benign;
* whole captures labelled benign or malicious (``--benign A.pcap --attack B.pcap``): they are
  concatenated in the order given, each shifted in time to follow the previous one (gaps inside a
  capture are kept), so that the detectors see one continuous network.

Both give :class:`Labelled`: the packet columns and one label per packet (1 = malicious).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fleetguard.monitor.errors import CaptureCorrupt, MonitorLimit
from fleetguard.monitor.model import PacketColumns, Skipped

__all__ = ["MAX_LABELS_BYTES", "Labelled", "concatenate", "label_packets", "labelled_captures"]

MAX_LABELS_BYTES = 256 * 1024 * 1024
_MALICIOUS = {"1", "malicious", "attack", "true"}
_BENIGN = {"0", "benign", "normal", "false"}
_GAP_S = 1.0

Reader = Callable[[Path], tuple[PacketColumns, Skipped]]


@dataclass(frozen=True, slots=True)
class Labelled:
    """Packets and one label each (1 = malicious), with what was skipped reading them."""

    packets: PacketColumns
    labels: npt.NDArray[np.uint8]
    skipped: Skipped


def label_packets(packets: PacketColumns, labels_file: Path) -> npt.NDArray[np.uint8]:
    """Return one label per packet from ``labels_file`` (see the module docstring).

    Raises :class:`CaptureCorrupt` for a file in neither form, or a per-packet file whose line count
    differs from the packet count; :class:`MonitorLimit` for a file over :data:`MAX_LABELS_BYTES`.
    """
    data = _read_bounded(labels_file)
    text = data.decode("utf-8", errors="replace")
    first = text.lstrip().split("\n", 1)[0].strip().lower()
    if first.startswith("start"):
        return _ranges(text, packets.ts, labels_file)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != len(packets):
        raise CaptureCorrupt(f"{labels_file}: {len(lines)} labels for {len(packets)} packets")
    return np.fromiter((_label(value, labels_file) for value in lines), np.uint8, count=len(lines))


def labelled_captures(benign: Sequence[Path], attack: Sequence[Path], reader: Reader) -> Labelled:
    """Read benign then attack captures into one labelled stream (see the module docstring)."""
    parts: list[PacketColumns] = []
    labels: list[npt.NDArray[np.uint8]] = []
    skipped = Skipped()
    for paths, label in ((benign, 0), (attack, 1)):
        for path in paths:
            packets, skips = reader(path)
            for reason, count in skips.counts.items():
                skipped.add(f"{path.name}: {reason}", count)
            parts.append(packets)
            labels.append(np.full(len(packets), label, np.uint8))
    return Labelled(concatenate(parts), np.concatenate(labels) if labels else np.zeros(0, np.uint8), skipped)


def concatenate(parts: Sequence[PacketColumns]) -> PacketColumns:
    """Join batches, shifting each one's time to start ``_GAP_S`` after the previous one ends."""
    shifted: list[PacketColumns] = []
    end = 0.0
    for part in parts:
        if not len(part):
            continue
        ts = part.ts - part.ts.min() + (end + _GAP_S if shifted else 0.0)
        end = float(ts.max())
        shifted.append(replace(part, ts=ts))
    if not shifted:
        return PacketColumns.empty()
    addresses: dict[int, str] = {}
    for part in shifted:
        addresses.update(part.addresses)
    return PacketColumns(
        ts=np.concatenate([p.ts for p in shifted]), src=np.concatenate([p.src for p in shifted]),
        dst=np.concatenate([p.dst for p in shifted]), sport=np.concatenate([p.sport for p in shifted]),
        dport=np.concatenate([p.dport for p in shifted]), proto=np.concatenate([p.proto for p in shifted]),
        length=np.concatenate([p.length for p in shifted]),
        tcp_flags=np.concatenate([p.tcp_flags for p in shifted]),
        src_mac=np.concatenate([p.src_mac for p in shifted]), addresses=addresses,
    )  # fmt: skip


def _ranges(text: str, ts: npt.NDArray[np.float64], path: Path) -> npt.NDArray[np.uint8]:
    labels = np.zeros(len(ts), np.uint8)
    for row in csv.DictReader(io.StringIO(text)):
        try:
            start, end = float(row["start"]), float(row["end"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CaptureCorrupt(f"{path}: a range needs numeric start and end: {row}"[:200]) from exc
        if _label(str(row.get("label", "")), path):
            labels[(ts >= start) & (ts <= end)] = 1
    return labels


def _label(value: str, path: Path) -> int:
    lowered = value.strip().lower()
    if lowered in _MALICIOUS:
        return 1
    if lowered in _BENIGN:
        return 0
    raise CaptureCorrupt(f"{path}: {value[:40]!r} is not a label (0/1, benign/malicious)")


def _read_bounded(path: Path) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_LABELS_BYTES + 1)
    except OSError as exc:
        raise CaptureCorrupt(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_LABELS_BYTES:
        raise MonitorLimit(f"{path} is larger than {MAX_LABELS_BYTES} bytes")
    return data
