"""What the integration tests need from the machine, shared by every test module here.

A missing tool or package skips a test with its name, except under CI (``CI`` set), where CI's own
set-up (``scripts/test``) should have installed it, so a missing one is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

__all__ = ["free_port", "require", "tool"]


def require(present: bool, what: str) -> None:
    """Skip the test when ``what`` is not ``present`` (fail under CI)."""
    if not present:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing under CI")
        pytest.skip(f"{what} is not installed")


def tool(name: str) -> str:
    """Return the path of program ``name`` on PATH; skip (fail under CI) when there is none."""
    path = shutil.which(name)
    require(path is not None, name)
    assert path is not None
    return path


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
