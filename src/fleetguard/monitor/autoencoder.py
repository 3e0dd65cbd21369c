"""An online ensemble of small autoencoders over packet features (Kitsune's KitNET, NDSS 2018).

Theory of operation. The detector sees feature rows (float32, one per packet, in capture order) and
goes through three phases, each a fixed number of rows:

1. **Mapping** (``feature_map_grace`` rows). Exact running means and co-moments of the features
   (Chan et al.'s pairwise update, one batch at a time) give the correlation matrix at the end of the
   phase. Features are clustered agglomeratively (average linkage) on the distance ``1 - |corr|``,
   never merging two clusters whose union would exceed ``max_group`` features (KitNET's feature
   mapper: no autoencoder sees more than *m* features). A constant feature has no
   correlation with anything (distance 1), so it never decides a merge.
2. **Training** (``training_grace`` rows, assumed benign). One autoencoder per group (sigmoid
   hidden layer of ``ceil(hidden_ratio * size)`` units, sigmoid output, tied weights, min-max scaled
   input) and an output autoencoder over the vector of the ensemble's reconstruction RMSEs are
   trained online, one row at a time by SGD (KitNET's ensemble and output layers), in a compiled
   kernel. Each row's
   output RMSE is computed *before* the row is learnt (prequential), so the scores of the second
   half of the phase estimate the benign score distribution of the final model. The threshold is
   their empirical ``1 - fp_budget`` quantile, over the latest ``_CALIBRATION_ROWS`` of them (a
   log-normal fit of the scores, as in the Kitsune paper's evaluation, gave 6x the budget's false
   positives on synthetic traffic: the log scores have a heavier upper tail than a normal).
   The estimate is conservative (the model still improves over that half), which errs towards
   fewer false alerts.
3. **Scoring**. Forward passes only, over whole batches in a compiled kernel; the model no longer
   changes. :meth:`EnsembleDetector.explain` names the groups whose autoencoders reconstructed a row
   worst relative to the benign period, so that an alert says why.

Scaling uses the training period's per-feature minimum and maximum with an epsilon guard, and
scaled values are clipped to ``+-_CLIP`` so that scores stay finite whatever the input (a feature
that was constant in training and moves at scoring time gets a huge, finite, error).

:meth:`EnsembleDetector.state` and :meth:`EnsembleDetector.from_state` carry the whole model as plain
numpy arrays and JSON-able metadata, in any phase, so that monitoring survives restarts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

from fleetguard.errors import InvalidInput
from fleetguard.monitor.errors import MonitorLimit, TrainingIncomplete

__all__ = [
    "MAX_FEATURES",
    "MAX_GROUP",
    "DetectorState",
    "EnsembleDetector",
    "GroupContribution",
    "Phase",
]

MAX_FEATURES: Final = 1024
"""Bound on features per row: clustering is O(features^3) at the end of the mapping phase."""
MAX_GROUP: Final = 64
"""Bound on ``max_group``: KitNET's autoencoders stay small (the paper uses at most 10 inputs)."""
_MAX_GRACE: Final = 1 << 40
_EPSILON: Final = 1e-12
"""Guards min-max scaling of features (and RMSEs) that were constant in training."""
_CLIP: Final = 1e9
"""Bound on scaled values, so that squared errors and their sums stay finite in float64."""
_BLOCK: Final = 128
"""Rows scored together, so that the innermost loops run over rows (SIMD) and stay in cache."""
_CALIBRATION_ROWS: Final = 1 << 16
"""Training scores kept for the threshold: enough for a 0.1% budget to rest on ~65 scores."""
_FORMAT: Final = "fleetguard.monitor.autoencoder/1"

Float64Array = npt.NDArray[np.float64]
Int64Array = npt.NDArray[np.int64]
_F = TypeVar("_F", bound=Callable[..., object])


def _compiled(function: _F) -> _F:
    """Compile ``function`` with numba (cached on disk), keeping its signature for the type checker."""
    return cast(_F, numba.njit(cache=True, nogil=True, fastmath=True)(function))


class Phase(StrEnum):
    """Where the detector is in its life (see the module docstring)."""

    MAPPING = "mapping"
    TRAINING = "training"
    SCORING = "scoring"


@dataclass(frozen=True, slots=True)
class GroupContribution:
    """One feature group's part in a score.

    ``contribution`` is the group's reconstruction RMSE scaled to its range in training: 1.0 is the
    worst the group saw while benign, above 1.0 is beyond anything seen.
    """

    group: int
    features: tuple[int, ...]
    contribution: float


