"""Broker telemetry: Mosquitto's log read into events, and detectors over them.

Theory of operation. The gateway's Mosquitto 2 logs to stderr (``log_dest stderr``) at the types
``error``, ``warning``, ``notice`` and ``information`` with ``connection_messages true``
(:func:`fleetguard.gateway.config.render_mosquitto_conf`); each line starts with the epoch second
(``log_timestamp`` defaults to true). :class:`MosquittoLogParser` turns those lines into
:class:`BrokerEvent` values; the formats are Mosquitto's own (``src/handle_connect.c``,
``src/loop.c`` ``do_disconnect``, ``src/net.c``, ``lib/net_mosq.c``, ``src/send_connack.c``,
``src/handle_publish.c``):

* ``New client connected from A:P as ID (p2, c1, k60, u'USER').``: CONNECT;
* ``Client ID disconnected.`` and the other endings of ``do_disconnect`` (``closed its connection.``,
  ``has exceeded timeout, disconnecting.``, ``disconnected due to ...``, ...): DISCONNECT;
* ``Client ID disconnected, not authorised.``, and at ``log_type debug`` ``Sending CONNACK to ID
  (0, RC)`` with a refusing reason code: AUTH_FAILURE (the disconnect that follows a counted CONNACK
  is not counted again);
* ``Client connection from A failed: ERR.`` and ``OpenSSL Error[0]: ERR``: TLS_FAILURE;
* ``Received PUBLISH from ID (d0, q0, r0, m0, 'TOPIC', ... (N bytes))``: PUBLISH. It is a debug
  line, so message rates need ``log_type debug`` (or ``all``); without it there are none.

``Client <unknown> ...`` has no client id (None). Failure lines carry no address; the parser tracks
the ``New connection from A:P on port N.`` lines not yet followed by their client's CONNECT (for at
most :data:`PENDING_S` seconds) and gives a failure the address of the one pending connection, and
no address when there are none or several (attribution is never guessed). Lines are bounded in
length (:data:`MAX_LINE_LENGTH`); every line that gives no event is counted in
:class:`~fleetguard.monitor.model.Skipped` by a reason that never contains the line's text.

:class:`BrokerMonitor` folds events into three detectors, each with bounded state (least recently
updated keys evicted first, counted in ``evicted``):

* ``bruteforce.mqtt`` (a :class:`~fleetguard.monitor.rules.Finding`): at least ``threshold``
  authentication or TLS failures from one address within ``window_s``;
* ``broker.reconnect-storm`` (:class:`BrokerFinding`): one client id connecting at least
  ``threshold`` times within ``window_s`` (a crash loop, or two devices sharing an identity);
* ``broker.message-rate`` (:class:`BrokerFinding`): a client's PUBLISH rate in a bucket of
  ``bucket_s`` seconds far above its own exponentially weighted mean (z-score against the
  exponentially weighted standard deviation with a floor, and a ratio), after ``learn_buckets``
  buckets. Anomalous buckets are not learned, so a flood does not become the baseline.

A windowed key that fired is quiet for one window. Time is the events' own time, never the clock;
:meth:`BrokerMonitor.advance` closes rate buckets when no events come.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import re
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, assert_never

from fleetguard.monitor.model import Skipped
from fleetguard.monitor.rules import MAX_EVIDENCE, Finding, RuleId, Severity, WindowThresholds

__all__ = [
    "MAX_LINE_LENGTH",
    "PENDING_S",
    "BrokerEvent",
    "BrokerEventKind",
    "BrokerFinding",
    "BrokerMonitor",
    "BrokerRule",
    "MosquittoLogParser",
    "RateThresholds",
    "parse_mosquitto_log",
]

# Mosquitto's own stderr reader in fleetguard.gateway.broker keeps lines up to 4096 characters.
MAX_LINE_LENGTH: Final = 4096
PENDING_S: Final = 10.0
_MAX_PENDING = 64
_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
_UNKNOWN = "<unknown>"
# CONNACK reason codes that refuse a login: MQTT 3.1.1 section 3.2.2.3 (4 bad user name or password,
# 5 not authorized) and MQTT 5.0 section 3.2.2.2 (0x86, 0x87, 0x8C bad authentication method).
_AUTH_REFUSALS: Final = frozenset({4, 5, 0x86, 0x87, 0x8C})
_NOT_TELEMETRY = "not broker telemetry"


class BrokerEventKind(StrEnum):
    """What happened at the broker."""

    CONNECT = "connect"
    DISCONNECT = "disconnect"
    AUTH_FAILURE = "auth-failure"
    TLS_FAILURE = "tls-failure"
    PUBLISH = "publish"


@dataclass(frozen=True, slots=True)
class BrokerEvent:
    """One broker log line as an event. ``client`` is None for ``<unknown>``; ``address`` is None
    where the line has none and none could be attributed; ``topic`` and ``payload_bytes`` are set for
    PUBLISH only; ``detail`` is the disconnect reason or the TLS error."""

    time: dt.datetime
    kind: BrokerEventKind
    client: str | None
    address: str | None = None
    topic: str | None = None
    payload_bytes: int | None = None
    detail: str | None = None


_STAMP = re.compile(r"(\d{1,12}): (.*)", re.DOTALL)
_CONNECTED = re.compile(
    r"(\S+):(\d{1,5}) as (.+?) \((?:p\d{1,3}, )?c[01], k\d{1,5}(?:, u'.*')?\)\.", re.DOTALL
)
_NEW_CONNECTION = re.compile(r"(\S+):(\d{1,5}) on port \d{1,5}\.")
_ACCEPT_FAILED = re.compile(r"(\S+) failed: (.*)\.", re.DOTALL)
_OPENSSL = re.compile(r"(\d{1,3})\]: (.*)", re.DOTALL)
_CONNACK = re.compile(r"(.+) \([01], (\d{1,3})\)", re.DOTALL)
_PUBLISH = re.compile(
    r"(.+?) \(d[01], q[0-2], r[01], m\d{1,5}, '(.*)', \.\.\. \((\d{1,10}) bytes\)\)", re.DOTALL
)
_CLIENT = re.compile(
    r"(.+?) (disconnected\.|closed its connection\.|has exceeded timeout, disconnecting\."
    r"|disconnected, not authorised\.|disconnected due to .+\.|been disconnected by administrative action\."
    r"|disconnected: .+\.|already connected, closing old connection\.)",
    re.DOTALL,
)
_SOCKET_ERROR = re.compile(r"(.+?)(?:: (.*)|, disconnecting\.)", re.DOTALL)


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _client(name: str) -> str | None:
    return None if name == _UNKNOWN else name


class _Unusable(ValueError):
    """A line of a known shape that does not parse; ``reason`` names the shape, not the line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class _Line:
    time: dt.datetime
    ts: float
    message: str


