"""Mosquitto as a supervised child process: its files, start, reload, restart and stop.

Theory of operation. :meth:`MosquittoBroker.prepare` writes the gateway directory (mode 0700):
``mosquitto.conf``, the ACL file, the control listener's certificate and key, the gateway CA
certificate and the ``crlfile`` (all mode 0600, since Mosquitto runs as the same user), and
``dynsec.json`` only when it is missing, because the dynamic-security plugin owns it afterwards and
rewrites it after every change (keeping the file's mode; verified). :meth:`start` runs
``mosquitto -c mosquitto.conf`` without a shell and waits for its ``running`` log line; a supervisor
thread restarts it when it exits, after 0.5 s doubling to 30 s, back to 0.5 s once a run lasted a
minute.

Mosquitto logs to stderr (unbuffered; see :mod:`fleetguard.gateway.config`) and a reader thread keeps
the last lines. They are how a reload is confirmed: a SIGHUP only sets a flag that the broker's loop
acts on later, and a reload that fails (a CRL file that does not load) is only logged, after which
Mosquitto 2.0.11 accepts revoked certificates (see :mod:`fleetguard.gateway.crlfile`). So
:meth:`reload` sends SIGHUP, waits for ``Reloading config.``, then opens a TCP connection to the
control listener and waits for the broker to log accepting it *after* the reload line (the broker is
single-threaded, so the reload has finished by then; if the accept was logged first, the signal
arrived while the broker was about to wait for sockets, and it tries again). Any ``Error`` line in
between means the reload failed, and the broker is restarted, which fails closed.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import IO

from fleetguard.gateway.authority import GatewayAuthority
from fleetguard.gateway.config import BrokerConfig, render_acl, render_dynsec_config, render_mosquitto_conf
from fleetguard.gateway.crlfile import require_crl_bundle
from fleetguard.gateway.errors import BrokerReloadFailed, BrokerStartFailed, BrokerUnavailable
from fleetguard.gateway.plugin import carry_quarantines_to_dynsec, seed_state
from fleetguard.private_file import create_private_file, replace_private_file
from fleetguard.types import utc_now

__all__ = ["MosquittoBroker", "find_mosquitto"]

_log = logging.getLogger(__name__)

_READY_TIMEOUT_S = 10.0
_RELOAD_TIMEOUT_S = 5.0
_STOP_TIMEOUT_S = 5.0
_BACKOFF_INITIAL_S = 0.5
_BACKOFF_MAX_S = 30.0
_STABLE_S = 60.0
_LOG_LINES = 2000
_ERROR_LINES = 200
_MAX_LINE = 4096
_TIMESTAMP = re.compile(r"^\d+: ")
_RUNNING = re.compile(r"^mosquitto version \S+ running$")


def _accepted(suffix: str) -> Callable[[str], bool]:
    """Match the broker's log line for accepting the connection whose line ends with ``suffix``."""
    return lambda line: line.startswith("New connection from ") and line.endswith(suffix)


def find_mosquitto() -> Path | None:
    """Return the mosquitto executable on PATH or in /usr/sbin (Debian), or None."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


class _LogTail:
    """The broker's last log lines, numbered, with waiting for a line to appear."""

    def __init__(self) -> None:
        self._lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=_LOG_LINES)
        # Error lines are kept apart: a burst of connection lines must not push them out of view.
        self._errors: collections.deque[tuple[int, str]] = collections.deque(maxlen=_ERROR_LINES)
        self._seq = 0
        self._changed = threading.Condition()

    @property
    def seq(self) -> int:
        with self._changed:
            return self._seq

    def append(self, line: str) -> None:
        with self._changed:
            self._seq += 1
            self._lines.append((self._seq, line))
            if line.startswith("Error"):
                self._errors.append((self._seq, line))
            self._changed.notify_all()

    def wait_for(self, match: Callable[[str], bool], *, after: int, deadline: float) -> int | None:
        """Return the number of the first line after ``after`` that matches, or None at the deadline."""
        with self._changed:
            while True:
                for seq, line in self._lines:
                    if seq > after and match(line):
                        return seq
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def errors_between(self, first: int, last: int) -> list[str]:
        """Return the error lines logged after line ``first`` and before line ``last``."""
        with self._changed:
            return [line for seq, line in self._errors if first < seq < last]

    def tail(self, count: int) -> list[str]:
        with self._changed:
            return [line for _, line in list(self._lines)[-count:]]


