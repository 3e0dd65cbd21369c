"""The background signer of event-log checkpoints that ``fleetguard up`` runs.

Theory of operation: every ``interval_s`` seconds a daemon thread asks whether the log grew since the
newest signed checkpoint and, if it did, signs a new one (:meth:`EventLog.checkpoint` re-verifies the
new entries first, so a tampered log is never signed). A failed round is logged and retried at the
next interval; :meth:`Checkpointer.stop` signs once more so that the entries of the last minutes are
covered when the process exits. Signed checkpoints bound what an attacker with database access can
truncate unnoticed (see :mod:`fleetguard.events.log`).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from fleetguard.errors import FleetguardError
from fleetguard.events.checkpoint import CheckpointSigner, SignedTreeHead
from fleetguard.events.log import EventLog
from fleetguard.types import utc_now

__all__ = ["Checkpointer"]

_logger = logging.getLogger(__name__)
_JOIN_TIMEOUT_S = 30.0


class Checkpointer:
    """Signs a checkpoint of ``log`` with ``signer`` every ``interval_s`` seconds when it grew."""

    def __init__(
        self,
        log: EventLog,
        signer: CheckpointSigner,
        *,
        interval_s: float,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._log = log
        self._signer = signer
        self._interval_s = interval_s
        self._clock = clock
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetguard-checkpointer", daemon=True)

    def sign_if_grown(self) -> SignedTreeHead | None:
        """Sign a checkpoint when entries were appended since the newest one; return it, or None.

        Raises:
            TamperDetected: the entries since the newest checkpoint do not verify.
            StoreUnavailable: the database cannot be read or written.
        """
        size = self._log.size()
        latest = self._log.latest_checkpoint()
        if size == 0 or (latest is not None and latest.head.tree_size >= size):
            return None
        return self._log.checkpoint(self._signer, now=self._clock())

    def start(self) -> None:
        """Start the background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then sign a last checkpoint if the log grew."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(_JOIN_TIMEOUT_S)
        self._round()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            self._round()

    def _round(self) -> None:
        try:
            signed = self.sign_if_grown()
        except FleetguardError as exc:
            _logger.error("event log checkpoint failed: %s", exc)  # noqa: TRY400 - one line, no traceback
            return
        if signed is not None:
            _logger.info("signed event log checkpoint at size %d", signed.head.tree_size)
