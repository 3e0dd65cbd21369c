"""Live capture from a network interface (Linux ``AF_PACKET``), in batches of packet columns.

A raw packet socket bound to one interface receives every frame in and out of it (``ETH_P_ALL``).
Frames are stamped on arrival, framed as pcap records in memory, and decoded by the same vectorized
reader as capture files (:func:`fleetguard.monitor.packets.read_stream`), so live traffic and files
give identical columns. Needs ``CAP_NET_RAW`` (root); a batch closes at ``batch`` frames or after
``timeout_s`` without one. Frames longer than the snap length are cut (their wire length is kept).
"""

from __future__ import annotations

import io
import socket
import struct
import time
from types import TracebackType

from fleetguard.monitor.errors import MonitorError
from fleetguard.monitor.model import PacketColumns, Skipped
from fleetguard.monitor.packets import read_stream

__all__ = ["LiveCapture"]

_ETH_P_ALL = 0x0003
_PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # µs, LINKTYPE_ETHERNET
_SNAPLEN = 65535
_MAX_BATCH = 65536


class LiveCapture:
    """One interface's frames as batches (see the module docstring); use as a context manager."""

    def __init__(self, interface: str, *, batch: int = 4096, timeout_s: float = 0.25) -> None:
        if not 1 <= batch <= _MAX_BATCH:
            raise ValueError(f"batch must be 1..{_MAX_BATCH}")
        self.interface = interface
        self._batch = batch
        self._timeout_s = timeout_s
        self._socket: socket.socket | None = None

    def __enter__(self) -> LiveCapture:
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        except (AttributeError, PermissionError) as exc:
            raise MonitorError(
                f"cannot open a packet socket: {exc}", hint="live capture needs Linux and root"
            ) from exc
        try:
            sock.bind((self.interface, 0))
        except OSError as exc:
            sock.close()
            raise MonitorError(f"cannot capture on {self.interface!r}: {exc.strerror}") from exc
        sock.settimeout(self._timeout_s)
        self._socket = sock
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def read_batch(self) -> tuple[PacketColumns, Skipped]:
        """Return the frames that arrived until ``batch`` of them or ``timeout_s`` of silence."""
        if self._socket is None:
            raise MonitorError("the capture is not open")
        records = [_PCAP_HEADER]
        for _ in range(self._batch):
            try:
                frame = self._socket.recv(_SNAPLEN)
            except TimeoutError:
                break
            now = time.time()
            seconds = int(now)
            records.append(
                struct.pack("<IIII", seconds, int((now - seconds) * 1e6), len(frame), len(frame)) + frame
            )
        if len(records) == 1:
            return PacketColumns.empty(), Skipped()
        return read_stream(io.BytesIO(b"".join(records)))
