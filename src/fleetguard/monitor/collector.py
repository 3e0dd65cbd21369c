"""The UDP collector of NetFlow v5/v9 and IPFIX exports (what ``fleetguard up`` runs).

Theory of operation. Two threads. The receiver owns a bound UDP socket with a large ``SO_RCVBUF``
(so that bursts wait in the kernel rather than being dropped there): it reads one datagram at a time,
drops datagrams from addresses outside the allow-list (counted), decodes the rest with
:class:`~fleetguard.monitor.netflow.FlowDecoder` and appends the records to a queue bounded in
records. When the queue is full, a datagram's records are dropped and counted (``queue_drops``):
memory stays bounded when the consumer is slower than the exporters. The dispatcher takes the queued
records and hands them to the callback in batches of at most ``batch_size``, at the latest
``flush_interval`` seconds after they arrived.

Spoofing. NetFlow and IPFIX over UDP carry no authentication, and UDP source addresses are trivially
forged: the allow-list of exporter addresses keeps off-path senders that do not forge, and bounds
what a forger can do to the state of the allowed exporters' templates, nothing more. Exporters should
sit on a management network where source addresses are filtered (uRPF / ingress ACLs); where that is
not possible, IPFIX over DTLS or TLS (RFC 7011 10.4) is the answer, which this collector does not do.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fleetguard.monitor.errors import MonitorError
from fleetguard.monitor.model import FlowRecord
from fleetguard.monitor.netflow import FlowDecoder

__all__ = ["CollectorCounters", "FlowCollector"]

_MAX_DATAGRAM = 65535
_POLL_S = 0.1  # how often the receiver looks at the stop flag
_SO_RCVBUFFORCE = 33  # Linux socket(7): a receive buffer beyond net.core.rmem_max, with CAP_NET_ADMIN


@dataclass(frozen=True, slots=True)
class CollectorCounters:
    """What a :class:`FlowCollector` did so far.

    ``datagrams``: received from allowed exporters; ``not_allowed``: datagrams from other addresses,
    dropped; ``records``: decoded and queued; ``delivered``: handed to the callback; ``queue_drops``:
    records dropped because the queue was full; ``skipped``: the decoder's skipped input by reason.
    """

    datagrams: int
    not_allowed: int
    records: int
    delivered: int
    queue_drops: int
    skipped: dict[str, int] = field(default_factory=dict)


class FlowCollector:
    """Collects flow exports on ``host``:``port`` (UDP) from the ``allowed_exporters`` addresses.

    ``on_batch`` receives the decoded :class:`FlowRecord` values in batches, on the dispatcher thread.
    Raises ValueError when the allow-list is empty (an empty list is an error, not "allow all").
    """

    def __init__(
        self,
        on_batch: Callable[[Sequence[FlowRecord]], None],
        *,
        allowed_exporters: Iterable[str],
        host: str = "0.0.0.0",  # noqa: S104 (a collector listens where the exporters can reach it)
        port: int = 2055,
        batch_size: int = 1024,
        flush_interval: float = 0.2,
        queue_limit: int = 262144,
        receive_buffer: int = 32 * 1024 * 1024,
        decoder: FlowDecoder | None = None,
    ) -> None:
        self._allowed = frozenset(ipaddress.ip_address(address).compressed for address in allowed_exporters)
        if not self._allowed:
            raise ValueError("allowed_exporters is empty: name the exporters' addresses")
        if batch_size < 1 or queue_limit < 1:
            raise ValueError("batch_size and queue_limit must be positive")
        self._on_batch = on_batch
        self._endpoint = (host, port)
        self._batch_size, self._flush, self._limit = batch_size, flush_interval, queue_limit
        self._receive_buffer = receive_buffer
        self._decoder = decoder or FlowDecoder()
        self._queue: list[FlowRecord] = []
        self._ready = threading.Condition()
        self._stopping = threading.Event()  # the receiver stops (stop(), or the callback failed)
        self._drained = threading.Event()  # the receiver has stopped: the dispatcher empties the queue
        self._threads: list[threading.Thread] = []
        self._socket: socket.socket | None = None
        self._counts: Counter[str] = Counter()
        self._failure: BaseException | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Return the bound (host, port); raises MonitorError before :meth:`start`."""
        if self._socket is None:
            raise MonitorError("the collector is not started")
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def receive_buffer(self) -> int:
        """Return the socket's receive buffer size as the kernel granted it (it may cap the request)."""
        if self._socket is None:
            raise MonitorError("the collector is not started")
        return int(self._socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def counters(self) -> CollectorCounters:
        """Return a snapshot of the counters."""
        with self._ready:
            counts = dict(self._counts)
            skipped = dict(self._decoder.skipped.counts)
        return CollectorCounters(
            datagrams=counts.get("datagrams", 0),
            not_allowed=counts.get("not_allowed", 0),
            records=counts.get("records", 0),
            delivered=counts.get("delivered", 0),
            queue_drops=counts.get("queue_drops", 0),
            skipped=skipped,
        )

    def start(self) -> None:
        """Bind the socket and start the threads; raises MonitorError when already started or on bind."""
        if self._socket is not None:
            raise MonitorError("the collector is already started")
        family = socket.AF_INET6 if ":" in self._endpoint[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            _grow_receive_buffer(sock, self._receive_buffer)
            sock.settimeout(_POLL_S)
            sock.bind(self._endpoint)
        except OSError as exc:
            sock.close()
            raise MonitorError(
                f"cannot listen on {self._endpoint[0]}:{self._endpoint[1]}/udp: {exc}"
            ) from exc
        self._socket = sock
        self._stopping.clear()
        self._drained.clear()
        self._threads = [
            threading.Thread(target=self._receive, args=(sock,), name="flow-receiver", daemon=True),
            threading.Thread(target=self._dispatch, name="flow-dispatcher", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop the threads (delivering what is queued) and close the socket.

        Raises MonitorError (from the callback's exception) when the callback raised.
        """
        self._stopping.set()
        for thread in self._threads[:1]:
            thread.join()
        self._drained.set()
        with self._ready:
            self._ready.notify_all()
        for thread in self._threads[1:]:
            thread.join()
        self._threads = []
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise MonitorError(f"the flow callback failed: {failure!r}") from failure

    def __enter__(self) -> FlowCollector:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _receive(self, sock: socket.socket) -> None:
        decode, allowed = self._decoder.decode, self._allowed
        while not self._stopping.is_set():
            try:
                datagram, peer = sock.recvfrom(_MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                return  # the socket was closed
            exporter = peer[0]
            if exporter not in allowed and _unmapped(exporter) not in allowed:
                with self._ready:
                    self._counts["not_allowed"] += 1
                continue
            with self._ready:  # the decoder's counters are read under this lock too
                records = decode(datagram, exporter, datetime.now(UTC))
                self._enqueue(records)

    def _enqueue(self, records: list[FlowRecord]) -> None:
        self._counts["datagrams"] += 1
        if len(self._queue) + len(records) > self._limit:
            self._counts["queue_drops"] += len(records)
            return
        self._counts["records"] += len(records)
        self._queue.extend(records)
        if len(self._queue) >= self._batch_size:
            self._ready.notify()

    def _dispatch(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(
                    lambda: len(self._queue) >= self._batch_size or self._drained.is_set(), self._flush
                )
                taken, self._queue = self._queue, []
                stopping = self._drained.is_set()
            if taken and not self._deliver(taken):
                return
            if stopping and not taken:
                return

    def _deliver(self, records: list[FlowRecord]) -> bool:
        for index in range(0, len(records), self._batch_size):
            batch = records[index : index + self._batch_size]
            try:
                self._on_batch(batch)
            except Exception as exc:  # noqa: BLE001 (the thread's boundary: stop() re-raises it)
                self._failure = exc
                self._stopping.set()
                return False
            with self._ready:
                self._counts["delivered"] += len(batch)
        return True


def _unmapped(address: str) -> str:
    """Return an IPv4-mapped IPv6 address (a dual-stack socket's view of IPv4) as IPv4 text."""
    if not address.startswith("::ffff:"):
        return address
    mapped = ipaddress.IPv6Address(address).ipv4_mapped
    return address if mapped is None else str(mapped)


def _grow_receive_buffer(sock: socket.socket, size: int) -> None:
    """Ask for ``size`` bytes of receive buffer: forced past rmem_max where permitted, else capped by it."""
    if sys.platform == "linux":
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
        except PermissionError:
            pass  # no CAP_NET_ADMIN: the kernel caps the plain request at net.core.rmem_max
        else:
            return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
