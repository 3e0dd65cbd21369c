"""The OTA background work of ``fleetguard up``: campaign evaluation and timestamp renewal.

Every ``interval_s`` seconds a daemon thread calls :meth:`CampaignService.tick` (silent devices time
out; every running campaign is evaluated: soak, deadlines, windows, completion) and
:meth:`OtaRepositories.refresh` (the image repository's snapshot and timestamp are re-signed when past
half their life, so that devices never see them expire while the server is healthy). A failure is
logged and retried at the next interval, as the checkpointer and the renewal scheduler do.
"""

from __future__ import annotations

import logging
import threading

from fleetguard.errors import FleetguardError
from fleetguard.ota.campaigns import CampaignService
from fleetguard.ota.repositories import OtaRepositories
from fleetguard.ota.rollout import Decision

__all__ = ["OtaScheduler"]

_logger = logging.getLogger(__name__)
_JOIN_TIMEOUT_S = 30.0


class OtaScheduler:
    """Runs :meth:`run_once` every ``interval_s`` seconds in a daemon thread."""

    def __init__(
        self, campaigns: CampaignService, repositories: OtaRepositories, *, interval_s: float
    ) -> None:
        self._campaigns = campaigns
        self._repositories = repositories
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> None:
        """Evaluate campaigns and renew the timestamp once; log what changed."""
        if self._repositories.refresh():
            _logger.info("ota: re-signed the image repository's snapshot and timestamp")
        for evaluation in self._campaigns.tick():
            if evaluation.decision not in (Decision.IDLE, Decision.PROCEED, Decision.WAIT_WINDOW):
                _logger.info("ota: campaign %s: %s: %s", evaluation.campaign.id, evaluation.decision,
                             "; ".join(evaluation.reasons))  # fmt: skip

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self._run, name="ota-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(_JOIN_TIMEOUT_S)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.run_once()
            except (FleetguardError, OSError) as exc:
                _logger.warning("ota: evaluation failed, retrying in %.0f s: %s", self._interval_s, exc)
