"""Incremental damped statistics per host, channel and socket: the packet features of the detectors.

Theory of operation. In the spirit of Kitsune's AfterImage (Mirsky et al., "Kitsune: An Ensemble of
Autoencoders for Online Network Intrusion Detection", NDSS 2018, section IV-B), every packet updates a
few *damped* statistics and reads them back as its feature vector. A damped statistic over packet
sizes keeps, for each decay rate λ, a weight ``w``, a linear sum ``ls`` and a squared sum ``ss``; when
a value ``v`` arrives at time ``t`` the old sums are first multiplied by ``2 ** (-λ * Δt)`` (``Δt``
since the statistic's last update) and then ``w += 1, ls += v, ss += v * v``. So a packet's weight
halves every ``1 / λ`` seconds; with λ in (5, 3, 1, 0.1, 0.01) the windows reach from about 100 ms
to about 100 s. ``mean = ls / w`` and ``std = sqrt(|ss / w - mean ** 2|)``.

The statistics, per λ, in this order (:meth:`FeatureExtractor.feature_names`):

* ``mac_ip``: keyed by the source MAC and source IP (spoofing shows as a new key): ``w, mean, std``;
* ``host``: keyed by the source IP: ``w, mean, std``;
* ``channel``: the traffic from source to destination IP: ``w, mean, std``, and with the reverse
  direction: ``magnitude = sqrt(mean_a² + mean_b²)``, ``radius = sqrt(var_a² + var_b²)``, the damped
  covariance of the two directions' residuals ``cov = sr / w3`` and ``pcc = cov / (std_a * std_b)``;
* ``jitter``: the inter-arrival time on the channel (0 for its first packet): ``w, mean, std``;
* ``socket``: source IP and port to destination IP and port (and protocol): as ``channel``.

The covariance follows AfterImage: when direction ``a`` gets value ``v``, its residual
``r_a = v - mean_a`` (after the insert) multiplies the last residual of direction ``b``; ``sr`` and
``w3`` decay with their own clock. That is 23 features per λ: 115 with the default λs.

State and memory. Each of the four kinds of key (mac_ip, host, channel, socket) lives in a bounded
table of at most ``max_keys`` entries: an open-addressing hash table (linear probing, at most half
full, backward-shift deletion) maps a 64-bit key to a row of a preallocated ``float64`` array; the
rows are chained in a doubly linked list in update order, so when a table is full the *least
recently updated* entry is evicted (exact LRU) and its row reused. Channels and sockets are stored
once per unordered pair, with both directions in one row. Keys are 64-bit mixes of the
:func:`~fleetguard.monitor.model.address_key` values (splitmix64 finalizer); two flows colliding on
64 bits share statistics, which at 2**-64 per pair is accepted. Memory is fixed at construction:
about ``max_keys * 1.6 kB`` in all (``np.zeros`` pages are only touched as keys arrive).

Time. Each statistic has its own clock. A packet older than a statistic's last update does not decay
it (Δt is clamped at 0: no negative decay, no growth) and is counted as late; when it is older by
more than ``max_backstep`` seconds (a clock stepped back) the statistic's clock is moved back to it
and a clock reset is counted, so decay resumes at once. A huge forward gap decays the sums to exactly
0 (``2 ** -inf``), which is a clean restart. A non-finite timestamp is replaced by the latest time
seen and counted.

The per-packet loop is compiled with numba (``cache=True``: compiled once per machine); the state
round-trips through :meth:`FeatureExtractor.state` / :meth:`FeatureExtractor.from_state`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

from fleetguard.errors import InvalidInput
from fleetguard.monitor.errors import MonitorError, MonitorLimit
from fleetguard.monitor.model import PacketColumns

__all__ = [
    "DEFAULT_LAMBDAS",
    "ExtractorCounters",
    "FeatureExtractor",
    "FeatureStateInvalid",
]

# Kitsune (NDSS 2018), section V: the five decay rates of AfterImage.
DEFAULT_LAMBDAS: Final = (5.0, 3.0, 1.0, 0.1, 0.01)
DEFAULT_MAX_KEYS: Final = 100_000
MAX_KEYS_LIMIT: Final = 10_000_000  # 16 GiB of state: beyond any single gateway
DEFAULT_MAX_BACKSTEP_S: Final = 300.0  # a step back longer than NTP's panic-free slew is a clock reset
_STATE_VERSION: Final = 1
_LN2: Final = math.log(2.0)

_TABLES: Final = ("mac_ip", "host", "channel", "socket")
_ONE_D: Final = ("w", "mean", "std")
_TWO_D: Final = ("w", "mean", "std", "magnitude", "radius", "cov", "pcc")
_GROUPS: Final = (
    ("mac_ip", _ONE_D),
    ("host", _ONE_D),
    ("channel", _TWO_D),
    ("jitter", _ONE_D),
    ("socket", _TWO_D),
)
_PER_LAMBDA: Final = sum(len(stats) for _, stats in _GROUPS)

# counters (one int64 array): late packets, clock resets, non-finite timestamps, then evictions per table
_LATE, _RESETS, _NONFINITE, _EVICTED = 0, 1, 2, 3
_N_COUNTERS: Final = _EVICTED + len(_TABLES)


class FeatureStateInvalid(InvalidInput, MonitorError):
    """A saved extractor state cannot be restored (missing array, wrong shape, other λs or version)."""

    code = "monitor-feature-state-invalid"


@dataclass(frozen=True, slots=True)
class ExtractorCounters:
    """What the extractor met since it was created (or its state saved), all counts."""

    late_packets: int
    clock_resets: int
    nonfinite_timestamps: int
    evicted: Mapping[str, int]
    tracked: Mapping[str, int]


def _row_width(table: str, n_lambdas: int) -> int:
    """The float64 columns of one entry; see :func:`_update_pair` for the pair layout."""
    if table in ("mac_ip", "host"):
        return 1 + 3 * n_lambdas  # clock, then (w, ls, ss) per λ
    if table == "socket":
        return 5 + 10 * n_lambdas  # 5 clocks, 2 x (w, ls, ss), (sr, w3, res0, res1) per λ
    return 5 + 16 * n_lambdas  # as a socket, then 2 x jitter (w, ls, ss) per λ


def _clocks(table: str) -> int:
    """The leading clock columns of a row (NaN until first used)."""
    return 1 if table in ("mac_ip", "host") else 5


class FeatureExtractor:
    """Damped statistics of packet sizes and inter-arrival times, per λ and key (module docstring).

    Raises ``InvalidInput`` for λs that are not positive and finite, and ``MonitorLimit`` for a
    ``max_keys`` outside 1 .. 10,000,000.
    """

    def __init__(
        self,
        lambdas: Sequence[float] = DEFAULT_LAMBDAS,
        max_keys: int = DEFAULT_MAX_KEYS,
        *,
        max_backstep: float = DEFAULT_MAX_BACKSTEP_S,
    ) -> None:
        self._lambdas = _require_lambdas(lambdas)
        if not 1 <= max_keys <= MAX_KEYS_LIMIT:
            raise MonitorLimit(f"max_keys must be 1 .. {MAX_KEYS_LIMIT}, not {max_keys}")
        if not max_backstep >= 0:
            raise InvalidInput(f"max_backstep must be >= 0 seconds, not {max_backstep}")
        self._max_keys = int(max_keys)
        self._max_backstep = float(max_backstep)
        self._tables = {
            name: _Table(max_keys, _row_width(name, len(self._lambdas)), _clocks(name)) for name in _TABLES
        }
        self._clock = np.full(1, np.nan)  # the latest finite timestamp seen
        self._counters = np.zeros(_N_COUNTERS + 2, np.int64)  # + the flags of the current packet

    @property
    def lambdas(self) -> tuple[float, ...]:
        """The decay rates, per second."""
        return tuple(float(x) for x in self._lambdas)

    @property
    def max_keys(self) -> int:
        """The bound on the entries of each table."""
        return self._max_keys

    @property
    def n_features(self) -> int:
        """The columns :meth:`update` returns."""
        return _PER_LAMBDA * len(self._lambdas)

    def feature_names(self) -> list[str]:
        """Return the name of each column of :meth:`update`, e.g. ``channel_0.1_pcc``."""
        return [
            f"{group}_{lam:g}_{stat}" for group, stats in _GROUPS for lam in self._lambdas for stat in stats
        ]

    @property
    def counters(self) -> ExtractorCounters:
        """Return the late, reset and non-finite counts, and evictions and entries per table."""
        c = self._counters
        return ExtractorCounters(
            late_packets=int(c[_LATE]),
            clock_resets=int(c[_RESETS]),
            nonfinite_timestamps=int(c[_NONFINITE]),
            evicted={name: int(c[_EVICTED + i]) for i, name in enumerate(_TABLES)},
            tracked={name: table.count for name, table in self._tables.items()},
        )

    def update(self, batch: PacketColumns) -> npt.NDArray[np.float32]:
        """Feed a batch in capture order; return its features, shape ``(len(batch), n_features)``.

        Each row is read right after its own packet updated the statistics.
        """
        n = len(batch)
        out = np.empty(n * self.n_features, np.float32)
        if n == 0:
            return out.reshape(0, self.n_features)
        packets = (
            np.ascontiguousarray(batch.ts, np.float64),
            np.ascontiguousarray(batch.src, np.uint64),
            np.ascontiguousarray(batch.dst, np.uint64),
            np.ascontiguousarray(batch.sport, np.uint64),
            np.ascontiguousarray(batch.dport, np.uint64),
            np.ascontiguousarray(batch.proto, np.uint64),
            np.ascontiguousarray(batch.length, np.float64),
            np.ascontiguousarray(batch.src_mac, np.uint64),
        )
        mac, host, chan, sock = (self._tables[name].arrays for name in _TABLES)
        settings = (self._lambdas * _LN2, self._max_backstep)
        _extract(packets, (mac, host, chan, sock), settings, (self._clock, self._counters), out)
        return out.reshape(n, self.n_features)

    def state(self) -> dict[str, npt.NDArray[np.generic]]:
        """Return the statistics as arrays (entries most recently updated first), for :meth:`from_state`."""
        arrays: dict[str, npt.NDArray[np.generic]] = {
            "version": np.array([_STATE_VERSION], np.int64),
            "lambdas": self._lambdas.copy(),
            "max_keys": np.array([self._max_keys], np.int64),
            "max_backstep": np.array([self._max_backstep], np.float64),
            "clock": self._clock.copy(),
            "counters": self._counters[:_N_COUNTERS].copy(),
        }
        for name, table in self._tables.items():
            keys, rows = table.export()
            arrays[f"{name}_keys"] = keys
            arrays[f"{name}_rows"] = rows
        return arrays

    @classmethod
    def from_state(
        cls, state: Mapping[str, npt.NDArray[np.generic]], *, max_keys: int | None = None
    ) -> FeatureExtractor:
        """Return an extractor that continues from :meth:`state`.

        ``max_keys`` (default: the saved bound) may shrink the tables: the most recently updated
        entries are kept. Raises ``FeatureStateInvalid`` when an array is missing or malformed.
        """
        try:
            version = int(state["version"][0])
            lambdas = np.asarray(state["lambdas"], np.float64)
            bound = int(state["max_keys"][0]) if max_keys is None else max_keys
            backstep = float(state["max_backstep"][0])
            clock = np.asarray(state["clock"], np.float64)
            counters = np.asarray(state["counters"], np.int64)
            tables = {name: (state[f"{name}_keys"], state[f"{name}_rows"]) for name in _TABLES}
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise FeatureStateInvalid(f"extractor state is incomplete: {exc!r}") from exc
        if version != _STATE_VERSION:
            raise FeatureStateInvalid(f"extractor state version {version}, expected {_STATE_VERSION}")
        if clock.shape != (1,) or counters.shape != (_N_COUNTERS,):
            raise FeatureStateInvalid("extractor state has a malformed clock or counters")
        extractor = cls(tuple(lambdas.tolist()), bound, max_backstep=backstep)
        for name, (keys, rows) in tables.items():
            extractor._tables[name].load(name, keys, rows)
        extractor._clock[:] = clock
        extractor._counters[:_N_COUNTERS] = counters
        return extractor


def _require_lambdas(lambdas: Sequence[float]) -> npt.NDArray[np.float64]:
    values = np.asarray(lambdas, np.float64)
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values) & (values > 0)):
        raise InvalidInput(f"lambdas must be positive and finite, at least one: {list(lambdas)}")
    return values


# slot keys, slot rows, row keys, LRU links, meta (head, tail, count, clocks, width), rows (flat)
_TableArrays = tuple[
    npt.NDArray[np.uint64],
    npt.NDArray[np.int64],
    npt.NDArray[np.uint64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.float64],
]


class _Table:
    """One bounded key -> row table (module docstring): hash slots, rows, LRU links, metadata."""

    def __init__(self, max_keys: int, width: int, clocks: int) -> None:
        capacity = 1 << max(2, (2 * max_keys - 1).bit_length())  # load factor <= 1/2
        self.slot_keys = np.zeros(capacity, np.uint64)
        self.slot_rows = np.full(capacity, -1, np.int64)
        self.keys = np.zeros(max_keys, np.uint64)
        self.links = np.full((max_keys, 2), -1, np.int64)  # previous (more recent), next (older)
        self.meta = np.array([-1, -1, 0, clocks, width], np.int64)  # head (most recent), tail, count, ...
        self.rows = np.zeros((max_keys, width), np.float64)

    @property
    def count(self) -> int:
        return int(self.meta[2])

    @property
    def arrays(self) -> _TableArrays:
        return (self.slot_keys, self.slot_rows, self.keys, self.links, self.meta, self.rows.reshape(-1))

    def export(self) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float64]]:
        order = _lru_order(self.links, self.meta)
        return self.keys[order].copy(), self.rows[order].copy()

    def load(self, name: str, keys: npt.NDArray[np.generic], rows: npt.NDArray[np.generic]) -> None:
        width = self.rows.shape[1]
        if keys.ndim != 1 or rows.shape != (keys.shape[0], width):
            raise FeatureStateInvalid(f"extractor state: {name} arrays do not match {width} columns")
        if np.unique(keys).size != keys.size:
            raise FeatureStateInvalid(f"extractor state: {name} has a key twice")
        n = min(keys.shape[0], self.keys.shape[0])
        _load_table(self.arrays, np.asarray(keys[:n], np.uint64))
        self.rows[:n] = np.asarray(rows[:n], np.float64)


# ---- compiled core -------------------------------------------------------------------------------
# The kernel allocates nothing, so it is compiled without numba's reference-counting runtime
# (``_nrt=False``): with it, the atomic reference counts of the arrays handed between helpers took
# 40% of the time (perf). Rows and output are flat arrays addressed by index (``place`` is (row
# start, output start)), as array views made in the loop cost more than a λ's arithmetic.
_F = TypeVar("_F", bound=Callable[..., object])
_NO_RUNTIME: Final[dict[str, Any]] = {"_nrt": False}  # numba's private flag, stable since 0.3x


def _jit(func: _F) -> _F:
    return cast("_F", numba.njit(cache=True, nogil=True, **_NO_RUNTIME)(func))


def _allocating_jit(func: _F) -> _F:
    return cast("_F", numba.njit(cache=True, nogil=True)(func))


_M1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 finalizer constants (Steele et al., OOPSLA 2014)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)

_Vector = npt.NDArray[np.float64]
_Settings = tuple[_Vector, float]  # decay rates (λ ln 2), max backstep
# rates, max backstep, flags (late, reset) of the current packet, the output (flat)
_Context = tuple[_Vector, float, npt.NDArray[np.int64], npt.NDArray[np.float32]]
_Sample = tuple[float, float]  # time, value
_Packets = tuple[
    npt.NDArray[np.float64],  # ts
    npt.NDArray[np.uint64],  # src
    npt.NDArray[np.uint64],  # dst
    npt.NDArray[np.uint64],  # sport
    npt.NDArray[np.uint64],  # dport
    npt.NDArray[np.uint64],  # proto
    npt.NDArray[np.float64],  # length
    npt.NDArray[np.uint64],  # src_mac
]


@_jit
def _mix(x: np.uint64) -> np.uint64:
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@_jit
def _combine(a: np.uint64, b: np.uint64) -> np.uint64:
    return _mix(a * _GOLDEN ^ b)


@_allocating_jit
def _lru_order(links: npt.NDArray[np.int64], meta: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    order = np.empty(meta[2], np.int64)
    row = meta[0]
    for i in range(meta[2]):
        order[i] = row
        row = links[row, 1]
    return order


@_jit
def _find_slot(slot_keys: npt.NDArray[np.uint64], slot_rows: npt.NDArray[np.int64], key: np.uint64) -> int:
    """Return the slot holding ``key``, or the empty slot where it would go."""
    mask = int(slot_keys.shape[0]) - 1
    s = int(_mix(key)) & mask
    while slot_rows[s] >= 0 and slot_keys[s] != key:
        s = (s + 1) & mask
    return s


@_jit
def _delete_slot(slot_keys: npt.NDArray[np.uint64], slot_rows: npt.NDArray[np.int64], s: int) -> None:
    """Empty slot ``s``, shifting later members of its probe run back (Knuth TAOCP 6.4, Algorithm R)."""
    mask = int(slot_keys.shape[0]) - 1
    j = s
    while True:
        j = (j + 1) & mask
        if slot_rows[j] < 0:
            break
        home = int(_mix(slot_keys[j])) & mask
        stays = (s < home <= j) if s <= j else (home > s or home <= j)
        if not stays:
            slot_keys[s] = slot_keys[j]
            slot_rows[s] = slot_rows[j]
            s = j
    slot_rows[s] = -1


@_jit
def _unlink(links: npt.NDArray[np.int64], meta: npt.NDArray[np.int64], row: int) -> None:
    prev, nxt = links[row, 0], links[row, 1]
    if prev >= 0:
        links[prev, 1] = nxt
    else:
        meta[0] = nxt
    if nxt >= 0:
        links[nxt, 0] = prev
    else:
        meta[1] = prev


@_jit
def _push_front(links: npt.NDArray[np.int64], meta: npt.NDArray[np.int64], row: int) -> None:
    head = meta[0]
    links[row, 0] = -1
    links[row, 1] = head
    if head >= 0:
        links[head, 0] = row
    else:
        meta[1] = row
    meta[0] = row


@_jit
def _acquire(table: _TableArrays, key: np.uint64) -> tuple[int, bool]:
    """Return the start of ``key``'s row, made most recent, and whether another key was evicted for it.

    A new row starts with zero sums and unset (NaN) clocks.
    """
    slot_keys, slot_rows, keys, links, meta, rows = table
    width = int(meta[4])
    s = _find_slot(slot_keys, slot_rows, key)
    row = int(slot_rows[s])
    if row >= 0:
        if meta[0] != row:
            _unlink(links, meta, row)
            _push_front(links, meta, row)
        return row * width, False
    evicted = meta[2] == keys.shape[0]
    if evicted:
        row = int(meta[1])
        _unlink(links, meta, row)
        _delete_slot(slot_keys, slot_rows, _find_slot(slot_keys, slot_rows, keys[row]))
        s = _find_slot(slot_keys, slot_rows, key)
    else:
        row = int(meta[2])
        meta[2] += 1
    slot_keys[s] = key
    slot_rows[s] = row
    keys[row] = key
    _push_front(links, meta, row)
    start = row * width
    rows[start : start + meta[3]] = np.nan
    rows[start + meta[3] : start + width] = 0.0
    return start, evicted


@_jit
def _load_table(table: _TableArrays, new_keys: npt.NDArray[np.uint64]) -> None:
    """Fill an empty table with ``new_keys`` (most recent first) at rows 0, 1, ..."""
    slot_keys, slot_rows, keys, links, meta, _ = table
    n = new_keys.shape[0]
    for row in range(n):
        s = _find_slot(slot_keys, slot_rows, new_keys[row])
        slot_keys[s] = new_keys[row]
        slot_rows[s] = row
        keys[row] = new_keys[row]
        links[row, 0] = row - 1
        links[row, 1] = row + 1 if row + 1 < n else -1
    meta[0] = 0 if n else -1
    meta[1] = n - 1
    meta[2] = n


@_jit
def _advance(rows: _Vector, at: int, t: float, context: _Context) -> float:
    """Return the Δt (>= 0) a statistic with its clock at ``rows[at]`` decays by at ``t``; move the clock."""
    _, backstep, flags, _ = context
    last = float(rows[at])
    dt = t - last
    if dt > 0.0:
        rows[at] = t
        return dt
    if math.isnan(last):  # a new statistic: its clock starts now
        rows[at] = t
    elif dt < 0.0:
        flags[0] = 1
        if dt < -backstep:
            flags[1] = 1
            rows[at] = t
    return 0.0


@_jit
def _decay(rows: _Vector, at: int, rates: _Vector, dt: float, shape: tuple[int, int]) -> None:
    """Multiply ``width`` sums per λ, ``stride`` apart, by ``2 ** (-λ dt)``; ``shape`` = (stride, width)."""
    if dt > 0.0:
        stride, width = shape
        for k in range(rates.shape[0]):
            f = math.exp(-rates[k] * dt)
            for j in range(at + stride * k, at + stride * k + width):
                rows[j] *= f


@_jit
def _insert(rows: _Vector, at: int, rates: _Vector, dt: float, v: float) -> None:
    """Decay the (w, ls, ss) triples at ``at`` by ``dt``, then add ``v`` to each."""
    _decay(rows, at, rates, dt, (3, 3))
    for k in range(at, at + 3 * rates.shape[0], 3):
        rows[k] += 1.0
        rows[k + 1] += v
        rows[k + 2] += v * v


@_jit
def _mean_var(rows: _Vector, at: int) -> tuple[float, float, float]:
    w = float(rows[at])
    if w <= 0.0:
        return w, 0.0, 0.0
    mean = rows[at + 1] / w
    return w, mean, abs(rows[at + 2] / w - mean * mean)


@_jit
def _emit_1d(rows: _Vector, place: tuple[int, int], n_lambdas: int, out: npt.NDArray[np.float32]) -> None:
    at, o = place
    for k in range(n_lambdas):
        w, mean, var = _mean_var(rows, at + 3 * k)
        out[o + 3 * k] = w
        out[o + 3 * k + 1] = mean
        out[o + 3 * k + 2] = math.sqrt(var)


@_jit
def _update_1d(rows: _Vector, place: tuple[int, int], sample: _Sample, context: _Context) -> None:
    """Row: 0 clock, then (w, ls, ss) per λ."""
    at, o = place
    t, v = sample
    rates, out = context[0], context[3]
    _insert(rows, at + 1, rates, _advance(rows, at, t, context), v)
    _emit_1d(rows, (at + 1, o), rates.shape[0], out)


@_jit
def _update_pair(rows: _Vector, place: tuple[int, int], d: int, sample: _Sample, context: _Context) -> None:
    """Update direction ``d`` of a channel or socket row; write its 7 features per λ.

    Row: 0, 1 the clocks of direction 0 and 1; 2 the covariance clock; 3, 4 the last arrival per
    direction (channels' jitter); then (w, ls, ss) per λ for direction 0, the same for direction 1,
    (sr, w3, res0, res1) per λ, and for channels (w, ls, ss) per λ of the jitter of direction 0, 1.
    """
    at, o = place
    t, v = sample
    rates, out = context[0], context[3]
    n = rates.shape[0]
    a, b, cov = at + 5 + 3 * n * d, at + 5 + 3 * n * (1 - d), at + 5 + 6 * n
    _insert(rows, a, rates, _advance(rows, at + d, t, context), v)
    _decay(rows, b, rates, _advance(rows, at + 1 - d, t, context), (3, 3))
    _decay(rows, cov, rates, _advance(rows, at + 2, t, context), (4, 2))
    for k in range(n):
        w_a, mean_a, var_a = _mean_var(rows, a + 3 * k)
        _, mean_b, var_b = _mean_var(rows, b + 3 * k)
        c = cov + 4 * k
        residual = v - mean_a
        rows[c] += residual * rows[c + 3 - d]  # the other direction's last residual
        rows[c + 1] += 1.0
        rows[c + 2 + d] = residual
        covariance = rows[c] / rows[c + 1]
        spread = math.sqrt(var_a) * math.sqrt(var_b)
        j = o + 7 * k
        out[j] = w_a
        out[j + 1] = mean_a
        out[j + 2] = math.sqrt(var_a)
        out[j + 3] = math.sqrt(mean_a * mean_a + mean_b * mean_b)
        out[j + 4] = math.sqrt(var_a * var_a + var_b * var_b)
        out[j + 5] = covariance
        out[j + 6] = covariance / spread if spread > 0.0 else 0.0


@_jit
def _update_jitter(rows: _Vector, place: tuple[int, int], d: int, t: float, context: _Context) -> None:
    """Insert the time since direction ``d``'s last packet (0 for its first) into its jitter sums."""
    at, o = place
    rates, out = context[0], context[3]
    n = rates.shape[0]
    gap = _advance(rows, at + 3 + d, t, context)
    jitter = at + 5 + 10 * n + 3 * n * d
    _insert(rows, jitter, rates, gap, gap)
    _emit_1d(rows, (jitter, o), n, out)


@_jit
def _socket_key(
    s: np.uint64, p: np.uint64, r: np.uint64, q: np.uint64, proto: np.uint64
) -> tuple[np.uint64, int]:
    """Return the key of the unordered pair of endpoints (and protocol), and the direction of s:p."""
    d = 0 if (s < r or (s == r and p <= q)) else 1
    near, far = _combine(s, p), _combine(r, q)
    pair = _combine(near, far) if d == 0 else _combine(far, near)
    return _combine(pair, proto), d


@_jit
def _extract(
    packets: _Packets,
    tables: tuple[_TableArrays, _TableArrays, _TableArrays, _TableArrays],
    settings: _Settings,
    tallies: tuple[_Vector, npt.NDArray[np.int64]],
    out: npt.NDArray[np.float32],
) -> None:
    """The per-packet loop over the four tables, in packet order (state-dependent, so sequential).

    ``tallies`` are the clock (latest finite time) and the counters; ``out`` is flat, row-major.
    """
    ts, src, dst, sport, dport, proto, length, src_mac = packets
    mac_ip, host, channel, socket = tables
    rates, backstep = settings
    clock, counters = tallies
    n = rates.shape[0]
    per_packet = _PER_LAMBDA * n
    flags = counters[_N_COUNTERS:]
    context = (rates, backstep, flags, out)
    for i in range(ts.shape[0]):
        t = ts[i]
        if not math.isfinite(t):
            counters[2] += 1
            t = 0.0 if math.isnan(clock[0]) else clock[0]
        elif not t <= clock[0]:
            clock[0] = t
        sample = (t, length[i])
        flags[0] = 0
        flags[1] = 0
        s, r, o = src[i], dst[i], i * per_packet
        at, evicted = _acquire(mac_ip, _combine(src_mac[i], s))
        counters[3] += evicted
        _update_1d(mac_ip[5], (at, o), sample, context)
        at, evicted = _acquire(host, _mix(s))
        counters[4] += evicted
        _update_1d(host[5], (at, o + 3 * n), sample, context)
        d = 0 if s <= r else 1  # direction 0 runs from the lower address key
        at, evicted = _acquire(channel, _combine(s, r) if d == 0 else _combine(r, s))
        counters[5] += evicted
        _update_pair(channel[5], (at, o + 6 * n), d, sample, context)
        _update_jitter(channel[5], (at, o + 13 * n), d, t, context)
        key, d = _socket_key(s, sport[i], r, dport[i], proto[i])
        at, evicted = _acquire(socket, key)
        counters[6] += evicted
        _update_pair(socket[5], (at, o + 16 * n), d, sample, context)
        counters[0] += flags[0]
        counters[1] += flags[1]