@dataclass(frozen=True, slots=True)
class DetectorState:
    """The whole detector: numpy arrays (for ``np.savez``) and JSON-able metadata (for ``json.dumps``)."""

    arrays: Mapping[str, Float64Array | Int64Array]
    metadata: Mapping[str, int | float | str | None]


# --- compiled kernels --------------------------------------------------------------------------


@_compiled
def _sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


@_compiled
def _scaled(value: float, low: float, high: float) -> float:
    scaled = (value - low) / (high - low + _EPSILON)
    return min(max(scaled, -_CLIP), _CLIP)


@_compiled
def _learn(  # noqa: PLR0917 - numba kernels take positional arrays
    x: Float64Array,
    start: int,
    visible: int,
    weights: Float64Array,
    weight_start: int,
    hidden_bias: Float64Array,
    hidden_start: int,
    hidden: int,
    visible_bias: Float64Array,
    learning_rate: float,
    scratch: Float64Array,
) -> float:
    """Reconstruct ``x[start:start+visible]``, learn from it, and return the RMSE from before learning.

    Weights are row-major (visible x hidden) from ``weight_start``; ``scratch`` holds at least
    ``2 * hidden + visible`` floats (hidden activations, hidden deltas, output errors). One SGD step
    on the cross-entropy of the sigmoid outputs, tied weights (KitNET's denoising autoencoder, with
    no corruption).
    """
    y = scratch[:hidden]
    delta = scratch[hidden : 2 * hidden]
    error = scratch[2 * hidden : 2 * hidden + visible]
    for j in range(hidden):
        y[j] = hidden_bias[hidden_start + j]
        delta[j] = 0.0
    for i in range(visible):
        xi = x[start + i]
        row = weight_start + i * hidden
        for j in range(hidden):
            y[j] += xi * weights[row + j]
    for j in range(hidden):
        y[j] = _sigmoid(y[j])
    total = 0.0
    for i in range(visible):
        row = weight_start + i * hidden
        s = visible_bias[start + i]
        for j in range(hidden):
            s += y[j] * weights[row + j]
        e = x[start + i] - _sigmoid(s)
        error[i] = e
        total += e * e
        for j in range(hidden):
            delta[j] += e * weights[row + j]
    for j in range(hidden):
        delta[j] *= y[j] * (1.0 - y[j])
        hidden_bias[hidden_start + j] += learning_rate * delta[j]
    for i in range(visible):
        row = weight_start + i * hidden
        xi, e = x[start + i], error[i]
        for j in range(hidden):
            weights[row + j] += learning_rate * (xi * delta[j] + e * y[j])
        visible_bias[start + i] += learning_rate * e
    return math.sqrt(total / visible)


@_compiled
def _train_rows(  # noqa: PLR0917 - numba kernels take positional arrays
    rows: npt.NDArray[np.float32],
    order: Int64Array,
    offsets: tuple[Int64Array, Int64Array, Int64Array],
    layer: tuple[Float64Array, Float64Array, Float64Array, Float64Array, Float64Array],
    output: tuple[Float64Array, Float64Array, Float64Array, Float64Array, Float64Array],
    learning_rate: float,
    scores: Float64Array,
) -> None:
    """Learn from ``rows`` one at a time (ranges first, then weights); ``scores`` gets each output RMSE."""
    group_offsets, hidden_offsets, weight_offsets = offsets
    weights, hidden_bias, visible_bias, feature_min, feature_max = layer
    out_weights, out_hidden_bias, out_visible_bias, rmse_min, rmse_max = output
    features, groups = order.shape[0], group_offsets.shape[0] - 1
    origin = int(np.int64(0))  # not the literal 0, which would compile the callee a second time
    scaled, rmse = np.empty(features), np.empty(groups)
    scratch = np.empty(3 * (features + groups) + 3)
    for t in range(rows.shape[0]):
        for p in range(features):
            value = np.float64(rows[t, order[p]])
            feature_min[p] = min(feature_min[p], value)
            feature_max[p] = max(feature_max[p], value)
            scaled[p] = _scaled(value, feature_min[p], feature_max[p])
        for k in range(groups):
            r = _learn(
                scaled,
                group_offsets[k],
                group_offsets[k + 1] - group_offsets[k],
                weights,
                weight_offsets[k],
                hidden_bias,
                hidden_offsets[k],
                hidden_offsets[k + 1] - hidden_offsets[k],
                visible_bias,
                learning_rate,
                scratch,
            )
            rmse_min[k] = min(rmse_min[k], r)
            rmse_max[k] = max(rmse_max[k], r)
            rmse[k] = _scaled(r, rmse_min[k], rmse_max[k])
        scores[t] = _learn(
            rmse,
            origin,
            groups,
            out_weights,
            origin,
            out_hidden_bias,
            origin,
            out_hidden_bias.shape[0],
            out_visible_bias,
            learning_rate,
            scratch,
        )


