"""The risk score: deterministic, bounded, monotonic, order-free."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.firmware.model import Category, Finding, Severity
from fleetguard.firmware.risk import is_known_exploited, risk_score


def finding(severity: Severity, *, kev: bool = False, rule: str = "r") -> Finding:
    details = (("known_exploited", "yes" if kev else "no"),)
    return Finding(rule, Category.VULNERABILITY, severity, "t", "/bin/x", "e", details=details)


def test_no_findings_is_zero() -> None:
    assert risk_score([]) == 0


def test_informational_findings_add_nothing() -> None:
    assert risk_score([finding(Severity.INFO)] * 50) == 0


@pytest.mark.parametrize(
    ("findings", "expected"),
    [
        ([finding(Severity.LOW)], 2),  # 100 * (1 - e^-0.02) = 1.98
        ([finding(Severity.MEDIUM)], 8),
        ([finding(Severity.HIGH)], 30),  # floor: 18 from points alone
        ([finding(Severity.CRITICAL)], 60),  # floor: 39 from points alone
        ([finding(Severity.CRITICAL)] * 4, 86),
        ([finding(Severity.HIGH, kev=True)], 80),  # known exploited: floor 80
        ([finding(Severity.CRITICAL, kev=True)] * 3, 93),  # 135 points
    ],
)
def test_documented_values(findings: list[Finding], expected: int) -> None:
    assert risk_score(findings) == expected


def test_saturates_at_100() -> None:
    assert risk_score([finding(Severity.CRITICAL, kev=True)] * 100) == 100


def test_known_exploited_is_read_from_details() -> None:
    assert is_known_exploited(finding(Severity.LOW, kev=True))
    assert not is_known_exploited(finding(Severity.LOW))


_findings = st.lists(st.builds(finding, st.sampled_from(list(Severity)), kev=st.booleans()), max_size=30)


@given(_findings)
def test_bounded(findings: list[Finding]) -> None:
    assert 0 <= risk_score(findings) <= 100


@given(_findings, st.randoms(use_true_random=False))
def test_order_does_not_matter(findings: list[Finding], rng: random.Random) -> None:
    shuffled = list(findings)
    rng.shuffle(shuffled)
    assert risk_score(shuffled) == risk_score(findings)


@given(_findings, st.builds(finding, st.sampled_from(list(Severity)), kev=st.booleans()))
def test_one_more_finding_never_lowers_the_score(findings: list[Finding], extra: Finding) -> None:
    assert risk_score([*findings, extra]) >= risk_score(findings)
