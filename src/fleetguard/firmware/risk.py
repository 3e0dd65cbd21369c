"""One number, 0..100, for how risky a firmware image is: for sorting and dashboards, not for gating.

The formula
-----------
Each finding adds points by severity: critical 25, high 10, medium 4, low 1, info 0; a
vulnerability in CISA's Known Exploited Vulnerabilities catalog (detail ``known_exploited: yes``)
adds :data:`KEV_BONUS` more. The points saturate::

    score = round(100 * (1 - exp(-points / 50)))

(rounded half up), so the sum alone gives 39 for one critical and 86 for four, and 100 only past
about 265 points. The worst finding sets a floor: a known-exploited vulnerability at least 80, a
critical finding at least 60, a high one at least 30. The score depends only on the multiset of
findings, never on their order.

The release gate decides on severities and waivers (``fleetguard.firmware.service``), not on this.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Final

from fleetguard.firmware.model import Finding, Severity

__all__ = ["KEV_BONUS", "SEVERITY_POINTS", "is_known_exploited", "risk_score"]

SEVERITY_POINTS: Final[Mapping[Severity, int]] = {
    Severity.CRITICAL: 25,
    Severity.HIGH: 10,
    Severity.MEDIUM: 4,
    Severity.LOW: 1,
    Severity.INFO: 0,
}
KEV_BONUS: Final = 20
_SCALE: Final = 50.0
_KEV_FLOOR: Final = 80
_SEVERITY_FLOOR: Final[Mapping[Severity, int]] = {Severity.CRITICAL: 60, Severity.HIGH: 30}


def is_known_exploited(finding: Finding) -> bool:
    """True when the finding says its vulnerability is in the CISA KEV catalog."""
    return ("known_exploited", "yes") in finding.details


def risk_score(findings: Iterable[Finding]) -> int:
    """Return the risk of an image with ``findings``, 0 (nothing found) .. 100; see the module doc."""
    points = 0
    floor = 0
    for finding in findings:
        points += SEVERITY_POINTS[finding.severity]
        floor = max(floor, _SEVERITY_FLOOR.get(finding.severity, 0))
        if is_known_exploited(finding):
            points += KEV_BONUS
            floor = max(floor, _KEV_FLOOR)
    saturated = math.floor(100 * (1 - math.exp(-points / _SCALE)) + 0.5)
    return max(floor, min(100, saturated))