@_compiled
def _encode_block(  # noqa: PLR0917 - numba kernels take positional arrays
    x: Float64Array,
    start: int,
    visible: int,
    weights: Float64Array,
    weight_start: int,
    hidden_bias: Float64Array,
    hidden_start: int,
    count: int,
    y: Float64Array,
) -> None:
    """Hidden activations ``y`` (hidden, block) of ``count`` rows laid out as columns of ``x``."""
    hidden = y.shape[0]
    for j in range(hidden):
        bias = hidden_bias[hidden_start + j]
        for b in range(count):
            y[j, b] = bias
    for i in range(visible):
        row = weight_start + i * hidden
        for j in range(hidden):
            w = weights[row + j]
            for b in range(count):
                y[j, b] += w * x[start + i, b]
    for j in range(hidden):
        for b in range(count):
            y[j, b] = _sigmoid(y[j, b])


@_compiled
def _reconstruct_block(  # noqa: PLR0917 - numba kernels take positional arrays
    x: Float64Array,
    start: int,
    visible: int,
    weights: Float64Array,
    weight_start: int,
    hidden_bias: Float64Array,
    hidden_start: int,
    hidden: int,
    visible_bias: Float64Array,
    count: int,
    work: Float64Array,
    rmse: Float64Array,
) -> None:
    """Forward pass of one autoencoder over ``count`` rows laid out as columns of ``x`` (features
    ``start..start+visible``); the innermost loops run over the rows, so that they vectorize.
    ``rmse[:count]`` gets each row's RMSE; ``work`` is (at least hidden + 1, block).
    """
    y = work[:hidden]
    z = work[hidden]
    _encode_block(x, start, visible, weights, weight_start, hidden_bias, hidden_start, count, y)
    for b in range(count):
        rmse[b] = 0.0
    for i in range(visible):
        row = weight_start + i * hidden
        bias = visible_bias[start + i]
        for b in range(count):
            z[b] = bias
        for j in range(hidden):
            w = weights[row + j]
            for b in range(count):
                z[b] += w * y[j, b]
        for b in range(count):
            e = x[start + i, b] - _sigmoid(z[b])
            rmse[b] += e * e
    for b in range(count):
        rmse[b] = math.sqrt(rmse[b] / visible)


@_compiled
def _score_rows(  # noqa: PLR0917 - numba kernels take positional arrays
    rows: npt.NDArray[np.float32],
    order: Int64Array,
    offsets: tuple[Int64Array, Int64Array, Int64Array],
    layer: tuple[Float64Array, Float64Array, Float64Array, Float64Array, Float64Array],
    output: tuple[Float64Array, Float64Array, Float64Array, Float64Array, Float64Array],
    scores: Float64Array,
    group_rmse: Float64Array,
) -> None:
    """Score ``rows`` in blocks of ``_BLOCK``; ``group_rmse`` is (rows, groups) to keep, or empty."""
    group_offsets, hidden_offsets, weight_offsets = offsets
    weights, hidden_bias, visible_bias, feature_min, feature_max = layer
    out_weights, out_hidden_bias, out_visible_bias, rmse_min, rmse_max = output
    features, groups = order.shape[0], group_offsets.shape[0] - 1
    origin = int(np.int64(0))  # not the literal 0, which would compile the callee a second time
    keep_groups = group_rmse.shape[0] == rows.shape[0]
    scaled = np.empty((features, _BLOCK))
    rmse = np.empty((groups, _BLOCK))
    work = np.empty((features + groups + 1, _BLOCK))
    for first in range(0, rows.shape[0], _BLOCK):
        count = min(_BLOCK, rows.shape[0] - first)
        for p in range(features):
            low, high, column = feature_min[p], feature_max[p], order[p]
            for b in range(count):
                scaled[p, b] = _scaled(np.float64(rows[first + b, column]), low, high)
        for k in range(groups):
            _reconstruct_block(
                scaled,
                group_offsets[k],
                group_offsets[k + 1] - group_offsets[k],
                weights,
                weight_offsets[k],
                hidden_bias,
                hidden_offsets[k],
                hidden_offsets[k + 1] - hidden_offsets[k],
                visible_bias,
                count,
                work,
                rmse[k],
            )
            for b in range(count):
                if keep_groups:
                    group_rmse[first + b, k] = rmse[k, b]
                rmse[k, b] = _scaled(rmse[k, b], rmse_min[k], rmse_max[k])
        _reconstruct_block(
            rmse,
            origin,
            groups,
            out_weights,
            origin,
            out_hidden_bias,
            origin,
            out_hidden_bias.shape[0],
            out_visible_bias,
            count,
            work,
            scores[first : first + count],
        )


