"""Segmentation end to end: ``fleetguard up`` enforces the fleet's MUD policy in a gateway namespace.

Real parts: ``fleetguard up`` (API, event bus, trust evaluator driving the firewall enforcement
point), nft in a gateway network namespace between a camera, its cloud, DNS and a corporate host.
Operators act through the HTTP API. The camera reaches its cloud and DNS, not the corporate host;
the attempt becomes a ``segment.violation`` event; a quarantine through the API cuts the camera off
at the firewall (verified by the trust evaluator's read-back) and a release restores it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dns_server import DnsServer
from network_lab import Lab, lab_available
from prerequisites import free_port, require
from test_segment_nftables import CAMERA_MUD, CAMERA_URL, CONNECT, TCP_SERVER, UDP_ECHO
from up_process import fleetguard_command, open_runtime
from waiting import eventually, healthy, wait_for

from fleetguard.config import Settings
from fleetguard.installation import Runtime
from fleetguard.inventory.lifecycle import Action as Lifecycle
from fleetguard.inventory.model import DeviceSpec
from fleetguard.segment.service import parse_context


@dataclass
class Gateway:
    lab: Lab
    api: str
    token: str
    settings: Settings

    def post(self, path: str, body: dict[str, object]) -> None:
        response = httpx.post(
            f"{self.api}{path}", json=body, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )
        assert response.status_code == 200, response.text

    def reach(self, host: str, target: str, port: int, proto: str = "tcp") -> bool:
        return self.lab.run(host, CONNECT, args=[target, str(port), proto]).split()[0] == "open"

    def events(self, action: str) -> list[tuple[str, dict[str, object]]]:
        with open_runtime(self.settings) as runtime:
            return [(e.subject, e.details()) for e in runtime.log.entries(action=action, limit=1000)]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    why = lab_available()
    require(why is None, f"network namespace lab ({why})")
    lab = Lab(tag=f"fu{os.getpid() % 100000}").start([("camera", "10.1.0.2")])
    servers = [
        lab.python("cloud", TCP_SERVER, args=["443", "/dev/null"]),
        lab.python("corp", TCP_SERVER, args=["443", "/dev/null"]),
        lab.python("dns", UDP_ECHO),
    ]
    server: subprocess.Popen[str] | None = None
    names = DnsServer({"cloud.example.com": ["198.51.100.7"]}).start()
    try:
        for process in servers:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == b"ready"
        data, api_port = tmp_path / "data", free_port()
        env = {name: value for name, value in os.environ.items() if not name.startswith("FLEETGUARD_")}
        env.update(
            FLEETGUARD_DATA_DIR=str(data), FLEETGUARD_CA_PASSPHRASE="segment test", FLEETGUARD_EST_PORT="0",
            FLEETGUARD_MQTT_PORT="0", FLEETGUARD_SEGMENT_ENFORCE="true", FLEETGUARD_SEGMENT_NETNS=lab.gateway,
            FLEETGUARD_SEGMENT_REFRESH_S="1", FLEETGUARD_SEGMENT_NAMESERVERS="127.0.0.1",
            FLEETGUARD_SEGMENT_DNS_PORT=str(names.port),
        )  # fmt: skip
        init = subprocess.run(
            [*fleetguard_command(), "init", "--trust-domain", "example.org", "--json"],
            env=env, capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        token = json.loads(init.stdout)["admin_token"]
        subprocess.run(
            [*fleetguard_command(), "ca", "init"], env=env, capture_output=True, check=True, timeout=60
        )
        os.environ["FLEETGUARD_CA_PASSPHRASE"] = "segment test"
        settings = Settings(data_dir=data)
        with open_runtime(settings) as runtime:
            _camera(runtime)
        server = subprocess.Popen(
            [*fleetguard_command(), "up", "--port", str(api_port)], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        api = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: healthy(api), "fleetguard up /healthz", server)
        found = Gateway(lab, api, token, settings)
        wait_for(lambda: bool(found.events("segment.applied")), "the ruleset applied", server)
        yield found
    finally:
        if server is not None:
            server.terminate()
            try:
                server.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.communicate()
        for process in servers:
            lab.stop(process)
        lab.close()
        names.close()
        os.environ.pop("FLEETGUARD_CA_PASSPHRASE", None)


def _camera(runtime: Runtime) -> None:
    runtime.inventory.register(
        DeviceSpec(id="cam-1", serial="cam-1", manufacturer="Acme", mud_url=CAMERA_URL), actor="t"
    )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam-1")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    runtime.pki.issue_device("cam-1", csr.public_bytes(serialization.Encoding.DER), actor="factory")
    runtime.inventory.transition("cam-1", Lifecycle.PROVISION, actor="t")
    runtime.inventory.transition("cam-1", Lifecycle.ACTIVATE, actor="t")
    runtime.segment.add_profile(json.dumps(CAMERA_MUD).encode(), actor="t")
    runtime.segment.bind("cam-1", ipv4="10.1.0.2", actor="t")
    runtime.segment.set_context(
        parse_context(["10.0.0.0/8"], {"urn:ietf:params:mud:dns": ["10.9.0.53"]}, {}), actor="t"
    )


def test_up_enforces_the_camera_profile_and_quarantines_it_at_the_firewall(gateway: Gateway) -> None:
    assert gateway.reach("camera", "198.51.100.7", 443)  # its cloud, by the name's DNS answer
    assert gateway.reach("camera", "10.9.0.53", 53, "udp")
    assert not gateway.reach("camera", "10.20.0.10", 443)
    eventually(
        lambda: any(d.get("destination") == "10.20.0.10" for _, d in gateway.events("segment.violation")),
        "a segment.violation event for the corporate host",
    )

    gateway.post("/v1/devices/cam-1/transitions", {"action": "quarantine", "reason": "test"})
    eventually(lambda: not gateway.reach("camera", "198.51.100.7", 443), "the camera cut off")
    assert not gateway.reach("camera", "10.9.0.53", 53, "udp")
    eventually(
        lambda: (
            ("device:cam-1", "10.1.0.2")
            in [(s, d["addresses"]) for s, d in gateway.events("segment.quarantined")]
        ),
        "segment.quarantined logged",
    )
    eventually(
        lambda: any(s == "device:cam-1" for s, _ in gateway.events("trust.enforced")), "trust.enforced logged"
    )

    gateway.post("/v1/devices/cam-1/transitions", {"action": "release", "reason": "test"})
    eventually(lambda: gateway.reach("camera", "198.51.100.7", 443), "the camera released")
