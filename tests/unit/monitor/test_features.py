"""The damped statistics of fleetguard.monitor.features against a slow, plain-Python reference."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.errors import InvalidInput
from fleetguard.monitor.errors import MonitorLimit
from fleetguard.monitor.features import DEFAULT_LAMBDAS, FeatureExtractor, FeatureStateInvalid
from fleetguard.monitor.model import PacketColumns

LN2 = math.log(2.0)
State = dict[str, npt.NDArray[np.generic]]
Values = Sequence[float] | npt.NDArray[np.generic]

# ---- the reference: one object per statistic, dicts as tables, OrderedDict as the LRU -------------


@dataclass
class Damped:
    """(w, ls, ss) per λ with a clock; the module docstring's rules, written plainly."""

    n: int
    clock: float = math.nan
    sums: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sums = [[0.0, 0.0, 0.0] for _ in range(self.n)]


def advance(clock: float, t: float, backstep: float, flags: list[int]) -> tuple[float, float]:
    """Return (Δt, new clock)."""
    if math.isnan(clock):
        return 0.0, t
    if t > clock:
        return t - clock, t
    if t < clock:
        flags[0] = 1
        if t - clock < -backstep:
            flags[1] = 1
            return 0.0, t
    return 0.0, clock


def decay(values: list[float], rate: float, dt: float) -> None:
    if dt > 0.0:
        f = math.exp(-rate * dt)
        for j in range(len(values)):
            values[j] *= f


def mean_var(s: list[float]) -> tuple[float, float, float]:
    w = s[0]
    if w <= 0.0:
        return w, 0.0, 0.0
    mean = s[1] / w
    return w, mean, abs(s[2] / w - mean * mean)


@dataclass
class Pair:
    n: int
    sides: list[Damped] = field(default_factory=list)
    jitter: list[Damped] = field(default_factory=list)
    cov_clock: float = math.nan
    cov: list[list[float]] = field(default_factory=list)  # sr, w3, res0, res1

    def __post_init__(self) -> None:
        self.sides = [Damped(self.n), Damped(self.n)]
        self.jitter = [Damped(self.n), Damped(self.n)]
        self.cov = [[0.0, 0.0, 0.0, 0.0] for _ in range(self.n)]


class Reference:
    def __init__(self, lambdas: Sequence[float], max_keys: int, backstep: float) -> None:
        self.rates = [lam * LN2 for lam in lambdas]
        self.n = len(lambdas)
        self.max_keys = max_keys
        self.backstep = backstep
        self.tables: list[OrderedDict[Hashable, Damped | Pair]] = [OrderedDict() for _ in range(4)]
        self.clock = math.nan
        self.late = self.resets = 0

    def entry(self, table: int, key: Hashable, pair: bool) -> Damped | Pair:
        found = self.tables[table]
        if key in found:
            found.move_to_end(key)
            return found[key]
        if len(found) == self.max_keys:
            found.popitem(last=False)
        found[key] = Pair(self.n) if pair else Damped(self.n)
        return found[key]

    def insert(self, stat: Damped, t: float, v: float, flags: list[int]) -> list[float]:
        dt, stat.clock = advance(stat.clock, t, self.backstep, flags)
        row: list[float] = []
        for k, s in enumerate(stat.sums):
            decay(s, self.rates[k], dt)
            s[0] += 1.0
            s[1] += v
            s[2] += v * v
            w, mean, var = mean_var(s)
            row += [w, mean, math.sqrt(var)]
        return row

    def pair(self, p: Pair, d: int, t: float, v: float, flags: list[int]) -> list[float]:
        a, b = p.sides[d], p.sides[1 - d]
        self.insert(a, t, v, flags)
        dt_b, b.clock = advance(b.clock, t, self.backstep, flags)
        dt_c, p.cov_clock = advance(p.cov_clock, t, self.backstep, flags)
        row: list[float] = []
        for k in range(self.n):
            decay(b.sums[k], self.rates[k], dt_b)
            c = p.cov[k]
            c[0] *= math.exp(-self.rates[k] * dt_c) if dt_c > 0 else 1.0
            c[1] *= math.exp(-self.rates[k] * dt_c) if dt_c > 0 else 1.0
            w_a, mean_a, var_a = mean_var(a.sums[k])
            _, mean_b, var_b = mean_var(b.sums[k])
            residual = v - mean_a
            c[0] += residual * c[3 - d]
            c[1] += 1.0
            c[2 + d] = residual
            cov = c[0] / c[1]
            spread = math.sqrt(var_a) * math.sqrt(var_b)
            row += [w_a, mean_a, math.sqrt(var_a), math.sqrt(mean_a**2 + mean_b**2)]
            row += [math.sqrt(var_a**2 + var_b**2), cov, cov / spread if spread > 0 else 0.0]
        return row

    def packet(
        self, t: float, v: float, addresses: tuple[int, int, int], ports: tuple[int, int, int]
    ) -> list[float]:
        src, dst, mac = addresses
        sport, dport, proto = ports
        if not math.isfinite(t):
            t = 0.0 if math.isnan(self.clock) else self.clock
        elif not t <= self.clock:
            self.clock = t
        flags = [0, 0]
        mac_ip, host = self.entry(0, (mac, src), False), self.entry(1, src, False)
        assert isinstance(mac_ip, Damped)
        assert isinstance(host, Damped)
        row = self.insert(mac_ip, t, v, flags)
        row += self.insert(host, t, v, flags)
        d = 0 if src <= dst else 1
        channel = self.entry(2, (min(src, dst), max(src, dst)), True)
        assert isinstance(channel, Pair)
        row += self.pair(channel, d, t, v, flags)
        jitter = channel.jitter[d]
        gap, jitter.clock = advance(jitter.clock, t, self.backstep, flags)
        row += self.insert_gap(jitter, gap)
        d = 0 if (src, sport) <= (dst, dport) else 1
        ends = sorted([(src, sport), (dst, dport)])
        socket = self.entry(3, (ends[0], ends[1], proto), True)
        assert isinstance(socket, Pair)
        row += self.pair(socket, d, t, v, flags)
        self.late += flags[0]
        self.resets += flags[1]
        return row

    def insert_gap(self, stat: Damped, gap: float) -> list[float]:
        row: list[float] = []
        for k, s in enumerate(stat.sums):
            decay(s, self.rates[k], gap)
            s[0] += 1.0
            s[1] += gap
            s[2] += gap * gap
            w, mean, var = mean_var(s)
            row += [w, mean, math.sqrt(var)]
        return row


