"""Waiting for a server the integration tests started, and for what it should do."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import httpx
import pytest

__all__ = ["eventually", "healthy", "wait_for"]


def healthy(api: str) -> bool:
    """Whether ``api``'s /healthz answers 200 now."""
    try:
        return httpx.get(f"{api}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def wait_for(
    check: Callable[[], bool], what: str, server: subprocess.Popen[str], timeout: float = 40
) -> None:
    """Wait until ``check()`` while ``server`` runs; fail with its output if it exits, or on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"fleetguard up exited: {server.communicate()}")
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"{what} did not come up")


def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Wait until ``check()``; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"not within {timeout} s: {what}")
