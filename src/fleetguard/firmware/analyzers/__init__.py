"""The analyzers of an extracted firmware tree, and how they are run together.

Each analyzer reads an :class:`~fleetguard.firmware.model.ExtractedTree` and yields
:class:`~fleetguard.firmware.model.Finding` values; none raises for odd file content and none
reads more than its per-file limit. :data:`ANALYZERS` is the default set; :func:`run_analyzers`
runs a set, orders the findings and bounds how many are kept.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Iterator

from fleetguard.firmware.analyzers.credentials import CredentialAnalyzer
from fleetguard.firmware.analyzers.keys import KeyAnalyzer
from fleetguard.firmware.analyzers.passwords import PasswordAnalyzer
from fleetguard.firmware.analyzers.permissions import PermissionAnalyzer
from fleetguard.firmware.analyzers.services import ServiceAnalyzer
from fleetguard.firmware.model import Analyzer, Category, ExtractedTree, Finding, Severity

__all__ = [
    "ANALYZERS",
    "CredentialAnalyzer",
    "KeyAnalyzer",
    "PasswordAnalyzer",
    "PermissionAnalyzer",
    "ServiceAnalyzer",
    "finding_order",
    "run_analyzers",
]

# The default set. KeyAnalyzer() decides certificate expiry at the time of each scan; build one
# with KeyAnalyzer(now=...) for a fixed time.
ANALYZERS: tuple[Analyzer, ...] = (
    KeyAnalyzer(),
    PasswordAnalyzer(),
    CredentialAnalyzer(),
    ServiceAnalyzer(),
    PermissionAnalyzer(),
)

TRUNCATED_RULE = "analysis.findings-truncated"


def finding_order(finding: Finding) -> tuple[int, str, int, str]:
    """The sort key of findings: most severe first, then by path, offset (whole-file first), rule."""
    offset = -1 if finding.offset is None else finding.offset
    return (-finding.severity.rank, finding.path, offset, finding.rule)


def run_analyzers(
    tree: ExtractedTree, analyzers: Iterable[Analyzer] = ANALYZERS, *, limit_findings: int = 10_000
) -> list[Finding]:
    """Return the findings of every analyzer over ``tree``, ordered by :func:`finding_order`.

    At most ``limit_findings`` are returned; when more were found, the most severe
    ``limit_findings - 1`` are kept and the last one is an INFO finding (``analysis.findings-truncated``)
    that counts what was dropped, by rule. Raises ValueError when ``limit_findings`` < 1.
    """
    if limit_findings < 1:
        raise ValueError("limit_findings must be at least 1")
    everything = _Collected(tree, analyzers)
    kept = heapq.nsmallest(limit_findings + 1, everything.findings, key=finding_order)
    if len(kept) <= limit_findings:
        return kept
    kept = kept[: limit_findings - 1]
    dropped = everything.by_rule - Counter(finding.rule for finding in kept)
    return [*kept, _truncated(dropped)]


class _Collected:
    """All findings as a stream, counting them by rule as they go past."""

    def __init__(self, tree: ExtractedTree, analyzers: Iterable[Analyzer]) -> None:
        self._tree = tree
        self._analyzers = tuple(analyzers)
        self.by_rule: Counter[str] = Counter()

    @property
    def findings(self) -> Iterator[Finding]:
        for analyzer in self._analyzers:
            for finding in analyzer.analyze(self._tree):
                self.by_rule[finding.rule] += 1
                yield finding


def _truncated(dropped: Counter[str]) -> Finding:
    total = sum(dropped.values())
    top = ", ".join(f"{rule} x{count}" for rule, count in dropped.most_common(5))
    return Finding(
        rule=TRUNCATED_RULE,
        category=Category.EXTRACTION,
        severity=Severity.INFO,
        title="Findings over the limit were not kept",
        path="/",
        evidence=f"{total} less severe findings dropped: {top}",
        details=tuple((rule, str(count)) for rule, count in sorted(dropped.items())),
    )