def reference_rows(ref: Reference, batch: PacketColumns) -> npt.NDArray[np.float32]:
    """Reorder the reference row (mac, host, channel, jitter, socket per packet) like the extractor."""
    rows = [
        ref.packet(
            float(batch.ts[i]),
            float(batch.length[i]),
            (int(batch.src[i]), int(batch.dst[i]), int(batch.src_mac[i])),
            (int(batch.sport[i]), int(batch.dport[i]), int(batch.proto[i])),
        )
        for i in range(len(batch))
    ]
    return np.array(rows, np.float32).reshape(len(batch), -1)


# ---- fixtures -------------------------------------------------------------------------------------


def columns(
    ts: Values,
    src: Values,
    dst: Values | None = None,
    ports: Sequence[tuple[int, int]] | None = None,
    length: Values | None = None,
) -> PacketColumns:
    n = len(ts)
    dst = dst if dst is not None else [99] * n
    ports = ports if ports is not None else [(1000, 80)] * n
    return PacketColumns(
        ts=np.asarray(ts, np.float64),
        src=np.asarray(src, np.uint64),
        dst=np.asarray(dst, np.uint64),
        sport=np.asarray([p for p, _ in ports], np.uint16),
        dport=np.asarray([q for _, q in ports], np.uint16),
        proto=np.full(n, 6, np.uint8),
        length=np.asarray(length if length is not None else [100] * n, np.uint32),
        tcp_flags=np.zeros(n, np.uint8),
        src_mac=np.asarray(src, np.uint64) + np.uint64(7),
    )


def split(batch: PacketColumns, at: int) -> tuple[PacketColumns, PacketColumns]:
    def part(sl: slice) -> PacketColumns:
        return PacketColumns(
            batch.ts[sl], batch.src[sl], batch.dst[sl], batch.sport[sl], batch.dport[sl],
            batch.proto[sl], batch.length[sl], batch.tcp_flags[sl], batch.src_mac[sl],
        )  # fmt: skip

    return part(slice(0, at)), part(slice(at, None))


packet = st.tuples(
    st.one_of(
        st.floats(0.0, 2.0), st.floats(-3.0, 0.0), st.just(0.0), st.just(1e6), st.just(math.nan)
    ),  # time step
    st.integers(1, 4),  # src
    st.integers(1, 4),  # dst
    st.integers(1, 3),  # sport
    st.integers(1, 3),  # dport
    st.integers(40, 1500),  # length
)


def batch_of(packets: list[tuple[float, int, int, int, int, int]]) -> PacketColumns:
    ts, t = [], 100.0
    for step, *_ in packets:
        t = t + step if math.isfinite(step) else t
        ts.append(step if math.isnan(step) else t)
    return columns(
        ts,
        [p[1] for p in packets],
        [p[2] for p in packets],
        [(p[3], p[4]) for p in packets],
        [p[5] for p in packets],
    )


