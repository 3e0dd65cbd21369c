"""The device's OTA update client: check in, verify with Uptane's two repositories, install to the
inactive A/B slot, reboot, commit or roll back, and report each step.

Theory of operation (:meth:`UpdateClient.update_once`, one numbered procedure):

1. **Check in** (``POST /ota/v1/checkin``, :mod:`fleetguard.ota.wire`) with the running release and
   the director metadata version last verified (read from the cached ``timestamp.json``). The reply
   is a hint, never trusted for what to install. When it says nothing changed *and* the cached
   director timestamp has not expired, that one request is the whole check. An expired cached
   timestamp is refreshed regardless, so a server that keeps saying "no update" (a freeze) is noticed
   within the timestamp's life: ngclient then raises ``ExpiredMetadataError``.
2. **Director**: python-tuf's ``ngclient.Updater`` refreshes the device's director metadata
   (``/ota/director/devices/<id>/``; root chain, timestamp, snapshot, targets: signatures,
   thresholds, versions that never go backwards, expiry, lengths). The verified ``targets.json`` that
   ngclient wrote lists the assignment; the entry for this hardware id is taken from the Updater's
   trusted set (``get_targetinfo``). No entry, or the image that runs already: nothing to do.
   An image that was rolled back on this device is not installed again until the director assigns
   another one (``NOT_RETRIED``), so a bad release does not loop through reboots.
3. **Image repository**: its Updater refreshes and ``get_targetinfo(path)`` walks the delegations to
   the offline-signed entry. :func:`fleetguard.ota.crosscheck.verify_assignment` must accept both
   entries (same hash and length, hardware id, release counter above the installed one, the signed
   rollout scope covers this device now).
4. **Download**: a delta when the director names one, the image repository signs it, and its signed
   ``custom.fleetguard.delta`` says it goes from the running image's SHA-256 to the assigned one;
   the delta is a TUF target of its own (verified by ngclient), applied to the active slot's image
   with the output bounded by the assigned length and checked against the delta's and the
   assignment's SHA-256 (:func:`fleetguard.ota.delta.apply_delta`). A delta for another base, or one
   the image repository does not sign, is *ignored* in favour of the full image (it is only an
   optimisation, and the full image is verified the same way); a signed delta that fails to verify
   or to apply is *rejected* with its specific error. Otherwise ngclient's ``download_target``
   fetches the full image into ``downloads/`` (length-bounded, hash-checked) before anything touches
   a slot.
5. **Install**: ``begin_install`` → ``write_image`` (length and SHA-256 checked again) →
   ``mark_installed`` (read back) → ``switch``.
6. **Reboot**: this reference agent simulates it by calling
   :func:`fleetguard.agent.slots.run_boot_sequence` in-process (the bootloader's try, the health
   check, commit or rollback), and after a rollback boots the active slot again, as the bootloader's
   ``altbootcmd`` would. A real device instead reboots after ``switch``; its bootloader consumes a
   try, and the agent runs ``run_boot_sequence`` once at start-up (the boot half: health check,
   commit or rollback, and the reports).

Steps are reported (``downloading``, ``downloaded``, ``installed``, then ``rebooted``, ``healthy``,
``committed`` or ``rolled_back``) through the ``report`` callable; :func:`http_reporter` POSTs them
to ``/ota/v1/report``. A report that cannot be delivered does not stop the device's own procedure
(it must commit or roll back regardless); it is logged and listed in ``UpdateOutcome.unreported``.

Errors: anything refused from step 2 on raises the specific error, and from the moment the director
names a campaign the ``failed`` step is reported with its message. Nothing is written to the slots
before step 5, so a refusal leaves ``bootstate.json`` as it was. Verification failures raise
:class:`~fleetguard.ota.errors.UpdateRejected` naming python-tuf's exception (freeze:
``ExpiredMetadataError``; rollback of metadata: ``BadVersionNumberError``; endless data:
``DownloadLengthMismatchError``; a tampered file: ``LengthOrHashMismatchError``; a key that is not
the role's: ``UnsignedMetadataError``) or the cross-check's reason (arbitrary image, mix-and-match,
rollback of the release counter, hardware id), :class:`~fleetguard.ota.errors.ScopeViolation`
(outside the signed fraction or window), the delta's errors; transport failures raise
:class:`~fleetguard.agent.errors.TufUpdateFailed` (metadata and targets) or
:class:`~fleetguard.agent.errors.EstServerUnreachable` / ``EstRequestFailed`` (check-in, reports).

On-disk layout (``directory``, normally ``<agent state>/ota``; the slots live where ``ota.json``
says)::

    director/root.json -> root_history/N.root.json   the director's trusted root chain (ngclient)
    director/timestamp.json snapshot.json targets.json   verified director metadata for this device
    image/root.json, image/timestamp.json, ...        the image repository's, plus delegated roles
    downloads/                                        verified targets while they are installed
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from tuf.api.exceptions import DownloadError, DownloadLengthMismatchError, RepositoryError
from tuf.api.metadata import Metadata, Root, TargetFile, Targets, Timestamp
from tuf.ngclient import Updater, UpdaterConfig

from fleetguard.agent.errors import (
    AgentConfigInvalid,
    EstRequestFailed,
    EstServerUnreachable,
    SlotIoFailed,
    TufUpdateFailed,
)
from fleetguard.agent.ota_fetcher import HttpReply, HttpsFetcher
from fleetguard.agent.slots import HealthCheck, SlotImage, SlotState, SlotStore, UpdateStep, run_boot_sequence
from fleetguard.agent.transport import parse_server_url
from fleetguard.errors import FleetguardError
from fleetguard.ota.crosscheck import Assignment, TargetEntry, verify_assignment
from fleetguard.ota.delta import MAX_IMAGE_SIZE, apply_delta, parse_delta
from fleetguard.ota.errors import DeltaMismatch, UpdateRejected
from fleetguard.ota.wire import (
    CHECKIN_PATH,
    DIRECTOR_PREFIX,
    IMAGE_METADATA_PREFIX,
    IMAGE_TARGETS_PREFIX,
    MAX_BODY,
    REPORT_PATH,
    CheckIn,
    CheckInReply,
    StepReport,
)
from fleetguard.private_file import replace_private_file

__all__ = [
    "OTA_CONFIG_FILE",
    "OtaConfig",
    "Reporter",
    "UpdateClient",
    "UpdateOutcome",
    "UpdateResult",
    "bootstrap_trust",
    "http_reporter",
    "load_ota_config",
    "read_root_file",
    "save_ota_config",
]

OTA_CONFIG_FILE: Final = "ota.json"
_ROOT: Final = "root.json"
_TIMESTAMP: Final = "timestamp.json"
# ngclient's bounds: root 512 kB, timestamp 16 kB, snapshot 2 MB, targets 5 MB.
_CONFIG: Final = UpdaterConfig()
_MAX_PROBLEM_DETAIL: Final = 200
_HARDWARE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # as in fleetguard.ota.scope
_log = logging.getLogger(__name__)

Reporter = Callable[[StepReport], None]
"""Delivers one step report; raises an ``AgentError`` when it cannot."""


class UpdateResult(StrEnum):
    """How one :meth:`UpdateClient.update_once` ended (errors are raised, not returned)."""

    NO_UPDATE = "no_update"
    """The check-in said nothing changed (one request)."""
    UP_TO_DATE = "up_to_date"
    """The verified director assigns nothing, or the image that runs."""
    NOT_RETRIED = "not_retried"
    """The director assigns the image this device rolled back; it is not installed again."""
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    """The result, the director version now verified, the release concerned, and what went unreported."""

    result: UpdateResult
    director_version: int
    release: str | None
    detail: str
    unreported: tuple[str, ...] = ()


# -- configuration (ota.json in the agent's state directory) ---------------------------------------


@dataclass(frozen=True, slots=True)
class OtaConfig:
    """What ``fleetguard-agent update`` needs besides the agent's identity."""

    server_url: str
    hardware_id: str
    slots_dir: Path
    health_command: tuple[str, ...]
    health_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        parse_server_url(self.server_url)
        if not _HARDWARE_ID.fullmatch(self.hardware_id):
            raise AgentConfigInvalid(f"hardware id {self.hardware_id[:80]!r} is not a valid name")
        if not self.slots_dir.is_absolute():
            raise AgentConfigInvalid(f"the slot directory {self.slots_dir} must be an absolute path")
        if not self.health_command or not all(self.health_command):
            raise AgentConfigInvalid("the health check command is empty")
        if not 0 < self.health_timeout_s <= 3600:
            raise AgentConfigInvalid("the health check timeout must be between 0 and 3600 seconds")

    def to_bytes(self) -> bytes:
        """Return the ``ota.json`` document."""
        document = {
            "version": 1,
            "server_url": self.server_url,
            "hardware_id": self.hardware_id,
            "slots_dir": str(self.slots_dir),
            "health_command": list(self.health_command),
            "health_timeout_s": self.health_timeout_s,
        }
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, *, where: str = OTA_CONFIG_FILE) -> OtaConfig:
        """Parse ``ota.json`` strictly; raise :class:`AgentConfigInvalid` for anything else."""
        keys = {"version", "server_url", "hardware_id", "slots_dir", "health_command", "health_timeout_s"}
        try:
            document = json.loads(data)
            if not isinstance(document, dict) or set(document) != keys or document["version"] != 1:
                raise AgentConfigInvalid(f"{where} must be version 1 with exactly the keys {sorted(keys)}")
            command, timeout = document["health_command"], document["health_timeout_s"]
            texts = [document[key] for key in ("server_url", "hardware_id", "slots_dir")]
            if not all(isinstance(text, str) for text in texts):
                raise AgentConfigInvalid(f"{where}: server_url, hardware_id and slots_dir must be strings")
            if not (isinstance(command, list) and all(isinstance(arg, str) for arg in command)):
                raise AgentConfigInvalid(f"{where}: health_command must be a list of strings")
            if isinstance(timeout, bool) or not isinstance(timeout, int | float):
                raise AgentConfigInvalid(f"{where}: health_timeout_s must be a number")
            return cls(texts[0], texts[1], Path(texts[2]), tuple(command), float(timeout))
        except (ValueError, RecursionError) as exc:  # ValueError: not JSON or not UTF-8
            raise AgentConfigInvalid(f"{where} is not valid JSON: {exc}") from exc


