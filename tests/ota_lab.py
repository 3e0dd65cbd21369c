"""An OTA lab for tests: a real image repository and director served over HTTP to one device's update
client, with A/B slot files.

:func:`open_world` builds it in a test's folder. The image repository (:class:`TufRepository`) has
offline root and targets keys, the online snapshot and timestamp keys, and a release role per
hardware id delegated ``<hw>/*/*`` (TUF spec 4.5: a ``*`` is one path segment, so the role covers
``<hw>/<release>/<file>`` and ``<hw>/deltas/<file>``). The :class:`Director` signs each device's
metadata with its online keys. A ``ThreadingHTTPServer`` on 127.0.0.1 speaks the device protocol
(the check-in replies "update" when the director version differs, unless a test sets
:attr:`World.checkin_reply`; reports are recorded) and serves both repositories' files; a test can
replace what one URL serves (:attr:`World.overrides`, e.g. with :func:`serve` or
:func:`endless_body`), which is how attackers on the network or on the server are played.

Every key, and a clock for each party (image repository, director, device), is in the
:class:`World`, so that a test can sign what an attacker holding a key would sign (:func:`sign`) or
date metadata so that it is already expired for python-tuf's real clock. :func:`refused` runs an
update that must be refused and checks that nothing was installed.
"""

from __future__ import annotations

import contextlib
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
from tuf.api.metadata import Metadata, Signed, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from fleetguard.agent.ota_fetcher import HttpsFetcher
from fleetguard.agent.slots import HealthResult, HealthStatus, SlotStore
from fleetguard.agent.updater import UpdateClient, http_reporter
from fleetguard.errors import FleetguardError
from fleetguard.ota.director import Director, DirectorTarget
from fleetguard.ota.keys import generate_key_file, load_signer
from fleetguard.ota.repository import RoleKeys, TufRepository, add_delegation, target_file_path
from fleetguard.ota.scope import PPM, RolloutScope
from fleetguard.ota.wire import (
    CHECKIN_PATH,
    DIRECTOR_PREFIX,
    IMAGE_METADATA_PREFIX,
    IMAGE_TARGETS_PREFIX,
    REPORT_PATH,
    CheckIn,
    CheckInReply,
    StepReport,
)

DEVICE = "dev-1"
HW = "hw-1"
OTHER_HW = "hw-2"
SALT = "00112233445566778899aabbccddeeff"
V1 = bytes(range(256)) * 256
"""The image the device runs at the start (release 1.0, counter 2)."""
V2 = V1[:1000] + b"release two" + V1[1011:]
V3 = V2[:5000] + b"release three" + V2[5013:]
OLD = V1[:2000] + b"release zero" + V1[2012:]

IMAGE_KEYS = ("root", "targets", "snap", "time", HW, OTHER_HW)
DIRECTOR_KEYS = ("director-root", "director-targets", "director-snap", "director-time")

Override = Callable[[http.server.BaseHTTPRequestHandler], None]
"""Answers one GET instead of the file server."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_signer(directory: Path, name: str) -> Signer:
    """Generate an Ed25519 key file ``<directory>/<name>.pem`` and return its signer."""
    path = directory / f"{name}.pem"
    generate_key_file(path)
    return load_signer(path)


def scope(
    campaign: str,
    fraction_ppm: int = PPM,
    hardware: str = HW,
    *,
    starts: dt.timedelta = -dt.timedelta(days=1),
    ends: dt.timedelta = dt.timedelta(days=30),
) -> dict[str, object]:
    """Return a signed scope's ``custom`` object: the window is ``[now + starts, now + ends)``."""
    now = utc_now()
    return RolloutScope(campaign, fraction_ppm, SALT, (hardware,), now + starts, now + ends).to_custom()


def sign(signed: Signed, *signers: Signer) -> bytes:
    """Return ``signed`` as metadata bytes signed by ``signers`` (what a key holder can publish)."""
    metadata: Metadata[Any] = Metadata(signed)
    for signer in signers:
        metadata.sign(signer, append=True)
    return metadata.to_bytes(JSONSerializer(compact=True))


def director_url(name: str) -> str:
    return f"{DIRECTOR_PREFIX}{DEVICE}/{name}"


def image_url(name: str) -> str:
    return IMAGE_METADATA_PREFIX + name