class MosquittoLogParser:
    """Mosquitto log lines to :class:`BrokerEvent` values, keeping the attribution state between
    batches (see the module docstring). :meth:`feed` never raises on its input."""

    def __init__(self, *, max_line_length: int = MAX_LINE_LENGTH) -> None:
        self._max_line_length = max_line_length
        self._pending: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._refused: OrderedDict[str, float] = OrderedDict()
        self._handlers: tuple[tuple[str, Callable[[_Line, str], BrokerEvent | None]], ...] = (
            ("New client connected from ", self._connected),
            ("New connection from ", self._new_connection),
            ("Client connection from ", self._accept_failed),
            ("OpenSSL Error[", self._openssl),
            ("Sending CONNACK to ", self._connack),
            ("Received PUBLISH from ", self._publish),
            ("Client ", self._client_line),
            ("Bad socket read/write on client ", self._socket_error),
            ("Socket error on client ", self._socket_error),
        )

    def feed(self, lines: Iterable[str], *, max_events: int = 1_000_000) -> tuple[list[BrokerEvent], Skipped]:
        """Return the events of ``lines`` (in order) and the lines that gave none, by reason.

        Reading stops after ``max_events`` events (counted once as ``event limit reached``).
        """
        events: list[BrokerEvent] = []
        skipped = Skipped()
        for raw in lines:
            if len(events) >= max_events:
                skipped.add("event limit reached (rest not read)")
                break
            try:
                event = self._event(raw)
            except _Unusable as exc:
                skipped.add(exc.reason)
                continue
            events.append(event)
        return events, skipped

    def _event(self, raw: str) -> BrokerEvent:
        if len(raw) > self._max_line_length:
            raise _Unusable("line too long")
        stamp = _STAMP.fullmatch(raw.rstrip("\r\n"))
        if stamp is None:
            raise _Unusable("no timestamp")
        seconds = int(stamp[1])
        if seconds > _MAX_SECONDS:
            raise _Unusable("bad timestamp")
        line = _Line(dt.datetime.fromtimestamp(seconds, dt.UTC), float(seconds), stamp[2])
        self._expire(line.ts)
        for prefix, handler in self._handlers:
            if line.message.startswith(prefix):
                event = handler(line, line.message.removeprefix(prefix))
                if event is None:
                    break
                return event
        raise _Unusable(_NOT_TELEMETRY)

    def _expire(self, now: float) -> None:
        horizon = now - PENDING_S
        while self._pending and next(iter(self._pending.values()))[1] <= horizon:
            self._pending.popitem(last=False)
        while self._refused and next(iter(self._refused.values())) <= horizon:
            self._refused.popitem(last=False)

    def _attributed(self) -> str | None:
        """Pop and return the address of the one pending connection; None when not exactly one."""
        if len(self._pending) != 1:
            return None
        return self._pending.popitem()[1][0]

    def _connected(self, line: _Line, rest: str) -> BrokerEvent:
        match = _CONNECTED.fullmatch(rest)
        if match is None:
            raise _Unusable("bad CONNECT line")
        address = _ip(match[1])
        if address is None:
            raise _Unusable("bad address")
        self._pending.pop(f"{match[1]}:{match[2]}", None)
        return BrokerEvent(line.time, BrokerEventKind.CONNECT, _client(match[3]), address)

    def _new_connection(self, line: _Line, rest: str) -> None:
        match = _NEW_CONNECTION.fullmatch(rest)
        address = _ip(match[1]) if match else None
        if match is None or address is None:
            raise _Unusable("bad new connection line")
        key = f"{match[1]}:{match[2]}"
        self._pending[key] = (address, line.ts)
        self._pending.move_to_end(key)
        if len(self._pending) > _MAX_PENDING:
            self._pending.popitem(last=False)
        raise _Unusable("connection accepted (attribution only)")

    def _accept_failed(self, line: _Line, rest: str) -> BrokerEvent:
        match = _ACCEPT_FAILED.fullmatch(rest)
        address = _ip(match[1]) if match else None
        if match is None or address is None:
            raise _Unusable("bad TLS failure line")
        return BrokerEvent(line.time, BrokerEventKind.TLS_FAILURE, None, address, detail=match[2])

    def _openssl(self, line: _Line, rest: str) -> BrokerEvent:
        match = _OPENSSL.fullmatch(rest)
        if match is None:
            raise _Unusable("bad OpenSSL error line")
        if match[1] != "0":  # OpenSSL's error queue: entries after the first are the same failure
            raise _Unusable("OpenSSL error continuation")
        return BrokerEvent(line.time, BrokerEventKind.TLS_FAILURE, None, self._attributed(), detail=match[2])

    def _connack(self, line: _Line, rest: str) -> BrokerEvent:
        match = _CONNACK.fullmatch(rest)
        if match is None:
            raise _Unusable("bad CONNACK line")
        code = int(match[2])
        if code not in _AUTH_REFUSALS:
            raise _Unusable("CONNACK without an authentication refusal")
        # send__connack names the client id, or the address when the client has no id yet.
        address = _ip(match[1])
        client = None if address is not None else _client(match[1])
        self._refused[client or _UNKNOWN] = line.ts
        if len(self._refused) > _MAX_PENDING:
            self._refused.popitem(last=False)
        address = address or self._attributed()
        return BrokerEvent(line.time, BrokerEventKind.AUTH_FAILURE, client, address, detail=f"CONNACK {code}")

    def _publish(self, line: _Line, rest: str) -> BrokerEvent:
        match = _PUBLISH.fullmatch(rest)
        if match is None:
            raise _Unusable("bad PUBLISH line")
        client = _client(match[1])
        return BrokerEvent(
            line.time, BrokerEventKind.PUBLISH, client, topic=match[2], payload_bytes=int(match[3])
        )

    def _client_line(self, line: _Line, rest: str) -> BrokerEvent | None:
        match = _CLIENT.fullmatch(rest)
        if match is None:
            return None
        name, detail = match[1], match[2].removesuffix(".")
        if detail != "disconnected, not authorised":
            return BrokerEvent(line.time, BrokerEventKind.DISCONNECT, _client(name), detail=detail)
        if self._refused.pop(name, None) is not None:
            raise _Unusable("authentication failure already counted from its CONNACK")
        return BrokerEvent(
            line.time, BrokerEventKind.AUTH_FAILURE, _client(name), self._attributed(), detail=detail
        )

    def _socket_error(self, line: _Line, rest: str) -> BrokerEvent:
        match = _SOCKET_ERROR.fullmatch(rest)
        if match is None:
            raise _Unusable("bad socket error line")
        detail = match[2] or "socket error"
        return BrokerEvent(line.time, BrokerEventKind.DISCONNECT, _client(match[1]), detail=detail)