# --- feature mapping ---------------------------------------------------------------------------


def _cluster(distance: Float64Array, max_group: int) -> list[list[int]]:
    """Average-linkage agglomeration on ``distance``, never forming a cluster above ``max_group``.

    Returns the clusters, each sorted, in the order of their smallest feature.
    """
    n = distance.shape[0]
    dist = distance.astype(np.float64, copy=True)
    np.fill_diagonal(dist, np.inf)
    members: list[list[int]] = [[i] for i in range(n)]
    sizes = np.ones(n, dtype=np.int64)
    while True:
        allowed = (sizes[:, None] + sizes[None, :]) <= max_group
        candidate = np.where(allowed, dist, np.inf)
        flat = int(np.argmin(candidate))
        i, j = divmod(flat, n)
        if not np.isfinite(candidate[i, j]):
            break
        merged = (sizes[i] * dist[i] + sizes[j] * dist[j]) / (sizes[i] + sizes[j])
        dist[i, :] = merged
        dist[:, i] = merged
        dist[i, i] = np.inf
        dist[j, :] = np.inf
        dist[:, j] = np.inf
        members[i].extend(members[j])
        members[j] = []
        sizes[i] += sizes[j]
        sizes[j] = max_group + 1
    return sorted((sorted(m) for m in members if m), key=lambda m: m[0])


def _correlation_distance(comoment: Float64Array) -> Float64Array:
    """Return ``1 - |corr|`` from a co-moment matrix; features without variance are at distance 1."""
    variance = np.diag(comoment).copy()
    spread = np.sqrt(np.maximum(variance, 0.0))
    varying = spread > _EPSILON * max(1.0, float(spread.max(initial=0.0)))
    safe = np.where(varying, spread, 1.0)
    corr = comoment / np.outer(safe, safe)
    corr = np.where(np.outer(varying, varying), np.clip(np.abs(corr), 0.0, 1.0), 0.0)
    distance: Float64Array = 1.0 - corr
    return distance


