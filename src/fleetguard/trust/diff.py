"""Change analysis: which decisions a proposed policy set changes, over the whole fleet, before it applies.

Every device's every candidate request (connect; publish and subscribe on its own and its type's
topics) is decided under the current and the proposed set; the requests whose outcome differs are
listed with the policies that decided each side. Nothing is cached across the two sets, and the
decision caches of the two evaluators are small, so a large fleet streams through in bounded memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from fleetguard.trust.model import Action, DeviceFacts, Outcome, RequestContext
from fleetguard.trust.pdp import PolicyDecisionPoint
from fleetguard.trust.policy import PolicySet

__all__ = ["OutcomeChange", "diff_policies"]

_CACHE = 64


@dataclass(frozen=True, slots=True)
class OutcomeChange:
    """One request whose outcome differs between the current and the proposed policy set."""

    device_id: str
    action: Action
    resource: str
    before: Outcome
    after: Outcome
    before_policies: tuple[str, ...]
    after_policies: tuple[str, ...]


def diff_policies(
    current: PolicySet,
    proposed: PolicySet,
    fleet: Iterable[DeviceFacts],
    context: RequestContext,
    *,
    progress: Callable[[int], None] | None = None,
) -> Iterator[OutcomeChange]:
    """Yield every request whose outcome ``proposed`` changes, device by device.

    ``progress`` is called with the number of devices evaluated so far, every device.
    """
    before = PolicyDecisionPoint(current, cache_size=_CACHE, entity_cache_size=_CACHE)
    after = PolicyDecisionPoint(proposed, cache_size=_CACHE, entity_cache_size=_CACHE)
    for count, facts in enumerate(fleet, start=1):
        for old, new in zip(before.decide_all(facts, context), after.decide_all(facts, context), strict=True):
            if old.outcome is not new.outcome:
                yield OutcomeChange(
                    facts.device_id, old.action, old.resource.name, old.outcome, new.outcome,
                    old.policies, new.policies,
                )  # fmt: skip
        if progress is not None:
            progress(count)