def target_url(target: TargetFile) -> str:
    return IMAGE_TARGETS_PREFIX + target_file_path(target.path, target.hashes["sha256"])


def serve(data: bytes) -> Override:
    """Answer 200 with ``data``."""

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return answer


def endless_body(chunk: bytes, *, chunks: int = 1024) -> Override:
    """Answer 200 without a Content-Length and stream ``chunk`` until the client hangs up."""

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.end_headers()  # no Content-Length: the body ends when the connection closes
        with contextlib.suppress(OSError):  # the client hung up, as it should
            for _ in range(chunks):
                handler.wfile.write(chunk)

    return answer


class Clock:
    """The real time plus an offset a test moves."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return utc_now() + self.offset


class Health:
    def __init__(self, status: HealthStatus = HealthStatus.HEALTHY) -> None:
        self.status = status

    def check(self) -> HealthResult:
        return HealthResult(self.status, f"test says {self.status}")


@dataclass
class Served:
    """What the server answered: every request's method, path and reply size (-1: overridden); reports."""

    requests: list[tuple[str, str, int]] = field(default_factory=list)
    reports: list[StepReport] = field(default_factory=list)


@dataclass
class World:
    tmp: Path
    keys: Mapping[str, Signer]
    image: TufRepository
    director: Director
    store: SlotStore
    health: Health
    client: UpdateClient
    image_clock: Clock
    director_clock: Clock
    device_clock: Clock
    served: Served = field(default_factory=Served)
    overrides: dict[str, Override] = field(default_factory=dict)
    checkin_reply: CheckInReply | None = None

    def publish(self, path: str, data: bytes, fleetguard: Mapping[str, object]) -> TargetFile:
        """Sign ``path`` in its hardware's release role (the offline release key) and return its entry."""
        source = self.tmp / "upload"
        source.write_bytes(data)
        target = self.image.add_target(path, source, custom={"fleetguard": fleetguard})
        role = path.split("/", 1)[0]
        self.image.update_targets(
            role, lambda targets: targets.targets.__setitem__(path, target), [self.keys[role]]
        )
        return target

    def release(self, name: str, counter: int, data: bytes, *, scopes: list[dict[str, object]]) -> TargetFile:
        path = f"{HW}/{name}/fw.img"
        custom = {"release": name, "release_counter": counter, "hardware_ids": [HW], "scopes": scopes}
        return self.publish(path, data, custom)

    def assign(self, target: TargetFile, *, counter: int, campaign: str = "c1", **changes: object) -> None:
        """Have the director assign ``target`` to the device (``changes`` alter the director's entry)."""
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

    @property
    def device_metadata_dir(self) -> Path:
        """Where the director keeps this device's timestamp, snapshot and targets."""
        return self.director.devices_dir / DEVICE

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
        if path == CHECKIN_PATH:
            checkin = CheckIn.parse(body)
            version = self.world.director.current_version(DEVICE)
            reply = self.world.checkin_reply or CheckInReply(version != checkin.director_version, version)
            self._reply(200, reply.to_bytes())
        elif path == REPORT_PATH:
            self.world.served.reports.append(StepReport.parse(body))
            self._reply(204, b"")
        else:
            self._reply(404, b"")

    def _file(self, path: str) -> Path | None:
        if ".." in path.split("/"):
            return None
        if path.startswith(prefix := f"{DIRECTOR_PREFIX}{DEVICE}/"):
            return self.world.director.device_file(DEVICE, path.removeprefix(prefix))
        if path.startswith(IMAGE_METADATA_PREFIX):
            return self.world.image.metadata_dir / path.removeprefix(IMAGE_METADATA_PREFIX)
        if path.startswith(IMAGE_TARGETS_PREFIX):
            return self.world.image.targets_dir / path.removeprefix(IMAGE_TARGETS_PREFIX)
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


def _image_repository(directory: Path, keys: Mapping[str, Signer], clock: Clock) -> TufRepository:
    image = TufRepository(directory, snapshot_signer=keys["snap"], timestamp_signer=keys["time"], clock=clock)
    image.create(
        root=RoleKeys((keys["root"].public_key,), 1),
        targets=RoleKeys((keys["targets"].public_key,), 1),
        root_signers=[keys["root"]],
        targets_signers=[keys["targets"]],
    )
    for role in (HW, OTHER_HW):
        _delegate(image, keys["targets"], role, keys[role])
    return image


