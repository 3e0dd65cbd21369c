"""Attacks on segmentation, each named after what the attacker tries.

They go through the segmentation service of a real installation (SQLite store, event log) with a
recording stand-in for nft, so that what would have been sent to the firewall is checked exactly.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from fleetguard.config import Settings
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.model import DeviceSpec
from fleetguard.segment.errors import MudInvalid, MudSignatureInvalid, MudTooLarge
from fleetguard.segment.model import Flow
from fleetguard.segment.service import SignaturePolicy, parse_context
from fleetguard.segment.signature import sign_mud
from fleetguard.types import utc_now
from segment_doubles import RecordingNft

URL = "https://camera.example.com/cam-1000"


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    settings = Settings(data_dir=tmp_path / "data")
    initialize(settings, "example.org", now=utc_now())
    rt = Runtime(settings)
    rt.segment._nft = RecordingNft()  # type: ignore[attr-defined]
    rt.inventory.register(DeviceSpec(id="cam-1", serial="S1", manufacturer="Acme", mud_url=URL), actor="ops")
    rt.segment.bind("cam-1", ipv4="10.1.0.2", actor="ops")
    rt.segment.set_context(parse_context(["10.0.0.0/8"], {}, {}), actor="ops")
    try:
        yield rt
    finally:
        rt.close()


def _mud(ace: dict[str, object], url: str = URL) -> bytes:
    return json.dumps({
        "ietf-mud:mud": {
            "mud-version": 1, "mud-url": url, "last-update": "2026-11-01T00:00:00+00:00",
            "cache-validity": 48, "is-supported": True, "systeminfo": "camera",
            "from-device-policy": {"access-lists": {"access-list": [{"name": "f"}]}},
            "to-device-policy": {"access-lists": {"access-list": [{"name": "t"}]}},
        },
        "ietf-access-control-list:acls": {"acl": [
            {"name": "f", "type": "ipv4-acl-type", "aces": {"ace": [ace]}},
            {"name": "t", "type": "ipv4-acl-type", "aces": {"ace": []}},
        ]},
    }).encode()  # fmt: skip


def _allow(matches: dict[str, object]) -> dict[str, object]:
    return {"name": "a", "matches": matches, "actions": {"forwarding": "accept"}}


def _elements(runtime: Runtime) -> str:
    runtime.segment.apply(actor="ops")
    nft: RecordingNft = runtime.segment._nft  # type: ignore[attr-defined]
    script, _ = nft.scripts[-1]
    start = script.index("set out4")
    return script[start : script.index("\n", start)]


def test_a_name_that_does_not_resolve_does_not_widen_the_policy_to_any(runtime: Runtime) -> None:
    runtime.segment.add_profile(
        _mud(_allow({"ipv4": {"protocol": 6, "ietf-acldns:dst-dnsname": "nowhere.invalid"}})), actor="ops"
    )
    runtime.segment._names._resolver = _Nothing()  # type: ignore[attr-defined]
    out4 = _elements(runtime)
    assert "elements" not in out4
    assert "0.0.0.0/0" not in out4


def test_an_unconfigured_controller_does_not_widen_the_policy_to_any(runtime: Runtime) -> None:
    runtime.segment.add_profile(
        _mud(_allow({"ietf-mud:mud": {"controller": "https://c2.example/ctl"}, "ipv4": {"protocol": 6}})),
        actor="ops",
    )
    assert "elements" not in _elements(runtime)


def test_a_constraint_the_parser_does_not_know_is_refused_not_ignored(runtime: Runtime) -> None:
    hidden = _allow(
        {"ipv4": {"protocol": 6, "destination-ipv4-network": "10.0.0.0/8", "x-vendor:exempt": True}}
    )
    with pytest.raises(MudInvalid, match="x-vendor:exempt"):
        runtime.segment.add_profile(_mud(hidden), actor="ops")
    assert runtime.segment.profiles() == []


def test_a_drop_ace_that_would_reorder_the_allow_list_is_refused(runtime: Runtime) -> None:
    ace = {"name": "d", "matches": {"ipv4": {"protocol": 6}}, "actions": {"forwarding": "drop"}}
    with pytest.raises(MudInvalid, match="accept"):
        runtime.segment.add_profile(_mud(ace), actor="ops")
    assert runtime.segment.profiles() == []


def test_a_mud_file_bomb_is_refused_before_parsing(runtime: Runtime) -> None:
    with pytest.raises(MudTooLarge):
        runtime.segment.add_profile(b"[" * (2 * 1024 * 1024), actor="ops")
    assert runtime.segment.profiles() == []


def test_an_unsigned_profile_is_refused_where_signatures_are_required(runtime: Runtime) -> None:
    _, certificate = _signer()
    runtime.segment.set_signature_policy(SignaturePolicy(True, _pem(certificate)), actor="ops")
    with pytest.raises(MudSignatureInvalid, match="requires signed MUD files"):
        runtime.segment.add_profile(_mud(_allow({"ipv4": {"protocol": 6}})), actor="ops")
    assert runtime.segment.profiles() == []


def test_a_profile_changed_after_signing_is_refused(runtime: Runtime) -> None:
    key, certificate = _signer()
    runtime.segment.set_signature_policy(SignaturePolicy(True, _pem(certificate)), actor="ops")
    signed = _mud(_allow({"ipv4": {"protocol": 6, "destination-ipv4-network": "198.51.100.7/32"}}))
    signature = sign_mud(signed, key, certificate)
    widened = signed.replace(b"198.51.100.7/32", b"0.0.0.0/0")
    with pytest.raises(MudSignatureInvalid):
        runtime.segment.add_profile(widened, signature=signature, actor="ops")
    assert runtime.segment.profiles() == []
    stored = runtime.segment.add_profile(signed, signature=signature, actor="ops")
    assert stored.signer == "CN=Camera MUD signer"


def test_a_profile_signed_by_an_untrusted_key_is_refused(runtime: Runtime) -> None:
    _, trusted = _signer()
    key, other = _signer()
    runtime.segment.set_signature_policy(SignaturePolicy(True, _pem(trusted)), actor="ops")
    document = _mud(_allow({"ipv4": {"protocol": 6}}))
    with pytest.raises(MudSignatureInvalid):
        runtime.segment.add_profile(document, signature=sign_mud(document, key, other), actor="ops")
    assert runtime.segment.profiles() == []


class _Nothing:
    def resolve(self, name: str) -> object:
        raise LookupError(name)


def _signer() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Camera MUD signer")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return key, certificate


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.PEM)


def test_a_device_talking_to_a_c2_server_shows_up_as_a_violation_from_flow_records(runtime: Runtime) -> None:
    runtime.segment.add_profile(
        _mud(_allow({"ipv4": {"protocol": 6, "destination-ipv4-network": "198.51.100.7/32"},
                     "tcp": {"destination-port": {"operator": "eq", "port": 443}}})),
        actor="ops",
    )  # fmt: skip
    start = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    flows = [
        Flow(start, "10.1.0.2", "198.51.100.7", 6, 40000, 443),
        Flow(start, "10.1.0.2", "203.0.113.66", 6, 40001, 6667),  # IRC to a C2 server
        Flow(start, "10.1.0.2", "203.0.113.66", 6, 40002, 6667),  # the same, again: one event
    ]
    result = runtime.segment.detect_flows(flows, actor="monitor")
    assert result.devices["cam-1"].allowed == 1
    assert len(result.devices["cam-1"].blocked) == 2
    events = [(e.subject, e.details()) for e in runtime.log.entries(action="segment.violation", limit=10)]
    assert events == [
        ("device:cam-1", {"source": "10.1.0.2", "destination": "203.0.113.66", "protocol": 6,
                          "destination_port": 6667, "origin": "flows"}),
    ]  # fmt: skip
