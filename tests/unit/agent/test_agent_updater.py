"""UpdateClient end to end: real image repository and director, a local HTTP server, A/B slot files.

The server speaks the device protocol (check-in replies "update" when the director version differs;
reports are recorded) and serves both repositories' static files; a test can replace what one URL
serves. Each attack test asserts the exact error and that ``bootstate.json`` did not change.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from fleetguard.agent.ota_fetcher import HttpsFetcher
from fleetguard.agent.slots import HealthResult, HealthStatus, SlotName, SlotState, SlotStore, UpdateStep
from fleetguard.agent.updater import (
    OtaConfig,
    UpdateClient,
    UpdateResult,
    http_reporter,
    load_ota_config,
    save_ota_config,
)
from fleetguard.errors import FleetguardError
from fleetguard.ota.delta import DeltaMethod, build_delta
from fleetguard.ota.director import Director, DirectorTarget
from fleetguard.ota.errors import ScopeViolation, UpdateRejected
from fleetguard.ota.keys import generate_key_file, load_signer
from fleetguard.ota.repository import RoleKeys, TufRepository, add_delegation, target_file_path
from fleetguard.ota.scope import PPM, RolloutScope, device_bucket
from fleetguard.ota.wire import CheckIn, CheckInReply, StepReport

DEVICE = "dev-1"
HW = "hw-1"
SALT = "00112233445566778899aabbccddeeff"
V1 = bytes(range(256)) * 256
V2 = V1[:1000] + b"release two" + V1[1011:]
V3 = V2[:5000] + b"release three" + V2[5013:]
OLD = V1[:2000] + b"release zero" + V1[2012:]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _signer(directory: Path, name: str) -> Signer:
    path = directory / f"{name}.pem"
    generate_key_file(path)
    return load_signer(path)


def _scope(campaign: str, fraction_ppm: int = PPM, hardware: str = HW) -> dict[str, object]:
    now = _now()
    return RolloutScope(
        campaign, fraction_ppm, SALT, (hardware,), now - dt.timedelta(days=1), now + dt.timedelta(days=30)
    ).to_custom()


class Clock:
    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return _now() + self.offset


class Health:
    def __init__(self, status: HealthStatus = HealthStatus.HEALTHY) -> None:
        self.status = status

    def check(self) -> HealthResult:
        return HealthResult(self.status, f"test says {self.status}")


@dataclass
class Served:
    """What the server answered: every request's method, path and reply size; the reports."""

    requests: list[tuple[str, str, int]] = field(default_factory=list)
    reports: list[StepReport] = field(default_factory=list)


@dataclass
class World:
    tmp: Path
    image: TufRepository
    director: Director
    release_signer: dict[str, Signer]
    image_online: tuple[Signer, Signer]
    store: SlotStore
    health: Health
    served: Served = field(default_factory=Served)
    overrides: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]] = field(default_factory=dict)
    checkin_reply: CheckInReply | None = None
    director_clock: Clock = field(default_factory=Clock)
    client: UpdateClient | None = None

    def publish(self, path: str, data: bytes, fleetguard: Mapping[str, object]) -> TargetFile:
        source = self.tmp / "upload"
        source.write_bytes(data)
        target = self.image.add_target(path, source, custom={"fleetguard": fleetguard})
        role = path.split("/", 1)[0]
        self.image.update_targets(
            role, lambda targets: targets.targets.__setitem__(path, target), [self.release_signer[role]]
        )
        return target

    def release(self, name: str, counter: int, data: bytes, *, scopes: list[dict[str, object]]) -> TargetFile:
        path = f"{HW}/{name}/fw.img"
        custom = {"release": name, "release_counter": counter, "hardware_ids": [HW], "scopes": scopes}
        return self.publish(path, data, custom)

    def assign(self, target: TargetFile, *, counter: int, campaign: str = "c1", **changes: object) -> None:
        fields: dict[str, object] = {
            "path": target.path,
            "length": target.length,
            "sha256": target.hashes["sha256"],
            "hardware_id": HW,
            "release_counter": counter,
            "campaign": campaign,
        }
        fields.update(changes)
        self.director.assign(DEVICE, [DirectorTarget(**fields)])  # type: ignore[arg-type]

    def state_bytes(self) -> bytes:
        return self.store.state_path.read_bytes()

    def steps(self) -> list[str]:
        return [report.step for report in self.served.reports]