def column(extractor: FeatureExtractor, name: str) -> int:
    return extractor.feature_names().index(name)


# ---- tests ----------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    packets=st.lists(packet, min_size=1, max_size=40),
    max_keys=st.integers(1, 5),
    cut=st.integers(0, 40),
)
def test_features_equal_the_reference(
    packets: list[tuple[float, int, int, int, int, int]], max_keys: int, cut: int
) -> None:
    batch = batch_of(packets)
    extractor = FeatureExtractor((5, 1, 0.01), max_keys=max_keys, max_backstep=2.0)
    ref = Reference((5, 1, 0.01), max_keys, 2.0)
    first, second = split(batch, min(cut, len(batch)))
    got = np.concatenate([extractor.update(first), extractor.update(second)])
    np.testing.assert_allclose(
        got, reference_rows(ref, batch), rtol=0, atol=0
    )  # bit for bit: the same operations in the same order
    counters = extractor.counters
    assert (counters.late_packets, counters.clock_resets) == (ref.late, ref.resets)
    assert counters.nonfinite_timestamps == sum(math.isnan(p[0]) for p in packets)
    assert all(n <= max_keys for n in counters.tracked.values())


def test_names_cover_every_column_once() -> None:
    extractor = FeatureExtractor()
    names = extractor.feature_names()
    assert len(names) == len(set(names)) == extractor.n_features == 115
    assert names[:3] == ["mac_ip_5_w", "mac_ip_5_mean", "mac_ip_5_std"]
    assert "channel_0.01_pcc" in names
    assert "jitter_0.1_std" in names
    assert names[-1] == "socket_0.01_pcc"
    assert extractor.lambdas == DEFAULT_LAMBDAS


@pytest.mark.parametrize("lam", DEFAULT_LAMBDAS)
def test_weight_halves_after_one_over_lambda(lam: float) -> None:
    extractor = FeatureExtractor()
    out = extractor.update(columns([10.0, 10.0 + 1 / lam], [1, 1]))
    w = column(extractor, f"host_{lam:g}_w")
    assert out[0, w] == 1.0
    assert out[1, w] == pytest.approx(1.5, rel=1e-6)


def test_mean_and_std_of_a_burst() -> None:
    extractor = FeatureExtractor()
    out = extractor.update(columns([5.0, 5.0, 5.0], [1, 1, 1], length=[100, 200, 300]))
    assert out[2, column(extractor, "host_1_mean")] == pytest.approx(200.0)
    assert out[2, column(extractor, "host_1_std")] == pytest.approx(math.sqrt(20000 / 3), rel=1e-5)
    assert out[2, column(extractor, "jitter_1_mean")] == 0.0


def test_a_huge_gap_restarts_the_statistics() -> None:
    extractor = FeatureExtractor()
    out = extractor.update(columns([0.0, 0.0, 1e9], [1, 1, 1], length=[100, 900, 500]))
    last = out[2]
    for lam in DEFAULT_LAMBDAS:
        assert last[column(extractor, f"host_{lam:g}_w")] == 1.0
        assert last[column(extractor, f"host_{lam:g}_mean")] == 500.0
        assert last[column(extractor, f"host_{lam:g}_std")] == 0.0
    assert np.isfinite(out).all()


def test_a_late_packet_does_not_decay_and_is_counted() -> None:
    extractor = FeatureExtractor()
    out = extractor.update(columns([10.0, 9.0, 10.0], [1, 1, 1]))
    w = column(extractor, "host_5_w")
    assert list(out[:, w]) == [1.0, 2.0, 3.0]  # Δt clamped at 0: no negative decay, no growth
    assert extractor.counters.late_packets == 1
    assert extractor.counters.clock_resets == 0


def test_a_clock_stepped_far_back_resets_the_clock() -> None:
    extractor = FeatureExtractor(max_backstep=300.0)
    out = extractor.update(columns([10_000.0, 1_000.0, 1_001.0], [1, 1, 1]))
    w = column(extractor, "host_1_w")
    assert out[1, w] == 2.0
    assert out[2, w] == pytest.approx(2.0 * 0.5 + 1.0)  # decays again from the new time
    assert (extractor.counters.late_packets, extractor.counters.clock_resets) == (1, 1)


def test_nonfinite_timestamps_take_the_latest_time() -> None:
    extractor = FeatureExtractor()
    out = extractor.update(columns([math.nan, 50.0, math.inf, 51.0], [1, 1, 1, 1]))
    assert np.isfinite(out).all()
    assert out[2, column(extractor, "host_1_w")] == 2.0  # at 50.0, the latest time
    assert extractor.counters.nonfinite_timestamps == 2