def load_ota_config(state_dir: Path) -> OtaConfig:
    """Return ``<state_dir>/ota.json``; raise :class:`AgentConfigInvalid` if missing or invalid."""
    path = state_dir / OTA_CONFIG_FILE
    try:
        with path.open("rb") as file:
            data = file.read(MAX_BODY + 1)
    except FileNotFoundError as exc:
        raise AgentConfigInvalid(
            f"{path} is missing", hint="run `fleetguard-agent update init` first"
        ) from exc
    except OSError as exc:
        raise AgentConfigInvalid(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_BODY:
        raise AgentConfigInvalid(f"{path} is larger than {MAX_BODY} bytes")
    return OtaConfig.parse(data, where=str(path))


def save_ota_config(state_dir: Path, config: OtaConfig) -> None:
    """Write ``<state_dir>/ota.json`` atomically (mode 0600)."""
    replace_private_file(state_dir / OTA_CONFIG_FILE, config.to_bytes())


def bootstrap_trust(directory: Path, director_root: bytes, image_root: bytes) -> None:
    """Store the two initial roots under ``directory/director`` and ``directory/image``.

    Raises :class:`AgentConfigInvalid` if a root is not root metadata signed by a threshold of its
    own keys (TUF spec 5.2), or if a trusted root is already there (delete ``directory`` to
    provision again: replacing trust silently would undo every root rotation since).
    """
    pairs = ((directory / "director", director_root, "director"), (directory / "image", image_root, "image"))
    for where, data, name in pairs:
        _require_self_signed_root(data, name)
        if (where / _ROOT).exists() or (where / _ROOT).is_symlink():
            raise AgentConfigInvalid(f"{where} already trusts a {name} root")
    for where, data, _ in pairs:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        replace_private_file(where / _ROOT, data)


def read_root_file(path: Path) -> bytes:
    """Return a root metadata file's bytes (at most ngclient's root bound); raise AgentConfigInvalid."""
    try:
        return _read_bounded(path, _CONFIG.root_max_length)
    except (OSError, UpdateRejected) as exc:
        raise AgentConfigInvalid(f"cannot read the root {path}: {exc}") from exc


# -- reports ----------------------------------------------------------------------------------------


def http_reporter(fetcher: HttpsFetcher) -> Reporter:
    """Return a reporter that POSTs each step to ``/ota/v1/report`` and expects 204.

    The reporter raises :class:`EstServerUnreachable` without an answer, :class:`EstRequestFailed`
    with the problem's detail for any other status.
    """

    def report(step: StepReport) -> None:
        reply = _post(fetcher, REPORT_PATH, step.to_bytes(), "OTA report")
        if reply.status != 204:
            raise EstRequestFailed("OTA report", reply.status, _problem_detail(reply.body))

    return report


class _Progress:
    """Reports the steps of one update; a report that fails is logged and remembered."""

    def __init__(self, report: Reporter, now: Callable[[], dt.datetime], campaign: str, release: str) -> None:
        self._report, self._now = report, now
        self.campaign, self.release = campaign, release
        self.unreported: list[str] = []

    def __call__(self, step: UpdateStep, detail: str) -> None:
        try:
            self._report(StepReport(self.campaign, self.release, str(step), detail, self._now()))
        except FleetguardError as exc:
            _log.warning("could not report %s for %s: %s", step, self.release, exc)
            self.unreported.append(f"{step}: {exc}")


# -- the client -------------------------------------------------------------------------------------


class UpdateClient:
    """The update client of one device (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        device_id: str,
        hardware_id: str,
        slots: SlotStore,
        health: HealthCheck,
        fetcher: HttpsFetcher,
        base_url: str,
        report: Reporter,
        now: Callable[[], dt.datetime],
    ) -> None:
        self.directory = directory
        self.director_dir = directory / "director"
        self.image_dir = directory / "image"
        self.download_dir = directory / "downloads"
        self._device_id, self._hardware_id = device_id, hardware_id
        self._slots, self._health = slots, health
        self._fetcher, self._report, self._now = fetcher, report, now
        base = base_url.rstrip("/")
        self._director_url = f"{base}{DIRECTOR_PREFIX}{device_id}/"
        self._image_url = base + IMAGE_METADATA_PREFIX
        self._targets_url = base + IMAGE_TARGETS_PREFIX

    def bootstrap(self, director_root: bytes, image_root: bytes) -> None:
        """Trust the two repositories' initial roots (saved at provisioning).

        Raises as :func:`bootstrap_trust` does.
        """
        bootstrap_trust(self.directory, director_root, image_root)

    def director_version(self) -> int:
        """Return the version of the director timestamp last verified (0: none yet)."""
        timestamp = self._cached_timestamp()
        return 0 if timestamp is None else timestamp.version

    def check_in(self) -> CheckInReply:
        """POST the check-in; return the reply (a hint only).

        Raises :class:`EstServerUnreachable`, :class:`EstRequestFailed` (non-200), ``ReportInvalid``
        (a malformed reply), and the slot store's errors if the boot state cannot be read.
        """
        state = self._slots.read_state()
        running = state.slot(state.active).image
        assert running is not None  # the active slot is committed (checked when parsed)
        body = CheckIn(self._hardware_id, running.release, running.counter, self.director_version())
        reply = _post(self._fetcher, CHECKIN_PATH, body.to_bytes(), "OTA check-in")
        if reply.status != 200:
            raise EstRequestFailed("OTA check-in", reply.status, _problem_detail(reply.body))
        return CheckInReply.parse(reply.body)

    def update_once(self) -> UpdateOutcome:
        """Run the whole procedure once; return how it ended or raise the specific error."""
        reply = self.check_in()
        verified = self.director_version()
        if not reply.update and not self._director_stale():
            return UpdateOutcome(UpdateResult.NO_UPDATE, verified, None, "the server has nothing new")
        # A reply naming a version below the verified one is only a hint: TUF decides. It refuses a
        # rollback, and accepts a lower version after a key rotation that undoes a fast-forward
        # attack (TUF spec 5.3.11), which refusing here would make impossible to recover from.
        entry = self._director_entry()
        version = self.director_version()
        if entry is None:
            return UpdateOutcome(
                UpdateResult.UP_TO_DATE, version, None, f"no image assigned to {self._hardware_id}"
            )
        state = self._slots.read_state()
        running, inactive = state.slot(state.active).image, state.slot(state.inactive)
        assert running is not None
        sha256 = entry.hashes.get("sha256")
        if sha256 == running.sha256:
            return UpdateOutcome(UpdateResult.UP_TO_DATE, version, running.release, "the assigned image runs")
        if inactive.state is SlotState.INVALID and inactive.image and inactive.image.sha256 == sha256:
            return UpdateOutcome(
                UpdateResult.NOT_RETRIED, version, inactive.image.release, inactive.reason or "rolled back"
            )
        campaign = _fleetguard_field(entry, "campaign")
        progress = _Progress(self._report, self._now, campaign or "unknown", entry.path[:128])
        try:
            outcome = self._install(entry, running, progress)
        except FleetguardError as exc:
            progress(UpdateStep.FAILED, str(exc))
            raise
        return UpdateOutcome(
            outcome.result, version, outcome.release, outcome.detail, tuple(progress.unreported)
        )

    # -- the steps ----------------------------------------------------------------------------------

    def _director_entry(self) -> TargetFile | None:
        updater = self._updater(self.director_dir, self._director_url, None)
        with _translated("director metadata"):
            updater.refresh()
            paths = [
                path
                for path, target in _verified_targets(self.director_dir).items()
                if _fleetguard_field(target, "hardware_id") == self._hardware_id
            ]
            if len(paths) > 1:
                raise UpdateRejected(f"the director assigns {len(paths)} images to {self._hardware_id}")
            return updater.get_targetinfo(paths[0]) if paths else None

    def _install(self, entry: TargetFile, running: SlotImage, progress: _Progress) -> UpdateOutcome:
        updater = self._updater(self.image_dir, self._image_url, self._targets_url)
        with _translated("image repository metadata"):
            updater.refresh()
            image_entry = updater.get_targetinfo(entry.path)
        if image_entry is None:
            raise UpdateRejected(
                f"the image repository does not sign {entry.path} (arbitrary image from the director)"
            )
        state = self._slots.read_state()
        assignment = verify_assignment(
            _target_entry(entry),
            _target_entry(image_entry),
            device_id=self._device_id,
            hardware_id=self._hardware_id,
            installed_counter=max(running.counter, state.min_release_counter),
            now=self._now(),
        )
        progress.release = assignment.release
        self.download_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.download_dir) as scratch:
            delta = self._delta_source(updater, assignment, running)
            progress(UpdateStep.DOWNLOADING, f"{assignment.path} ({'delta' if delta else 'full image'})")
            source = self._download(
                updater, image_entry, delta, assignment=assignment, running=running, scratch=Path(scratch)
            )
            progress(UpdateStep.DOWNLOADED, f"{assignment.length} bytes, sha256 {assignment.sha256}")
            self._slots.begin_install(
                assignment.release, assignment.release_counter, assignment.sha256, assignment.length
            )
            self._slots.write_image(source)
        self._slots.mark_installed()
        progress(UpdateStep.INSTALLED, f"{assignment.release} in slot {state.inactive}")
        self._slots.switch()
        return self._reboot(assignment, progress)

    def _reboot(self, assignment: Assignment, progress: _Progress) -> UpdateOutcome:
        # Simulated: a real device reboots here and runs run_boot_sequence at start-up.
        state = run_boot_sequence(self._slots, self._health, progress)
        active = state.slot(state.active).image
        if active is not None and active.sha256 == assignment.sha256:
            return UpdateOutcome(
                UpdateResult.COMMITTED, 0, assignment.release, f"rollback counter {state.min_release_counter}"
            )
        reason = state.slot(state.inactive).reason or "rolled back"
        if state.booted is not state.active:
            self._slots.boot()  # the bootloader starts the active slot again after the rollback
        return UpdateOutcome(UpdateResult.ROLLED_BACK, 0, assignment.release, reason)

    def _delta_source(
        self, updater: Updater, assignment: Assignment, running: SlotImage
    ) -> TargetFile | None:
        """Return the delta target to use, or ``None`` for the full image (see the module docstring)."""
        if assignment.delta_path is None or running.length > MAX_IMAGE_SIZE:
            return None
        with _translated("image repository metadata"):
            delta = updater.get_targetinfo(assignment.delta_path)
        fields = None if delta is None else delta.custom.get("fleetguard")
        signed = fields.get("delta") if isinstance(fields, Mapping) else None
        if (
            delta is None
            or not isinstance(signed, Mapping)
            or signed.get("from_sha256") != running.sha256
            or signed.get("to_sha256") != assignment.sha256
        ):
            _log.info("delta %s does not apply to the running image: full image", assignment.delta_path)
            return None
        return delta

    def _download(
        self,
        updater: Updater,
        image: TargetFile,
        delta: TargetFile | None,
        *,
        assignment: Assignment,
        running: SlotImage,
        scratch: Path,
    ) -> Path | list[bytes]:
        if delta is None:
            with _translated(f"image {image.path}"):
                return Path(updater.download_target(image, str(scratch / "image")))
        with _translated(f"delta {delta.path}"):
            path = Path(updater.download_target(delta, str(scratch / "delta")))
        parsed = parse_delta(_read_bounded(path, delta.length))
        if parsed.target_sha256 != assignment.sha256 or parsed.target_length != assignment.length:
            raise DeltaMismatch(f"delta {delta.path} does not produce {assignment.path}")
        try:
            base = _read_bounded(self._slots.active_image_path(), running.length)
        except OSError as exc:
            raise SlotIoFailed(f"cannot read the running image: {exc.strerror}") from exc
        return [apply_delta(base, parsed, max_output=assignment.length)]

    def _updater(self, directory: Path, metadata_url: str, targets_url: str | None) -> Updater:
        if not (directory / _ROOT).exists():
            raise AgentConfigInvalid(
                f"no trusted root in {directory}", hint="run `fleetguard-agent update init` first"
            )
        with _translated(f"trusted metadata in {directory}"):
            return Updater(
                str(directory),
                metadata_url,
                str(self.download_dir),
                targets_url,
                fetcher=self._fetcher,
                config=_CONFIG,
                bootstrap=None,
            )

    def _cached_timestamp(self) -> Timestamp | None:
        try:
            data = _read_bounded(self.director_dir / _TIMESTAMP, _CONFIG.timestamp_max_length)
            metadata = Metadata[Timestamp].from_bytes(data)
        except (OSError, RepositoryError):  # none yet, or unreadable: ngclient replaces it
            return None
        return metadata.signed if isinstance(metadata.signed, Timestamp) else None

    def _director_stale(self) -> bool:
        """Whether the cached director timestamp is expired or unreadable (then refresh regardless)."""
        if not (self.director_dir / _TIMESTAMP).exists():
            return False
        timestamp = self._cached_timestamp()
        return timestamp is None or timestamp.is_expired(self._now())


# -- helpers of the client --------------------------------------------------------------------------


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Translate python-tuf's errors: a refusal is :class:`UpdateRejected`, a failure TufUpdateFailed."""
    try:
        yield
    except (RepositoryError, DownloadLengthMismatchError) as exc:  # verification refused the data
        raise UpdateRejected(f"{what} refused ({type(exc).__name__}): {_one_line(exc)}") from exc
    except (DownloadError, OSError, ValueError) as exc:  # no data: network, HTTP status, local files
        raise TufUpdateFailed(what, f"{type(exc).__name__}: {_one_line(exc)}") from exc


def _verified_targets(directory: Path) -> Mapping[str, TargetFile]:
    """Return the targets of the ``targets.json`` that ngclient verified and wrote in ``directory``."""
    data = _read_bounded(directory / "targets.json", _CONFIG.targets_max_length)
    metadata = Metadata[Targets].from_bytes(data)
    if not isinstance(metadata.signed, Targets):
        raise UpdateRejected(f"{directory / 'targets.json'} is not targets metadata")
    return metadata.signed.targets


def _fleetguard_field(target: TargetFile, name: str) -> str | None:
    fields = target.custom.get("fleetguard")
    value = fields.get(name) if isinstance(fields, Mapping) else None
    return value if isinstance(value, str) else None


def _target_entry(target: TargetFile) -> TargetEntry:
    custom: Mapping[str, Any] = target.custom
    return TargetEntry(target.path, target.length, dict(target.hashes), custom)


def _require_self_signed_root(data: bytes, name: str) -> None:
    # TUF spec 5.2: the trusted root must be root metadata with a threshold of its own signatures.
    try:
        metadata = Metadata[Root].from_bytes(data)
        if not isinstance(metadata.signed, Root):
            raise AgentConfigInvalid(f"the {name} root is {metadata.signed.type} metadata, not root")
        metadata.signed.verify_delegate(Root.type, metadata.signed_bytes, metadata.signatures)
    except RepositoryError as exc:
        raise AgentConfigInvalid(f"the {name} root is not a self-signed TUF root: {_one_line(exc)}") from exc


def _post(fetcher: HttpsFetcher, path: str, body: bytes, what: str) -> HttpReply:
    try:
        return fetcher.post(path, body, max_length=MAX_BODY)
    except DownloadError as exc:
        raise EstServerUnreachable(
            f"{what}: no answer from {fetcher.origin}: {_one_line(exc)}",
            hint="check the server URL, the network and the trust anchors",
        ) from exc


def _problem_detail(body: bytes) -> str:
    """Return an RFC 9457 problem's ``detail`` (or the start of the body) as one line."""
    try:
        problem = json.loads(body)
        detail = problem.get("detail") if isinstance(problem, dict) else None
    except ValueError:
        detail = None
    text = detail if isinstance(detail, str) else body[:_MAX_PROBLEM_DETAIL].decode(errors="replace")
    return " ".join(text.split())[:_MAX_PROBLEM_DETAIL] or "no detail"


def _read_bounded(path: Path, limit: int) -> bytes:
    with path.open("rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise UpdateRejected(f"{path} is larger than the {limit} bytes expected")
    return data


def _one_line(exc: BaseException) -> str:
    return " ".join((str(exc) or type(exc).__name__).split())
