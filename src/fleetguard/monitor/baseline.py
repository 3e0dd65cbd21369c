"""Per-device and per-type behaviour baselines learned from flows, serialisable for the store.

Theory of operation. A :class:`Baseline` describes one subject (a device address or id, or a device
type) as seen in fixed windows of ``window_s`` seconds:

* where it talks: the top ``top_n`` destinations and ``proto/port`` services, with counts of the
  windows' flows (bounded: after each window only the ``top_n`` largest counts are kept);
* how much: bytes, packets and connections per window, each a :class:`RunningStat` (Welford's mean
  and variance, weighted so that older windows fade by ``decay`` per window; ``decay`` 1 is the
  plain Welford estimate). Connections per window divided by ``window_s`` is the connection rate.

A baseline is *learning* until both ``learning_until`` has passed and ``min_windows`` windows were
folded in; after that it is *enforcing* (:meth:`Baseline.phase`). While learning, every new
destination and service is added. While enforcing, the statistics keep following the device (with
forgetting) and known destinations keep their counts, but new destinations are not added: a
destination first seen during enforcement is what ``destination.unexpected`` reports, and it must
not become normal by being seen once. Relearning is an operator's decision (a new baseline).

The core is pure: :func:`summarize_window` turns flows into one :class:`WindowSample` per subject,
:meth:`Baseline.learn` returns a new baseline. :meth:`Baseline.to_json`/:meth:`Baseline.from_json`
give the canonical JSON the store keeps so that a restart keeps the baselines; parsing is strict
(exact keys, exact types, finite numbers, bounded sizes) and raises :class:`BaselineInvalid`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from fleetguard.errors import InvalidInput
from fleetguard.monitor.errors import MonitorError
from fleetguard.monitor.model import FlowRecord

__all__ = [
    "DEFAULT_TOP_N",
    "MAX_BASELINE_JSON",
    "MAX_TOP_N",
    "Baseline",
    "BaselineInvalid",
    "Counted",
    "Phase",
    "RunningStat",
    "Scope",
    "WindowSample",
    "summarize_window",
]

SCHEMA_VERSION: Final = 1
DEFAULT_TOP_N: Final = 64
MAX_TOP_N: Final = 1024
MAX_BASELINE_JSON: Final = 256 * 1024  # bytes; MAX_TOP_N entries of two lists fit with room to spare
_MAX_KEY = 256  # characters of a subject, destination or service key
_MAX_COUNT = 2**53  # counts stay exact in JSON numbers (RFC 8259 section 6)
_MAX_SUBJECTS = 65536  # subjects one summarize_window call tracks


class BaselineInvalid(InvalidInput, MonitorError):
    """A stored baseline cannot be parsed: malformed JSON, a missing or extra key, a bad value."""

    code = "monitor-baseline-invalid"


class Scope(StrEnum):
    """What a baseline describes."""

    DEVICE = "device"
    TYPE = "type"


class Phase(StrEnum):
    """Whether a baseline is still learning or is used to judge traffic."""

    LEARNING = "learning"
    ENFORCING = "enforcing"


@dataclass(frozen=True, slots=True)
class RunningStat:
    """Mean and variance of a series with exponential forgetting (West 1979, weighted Welford).

    ``weight`` is the decayed number of samples, ``m2`` the decayed sum of squared deviations.
    """

    weight: float = 0.0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, value: float, decay: float) -> RunningStat:
        """Return the statistic with ``value`` added after older samples were weighted by ``decay``."""
        weight = self.weight * decay + 1.0
        delta = value - self.mean
        mean = self.mean + delta / weight
        return RunningStat(weight, mean, self.m2 * decay + delta * (value - mean))

    @property
    def variance(self) -> float:
        """The (population) variance; 0 without samples."""
        return self.m2 / self.weight if self.weight > 0 else 0.0

    @property
    def std(self) -> float:
        """The standard deviation."""
        return math.sqrt(max(self.variance, 0.0))


@dataclass(frozen=True, slots=True)
class Counted:
    """A key (an address, or ``proto/port``) and how many flows had it."""

    key: str
    count: int


@dataclass(frozen=True, slots=True)
class WindowSample:
    """What one subject did in one window: totals, and flows per destination and per service."""

    octets: int = 0
    packets: int = 0
    connections: int = 0
    destinations: tuple[Counted, ...] = ()
    ports: tuple[Counted, ...] = ()


def summarize_window(
    flows: Iterable[FlowRecord], devices: Collection[str], *, start: float, end: float
) -> dict[str, WindowSample]:
    """Return a sample per device address of ``devices`` that initiated a flow starting in [start, end).

    A flow counts for its initiator (``src``): the bytes and packets of both directions, one
    connection, its destination address and its ``proto/dport`` service. At most 65536 devices.
    """
    totals: dict[str, list[int]] = {}
    destinations: dict[str, Counter[str]] = {}
    ports: dict[str, Counter[str]] = {}
    for flow in flows:
        if flow.src not in devices or not start <= flow.start < end:
            continue
        if flow.src not in totals:
            if len(totals) >= _MAX_SUBJECTS:
                continue
            totals[flow.src], destinations[flow.src], ports[flow.src] = [0, 0, 0], Counter(), Counter()
        total = totals[flow.src]
        total[0] += flow.src_bytes + flow.dst_bytes
        total[1] += flow.src_packets + flow.dst_packets
        total[2] += 1
        destinations[flow.src][flow.dst] += 1
        ports[flow.src][f"{flow.proto}/{flow.dport}"] += 1
    return {
        device: WindowSample(
            total[0], total[1], total[2], _counted(destinations[device]), _counted(ports[device])
        )
        for device, total in totals.items()
    }


def _counted(counts: Mapping[str, int]) -> tuple[Counted, ...]:
    return tuple(Counted(key, count) for key, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclass(frozen=True, slots=True)
class Baseline:
    """The learned behaviour of one device or device type (see the module docstring)."""

    subject: str
    scope: Scope
    window_s: float
    learning_until: dt.datetime
    min_windows: int = 12
    decay: float = 0.99
    top_n: int = DEFAULT_TOP_N
    windows: int = 0
    destinations: tuple[Counted, ...] = ()
    ports: tuple[Counted, ...] = ()
    octets: RunningStat = RunningStat()
    packets: RunningStat = RunningStat()
    connections: RunningStat = RunningStat()

    def __post_init__(self) -> None:
        _require(0 < len(self.subject) <= _MAX_KEY, "subject must have 1 to 256 characters")
        _require(math.isfinite(self.window_s) and self.window_s > 0, "window_s must be positive")
        _require(self.learning_until.tzinfo is not None, "learning_until must be timezone-aware")
        _require(0 < self.decay <= 1, "decay must be in (0, 1]")
        _require(0 < self.top_n <= MAX_TOP_N, f"top_n must be in 1..{MAX_TOP_N}")
        _require(self.min_windows >= 0 and self.windows >= 0, "window counts must not be negative")
        for name, counted in (("destinations", self.destinations), ("ports", self.ports)):
            _require(len(counted) <= self.top_n, f"{name} holds more than top_n={self.top_n} entries")
            _require(len({c.key for c in counted}) == len(counted), f"{name} has a duplicate key")
            for entry in counted:
                _require(0 < len(entry.key) <= _MAX_KEY, f"a key of {name} must have 1 to 256 characters")
                _require(0 <= entry.count <= _MAX_COUNT, f"a count of {name} is out of range")
        for stat in (self.octets, self.packets, self.connections):
            values = (stat.weight, stat.mean, stat.m2)
            _require(all(math.isfinite(v) for v in values), "statistics must be finite")
            _require(stat.weight >= 0 and stat.m2 >= 0, "statistics weights and m2 must not be negative")

    @classmethod
    def new(
        cls,
        subject: str,
        scope: Scope,
        *,
        now: dt.datetime,
        learning_s: float = 7 * 86400.0,
        window_s: float = 300.0,
        min_windows: int = 12,
        decay: float = 0.99,
        top_n: int = DEFAULT_TOP_N,
    ) -> Baseline:
        """Return an empty baseline that learns for ``learning_s`` seconds from ``now``.

        Raises :class:`BaselineInvalid` for out-of-range settings.
        """
        until = now + dt.timedelta(seconds=learning_s)
        return cls(subject, scope, window_s, until, min_windows, decay, top_n)

    def phase(self, now: dt.datetime) -> Phase:
        """Return ENFORCING once the learning period is over and enough windows were seen."""
        if now >= self.learning_until and self.windows >= self.min_windows:
            return Phase.ENFORCING
        return Phase.LEARNING

    def knows_destination(self, address: str) -> bool:
        """Whether ``address`` is one of the learned destinations."""
        return any(entry.key == address for entry in self.destinations)

    def learn(self, sample: WindowSample, now: dt.datetime) -> Baseline:
        """Return the baseline with one window's ``sample`` folded in (new keys only while learning)."""
        adding = self.phase(now) is Phase.LEARNING
        return dataclasses.replace(
            self,
            windows=self.windows + 1,
            destinations=self._merge(self.destinations, sample.destinations, adding=adding),
            ports=self._merge(self.ports, sample.ports, adding=adding),
            octets=self.octets.update(sample.octets, self.decay),
            packets=self.packets.update(sample.packets, self.decay),
            connections=self.connections.update(sample.connections, self.decay),
        )

    def _merge(
        self, known: tuple[Counted, ...], seen: tuple[Counted, ...], *, adding: bool
    ) -> tuple[Counted, ...]:
        counts = {entry.key: entry.count for entry in known}
        for entry in seen:
            if entry.key in counts or (adding and 0 < len(entry.key) <= _MAX_KEY):
                counts[entry.key] = min(counts.get(entry.key, 0) + entry.count, _MAX_COUNT)
        return _counted(counts)[: self.top_n]

    def to_json(self) -> str:
        """Return the canonical JSON of the baseline (sorted keys, no whitespace)."""
        document = {
            "version": SCHEMA_VERSION,
            "subject": self.subject,
            "scope": self.scope.value,
            "window_s": self.window_s,
            "learning_until": self.learning_until.astimezone(dt.UTC).isoformat(),
            "min_windows": self.min_windows,
            "decay": self.decay,
            "top_n": self.top_n,
            "windows": self.windows,
            "destinations": [[entry.key, entry.count] for entry in self.destinations],
            "ports": [[entry.key, entry.count] for entry in self.ports],
            "octets": _stat_json(self.octets),
            "packets": _stat_json(self.packets),
            "connections": _stat_json(self.connections),
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Baseline:
        """Parse the output of :meth:`to_json`.

        Raises :class:`BaselineInvalid` for anything else: more than 256 KiB, malformed JSON,
        duplicate, missing or extra keys, wrong types (a boolean is not a number), non-finite or
        out-of-range numbers, a naive time, an unknown scope or version.
        """
        if len(text) > MAX_BASELINE_JSON:
            raise BaselineInvalid(f"baseline JSON of {len(text)} bytes exceeds {MAX_BASELINE_JSON}")
        try:
            document = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise BaselineInvalid(f"baseline is not JSON: {exc}") from exc
        fields = _object(document, "baseline", _TOP_KEYS)
        if _integer(fields["version"], "version") != SCHEMA_VERSION:
            raise BaselineInvalid(f"baseline version {fields['version']} is not {SCHEMA_VERSION}")
        try:
            return cls(
                subject=_string(fields["subject"], "subject"),
                scope=Scope(_string(fields["scope"], "scope")),
                window_s=_number(fields["window_s"], "window_s"),
                learning_until=_time(fields["learning_until"], "learning_until"),
                min_windows=_integer(fields["min_windows"], "min_windows"),
                decay=_number(fields["decay"], "decay"),
                top_n=_integer(fields["top_n"], "top_n"),
                windows=_integer(fields["windows"], "windows"),
                destinations=_counted_list(fields["destinations"], "destinations"),
                ports=_counted_list(fields["ports"], "ports"),
                octets=_stat(fields["octets"], "octets"),
                packets=_stat(fields["packets"], "packets"),
                connections=_stat(fields["connections"], "connections"),
            )
        except ValueError as exc:  # an unknown Scope
            raise BaselineInvalid(f"baseline scope is invalid: {exc}") from exc


_TOP_KEYS = frozenset(
    {"version", "subject", "scope", "window_s", "learning_until", "min_windows", "decay", "top_n", "windows",
     "destinations", "ports", "octets", "packets", "connections"}
)  # fmt: skip
_STAT_KEYS = frozenset({"weight", "mean", "m2"})


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise BaselineInvalid(f"baseline is invalid: {message}")


def _stat_json(stat: RunningStat) -> dict[str, float]:
    return {"weight": stat.weight, "mean": stat.mean, "m2": stat.m2}


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise BaselineInvalid("baseline JSON has a duplicate key")
    return dict(pairs)


def _reject_constant(name: str) -> float:
    raise BaselineInvalid(f"baseline JSON has the non-finite number {name}")


def _object(value: object, name: str, keys: frozenset[str]) -> dict[str, object]:
    if not isinstance(value, dict):
        raise BaselineInvalid(f"{name} must be a JSON object")
    if set(value) != keys:
        missing, extra = sorted(keys - set(value)), sorted(set(value) - keys)
        raise BaselineInvalid(f"{name} keys differ: missing {missing}, unexpected {extra}")
    return value


def _string(value: object, name: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_KEY:
        raise BaselineInvalid(f"{name} must be a string of 1 to {_MAX_KEY} characters")
    return value


def _integer(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
        raise BaselineInvalid(f"{name} must be an integer in 0..2**53")
    return value


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BaselineInvalid(f"{name} must be a finite number")
    return float(value)


def _time(value: object, name: str) -> dt.datetime:
    text = _string(value, name)
    try:
        parsed = dt.datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            raise BaselineInvalid(f"{name} must carry a UTC offset: {text!r}")
        return parsed.astimezone(dt.UTC)
    except (ValueError, OverflowError) as exc:
        raise BaselineInvalid(f"{name} is not an ISO 8601 time in range: {text!r}") from exc


def _counted_list(value: object, name: str) -> tuple[Counted, ...]:
    if not isinstance(value, list) or len(value) > MAX_TOP_N:
        raise BaselineInvalid(f"{name} must be a list of at most {MAX_TOP_N} entries")
    entries = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise BaselineInvalid(f"an entry of {name} must be [key, count]")
        entries.append(Counted(_string(item[0], name), _integer(item[1], name)))
    return tuple(entries)


def _stat(value: object, name: str) -> RunningStat:
    fields = _object(value, name, _STAT_KEYS)
    return RunningStat(
        _number(fields["weight"], f"{name}.weight"),
        _number(fields["mean"], f"{name}.mean"),
        _number(fields["m2"], f"{name}.m2"),
    )