class _Handler(http.server.BaseHTTPRequestHandler):
    world: World

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        override = self.world.overrides.get(path)
        if override is not None:
            self.world.served.requests.append(("GET", path, -1))
            override(self)
            return
        file = self._file(path)
        if file is None or not file.is_file():
            self._reply(404, b"")
            return
        self._reply(200, file.read_bytes())

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if path == "/ota/v1/checkin":
            checkin = CheckIn.parse(body)
            version = self.world.director.current_version(DEVICE)
            reply = self.world.checkin_reply or CheckInReply(version != checkin.director_version, version)
            self._reply(200, reply.to_bytes())
        elif path == "/ota/v1/report":
            self.world.served.reports.append(StepReport.parse(body))
            self._reply(204, b"")
        else:
            self._reply(404, b"")

    def _file(self, path: str) -> Path | None:
        if ".." in path.split("/"):
            return None
        if path.startswith(prefix := f"/ota/director/devices/{DEVICE}/"):
            return self.world.director.device_file(DEVICE, path.removeprefix(prefix))
        if path.startswith(prefix := "/ota/image/metadata/"):
            return self.world.image.metadata_dir / path.removeprefix(prefix)
        if path.startswith(prefix := "/ota/image/targets/"):
            return self.world.image.targets_dir / path.removeprefix(prefix)
        return None

    def _reply(self, status: int, body: bytes) -> None:
        self.world.served.requests.append((self.command, urllib.parse.urlsplit(self.path).path, len(body)))
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _delegate(image: TufRepository, targets_key: Signer, role: str, release_key: Signer) -> None:
    def change(targets: Targets) -> None:
        # TUF spec 4.5: a "*" matches one path segment, so "<hw>/*/*" covers "<hw>/<release>/<file>".
        add_delegation(targets, role, RoleKeys((release_key.public_key,), 1), [f"{role}/*/*"])

    image.update_targets("targets", change, [targets_key])


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    keys = tmp_path / "keys"
    keys.mkdir()
    signers = {name: _signer(keys, name) for name in ("root", "targets", "snap", "time", HW, "hw-2")}
    image = TufRepository(
        tmp_path / "image", snapshot_signer=signers["snap"], timestamp_signer=signers["time"], clock=_now
    )
    image.create(
        root=RoleKeys((signers["root"].public_key,), 1),
        targets=RoleKeys((signers["targets"].public_key,), 1),
        root_signers=[signers["root"]],
        targets_signers=[signers["targets"]],
    )
    for role in (HW, "hw-2"):
        _delegate(image, signers["targets"], role, signers[role])
    director_signers = {
        name: _signer(keys, f"director-{name}") for name in ("root", "targets", "snap", "time")
    }
    clock = Clock()
    director = Director(
        tmp_path / "director",
        targets_signer=director_signers["targets"],
        snapshot_signer=director_signers["snap"],
        timestamp_signer=director_signers["time"],
        clock=clock,
    )
    director.create(
        root=RoleKeys((director_signers["root"].public_key,), 1), root_signers=[director_signers["root"]]
    )
    store = SlotStore.initialize(tmp_path / "slots", V1, "1.0", 2)
    world = World(
        tmp_path, image, director, {HW: signers[HW], "hw-2": signers["hw-2"]},
        (signers["snap"], signers["time"]), store, Health(), director_clock=clock,
    )  # fmt: skip
    handler = type("Handler", (_Handler,), {"world": world})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fetcher = HttpsFetcher.insecure_plain_http(f"http://127.0.0.1:{server.server_address[1]}")
    world.client = UpdateClient(
        tmp_path / "ota",
        device_id=DEVICE,
        hardware_id=HW,
        slots=store,
        health=world.health,
        fetcher=fetcher,
        base_url=fetcher.origin,
        report=http_reporter(fetcher),
        now=_now,
    )
    world.client.bootstrap(
        (director.repository.metadata_dir / "1.root.json").read_bytes(),
        (image.metadata_dir / "1.root.json").read_bytes(),
    )
    try:
        yield world
    finally:
        server.shutdown()
        server.server_close()


def _client(world: World) -> UpdateClient:
    assert world.client is not None
    return world.client


def _refused(world: World, error: type[FleetguardError], match: str) -> None:
    """Run an update that must be refused: the error, the failed report, the slots untouched."""
    before = _slot_files(world)
    with pytest.raises(error, match=match):
        _client(world).update_once()
    assert _slot_files(world) == before


def _slot_files(world: World) -> dict[str, bytes]:
    """Return ``bootstate.json`` and the slot images."""
    return {path.name: path.read_bytes() for path in world.store.directory.iterdir()}


# -- the procedure ---------------------------------------------------------------------------------


