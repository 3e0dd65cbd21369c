"""Issuing from several processes at once, and a process killed in the middle of a batch.

The issuers are real processes (``python -c``) that open the installation the parent created, the way
two API replicas or a CLI batch beside ``fleetguard up`` would. What is checked is what the issue
promises: no serial is ever recorded twice, and every certificate a process returned is recorded,
with its event, even when the process dies with SIGKILL; the database and the event log still verify.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from fleetguard.config import Settings
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.model import DeviceSpec
from fleetguard.store.models import CertificateRow
from fleetguard.types import utc_now

PASSPHRASE = "correct horse battery staple"
PER_PROCESS = 50
_TIMEOUT_S = 120.0

# Shared by both children: open the installation, make one CSR, say "ready", wait for the go file.
_PRELUDE = """
import json, pathlib, random, sys, time
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fleetguard.config import Settings
from fleetguard.installation import Runtime
from fleetguard.pki.profile import new_serial
from fleetguard.pki.service import CertificateService

job = json.loads(sys.argv[1])
runtime = Runtime(Settings(data_dir=pathlib.Path(job["data_dir"]), database_url=job["database_url"]))
csr = (
    x509.CertificateSigningRequestBuilder()
    .subject_name(x509.Name([]))
    .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    .public_bytes(serialization.Encoding.DER)
)
print("ready", flush=True)
go = pathlib.Path(job["go"])
deadline = time.monotonic() + 60
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.005)
"""

# Issue a batch; the serial source is either the real one or one whose every other draw comes from a
# list both children share, so that they collide with each other and the database has to decide.
_ISSUE_BATCH = (
    _PRELUDE
    + """
draws = 0
shared = iter(random.Random(2026).getrandbits(158) | 1 for _ in range(10 * job["count"]))
def colliding():
    global draws
    draws += 1
    return next(shared) if draws % 2 else new_serial()
def counted():
    global draws
    draws += 1
    return new_serial()
service = CertificateService(
    runtime.database, runtime.log, runtime.inventory, runtime.settings,
    runtime.installation.trust_domain, on_commit=runtime.relay.pump,
    serials=colliding if job["collide"] else counted,
)
serials = [
    service.issue_device(job["device"], csr, actor=job["device"]).serial for _ in range(job["count"])
]
print(json.dumps({"serials": serials, "draws": draws}), flush=True)
service.keyring.close()
runtime.close()
"""
)

# Issue until killed, printing each serial once issue_device has returned it.
_ISSUE_UNTIL_KILLED = (
    _PRELUDE
    + """
for _ in range(100_000):
    print(runtime.pki.issue_device(job["device"], csr, actor="batch").serial, flush=True)
"""
)


@pytest.fixture
def installation(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """An installation with a CA and devices cam-0 and cam-1, closed again before the children open it."""
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", PASSPHRASE)
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    initialize(settings, "fleet.example.org", now=utc_now())
    runtime = Runtime(settings)
    try:
        runtime.pki.initialize(actor="ops", now=utc_now())
        for n in range(2):
            runtime.inventory.register(
                DeviceSpec(id=f"cam-{n}", serial=f"SN{n}", manufacturer="Acme"), actor="ops"
            )
    finally:
        runtime.close()
    return settings


def _environment() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLEETGUARD_")}
    env["FLEETGUARD_CA_PASSPHRASE"] = PASSPHRASE
    return env


def _spawn(code: str, settings: Settings, go: Path, **job: object) -> subprocess.Popen[str]:
    arguments = {
        "data_dir": str(settings.data_dir),
        "database_url": settings.database_url,
        "go": str(go),
        **job,
    }
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(arguments)],
        env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _await_ready(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    line = child.stdout.readline()
    if line != "ready\n":
        child.kill()
        _, err = child.communicate(timeout=_TIMEOUT_S)
        pytest.fail(f"child did not start: {line!r} {err}")


def _recorded(runtime: Runtime) -> dict[int, bytes]:
    with runtime.database.reading() as session:
        rows = session.execute(select(CertificateRow.serial, CertificateRow.sha256)).all()
    return {int(serial, 16): bytes(sha256) for serial, sha256 in rows}


def _require_intact(runtime: Runtime) -> None:
    report = runtime.log.verify(runtime.signer().public_key())
    assert report.intact, report.findings[:3]
    if runtime.database.is_sqlite:
        with runtime.database.reading() as session:
            assert session.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"


@pytest.mark.parametrize("collide", [False, True], ids=["random-serials", "colliding-serials"])
def test_two_processes_issuing_at_once_never_record_a_serial_twice(
    installation: Settings, tmp_path: Path, collide: bool
) -> None:
    go = tmp_path / "go"
    children = [
        _spawn(_ISSUE_BATCH, installation, go, device=f"cam-{n}", count=PER_PROCESS, collide=collide)
        for n in range(2)
    ]
    for child in children:
        _await_ready(child)
    go.touch()
    results = []
    for child in children:
        out, err = child.communicate(timeout=_TIMEOUT_S)
        assert child.returncode == 0, err
        results.append(json.loads(out))

    serials = [serial for result in results for serial in result["serials"]]
    assert len(serials) == len(set(serials)) == 2 * PER_PROCESS
    runtime = Runtime(installation)
    try:
        recorded = _recorded(runtime)
        assert set(recorded) == set(serials)
        assert len(runtime.log.entries(action="cert.issued", limit=1000)) == 2 * PER_PROCESS
        with runtime.database.reading() as session:
            assert session.execute(select(func.count()).select_from(CertificateRow)).scalar_one() == 100
        _require_intact(runtime)
    finally:
        runtime.close()
    draws = sum(result["draws"] for result in results)
    if collide:
        # Both children start with the same shared serial: at least one of them lost that race.
        assert draws > 2 * PER_PROCESS
    else:
        assert draws == 2 * PER_PROCESS


def test_kill_9_in_the_middle_of_a_batch_leaves_every_returned_certificate_recorded(
    installation: Settings, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    child = _spawn(_ISSUE_UNTIL_KILLED, installation, go, device="cam-0")
    _await_ready(child)
    go.touch()
    assert child.stdout is not None
    returned = []
    deadline = time.monotonic() + _TIMEOUT_S
    while len(returned) < 40 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        returned.append(int(line))
    os.kill(child.pid, signal.SIGKILL)
    # A line the child finished writing before it died counts too; a partial one was never returned.
    tail, err = child.communicate(timeout=_TIMEOUT_S)
    returned += [int(line) for line in tail.splitlines(keepends=True) if line.endswith("\n")]
    assert child.returncode == -signal.SIGKILL, err
    assert len(returned) >= 40, err

    runtime = Runtime(installation)
    try:
        recorded = _recorded(runtime)
        assert set(returned) <= set(recorded)
        # Every row has its event (one transaction), and nothing half-written is left behind.
        events = runtime.log.entries(action="cert.issued", limit=10_000)
        assert sorted(int(str(event.details()["serial"]), 16) for event in events) == sorted(recorded)
        for serial in returned:
            record = runtime.pki.certificate(serial)
            assert record.sha256 == recorded[serial]
        _require_intact(runtime)
        # The installation is usable at once: no lock or half transaction is left by the dead process.
        runtime.inventory.register(DeviceSpec(id="cam-9", serial="SN9", manufacturer="Acme"), actor="ops")
    finally:
        runtime.close()
