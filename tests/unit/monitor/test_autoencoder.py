"""The KitNET-style ensemble: grace periods, detection, explanations, persistence, bounds."""

from __future__ import annotations

import io
import json
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest

from fleetguard.errors import InvalidInput
from fleetguard.monitor.autoencoder import MAX_FEATURES, DetectorState, EnsembleDetector, Phase
from fleetguard.monitor.errors import MonitorLimit, TrainingIncomplete
from fleetguard.monitor.evaluation import roc_auc

BLOCKS, PER_BLOCK = 4, 6
FEATURES = BLOCKS * PER_BLOCK
MAP_ROWS, TRAIN_ROWS = 600, 6000

Rows = npt.NDArray[np.float32]


def _benign(rng: np.random.Generator, n: int) -> Rows:
    """Blocks of PER_BLOCK features driven by two latent factors each, plus a little noise."""
    mixing = np.random.default_rng(7).normal(size=(BLOCKS, 2, PER_BLOCK))
    latent = rng.normal(size=(n, BLOCKS, 2))
    rows: npt.NDArray[np.float64] = np.einsum("nbk,bkp->nbp", latent, mixing).reshape(n, FEATURES)
    return (rows + 0.05 * rng.normal(size=rows.shape) + 3.0).astype(np.float32)


def _decorrelate(rows: Rows, rng: np.random.Generator, block: int) -> Rows:
    """Replace one block by independent noise of the same spread: every marginal looks benign."""
    attacked = rows.copy()
    columns = slice(block * PER_BLOCK, (block + 1) * PER_BLOCK)
    spread = rows[:, columns].std(axis=0)
    attacked[:, columns] = 3.0 + rng.normal(size=(len(rows), PER_BLOCK)) * spread
    return attacked


def _detector(**overrides: int | float) -> EnsembleDetector:
    options: dict[str, int | float] = {"feature_map_grace": MAP_ROWS, "training_grace": TRAIN_ROWS, "seed": 3}
    options.update(overrides)
    return EnsembleDetector(
        feature_map_grace=int(options["feature_map_grace"]),
        training_grace=int(options["training_grace"]),
        max_group=int(options.get("max_group", PER_BLOCK)),
        fp_budget=float(options.get("fp_budget", 0.01)),
        seed=int(options["seed"]),
    )


@pytest.fixture(scope="module")
def trained() -> EnsembleDetector:
    detector = _detector()
    rows = _benign(np.random.default_rng(0), MAP_ROWS + TRAIN_ROWS)
    assert detector.fit(rows) == len(rows)
    return detector


def test_feature_map_groups_the_correlated_blocks(trained: EnsembleDetector) -> None:
    blocks = {tuple(range(b * PER_BLOCK, (b + 1) * PER_BLOCK)) for b in range(BLOCKS)}
    assert set(trained.groups) == blocks


def test_groups_partition_the_features_within_max_group() -> None:
    detector = _detector(max_group=4)
    detector.fit(_benign(np.random.default_rng(1), MAP_ROWS))
    assert detector.phase is Phase.TRAINING
    assert all(1 <= len(group) <= 4 for group in detector.groups)
    assert sorted(f for group in detector.groups for f in group) == list(range(FEATURES))


def test_detects_decorrelated_and_shifted_rows(trained: EnsembleDetector) -> None:
    rng = np.random.default_rng(5)
    benign = _benign(rng, 3000)
    decorrelated = _decorrelate(_benign(rng, 300), rng, block=2)
    shifted = _benign(rng, 300)
    shifted[:, :PER_BLOCK] += shifted[:, :PER_BLOCK].std(axis=0)
    labels = np.concatenate([np.zeros(3000, bool), np.ones(600, bool)])
    scores = trained.score(np.concatenate([benign, decorrelated, shifted]))
    assert roc_auc(scores, labels) > 0.95