def test_an_update_is_installed_rebooted_and_committed(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[_scope("c1")])
    world.assign(target, counter=3)

    outcome = _client(world).update_once()

    assert (outcome.result, outcome.release, outcome.director_version) == (UpdateResult.COMMITTED, "2.0", 1)
    assert outcome.unreported == ()
    state = world.store.read_state()
    assert (state.active, state.booted, state.min_release_counter) == (SlotName.B, SlotName.B, 3)
    assert world.store.image_path(SlotName.B).read_bytes() == V2
    assert world.steps() == ["downloading", "downloaded", "installed", "rebooted", "healthy", "committed"]
    assert {(r.campaign, r.release) for r in world.served.reports} == {("c1", "2.0")}


def test_no_update_is_one_request_of_less_than_a_kilobyte(world: World) -> None:
    world.assign(world.release("2.0", 3, V2, scopes=[_scope("c1")]), counter=3)
    _client(world).update_once()
    world.served.requests.clear()

    outcome = _client(world).update_once()

    assert outcome.result is UpdateResult.NO_UPDATE
    assert len(world.served.requests) == 1
    method, path, size = world.served.requests[0]
    assert (method, path) == ("POST", "/ota/v1/checkin")
    assert size < 1024


def test_a_failed_health_check_rolls_back_and_is_not_retried(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[_scope("c1")])
    world.assign(target, counter=3)
    world.health.status = HealthStatus.UNHEALTHY

    outcome = _client(world).update_once()

    assert (outcome.result, outcome.detail) == (UpdateResult.ROLLED_BACK, "test says unhealthy")
    state = world.store.read_state()
    assert (state.active, state.booted, state.min_release_counter) == (SlotName.A, SlotName.A, 2)
    assert state.b.state is SlotState.INVALID
    assert world.steps()[-2:] == [UpdateStep.REBOOTED, UpdateStep.ROLLED_BACK]
    world.assign(target, counter=3)  # the director renews the same assignment
    assert _client(world).update_once().result is UpdateResult.NOT_RETRIED


def test_nothing_assigned_is_up_to_date(world: World) -> None:
    world.director.assign(DEVICE, [])
    outcome = _client(world).update_once()
    assert (outcome.result, outcome.director_version) == (UpdateResult.UP_TO_DATE, 1)
    assert world.served.reports == []


# -- attacks: each refused with its error, the slots untouched ---------------------------------------


def test_arbitrary_image_the_image_repository_never_signed_is_rejected(world: World) -> None:
    world.release("2.0", 3, V2, scopes=[_scope("c1")])
    evil = b"evil" * 1000
    world.director.assign(DEVICE, [DirectorTarget(f"{HW}/evil/fw.img", len(evil), _sha(evil), HW, 3, "c1")])
    _refused(world, UpdateRejected, "does not sign hw-1/evil/fw.img .arbitrary image")
    assert world.steps() == ["failed"]


def test_arbitrary_hash_under_a_signed_path_is_rejected(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[_scope("c1")])
    evil = b"x" * len(V2)
    world.assign(target, counter=3, sha256=_sha(evil))
    _refused(world, UpdateRejected, "does not sign hw-1/2.0/fw.img with that hash and length")


def test_mix_and_match_of_two_releases_is_rejected(world: World) -> None:
    two = world.release("2.0", 3, V2, scopes=[_scope("c1")])
    three = world.release("3.0", 4, V3, scopes=[_scope("c1")])
    world.assign(three, counter=4, sha256=two.hashes["sha256"], length=two.length)
    _refused(world, UpdateRejected, "mix-and-match")


def test_rollback_to_a_lower_release_counter_is_rejected(world: World) -> None:
    old = world.release("0.9", 1, OLD, scopes=[_scope("c1")])
    world.assign(old, counter=1)
    _refused(world, UpdateRejected, r"release counter 1 is not above the installed 2 \(rollback refused\)")


def test_director_exceeding_the_signed_rollout_fraction_is_rejected(world: World) -> None:
    assert device_bucket(SALT, DEVICE) > 0  # so that a 1 ppm scope excludes it
    target = world.release("2.0", 3, V2, scopes=[_scope("c1"), _scope("tiny", fraction_ppm=1)])
    world.assign(target, counter=3, campaign="tiny")
    _refused(world, ScopeViolation, "outside the signed fraction of campaign tiny")


def test_image_for_other_hardware_is_rejected(world: World) -> None:
    other = world.publish(
        "hw-2/2.0/fw.img", V2, {"release": "2.0", "release_counter": 3, "hardware_ids": ["hw-2"],
                                "scopes": [_scope("c1", hardware="hw-2")]},
    )  # fmt: skip
    world.assign(other, counter=3)
    _refused(world, UpdateRejected, "does not approve hw-2/2.0/fw.img for hw-1")