def parse_mosquitto_log(
    lines: Iterable[str], *, max_line_length: int = MAX_LINE_LENGTH, max_events: int = 1_000_000
) -> tuple[list[BrokerEvent], Skipped]:
    """Return the events of Mosquitto log ``lines`` and the lines skipped, by reason; never raises."""
    return MosquittoLogParser(max_line_length=max_line_length).feed(lines, max_events=max_events)


class BrokerRule(StrEnum):
    """The slugs of the broker rules that :class:`~fleetguard.monitor.rules.RuleId` does not have."""

    RECONNECT_STORM = "broker.reconnect-storm"
    MESSAGE_RATE = "broker.message-rate"


@dataclass(frozen=True, slots=True)
class BrokerFinding:
    """A broker detection, shaped as :class:`~fleetguard.monitor.rules.Finding`: ``device`` is the
    client id, ``target`` its last address (or None), ``evidence`` addresses or topics."""

    rule: BrokerRule
    severity: Severity
    device: str
    first: dt.datetime
    last: dt.datetime
    reason: str
    value: float
    threshold: float
    target: str | None = None
    evidence: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RateThresholds:
    """A bucket's PUBLISH rate (messages per second) is anomalous when, after ``learn_buckets``
    buckets, it is at least ``min_rate``, ``ratio`` times the learned mean, and ``z`` deviations above
    it; the deviation is at least ``min_std_fraction`` of the mean and ``min_std`` (so a constant
    client does not alert on one message more). ``alpha`` weighs the newest bucket."""

    bucket_s: float = 60.0
    alpha: float = 0.05
    learn_buckets: int = 30
    z: float = 4.0
    ratio: float = 3.0
    min_rate: float = 1.0
    min_std_fraction: float = 0.1
    min_std: float = 0.05
    max_clients: int = 4096
    max_topics: int = 64

    def __post_init__(self) -> None:
        if not (
            self.bucket_s > 0 and 0 < self.alpha <= 1 and self.learn_buckets >= 1 and self.max_clients >= 1
        ):
            raise ValueError(f"inconsistent thresholds {self}: need bucket_s > 0, 0 < alpha <= 1")


