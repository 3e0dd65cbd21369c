"""The EST endpoint served by several worker processes on one port, for more than one core.

Theory of operation. One Python process re-enrolls on one core at most (the GIL), and a
``simplereenroll`` costs a few milliseconds of CPU, most of it in Python. With
``FLEETGUARD_EST_WORKERS`` above 1, ``fleetguard up`` starts that many worker processes instead of
an EST thread (the pre-fork model). The parent binds and listens on the EST port, so that a port in
use fails ``up`` at once, and hands the listening socket to each worker; each accepts connections
from it, so an idle worker takes the next one. Each worker opens the installation's database
(SQLite or PostgreSQL) and signing keys itself. (Binding each worker with ``SO_REUSEPORT`` instead
would spread connections by a hash, whether or not the worker chosen is busy.)

What the workers share through their parent, over one pipe each:

* **Rate limits.** A limit is only a limit if every process takes its tokens from one bucket: the
  renewal buckets (per device and for the fleet) and the enrollment flood buckets are the parent's
  own (``CertificateService.renewal_limiter`` and ``EnrollmentService.flood``), which its API uses
  too. A worker asks for each token and waits for the answer; when its parent does not answer, it
  is refused the token (fail closed).
* **Publication.** The event log is the outbox: a worker commits, then tells its parent, whose
  relay publishes (workers publish nothing themselves).

The parent restarts a worker that dies, at most once a second. ``stop`` sends each worker SIGUSR1
(not a shared event: a worker killed while waiting on one would leave its other waiters hanging);
each then stops its server as :meth:`EstServer.stop` does. Ctrl-C and a service manager's SIGTERM
reach the whole process group: the workers ignore both and leave stopping to their parent, and stop
by themselves when it is gone.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.serialization import Encoding

from fleetguard.config import Settings
from fleetguard.enroll.est_server import DeviceRoutes, EstServer
from fleetguard.enroll.flood import EnrollmentLimits, FloodGuard
from fleetguard.enroll.service import EnrollmentService
from fleetguard.errors import FleetguardError
from fleetguard.events.log import EventLog
from fleetguard.firmware.service import FirmwareService
from fleetguard.installation import load_installation
from fleetguard.inventory.service import Inventory
from fleetguard.ota.campaigns import CampaignService
from fleetguard.ota.device_api import OtaDeviceRoutes
from fleetguard.ota.releases import ReleaseService
from fleetguard.ota.repositories import OtaRepositories
from fleetguard.pki.ca import ChainFormat
from fleetguard.pki.renewal import Admission, AdmissionOutcome, Limiter
from fleetguard.pki.service import CertificateService
from fleetguard.store.database import open_database
from fleetguard.types import utc_now

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from fleetguard.installation import Runtime

__all__ = ["EstWorkers", "EstWorkersFailed", "RemoteLimiter", "WorkerChannel", "est_server", "serve_limiters"]

_log = logging.getLogger(__name__)

_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 15.0
_RESTART_INTERVAL_S = 1.0
_WATCH_INTERVAL_S = 0.5
_RENEWAL, _FLOOD, _FLOOD_LOG = "renewal", "flood", "flood-log"
_REFUSED = Admission(AdmissionOutcome.FLEET_LIMITED, 1.0)  # fail closed: no token without the parent


class EstWorkersFailed(FleetguardError):
    """The EST worker processes could not be started (the first one's reason is given)."""

    status = 503
    code = "est-workers-failed"


def est_server(
    pki: CertificateService,
    enroll: EnrollmentService,
    *,
    host: str,
    port: int,
    listener: socket.socket | None = None,
    device_routes: DeviceRoutes | None = None,
) -> EstServer:
    """Return (not started) the EST server of ``enroll``, with the ``est`` TLS identity the PKI issued.

    For client certificates it trusts this installation's CAs and the registered manufacturer CAs,
    read again as they change. ``listener`` replaces binding ``host`` and ``port``.
    """

    def trust_anchors() -> bytes:
        manufacturers = (ca.certificate.public_bytes(Encoding.PEM) for ca in enroll.manufacturer_cas())
        return pki.trust_bundle(ChainFormat.PEM) + b"".join(manufacturers)

    servers = pki.server_directory
    return EstServer(
        enroll,
        trust_anchors,
        lambda: pki.trust_bundle(ChainFormat.PEM),
        servers / "est.chain.pem",
        servers / "est.key.pem",
        host=host,
        port=port,
        listener=listener,
        device_routes=device_routes,
    )


# -- the worker's side of its pipe -------------------------------------------------------------


class WorkerChannel:
    """A worker's end of its pipe to its parent, shared by the worker's threads (one message at a time)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()

    def send(self, message: tuple[object, ...]) -> None:
        with self._lock:
            self._connection.send(message)

    def ask(self, message: tuple[object, ...]) -> object:
        with self._lock:
            self._connection.send(message)
            return self._connection.recv()

    def close(self) -> None:
        """Close this end; the parent's :func:`serve_limiters` then returns."""
        self._connection.close()

    def committed(self) -> None:
        """Tell the parent that entries were committed, so that its relay publishes them."""
        try:
            self.send(("committed",))
        except (OSError, EOFError, ValueError) as exc:  # the parent's relay still wakes every second
            _log.warning("est worker: cannot tell the parent about a commit: %s", exc)


class RemoteLimiter:
    """A :class:`~fleetguard.pki.renewal.Limiter` whose buckets are another process's (module docstring)."""

    def __init__(self, channel: WorkerChannel, name: str) -> None:
        self._channel = channel
        self._name = name

    def try_acquire(self, key: str, now: float) -> Admission:
        """Take a token for ``key`` from the parent's bucket, at the parent's clock (``now`` unused).

        Refuses (fleet-limited, retry in 1 s) when the parent cannot be asked.
        """
        try:
            answer = self._channel.ask(("acquire", self._name, key))
        except (OSError, EOFError, ValueError) as exc:
            _log.error("est worker: the rate limiter is unreachable, refusing: %s", exc)
            return _REFUSED
        match answer:
            case (str(outcome), float(retry_after_s)):
                return Admission(AdmissionOutcome(outcome), retry_after_s)
            case _:
                _log.error("est worker: the rate limiter answered %r, refusing", answer)
                return _REFUSED


# -- the parent's side of a pipe ---------------------------------------------------------------


def serve_limiters(
    connection: Connection,
    limiters: Mapping[str, Limiter],
    *,
    notify: Callable[[], object],
    on_message: Callable[[tuple[object, ...]], None] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> None:
    """Answer one worker's token requests from ``limiters`` and its commits with ``notify``, until EOF.

    Other messages go to ``on_message``. Returns when the worker's end is closed.
    """
    while True:
        try:
            message: tuple[object, ...] = connection.recv()
        except (EOFError, OSError):
            return
        match message:
            case ("acquire", str(name), str(key)):
                limiter = limiters.get(name)
                if limiter is None:
                    _log.error("est workers: a worker asked for the unknown limiter %r", name[:64])
                admission = _REFUSED if limiter is None else limiter.try_acquire(key, monotonic())
                connection.send((admission.outcome.value, admission.retry_after_s))
            case ("committed",):
                notify()
            case _ if on_message is not None:
                on_message(message)
            case _:
                _log.warning("est workers: unexpected message %r", message[:1])


# -- a worker process ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _WorkerSpec:
    settings: Settings
    log_level: int


class _WorkerServices:
    """What a worker needs of the installation, wired to its parent instead of a relay of its own."""

    def __init__(self, settings: Settings, channel: WorkerChannel) -> None:
        installation = load_installation(settings.data_dir)
        self.database = open_database(
            settings.resolved_database_url, busy_timeout_ms=settings.sqlite_busy_timeout_ms, migrate=False
        )
        log = EventLog(self.database, installation.origin)
        inventory = Inventory(self.database, log, on_commit=channel.committed)
        self.pki = CertificateService(
            self.database, log, inventory, settings, installation.trust_domain,
            on_commit=channel.committed, limiter=RemoteLimiter(channel, _RENEWAL),
        )  # fmt: skip
        flood = FloodGuard(
            EnrollmentLimits(),
            limiter=RemoteLimiter(channel, _FLOOD),
            log_limiter=RemoteLimiter(channel, _FLOOD_LOG),
        )
        self.enroll = EnrollmentService(
            self.database, log, inventory, self.pki, settings, on_commit=channel.committed, flood=flood
        )
        # The OTA device desk shares the mTLS endpoint (fleetguard.ota.device_api): each worker serves
        # check-ins and reports from its own services, as it serves EST.
        repositories = OtaRepositories(settings.data_dir, clock=utc_now)
        firmware = FirmwareService(
            self.database,
            log,
            inventory,
            data_dir=settings.data_dir,
            clock=utc_now,
            on_commit=channel.committed,
        )
        releases = ReleaseService(
            self.database, log, repositories, firmware, clock=utc_now, on_commit=channel.committed
        )
        campaigns = CampaignService(
            self.database, log, inventory, repositories, releases, clock=utc_now, on_commit=channel.committed
        )
        self.device_routes = OtaDeviceRoutes(repositories, campaigns, self.pki, clock=utc_now)

    def close(self) -> None:
        self.pki.keyring.close()
        self.database.close()


def _run_worker(spec: _WorkerSpec, listener: socket.socket, connection: Connection) -> None:
    """A worker process: serve EST from ``listener`` until SIGUSR1 or until the parent is gone."""
    # A terminal's Ctrl-C and a service manager's SIGTERM reach the whole process group: the
    # parent stops the workers itself, and a worker notices within 0.5 s when its parent is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGUSR1, lambda _signum, _frame: stop.set())
    _log_to_stderr(spec.log_level)
    channel = WorkerChannel(connection)
    try:
        services = _WorkerServices(spec.settings, channel)
        host, port = listener.getsockname()[:2]
        server = est_server(
            services.pki, services.enroll, host=host, port=port, listener=listener,
            device_routes=services.device_routes,
        )  # fmt: skip
        server.start()
    except Exception as exc:  # the boundary: the parent reports it, then this process exits 1
        channel.send(("failed", f"{type(exc).__name__}: {exc}"))
        raise
    channel.send(("ready", os.getpid()))
    parent = multiprocessing.parent_process()
    try:
        while not stop.wait(_WATCH_INTERVAL_S):
            if parent is not None and not parent.is_alive():
                _log.error("est worker %d: the parent process is gone; stopping", os.getpid())
                break
    finally:
        server.stop()
        services.close()


def _log_to_stderr(level: int) -> None:
    logger = logging.getLogger("fleetguard")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)


# -- the parent ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Worker:
    process: BaseProcess
    connection: Connection
    host_thread: threading.Thread
    ready: threading.Event
    failure: list[str]


class EstWorkers:
    """``count`` worker processes serving EST on ``host``:``port``, sharing this process's limits.

    ``runtime`` is this process's: its renewal and flood buckets and its relay serve the workers.
    """

    def __init__(self, runtime: Runtime, *, host: str, port: int, count: int) -> None:
        if count < 2:  # one is the EST thread of fleetguard up
            raise ValueError(f"EstWorkers needs at least 2 workers, got {count}")
        self._runtime = runtime
        self._host = host
        self._port = port
        self._count = count
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._listener: socket.socket | None = None
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()
        self._limiters: dict[str, Limiter] = {
            _RENEWAL: runtime.pki.renewal_limiter,
            _FLOOD: runtime.enroll.flood.limiter,
            _FLOOD_LOG: runtime.enroll.flood.log_limiter,
        }

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the workers serve; the port is the one bound when 0 was asked for."""
        return self._host, self._port

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers started (a replaced one is gone from the list)."""
        return [worker.process.pid for worker in self._workers if worker.process.pid is not None]

    def start(self) -> None:
        """Listen, start every worker and wait until each serves; raise ``EstWorkersFailed`` if one cannot.

        Raises ``OSError`` when the port cannot be bound.
        """
        family = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)[0][0]
        self._listener = socket.create_server((self._host, self._port), family=family, backlog=1024)
        self._port = int(self._listener.getsockname()[1])
        try:
            self._workers = [self._spawn() for _ in range(self._count)]
            for worker in self._workers:
                _await_ready(worker)
        except EstWorkersFailed:
            self.stop()
            raise
        self._watcher = threading.Thread(target=self._watch, name="est-workers", daemon=True)
        self._watcher.start()
        pids = ", ".join(str(worker.process.pid) for worker in self._workers)
        _log.info("est: %d workers (pids %s) serving https://%s:%d/.well-known/est/", self._count, pids,
                  self._host, self._port)  # fmt: skip

    def stop(self) -> None:
        """Stop the workers (each closes its connections) and wait for them; idempotent."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        for worker in self._workers:
            if worker.process.pid is not None and worker.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGUSR1)
        for worker in self._workers:
            worker.process.join(_STOP_TIMEOUT_S)
            if worker.process.is_alive():
                _log.warning("est worker %s did not stop in %.0f s; killing it", worker.process.pid,
                             _STOP_TIMEOUT_S)  # fmt: skip
                worker.process.kill()
                worker.process.join()
            worker.connection.close()
            worker.host_thread.join()
        self._workers = []
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _spawn(self) -> _Worker:
        parent_end, child_end = self._context.Pipe()
        spec = _WorkerSpec(self._runtime.settings, logging.getLogger("fleetguard").level)
        process = self._context.Process(
            target=_run_worker,
            args=(spec, self._listener, child_end),
            name="fleetguard-est-worker",
            daemon=True,
        )
        process.start()
        child_end.close()
        ready, failure = threading.Event(), list[str]()
        host_thread = threading.Thread(
            target=self._host_worker, args=(parent_end, ready, failure), name="est-worker-host", daemon=True
        )
        host_thread.start()
        return _Worker(process, parent_end, host_thread, ready, failure)

    def _host_worker(self, connection: Connection, ready: threading.Event, failure: list[str]) -> None:
        def on_message(message: tuple[object, ...]) -> None:
            match message:
                case ("ready", _):
                    ready.set()
                case ("failed", str(reason)):
                    failure.append(reason)
                    ready.set()
                case _:
                    _log.warning("est workers: unexpected message %r", message[:1])

        serve_limiters(connection, self._limiters, notify=self._runtime.relay.notify, on_message=on_message)
        ready.set()  # the worker is gone: nobody waits for it any more

    def _watch(self) -> None:
        """Restart a worker that died, at most once a second."""
        while not self._stopping.wait(_WATCH_INTERVAL_S):
            for index, worker in enumerate(self._workers):
                if worker.process.is_alive() or self._stopping.is_set():
                    continue
                _log.error("est worker %s exited with %s; starting another", worker.process.pid,
                           worker.process.exitcode)  # fmt: skip
                worker.host_thread.join()  # it ends at the end of the pipe that the worker held
                worker.connection.close()
                replacement = self._spawn()
                self._workers[index] = replacement
                with contextlib.suppress(EstWorkersFailed):
                    _await_ready(replacement)
                self._stopping.wait(_RESTART_INTERVAL_S)


def _await_ready(worker: _Worker) -> None:
    if not worker.ready.wait(_READY_TIMEOUT_S):
        raise EstWorkersFailed(f"an EST worker did not start in {_READY_TIMEOUT_S:.0f} s")
    if worker.failure or not worker.process.is_alive():
        reason = worker.failure[0] if worker.failure else f"exited with {worker.process.exitcode}"
        raise EstWorkersFailed(f"an EST worker failed to start: {reason}")
