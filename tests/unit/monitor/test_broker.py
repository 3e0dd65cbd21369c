"""Mosquitto log lines to broker events, and the broker detectors: exact events, findings, reasons, bounds."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.monitor.broker import (
    MAX_LINE_LENGTH,
    BrokerEvent,
    BrokerEventKind,
    BrokerFinding,
    BrokerMonitor,
    BrokerRule,
    MosquittoLogParser,
    RateThresholds,
    parse_mosquitto_log,
)
from fleetguard.monitor.rules import Finding, RuleId, Severity, WindowThresholds

T0 = 1_700_000_000
K = BrokerEventKind


def utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def event(
    ts: float,
    kind: BrokerEventKind,
    client: str | None = None,
    *,
    address: str | None = None,
    topic: str | None = None,
    payload_bytes: int | None = None,
) -> BrokerEvent:
    return BrokerEvent(utc(ts), kind, client, address, topic, payload_bytes)


# --- parsing ------------------------------------------------------------------------------------


def test_each_mosquitto_format_becomes_its_exact_event() -> None:
    lines = [
        f"{T0}: New client connected from 10.0.0.5:51234 as cam-1 (p2, c1, k60, u'cam-1').\n",
        f"{T0}: New client connected from ::1:40000 as a b (c) (p5, c0, k30).",
        f"{T0 + 1}: Received PUBLISH from cam-1 (d0, q1, r0, m7, 'devices/cam-1/t', ... (12 bytes))",
        f"{T0 + 2}: Client cam-1 disconnected.",
        f"{T0 + 3}: Client cam-2 closed its connection.",
        f"{T0 + 4}: Client cam-3 has exceeded timeout, disconnecting.",
        f"{T0 + 5}: Client connection from 10.0.0.66 failed: error:0A000086:certificate verify failed.",
        f"{T0 + 6}: Bad socket read/write on client cam-4: Connection reset.",
        f"{T0 + 7}: Client cam-5 already connected, closing old connection.",
    ]
    events, skipped = parse_mosquitto_log(lines)
    assert skipped.total == 0
    assert events == [
        BrokerEvent(utc(T0), K.CONNECT, "cam-1", "10.0.0.5"),
        BrokerEvent(utc(T0), K.CONNECT, "a b (c)", "::1"),
        BrokerEvent(utc(T0 + 1), K.PUBLISH, "cam-1", topic="devices/cam-1/t", payload_bytes=12),
        BrokerEvent(utc(T0 + 2), K.DISCONNECT, "cam-1", detail="disconnected"),
        BrokerEvent(utc(T0 + 3), K.DISCONNECT, "cam-2", detail="closed its connection"),
        BrokerEvent(utc(T0 + 4), K.DISCONNECT, "cam-3", detail="has exceeded timeout, disconnecting"),
        BrokerEvent(
            utc(T0 + 5), K.TLS_FAILURE, None, "10.0.0.66",
            detail="error:0A000086:certificate verify failed",
        ),
        BrokerEvent(utc(T0 + 6), K.DISCONNECT, "cam-4", detail="Connection reset."),
        BrokerEvent(utc(T0 + 7), K.DISCONNECT, "cam-5", detail="already connected, closing old connection"),
    ]  # fmt: skip


def test_a_failure_gets_the_address_of_the_one_pending_connection() -> None:
    events, skipped = parse_mosquitto_log([
        f"{T0}: New connection from 10.0.0.5:50000 on port 8883.",
        f"{T0}: New client connected from 10.0.0.5:50000 as cam-1 (p2, c1, k60).",  # no longer pending
        f"{T0 + 1}: New connection from 10.0.0.66:40000 on port 8883.",
        f"{T0 + 1}: OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed",
        f"{T0 + 1}: OpenSSL Error[1]: error:0A000417:SSL routines::sslv3 alert certificate unknown",
        f"{T0 + 1}: Client <unknown> closed its connection.",
        f"{T0 + 2}: New connection from 10.0.0.67:40001 on port 1883.",
        f"{T0 + 2}: Client <unknown> disconnected, not authorised.",
    ])  # fmt: skip
    failures = [e for e in events if e.kind in {K.TLS_FAILURE, K.AUTH_FAILURE}]
    assert failures == [
        BrokerEvent(utc(T0 + 1), K.TLS_FAILURE, None, "10.0.0.66",
                    detail="error:0A000086:SSL routines::certificate verify failed"),
        BrokerEvent(utc(T0 + 2), K.AUTH_FAILURE, None, "10.0.0.67", detail="disconnected, not authorised"),
    ]  # fmt: skip
    assert skipped.counts == {"connection accepted (attribution only)": 3, "OpenSSL error continuation": 1}


def test_attribution_is_never_guessed_between_two_pending_connections_or_after_they_expire() -> None:
    events, _ = parse_mosquitto_log([
        f"{T0}: New connection from 10.0.0.7:1 on port 1883.",
        f"{T0}: New connection from 10.0.0.8:2 on port 1883.",
        f"{T0}: Client <unknown> disconnected, not authorised.",
        f"{T0 + 100}: New connection from 10.0.0.9:3 on port 1883.",
        f"{T0 + 111}: OpenSSL Error[0]: error:0A00010B:SSL routines::wrong version number",
    ])  # fmt: skip
    assert [(e.kind, e.address) for e in events] == [(K.AUTH_FAILURE, None), (K.TLS_FAILURE, None)]


def test_a_refusing_connack_is_counted_once_with_its_disconnect() -> None:
    events, skipped = parse_mosquitto_log([
        f"{T0}: Sending CONNACK to cam-9 (0, 5)",
        f"{T0}: Client cam-9 disconnected, not authorised.",
        f"{T0 + 1}: Sending CONNACK to 10.0.0.70 (0, 135)",  # MQTT 5 0x87, no client id yet
        f"{T0 + 2}: Sending CONNACK to cam-1 (0, 0)",
    ])  # fmt: skip
    assert events == [
        BrokerEvent(utc(T0), K.AUTH_FAILURE, "cam-9", None, detail="CONNACK 5"),
        BrokerEvent(utc(T0 + 1), K.AUTH_FAILURE, None, "10.0.0.70", detail="CONNACK 135"),
    ]
    assert skipped.counts == {
        "authentication failure already counted from its CONNACK": 1,
        "CONNACK without an authentication refusal": 1,
    }


def test_malformed_lines_are_counted_by_reason_never_by_content() -> None:
    lines = [
        "New client connected from 10.0.0.5:1 as x (p2, c1, k60).",  # log_timestamp false
        f"{T0}: " + "x" * MAX_LINE_LENGTH,
        f"{T0}: New client connected from 10.0.0.5:1 as x",
        f"{T0}: New client connected from cam.example:1 as x (p2, c1, k60).",
        f"{T0}: Received PUBLISH from cam-1 (d0, q0, r0, m0, 'devices/x', ... (lots bytes))",
        f"{T0}: New connection from nowhere on port 1883.",
        f"{T0}: mosquitto version 2.0.11 running",
        f"{T0}: Client cam-1 negotiated something.",
        f"{'9' * 12}: Client cam-1 disconnected.",
        "",
    ]
    events, skipped = parse_mosquitto_log(lines)
    assert events == []
    assert skipped.counts == {
        "no timestamp": 2,
        "line too long": 1,
        "bad CONNECT line": 1,
        "bad address": 1,
        "bad PUBLISH line": 1,
        "bad new connection line": 1,
        "not broker telemetry": 2,
        "bad timestamp": 1,
    }
    assert skipped.total == len(lines)


def test_reading_stops_at_the_event_limit() -> None:
    lines = [f"{T0 + i}: Client cam-{i} disconnected." for i in range(5)]
    events, skipped = parse_mosquitto_log(lines, max_events=3)
    assert [e.client for e in events] == ["cam-0", "cam-1", "cam-2"]
    assert skipped.counts == {"event limit reached (rest not read)": 1}


def test_the_parser_keeps_attribution_state_between_batches() -> None:
    parser = MosquittoLogParser()
    parser.feed([f"{T0}: New connection from 10.0.0.66:4 on port 8883."])
    events, _ = parser.feed([f"{T0 + 1}: OpenSSL Error[0]: error:0A000086:certificate verify failed"])
    assert events[0].address == "10.0.0.66"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.text(max_size=200),
    st.text(max_size=80).map(lambda s: f"{T0}: {s}"),
    st.sampled_from(["New client connected from ", "Received PUBLISH from ", "Client ", "OpenSSL Error[",
                     "Sending CONNACK to ", "New connection from ", "Client connection from "])
      .flatmap(lambda p: st.text(max_size=60).map(lambda s: f"{T0}: {p}{s}")),
), max_size=20))  # fmt: skip
def test_random_text_never_raises_and_every_line_is_an_event_or_skipped(lines: list[str]) -> None:
    events, skipped = parse_mosquitto_log(lines)
    assert len(events) + skipped.total == len(lines)
    assert all(e.time.tzinfo is dt.UTC for e in events)


# --- detectors ----------------------------------------------------------------------------------


def test_ten_failures_from_one_address_are_one_exact_bruteforce_finding() -> None:
    monitor = BrokerMonitor()
    failures = [
        event(T0 + i, K.TLS_FAILURE if i % 2 else K.AUTH_FAILURE, address="10.0.0.66") for i in range(9)
    ]
    assert monitor.observe(failures) == ()
    (finding,) = monitor.observe([event(T0 + 9, K.TLS_FAILURE, address="10.0.0.66")])
    assert finding == Finding(
        RuleId.BRUTEFORCE_MQTT, Severity.HIGH, "10.0.0.66", utc(T0), utc(T0 + 9),
        "10 failed MQTT logins from 10.0.0.66 at the broker (5 auth-failure, 5 tls-failure) within 300 s "
        "(threshold 10)",
        10, 10, "mqtt broker",
    )  # fmt: skip
    # Quiet for one window, then a new window fires again.
    assert monitor.observe([event(T0 + 10 + i, K.AUTH_FAILURE, address="10.0.0.66") for i in range(20)]) == ()
    later = monitor.observe([event(T0 + 310 + i, K.AUTH_FAILURE, address="10.0.0.66") for i in range(10)])
    assert [f.rule for f in later] == [RuleId.BRUTEFORCE_MQTT]


def test_failures_spread_beyond_the_window_or_without_an_address_do_not_fire() -> None:
    monitor = BrokerMonitor()
    spread = [event(T0 + 40 * i, K.AUTH_FAILURE, address="10.0.0.66") for i in range(12)]
    unattributed = [event(T0 + i, K.AUTH_FAILURE, "cam-9") for i in range(20)]
    assert monitor.observe(spread + unattributed) == ()
    assert monitor.unattributed.counts == {"auth-failure without a source address": 20}


def test_a_client_connecting_too_often_is_a_reconnect_storm() -> None:
    monitor = BrokerMonitor(reconnects=WindowThresholds(window_s=60.0, threshold=5))
    connects = [event(T0 + 10 * i, K.CONNECT, "cam-1", address=f"10.0.0.{5 + i % 2}") for i in range(5)]
    (finding,) = monitor.observe(connects)
    assert finding == BrokerFinding(
        BrokerRule.RECONNECT_STORM, Severity.MEDIUM, "cam-1", utc(T0), utc(T0 + 40),
        "client cam-1 connected 5 times within 60 s from 2 address(es) (threshold 5)",
        5, 5, "10.0.0.5", ("10.0.0.5", "10.0.0.6"),
    )  # fmt: skip


def _publishes(client: str, bucket: int, count: int, topic: str = "devices/cam-1/t") -> list[BrokerEvent]:
    start = T0 - T0 % 60 + 60 * bucket
    return [
        event(start + i * 60 / count, K.PUBLISH, client, topic=topic, payload_bytes=10) for i in range(count)
    ]


def test_a_publish_rate_far_above_the_learned_one_is_reported_after_learning() -> None:
    limits = RateThresholds(bucket_s=60.0, learn_buckets=5, min_rate=1.0)
    monitor = BrokerMonitor(rate=limits)
    monitor.observe([event(T0 - T0 % 60, K.CONNECT, "cam-1", address="10.0.0.5")])
    learning = [e for b in range(5) for e in _publishes("cam-1", b, 6)]  # 0.1 messages/s
    assert monitor.observe(learning) == ()
    flood = _publishes("cam-1", 5, 600, "devices/cam-1/dump")  # 10 messages/s
    assert monitor.observe(flood) == ()  # the bucket is still open
    (finding,) = monitor.advance(utc(T0 - T0 % 60 + 60 * 6))
    start = T0 - T0 % 60 + 300
    assert finding == BrokerFinding(
        BrokerRule.MESSAGE_RATE, Severity.HIGH, "cam-1", utc(start), utc(start + 60),
        "client cam-1 published 600 messages (6000 bytes) in 60 s: 10.00/s, 100.0x its learned 0.10/s, "
        "z 198.0 (thresholds 3x, z 4, at least 1/s)",
        10.0, 1.0, "10.0.0.5", ("devices/cam-1/dump",),
    )  # fmt: skip


def test_the_same_flood_during_learning_or_a_small_rise_is_not_reported() -> None:
    limits = RateThresholds(bucket_s=60.0, learn_buckets=5, min_rate=1.0)
    monitor = BrokerMonitor(rate=limits)
    early = [e for b in range(2) for e in _publishes("cam-1", b, 6)] + _publishes("cam-1", 2, 600)
    assert monitor.observe(early) == ()
    steady = BrokerMonitor(rate=limits)
    events = [e for b in range(6) for e in _publishes("cam-2", b, 120)] + _publishes("cam-2", 6, 150)
    assert steady.observe(events) == ()
    assert steady.advance(utc(T0 + 3600)) == ()  # 2.5/s against 2/s: z is floored, ratio 1.25


def test_state_is_bounded_and_evictions_are_counted() -> None:
    monitor = BrokerMonitor(
        failures=WindowThresholds(window_s=300.0, threshold=3, max_keys=2, max_values=4),
        rate=RateThresholds(max_clients=2),
    )
    monitor.observe([event(T0, K.AUTH_FAILURE, address=f"10.0.1.{i}") for i in range(5)])
    monitor.observe([event(T0 + i, K.AUTH_FAILURE, address="10.0.1.4") for i in range(6)])
    monitor.observe([event(T0, K.PUBLISH, f"cam-{i}", topic="t", payload_bytes=1) for i in range(5)])
    assert monitor.tracked == 4
    assert monitor.evicted.counts == {
        "key evicted (max_keys)": 3,
        "value evicted (max_values)": 3,
        "client evicted (max_clients)": 3,
    }


@pytest.mark.parametrize(
    "limits",
    [{"bucket_s": 0.0}, {"alpha": 0.0}, {"alpha": 1.5}, {"learn_buckets": 0}, {"max_clients": 0}],
)
def test_inconsistent_rate_thresholds_are_refused(limits: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="inconsistent thresholds"):
        RateThresholds(**limits)  # type: ignore[arg-type]
