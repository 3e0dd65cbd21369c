"""Evaluation metrics: exact ROC AUC with ties, TPR at an FPR budget, reports."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.errors import InvalidInput
from fleetguard.monitor.evaluation import Evaluation, evaluate, format_report, roc_auc, to_json, tpr_at_fpr


def _brute_force_auc(scores: list[int], labels: list[bool]) -> Fraction:
    """The probability that a random attack outscores a random benign row, ties one half: O(n^2)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum((Fraction(int(p > n) * 2 + int(p == n), 2) for p in pos for n in neg), start=Fraction(0))
    return wins / (len(pos) * len(neg))


def _brute_force_tpr(scores: list[int], labels: list[bool], fpr: Fraction) -> Fraction:
    """Try every threshold ``score >= t`` (and alerting on nothing); keep the best within budget."""
    n_pos, n_neg = sum(labels), len(labels) - sum(labels)
    best = Fraction(0)
    for t in set(scores):
        tp = sum(1 for s, y in zip(scores, labels, strict=True) if y and s >= t)
        fp = sum(1 for s, y in zip(scores, labels, strict=True) if not y and s >= t)
        if Fraction(fp, n_neg) <= fpr:
            best = max(best, Fraction(tp, n_pos))
    return best


def test_auc_of_a_textbook_example() -> None:
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75


def test_auc_counts_ties_one_half() -> None:
    assert roc_auc([1.0, 1.0, 1.0, 1.0], [False, True, False, True]) == 0.5
    assert roc_auc([0.5, 0.5, 1.0], [0, 1, 1]) == 0.75
    assert roc_auc([2.0, 1.0, 1.0, 0.0], [1, 1, 0, 0]) == 0.875


def test_auc_of_perfect_and_inverted_detectors() -> None:
    assert roc_auc([3, 4, 1, 2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([1, 2, 3, 4], [1, 1, 0, 0]) == 0.0
    assert roc_auc([-np.inf, np.inf], [0, 1]) == 1.0


def test_tpr_at_fpr_takes_the_best_threshold_within_budget() -> None:
    scores = [*range(10), 9.5, 8.5, 5.0]
    labels = [False] * 10 + [True] * 3
    assert tpr_at_fpr(scores, labels, 0.0) == pytest.approx(1 / 3)
    assert tpr_at_fpr(scores, labels, 0.1) == pytest.approx(2 / 3)
    assert tpr_at_fpr(scores, labels, 0.5) == pytest.approx(3 / 3)
    assert tpr_at_fpr(scores, labels, 1.0) == 1.0


def test_tpr_at_fpr_cannot_split_a_tie_between_attack_and_benign() -> None:
    assert tpr_at_fpr([5.0, 5.0, 1.0], [1, 0, 0], 0.0) == 0.0
    assert tpr_at_fpr([5.0, 5.0, 1.0], [1, 0, 0], 0.49) == 0.0
    assert tpr_at_fpr([5.0, 5.0, 1.0], [1, 0, 0], 0.5) == 1.0


def test_tpr_at_fpr_allows_exactly_budget_times_negatives() -> None:
    # 0.57 over 100 benign rows allows 57 false positives, although 0.57 * 100 < 57 in floats.
    scores = np.concatenate([np.arange(100.0), [42.5, 41.5]])
    labels = np.arange(102) >= 100
    assert 0.57 * 100 < 57
    assert tpr_at_fpr(scores, labels, 0.56) == 0.0
    assert tpr_at_fpr(scores, labels, 0.57) == 0.5
    assert tpr_at_fpr(scores, labels, 0.58) == 1.0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=2, max_size=40).filter(
        lambda pairs: len({y for _, y in pairs}) == 2
    ),
    st.sampled_from([Fraction(0), Fraction(1, 10), Fraction(1, 3), Fraction(1, 2), Fraction(1)]),
)
def test_metrics_equal_brute_force(pairs: list[tuple[int, bool]], budget: Fraction) -> None:
    scores = [s for s, _ in pairs]
    labels = [y for _, y in pairs]
    assert roc_auc(scores, labels) == float(_brute_force_auc(scores, labels))
    assert tpr_at_fpr(scores, labels, float(budget)) == float(_brute_force_tpr(scores, labels, budget))


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([1.0, 2.0], [1, 1], "both classes"),
        ([1.0, 2.0], [0, 0], "both classes"),
        ([1.0, float("nan")], [0, 1], "NaN"),
        ([1.0, 2.0, 3.0], [0, 1], "one length"),
        ([1.0, 2.0], [0, 2], "0/1"),
        ([[1.0], [2.0]], [[0], [1]], "1-d"),
    ],
)
def test_invalid_input_is_refused(scores: list[float], labels: list[int], match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        roc_auc(scores, labels)
    with pytest.raises(InvalidInput, match=match):
        tpr_at_fpr(scores, labels, 0.01)


def test_budget_and_seconds_out_of_range_are_refused() -> None:
    with pytest.raises(InvalidInput, match="false-positive rate"):
        tpr_at_fpr([1.0, 2.0], [0, 1], 1.5)
    with pytest.raises(InvalidInput, match="seconds"):
        evaluate([1.0, 2.0], [0, 1], seconds=0.0)


def test_evaluate_reports_and_serializes() -> None:
    scores = [*range(10), 9.5, 8.5, 5.0]
    labels = [False] * 10 + [True] * 3
    result = evaluate(scores, labels, seconds=0.5)
    assert result == Evaluation(
        auc=roc_auc(scores, labels),
        tpr_at_0_1pct=1 / 3,
        tpr_at_1pct=1 / 3,
        packets=13,
        seconds=0.5,
        packets_per_s=26.0,
    )
    report = format_report({"kitnet": result, "isolation-forest": result})
    lines = report.splitlines()
    assert len(lines) == 3
    assert lines[0].split()[:3] == ["detector", "ROC", "AUC"]
    assert lines[1].split() == ["kitnet", f"{result.auc:.4f}", "0.3333", "0.3333", "13", "26"]
    assert json.loads(to_json({"kitnet": result})) == {
        "kitnet": {
            "auc": result.auc,
            "tpr_at_0_1pct": 1 / 3,
            "tpr_at_1pct": 1 / 3,
            "packets": 13,
            "seconds": 0.5,
            "packets_per_s": 26.0,
        }
    }