def test_threshold_keeps_the_false_positive_budget_and_flags_blatant_attacks(
    trained: EnsembleDetector,
) -> None:
    rng = np.random.default_rng(12)
    benign = trained.score(_benign(rng, 5000))
    assert trained.is_anomalous(benign).mean() <= 0.015  # fp_budget 0.01, calibrated on training rows
    blatant = _benign(rng, 200)
    blatant[:, 3 * PER_BLOCK :] += 3.0 * blatant[:, 3 * PER_BLOCK :].std(axis=0)
    assert trained.is_anomalous(trained.score(blatant)).all()


def test_training_grace_is_respected_row_by_row() -> None:
    detector = _detector(feature_map_grace=50, training_grace=100)
    rows = _benign(np.random.default_rng(2), 400)
    phases = [detector.phase]
    assert detector.fit(rows[:49]) == 49
    phases.append(detector.phase)
    assert detector.groups == ()
    assert detector.fit(rows[49:149]) == 100
    phases.append(detector.phase)
    with pytest.raises(TrainingIncomplete, match="still training: 1 training rows to go"):
        detector.score(rows[:1])
    assert detector.fit(rows[149:]) == 1
    phases.append(detector.phase)
    assert phases == [Phase.MAPPING, Phase.MAPPING, Phase.TRAINING, Phase.SCORING]
    assert detector.fit(rows) == 0
    assert detector.score(rows[151:]).shape == (249,)


def test_batching_does_not_change_the_model() -> None:
    rows = _benign(np.random.default_rng(3), 1200)
    whole, chunked = (
        _detector(feature_map_grace=200, training_grace=800),
        _detector(feature_map_grace=200, training_grace=800),
    )
    whole.fit(rows)
    for start in range(0, 1000, 37):
        chunked.fit(rows[start : start + 37])
    assert whole.groups == chunked.groups
    assert whole.threshold == chunked.threshold
    np.testing.assert_array_equal(whole.score(rows[1000:]), chunked.score(rows[1000:]))


def test_nothing_is_scored_before_training_ends() -> None:
    detector = _detector()
    rows = _benign(np.random.default_rng(4), MAP_ROWS + 10)
    for call in (
        lambda: detector.score(rows),
        lambda: detector.is_anomalous(np.ones(3)),
        lambda: detector.explain(rows[0]),
        lambda: detector.threshold,
    ):
        with pytest.raises(TrainingIncomplete, match="still mapping"):
            call()
    detector.fit(rows)
    before = detector.state()
    with pytest.raises(TrainingIncomplete, match=f"still training: {TRAIN_ROWS - 10} training rows"):
        detector.score(rows)
    after = detector.state()
    assert before.metadata == after.metadata
    assert all(np.array_equal(before.arrays[k], after.arrays[k]) for k in before.arrays)


def _round_trip(state: DetectorState) -> DetectorState:
    """Through the formats a service would use: np.savez for arrays, JSON for metadata."""
    buffer = io.BytesIO()
    np.savez(buffer, **cast("dict[str, Any]", state.arrays))
    buffer.seek(0)
    with np.load(buffer) as loaded:
        arrays = {name: loaded[name] for name in loaded.files}
    return DetectorState(arrays=arrays, metadata=json.loads(json.dumps(state.metadata)))


@pytest.mark.parametrize("stop", [0, 300, MAP_ROWS + 2000, MAP_ROWS + TRAIN_ROWS])
def test_state_round_trip_gives_identical_scores(stop: int) -> None:
    rows = _benign(np.random.default_rng(6), MAP_ROWS + TRAIN_ROWS + 500)
    original = _detector()
    original.fit(rows[:stop])
    restored = EnsembleDetector.from_state(_round_trip(original.state()))
    assert restored.phase is original.phase
    for detector in (original, restored):
        detector.fit(rows[stop : MAP_ROWS + TRAIN_ROWS])
    assert restored.threshold == original.threshold
    tail = rows[MAP_ROWS + TRAIN_ROWS :]
    np.testing.assert_array_equal(restored.score(tail), original.score(tail))


