"""Signed OTA end to end: ``fleetguard up`` serves the repositories and the device desk; the agent updates.

Real parts only: ``fleetguard up`` (SQLite, its EST/mTLS endpoint serving the OTA device routes, the
OTA scheduler), the image repository and director on disk signed with Ed25519 role keys, squashfs
images built with ``mksquashfs`` and passed by the firmware gate, device certificates from the
installation's CA, and the agent's update client (python-tuf's ngclient over mutual TLS, A/B slot
files, a health-check command). curl is the client that checks the endpoint refuses devices without
an operational certificate.

Covers: a device outside any campaign checks in with one small request and gets nothing; after an
operator creates, approves (signs the scope) and starts a campaign, a device downloads (a delta from
the release it runs), installs, reboots into the new slot, passes its health check and commits, and
the server counts it, records its firmware and marks it current in the compliance report; a device
whose health check fails rolls back to the old slot, and the campaign pauses on its error threshold;
a quarantined device is offered nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prerequisites import free_port
from up_process import fleetguard_command, open_runtime, running_up
from waiting import eventually

from firmware_images import small_squashfs
from fleetguard.agent.ota_fetcher import HttpsFetcher
from fleetguard.agent.slots import CommandHealthCheck, SlotStore
from fleetguard.agent.transport import TlsClientKey, TlsKeyKind
from fleetguard.agent.updater import UpdateClient, UpdateResult, http_reporter
from fleetguard.config import Settings
from fleetguard.installation import Runtime
from fleetguard.inventory.lifecycle import Action as Lifecycle
from fleetguard.inventory.model import DeviceSpec
from fleetguard.ota.compliance import Posture, compliance_report
from fleetguard.ota.keys import generate_key_file, load_signer
from fleetguard.ota.policy import default_policy
from fleetguard.ota.repository import RoleKeys
from fleetguard.ota.rollout import CampaignAction, CampaignState, DeviceStep
from fleetguard.pki.ca import ChainFormat
from fleetguard.types import utc_now

PEM = serialization.Encoding.PEM
HARDWARE = "cam-x"
DEVICES = ("dev-1", "dev-2", "dev-3", "dev-4")
APP = bytes(range(256)) * 256  # 64 KiB that both releases share: the delta is much smaller than the image

pytestmark = pytest.mark.skipif(
    shutil.which("mksquashfs") is None and not os.environ.get("CI"), reason="needs mksquashfs"
)


@dataclass
class Fleet:
    settings: Settings
    files: Path
    est_port: int
    release_key: Path

    def client(self, device_id: str, health: list[str]) -> UpdateClient:
        """The update client of ``device_id``, its slots holding release 1.0."""
        state = self.files / f"{device_id}-state"
        slots = SlotStore.initialize(state / "slots", self.files / "1.0.sqfs", "1.0", 1)
        fetcher = HttpsFetcher.with_client_certificate(
            f"https://127.0.0.1:{self.est_port}", trust_anchors=self.files / "ca.pem",
            certificate=self.files / f"{device_id}.pem",
            key=TlsClientKey(TlsKeyKind.FILE, str(self.files / f"{device_id}.key")),
        )  # fmt: skip
        client = UpdateClient(
            state / "ota", device_id=device_id, hardware_id=HARDWARE, slots=slots,
            health=CommandHealthCheck(health, timeout_s=10), fetcher=fetcher,
            base_url=f"https://127.0.0.1:{self.est_port}", report=http_reporter(fetcher), now=utc_now,
        )  # fmt: skip
        ota = self.settings.data_dir / "ota"
        client.bootstrap(
            (ota / "director" / "metadata" / "1.root.json").read_bytes(),
            (ota / "image" / "metadata" / "1.root.json").read_bytes(),
        )
        return client

    def campaign(self, *, error_ppm: int) -> str:
        """Create, approve (sign the scope) and start a one-wave campaign of release 2.0."""
        signer = load_signer(self.release_key)
        with open_runtime(self.settings) as runtime:
            policy = default_policy(waves=(("all", 1_000_000),), error_ppm=error_ppm, max_retries=0)
            created = runtime.campaigns.create(hardware_id=HARDWARE, release="2.0", policy=policy, actor="t")
            approved = runtime.campaigns.approve(created.id, [signer], actor="t")
            assert approved.state is CampaignState.APPROVED, approved.reason
            runtime.campaigns.act(created.id, CampaignAction.START, actor="t")
        return created.id

    def step(self, campaign_id: str, device_id: str) -> DeviceStep:
        with open_runtime(self.settings) as runtime:
            progress = {p.device_id: p for p in runtime.campaigns.devices(campaign_id)}
        return progress[device_id].step

    def state(self, campaign_id: str) -> CampaignState:
        with open_runtime(self.settings) as runtime:
            return runtime.campaigns.get(campaign_id).state


def _issue(runtime: Runtime, files: Path, device_id: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    record = runtime.pki.issue_device(
        device_id, csr.public_bytes(serialization.Encoding.DER), actor="factory"
    )
    (files / f"{device_id}.pem").write_bytes(record.pem())
    (files / f"{device_id}.key").write_bytes(
        key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _repositories(runtime: Runtime, keys: Path) -> Path:
    signers = {}
    for name in ("root", "targets", "director", "release"):
        generate_key_file(keys / f"{name}.pem")
        signers[name] = load_signer(keys / f"{name}.pem")

    def one(name: str) -> RoleKeys:
        return RoleKeys((signers[name].public_key,), 1)

    runtime.ota.initialize(
        image_root=one("root"), image_targets=one("targets"), director_root=one("director"),
        image_root_signers=[signers["root"]], image_targets_signers=[signers["targets"]],
        director_root_signers=[signers["director"]],
    )  # fmt: skip
    runtime.ota.add_hardware(HARDWARE, one("release"), [signers["targets"]])
    return keys / "release.pem"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    data = tmp_path / "data"
    api_port, est_port = free_port(), free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLEETGUARD_")}
    env.update(
        FLEETGUARD_DATA_DIR=str(data), FLEETGUARD_CA_PASSPHRASE="ota test", FLEETGUARD_EST_HOST="127.0.0.1",
        FLEETGUARD_EST_PORT=str(est_port), FLEETGUARD_MQTT_PORT="0", FLEETGUARD_OTA_EVALUATE_S="0.2",
    )  # fmt: skip
    subprocess.run(
        [*fleetguard_command(), "init", "--trust-domain", "example.org", "--json"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    subprocess.run(
        [*fleetguard_command(), "ca", "init"], env=env, capture_output=True, check=True, timeout=60
    )
    files = tmp_path / "devices"
    (files / "keys").mkdir(parents=True)
    os.environ["FLEETGUARD_CA_PASSPHRASE"] = "ota test"
    settings = Settings(data_dir=data)
    with open_runtime(settings) as runtime:
        (files / "ca.pem").write_bytes(runtime.pki.trust_bundle(ChainFormat.PEM))
        release_key = _repositories(runtime, files / "keys")
        for name in ("1.0", "2.0"):
            image = small_squashfs(files / f"{name}.sqfs", {"/etc/version": name.encode(), "/bin/app": APP})
            runtime.releases.publish(
                image, hardware_ids=[HARDWARE], release=name, counter=int(float(name)),
                signers=[load_signer(release_key)], actor="t", scan=True,
            )  # fmt: skip
        for device_id in DEVICES:
            spec = DeviceSpec(id=device_id, serial=device_id, manufacturer="Acme", model=HARDWARE,
                              firmware_version="1.0")  # fmt: skip
            runtime.inventory.register(spec, actor="t")
            _issue(runtime, files, device_id)
            runtime.inventory.transition(device_id, Lifecycle.PROVISION, actor="t")
            runtime.inventory.transition(device_id, Lifecycle.ACTIVATE, actor="t")
    try:
        with running_up(env, api_port):
            yield Fleet(settings, files, est_port, release_key)
    finally:
        os.environ.pop("FLEETGUARD_CA_PASSPHRASE", None)


def test_a_device_updates_through_a_campaign_and_a_failing_one_rolls_back_and_pauses_it(fleet: Fleet) -> None:
    healthy_device = fleet.client("dev-1", ["true"])
    outcome = healthy_device.update_once()
    assert outcome.result is UpdateResult.NO_UPDATE  # no campaign: one check-in, nothing else
    assert outcome.director_version == 0

    campaign = fleet.campaign(error_ppm=250_000)  # one of the four devices failing pauses the rollout
    outcome = healthy_device.update_once()
    assert outcome.result is UpdateResult.COMMITTED, outcome
    assert outcome.release == "2.0"
    assert outcome.unreported == ()
    state = json.loads((fleet.files / "dev-1-state" / "slots" / "bootstate.json").read_bytes())
    assert state["active"] == "b"
    assert state["min_release_counter"] == 2
    assert (fleet.files / "dev-1-state" / "slots" / "slot-b.img").read_bytes() == (
        fleet.files / "2.0.sqfs"
    ).read_bytes()
    assert fleet.step(campaign, "dev-1") is DeviceStep.COMMITTED
    assert healthy_device.update_once().result is UpdateResult.NO_UPDATE  # nothing new after the commit
    with open_runtime(fleet.settings) as runtime:
        assert runtime.inventory.get("dev-1").firmware_version == "2.0"
        report = compliance_report(runtime.database, runtime.inventory, runtime.releases, now=utc_now())
        assert {d.device_id: d.posture for d in report.devices}["dev-1"] is Posture.CURRENT
        assert report.counts == {"current": 1, "behind": 3, "unknown": 0}

    failing_device = fleet.client("dev-2", ["false"])
    outcome = failing_device.update_once()
    assert outcome.result is UpdateResult.ROLLED_BACK, outcome
    state = json.loads((fleet.files / "dev-2-state" / "slots" / "bootstate.json").read_bytes())
    assert state["active"] == "a"
    assert state["min_release_counter"] == 1
    assert fleet.step(campaign, "dev-2") is DeviceStep.ROLLED_BACK
    assert fleet.state(campaign) is CampaignState.PAUSED  # paused by the report that breached it

    third = fleet.client("dev-3", ["true"])
    outcome = third.update_once()
    assert outcome.result is UpdateResult.NO_UPDATE  # paused: nothing new is offered
    assert fleet.step(campaign, "dev-3") is DeviceStep.PENDING


def test_a_quarantined_device_is_offered_nothing(fleet: Fleet) -> None:
    with open_runtime(fleet.settings) as runtime:
        runtime.inventory.transition("dev-4", Lifecycle.QUARANTINE, actor="t")
    campaign = fleet.campaign(error_ppm=500_000)
    outcome = fleet.client("dev-4", ["true"]).update_once()
    assert outcome.result is UpdateResult.NO_UPDATE
    assert fleet.step(campaign, "dev-4") is DeviceStep.PENDING
    eventually(lambda: fleet.state(campaign) is CampaignState.RUNNING, "the campaign keeps running")


def test_the_device_endpoint_refuses_clients_without_an_operational_certificate(fleet: Fleet) -> None:
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    url = f"https://127.0.0.1:{fleet.est_port}/ota/v1/checkin"
    body = '{"director_version":0,"hardware_id":"cam-x","release":"1.0","release_counter":1}'
    anonymous = subprocess.run(
        ["curl", "-sS", "--cacert", str(fleet.files / "ca.pem"), "-H", "Content-Type: application/json",
         "--data-binary", body, "-w", "\n%{http_code}", url],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    text, status = anonymous.stdout.rsplit("\n", 1)
    assert status == "403"
    assert json.loads(text)["title"] == "ota-device-forbidden"
    device = subprocess.run(
        ["curl", "-sS", "--cacert", str(fleet.files / "ca.pem"), "--cert", str(fleet.files / "dev-1.pem"),
         "--key", str(fleet.files / "dev-1.key"), "-H", "Content-Type: application/json",
         "--data-binary", body, "-w", "\n%{http_code}", url],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    text, status = device.stdout.rsplit("\n", 1)
    assert (status, json.loads(text)) == ("200", {"director_version": 0, "update": False})
    other = subprocess.run(
        ["curl", "-sS", "--cacert", str(fleet.files / "ca.pem"), "--cert", str(fleet.files / "dev-1.pem"),
         "--key", str(fleet.files / "dev-1.key"), "-w", "\n%{http_code}",
         f"https://127.0.0.1:{fleet.est_port}/ota/director/devices/dev-2/timestamp.json"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert other.stdout.rsplit("\n", 1)[1] == "403"  # another device's assignment is not disclosed
