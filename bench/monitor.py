"""Benchmark: the monitoring figures of issue 9, each printed beside its goal and its peers.

(p) pipeline  packets/s on one core from pcap through features and scoring, on the labelled shared
              captures (``../shared/data/net``: the benign device captures, then the attack captures,
              joined in time order): reading, features and scoring timed separately; the steady-state
              figure counts reading + features per packet and scoring per scored row. Goal >= 100,000/s.
(a) accuracy  on the same features and the same rows, in the same run: our ROC AUC (and TPR at 0.1 %
              and 1 % FPR) beside river's HalfSpaceTrees and scikit-learn's IsolationForest, each
              trained on the same benign rows and scored online (one row at a time, as a monitor
              scores); IsolationForest's batch scoring too. Goal: a higher AUC than both, at >= 10x the
              faster one's online scoring speed. The peers train on our training rows; the scored rows
              are sampled (``--peer-rows``) because their online scoring is slow, and our AUC is
              computed on the same sample.
(n) netflow   records/s the NetFlow/IPFIX collector accepts without loss from a separate sending
              process: ``bench/monitor_netflow.py``.

river and scikit-learn are not dependencies of fleetguard: ``.venv/bin/pip install river scikit-learn``.
Run: ``.venv/bin/python bench/monitor.py [--peer-rows 5000] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fleetguard.monitor.dataset import labelled_captures
from fleetguard.monitor.evaluation import roc_auc, tpr_at_fpr
from fleetguard.monitor.packets import read_packets
from fleetguard.monitor.pipeline import PipelineRun, evaluate_packets

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "net"


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def _run(train_fraction: float) -> PipelineRun:
    benign = sorted((DATA / "benign-devices").glob("*.pcap"))
    attack = sorted((DATA / "attacks").glob("*.pcap"))
    started = time.perf_counter()
    stream = labelled_captures(benign, attack, read_packets)
    return evaluate_packets(stream, read_s=time.perf_counter() - started, train_fraction=train_fraction)


def bench_pipeline(runs: int, train_fraction: float) -> PipelineRun:
    """(p): the whole pipeline ``runs`` times; print the median packets/s."""
    results = [_run(train_fraction) for _ in range(runs)]
    rates = [r.stages.pipeline_per_s for r in results]
    last = results[-1]
    stages = last.stages
    print(f"    {stages.packets:,} packets: read {stages.read_s:.2f} s, features {stages.features_s:.2f} s, "
          f"training {stages.train_s:.2f} s on {stages.trained:,}, scoring {stages.score_s:.2f} s on "
          f"{stages.scored:,}")  # fmt: skip
    print(f"(p) pcap -> features -> scores on one core: median {statistics.median(rates):,.0f} packets/s "
          f"(runs: {', '.join(f'{r:,.0f}' for r in rates)}) — goal >= 100,000/s: "
          f"{_verdict(statistics.median(rates) >= 100_000)}")  # fmt: skip
    return last


def _sample(run: PipelineRun, rows: int, seed: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The peers train on our training rows, all of them; the scored rows are a seeded sample."""
    rng = np.random.default_rng(seed)
    train = np.arange(run.train_rows)
    test_all = np.arange(run.train_rows, len(run.labels))
    test = np.sort(rng.choice(test_all, size=min(rows, len(test_all)), replace=False))
    return train, test


def bench_accuracy(run: PipelineRun, rows: int) -> None:
    """(a): AUC and online scoring speed beside HalfSpaceTrees and IsolationForest, same rows."""
    try:
        from river.anomaly import HalfSpaceTrees
        from sklearn.ensemble import IsolationForest
    except ImportError:
        print("(a) skipped: pip install river scikit-learn to compare with the peers")
        return
    train, test = _sample(run, rows, seed=7)
    features, labels = run.features.astype(np.float64), run.labels
    ours = run.scores[test - run.train_rows]
    per_row = run.stages.score_s / max(1, run.stages.scored)
    low, high = features[train].min(axis=0), features[train].max(axis=0)
    scaled = np.clip((features - low) / np.where(high > low, high - low, 1.0), 0.0, 1.0)
    names = [f"f{i}" for i in range(features.shape[1])]

    hst = HalfSpaceTrees(n_trees=25, height=15, window_size=250, seed=7)
    for row in scaled[train]:
        hst.learn_one(dict(zip(names, row, strict=True)))
    started = time.perf_counter()
    hst_scores = np.array([hst.score_one(dict(zip(names, row, strict=True))) for row in scaled[test]])
    hst_rate = len(test) / (time.perf_counter() - started)

    forest = IsolationForest(n_estimators=100, random_state=7).fit(features[train])
    started = time.perf_counter()
    forest_online = np.array([-forest.score_samples(row.reshape(1, -1))[0] for row in features[test]])
    forest_rate = len(test) / (time.perf_counter() - started)
    started = time.perf_counter()
    forest_batch = -forest.score_samples(features[test])
    forest_batch_rate = len(test) / (time.perf_counter() - started)
    assert np.allclose(forest_online, forest_batch)

    truth = labels[test]
    rows_out = [
        ("fleetguard (autoencoder ensemble)", ours, 1.0 / per_row),
        ("river HalfSpaceTrees (online)", hst_scores, hst_rate),
        ("scikit-learn IsolationForest (online)", forest_online, forest_rate),
        ("scikit-learn IsolationForest (batch)", forest_batch, forest_batch_rate),
    ]
    print(f"    {len(test):,} scored rows sampled ({int(truth.sum()):,} malicious); every detector "
          f"trained on the same {len(train):,} benign rows")  # fmt: skip
    print(f"    {'detector':40} {'ROC AUC':>8} {'TPR@0.1%':>9} {'TPR@1%':>8} {'rows/s':>12}")
    for name, scores, rate in rows_out:
        print(f"    {name:40} {roc_auc(scores, truth):8.4f} {tpr_at_fpr(scores, truth, 0.001):9.4f} "
              f"{tpr_at_fpr(scores, truth, 0.01):8.4f} {rate:12,.0f}")  # fmt: skip
    ours_auc = roc_auc(ours, truth)
    best_peer = max(roc_auc(hst_scores, truth), roc_auc(forest_online, truth))
    faster = max(hst_rate, forest_rate)
    ratio = (1.0 / per_row) / faster
    verdict = _verdict(ours_auc > best_peer and ratio >= 10)
    print(f"(a) AUC {ours_auc:.4f} vs best peer {best_peer:.4f}; scoring {ratio:,.0f}x the faster peer's "
          f"online scoring — goal higher AUC at >= 10x: {verdict}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--train", type=float, default=0.6, help="share of the stream used for training")
    parser.add_argument("--peer-rows", type=int, default=5000, help="rows the peers train and score on")
    parser.add_argument("--netflow", action="store_true", help="also run bench/monitor_netflow.py")
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is missing: the benchmark needs the shared labelled captures")
    print(f"bench/monitor.py on Python {sys.version.split()[0]}")
    run = bench_pipeline(args.runs, args.train)
    bench_accuracy(run, args.peer_rows)
    if args.netflow:
        subprocess.run([sys.executable, str(Path(__file__).with_name("monitor_netflow.py"))], check=True)


if __name__ == "__main__":
    main()
