"""The real ``fleetguard up``: serves the API with a token from ``fleetguard init``, stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prerequisites import free_port

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0


def _fleetguard() -> list[str]:
    script = Path(sys.executable).with_name("fleetguard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fleetguard.cli"]


def _environment(data_dir: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLEETGUARD_")}
    env["FLEETGUARD_DATA_DIR"] = str(data_dir)
    return env


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
    port = free_port()
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


def test_up_serves_est_with_its_own_server_certificate_once_the_ca_exists(tmp_path: Path) -> None:
    env = {**_environment(tmp_path / "data"), "FLEETGUARD_CA_PASSPHRASE": "up-est-test"}
    for command in (["init", "--trust-domain", "example.org"], ["ca", "init"]):
        subprocess.run([*_fleetguard(), *command], env=env, capture_output=True, check=True, timeout=60)
    bundle = tmp_path / "bundle.pem"
    subprocess.run([*_fleetguard(), "ca", "export", str(bundle)], env=env, check=True, timeout=60)
    port, est_port = free_port(), free_port()
    env["FLEETGUARD_EST_PORT"] = str(est_port)
    server = subprocess.Popen(
        [*_fleetguard(), "up", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_until_healthy(f"http://127.0.0.1:{port}", server)
        # The EST server's certificate chains to the installation's root: a client that trusts only
        # the exported bundle verifies it (httpx uses the bundle as its only trust anchors here).
        trust = ssl.create_default_context(cafile=str(bundle))
        response = httpx.get(f"https://127.0.0.1:{est_port}/.well-known/est/cacerts", verify=trust)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/pkcs7-mime")
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=_STOP_TIMEOUT_S)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, err
    assert f"https://127.0.0.1:{est_port}/.well-known/est/" in out
    assert (tmp_path / "data" / "pki" / "servers" / "est.key.pem").stat().st_mode & 0o777 == 0o600
