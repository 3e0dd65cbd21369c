"""One contract for the event bus, run against the in-process bus and against NATS JetStream.

The NATS runs start Debian's ``nats-server`` once for this module (``nats_url``) and are skipped with
a reason when it is not installed, unless ``CI`` is set: there a missing server fails the run. The
NATS stream is shared by the tests of the module, so each test publishes under its own subject
token (``ns``) and uses its own durable names; sequences are compared relative to the test's own
publishes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.events.bus import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Delivery,
    EventBus,
    Subscription,
    device_id_from_token,
    device_partition,
    device_subject,
    device_token,
    open_bus,
    require_filter,
    subject_matches,
    system_subject,
)
from fleetguard.events.bus_memory import MemoryBus
from fleetguard.events.bus_nats import NatsBus
from fleetguard.events.errors import BusError, BusInputRejected

# ---------------------------------------------------------------------------------------------------
# A throwaway nats-server for this module (move to tests/conftest.py if other modules need it).

_NATS_SERVER_PATHS = ("/usr/bin/nats-server", "/usr/sbin/nats-server")
_SERVER_START_TIMEOUT_S = 10.0


def _nats_server_binary() -> str | None:
    found = shutil.which("nats-server")
    if found is not None:
        return found
    return next((path for path in _NATS_SERVER_PATHS if Path(path).is_file()), None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_accepting(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"nats-server exited with {server.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nats-server did not accept on port {port}: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def running_nats_server(binary: str, data_dir: Path) -> Iterator[str]:
    """Run ``nats-server -js`` on a free loopback port with its store under ``data_dir``; yield its URL."""
    port = _free_port()
    log = data_dir / "nats-server.log"
    command = [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(data_dir / "jetstream")]
    with (
        log.open("wb") as output,
        subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT) as server,
    ):
        try:
            _wait_until_accepting(port, server, log)
            yield f"nats://127.0.0.1:{port}"
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _nats_server_binary()
    if binary is None:
        reason = "nats-server is not installed (apt-get install nats-server)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the NATS JetStream contract tests")
        pytest.skip(f"{reason}; NATS JetStream contract tests skipped")
    with running_nats_server(binary, tmp_path_factory.mktemp("nats")) as url:
        yield url


@pytest.fixture(params=["memory", pytest.param("nats", marks=pytest.mark.nats)])
def bus(request: pytest.FixtureRequest) -> Iterator[EventBus]:
    if request.param == "memory":
        opened = open_bus("memory://")
    else:
        opened = open_bus(request.getfixturevalue("nats_url"))
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def ns() -> str:
    """A subject token and durable prefix of this test alone."""
    return f"t{uuid.uuid4().hex[:12]}"


def _collect(subscription: Subscription, count: int, timeout_s: float = 3.0) -> list[Delivery]:
    """Fetch until ``count`` deliveries arrived or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    deliveries: list[Delivery] = []
    while len(deliveries) < count and (remaining := deadline - time.monotonic()) > 0:
        deliveries += subscription.fetch(count - len(deliveries), remaining)
    return deliveries


def _seen(deliveries: list[Delivery]) -> list[tuple[str, bytes, int]]:
    return [(d.subject, d.payload, d.num_delivered) for d in deliveries]


# ---------------------------------------------------------------------------------------------------
# Delivery semantics


def test_round_trip_keeps_subjects_payloads_sequences_and_order(bus: EventBus, ns: str) -> None:
    published = [
        (f"fleetguard.sys.{ns}.a", b"first"),
        (f"fleetguard.sys.{ns}.b", b""),
        (f"fleetguard.sys.{ns}.a", bytes(range(256))),
    ]
    sequences = [bus.publish(subject, payload) for subject, payload in published]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == 3

    subscription = bus.subscribe(f"fleetguard.sys.{ns}.*", f"{ns}-reader")
    deliveries = _collect(subscription, 3)

    assert [(d.subject, d.payload) for d in deliveries] == published
    assert [d.sequence for d in deliveries] == sequences
    assert [d.num_delivered for d in deliveries] == [1, 1, 1]
    for delivery in deliveries:
        delivery.ack()
    assert subscription.fetch(10, 0.2) == []


