"""The normalized event model of monitoring: packets as columns, flows as records, skipped input counted.

Theory of operation. Every source (pcap/pcapng files, live capture, Zeek conn.log, NetFlow v5/v9,
IPFIX, broker telemetry) becomes one of two shapes:

* :class:`PacketColumns`: a batch of packets as parallel numpy arrays (one element per packet, in
  capture order), so that features and detectors run vectorized or compiled over whole batches,
  never per packet in Python. Addresses are kept as 64-bit keys (:func:`address_key`, FNV-1a of the
  address bytes) with a side table back to text for evidence;
* :class:`FlowRecord`: one connection/flow summary (Zeek conn.log line, NetFlow/IPFIX record).

Input that cannot be used is never a crash: :class:`Skipped` counts it by reason, bounded.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = [
    "FLOW_SOURCES",
    "FlowRecord",
    "PacketColumns",
    "Skipped",
    "address_key",
    "mac_key",
]

FLOW_SOURCES = ("zeek", "netflow5", "netflow9", "ipfix", "pcap")
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1
_MAX_REASONS = 64


def address_key(address: str | bytes) -> int:
    """Return the 64-bit key of an IP address (text or packed bytes): FNV-1a of its packed bytes."""
    packed = address if isinstance(address, bytes) else ipaddress.ip_address(address).packed
    value = _FNV_OFFSET
    for byte in packed:
        value = ((value ^ byte) * _FNV_PRIME) & _MASK
    return value


def mac_key(mac: bytes) -> int:
    """Return a 48-bit MAC address as an integer (0: none)."""
    return int.from_bytes(mac[:6], "big") if len(mac) >= 6 else 0


@dataclass(frozen=True, slots=True)
class PacketColumns:
    """A batch of packets as parallel arrays (see the module docstring). All arrays have one length.

    ``src``/``dst`` are :func:`address_key` values, ``sport``/``dport`` 0 where the protocol has no
    ports, ``proto`` the IP protocol number (0 for non-IP), ``length`` the frame length on the wire,
    ``tcp_flags`` the TCP flag byte (0 otherwise), ``src_mac`` a :func:`mac_key` (0 without Ethernet).
    ``addresses`` maps each key seen to the address text, for evidence in alerts.
    """

    ts: npt.NDArray[np.float64]
    src: npt.NDArray[np.uint64]
    dst: npt.NDArray[np.uint64]
    sport: npt.NDArray[np.uint16]
    dport: npt.NDArray[np.uint16]
    proto: npt.NDArray[np.uint8]
    length: npt.NDArray[np.uint32]
    tcp_flags: npt.NDArray[np.uint8]
    src_mac: npt.NDArray[np.uint64]
    addresses: Mapping[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def __post_init__(self) -> None:
        lengths = {
            len(column)
            for column in (self.ts, self.src, self.dst, self.sport, self.dport, self.proto, self.length,
                           self.tcp_flags, self.src_mac)
        }  # fmt: skip
        if len(lengths) > 1:
            raise ValueError(f"packet columns differ in length: {sorted(lengths)}")

    @classmethod
    def empty(cls) -> PacketColumns:
        """Return a batch of no packets."""
        return cls(
            np.zeros(0, np.float64), np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint16),
            np.zeros(0, np.uint16), np.zeros(0, np.uint8), np.zeros(0, np.uint32), np.zeros(0, np.uint8),
            np.zeros(0, np.uint64),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class FlowRecord:
    """One flow (a Zeek conn.log line, a NetFlow/IPFIX record), with the label when the source has one."""

    start: float
    duration: float
    src: str
    dst: str
    sport: int
    dport: int
    proto: str
    src_bytes: int
    dst_bytes: int
    src_packets: int
    dst_packets: int
    state: str = ""
    source: str = "zeek"
    label: str | None = None


@dataclass(slots=True)
class Skipped:
    """Input that was not used, counted by reason (at most 64 distinct reasons; the rest as "other")."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, reason: str, count: int = 1) -> None:
        """Count ``count`` items skipped for ``reason``."""
        key = reason if reason in self.counts or len(self.counts) < _MAX_REASONS else "other"
        self.counts[key] += count

    @property
    def total(self) -> int:
        """How many items were skipped."""
        return sum(self.counts.values())