# --- the detector ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Network:
    """The ensemble and output autoencoders, flattened for the kernel; training updates them in place.

    Group ``k`` scales and reconstructs features ``order[group_offsets[k]:group_offsets[k + 1]]``
    (per-feature arrays are indexed by position in ``order``), with ``hidden_offsets[k+1] -
    hidden_offsets[k]`` hidden units and a row-major (visible x hidden) weight block from
    ``weight_offsets[k]``. The output autoencoder reconstructs the groups' RMSEs, scaled by their
    training range ``rmse_min``/``rmse_max``.
    """

    order: Int64Array
    group_offsets: Int64Array
    hidden_offsets: Int64Array
    weight_offsets: Int64Array
    weights: Float64Array
    hidden_bias: Float64Array
    visible_bias: Float64Array
    feature_min: Float64Array
    feature_max: Float64Array
    out_weights: Float64Array
    out_hidden_bias: Float64Array
    out_visible_bias: Float64Array
    rmse_min: Float64Array
    rmse_max: Float64Array

    @classmethod
    def build(cls, groups: list[list[int]], hidden_ratio: float, rng: np.random.Generator) -> _Network:
        """Lay out one autoencoder per group plus the output one, weights ~ U(-1/v, 1/v) as in KitNET."""
        sizes = np.array([len(g) for g in groups], dtype=np.int64)
        hidden = np.array([_hidden_units(len(g), hidden_ratio) for g in groups], dtype=np.int64)
        blocks = [rng.uniform(-1.0 / v, 1.0 / v, v * h) for v, h in zip(sizes, hidden, strict=True)]
        out_hidden = _hidden_units(len(groups), hidden_ratio)
        d, g = int(sizes.sum()), len(groups)
        return cls(
            order=np.array([f for group in groups for f in group], dtype=np.int64),
            group_offsets=_offsets(sizes),
            hidden_offsets=_offsets(hidden),
            weight_offsets=_offsets(sizes * hidden),
            weights=np.concatenate(blocks),
            hidden_bias=np.zeros(int(hidden.sum())),
            visible_bias=np.zeros(d),
            feature_min=np.full(d, np.inf),
            feature_max=np.full(d, -np.inf),
            out_weights=rng.uniform(-1.0 / g, 1.0 / g, g * out_hidden),
            out_hidden_bias=np.zeros(out_hidden),
            out_visible_bias=np.zeros(g),
            rmse_min=np.full(g, np.inf),
            rmse_max=np.full(g, -np.inf),
        )

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Float64Array | Int64Array], n_features: int) -> _Network:
        """Copy the arrays after checking every offset the kernel will trust; raises ValueError."""
        net = cls(
            order=_int_array(arrays, "order"),
            group_offsets=_int_array(arrays, "group_offsets"),
            hidden_offsets=_int_array(arrays, "hidden_offsets"),
            weight_offsets=_int_array(arrays, "weight_offsets"),
            weights=_float_array(arrays, "weights"),
            hidden_bias=_float_array(arrays, "hidden_bias"),
            visible_bias=_float_array(arrays, "visible_bias"),
            feature_min=_float_array(arrays, "feature_min"),
            feature_max=_float_array(arrays, "feature_max"),
            out_weights=_float_array(arrays, "out_weights"),
            out_hidden_bias=_float_array(arrays, "out_hidden_bias"),
            out_visible_bias=_float_array(arrays, "out_visible_bias"),
            rmse_min=_float_array(arrays, "rmse_min"),
            rmse_max=_float_array(arrays, "rmse_max"),
        )
        failed = net._inconsistencies(n_features)
        if failed:
            raise ValueError(f"network arrays inconsistent: {', '.join(failed)}")
        return net

    def _inconsistencies(self, n_features: int) -> list[str]:
        g = len(self.group_offsets) - 1
        sizes, units = np.diff(self.group_offsets), np.diff(self.hidden_offsets)
        per_feature = (self.visible_bias, self.feature_min, self.feature_max)
        per_group = (self.out_visible_bias, self.rmse_min, self.rmse_max)
        out_hidden = len(self.out_hidden_bias)
        # The kernels do not check bounds: every offset and size they trust is checked here, and hidden
        # layers are no wider than their inputs (hidden_ratio <= 1), which sizes the kernels' scratch.
        checks = {
            "order": np.array_equal(np.sort(self.order), np.arange(n_features)),
            "group offsets": g >= 1
            and self.group_offsets[0] == 0
            and self.group_offsets[-1] == n_features
            and bool((sizes >= 1).all()),
            "hidden offsets": len(units) == g
            and self.hidden_offsets[0] == 0
            and bool((units >= 1).all() and (units <= sizes).all()),
            "weight offsets": len(units) == g
            and np.array_equal(self.weight_offsets, _offsets(sizes * units)),
            "weights": len(units) == g
            and len(self.weights) == self.weight_offsets[-1]
            and len(self.hidden_bias) == self.hidden_offsets[-1],
            "per-feature arrays": all(len(a) == n_features for a in per_feature),
            "output layer": 1 <= out_hidden <= g
            and len(self.out_weights) == g * out_hidden
            and all(len(a) == g for a in per_group),
            "finite weights": bool(np.isfinite(np.concatenate(self._parameters())).all()),
        }
        return [name for name, ok in checks.items() if not ok]

    def _parameters(self) -> tuple[Float64Array, ...]:
        return self.weights, self.hidden_bias, self.visible_bias, *self._output()[:3]

    def arrays(self) -> dict[str, Float64Array | Int64Array]:
        """Return copies of every array, by field name."""
        return {name: getattr(self, name).copy() for name in (*_INT_ARRAYS, *_FLOAT_ARRAYS)}

    @property
    def groups(self) -> tuple[tuple[int, ...], ...]:
        """The feature indices of each group."""
        bounds = self.group_offsets.tolist()
        return tuple(tuple(self.order[a:b].tolist()) for a, b in itertools.pairwise(bounds))

    def train(self, rows: npt.NDArray[np.float32], learning_rate: float) -> Float64Array:
        """Learn from ``rows`` in order; return each row's output RMSE from before it was learnt."""
        scores = np.empty(len(rows))
        _train_rows(rows, self.order, self._offsets(), self._layer(), self._output(), learning_rate, scores)
        return scores

    def score(self, rows: npt.NDArray[np.float32], group_rmse: Float64Array) -> Float64Array:
        """Return each row's output RMSE; fill ``group_rmse`` (rows, groups) unless it is empty."""
        scores = np.empty(len(rows))
        _score_rows(rows, self.order, self._offsets(), self._layer(), self._output(), scores, group_rmse)
        return scores

    def _offsets(self) -> tuple[Int64Array, Int64Array, Int64Array]:
        return self.group_offsets, self.hidden_offsets, self.weight_offsets

    def _layer(self) -> tuple[Float64Array, Float64Array, Float64Array, Float64Array, Float64Array]:
        return self.weights, self.hidden_bias, self.visible_bias, self.feature_min, self.feature_max

    def _output(self) -> tuple[Float64Array, Float64Array, Float64Array, Float64Array, Float64Array]:
        return self.out_weights, self.out_hidden_bias, self.out_visible_bias, self.rmse_min, self.rmse_max