@dataclass(slots=True)
class _Window:
    events: deque[tuple[float, str]]
    quiet_until: float = -math.inf


class _WindowCounter:
    """Events per key within a sliding window, bounded in keys and in events per key."""

    def __init__(self, limits: WindowThresholds, evicted: Skipped) -> None:
        self.limits = limits
        self.windows: OrderedDict[str, _Window] = OrderedDict()
        self.evicted = evicted

    def add(self, key: str, ts: float, note: str) -> list[tuple[float, str]] | None:
        """Count an event; return the events in the window when the key crosses the threshold."""
        window = self.windows.get(key)
        if window is None:
            if len(self.windows) >= self.limits.max_keys:
                self.windows.popitem(last=False)
                self.evicted.add("key evicted (max_keys)")
            window = self.windows[key] = _Window(deque(maxlen=self.limits.max_values))
        self.windows.move_to_end(key)
        if len(window.events) == window.events.maxlen:
            self.evicted.add("value evicted (max_values)")
        window.events.append((ts, note))
        live = sorted(e for e in window.events if e[0] > ts - self.limits.window_s)
        if len(live) < self.limits.threshold or ts < window.quiet_until:
            return None
        window.quiet_until = ts + self.limits.window_s
        return live


@dataclass(slots=True)
class _Rate:
    bucket: int
    count: int = 0
    bytes: int = 0
    topics: Counter[str] = field(default_factory=Counter)
    learned: int = 0
    mean: float = 0.0
    var: float = 0.0


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


