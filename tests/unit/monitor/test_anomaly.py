"""The anomaly model: trained on benign packets, kept on disk, scoring explained findings; the pipeline's
evaluation on a labelled stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetguard.errors import InvalidInput
from fleetguard.monitor.anomaly import AnomalyModel, anomalies, train_model
from fleetguard.monitor.dataset import Labelled, concatenate
from fleetguard.monitor.model import PacketColumns, Skipped, address_key
from fleetguard.monitor.pipeline import evaluate_packets

CAMERA, CLOUD, ATTACKER = "192.168.1.20", "52.1.2.3", "192.168.1.66"


def _traffic(n: int, *, start: float, seed: int, src: str = CAMERA, burst: bool = False) -> PacketColumns:
    """A camera's steady stream to its cloud (or, with ``burst``, a flood of tiny packets to many ports)."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(0.0005 if burst else 0.05, n)
    sizes = rng.integers(60, 80, n) if burst else rng.normal(900, 60, n).clip(60, 1500)
    dports = rng.integers(1, 65535, n) if burst else np.full(n, 443)
    return PacketColumns(
        ts=start + np.cumsum(gaps), src=np.full(n, address_key(src), np.uint64),
        dst=np.full(n, address_key(CLOUD), np.uint64), sport=np.full(n, 40000, np.uint16),
        dport=dports.astype(np.uint16), proto=np.full(n, 6, np.uint8), length=sizes.astype(np.uint32),
        tcp_flags=np.full(n, 0x02 if burst else 0x18, np.uint8),
        src_mac=np.full(n, 0x0A0000000002 if burst else 0x0A0000000001, np.uint64),
        addresses={address_key(src): src, address_key(CLOUD): CLOUD},
    )  # fmt: skip


def _merged(a: PacketColumns, b: PacketColumns) -> PacketColumns:
    """Both batches in one, in time order (no shifting: the model's clock continues)."""
    order = np.argsort(np.concatenate([a.ts, b.ts]), kind="stable")
    columns = ("ts", "src", "dst", "sport", "dport", "proto", "length", "tcp_flags", "src_mac")
    joined = {name: np.concatenate([getattr(a, name), getattr(b, name)])[order] for name in columns}
    return PacketColumns(**joined, addresses={**a.addresses, **b.addresses})


def test_a_trained_model_explains_the_anomalous_source_and_survives_a_restart(tmp_path: Path) -> None:
    benign = _traffic(30000, start=0.0, seed=1)  # 1,500 s: the slowest window (100 s) settles
    model = train_model(benign)
    path = tmp_path / "monitor" / "model.npz"
    model.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    reloaded = AnomalyModel.load(path)
    end = float(benign.ts[-1]) + 0.05  # the camera carries on where training ended; the attacker floods
    mixed = _merged(
        _traffic(500, start=end, seed=2), _traffic(300, start=end + 5.0, seed=3, src=ATTACKER, burst=True)
    )
    found = {f.address: f for f in anomalies(reloaded, mixed)}
    assert ATTACKER in found
    finding = found[ATTACKER]
    assert finding.packets >= 150  # most of the flood
    camera = found.get(CAMERA)
    assert camera is None or camera.score < finding.score  # the flood ranks above the camera
    assert finding.score > finding.threshold
    assert finding.packets > 100
    assert finding.groups  # the feature groups that reconstructed worst, by name
    assert f"anomalous packets from {ATTACKER}" in finding.reason


def test_bad_model_files_and_too_little_traffic_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "model.npz"
    garbage.write_bytes(b"not a model")
    with pytest.raises(InvalidInput, match="is not a monitor model"):
        AnomalyModel.load(garbage)
    with pytest.raises(InvalidInput, match="999 packets are too few to train on"):
        train_model(_traffic(999, start=0.0, seed=1))


def test_the_pipeline_evaluates_a_labelled_stream() -> None:
    benign = _traffic(5000, start=0.0, seed=4)
    attack = _traffic(400, start=0.0, seed=5, src=ATTACKER, burst=True)
    stream = concatenate([benign, attack])
    labels = np.concatenate([np.zeros(len(benign), np.uint8), np.ones(len(attack), np.uint8)])
    run = evaluate_packets(Labelled(stream, labels, Skipped()), read_s=0.01, train_fraction=0.6)
    assert run.train_rows == 3240
    assert run.stages.scored == len(stream) - 3240
    assert run.evaluation.auc > 0.95
    with pytest.raises(InvalidInput, match="too few to train and score"):
        evaluate_packets(Labelled(attack, np.ones(len(attack), np.uint8), Skipped()), read_s=0.01)
