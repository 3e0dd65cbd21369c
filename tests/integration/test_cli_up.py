"""The real ``fleetguard up``: serves the API with a token from ``fleetguard init``, stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0


def _fleetguard() -> list[str]:
    script = Path(sys.executable).with_name("fleetguard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fleetguard.cli"]


def _environment(data_dir: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLEETGUARD_")}
    env["FLEETGUARD_DATA_DIR"] = str(data_dir)
    return env


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def _wait_until_healthy(base: str, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"fleetguard up exited with {server.returncode}: {server.communicate()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"fleetguard up did not answer /healthz within {_START_TIMEOUT_S} s")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_up_serves_the_api_and_exits_cleanly_on_a_signal(tmp_path: Path, stop_signal: signal.Signals) -> None:
    env = _environment(tmp_path / "data")
    init = subprocess.run(
        [*_fleetguard(), "init", "--trust-domain", "example.org", "--json"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    token = json.loads(init.stdout)["admin_token"]
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [*_fleetguard(), "up", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_until_healthy(base, server)
        authorized = httpx.get(f"{base}/v1/devices", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert authorized.status_code == 200, authorized.text
        assert httpx.get(f"{base}/v1/devices", timeout=5).status_code == 401
        started = time.monotonic()
        server.send_signal(stop_signal)
        out, err = server.communicate(timeout=_STOP_TIMEOUT_S)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, err
    assert time.monotonic() - started < _STOP_TIMEOUT_S
    assert f"{base}/docs" in out
    assert "Traceback" not in err

    report = subprocess.run(
        [*_fleetguard(), "events", "verify", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert report.returncode == 0, report.stdout + report.stderr
    assert json.loads(report.stdout)["checkpoints"] == 1  # signed on the way out
