"""The API served by uvicorn on a loopback port, driven by curl: real HTTP framing, real clients.

Skipped when curl is missing, except under CI, where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from fleetguard.api.app import create_app
from fleetguard.config import Settings
from fleetguard.installation import Runtime, initialize
from fleetguard.types import utc_now

_LIMIT = 64 * 1024
# curl's exit codes for "failed sending data" and "failure receiving": a server that refuses a body
# closes the connection while the client still sends, and the kernel may answer with a reset.
_RESET = frozenset({55, 56})


@dataclass(frozen=True)
class Served:
    url: str
    token: str
    runtime: Runtime
    workdir: Path


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        result: dict[str, object] = json.loads(self.body)
        return result


def _curl_or_skip() -> str:
    curl = shutil.which("curl")
    if curl is None:
        if os.environ.get("CI"):
            pytest.fail("curl is missing under CI")
        pytest.skip("curl is not installed")
    return curl


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The app of a fresh installation, served by uvicorn in a thread on a free loopback port."""
    settings = Settings(data_dir=tmp_path / "data", max_request_bytes=_LIMIT)
    _, token = initialize(settings, "example.org", now=utc_now())
    runtime = Runtime(settings)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(runtime), log_level="warning", ws="none", http="h11", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start in time"
        time.sleep(0.02)
    port = listener.getsockname()[1]
    try:
        yield Served(f"http://127.0.0.1:{port}", token, runtime, tmp_path)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()
        runtime.close()


def _curl(served: Served, path: str, *args: str, token: bool = True, may_reset: bool = False) -> Reply | None:
    """Run curl; return the reply, or None when ``may_reset`` and the server reset the connection."""
    headers_file, body_file = served.workdir / "headers.txt", served.workdir / "body.bin"
    command = [_curl_or_skip(), "--silent", "--show-error", "--max-time", "20"]
    command += ["--dump-header", str(headers_file), "--output", str(body_file), "--write-out", "%{http_code}"]
    if token:
        command += ["--header", f"Authorization: Bearer {served.token}"]
    result = subprocess.run([*command, *args, served.url + path], capture_output=True, text=True, check=False)
    if may_reset and result.returncode in _RESET:
        return None
    assert result.returncode == 0, result.stderr
    return Reply(int(result.stdout), _last_headers(headers_file.read_text()), body_file.read_bytes())


def _reply(served: Served, path: str, *args: str, token: bool = True) -> Reply:
    reply = _curl(served, path, *args, token=token)
    assert reply is not None
    return reply


def _last_headers(text: str) -> dict[str, str]:
    # After "100 Continue", curl dumps two header blocks; the final response's is the last.
    block = text.strip().split("\r\n\r\n")[-1]
    pairs = (line.split(":", 1) for line in block.splitlines()[1:] if ":" in line)
    return {name.strip().lower(): value.strip() for name, value in pairs}


def test_create_and_get_a_device(served: Served) -> None:
    body = json.dumps({"id": "cam-1", "serial": "SN1", "manufacturer": "acme"})
    created = _reply(served, "/v1/devices", "--header", "Content-Type: application/json", "--data", body)
    assert created.status == 201, created.body
    assert created.headers["location"] == "/v1/devices/cam-1"
    fetched = _reply(served, "/v1/devices/cam-1")
    assert fetched.status == 200
    assert fetched.headers["etag"] == '"1"'
    assert fetched.json()["serial"] == "SN1"


def test_without_a_token_is_401_problem(served: Served) -> None:
    reply = _reply(served, "/v1/devices", token=False)
    assert reply.status == 401
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert reply.json()["type"] == "https://fleetguard.dev/problems/unauthenticated"


def test_oversize_upload_is_413(served: Served) -> None:
    big = served.workdir / "big.json"
    big.write_bytes(b'{"serial": "1", "manufacturer": "acme", "owner": "' + b"x" * (2 * _LIMIT) + b'"}')
    # With Expect: 100-continue (RFC 9110 10.1.1) curl waits for the server, which refuses at once on
    # the declared length: not one byte of the body is sent.
    reply = _reply(
        served,
        "/v1/devices",
        "--header", "Content-Type: application/json",
        "--header", "Expect: 100-continue",
        "--data-binary", f"@{big}",
    )  # fmt: skip
    assert reply.status == 413
    assert reply.json()["type"] == "https://fleetguard.dev/problems/body-too-large"
    assert served.runtime.inventory.count() == 0


def test_csv_upload_imports(served: Served) -> None:
    rows = served.workdir / "devices.csv"
    rows.write_text("id,serial,manufacturer\n" + "".join(f"d{n},S{n},acme\n" for n in range(50)))
    reply = _reply(
        served, "/v1/devices/import", "--header", "Content-Type: text/csv", "--data-binary", f"@{rows}"
    )
    assert (reply.status, reply.json()) == (200, {"imported": 50})


def test_health_metrics_and_openapi_are_served(served: Served) -> None:
    assert _reply(served, "/healthz", token=False).json() == {"status": "ok"}
    assert b"fleetguard_devices" in _reply(served, "/metrics", token=False).body
    assert _reply(served, "/openapi.json", token=False).json()["info"]["title"] == "fleetguard"


def test_oversize_chunked_upload_is_413(served: Served) -> None:
    big = served.workdir / "big.json"
    big.write_bytes(b'{"serial": "1", "manufacturer": "acme", "owner": "' + b"x" * (32 * _LIMIT) + b'"}')
    reply = _curl(
        served,
        "/v1/devices",
        "--header", "Content-Type: application/json",
        "--header", "Transfer-Encoding: chunked",
        "--data-binary", f"@{big}",
        may_reset=True,
    )  # fmt: skip
    if reply is not None:
        assert reply.status == 413
        assert reply.json()["type"] == "https://fleetguard.dev/problems/body-too-large"
    assert served.runtime.inventory.count() == 0