def test_freeze_with_an_expired_director_timestamp_is_noticed(world: World) -> None:
    world.director_clock.offset = -dt.timedelta(days=2)  # the timestamp lives a day: expired when served
    world.assign(world.release("2.0", 3, V2, scopes=[_scope("c1")]), counter=3)
    _refused(world, UpdateRejected, r"director metadata refused \(ExpiredMetadataError\)")
    assert world.served.reports == []  # no campaign is known before the director verified

    # The server now says "nothing new" for the version cached: the expired cache is refreshed anyway.
    world.served.requests.clear()
    _refused(world, UpdateRejected, "ExpiredMetadataError")
    assert len(world.served.requests) > 1


def test_director_version_going_backwards_is_rejected(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[_scope("c1")])
    world.assign(target, counter=3)
    first = (world.director.devices_dir / DEVICE / "timestamp.json").read_bytes()
    world.assign(target, counter=3)
    assert _client(world).update_once().result is UpdateResult.COMMITTED
    assert _client(world).director_version() == 2
    (world.director.devices_dir / DEVICE / "timestamp.json").write_bytes(first)

    _refused(world, UpdateRejected, r"director metadata version 1, below the verified 2 \(rollback")
    world.checkin_reply = CheckInReply(True, 3)  # a server that lies about the version as well
    _refused(world, UpdateRejected, r"director metadata refused \(BadVersionNumberError\)")


