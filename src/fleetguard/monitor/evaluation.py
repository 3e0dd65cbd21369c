"""Detector evaluation on labelled traffic: ROC AUC, true-positive rate at a false-positive budget, speed.

Scores are "higher is more anomalous"; labels are True (or 1) for attack rows. Both metrics are exact
and need no scikit-learn:

* :func:`roc_auc` is the Mann-Whitney U statistic over average ranks, so that tied scores count one
  half (the trapezoidal area under the ROC curve through every distinct threshold); rank sums are
  kept as integers (twice the average rank) until the final division.
* :func:`tpr_at_fpr` is the highest true-positive rate of any threshold ``score >= t`` whose
  false-positive rate is at most the budget, with no interpolation between ROC points (a detector
  cannot alert on half of a tied score), so it never flatters a detector.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from fleetguard.errors import InvalidInput

__all__ = ["Evaluation", "evaluate", "format_report", "roc_auc", "to_json", "tpr_at_fpr"]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One detector's results on one labelled capture (``packets`` rows scored in ``seconds``)."""

    auc: float
    tpr_at_0_1pct: float
    tpr_at_1pct: float
    packets: int
    seconds: float
    packets_per_s: float


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Return the area under the ROC curve, ties counted one half (see the module docstring).

    Raises :class:`~fleetguard.errors.InvalidInput` for mismatched or non-finite input, or when a
    class is missing (the area is undefined).
    """
    values, positive = _checked(scores, labels)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    twice_rank = 2 * starts + counts + 1  # twice the average 1-based rank of each distinct score
    n_pos = int(positive.sum())
    n_neg = len(values) - n_pos
    twice_sum = int(twice_rank[inverse[positive]].sum())
    return float(Fraction(twice_sum - n_pos * (n_pos + 1), 2 * n_pos * n_neg))


def tpr_at_fpr(scores: npt.ArrayLike, labels: npt.ArrayLike, fpr: float) -> float:
    """Return the highest TPR of a threshold whose FPR is at most ``fpr`` (in [0, 1]).

    A threshold's FPR is the correctly rounded ``false positives / negatives``, so that a budget of
    ``0.001`` over 1000 benign rows allows exactly one false positive (``0.001 * 1000`` would not
    round to 1.0). Raises :class:`~fleetguard.errors.InvalidInput`.
    """
    if not 0.0 <= fpr <= 1.0:
        raise InvalidInput(f"false-positive rate {fpr} out of range: expected 0..1")
    values, positive = _checked(scores, labels)
    order = np.argsort(-values, kind="stable")
    ranked, hits = values[order], positive[order]
    last_of_tie = np.append(ranked[1:] != ranked[:-1], True)
    true_pos = np.cumsum(hits)[last_of_tie]
    false_pos = np.cumsum(~hits)[last_of_tie]
    feasible = np.flatnonzero(false_pos / false_pos[-1] <= fpr)
    best = int(true_pos[feasible[-1]]) if len(feasible) else 0
    return best / int(true_pos[-1])


def evaluate(scores: npt.ArrayLike, labels: npt.ArrayLike, *, seconds: float) -> Evaluation:
    """Return the :class:`Evaluation` of ``scores`` computed in ``seconds`` (wall time, > 0)."""
    if not (math.isfinite(seconds) and seconds > 0.0):
        raise InvalidInput(f"seconds {seconds} must be positive and finite")
    values, positive = _checked(scores, labels)
    return Evaluation(
        auc=roc_auc(values, positive),
        tpr_at_0_1pct=tpr_at_fpr(values, positive, 0.001),
        tpr_at_1pct=tpr_at_fpr(values, positive, 0.01),
        packets=len(values),
        seconds=seconds,
        packets_per_s=len(values) / seconds,
    )


def format_report(results: Mapping[str, Evaluation]) -> str:
    """Return a text table, one line per detector name, in the mapping's order."""
    width = max([len("detector"), *(len(name) for name in results)])
    header = f"{'detector':<{width}}  {'ROC AUC':>8}  {'TPR@0.1%':>8}  {'TPR@1%':>8}"
    lines = [f"{header}  {'packets':>10}  {'packets/s':>12}"]
    lines.extend(
        f"{name:<{width}}  {r.auc:>8.4f}  {r.tpr_at_0_1pct:>8.4f}  {r.tpr_at_1pct:>8.4f}  "
        f"{r.packets:>10d}  {r.packets_per_s:>12,.0f}"
        for name, r in results.items()
    )
    return "\n".join(lines)


def to_json(results: Mapping[str, Evaluation]) -> str:
    """Return the results as a JSON object keyed by detector name (keys sorted, two-space indent)."""
    return json.dumps({name: asdict(r) for name, r in results.items()}, indent=2, sort_keys=True)


def _checked(
    scores: npt.ArrayLike, labels: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    values = np.asarray(scores, dtype=np.float64)
    raw = np.asarray(labels)
    if values.ndim != 1 or raw.shape != values.shape:
        raise InvalidInput(f"scores {values.shape} and labels {raw.shape} must be 1-d and of one length")
    if np.isnan(values).any():
        raise InvalidInput("scores contain NaN")
    if raw.dtype != np.bool_ and not np.isin(raw, (0, 1)).all():
        raise InvalidInput("labels must be booleans or 0/1")
    positive = raw.astype(np.bool_)
    if positive.all() or not positive.any():
        raise InvalidInput("labels need both classes: the ROC curve is undefined with one")
    return values, positive
