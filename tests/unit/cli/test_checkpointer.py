"""The background checkpointer of ``fleetguard up``: signs only when the log grew, and on stop."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing

import pytest

from fleetguard.cli.checkpointer import Checkpointer
from fleetguard.cli.context import load_settings
from fleetguard.events.checkpoint import verify_tree_head
from fleetguard.installation import Runtime
from fleetguard.inventory.model import DeviceSpec

from .conftest import Cli


@pytest.fixture
def runtime(cli: Cli, initialized: None) -> Iterator[Runtime]:
    opened = Runtime(load_settings(cli.data_dir, None))
    yield opened
    opened.close()


def _register(runtime: Runtime, serial: str) -> None:
    runtime.inventory.register(DeviceSpec(serial=serial, manufacturer="Acme"), actor="test")


def test_signs_when_the_log_grew_and_not_otherwise(runtime: Runtime) -> None:
    signer = runtime.signer()
    checkpointer = Checkpointer(runtime.log, signer, interval_s=3600)
    first = checkpointer.sign_if_grown()
    assert first is not None
    assert first.head.tree_size == runtime.log.size()
    verify_tree_head(first, signer.public_key())
    assert checkpointer.sign_if_grown() is None
    _register(runtime, "S1")
    second = checkpointer.sign_if_grown()
    assert second is not None
    assert second.head.tree_size == first.head.tree_size + 1


def test_stop_signs_a_last_checkpoint(runtime: Runtime) -> None:
    checkpointer = Checkpointer(runtime.log, runtime.signer(), interval_s=3600)
    checkpointer.start()
    _register(runtime, "S1")
    checkpointer.stop()
    latest = runtime.log.latest_checkpoint()
    assert latest is not None
    assert latest.head.tree_size == runtime.log.size()


def test_the_thread_signs_every_interval(runtime: Runtime) -> None:
    checkpointer = Checkpointer(runtime.log, runtime.signer(), interval_s=0.01)
    checkpointer.start()
    try:
        for _ in range(500):
            if runtime.log.latest_checkpoint() is not None:
                break
            time.sleep(0.01)
    finally:
        checkpointer.stop()
    assert runtime.log.latest_checkpoint() is not None


def test_a_tampered_log_is_logged_not_signed(
    runtime: Runtime, cli: Cli, caplog: pytest.LogCaptureFixture
) -> None:
    with closing(sqlite3.connect(cli.database)) as connection, connection:
        connection.execute("UPDATE event_log SET actor = 'mallory' WHERE seq = 1")
    checkpointer = Checkpointer(runtime.log, runtime.signer(), interval_s=3600)
    checkpointer.stop()
    assert runtime.log.latest_checkpoint() is None
    assert "event log checkpoint failed: event log tampered" in caplog.text