def test_endless_data_is_cut_at_the_signed_length(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[_scope("c1")])
    world.assign(target, counter=3)
    url = "/ota/image/targets/" + target_file_path(target.path, target.hashes["sha256"])
    sent: list[int] = []

    def endless(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.end_headers()  # no Content-Length: the body ends when the connection closes
        try:
            for _ in range(1024):
                handler.wfile.write(V2[:65536])
                sent.append(65536)
        except OSError:
            pass  # the client hung up, as it should

    world.overrides[url] = endless
    _refused(world, UpdateRejected, r"image hw-1/2.0/fw.img refused \(DownloadLengthMismatchError\)")
    assert world.steps() == ["downloading", "failed"]


def test_a_tampered_image_on_the_server_is_rejected(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[_scope("c1")])
    world.assign(target, counter=3)
    stored = world.image.targets_dir / target_file_path(target.path, target.hashes["sha256"])
    stored.write_bytes(b"X" + V2[1:])
    _refused(world, UpdateRejected, r"image hw-1/2.0/fw.img refused \(LengthOrHashMismatchError\)")


def test_stolen_online_keys_cannot_sign_an_image(world: World) -> None:
    world.release("2.0", 3, V2, scopes=[_scope("c1")])
    evil = b"evil" * 1000
    snapshot_key, timestamp_key = world.image_online
    metadata = world.image.metadata_dir
    versions = {name: meta.version for name, meta in _current_snapshot(metadata).signed.meta.items()}
    role = Targets.from_dict(world.image.targets(HW).signed.to_dict())
    role.version += 1
    role.targets[f"{HW}/evil/fw.img"] = TargetFile(
        len(evil), {"sha256": _sha(evil)}, f"{HW}/evil/fw.img",
        {"custom": {"fleetguard": {"release": "6.6", "release_counter": 9, "hardware_ids": [HW],
                                   "scopes": [_scope("c1")]}}},
    )  # fmt: skip
    versions[f"{HW}.json"] = role.version
    timestamp = Metadata[Timestamp].from_file(str(metadata / "timestamp.json")).signed
    snapshot = Snapshot(
        version=timestamp.snapshot_meta.version + 1,
        expires=_now() + dt.timedelta(days=1),
        meta={name: MetaFile(version) for name, version in versions.items()},
    )
    new_timestamp = Timestamp(
        timestamp.version + 1, None, _now() + dt.timedelta(days=1), MetaFile(snapshot.version)
    )
    for signed, signer, name in (
        (role, snapshot_key, f"{role.version}.{HW}.json"),  # the release role's key is offline: not stolen
        (snapshot, snapshot_key, f"{snapshot.version}.snapshot.json"),
        (new_timestamp, timestamp_key, "timestamp.json"),
    ):
        document: Metadata[Any] = Metadata(signed)
        document.sign(signer)
        (metadata / name).write_bytes(document.to_bytes(JSONSerializer()))
    world.director.assign(DEVICE, [DirectorTarget(f"{HW}/evil/fw.img", len(evil), _sha(evil), HW, 9, "c1")])
    _refused(world, UpdateRejected, r"image repository metadata refused \(UnsignedMetadataError\)")


def _current_snapshot(metadata: Path) -> Metadata[Snapshot]:
    timestamp = Metadata[Timestamp].from_file(str(metadata / "timestamp.json")).signed
    return Metadata[Snapshot].from_file(str(metadata / f"{timestamp.snapshot_meta.version}.snapshot.json"))


# -- deltas ------------------------------------------------------------------------------------------


def _delta(world: World, base: bytes, new: bytes, name: str) -> TargetFile:
    delta = build_delta(DeltaMethod.ZSTD, base, new)
    custom = {"delta": {"from_sha256": _sha(base), "to_sha256": _sha(new), "method": str(delta.method)}}
    return world.publish(f"{HW}/deltas/{name}.delta", delta.to_bytes(), custom)


def _fetched(world: World) -> list[str]:
    return [path for method, path, _ in world.served.requests if path.startswith("/ota/image/targets/")]


def test_a_delta_from_the_running_image_is_applied(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[_scope("c1")])
    delta = _delta(world, V1, V2, "1-2")
    assert delta.length < len(V2)
    world.assign(target, counter=3, delta_path=delta.path)

    assert _client(world).update_once().result is UpdateResult.COMMITTED

    assert world.store.image_path(SlotName.B).read_bytes() == V2
    assert _fetched(world) == ["/ota/image/targets/" + target_file_path(delta.path, delta.hashes["sha256"])]
    assert world.served.reports[0].detail == "hw-1/2.0/fw.img (delta)"


def test_a_delta_for_another_base_is_ignored_for_the_full_image(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[_scope("c1")])
    delta = _delta(world, OLD, V2, "0-2")
    world.assign(target, counter=3, delta_path=delta.path)

    assert _client(world).update_once().result is UpdateResult.COMMITTED

    assert world.store.image_path(SlotName.B).read_bytes() == V2
    assert _fetched(world) == ["/ota/image/targets/" + target_file_path(target.path, target.hashes["sha256"])]


def test_a_tampered_delta_is_rejected(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[_scope("c1")])
    delta = _delta(world, V1, V2, "1-2")
    stored = world.image.targets_dir / target_file_path(delta.path, delta.hashes["sha256"])
    stored.write_bytes(stored.read_bytes()[:-1] + b"\x00")
    world.assign(target, counter=3, delta_path=delta.path)
    _refused(world, UpdateRejected, r"delta hw-1/deltas/1-2.delta refused \(LengthOrHashMismatchError\)")


# -- configuration -----------------------------------------------------------------------------------


def test_bootstrap_refuses_to_replace_a_trusted_root(world: World) -> None:
    root = (world.image.metadata_dir / "1.root.json").read_bytes()
    with pytest.raises(FleetguardError, match="already trusts a director root"):
        _client(world).bootstrap(root, root)


def test_the_ota_configuration_round_trips_and_is_strict(tmp_path: Path) -> None:
    config = OtaConfig("https://fleet.example.org:8443", HW, tmp_path / "slots", ("/bin/true",), 30.0)
    save_ota_config(tmp_path, config)
    assert load_ota_config(tmp_path) == config
    (tmp_path / "ota.json").write_text('{"version": 1}')
    with pytest.raises(FleetguardError, match="exactly the keys"):
        load_ota_config(tmp_path)


def test_update_init_saves_the_configuration_and_trusts_the_roots(world: World, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fleetguard.agent.main import app

    director_root, image_root = tmp_path / "director-root.json", tmp_path / "image-root.json"
    director_root.write_bytes((world.director.repository.metadata_dir / "1.root.json").read_bytes())
    image_root.write_bytes((world.image.metadata_dir / "1.root.json").read_bytes())
    state_dir = tmp_path / "agent"
    arguments = [
        "update", "init", "--state-dir", str(state_dir), "--server", "https://fleet.example.org:8443",
        "--hardware-id", HW, "--slots", str(world.store.directory), "--health-cmd", "/bin/true --quiet",
        "--director-root", str(director_root), "--image-root", str(image_root),
    ]  # fmt: skip
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    config = load_ota_config(state_dir)
    assert (config.hardware_id, config.health_command) == (HW, ("/bin/true", "--quiet"))
    assert (state_dir / "ota" / "director" / "root.json").read_bytes() == director_root.read_bytes()
    again = CliRunner().invoke(app, arguments)
    assert again.exit_code == 1
