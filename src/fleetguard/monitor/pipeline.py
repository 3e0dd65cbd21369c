"""The anomaly pipeline over packets: features, the autoencoder ensemble, scores; and its evaluation.

Theory of operation. Packets (in capture order) go through :class:`FeatureExtractor` (damped
statistics per MAC-IP, host, channel and socket, several time windows) into :class:`EnsembleDetector`
(KitNET's ensemble of small autoencoders). The first rows map the features into groups, the next
train the autoencoders on traffic taken as benign (the grace periods), and every later row gets a
score (reconstruction RMSE) and a verdict against a threshold calibrated on the training scores.
:func:`evaluate_packets` runs that over a labelled stream and reports ROC AUC, TPR at 0.1 % and 1 %
FPR, and the throughput of each stage, timed separately: the goal is for ingestion + features +
scoring, which is what a gateway pays per packet once trained.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from fleetguard.errors import InvalidInput
from fleetguard.monitor.autoencoder import EnsembleDetector
from fleetguard.monitor.dataset import Labelled
from fleetguard.monitor.evaluation import Evaluation, evaluate
from fleetguard.monitor.features import FeatureExtractor
from fleetguard.monitor.model import PacketColumns

__all__ = ["PipelineRun", "Stages", "evaluate_packets"]

_BATCH = 65536


@dataclass(frozen=True, slots=True)
class Stages:
    """Seconds spent in each stage, and the rows each stage processed."""

    read_s: float
    features_s: float
    train_s: float
    score_s: float
    packets: int
    trained: int
    scored: int

    @property
    def pipeline_per_s(self) -> float:
        """Packets per second through reading, features and scoring (the trained steady state)."""
        per_packet = (self.read_s + self.features_s) / max(1, self.packets) + self.score_s / max(
            1, self.scored
        )
        return 1.0 / per_packet if per_packet > 0 else float("inf")


@dataclass(frozen=True, slots=True)
class PipelineRun:
    """What :func:`evaluate_packets` measured: the evaluation on the scored rows, the stage times, and
    the features and labels (for comparing other detectors on exactly the same rows)."""

    evaluation: Evaluation
    stages: Stages
    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.uint8]
    scores: npt.NDArray[np.float64]
    train_rows: int


def evaluate_packets(
    labelled: Labelled,
    *,
    read_s: float,
    train_fraction: float = 0.5,
    map_fraction: float = 0.1,
    extractor: FeatureExtractor | None = None,
    detector_factory: Callable[[int, int], EnsembleDetector] | None = None,
) -> PipelineRun:
    """Run the pipeline over ``labelled``; train on its first ``train_fraction`` of *benign-prefix*
    packets (the rows before the first malicious one, at most), score the rest and evaluate them.

    Raises :class:`InvalidInput` when the training rows or the scored rows cannot be formed.
    """
    if not 0 < map_fraction < train_fraction < 1:
        raise InvalidInput("need 0 < map_fraction < train_fraction < 1")
    packets, labels = labelled.packets, labelled.labels
    malicious = np.flatnonzero(labels)
    benign_prefix = int(malicious[0]) if len(malicious) else len(labels)
    train_rows = min(int(len(labels) * train_fraction), benign_prefix)
    map_rows = max(1, int(train_rows * map_fraction / train_fraction))
    if train_rows - map_rows < 100 or len(labels) - train_rows < 2:
        raise InvalidInput(
            f"{len(labels)} packets with a benign prefix of {benign_prefix}: too few to train and score"
        )
    extractor = extractor or FeatureExtractor()
    started = time.perf_counter()
    features = np.concatenate(
        [extractor.update(_slice(packets, start)) for start in range(0, len(packets), _BATCH)]
    )
    features_s = time.perf_counter() - started
    detector = (detector_factory or _default_detector)(map_rows, train_rows - map_rows)
    started = time.perf_counter()
    detector.fit(features[:train_rows])
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    scores = detector.score(features[train_rows:])
    score_s = time.perf_counter() - started
    test_labels = labels[train_rows:]
    stages = Stages(read_s, features_s, train_s, score_s, len(packets), train_rows, len(scores))
    evaluation = evaluate(scores, test_labels, seconds=1.0 / stages.pipeline_per_s * len(scores))
    return PipelineRun(evaluation, stages, features, labels, scores, train_rows)


def _default_detector(map_rows: int, train_rows: int) -> EnsembleDetector:
    return EnsembleDetector(feature_map_grace=map_rows, training_grace=train_rows)


def _slice(packets: PacketColumns, start: int) -> PacketColumns:
    end = start + _BATCH
    return replace(
        packets, ts=packets.ts[start:end], src=packets.src[start:end], dst=packets.dst[start:end],
        sport=packets.sport[start:end], dport=packets.dport[start:end], proto=packets.proto[start:end],
        length=packets.length[start:end], tcp_flags=packets.tcp_flags[start:end],
        src_mac=packets.src_mac[start:end],
    )  # fmt: skip