def test_concurrent_publishers_get_distinct_consecutive_sequences(bus: EventBus, ns: str) -> None:
    sequences: list[int] = []
    lock = threading.Lock()

    def publish_many(worker: int) -> None:
        for index in range(25):
            sequence = bus.publish(f"fleetguard.sys.{ns}.w{worker}", str(index).encode())
            with lock:
                sequences.append(sequence)

    workers = [threading.Thread(target=publish_many, args=(worker,)) for worker in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert sorted(sequences) == list(range(min(sequences), min(sequences) + 100))
    deliveries = _collect(bus.subscribe(f"fleetguard.sys.{ns}.*", f"{ns}-all"), 100)
    assert [d.sequence for d in deliveries] == sorted(sequences)


def test_messages_before_and_after_the_first_subscribe_are_delivered(bus: EventBus, ns: str) -> None:
    subject = f"fleetguard.sys.{ns}.event"
    bus.publish(subject, b"before")
    subscription = bus.subscribe(subject, f"{ns}-late")
    bus.publish(subject, b"after")

    assert [d.payload for d in _collect(subscription, 2)] == [b"before", b"after"]


def test_fetch_waits_for_a_message_published_meanwhile(bus: EventBus, ns: str) -> None:
    subject = f"fleetguard.sys.{ns}.event"
    subscription = bus.subscribe(subject, f"{ns}-waiter")
    publisher = threading.Timer(0.2, bus.publish, args=(subject, b"late"))
    started = time.monotonic()
    publisher.start()
    try:
        deliveries = subscription.fetch(10, 5.0)
    finally:
        publisher.join()

    assert [d.payload for d in deliveries] == [b"late"]
    assert time.monotonic() - started < 4.0


def test_fetch_returns_empty_after_timeout(bus: EventBus, ns: str) -> None:
    subscription = bus.subscribe(f"fleetguard.sys.{ns}.>", f"{ns}-idle")
    started = time.monotonic()

    assert subscription.fetch(10, 0.3) == []
    assert 0.25 <= time.monotonic() - started < 2.0


def test_unacked_message_is_redelivered_after_ack_wait(bus: EventBus, ns: str) -> None:
    subject = f"fleetguard.sys.{ns}.event"
    sequence = bus.publish(subject, b"payload")
    subscription = bus.subscribe(subject, f"{ns}-slow", ack_wait_s=0.3)

    (first,) = _collect(subscription, 1)
    assert (first.sequence, first.num_delivered) == (sequence, 1)
    (again,) = _collect(subscription, 1)  # not acknowledged: it comes back after 0.3 s

    assert (again.sequence, again.payload, again.num_delivered) == (sequence, b"payload", 2)
    again.ack()
    assert subscription.fetch(10, 0.5) == []


def test_resubscribing_resumes_after_the_acknowledged_messages(bus: EventBus, ns: str) -> None:
    subject = f"fleetguard.sys.{ns}.event"
    for payload in (b"m1", b"m2", b"m3"):
        bus.publish(subject, payload)
    subscription = bus.subscribe(subject, f"{ns}-worker", ack_wait_s=0.3)
    m1, m2, _unacked = _collect(subscription, 3)
    m1.ack()
    m2.ack()
    subscription.close()
    bus.publish(subject, b"m4")

    resumed = bus.subscribe(subject, f"{ns}-worker", ack_wait_s=0.3)
    deliveries = _collect(resumed, 2)

    assert sorted(_seen(deliveries)) == [(subject, b"m3", 2), (subject, b"m4", 1)]
    for delivery in deliveries:
        delivery.ack()
    assert resumed.fetch(10, 0.5) == []


def test_acknowledging_twice_is_harmless(bus: EventBus, ns: str) -> None:
    subject = f"fleetguard.sys.{ns}.event"
    bus.publish(subject, b"once")
    subscription = bus.subscribe(subject, f"{ns}-twice", ack_wait_s=0.2)
    (delivery,) = _collect(subscription, 1)

    delivery.ack()
    delivery.ack()

    assert subscription.fetch(10, 0.4) == []


def test_two_durables_each_get_every_message(bus: EventBus, ns: str) -> None:
    subject_filter = f"fleetguard.sys.{ns}.>"
    payloads = [f"event-{index}".encode() for index in range(5)]
    for payload in payloads:
        bus.publish(f"fleetguard.sys.{ns}.event", payload)
    audit = bus.subscribe(subject_filter, f"{ns}-audit")
    gateway = bus.subscribe(subject_filter, f"{ns}-gateway")

    audit_seen = _collect(audit, 5)
    for delivery in audit_seen:
        delivery.ack()
    gateway_seen = _collect(gateway, 5)

    assert [d.payload for d in audit_seen] == payloads
    assert [d.payload for d in gateway_seen] == payloads


def test_a_durable_keeps_its_filter(bus: EventBus, ns: str) -> None:
    bus.subscribe(f"fleetguard.sys.{ns}.a", f"{ns}-fixed").close()

    with pytest.raises(BusInputRejected, match="exists with filter"):
        bus.subscribe(f"fleetguard.sys.{ns}.b", f"{ns}-fixed")


def test_wildcard_filters_match_exactly_the_intended_subjects(bus: EventBus, ns: str) -> None:
    device, other = f"{ns}/sensor 1", f"{ns}/sensor 2"
    revoked = device_subject(device, "cert.revoked", 16)
    quarantined = device_subject(device, "quarantined", 16)
    other_quarantined = device_subject(other, "quarantined", 16)
    rollout = f"fleetguard.sys.{ns}.rollout"
    paused = f"fleetguard.sys.{ns}.rollout.paused"
    for subject in (revoked, quarantined, other_quarantined, rollout, paused):
        bus.publish(subject, subject.encode())
    token = device_token(device)
    expected = {
        f"fleetguard.dev.*.{token}.>": [revoked, quarantined],
        f"fleetguard.dev.*.{token}.*": [quarantined],
        f"fleetguard.dev.*.{device_token(other)}.quarantined": [other_quarantined],
        revoked: [revoked],
        f"fleetguard.sys.{ns}.*": [rollout],
        f"fleetguard.sys.{ns}.>": [rollout, paused],
        f"fleetguard.sys.{ns}.*.paused": [paused],
        f"fleetguard.sys.{ns}.rollout.>": [paused],
    }

    for index, (subject_filter, subjects) in enumerate(expected.items()):
        subscription = bus.subscribe(subject_filter, f"{ns}-filter-{index}")
        deliveries = _collect(subscription, len(subjects))
        deliveries += subscription.fetch(10, 0.05)
        assert [d.subject for d in deliveries] == subjects, subject_filter
        assert [d.payload for d in deliveries] == [s.encode() for s in subjects]


def test_largest_payload_round_trips(bus: EventBus, ns: str) -> None:
    subject = f"fleetguard.sys.{ns}.blob"
    payload = os.urandom(DEFAULT_MAX_PAYLOAD_BYTES)
    bus.publish(subject, payload)

    (delivery,) = _collect(bus.subscribe(subject, f"{ns}-blob"), 1)

    assert delivery.payload == payload


# ---------------------------------------------------------------------------------------------------
# Rejected input: the exact error, and the stream unchanged


@pytest.mark.parametrize(
    "subject",
    [
        "",
        "fleetguard",
        "fleetguard.",
        "fleetguard..x",
        ".fleetguard.x",
        "fleetguard.a b",
        "fleetguard.a\tb",
        "fleetguard.a\nb",
        "other.x",
        "fleetguard.*",
        "fleetguard.>",
        "fleetguard.a*",
        "fleetguard.a>",
        "fleetguard.caf\u00e9",
        "fleetguard." + "a" * 246,
    ],
)
def test_publishing_to_an_invalid_subject_is_rejected(bus: EventBus, ns: str, subject: str) -> None:
    before = bus.publish(f"fleetguard.sys.{ns}.ok", b"")

    with pytest.raises(BusInputRejected, match="subject"):
        bus.publish(subject, b"payload")

    assert bus.publish(f"fleetguard.sys.{ns}.ok", b"") == before + 1


def test_longest_subject_is_accepted(bus: EventBus) -> None:
    subject = "fleetguard." + "a" * 245

    assert len(subject) == 256
    assert bus.publish(subject, b"") >= 1


def test_oversize_payload_is_rejected(bus: EventBus, ns: str) -> None:
    subject = f"fleetguard.sys.{ns}.blob"
    before = bus.publish(subject, b"")

    with pytest.raises(BusInputRejected, match=r"payload of 1048577 bytes exceeds the limit of 1048576"):
        bus.publish(subject, bytes(DEFAULT_MAX_PAYLOAD_BYTES + 1))

    assert bus.publish(subject, b"") == before + 1


def test_text_payload_is_rejected(bus: EventBus, ns: str) -> None:
    with pytest.raises(BusInputRejected, match="payload must be bytes, not str"):
        bus.publish(f"fleetguard.sys.{ns}.x", cast(bytes, "text"))


@pytest.mark.parametrize(
    "subject_filter",
    [
        ">",
        "*.x",
        "other.>",
        "fleetguard",
        "fleetguard.>.x",
        "fleetguard.a>",
        "fleetguard.**",
        "fleetguard..>",
    ],
)
def test_subscribing_with_an_invalid_filter_is_rejected(bus: EventBus, ns: str, subject_filter: str) -> None:
    with pytest.raises(BusInputRejected, match=r"subject|filter"):
        bus.subscribe(subject_filter, f"{ns}-bad")


@pytest.mark.parametrize("durable", ["", "a.b", "a b", "a*", "a>", "x" * 65, "caf\u00e9"])
def test_subscribing_with_an_invalid_durable_name_is_rejected(bus: EventBus, durable: str) -> None:
    with pytest.raises(BusInputRejected, match="invalid durable name"):
        bus.subscribe("fleetguard.sys.>", durable)


@pytest.mark.parametrize("ack_wait_s", [0.0, -1.0, 86_401.0])
def test_subscribing_with_an_out_of_range_ack_wait_is_rejected(
    bus: EventBus, ns: str, ack_wait_s: float
) -> None:
    with pytest.raises(BusInputRejected, match="ack_wait_s"):
        bus.subscribe("fleetguard.sys.>", f"{ns}-bad", ack_wait_s=ack_wait_s)


@pytest.mark.parametrize(
    ("max_messages", "timeout_s", "message"),
    [(0, 1.0, "max_messages"), (1001, 1.0, "max_messages"), (1, 0.0, "timeout_s"), (1, 301.0, "timeout_s")],
)
def test_fetching_with_out_of_range_bounds_is_rejected(
    bus: EventBus, ns: str, max_messages: int, timeout_s: float, message: str
) -> None:
    subscription = bus.subscribe(f"fleetguard.sys.{ns}.>", f"{ns}-bounds")

    with pytest.raises(BusInputRejected, match=message):
        subscription.fetch(max_messages, timeout_s)


def test_closed_bus_and_subscription_refuse_to_work(bus: EventBus, ns: str) -> None:
    subject = f"fleetguard.sys.{ns}.event"
    bus.publish(subject, b"x")
    subscription = bus.subscribe(subject, f"{ns}-closing")
    (delivery,) = _collect(subscription, 1)
    subscription.close()
    subscription.close()

    with pytest.raises(BusError, match="subscription is closed"):
        subscription.fetch(1, 0.1)
    bus.close()
    bus.close()
    with pytest.raises(BusError, match="bus is closed"):
        bus.publish(subject, b"y")
    with pytest.raises(BusError, match="bus is closed"):
        bus.subscribe(subject, f"{ns}-closing")
    with pytest.raises(BusError, match="bus is closed"):
        delivery.ack()


# ---------------------------------------------------------------------------------------------------
# Opening a bus


@pytest.mark.parametrize("url", ["", "memory", "memory://x", "memory:///x", "redis://localhost", "nats://"])
def test_unsupported_bus_url_is_rejected(url: str) -> None:
    with pytest.raises(BusInputRejected, match="unsupported event bus URL"):
        open_bus(url)


def test_memory_url_opens_the_in_process_bus() -> None:
    opened = open_bus("memory://")
    try:
        assert isinstance(opened, MemoryBus)
    finally:
        opened.close()


def test_unreachable_nats_server_raises_bus_error() -> None:
    url = f"nats://127.0.0.1:{_free_port()}"

    with pytest.raises(BusError, match=r"cannot reach NATS at 127\.0\.0\.1:\d+ within 0\.5 s"):
        NatsBus.connect(url, timeout_s=0.5)


# ---------------------------------------------------------------------------------------------------
# The in-process bus's own bounds


def test_memory_stream_drops_the_oldest_messages_beyond_its_bound() -> None:
    bus = MemoryBus(max_messages=2)
    try:
        for payload in (b"m1", b"m2", b"m3"):
            bus.publish("fleetguard.sys.x", payload)
        deliveries = bus.subscribe("fleetguard.sys.x", "reader").fetch(10, 0.1)
    finally:
        bus.close()

    assert [(d.sequence, d.payload) for d in deliveries] == [(2, b"m2"), (3, b"m3")]


def test_memory_stream_drops_the_oldest_messages_beyond_its_byte_bound() -> None:
    bus = MemoryBus(max_bytes=5)
    try:
        for payload in (b"aaa", b"bbb", b"cc"):
            bus.publish("fleetguard.sys.x", payload)
        deliveries = bus.subscribe("fleetguard.sys.x", "reader").fetch(10, 0.1)
    finally:
        bus.close()

    assert [d.payload for d in deliveries] == [b"bbb", b"cc"]


def test_memory_consumer_stops_at_max_ack_pending_until_acknowledged() -> None:
    bus = MemoryBus(max_ack_pending=2)
    try:
        for payload in (b"m1", b"m2", b"m3"):
            bus.publish("fleetguard.sys.x", payload)
        subscription = bus.subscribe("fleetguard.sys.x", "reader")
        first = subscription.fetch(10, 0.1)
        blocked = subscription.fetch(10, 0.1)
        first[0].ack()
        rest = subscription.fetch(10, 0.1)
    finally:
        bus.close()

    assert [d.payload for d in first] == [b"m1", b"m2"]
    assert blocked == []
    assert [d.payload for d in rest] == [b"m3"]


def test_memory_bus_rejects_non_positive_bounds() -> None:
    with pytest.raises(BusInputRejected, match="must be positive"):
        MemoryBus(max_messages=0)


# ---------------------------------------------------------------------------------------------------
# Subjects: the pure part


def test_device_subject_is_pinned() -> None:
    # Workers shard by these values; changing them moves every device to another partition.
    assert device_subject("sensor-0001", "quarantined", 16) == "fleetguard.dev.6.sensor-0001.quarantined"
    assert device_subject("ACME/SN 42~x", "cert.revoked", 1024) == (
        "fleetguard.dev.449.ACME~2fSN~2042~7ex.cert.revoked"
    )
    digest = hashlib.sha256(b"sensor-0001").digest()
    assert device_partition("sensor-0001", 16) == int.from_bytes(digest[:4], "big") % 16


def test_system_subject() -> None:
    assert system_subject("rollout.paused") == "fleetguard.sys.rollout.paused"


@pytest.mark.parametrize("action", ["", "a b", "a..b", "*", ">", "a.>"])
def test_invalid_actions_are_rejected(action: str) -> None:
    with pytest.raises(BusInputRejected, match="subject"):
        system_subject(action)
    with pytest.raises(BusInputRejected, match="subject"):
        device_subject("sensor-0001", action, 16)


@pytest.mark.parametrize("partitions", [0, -1, 65_537])
def test_partition_count_out_of_range_is_rejected(partitions: int) -> None:
    with pytest.raises(BusInputRejected, match="partitions"):
        device_subject("sensor-0001", "quarantined", partitions)


def test_empty_and_overlong_device_ids_are_rejected() -> None:
    with pytest.raises(BusInputRejected, match="device id is empty"):
        device_subject("", "quarantined", 16)
    with pytest.raises(BusInputRejected, match="subject length"):
        device_subject("/" * 80, "quarantined", 16)
    with pytest.raises(BusInputRejected, match="not valid Unicode"):
        device_token("\ud800")


@given(st.text(min_size=1, max_size=64), st.integers(min_value=1, max_value=1024))
def test_partition_is_stable_and_in_range(device_id: str, partitions: int) -> None:
    partition = device_partition(device_id, partitions)

    assert 0 <= partition < partitions
    assert partition == device_partition(device_id, partitions)


@given(st.text(min_size=1, max_size=64))
def test_device_token_is_a_reversible_subject_token(device_id: str) -> None:
    token = device_token(device_id)

    assert device_id_from_token(token) == device_id
    assert re.fullmatch(r"[A-Za-z0-9_~-]+", token)


@given(st.text(min_size=1, max_size=16), st.text(min_size=1, max_size=16))
def test_device_token_is_injective(first: str, second: str) -> None:
    if first != second:
        assert device_token(first) != device_token(second)


def test_device_token_escapes_every_unsafe_byte() -> None:
    assert device_token("Dev_1-a") == "Dev_1-a"
    assert device_token("dev 1/\u00e4~") == "dev~201~2f~c3~a4~7e"


@pytest.mark.parametrize("token", ["", "~7E", "~2", "a~zz", "~41", "a.b", "~c3", "~+1a", "\u00e4"])
def test_non_canonical_device_tokens_are_rejected(token: str) -> None:
    with pytest.raises(BusInputRejected, match="device token"):
        device_id_from_token(token)


@pytest.mark.parametrize(
    ("subject_filter", "subject", "matches"),
    [
        ("fleetguard.sys.a", "fleetguard.sys.a", True),
        ("fleetguard.sys.a", "fleetguard.sys.a.b", False),
        ("fleetguard.sys.*", "fleetguard.sys.a", True),
        ("fleetguard.sys.*", "fleetguard.sys.a.b", False),
        ("fleetguard.sys.>", "fleetguard.sys.a.b", True),
        ("fleetguard.sys.>", "fleetguard.sys", False),
        ("fleetguard.*.a", "fleetguard.sys.a", True),
        ("fleetguard.*.a", "fleetguard.dev.b", False),
        ("fleetguard.>", "fleetguard.dev.1.x.y", True),
    ],
)
def test_subject_matches_follows_nats_wildcards(subject_filter: str, subject: str, matches: bool) -> None:
    assert subject_matches(require_filter(subject_filter), tuple(subject.split("."))) is matches