class BrokerMonitor:
    """The broker detectors (see the module docstring); :meth:`observe` folds events in."""

    def __init__(
        self,
        *,
        failures: WindowThresholds | None = None,
        reconnects: WindowThresholds | None = None,
        rate: RateThresholds | None = None,
    ) -> None:
        self.evicted = Skipped()
        self.unattributed = Skipped()
        self._failures = _WindowCounter(
            failures or WindowThresholds(window_s=300.0, threshold=10), self.evicted
        )
        self._reconnects = _WindowCounter(
            reconnects or WindowThresholds(window_s=300.0, threshold=10), self.evicted
        )
        self._rate_limits = rate or RateThresholds()
        self._rates: OrderedDict[str, _Rate] = OrderedDict()
        self._addresses: OrderedDict[str, str | None] = OrderedDict()

    def observe(self, events: Iterable[BrokerEvent]) -> tuple[Finding | BrokerFinding, ...]:
        """Fold ``events`` (in time order) in; return the findings they complete."""
        findings: list[Finding | BrokerFinding] = []
        for event in events:
            found = self._observe(event)
            if found is not None:
                findings.append(found)
        return tuple(findings)

    def advance(self, now: dt.datetime) -> tuple[BrokerFinding, ...]:
        """Close the rate buckets that end by ``now`` (timezone-aware); return their findings."""
        bucket = math.floor(now.timestamp() / self._rate_limits.bucket_s)
        findings = []
        for client in list(self._rates):
            found = self._roll(client, bucket)
            if found is not None:
                findings.append(found)
        return tuple(findings)

    @property
    def tracked(self) -> int:
        """How many keys (addresses and clients) all detectors track now."""
        return len(self._failures.windows) + len(self._reconnects.windows) + len(self._rates)

    def _observe(self, event: BrokerEvent) -> Finding | BrokerFinding | None:
        ts = event.time.timestamp()
        match event.kind:
            case BrokerEventKind.AUTH_FAILURE | BrokerEventKind.TLS_FAILURE:
                if event.address is None:
                    self.unattributed.add(f"{event.kind} without a source address")
                    return None
                live = self._failures.add(event.address, ts, event.kind.value)
                return None if live is None else self._bruteforce(event.address, live)
            case BrokerEventKind.CONNECT:
                if event.client is None:
                    return None
                self._remember_address(event.client, event.address)
                live = self._reconnects.add(event.client, ts, event.address or "-")
                return None if live is None else self._storm(event.client, live)
            case BrokerEventKind.PUBLISH:
                return None if event.client is None else self._publish(event.client, ts, event)
            case BrokerEventKind.DISCONNECT:
                return None
            case _:
                assert_never(event.kind)

    def _remember_address(self, client: str, address: str | None) -> None:
        self._addresses[client] = address
        self._addresses.move_to_end(client)
        if len(self._addresses) > self._rate_limits.max_clients:
            self._addresses.popitem(last=False)
            self.evicted.add("address evicted (max_clients)")

    def _bruteforce(self, address: str, live: list[tuple[float, str]]) -> Finding:
        limits = self._failures.limits
        kinds = Counter(kind for _, kind in live)
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        reason = (
            f"{len(live)} failed MQTT logins from {address} at the broker ({counts}) within "
            f"{limits.window_s:g} s (threshold {limits.threshold})"
        )
        return Finding(
            RuleId.BRUTEFORCE_MQTT, Severity.HIGH, address, _utc(live[0][0]), _utc(live[-1][0]),
            reason, len(live), limits.threshold, "mqtt broker",
        )  # fmt: skip

    def _storm(self, client: str, live: list[tuple[float, str]]) -> BrokerFinding:
        limits = self._reconnects.limits
        addresses = tuple(dict.fromkeys(address for _, address in live))[:MAX_EVIDENCE]
        reason = (
            f"client {client} connected {len(live)} times within {limits.window_s:g} s from "
            f"{len(addresses)} address(es) (threshold {limits.threshold})"
        )
        return BrokerFinding(
            BrokerRule.RECONNECT_STORM, Severity.MEDIUM, client, _utc(live[0][0]), _utc(live[-1][0]),
            reason, len(live), limits.threshold, live[-1][1], addresses,
        )  # fmt: skip

    def _publish(self, client: str, ts: float, event: BrokerEvent) -> BrokerFinding | None:
        limits = self._rate_limits
        bucket = math.floor(ts / limits.bucket_s)
        found = self._roll(client, bucket) if client in self._rates else None
        rate = self._rates.get(client)
        if rate is None:
            if len(self._rates) >= limits.max_clients:
                self._rates.popitem(last=False)
                self.evicted.add("client evicted (max_clients)")
            rate = self._rates[client] = _Rate(bucket)
        self._rates.move_to_end(client)
        rate.count += 1
        rate.bytes += event.payload_bytes or 0
        if event.topic is not None and (event.topic in rate.topics or len(rate.topics) < limits.max_topics):
            rate.topics[event.topic] += 1
        return found

    def _roll(self, client: str, bucket: int) -> BrokerFinding | None:
        """Close ``client``'s bucket when ``bucket`` is later: judge it, then learn it and the empty ones."""
        rate = self._rates[client]
        if bucket <= rate.bucket:
            return None
        limits = self._rate_limits
        observed = rate.count / limits.bucket_s
        found = self._judge(client, rate, observed) if rate.learned >= limits.learn_buckets else None
        if found is None:
            self._learn(rate, observed)
        # Empty buckets between are rate 0; after learn_buckets of them more change little.
        for _ in range(min(bucket - rate.bucket - 1, limits.learn_buckets)):
            self._learn(rate, 0.0)
        rate.bucket, rate.count, rate.bytes = bucket, 0, 0
        rate.topics.clear()
        return found

    def _learn(self, rate: _Rate, observed: float) -> None:
        # Exponentially weighted mean and variance (Finch 2009, "Incremental calculation of weighted
        # mean and variance", section 9).
        alpha = self._rate_limits.alpha if rate.learned else 1.0
        diff = observed - rate.mean
        increment = alpha * diff
        rate.mean += increment
        rate.var = (1 - alpha) * (rate.var + diff * increment)
        rate.learned += 1

    def _judge(self, client: str, rate: _Rate, observed: float) -> BrokerFinding | None:
        limits = self._rate_limits
        std = max(math.sqrt(rate.var), limits.min_std_fraction * rate.mean, limits.min_std)
        z = (observed - rate.mean) / std
        ratio = observed / rate.mean if rate.mean > 0 else math.inf
        if observed < limits.min_rate or z < limits.z or ratio < limits.ratio:
            return None
        ratio_text = f"{ratio:.1f}x" if math.isfinite(ratio) else "infinitely more than"
        reason = (
            f"client {client} published {rate.count} messages ({rate.bytes} bytes) in {limits.bucket_s:g} s: "
            f"{observed:.2f}/s, {ratio_text} its learned {rate.mean:.2f}/s, z {z:.1f} "
            f"(thresholds {limits.ratio:g}x, z {limits.z:g}, at least {limits.min_rate:g}/s)"
        )
        start = rate.bucket * limits.bucket_s
        topics = tuple(topic for topic, _ in rate.topics.most_common(MAX_EVIDENCE))
        severity = Severity.HIGH if ratio >= 10 * limits.ratio else Severity.MEDIUM
        return BrokerFinding(
            BrokerRule.MESSAGE_RATE, severity, client, _utc(start), _utc(start + limits.bucket_s),
            reason, observed, limits.min_rate, self._addresses.get(client), topics,
        )  # fmt: skip