def test_tables_never_exceed_max_keys() -> None:
    extractor = FeatureExtractor(max_keys=8)
    before = {name: array.nbytes for name, array in vars(extractor._tables["socket"]).items()}
    n = 2000
    rng = np.random.default_rng(1)
    extractor.update(columns(np.arange(n) * 0.01, rng.integers(1, 500, n), rng.integers(1, 500, n)))
    counters = extractor.counters
    assert counters.tracked == {"mac_ip": 8, "host": 8, "channel": 8, "socket": 8}
    assert counters.evicted["host"] > 0
    assert counters.evicted["socket"] == counters.evicted["channel"] > n - 8 - 100
    after = {name: array.nbytes for name, array in vars(extractor._tables["socket"]).items()}
    assert after == before
    assert all(extractor.state()[f"{name}_keys"].size == 8 for name in ("host", "socket"))


def test_eviction_drops_the_least_recently_updated() -> None:
    extractor = FeatureExtractor(max_keys=2)
    out = extractor.update(columns([0.0, 0.0, 0.0, 0.0, 0.0], [1, 2, 1, 3, 1]))
    w = column(extractor, "host_1_w")
    assert list(out[:, w]) == [1.0, 1.0, 2.0, 1.0, 3.0]  # 3 evicted 2, not the recently used 1
    assert extractor.update(columns([0.0], [2]))[0, w] == 1.0  # 2 starts over


def test_an_empty_batch_changes_nothing() -> None:
    extractor = FeatureExtractor()
    extractor.update(columns([1.0], [1]))
    before = extractor.state()
    out = extractor.update(PacketColumns.empty())
    assert out.shape == (0, 115)
    assert out.dtype == np.float32
    after = extractor.state()
    assert all(np.array_equal(before[k], after[k], equal_nan=True) for k in before)


def test_features_are_deterministic_and_independent_of_batching() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    batch = columns(
        np.cumsum(rng.exponential(0.01, n)), rng.integers(1, 40, n), rng.integers(1, 40, n),
        list(zip(rng.integers(1, 5, n).tolist(), rng.integers(1, 5, n).tolist(), strict=True)),
        rng.integers(40, 1500, n),
    )  # fmt: skip
    whole = FeatureExtractor(max_keys=50).update(batch)
    again = FeatureExtractor(max_keys=50)
    parts = [again.update(part) for part in split(batch, 1234)]
    assert np.array_equal(whole, np.concatenate(parts))
    assert np.isfinite(whole).all()


def test_state_round_trip_continues_exactly() -> None:
    rng = np.random.default_rng(3)
    n = 1000
    batch = columns(np.arange(n) * 0.05, rng.integers(1, 30, n), rng.integers(1, 30, n))
    first, second = split(batch, 600)
    live = FeatureExtractor(max_keys=20)
    live.update(first)
    restored = FeatureExtractor.from_state(live.state())
    assert np.array_equal(live.update(second), restored.update(second))
    assert restored.counters == live.counters


def test_restoring_into_fewer_keys_keeps_the_most_recent() -> None:
    extractor = FeatureExtractor(max_keys=10)
    extractor.update(columns([0.0, 1.0, 2.0, 3.0], [1, 2, 3, 4]))
    smaller = FeatureExtractor.from_state(extractor.state(), max_keys=2)
    assert smaller.counters.tracked["host"] == 2
    w = column(smaller, "host_0.01_w")
    out = smaller.update(columns([4.0, 4.0], [4, 1]))
    assert out[0, w] > 1.0  # 4 was kept
    assert out[1, w] == 1.0  # 1 was dropped


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: s.pop("host_rows"), "incomplete"),
        (lambda s: s.__setitem__("socket_rows", s["socket_rows"][:, :3]), "socket arrays"),
        (lambda s: s.__setitem__("version", np.array([99])), "version 99"),
        (lambda s: s.__setitem__("host_keys", np.array([5, 5], np.uint64)), "columns|twice"),
    ],
)
def test_a_malformed_state_is_rejected(change: Callable[[State], object], match: str) -> None:
    extractor = FeatureExtractor(max_keys=4)
    extractor.update(columns([0.0], [1]))
    state = extractor.state()
    change(state)
    with pytest.raises(FeatureStateInvalid, match=match):
        FeatureExtractor.from_state(state)


@pytest.mark.parametrize("lambdas", [(), (0.0,), (-1.0,), (math.inf,), (math.nan,)])
def test_bad_lambdas_are_refused(lambdas: tuple[float, ...]) -> None:
    with pytest.raises(InvalidInput, match="lambdas"):
        FeatureExtractor(lambdas)


@pytest.mark.parametrize("max_keys", [0, -1, 10_000_001])
def test_max_keys_is_bounded(max_keys: int) -> None:
    with pytest.raises(MonitorLimit, match="max_keys"):
        FeatureExtractor(max_keys=max_keys)