class MosquittoBroker:
    """One supervised Mosquitto process configured from a :class:`BrokerConfig`."""

    def __init__(
        self,
        config: BrokerConfig,
        authority: GatewayAuthority,
        *,
        executable: Path | None = None,
        ready_timeout_s: float = _READY_TIMEOUT_S,
        reload_timeout_s: float = _RELOAD_TIMEOUT_S,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        # Running as root, Mosquitto would switch to the 'mosquitto' user and not read 0600 files.
        self.config = config if config.user else replace(config, user=pwd.getpwuid(os.geteuid()).pw_name)
        self._authority = authority
        self._executable = executable
        self._ready_timeout_s = ready_timeout_s
        self._reload_timeout_s = reload_timeout_s
        self._clock = clock
        self._log = _LogTail()
        self._lock = threading.RLock()  # process changes and reloads, one at a time
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._restart_now = threading.Event()
        self._ready = threading.Condition()
        self._generation = 0
        self._supervisor: threading.Thread | None = None
        self.restarts = 0
        """How many times the supervisor started Mosquitto again after it exited."""
        self.log_observers: list[Callable[[str], None]] = []
        """Called from the log reader thread with each raw line (timestamp included); must not block
        (the monitor queues them: ``fleetguard.monitor.endpoint.BrokerFeed``)."""

    # -- files -------------------------------------------------------------------------------

    def prepare(self, crl_pem: bytes) -> None:
        """Write the gateway directory for the first start; raise ``CrlRejected`` for a bad CRL."""
        config = self.config
        config.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(config.directory, 0o700)
        self.install_crl(crl_pem)
        replace_private_file(config.conf_file, render_mosquitto_conf(config).encode())
        replace_private_file(config.acl_file, render_acl(config.grants).encode())
        if config.auth_plugin is not None and not config.plugin_state_file.exists():
            # Before dynsec.json is created: quarantines held there (dynamic-security mode) carry over.
            create_private_file(config.plugin_state_file, seed_state(config.dynsec_file))
        if not config.dynsec_file.exists():
            create_private_file(config.dynsec_file, render_dynsec_config().encode())
        if config.auth_plugin is None:
            # Back from the plugin to dynamic security: its quarantines carry over before the start.
            carry_quarantines_to_dynsec(config.plugin_state_file, config.dynsec_file)
        server = self._authority.issue_server(config.control_host, now=self._clock())
        replace_private_file(config.control_key, server.key_pem)
        replace_private_file(config.control_certificate, server.certificate_pem)
        replace_private_file(config.control_ca_file, self._authority.certificate_pem)

    def install_crl(self, crl_pem: bytes) -> None:
        """Check ``crl_pem`` (:func:`~fleetguard.gateway.crlfile.require_crl_bundle`), replace the crlfile.

        The broker reads it at the next :meth:`reload` or start. Raises ``CrlRejected``.
        """
        bundle = self.config.ca_bundle.read_bytes()
        replace_private_file(self.config.crl_file, require_crl_bundle(crl_pem, bundle, now=self._clock()))

    # -- process -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether a Mosquitto process is alive now."""
        process = self._process
        return process is not None and process.poll() is None

    @property
    def pid(self) -> int | None:
        """The running Mosquitto's process id."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def log_tail(self, count: int = 20) -> list[str]:
        """Return the broker's last ``count`` log lines (without timestamps)."""
        return self._log.tail(count)

    def start(self) -> None:
        """Start Mosquitto and its supervisor; return once it runs. Raises ``BrokerStartFailed``."""
        with self._lock:
            if self._supervisor is not None:
                return
            self._stopping.clear()
            self._spawn_until_ready()
            self._supervisor = threading.Thread(
                target=self._supervise, name="mosquitto-supervisor", daemon=True
            )
            self._supervisor.start()

    def stop(self, timeout_s: float = _STOP_TIMEOUT_S) -> None:
        """Stop the supervisor and Mosquitto (SIGTERM, then SIGKILL after ``timeout_s``)."""
        self._stopping.set()
        self._restart_now.set()
        with self._lock:
            self._terminate(timeout_s)
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.join(timeout_s)

    def restart(self) -> None:
        """Stop Mosquitto and have the supervisor start it again; return once it runs.

        Raises ``BrokerUnavailable`` when the supervisor is not running, ``BrokerStartFailed`` when the
        new process does not run within the ready timeout.
        """
        with self._lock:
            if self._supervisor is None:
                raise BrokerUnavailable("the broker is not started")
            generation = self._generation
            self._restart_now.set()
            self._terminate(_STOP_TIMEOUT_S)
        self._await_generation(generation)

    def reload(self) -> None:
        """SIGHUP Mosquitto and confirm from its log that the reload finished without an error.

        After a reload that logged an error the broker is restarted (it fails closed at start-up).
        Raises ``BrokerReloadFailed`` when the reload cannot be confirmed or the restart fails, and
        ``BrokerUnavailable`` when the broker is not running.
        """
        with self._lock:
            process = self._process
            if process is None or process.poll() is not None:
                raise BrokerUnavailable("the broker is not running")
            mark = self._log.seq
            process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + self._reload_timeout_s
            reloading = self._log.wait_for(
                lambda line: line == "Reloading config.", after=mark, deadline=deadline
            )
            if reloading is None:
                raise BrokerReloadFailed(
                    f"mosquitto did not log a reload within {self._reload_timeout_s:g} s"
                )
            finished = self._await_loop_after(reloading, deadline)
            errors = self._log.errors_between(reloading, finished)
        if errors:
            _log.warning("mosquitto reload failed (%s); restarting it", "; ".join(errors))
            try:
                self.restart()
            except BrokerUnavailable as exc:
                raise BrokerReloadFailed(
                    f"reload failed ({'; '.join(errors)}) and so did the restart: {exc}"
                ) from exc

    def _await_loop_after(self, reloading: int, deadline: float) -> int:
        """Return the number of a log line the broker wrote after finishing the reload at ``reloading``.

        The marker is the broker's log line for accepting a TCP connection to the control listener.
        Mosquitto 2.0.11 logs it only once the TLS accept is under way, so the connection stays open
        until the line appears (closed at once, it is logged as a failed connection without a port).
        """
        config = self.config
        while True:
            mark = self._log.seq
            try:
                with socket.create_connection(
                    (config.control_host, config.control_port), timeout=1.0
                ) as touch:
                    suffix = f":{touch.getsockname()[1]} on port {config.control_port}."
                    seen = self._log.wait_for(_accepted(suffix), after=mark, deadline=deadline)
            except OSError as exc:
                raise BrokerReloadFailed(
                    f"cannot reach the control listener to confirm the reload: {exc}"
                ) from exc
            if seen is None:
                raise BrokerReloadFailed(
                    f"mosquitto's reload was not confirmed within {self._reload_timeout_s:g} s"
                )
            if seen > reloading:
                return seen
            # Accepted before the reload: the signal came just before the broker waited for sockets.

    # -- internals ---------------------------------------------------------------------------

    def _spawn_until_ready(self) -> None:
        executable = self._executable or find_mosquitto()
        if executable is None:
            raise BrokerStartFailed("mosquitto is not installed", hint="apt-get install mosquitto")
        mark = self._log.seq
        process = subprocess.Popen(  # noqa: S603 - fixed argument list, no shell
            [str(executable), "-c", str(self.config.conf_file)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, umask=0o077,
        )  # fmt: skip
        self._process = process
        assert process.stderr is not None
        threading.Thread(
            target=self._read_log, args=(process.stderr,), name="mosquitto-log", daemon=True
        ).start()
        deadline = time.monotonic() + self._ready_timeout_s
        while process.poll() is None and time.monotonic() < deadline:
            step = min(deadline, time.monotonic() + 0.1)
            if (
                self._log.wait_for(lambda line: bool(_RUNNING.match(line)), after=mark, deadline=step)
                is not None
            ):
                with self._ready:
                    self._generation += 1
                    self._ready.notify_all()
                return
        self._terminate(_STOP_TIMEOUT_S)
        tail = " | ".join(self._log.tail(8))
        raise BrokerStartFailed(f"mosquitto did not start (exit status {process.poll()}): {tail}")

    def _read_log(self, stream: IO[bytes]) -> None:
        for raw in iter(lambda: stream.readline(_MAX_LINE), b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            for observe in self.log_observers:
                observe(line)
            self._log.append(_TIMESTAMP.sub("", line))
        stream.close()

    def _terminate(self, timeout_s: float) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)

    def _await_generation(self, generation: int) -> None:
        deadline = time.monotonic() + self._ready_timeout_s + _BACKOFF_INITIAL_S
        with self._ready:
            while self._generation == generation:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    tail = " | ".join(self._log.tail(8))
                    raise BrokerStartFailed(f"mosquitto did not start again: {tail}")
                self._ready.wait(remaining)

    def _supervise(self) -> None:
        delay = 0.0
        while True:
            process, started = self._process, time.monotonic()
            if process is not None:
                process.wait()
            if self._stopping.is_set():
                return
            if self._restart_now.is_set():
                self._restart_now.clear()
                delay = 0.0
            elif time.monotonic() - started > _STABLE_S:
                delay = _BACKOFF_INITIAL_S
            else:
                delay = min(max(delay * 2, _BACKOFF_INITIAL_S), _BACKOFF_MAX_S)
            status = process.returncode if process is not None else None
            _log.warning("mosquitto exited (status %s); starting it again in %.1f s", status, delay)
            if self._stopping.wait(delay):
                return
            self._respawn()

    def _respawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            try:
                self._spawn_until_ready()
            except BrokerStartFailed as exc:
                _log.warning("%s", exc)
                return
            self.restarts += 1