def test_tampered_state_is_refused(trained: EnsembleDetector) -> None:
    state = trained.state()
    bad_order = dict(state.arrays, order=np.arange(FEATURES, dtype=np.int64) + 1)
    with pytest.raises(InvalidInput, match="inconsistent: network arrays inconsistent: order"):
        EnsembleDetector.from_state(DetectorState(arrays=bad_order, metadata=state.metadata))
    bad_offsets = dict(state.arrays, weight_offsets=state.arrays["weight_offsets"] * 2)
    with pytest.raises(InvalidInput, match="weight offsets"):
        EnsembleDetector.from_state(DetectorState(arrays=bad_offsets, metadata=state.metadata))
    too_wide = dict(state.arrays, hidden_offsets=state.arrays["group_offsets"] * 2)
    with pytest.raises(InvalidInput, match="hidden offsets"):
        EnsembleDetector.from_state(DetectorState(arrays=too_wide, metadata=state.metadata))
    with pytest.raises(InvalidInput, match="format"):
        EnsembleDetector.from_state(DetectorState(arrays=state.arrays, metadata={"format": "other"}))
    no_threshold = dict(state.metadata, threshold=None)
    with pytest.raises(InvalidInput, match="threshold"):
        EnsembleDetector.from_state(DetectorState(arrays=state.arrays, metadata=no_threshold))


def test_explain_names_the_perturbed_group(trained: EnsembleDetector) -> None:
    rng = np.random.default_rng(8)
    row = _decorrelate(_benign(rng, 1), rng, block=1)[0]
    row[PER_BLOCK : 2 * PER_BLOCK] += 10.0
    reasons = trained.explain(row)
    assert len(reasons) == 3
    assert reasons[0].features == tuple(range(PER_BLOCK, 2 * PER_BLOCK))
    assert reasons[0].contribution > 1.0 > reasons[1].contribution
    assert [r.contribution for r in reasons] == sorted((r.contribution for r in reasons), reverse=True)


def test_constant_columns_give_finite_scores() -> None:
    rng = np.random.default_rng(9)
    rows = _benign(rng, 1500)
    rows[:, [0, 7]] = 42.0
    rows[:, 13] = 0.0
    detector = _detector(feature_map_grace=300, training_grace=1000)
    detector.fit(rows[:1300])
    scores = detector.score(rows[1300:])
    assert np.isfinite(scores).all()
    assert np.isfinite(detector.threshold)
    moved = rows[1300:].copy()
    moved[:, 13] = np.finfo(np.float32).max
    moved_scores = detector.score(moved)
    assert np.isfinite(moved_scores).all()
    assert (moved_scores > scores).all()


def test_same_seed_same_model_other_seed_other_model() -> None:
    rows = _benign(np.random.default_rng(10), 1200)
    scores = []
    for seed in (1, 1, 2):
        detector = _detector(feature_map_grace=200, training_grace=800, seed=seed)
        detector.fit(rows[:1000])
        scores.append(detector.score(rows[1000:]))
    np.testing.assert_array_equal(scores[0], scores[1])
    assert not np.array_equal(scores[0], scores[2])


def test_bad_rows_are_refused_without_changing_state() -> None:
    detector = _detector()
    detector.fit(_benign(np.random.default_rng(11), 10))
    with pytest.raises(InvalidInput, match="rows have 5 features, the detector 24"):
        detector.fit(np.zeros((3, 5), np.float32))
    with pytest.raises(InvalidInput, match="NaN"):
        detector.fit(np.full((3, FEATURES), np.nan, np.float32))
    with pytest.raises(InvalidInput, match="matrix"):
        detector.fit(np.zeros(FEATURES, np.float32))
    assert detector.state().metadata["mapped"] == 10
    with pytest.raises(MonitorLimit, match="above the bound"):
        _detector().fit(np.zeros((2, MAX_FEATURES + 1), np.float32))


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("feature_map_grace", 1),
        ("training_grace", 0),
        ("max_group", 0),
        ("max_group", 65),
        ("fp_budget", 0.5),
    ],
)
def test_parameters_out_of_range_are_refused(option: str, value: int | float) -> None:
    with pytest.raises(InvalidInput, match=f"{option} {value} out of range"):
        _detector(**{option: value})
