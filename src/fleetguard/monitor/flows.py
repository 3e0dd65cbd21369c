"""Flows from packets, vectorized: one flow per 5-tuple and direction, split after an idle gap.

First the packets of one (source, destination, protocol, source port, destination port) with no gap
longer than ``idle_s`` between them make a half (what NetFlow exports); then a TCP half that answers
another (it starts with SYN+ACK, or has no SYN) is folded into that one as its response side, as
Zeek's conn.log has it. ``state`` is Zeek's conn_state, roughly: ``S0`` (a SYN, no answer), ``REJ``
(answered with a reset), ``RSTO``/``RSTR`` (reset after a handshake), ``SF`` (both sides closed),
``OTH`` otherwise. That is enough for the rule detectors
(scans, sweeps, brute force, beaconing) to run on captures as they run on Zeek logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fleetguard.monitor.model import FlowRecord, PacketColumns

__all__ = ["flows_from_packets"]

_PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}
_SYN, _FIN, _RST, _ACK = 0x02, 0x01, 0x04, 0x10
_MAX_FLOWS = 1_000_000


def flows_from_packets(packets: PacketColumns, *, idle_s: float = 60.0) -> list[FlowRecord]:
    """Return the flows of ``packets`` ordered by start (at most 1,000,000; the earliest kept)."""
    n = len(packets)
    if n == 0:
        return []
    order = np.lexsort(
        (packets.ts, packets.dport, packets.sport, packets.proto, packets.dst, packets.src)
    )  # last key first: by 5-tuple, then time
    src, dst = packets.src[order], packets.dst[order]
    sport, dport, proto = packets.sport[order], packets.dport[order], packets.proto[order]
    ts, length, flags = packets.ts[order], packets.length[order], packets.tcp_flags[order]
    same = (
        (src[1:] == src[:-1]) & (dst[1:] == dst[:-1]) & (sport[1:] == sport[:-1])
        & (dport[1:] == dport[:-1]) & (proto[1:] == proto[:-1]) & (ts[1:] - ts[:-1] <= idle_s)
    )  # fmt: skip
    starts = np.concatenate(([0], np.flatnonzero(~same) + 1))
    ends = np.concatenate((starts[1:], [n]))
    octets = np.add.reduceat(length.astype(np.int64), starts)
    syn = np.bitwise_or.reduceat(flags, starts)
    first_flags = flags[starts]
    names = packets.addresses
    unidirectional = [
        _Half(
            key=(int(src[s]), int(dst[s]), int(sport[s]), int(dport[s]), int(proto[s])), start=float(ts[s]),
            end=float(ts[e - 1]), octets=int(octets[i]), packets=int(e - s), flags=int(syn[i]),
            reply=_is_reply(int(proto[s]), int(first_flags[i])),
        )
        for i, (s, e) in enumerate(zip(starts[:_MAX_FLOWS], ends[:_MAX_FLOWS], strict=True))
    ]  # fmt: skip
    return _join(unidirectional, names)


@dataclass(slots=True)
class _Half:
    key: tuple[int, int, int, int, int]
    start: float
    end: float
    octets: int
    packets: int
    flags: int
    reply: bool
    reverse_octets: int = 0
    reverse_packets: int = 0
    reverse_flags: int = 0


def _is_reply(proto: int, first_flags: int) -> bool:
    """A TCP half that starts with SYN+ACK, or without SYN, answers the other direction."""
    return proto == 6 and (first_flags & (_SYN | _ACK) == _SYN | _ACK or not first_flags & _SYN)


def _join(halves: list[_Half], names: Mapping[int, str]) -> list[FlowRecord]:
    """Fold each reply into the flow it answers (Zeek's orig/resp), newest matching opener first."""
    openers: dict[tuple[int, int, int, int, int], _Half] = {h.key: h for h in halves if not h.reply}
    kept = []
    for half in halves:
        src, dst, sport, dport, proto = half.key
        opener = openers.get((dst, src, dport, sport, proto)) if half.reply else None
        if opener is not None and opener.start <= half.start:
            opener.reverse_octets += half.octets
            opener.reverse_packets += half.packets
            opener.reverse_flags |= half.flags
            opener.end = max(opener.end, half.end)
        else:
            kept.append(half)
    flows = [_record(half, names) for half in kept]
    flows.sort(key=lambda flow: flow.start)
    return flows


def _record(half: _Half, names: Mapping[int, str]) -> FlowRecord:
    src, dst, sport, dport, proto = half.key
    return FlowRecord(
        start=half.start, duration=half.end - half.start, src=names.get(src, str(src)),
        dst=names.get(dst, str(dst)), sport=sport, dport=dport, proto=_PROTO_NAMES.get(proto, str(proto)),
        src_bytes=half.octets, dst_bytes=half.reverse_octets, src_packets=half.packets,
        dst_packets=half.reverse_packets, state=_state(proto, half.flags, half.reverse_flags), source="pcap",
    )  # fmt: skip


def _state(proto: int, flags: int, reverse: int) -> str:
    """Zeek's conn_state, roughly: S0 no answer, REJ reset answer, SF closed, RSTO reset, OTH else."""
    if proto != 6:
        return "OTH"
    if flags & _SYN and not reverse:
        return "S0"
    if reverse & _RST:
        return "RSTR" if reverse & _SYN else "REJ"
    if flags & _RST:
        return "RSTO"
    if flags & _FIN and reverse & _FIN:
        return "SF"
    return "OTH"
