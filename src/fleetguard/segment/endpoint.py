"""Segmentation in a running installation: the ruleset applied at start, DNS kept current, violations read.

``fleetguard up`` calls :func:`open_segment_endpoint` when ``FLEETGUARD_SEGMENT_ENFORCE`` is on
(the gateway host runs fleetguard as root, or ``FLEETGUARD_SEGMENT_NETNS`` names the gateway's
network namespace). It applies the fleet's ruleset once, then every ``FLEETGUARD_SEGMENT_REFRESH_S``
re-resolves the DNS names whose records expired (an element update when addresses changed) and
turns new entries of the violation sets into ``segment.violation`` events. Its
:class:`~fleetguard.segment.pep.FirewallEnforcementPoint` joins the trust capability's continuous
evaluation, so a device the policy cuts off is cut off at the firewall too.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from fleetguard.errors import FleetguardError
from fleetguard.installation import Runtime
from fleetguard.segment.pep import FirewallEnforcementPoint
from fleetguard.trust.evaluator import ContinuousEvaluator
from fleetguard.types import utc_now

__all__ = ["SegmentEndpoint", "open_segment_endpoint"]

_log = logging.getLogger(__name__)
_ACTOR = "fleetguard up"


@dataclass
class SegmentEndpoint:
    """The firewall enforcement point and its refresher, or why there is none."""

    point: FirewallEnforcementPoint | None
    summary: str
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _evaluator: ContinuousEvaluator | None = None

    def evaluate_alone(self, runtime: Runtime) -> None:
        """Drive the firewall from an evaluator of its own (when no broker evaluator runs)."""
        if self.point is None or self._evaluator is not None:
            return
        self._evaluator = ContinuousEvaluator(
            runtime.trust, [self.point], runtime.database, runtime.log, clock=utc_now,
            on_commit=runtime.relay.notify,
            all_devices=lambda: [binding.device_id for binding in runtime.segment.bindings()],
        )  # fmt: skip
        self._evaluator.start(runtime.bus)

    def stop(self) -> None:
        """Stop the evaluator (if its own) and the refresher. Idempotent."""
        self._stop.set()
        if self._evaluator is not None:
            self._evaluator.stop()
            self._evaluator = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None


def open_segment_endpoint(runtime: Runtime) -> SegmentEndpoint:
    """Apply the ruleset and start the refresher; never raises (the reason is in ``summary``)."""
    settings = runtime.settings
    if not settings.segment_enforce:
        return SegmentEndpoint(None, "disabled (FLEETGUARD_SEGMENT_ENFORCE=false)")
    try:
        result = runtime.segment.apply(actor=_ACTOR)
    except FleetguardError as exc:
        _log.warning("segmentation not enforced: %s", exc)
        return SegmentEndpoint(None, f"not enforced: {exc}")
    endpoint = SegmentEndpoint(
        FirewallEnforcementPoint(runtime.segment),
        f"generation {result.generation}: {result.devices} devices, {result.profiles} profiles",
    )
    endpoint._thread = threading.Thread(
        target=_refresh, args=(runtime, endpoint._stop), name="fleetguard-segment", daemon=True
    )
    endpoint._thread.start()
    return endpoint


def _refresh(runtime: Runtime, stop: threading.Event) -> None:
    while not stop.wait(runtime.settings.segment_refresh_s):
        try:
            update = runtime.segment.refresh_names(actor=_ACTOR)
            if not update.empty:
                _log.info("segment: DNS changes applied as element updates")
            for device_id, violation in runtime.segment.detect(actor=_ACTOR):
                _log.warning("segment: %s violated its policy: %s", device_id, violation)
        except FleetguardError:
            _log.exception("segment: refresh failed; retrying at the next interval")
