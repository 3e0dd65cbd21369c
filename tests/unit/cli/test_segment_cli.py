"""``fleetguard segment``: profiles (add, list, show, remove, learn), bindings, context, signers,
apply (and dry run), history, simulate, quarantine-sync, detect and counters, driven through the
command line against a real installation.

nft is faked: every runtime the commands open gets a :class:`FakeNft` that records the scripts it is
given and answers queries from a table, and DNS names resolve from a fixed table. The fleet: cameras
``cam-1`` and ``cam-2`` of type ``cam``, whose MUD URL is :data:`CAM_URL`; the camera's profile lets it
open TCP 443 to 203.0.113.10 only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import struct
from pathlib import Path

import pytest
from typer.testing import Result

from fleetguard import installation
from fleetguard.config import Settings
from fleetguard.segment.flows import write_flows_jsonl
from fleetguard.segment.model import Direction, Flow
from fleetguard.segment.mud import parse_mud
from fleetguard.segment.resolver import StaticResolver
from segment_doubles import RecordingNft as FakeNft
from segment_doubles import camera_mud

from .conftest import Cli, one_line

Json = dict[str, object]

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
MUDGEE = DATA / "mud" / "mudgee-us"
BENIGN = DATA / "net" / "benign-devices" / "schlage-lock-01.pcap"

CAM_URL = "https://cam.example.com/cam.json"
CLOUD = "203.0.113.10"
CAM_MUD = camera_mud(CAM_URL, CLOUD)
CAM_DOCUMENT = json.dumps(CAM_MUD, indent=2).encode()
CAM_DIGEST = parse_mud(CAM_DOCUMENT).digest
START = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def nft(monkeypatch: pytest.MonkeyPatch) -> FakeNft:
    """Every runtime (and the counters command) gets this nft; DNS names resolve from a fixed table."""
    fake = FakeNft()
    resolver = StaticResolver({"cloud.example.com": [CLOUD]})

    def nftables(_settings: Settings) -> FakeNft:
        return fake

    def resolvers(_settings: Settings) -> StaticResolver:
        return resolver

    monkeypatch.setattr(installation, "_nftables", nftables)
    monkeypatch.setattr(installation, "_resolver", resolvers)
    return fake


@pytest.fixture
def fleet(cli: Cli, initialized: None, nft: FakeNft) -> Cli:
    cli.ok("types", "add", "cam", "--mud-url", CAM_URL)
    for device_id in ("cam-1", "cam-2"):
        cli.ok(
            "devices",
            "add",
            "--id",
            device_id,
            "--serial",
            device_id,
            "--manufacturer",
            "Example",
            "--type",
            "cam",
        )
    return cli


@pytest.fixture
def cam_file(tmp_path: Path) -> Path:
    path = tmp_path / "cam.json"
    path.write_bytes(CAM_DOCUMENT)
    return path


def _list(cli: Cli, *args: str) -> list[Json]:
    value = cli.json(*args)
    assert isinstance(value, list)
    return value


def _object(cli: Cli, *args: str) -> Json:
    value = cli.json(*args)
    assert isinstance(value, dict)
    return value


def _failed(result: Result) -> str:
    assert result.exit_code == 1, result.output
    return one_line(result.stderr)


def _quarantine(cli: Cli, device_id: str) -> None:
    cli.ok("devices", "provision", device_id)
    cli.ok("devices", "activate", device_id)
    cli.ok("devices", "quarantine", device_id, "--reason", "test")


def _flow(source: str, destination: str, port: int, *, protocol: int = 6) -> Flow:
    return Flow(
        start=START,
        source=source,
        destination=destination,
        protocol=protocol,
        source_port=40000,
        destination_port=port,
    )


def _flows_file(tmp_path: Path, *flows: Flow) -> Path:
    path = tmp_path / "flows.jsonl"
    with path.open("wb") as sink:
        write_flows_jsonl(flows, sink)
    return path


# -- help ------------------------------------------------------------------------------------


def test_help_lists_every_command(cli: Cli) -> None:
    result = cli.ok("segment", "--help")
    for command in (
        "profile",
        "bind",
        "bindings",
        "context",
        "signers",
        "apply",
        "history",
        "simulate",
        "quarantine-sync",
        "detect",
        "counters",
    ):
        assert command in result.stdout
    learn = cli.ok("segment", "profile", "learn", "--help").stdout
    for option in (
        "--device",
        "--mac",
        "--mud-url",
        "--local-network",
        "--gateway",
        "--systeminfo",
        "--output",
        "--flows-format",
        "--add",
    ):
        assert option in learn


# -- profiles --------------------------------------------------------------------------------


def test_profile_add_list_show_and_remove(fleet: Cli, cam_file: Path) -> None:
    added = fleet.ok("segment", "profile", "add", str(cam_file))
    assert added.stdout == f"added MUD profile {CAM_URL}: 2 ACEs, sha256 {CAM_DIGEST[:12]}, unsigned\n"
    [listed] = _list(fleet, "segment", "profile", "list")
    assert {k: listed[k] for k in ("url", "digest", "model_name", "aces", "source", "signer")} == {
        "url": CAM_URL,
        "digest": CAM_DIGEST,
        "model_name": "Cam 1",
        "aces": 2,
        "source": "file",
        "signer": None,
    }
    assert str(listed["actor"]).startswith("cli:")
    table = fleet.ok("segment", "profile", "list").stdout.splitlines()
    assert table[0].split() == ["url", "model", "aces", "source", "signer", "added"]
    assert table[1].split()[:6] == [CAM_URL, "Example", "Cam", "1", "2", "file"]

    shown = _object(fleet, "segment", "profile", "show", CAM_URL)
    entries = shown["entries"]
    assert isinstance(entries, list)
    assert [(e["name"], e["direction"], e["peers"], e["remote_ports"]) for e in entries] == [
        ("cloud", "from-device", [f"network:{CLOUD}/32"], ["443-443"]),
        ("cloud-replies", "to-device", [f"network:{CLOUD}/32"], ["443-443"]),
    ]
    lines = [line.split() for line in fleet.ok("segment", "profile", "show", CAM_URL).stdout.splitlines()]
    assert lines[:5] == [
        ["url", CAM_URL],
        ["model", "Example", "Cam", "1"],
        ["systeminfo", "Example", "camera"],
        ["sha256", CAM_DIGEST],
        ["last", "update", "2025-01-01T00:00:00Z"],
    ]
    assert lines[-3:] == [
        [
            "ace",
            "direction",
            "family",
            "protocol",
            "peers",
            "remote",
            "ports",
            "device",
            "ports",
            "initiated",
        ],
        ["cloud", "from-device", "ipv4", "tcp", f"network:{CLOUD}/32", "443-443", "0-65535", "-"],
        ["cloud-replies", "to-device", "ipv4", "tcp", f"network:{CLOUD}/32", "443-443", "0-65535", "-"],
    ]

    removed = fleet.ok("segment", "profile", "remove", CAM_URL)
    assert (
        removed.stdout
        == f"removed MUD profile {CAM_URL}; its devices are denied everything from the next apply\n"
    )
    assert _list(fleet, "segment", "profile", "list") == []
    assert _failed(fleet("segment", "profile", "remove", CAM_URL)) == f"error: no MUD profile {CAM_URL!r}"


def test_invalid_mud_file_fails_with_its_json_path_and_stores_nothing(fleet: Cli, tmp_path: Path) -> None:
    bad = json.loads(CAM_DOCUMENT)
    bad["ietf-mud:mud"]["mud-url"] = "http://cam.example.com/cam.json"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad), encoding="utf-8")
    line = _failed(fleet("segment", "profile", "add", str(path)))
    assert line.startswith("error: /ietf-mud:mud/mud-url: ")
    assert line.endswith("(fix the MUD file; nothing was applied)")
    assert _list(fleet, "segment", "profile", "list") == []
    assert _list(fleet, "events", "list", "--action", "segment.profile_added") == []


def test_a_file_over_the_size_limit_is_refused(fleet: Cli, tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    path.write_bytes(CAM_DOCUMENT + b" " * (1024 * 1024))
    line = _failed(fleet("segment", "profile", "add", str(path)))
    assert line.startswith("error: MUD file is 1048577 bytes, over the limit of 1048576")
    assert _list(fleet, "segment", "profile", "list") == []


def test_unsigned_profile_is_refused_when_signatures_are_required(
    fleet: Cli, cam_file: Path, tmp_path: Path
) -> None:
    pem = tmp_path / "signer.pem"
    pem.write_bytes(_self_signed_pem("CN=MUD signer,O=Example"))
    assert fleet.ok("segment", "signers", "set", str(pem), "--require").stdout == (
        "trusted MUD signers: 1 certificates; signatures required: yes\n"
    )
    shown = _object(fleet, "segment", "signers", "show")
    assert shown["required"] is True
    signers = shown["signers"]
    assert isinstance(signers, list)
    assert [s["subject"] for s in signers] == ["CN=MUD signer,O=Example"]
    line = _failed(fleet("segment", "profile", "add", str(cam_file)))
    assert line == (
        "error: this installation requires signed MUD files and none was given (pass the detached CMS "
        "signature (the file at the profile's mud-signature URL))"
    )
    assert _list(fleet, "segment", "profile", "list") == []
    # --no-require keeps the signers and lets unsigned profiles in again.
    fleet.ok("segment", "signers", "set", str(pem), "--no-require")
    fleet.ok("segment", "profile", "add", str(cam_file))


def test_signers_set_refuses_a_file_without_certificates(fleet: Cli, tmp_path: Path) -> None:
    path = tmp_path / "nothing.pem"
    path.write_text("not a certificate\n", encoding="utf-8")
    assert _failed(fleet("segment", "signers", "set", str(path))) == (
        "error: the file holds no PEM certificate (give the signers' certificates as PEM)"
    )
    assert _object(fleet, "segment", "signers", "show") == {"required": False, "signers": []}


# -- bindings and context --------------------------------------------------------------------


def test_bind_and_list_bindings(fleet: Cli) -> None:
    bound = fleet.ok("segment", "bind", "cam-1", "--ipv4", "192.0.2.10", "--mac", "AA-BB-CC-DD-EE-01")
    assert (
        bound.stdout
        == "bound device cam-1 to 192.0.2.10, aa:bb:cc:dd:ee:01; it is managed from the next apply\n"
    )
    fleet.ok("segment", "bind", "cam-2", "--ipv6", "2001:db8::2")
    assert _list(fleet, "segment", "bindings") == [
        {"device_id": "cam-1", "ipv4": "192.0.2.10", "ipv6": None, "mac": "aa:bb:cc:dd:ee:01"},
        {"device_id": "cam-2", "ipv4": None, "ipv6": "2001:db8::2", "mac": None},
    ]
    table = fleet.ok("segment", "bindings").stdout.splitlines()
    assert [line.split() for line in table] == [
        ["device", "ipv4", "ipv6", "mac"],
        ["cam-1", "192.0.2.10", "-", "aa:bb:cc:dd:ee:01"],
        ["cam-2", "-", "2001:db8::2", "-"],
    ]


def test_bind_refusals_change_nothing(fleet: Cli) -> None:
    fleet.ok("segment", "bind", "cam-1", "--ipv4", "192.0.2.10")
    before = _list(fleet, "segment", "bindings")
    assert _failed(fleet("segment", "bind", "cam-2", "--ipv4", "192.0.2.10")).startswith(
        "error: 192.0.2.10 is bound to device 'cam-1'"
    )
    assert _failed(fleet("segment", "bind", "ghost", "--ipv4", "192.0.2.11")).startswith(
        "error: no device with id 'ghost'"
    )
    assert _failed(fleet("segment", "bind", "cam-2", "--ipv4", "192.0.2.300")) == (
        "error: invalid IPv4 address '192.0.2.300'"
    )
    assert _failed(fleet("segment", "bind", "cam-2")) == "error: a binding needs an IPv4 or IPv6 address"
    assert _list(fleet, "segment", "bindings") == before


def test_context_set_and_show(fleet: Cli) -> None:
    result = fleet.ok(
        "segment",
        "context",
        "set",
        "--local-network",
        "192.168.1.0/24",
        "--controller",
        "urn:ietf:params:mud:dns=192.168.1.1,192.168.1.2",
        "--my-controller",
        f"{CAM_URL}=192.168.1.5",
    )
    assert result.stdout == (
        "set the MUD context: 1 local networks, 1 controller classes, 1 my-controllers; "
        "used from the next apply\n"
    )
    assert _object(fleet, "segment", "context", "show") == {
        "local_networks": ["192.168.1.0/24"],
        "controllers": {"urn:ietf:params:mud:dns": ["192.168.1.1", "192.168.1.2"]},
        "my_controllers": {CAM_URL: ["192.168.1.5"]},
    }
    assert [line.split() for line in fleet.ok("segment", "context", "show").stdout.splitlines()] == [
        ["local", "networks", "192.168.1.0/24"],
        ["controller", "urn:ietf:params:mud:dns", "=", "192.168.1.1,", "192.168.1.2"],
        ["my-controller", CAM_URL, "=", "192.168.1.5"],
    ]


def test_a_bad_context_is_refused_and_changes_nothing(fleet: Cli) -> None:
    fleet.ok("segment", "context", "set", "--local-network", "10.0.0.0/8")
    line = _failed(fleet("segment", "context", "set", "--local-network", "10.0.0.1/8"))
    assert line == "error: invalid network '10.0.0.1/8' (use a prefix such as 10.0.0.0/8)"
    usage = fleet("segment", "context", "set", "--controller", "no-equals-sign")
    assert usage.exit_code == 2
    assert _object(fleet, "segment", "context", "show")["local_networks"] == ["10.0.0.0/8"]


# -- apply and history -----------------------------------------------------------------------


def test_dry_run_checks_with_nft_and_records_nothing(fleet: Cli, nft: FakeNft, cam_file: Path) -> None:
    fleet.ok("segment", "profile", "add", str(cam_file))
    fleet.ok("segment", "bind", "cam-1", "--ipv4", "192.0.2.10")
    fleet.ok("segment", "bind", "cam-2", "--ipv4", "192.0.2.11")
    _quarantine(fleet, "cam-2")
    result = _object(fleet, "segment", "apply", "--dry-run")
    assert {k: v for k, v in result.items() if k not in ("digest", "seconds")} == {
        "generation": 0,
        "dry_run": True,
        "devices": 2,
        "profiles": 1,
        "unprofiled": [],
        "unresolved": {},
        "quarantined": 1,
        "elements": {"class4": 2, "denied4": 2, "in4": 1, "out4": 1, "quarantine4": 1},
    }
    assert [check for _, check in nft.scripts] == [True]
    assert "192.0.2.10 : 1" in nft.scripts[0][0]
    text = fleet.ok("segment", "apply", "--dry-run").stdout.splitlines()
    assert [line.rstrip().split(None, 1) for line in text[:7]] == [
        ["generation", "0 (dry run: checked with nft -c; nothing applied)"],
        ["devices", "2"],
        ["profiles", "1"],
        ["quarantined", "1"],
        ["elements", "class4 2, denied4 2, in4 1, out4 1, quarantine4 1"],
        ["unprofiled", "none"],
        ["sha256", str(result["digest"])],
    ]
    assert text[7].startswith("seconds ")
    assert _list(fleet, "segment", "history") == []
    assert _list(fleet, "events", "list", "--action", "segment.applied") == []


def test_apply_records_a_generation_and_history_lists_it(fleet: Cli, nft: FakeNft, cam_file: Path) -> None:
    fleet.ok("segment", "profile", "add", str(cam_file))
    fleet.ok("segment", "bind", "cam-1", "--ipv4", "192.0.2.10")
    fleet.ok("devices", "update", "cam-2", "--type", "")  # no MUD URL: unprofiled, denied everything
    fleet.ok("segment", "bind", "cam-2", "--ipv4", "192.0.2.11")
    applied = _object(fleet, "segment", "apply")
    assert (applied["generation"], applied["dry_run"], applied["unprofiled"]) == (1, False, ["cam-2"])
    assert [check for _, check in nft.scripts] == [True, False]
    assert 'comment "fleetguard generation 1"' in nft.scripts[1][0]
    [entry] = _list(fleet, "segment", "history")
    assert {
        k: entry[k] for k in ("generation", "digest", "devices", "profiles", "unprofiled", "quarantined")
    } == {
        "generation": 1,
        "digest": applied["digest"],
        "devices": 2,
        "profiles": 1,
        "unprofiled": 1,
        "quarantined": 0,
    }
    table = fleet.ok("segment", "history").stdout.splitlines()
    assert table[0].split() == [
        "generation",
        "applied",
        "actor",
        "devices",
        "profiles",
        "quarantined",
        "sha256",
    ]
    assert table[1].split()[3:] == ["2", "1", "0", str(applied["digest"])[:12]]
    second = fleet.ok("segment", "apply").stdout.splitlines()
    assert second[0].split() == ["generation", "2"]
    assert ["unprofiled", "cam-2"] in [line.split() for line in second]


def test_a_refused_ruleset_fails_and_records_no_generation(fleet: Cli, nft: FakeNft, cam_file: Path) -> None:
    fleet.ok("segment", "profile", "add", str(cam_file))
    fleet.ok("segment", "bind", "cam-1", "--ipv4", "192.0.2.10")
    nft.refuse = True
    assert _failed(fleet("segment", "apply")) == (
        "error: nft refused the change (exit 1); the ruleset in force is unchanged: boom"
    )
    assert _list(fleet, "segment", "history") == []


@pytest.mark.skipif(not MUDGEE.is_dir(), reason=f"the shared MUD files are not at {MUDGEE}")
def test_real_mud_files_add_and_dry_run(fleet: Cli, nft: FakeNft) -> None:
    names = ("blink_camera_merged_usMud.json", "tplink_plug_merged_usMud.json", "echo_dot_merged_usMud.json")
    urls = []
    for index, name in enumerate(names):
        fleet.ok("segment", "profile", "add", str(MUDGEE / name))
        url = parse_mud((MUDGEE / name).read_bytes()).url
        urls.append(url)
        fleet.ok(
            "devices",
            "add",
            "--id",
            f"real-{index}",
            "--serial",
            f"real-{index}",
            "--manufacturer",
            "x",
            "--mud-url",
            url,
        )
        fleet.ok("segment", "bind", f"real-{index}", "--ipv4", f"192.168.1.{20 + index}")
    assert [p["url"] for p in _list(fleet, "segment", "profile", "list")] == sorted(urls)
    result = _object(fleet, "segment", "apply", "--dry-run")
    assert (result["devices"], result["profiles"], result["unprofiled"]) == (3, 3, [])
    unresolved = result["unresolved"]
    assert isinstance(unresolved, dict)
    assert set(unresolved) <= set(urls)  # their cloud names have no addresses in the fixed table
    assert unresolved
    assert [check for _, check in nft.scripts] == [True]
    assert _list(fleet, "segment", "history") == []


# -- simulate --------------------------------------------------------------------------------


def test_simulate_prints_the_flows_that_would_be_blocked_and_applies_nothing(
    fleet: Cli, nft: FakeNft, cam_file: Path, tmp_path: Path
) -> None:
    fleet.ok("segment", "profile", "add", str(cam_file))
    fleet.ok("segment", "bind", "cam-1", "--ipv4", "192.0.2.10")
    flows = _flows_file(
        tmp_path,
        _flow("192.0.2.10", CLOUD, 443),
        _flow("192.0.2.10", "198.51.100.7", 23),
        _flow("192.0.2.99", "198.51.100.7", 80),
    )
    result = fleet.ok("segment", "simulate", "--flows", str(flows))
    lines = result.stdout.splitlines()
    assert [line.split() for line in lines[:2]] == [
        ["device", "start", "protocol", "source", "destination", "verdict", "reason"],
        [
            "cam-1",
            "2025-06-01T12:00:00Z",
            "tcp",
            "192.0.2.10:40000",
            "198.51.100.7:23",
            "blocked",
            "not",
            "in",
            "cam-1's",
            "from-device",
            "policy",
        ],
    ]
    assert lines[2] == "3 flows: 1 blocked on 1 of 1 managed devices, 1 unmanaged; nothing was applied"
    view = _object(fleet, "segment", "simulate", "--flows", str(flows), "--format", "jsonl")
    assert (view["flows"], view["blocked"], view["unmanaged"], view["proposed"]) == (3, 1, 1, [])
    devices = view["devices"]
    assert isinstance(devices, list)
    [device] = devices
    assert device["device_id"] == "cam-1"
    assert device["allowed"] == 1
    assert [b["flow"]["destination_port"] for b in device["blocked"]] == [23]
    assert nft.scripts == []
    assert _list(fleet, "segment", "history") == []


def test_simulate_with_a_proposed_profile_does_not_store_it(
    fleet: Cli, cam_file: Path, tmp_path: Path
) -> None:
    fleet.ok("segment", "profile", "add", str(cam_file))
    fleet.ok("segment", "bind", "cam-1", "--ipv4", "192.0.2.10")
    wider = json.loads(CAM_DOCUMENT)
    wider["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"][0]["matches"]["ipv4"][
        "destination-ipv4-network"
    ] = "198.51.100.0/24"
    proposal = tmp_path / "proposal.json"
    proposal.write_text(json.dumps(wider), encoding="utf-8")
    flows = _flows_file(tmp_path, _flow("192.0.2.10", "198.51.100.7", 443))
    stored = _object(fleet, "segment", "simulate", "--flows", str(flows))
    assert stored["blocked"] == 1
    proposed = _object(fleet, "segment", "simulate", "--flows", str(flows), "--profile", str(proposal))
    assert (proposed["blocked"], proposed["proposed"]) == (0, [CAM_URL])
    [profile] = _list(fleet, "segment", "profile", "list")
    assert profile["digest"] == CAM_DIGEST


def test_simulate_refuses_an_unknown_suffix_and_a_bad_proposal(fleet: Cli, tmp_path: Path) -> None:
    flows = tmp_path / "flows.txt"
    flows.write_text("", encoding="utf-8")
    usage = fleet("segment", "simulate", "--flows", str(flows))
    assert usage.exit_code == 2
    assert "cannot tell the format of flows.txt" in usage.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    line = _failed(
        fleet("segment", "simulate", "--flows", str(flows), "--format", "jsonl", "--profile", str(bad))
    )
    assert line == "error: 'ietf-mud:mud' is missing (fix the MUD file; nothing was applied)"


# -- learn -----------------------------------------------------------------------------------


def test_learn_from_flow_records_writes_and_adds_the_profile(fleet: Cli, tmp_path: Path) -> None:
    flows = _flows_file(
        tmp_path,
        _flow("192.168.1.50", CLOUD, 443),
        _flow("192.168.1.50", "192.168.1.1", 53, protocol=17),
        _flow("192.168.1.60", "192.168.1.50", 8080),
    )
    out = tmp_path / "learned.json"
    result = fleet.ok(
        "segment",
        "profile",
        "learn",
        str(flows),
        "--flows-format",
        "jsonl",
        "--device",
        "192.168.1.50",
        "--mud-url",
        "https://learned.example.com/cam.json",
        "--local-network",
        "192.168.1.0/24",
        "--gateway",
        "192.168.1.1",
        "--systeminfo",
        "test camera",
        "-o",
        str(out),
        "--add",
    )
    profile = parse_mud(out.read_bytes())
    assert result.stdout.splitlines() == [
        f"learned a MUD profile for https://learned.example.com/cam.json, written to {out}",
        "flows: 3 of 3 with the device (192.168.1.50)",
        "ACEs: 3 from the device, 3 to the device",
        "DNS names: none (0 DNS answers seen)",
        f"added MUD profile {profile.url}: 6 ACEs, sha256 {profile.digest[:12]}, unsigned",
    ]
    [stored] = _list(fleet, "segment", "profile", "list")
    assert (stored["url"], stored["source"], stored["digest"]) == (profile.url, "learned", profile.digest)


def test_learn_writes_the_profile_to_stdout_and_stores_nothing_without_add(
    fleet: Cli, tmp_path: Path
) -> None:
    capture = tmp_path / "tiny.pcap"
    capture.write_bytes(
        _pcap([("192.168.1.50", 40000, "192.0.2.80", 123), ("192.0.2.80", 123, "192.168.1.50", 40000)])
    )
    result = fleet.ok(
        "segment",
        "profile",
        "learn",
        str(capture),
        "--device",
        "192.168.1.50",
        "--mud-url",
        "https://learned.example.com/x.json",
    )
    profile = parse_mud(result.stdout.encode())
    assert [(a.direction.value, a.protocol, [p.value for p in a.peers]) for a in profile.aces] == [
        ("from-device", 17, ["192.0.2.80/32"]),
        ("to-device", 17, ["192.0.2.80/32"]),
    ]
    assert result.stderr.splitlines()[1] == "flows: 1 of 1 with the device (192.168.1.50)"
    assert _list(fleet, "segment", "profile", "list") == []


def test_learn_fails_for_a_device_that_is_not_in_the_capture(fleet: Cli, tmp_path: Path) -> None:
    capture = tmp_path / "tiny.pcap"
    capture.write_bytes(_pcap([("192.168.1.50", 40000, "192.0.2.80", 123)]))
    out = tmp_path / "out.json"
    line = _failed(
        fleet(
            "segment",
            "profile",
            "learn",
            str(capture),
            "--device",
            "192.168.1.77",
            "--mud-url",
            "https://learned.example.com/x.json",
            "-o",
            str(out),
        )
    )
    assert line == (
        "error: the device (192.168.1.77) has no flows in the traffic (learn from a capture taken while "
        "the device was working)"
    )
    assert not out.exists()
    usage = fleet(
        "segment", "profile", "learn", str(capture), "--mud-url", "https://learned.example.com/x.json"
    )
    assert usage.exit_code == 2


@pytest.mark.skipif(not BENIGN.is_file(), reason=f"no shared benign capture at {BENIGN}")
def test_learn_from_a_real_capture(fleet: Cli, tmp_path: Path) -> None:
    out = tmp_path / "lock.json"
    result = fleet.ok(
        "segment",
        "profile",
        "learn",
        str(BENIGN),
        "--device",
        "192.168.1.122",
        "--mud-url",
        "https://schlage.example.com/lock.json",
        "--local-network",
        "192.168.1.0/24",
        "--gateway",
        "192.168.1.1",
        "-o",
        str(out),
    )
    profile = parse_mud(out.read_bytes())
    lines = result.stdout.splitlines()
    assert lines[1].startswith("flows: ")
    assert lines[1].endswith("with the device (192.168.1.122)")
    from_device, to_device = (len(profile.by_direction(d)) for d in Direction)
    assert from_device > 0
    assert lines[2] == f"ACEs: {from_device} from the device, {to_device} to the device"


# -- enforcement -----------------------------------------------------------------------------


def test_quarantine_sync_follows_the_inventory_state(fleet: Cli, nft: FakeNft) -> None:
    fleet.ok("segment", "bind", "cam-1", "--ipv4", "192.0.2.10")
    _quarantine(fleet, "cam-1")
    assert fleet.ok("segment", "quarantine-sync", "cam-1").stdout == "device cam-1 is held in quarantine\n"
    assert nft.scripts[-1] == ("add element inet fleetguard quarantine4 { 192.0.2.10 }\n", False)
    fleet.ok("devices", "release", "cam-1", "--reason", "fixed")
    assert fleet.ok("segment", "quarantine-sync", "cam-1").stdout == "device cam-1 is not in quarantine\n"
    assert nft.scripts[-1][0].endswith("delete element inet fleetguard quarantine4 { 192.0.2.10 }\n")
    assert (
        fleet.ok("segment", "quarantine-sync", "cam-2").stdout
        == "device cam-2 has no binding: nothing to enforce\n"
    )
    assert _failed(fleet("segment", "quarantine-sync", "ghost")).startswith(
        "error: no device with id 'ghost'"
    )


def test_detect_prints_and_logs_violations(fleet: Cli, nft: FakeNft) -> None:
    fleet.ok("segment", "bind", "cam-1", "--ipv4", "192.0.2.10")
    nft.answers[("list", "set", "inet", "fleetguard", "violations4")] = json.dumps(
        {
            "nftables": [
                {
                    "set": {
                        "name": "violations4",
                        "elem": [
                            {
                                "elem": {
                                    "val": {"concat": ["192.0.2.10", "tcp", "198.51.100.7", 23]},
                                    "expires": 3500,
                                }
                            },
                        ],
                    }
                }
            ]
        }
    )
    result = fleet.ok("segment", "detect")
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["device", "source", "protocol", "destination", "port", "expires", "(s)"],
        ["cam-1", "192.0.2.10", "6", "198.51.100.7", "23", "3500"],
    ]
    assert result.stderr == "logged 1 violations as segment.violation\n"
    [event] = _list(fleet, "events", "list", "--action", "segment.violation")
    assert event["data"] == {
        "source": "192.0.2.10",
        "destination": "198.51.100.7",
        "protocol": 6,
        "destination_port": 23,
        "direction": "from-device",
    }
    nft.answers.clear()
    assert fleet.ok("segment", "detect").stderr == "no violations\n"


def test_counters_are_per_managed_address(fleet: Cli, nft: FakeNft) -> None:
    fleet.ok("segment", "bind", "cam-1", "--ipv4", "192.0.2.10", "--ipv6", "2001:db8::10")
    nft.answers[("list", "map", "inet", "fleetguard", "class4")] = json.dumps(
        {
            "nftables": [
                {
                    "map": {
                        "elem": [
                            [{"elem": {"val": "192.0.2.10", "counter": {"packets": 5, "bytes": 300}}}, 1]
                        ]
                    }
                }
            ]
        }
    )
    nft.answers[("list", "set", "inet", "fleetguard", "denied4")] = json.dumps(
        {
            "nftables": [
                {"set": {"elem": [{"elem": {"val": "192.0.2.10", "counter": {"packets": 2, "bytes": 120}}}]}}
            ]
        }
    )
    assert _list(fleet, "segment", "counters") == [
        {
            "device_id": "cam-1",
            "address": "192.0.2.10",
            "packets": 5,
            "bytes": 300,
            "denied_packets": 2,
            "denied_bytes": 120,
            "quarantine_packets": 0,
            "quarantine_bytes": 0,
        },
        {
            "device_id": "cam-1",
            "address": "2001:db8::10",
            "packets": 0,
            "bytes": 0,
            "denied_packets": 0,
            "denied_bytes": 0,
            "quarantine_packets": 0,
            "quarantine_bytes": 0,
        },
    ]
    table = fleet.ok("segment", "counters").stdout.splitlines()
    assert table[1].split() == ["cam-1", "192.0.2.10", "5", "300", "2", "120", "0", "0"]


# -- helpers ---------------------------------------------------------------------------------


def _self_signed_pem(subject: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string(subject)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START - dt.timedelta(days=1))
        .not_valid_after(START + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def _pcap(packets: list[tuple[str, int, str, int]]) -> bytes:
    """A classic pcap (Ethernet) of UDP datagrams (source, sport, destination, dport), one second apart."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for index, (source, sport, destination, dport) in enumerate(packets):
        udp = struct.pack("!HHHH", sport, dport, 8 + 4, 0) + b"ping"
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(udp),
            index,
            0,
            64,
            17,
            0,
            ipaddress.IPv4Address(source).packed,
            ipaddress.IPv4Address(destination).packed,
        )
        frame = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip + udp
        seconds = int(START.timestamp()) + index
        out.append(struct.pack("<IIII", seconds, 0, len(frame), len(frame)) + frame)
    return b"".join(out)