_INT_ARRAYS: Final = ("order", "group_offsets", "hidden_offsets", "weight_offsets")
_FLOAT_ARRAYS: Final = (
    "weights",
    "hidden_bias",
    "visible_bias",
    "feature_min",
    "feature_max",
    "out_weights",
    "out_hidden_bias",
    "out_visible_bias",
    "rmse_min",
    "rmse_max",
)


class EnsembleDetector:
    """KitNET: a feature mapper, an ensemble of small autoencoders, and an output autoencoder.

    Rows go to :meth:`fit` until ``feature_map_grace + training_grace`` rows have been learnt, then
    :meth:`score` scores batches. ``fp_budget`` is the false-positive rate the threshold aims at on
    benign traffic (empirical quantile, see the module docstring). Same seed and rows: same model.

    Raises :class:`~fleetguard.errors.InvalidInput` for parameters out of range.
    """

    def __init__(
        self,
        *,
        feature_map_grace: int,
        training_grace: int,
        max_group: int = 10,
        hidden_ratio: float = 0.75,
        learning_rate: float = 0.1,
        fp_budget: float = 1e-3,
        seed: int = 0,
    ) -> None:
        _require(2 <= feature_map_grace <= _MAX_GRACE, f"feature_map_grace {feature_map_grace}", "2..2^40")
        _require(2 <= training_grace <= _MAX_GRACE, f"training_grace {training_grace}", "2..2^40")
        _require(1 <= max_group <= MAX_GROUP, f"max_group {max_group}", f"1..{MAX_GROUP}")
        _require(0.0 < hidden_ratio <= 1.0, f"hidden_ratio {hidden_ratio}", "in (0, 1]")
        _require(0.0 < learning_rate <= 10.0, f"learning_rate {learning_rate}", "in (0, 10]")
        _require(0.0 < fp_budget < 0.5, f"fp_budget {fp_budget}", "in (0, 0.5)")
        self._feature_map_grace = feature_map_grace
        self._training_grace = training_grace
        self._max_group = max_group
        self._hidden_ratio = hidden_ratio
        self._learning_rate = learning_rate
        self._fp_budget = fp_budget
        self._seed = seed
        self._n_features: int | None = None
        self._mapped = 0
        self._trained = 0
        self._mean = np.zeros(0)
        self._comoment = np.zeros((0, 0))
        self._net: _Network | None = None
        self._recent = np.zeros(0)  # the latest prequential training scores, for the threshold
        self._threshold: float | None = None

    # --- properties --------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """The current phase."""
        if self._mapped < self._feature_map_grace:
            return Phase.MAPPING
        if self._trained < self._training_grace:
            return Phase.TRAINING
        return Phase.SCORING

    @property
    def n_features(self) -> int | None:
        """Features per row, fixed by the first :meth:`fit` (None before)."""
        return self._n_features

    @property
    def groups(self) -> tuple[tuple[int, ...], ...]:
        """The feature groups (column indices), one per autoencoder; empty while mapping."""
        return () if self._net is None else self._net.groups

    @property
    def threshold(self) -> float:
        """The calibrated score threshold. Raises :class:`TrainingIncomplete` before training ends."""
        self._require_trained()
        assert self._threshold is not None
        return self._threshold

    # --- phases ------------------------------------------------------------------------------

    def fit(self, features: npt.ArrayLike) -> int:
        """Learn from the rows of ``features`` in order; return how many rows were used.

        Rows after the end of training are not used: score ``features[used:]``. Raises
        :class:`~fleetguard.errors.InvalidInput` for a wrong shape or non-finite values and
        :class:`MonitorLimit` above :data:`MAX_FEATURES`.
        """
        rows = self._rows(features)
        used = 0
        if self.phase is Phase.MAPPING:
            used = min(len(rows), self._feature_map_grace - self._mapped)
            self._map(rows[:used])
        if self.phase is Phase.TRAINING and used < len(rows):
            take = min(len(rows) - used, self._training_grace - self._trained)
            self._train(rows[used : used + take])
            used += take
        return used

    def score(self, features: npt.ArrayLike) -> Float64Array:
        """Return the anomaly score (output RMSE) of each row. Raises :class:`TrainingIncomplete`."""
        net = self._ready()
        rows = self._rows(features)
        return net.score(rows, np.empty((0, 0)))

    def is_anomalous(self, scores: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Return which scores are above :attr:`threshold`. Raises :class:`TrainingIncomplete`."""
        return np.asarray(scores, dtype=np.float64) > self.threshold

    def explain(self, row: npt.ArrayLike, *, top: int = 3) -> list[GroupContribution]:
        """Return the ``top`` groups that reconstructed ``row`` worst, worst first.

        Raises :class:`TrainingIncomplete` before training ends.
        """
        net = self._ready()
        rows = self._rows(np.asarray(row).reshape(1, -1))
        group_rmse = np.empty((1, len(net.group_offsets) - 1))
        net.score(rows, group_rmse)
        low, high = net.rmse_min, net.rmse_max
        contribution = (group_rmse[0] - low) / (high - low + _EPSILON)
        worst = np.argsort(-contribution, kind="stable")[: max(top, 0)]
        groups = net.groups
        return [GroupContribution(int(k), groups[k], float(contribution[k])) for k in worst]

    # --- internals ---------------------------------------------------------------------------

    def _rows(self, features: npt.ArrayLike) -> npt.NDArray[np.float32]:
        rows = np.ascontiguousarray(features, dtype=np.float32)
        if rows.ndim != 2:
            raise InvalidInput(f"features must be a (rows, features) matrix, not {rows.ndim}-dimensional")
        if rows.shape[1] > MAX_FEATURES:
            raise MonitorLimit(f"{rows.shape[1]} features per row, above the bound {MAX_FEATURES}")
        if self._n_features is None:
            if rows.shape[1] == 0:
                raise InvalidInput("features must have at least one column")
            self._n_features = rows.shape[1]
            self._mean = np.zeros(self._n_features)
            self._comoment = np.zeros((self._n_features, self._n_features))
        if rows.shape[1] != self._n_features:
            raise InvalidInput(f"rows have {rows.shape[1]} features, the detector {self._n_features}")
        if not np.isfinite(rows).all():
            raise InvalidInput("features contain NaN or infinity", hint="fix the feature extractor")
        return rows

    def _ready(self) -> _Network:
        self._require_trained()
        assert self._net is not None
        return self._net

    def _require_trained(self) -> None:
        if self.phase is not Phase.SCORING:
            remaining = (self._feature_map_grace - self._mapped) + (self._training_grace - self._trained)
            raise TrainingIncomplete(
                f"the detector is still {self.phase.value}: {remaining} training rows to go",
                hint="fit() benign rows until the training grace period ends",
            )

    def _map(self, rows: npt.NDArray[np.float32]) -> None:
        """Fold a batch into the running mean and co-moment (Chan, Golub and LeVeque 1979)."""
        if len(rows):
            batch = rows.astype(np.float64)
            n_a, n_b = self._mapped, len(batch)
            mean_b = batch.mean(axis=0)
            centred = batch - mean_b
            delta = mean_b - self._mean
            total = n_a + n_b
            self._comoment += centred.T @ centred + np.outer(delta, delta) * (n_a * n_b / total)
            self._mean += delta * (n_b / total)
            self._mapped = total
        if self._mapped == self._feature_map_grace:
            groups = _cluster(_correlation_distance(self._comoment), self._max_group)
            self._net = _Network.build(groups, self._hidden_ratio, np.random.default_rng(self._seed))
            self._mean = np.zeros(0)
            self._comoment = np.zeros((0, 0))

    def _train(self, rows: npt.NDArray[np.float32]) -> None:
        assert self._net is not None
        scores = self._net.train(rows, self._learning_rate)
        first = self._trained
        self._trained += len(rows)
        calibrating = scores[max(0, self._training_grace // 2 - first) :]
        self._recent = np.concatenate([self._recent, calibrating])[-_CALIBRATION_ROWS:]
        if self._trained == self._training_grace:
            self._threshold = float(np.quantile(self._recent, 1.0 - self._fp_budget, method="higher"))
            self._recent = np.zeros(0)

    # --- persistence -------------------------------------------------------------------------

    def state(self) -> DetectorState:
        """Return the whole detector as arrays (copies) and JSON-able metadata."""
        if self._net is not None:
            arrays = self._net.arrays()
            if self.phase is Phase.TRAINING:
                arrays["calibration"] = self._recent.copy()
        else:
            arrays = {"mean": self._mean.copy(), "comoment": self._comoment.copy()}
        metadata: dict[str, int | float | str | None] = {
            "format": _FORMAT,
            "feature_map_grace": self._feature_map_grace,
            "training_grace": self._training_grace,
            "max_group": self._max_group,
            "hidden_ratio": self._hidden_ratio,
            "learning_rate": self._learning_rate,
            "fp_budget": self._fp_budget,
            "seed": self._seed,
            "n_features": self._n_features,
            "mapped": self._mapped,
            "trained": self._trained,
            "threshold": self._threshold,
        }
        return DetectorState(arrays=arrays, metadata=metadata)

    @classmethod
    def from_state(cls, state: DetectorState) -> EnsembleDetector:
        """Rebuild a detector from :meth:`state`. Raises :class:`~fleetguard.errors.InvalidInput`."""
        meta = state.metadata
        if meta.get("format") != _FORMAT:
            raise InvalidInput(f"detector state format {meta.get('format')!r}, expected {_FORMAT!r}")
        try:
            detector = cls(
                feature_map_grace=int(_number(meta, "feature_map_grace")),
                training_grace=int(_number(meta, "training_grace")),
                max_group=int(_number(meta, "max_group")),
                hidden_ratio=_number(meta, "hidden_ratio"),
                learning_rate=_number(meta, "learning_rate"),
                fp_budget=_number(meta, "fp_budget"),
                seed=int(_number(meta, "seed")),
            )
            detector._restore(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"detector state is inconsistent: {exc}") from exc
        return detector

    def _restore(self, state: DetectorState) -> None:
        meta, arrays = state.metadata, state.arrays
        n = meta["n_features"]
        self._n_features = None if n is None else int(n)
        self._mapped = int(_number(meta, "mapped"))
        self._trained = int(_number(meta, "trained"))
        if not (0 <= self._mapped <= self._feature_map_grace and 0 <= self._trained <= self._training_grace):
            raise ValueError("row counts out of range")
        if self._trained and self._mapped < self._feature_map_grace:
            raise ValueError("trained before mapping ended")
        threshold = meta["threshold"]
        self._threshold = None if threshold is None else float(threshold)
        if (self._threshold is None) != (self.phase is not Phase.SCORING):
            raise ValueError("threshold present before training ended or missing after")
        if self.phase is Phase.MAPPING:
            self._restore_mapping(arrays)
        else:
            if self._n_features is None:
                raise ValueError("feature count missing after mapping")
            self._net = _Network.from_arrays(arrays, self._n_features)
        if self.phase is Phase.TRAINING:
            self._recent = _float_array(arrays, "calibration")[-_CALIBRATION_ROWS:]

    def _restore_mapping(self, arrays: Mapping[str, Float64Array | Int64Array]) -> None:
        d = self._n_features if self._n_features is not None else 0
        mean = np.asarray(arrays["mean"], dtype=np.float64).copy()
        comoment = np.asarray(arrays["comoment"], dtype=np.float64).copy()
        if mean.shape != (d,) or comoment.shape != (d, d) or (self._mapped and self._n_features is None):
            raise ValueError("mapping statistics do not match the feature count")
        self._mean, self._comoment = mean, comoment


def _int_array(arrays: Mapping[str, Float64Array | Int64Array], name: str) -> Int64Array:
    value = np.asarray(arrays[name])
    if value.dtype != np.int64 or value.ndim != 1:
        raise ValueError(f"{name} must be a 1-d int64 array")
    return np.array(value, dtype=np.int64)


def _float_array(arrays: Mapping[str, Float64Array | Int64Array], name: str) -> Float64Array:
    value = np.asarray(arrays[name])
    if value.dtype != np.float64 or value.ndim != 1:
        raise ValueError(f"{name} must be a 1-d float64 array")
    return np.array(value, dtype=np.float64)


def _hidden_units(visible: int, ratio: float) -> int:
    return max(1, math.ceil(visible * ratio))


def _offsets(sizes: Int64Array) -> Int64Array:
    return np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(sizes, dtype=np.int64)])


def _number(metadata: Mapping[str, int | float | str | None], key: str) -> float:
    value = metadata[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key} must be a number")
    return float(value)


def _require(condition: bool, what: str, expected: str) -> None:
    if not condition:
        raise InvalidInput(f"{what} out of range: expected {expected}")
