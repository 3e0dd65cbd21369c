"""``fleetguard up`` as a child process for integration tests, and the runtime beside it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from waiting import healthy, wait_for

from fleetguard.config import Settings
from fleetguard.installation import Runtime


def fleetguard_command() -> list[str]:
    """The ``fleetguard`` console script of this interpreter's environment."""
    return [str(Path(sys.executable).with_name("fleetguard"))]


@contextlib.contextmanager
def open_runtime(settings: Settings) -> Iterator[Runtime]:
    """A runtime on the same data directory as the server, closed afterwards."""
    runtime = Runtime(settings)
    try:
        yield runtime
    finally:
        runtime.close()


@contextlib.contextmanager
def running_up(env: Mapping[str, str], api_port: int) -> Iterator[subprocess.Popen[str]]:
    """Start ``fleetguard up`` on ``api_port``, wait until it is healthy, and stop it afterwards."""
    server = subprocess.Popen(
        [*fleetguard_command(), "up", "--port", str(api_port)], env=dict(env), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: healthy(f"http://127.0.0.1:{api_port}"), "fleetguard up /healthz", server)
        yield server
    finally:
        server.terminate()
        try:
            server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()