def _director(directory: Path, keys: Mapping[str, Signer], clock: Clock) -> Director:
    director = Director(
        directory,
        targets_signer=keys["director-targets"],
        snapshot_signer=keys["director-snap"],
        timestamp_signer=keys["director-time"],
        clock=clock,
    )
    director.create(
        root=RoleKeys((keys["director-root"].public_key,), 1), root_signers=[keys["director-root"]]
    )
    return director


@contextlib.contextmanager
def open_world(tmp: Path) -> Iterator[World]:
    """Build the repositories, the slots (running release 1.0, counter 2), the server and the client."""
    key_dir = tmp / "keys"
    key_dir.mkdir()
    keys = {name: make_signer(key_dir, name) for name in IMAGE_KEYS + DIRECTOR_KEYS}
    image_clock, director_clock, device_clock = Clock(), Clock(), Clock()
    image = _image_repository(tmp / "image", keys, image_clock)
    director = _director(tmp / "director", keys, director_clock)
    store = SlotStore.initialize(tmp / "slots", V1, "1.0", 2)
    handler: type[_Handler] = type("Handler", (_Handler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    fetcher = HttpsFetcher.insecure_plain_http(f"http://127.0.0.1:{server.server_address[1]}")
    health = Health()
    client = UpdateClient(
        tmp / "ota",
        device_id=DEVICE,
        hardware_id=HW,
        slots=store,
        health=health,
        fetcher=fetcher,
        base_url=fetcher.origin,
        report=http_reporter(fetcher),
        now=device_clock,
    )
    client.bootstrap(
        (director.repository.metadata_dir / "1.root.json").read_bytes(),
        (image.metadata_dir / "1.root.json").read_bytes(),
    )
    world = World(
        tmp, keys, image, director, store, health, client, image_clock, director_clock, device_clock
    )
    handler.world = world
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield world
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def current_snapshot(metadata: Path) -> Metadata[Snapshot]:
    """Return the snapshot that ``metadata/timestamp.json`` names (consistent snapshots)."""
    timestamp = Metadata[Timestamp].from_file(str(metadata / "timestamp.json")).signed
    return Metadata[Snapshot].from_file(str(metadata / f"{timestamp.snapshot_meta.version}.snapshot.json"))


def files_under(directory: Path) -> dict[str, bytes]:
    """Return every file below ``directory`` by its relative path."""
    return {
        str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()
    }


@dataclass(frozen=True)
class Refusal:
    """An update that was refused: the error, the reports sent meanwhile, the client's files around it."""

    error: FleetguardError
    reports: list[StepReport]
    cache_before: dict[str, bytes]
    cache_after: dict[str, bytes]

    def cache_changes(self, under: str) -> set[str]:
        """Return the client's files under ``under`` (``director/``, ``image/``) added, removed or changed.

        The copy of the trusted root that ngclient files under ``root_history/`` on first use is not
        a change.
        """
        names = self.cache_before.keys() | self.cache_after.keys()
        return {
            name
            for name in names
            if name.startswith(under)
            and self.cache_before.get(name) != self.cache_after.get(name)
            and not self._root_filed(name)
        }

    def _root_filed(self, name: str) -> bool:
        repository, _, rest = name.partition("/")
        first_use = rest.startswith("root_history/") and name not in self.cache_before
        return first_use and self.cache_after.get(name) == self.cache_before.get(f"{repository}/root.json")


def refused(world: World, error: type[FleetguardError], match: str) -> Refusal:
    """Run an update that must be refused with ``error``: the slots (``bootstate.json`` and both
    images) are untouched and nothing is left under ``downloads/``."""
    slots_before = files_under(world.store.directory)
    cache_before = files_under(world.client.directory)
    reported = len(world.served.reports)
    with pytest.raises(error, match=match) as caught:
        world.client.update_once()
    assert files_under(world.store.directory) == slots_before
    cache_after = files_under(world.client.directory)
    assert not [name for name in cache_after if name.startswith("downloads/")]
    return Refusal(caught.value, world.served.reports[reported:], cache_before, cache_after)
