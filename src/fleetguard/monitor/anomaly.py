"""The trained anomaly model of an installation: kept on disk, scoring packets into explained findings.

A model is the feature extractor's statistics and the trained autoencoder ensemble, written as one
``.npz`` (arrays, ``allow_pickle=False``) under ``<data dir>/monitor/model.npz`` with a private file
mode, replaced atomically. :func:`anomalies` scores a packet batch and turns the anomalous packets
into one :class:`AnomalyFinding` per source address: how many packets, the worst score against the
threshold, and the feature groups that reconstructed worst, by name (why it is anomalous).
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleetguard.errors import InvalidInput
from fleetguard.monitor.autoencoder import DetectorState, EnsembleDetector
from fleetguard.monitor.features import FeatureExtractor
from fleetguard.monitor.model import PacketColumns
from fleetguard.private_file import replace_private_file

__all__ = ["MAX_MODEL_BYTES", "AnomalyFinding", "AnomalyModel", "anomalies", "train_model"]

MAX_MODEL_BYTES = 1024 * 1024 * 1024
_FEATURES = "features/"
_DETECTOR = "detector/"
_META = "detector_metadata"
_MAX_FINDINGS = 1000


@dataclass(frozen=True, slots=True)
class AnomalyFinding:
    """Anomalous packets from one source: how many, how far beyond the threshold, and why."""

    address: str
    packets: int
    first: dt.datetime
    last: dt.datetime
    score: float
    threshold: float
    groups: tuple[tuple[str, float], ...]

    @property
    def reason(self) -> str:
        """One line with the numbers."""
        why = ", ".join(f"{name} x{value:.1f}" for name, value in self.groups)
        return (
            f"{self.packets} anomalous packets from {self.address}: score {self.score:.3g} over the "
            f"threshold {self.threshold:.3g} ({self.score / self.threshold:.1f}x); worst reconstructed: {why}"
        )


@dataclass(slots=True)
class AnomalyModel:
    """A feature extractor and its trained detector."""

    extractor: FeatureExtractor
    detector: EnsembleDetector

    def save(self, path: Path) -> None:
        """Write the model (0600, atomically)."""
        buffer = io.BytesIO()
        state = self.detector.state()
        arrays = {_FEATURES + k: v for k, v in self.extractor.state().items()}
        arrays |= {_DETECTOR + k: v for k, v in state.arrays.items()}
        arrays[_META] = np.frombuffer(json.dumps(dict(state.metadata)).encode(), np.uint8)
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        replace_private_file(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> AnomalyModel:
        """Read a model; raise :class:`InvalidInput` for a file that is not one (no pickles are read)."""
        try:
            if path.stat().st_size > MAX_MODEL_BYTES:
                raise InvalidInput(f"{path} is larger than {MAX_MODEL_BYTES} bytes")
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"{path} is not a monitor model: {exc}") from exc
        try:
            metadata = json.loads(bytes(arrays.pop(_META)).decode())
        except (KeyError, ValueError) as exc:
            raise InvalidInput(f"{path} has no detector metadata") from exc
        features = {k.removeprefix(_FEATURES): v for k, v in arrays.items() if k.startswith(_FEATURES)}
        detector = {k.removeprefix(_DETECTOR): v for k, v in arrays.items() if k.startswith(_DETECTOR)}
        return cls(
            FeatureExtractor.from_state(features),
            EnsembleDetector.from_state(DetectorState(detector, metadata)),
        )


def train_model(packets: PacketColumns, *, map_fraction: float = 0.1) -> AnomalyModel:
    """Learn a model from benign ``packets``: the first ``map_fraction`` map the features, the rest train.

    Raises :class:`InvalidInput` for fewer than 1,000 packets (too few to learn a baseline from).
    """
    if len(packets) < 1000:
        raise InvalidInput(f"{len(packets)} packets are too few to train on (at least 1,000)")
    extractor = FeatureExtractor()
    features = extractor.update(packets)
    map_rows = max(1, int(len(packets) * map_fraction))
    detector = EnsembleDetector(feature_map_grace=map_rows, training_grace=len(packets) - map_rows)
    detector.fit(features)
    return AnomalyModel(extractor, detector)


def anomalies(model: AnomalyModel, packets: PacketColumns, *, top: int = 3) -> list[AnomalyFinding]:
    """Score ``packets`` (the extractor's statistics move on); return one finding per anomalous source."""
    features = model.extractor.update(packets)
    scores = model.detector.score(features)
    flagged = np.flatnonzero(model.detector.is_anomalous(scores))
    names = model.extractor.feature_names()
    threshold = float(model.detector.threshold)
    findings = []
    for source in np.unique(packets.src[flagged])[:_MAX_FINDINGS]:
        rows = flagged[packets.src[flagged] == source]
        worst = int(rows[np.argmax(scores[rows])])
        groups = tuple(
            (_group_name(names, c.features), round(float(c.contribution), 2))
            for c in model.detector.explain(features[worst], top=top)
        )
        findings.append(
            AnomalyFinding(
                address=_address(packets, int(source)),
                packets=len(rows),
                first=_utc(float(packets.ts[rows[0]])), last=_utc(float(packets.ts[rows[-1]])),
                score=float(scores[worst]), threshold=threshold, groups=groups,
            )
        )  # fmt: skip
    return findings


def _group_name(names: Sequence[str], features: Sequence[int]) -> str:
    """Name a feature group by its members' common prefix (``channel_0.1``), or its first member."""
    members = [names[i] for i in features if 0 <= i < len(names)]
    if not members:
        return "?"
    prefixes = {"_".join(m.split("_")[:2]) for m in members}
    return prefixes.pop() if len(prefixes) == 1 else f"{members[0]} (+{len(members) - 1})"


def _address(packets: PacketColumns, key: int) -> str:
    return packets.addresses.get(key, "non-IP" if key == 0 else str(key))


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)
