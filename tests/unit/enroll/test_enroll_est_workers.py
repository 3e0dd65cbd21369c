"""EST worker processes take their rate-limit tokens from their parent's buckets, over a pipe.

Threads stand in for the worker processes here: each holds one end of a real ``multiprocessing``
pipe, and the parent's end is served by :func:`serve_limiters` as ``fleetguard up`` serves it.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import pytest

from fleetguard.enroll.est_workers import RemoteLimiter, WorkerChannel, serve_limiters
from fleetguard.pki.renewal import Admission, AdmissionOutcome, RateLimit, RateLimiter

REFUSED = Admission(AdmissionOutcome.FLEET_LIMITED, 1.0)


@dataclass
class Parent:
    """The parent's buckets and what reached it: commits, and messages for its own handler."""

    limiter: RateLimiter = field(
        default_factory=lambda: RateLimiter(
            per_device=RateLimit(rate_per_s=0.001, burst=2), fleet=RateLimit(rate_per_s=0.001, burst=5)
        )
    )
    commits: int = 0
    other: list[tuple[object, ...]] = field(default_factory=list)
    threads: list[tuple[threading.Thread, Connection]] = field(default_factory=list)

    def connect(self) -> WorkerChannel:
        """Return a worker's channel, its parent end served by a thread as fleetguard up serves it."""
        parent_end, worker_end = multiprocessing.Pipe()
        thread = threading.Thread(
            target=serve_limiters,
            args=(parent_end, {"renewal": self.limiter}),
            kwargs={"notify": self._committed, "on_message": self.other.append, "monotonic": lambda: 1000.0},
        )
        thread.start()
        self.threads.append((thread, parent_end))
        return WorkerChannel(worker_end)

    def _committed(self) -> None:
        self.commits += 1


@pytest.fixture
def parent() -> Iterator[Parent]:
    parent = Parent()
    yield parent
    for thread, parent_end in parent.threads:
        thread.join(10)
        assert not thread.is_alive(), "serve_limiters returns when the worker's end is closed"
        parent_end.close()


def test_a_device_burst_is_shared_by_every_worker(parent: Parent) -> None:
    channels = [parent.connect(), parent.connect()]
    first, second = (RemoteLimiter(channel, "renewal") for channel in channels)

    answers = [
        first.try_acquire("cam-1", 0.0),
        second.try_acquire("cam-1", 0.0),
        first.try_acquire("cam-1", 0.0),
    ]

    assert [answer.outcome for answer in answers] == [
        AdmissionOutcome.ADMITTED,
        AdmissionOutcome.ADMITTED,
        AdmissionOutcome.DEVICE_LIMITED,
    ]
    # The parent's buckets run on the parent's clock: one token in 1 / 0.001 s.
    assert answers[2].retry_after_s == pytest.approx(1000.0)
    assert second.try_acquire("cam-2", 0.0).outcome is AdmissionOutcome.ADMITTED
    for channel in channels:
        channel.close()


def test_the_fleet_bucket_is_shared_by_every_worker(parent: Parent) -> None:
    channels = [parent.connect(), parent.connect()]
    workers = [RemoteLimiter(channel, "renewal") for channel in channels]

    outcomes = [workers[n % 2].try_acquire(f"cam-{n}", 0.0).outcome for n in range(6)]

    assert outcomes == [AdmissionOutcome.ADMITTED] * 5 + [AdmissionOutcome.FLEET_LIMITED]
    for channel in channels:
        channel.close()


def test_commits_reach_the_parents_relay_and_other_messages_its_handler(parent: Parent) -> None:
    channel = parent.connect()

    channel.committed()
    channel.send(("ready", 42))
    # Answered after the two messages before it, so both were handled by then.
    RemoteLimiter(channel, "renewal").try_acquire("cam-1", 0.0)

    assert (parent.commits, parent.other) == (1, [("ready", 42)])
    channel.close()


def test_a_limiter_the_parent_does_not_hold_refuses(parent: Parent) -> None:
    channel = parent.connect()

    assert RemoteLimiter(channel, "no-such-limiter").try_acquire("cam-1", 0.0) == REFUSED
    channel.close()


def test_a_worker_whose_parent_is_gone_is_refused_tokens() -> None:
    parent_end, worker_end = multiprocessing.Pipe()
    parent_end.close()
    channel = WorkerChannel(worker_end)

    assert RemoteLimiter(channel, "renewal").try_acquire("cam-1", 0.0) == REFUSED
    channel.committed()  # a lost notice is logged, not raised: the parent's relay wakes by itself
    channel.close()
