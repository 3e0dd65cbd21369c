"""A/B slots for over-the-air updates: two image files standing for partitions, and the boot state.

Theory of operation. The scheme is RAUC's, SWUpdate's and Mender's on U-Boot (``bootcount``,
``bootlimit``, ``altbootcmd``), with Android A/B's slot metadata (``tries_remaining``, the
successful-boot mark) and Android Verified Boot's rollback index as the anti-rollback counter.

* The device runs the *active* slot, which is always ``committed`` (known good). An update goes only
  to the other, *inactive* slot; nothing here opens the active slot's image for writing.
* The inactive slot walks through this table (:data:`_TRANSITIONS`)::

    begin_install   empty|superseded|invalid|writing|written|installed  -> writing
    write_image     writing    -> written     (bounded by the declared length, SHA-256 checked)
    mark_installed  written    -> installed   (read back from the slot and checked again)
    switch          installed  -> trying      (a pending switch with a boot counter)
    commit          trying     -> committed   (it becomes active; the old slot is superseded)
    rollback        writing|written|installed|trying  -> invalid

  A failed check in ``write_image`` or ``mark_installed`` also leaves the slot ``invalid``.
* :meth:`SlotStore.boot` is the bootloader: with a switch pending it uses one try and boots the new
  slot; once the tries are spent it rolls back ("boot counter exhausted") and boots the active slot.
  The try is recorded *before* the new slot runs, so a slot that hangs or resets still uses it up.
* :meth:`SlotStore.commit` is the successful-boot mark, made after the health check passed in the
  new slot. Only then does ``min_release_counter`` rise to the new release's counter; it never falls.
  ``begin_install`` refuses a counter below it, and the committed counter for a different image.
* Crash consistency: every change of state is one atomic replacement of ``bootstate.json`` (a
  sibling file written with mode 0600 and fsynced, ``os.replace``, then the directory fsynced), so a
  power cut leaves the old or the new state whole. The state changes only after the slot data it
  describes is on disk, and nothing but ``commit`` changes the active slot, so until ``switch`` the old
  slot is what boots, and after it the boot counter ends in a commit or a rollback. A slot that is
  not ``trying`` is never booted, so a half-written one never is.

``bootstate.json`` (strictly parsed: unknown keys, versions or values raise
:class:`~fleetguard.agent.errors.SlotStateInvalid`; the store never resets it)::

    {"version": 1, "generation": 7, "active": "a", "booted": "a", "min_release_counter": 12,
     "pending": {"target": "b", "tries_remaining": 2} | null,
     "slots": {"a": {"state": "committed", "reason": null,
                     "image": {"release": "2026.03", "counter": 12, "sha256": "<64 hex>", "length": 1024}},
               "b": {"state": "empty", "reason": null, "image": null}}}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import IO, Final, NewType, Protocol, TypeVar

from fleetguard.agent.errors import (
    AgentConfigInvalid,
    AntiRollbackRefused,
    ImageMismatch,
    ImageTooLarge,
    SlotInputInvalid,
    SlotIoFailed,
    SlotStateInvalid,
    SlotTransitionRefused,
)
from fleetguard.private_file import create_private_file

__all__ = [
    "DEFAULT_TRIES",
    "MAX_IMAGE_BYTES",
    "MAX_TRIES",
    "BootState",
    "CommandHealthCheck",
    "HealthCheck",
    "HealthResult",
    "HealthStatus",
    "PendingSwitch",
    "Report",
    "Sha256Hex",
    "Slot",
    "SlotImage",
    "SlotName",
    "SlotState",
    "SlotStore",
    "UpdateStep",
    "parse_boot_state",
    "run_boot_sequence",
    "serialize_boot_state",
]

FORMAT_VERSION: Final = 1
DEFAULT_TRIES: Final = 3
"""Boots the new slot gets before the rollback: U-Boot's usual ``bootlimit``."""
MAX_TRIES: Final = 7
"""Android A/B's ``tries_remaining`` is a 3-bit field (boot_control HAL, ``bootloader_message.h``)."""
MAX_IMAGE_BYTES: Final = 1 << 34
"""16 GiB: larger than any root file system we ship, small enough to refuse a runaway download."""
_MAX_COUNTER: Final = (1 << 63) - 1  # AVB rollback indexes are uint64; JSON readers agree on int64
_MAX_RELEASE: Final = 128
_MAX_REASON: Final = 1000
_MAX_STATE_BYTES: Final = 64 * 1024
_CHUNK: Final = 1 << 20
_STDERR_TAIL: Final = 1024
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_PRINTABLE: Final = re.compile(r"[\x20-\x7e]+")

Sha256Hex = NewType("Sha256Hex", str)
_E = TypeVar("_E", bound=StrEnum)


class SlotName(StrEnum):
    """The two slots."""

    A = "a"
    B = "b"

    @property
    def other(self) -> SlotName:
        """Return the other slot."""
        return SlotName.B if self is SlotName.A else SlotName.A


class SlotState(StrEnum):
    """Where one slot is in the update (see the module's transition table)."""

    EMPTY = "empty"
    WRITING = "writing"
    WRITTEN = "written"
    INSTALLED = "installed"
    TRYING = "trying"
    COMMITTED = "committed"
    SUPERSEDED = "superseded"
    INVALID = "invalid"


class UpdateStep(StrEnum):
    """The steps the agent reports; the values are what the server's rollout engine reads."""

    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLED = "installed"
    REBOOTED = "rebooted"
    HEALTHY = "healthy"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


Report = Callable[[UpdateStep, str], None]
"""Receives each step and a one-line detail."""


@dataclass(frozen=True, slots=True)
class SlotImage:
    """The release in a slot: its name, anti-rollback counter, SHA-256 and length in bytes."""

    release: str
    counter: int
    sha256: Sha256Hex
    length: int

    def __post_init__(self) -> None:
        if not (_PRINTABLE.fullmatch(self.release) and len(self.release) <= _MAX_RELEASE):
            raise SlotInputInvalid(f"the release name must be 1 to {_MAX_RELEASE} printable ASCII characters")
        if not (_is_int(self.counter) and 0 <= self.counter <= _MAX_COUNTER):
            raise SlotInputInvalid(f"the release counter must be an integer from 0 to {_MAX_COUNTER}")
        if not _SHA256.fullmatch(self.sha256):
            raise SlotInputInvalid("the SHA-256 must be 64 lower-case hex digits")
        if not (_is_int(self.length) and 0 < self.length <= MAX_IMAGE_BYTES):
            raise SlotInputInvalid(f"the image length must be from 1 to {MAX_IMAGE_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class Slot:
    """One slot: its state, the release in it (``None`` only when empty), why it is invalid."""

    state: SlotState
    image: SlotImage | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class PendingSwitch:
    """The slot the bootloader tries next, and how many more boots it gets (the boot counter)."""

    target: SlotName
    tries_remaining: int


@dataclass(frozen=True, slots=True)
class BootState:
    """The content of ``bootstate.json``; ``booted`` is the slot the last boot started."""

    generation: int
    active: SlotName
    booted: SlotName
    a: Slot
    b: Slot
    pending: PendingSwitch | None
    min_release_counter: int

    @property
    def inactive(self) -> SlotName:
        """Return the slot updates go to."""
        return self.active.other

    def slot(self, name: SlotName) -> Slot:
        """Return slot ``name``."""
        return self.a if name is SlotName.A else self.b

    def with_slot(self, name: SlotName, slot: Slot) -> BootState:
        """Return this state with slot ``name`` replaced."""
        return replace(self, a=slot) if name is SlotName.A else replace(self, b=slot)


# -- the transition table ---------------------------------------------------------------------------


class _Operation(StrEnum):
    INSTALL = "begin an install"
    WRITE = "write the image"
    MARK_INSTALLED = "mark the slot installed"
    SWITCH = "switch slots"
    COMMIT = "commit"
    ROLLBACK = "roll back"


_S = SlotState
_TRANSITIONS: Final[dict[_Operation, tuple[frozenset[SlotState], SlotState]]] = {
    # operation: (states of the inactive slot it starts from, the state it leaves the slot in)
    _Operation.INSTALL: (
        frozenset({_S.EMPTY, _S.SUPERSEDED, _S.INVALID, _S.WRITING, _S.WRITTEN, _S.INSTALLED}),
        _S.WRITING,
    ),
    _Operation.WRITE: (frozenset({_S.WRITING}), _S.WRITTEN),
    _Operation.MARK_INSTALLED: (frozenset({_S.WRITTEN}), _S.INSTALLED),
    _Operation.SWITCH: (frozenset({_S.INSTALLED}), _S.TRYING),
    _Operation.COMMIT: (frozenset({_S.TRYING}), _S.COMMITTED),
    _Operation.ROLLBACK: (frozenset({_S.WRITING, _S.WRITTEN, _S.INSTALLED, _S.TRYING}), _S.INVALID),
}


def _require(state: BootState, operation: _Operation) -> SlotName:
    """Return the inactive slot if ``operation`` may start from its state; raise otherwise."""
    name = state.inactive
    current = state.slot(name).state
    if current not in _TRANSITIONS[operation][0]:
        pending = "; a switch is pending: commit or roll back first" if current is _S.TRYING else ""
        raise SlotTransitionRefused(operation, f"slot {name} is {current}{pending}")
    return name


def _moved(state: BootState, operation: _Operation, name: SlotName) -> BootState:
    slot = state.slot(name)
    return state.with_slot(name, replace(slot, state=_TRANSITIONS[operation][1], reason=None))


def _require_running_active(state: BootState, operation: _Operation) -> None:
    # The running slot is never written: after a rollback the device reboots into the active one first.
    if state.booted is not state.active:
        raise SlotTransitionRefused(
            operation, f"the device runs slot {state.booted}; reboot into slot {state.active} first"
        )


# -- the pure transitions -------------------------------------------------------------------------


def _begin_install(state: BootState, image: SlotImage) -> BootState:
    target = _require(state, _Operation.INSTALL)
    _require_running_active(state, _Operation.INSTALL)
    _require_not_older(state, image)
    return state.with_slot(target, Slot(_S.WRITING, image))


def _require_not_older(state: BootState, image: SlotImage) -> None:
    if image.counter < state.min_release_counter:
        raise AntiRollbackRefused(
            f"release {image.release} has counter {image.counter}, below the device's minimum "
            f"{state.min_release_counter}",
            counter=image.counter,
            minimum=state.min_release_counter,
        )
    committed = state.slot(state.active).image
    assert committed is not None  # the active slot is committed (checked when parsed)
    if image.counter == committed.counter and image.sha256 != committed.sha256:
        raise AntiRollbackRefused(
            f"release {image.release} reuses counter {image.counter} of the committed release "
            f"{committed.release} with a different image",
            counter=image.counter,
            minimum=state.min_release_counter,
        )


def _switch(state: BootState, tries: int) -> BootState:
    if not (_is_int(tries) and 1 <= tries <= MAX_TRIES):
        raise SlotInputInvalid(f"the boot counter must be from 1 to {MAX_TRIES} tries")
    target = _require(state, _Operation.SWITCH)
    _require_running_active(state, _Operation.SWITCH)
    return replace(_moved(state, _Operation.SWITCH, target), pending=PendingSwitch(target, tries))


def _boot(state: BootState) -> BootState:
    pending = state.pending
    if pending is None:
        return replace(state, booted=state.active)
    if pending.tries_remaining == 0:  # U-Boot: bootcount > bootlimit runs altbootcmd
        return replace(_rolled_back(state, "boot counter exhausted"), booted=state.active)
    return replace(
        state, booted=pending.target, pending=replace(pending, tries_remaining=pending.tries_remaining - 1)
    )


def _commit(state: BootState) -> BootState:
    target = _require(state, _Operation.COMMIT)
    if state.booted is not target:
        raise SlotTransitionRefused(
            _Operation.COMMIT, f"slot {target} was not booted; the device runs slot {state.booted}"
        )
    image = state.slot(target).image
    assert image is not None  # a trying slot holds an image (checked when parsed)
    old = state.slot(state.active)
    committed = _moved(state, _Operation.COMMIT, target).with_slot(
        state.active, replace(old, state=_S.SUPERSEDED)
    )
    minimum = max(state.min_release_counter, image.counter)
    return replace(committed, active=target, pending=None, min_release_counter=minimum)


def _rolled_back(state: BootState, reason: str) -> BootState:
    target = _require(state, _Operation.ROLLBACK)
    reason = " ".join(reason.split())[:_MAX_REASON] or "no reason given"
    slot = replace(state.slot(target), state=_S.INVALID, reason=reason)
    return replace(state.with_slot(target, slot), pending=None)


def _invalidated(state: BootState, name: SlotName, reason: str) -> BootState:
    return state.with_slot(name, replace(state.slot(name), state=_S.INVALID, reason=reason[:_MAX_REASON]))


# -- the store --------------------------------------------------------------------------------------


class SlotStore:
    """The slots and ``bootstate.json`` in one directory; every operation reads the state from disk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.state_path = directory / "bootstate.json"

    @classmethod
    def initialize(cls, directory: Path, image: Path | bytes, release: str, counter: int) -> SlotStore:
        """Write ``image`` to slot a, active and committed, with ``counter`` as the minimum counter.

        Raises ``SlotTransitionRefused`` if the directory already has a boot state,
        ``SlotInputInvalid`` for a bad release, counter or an empty image, ``SlotIoFailed``.
        """
        store = cls(directory)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise SlotIoFailed(f"cannot create {directory}: {exc.strerror}") from exc
        if store.state_path.exists() or store.state_path.is_symlink():
            raise SlotTransitionRefused("initialize", f"{store.state_path} exists")
        chunks = _chunks(image) if isinstance(image, Path) else iter([image])
        measured = _write_slot(store.image_path(SlotName.A), chunks, MAX_IMAGE_BYTES)
        first = SlotImage(release, counter, measured.sha256, measured.length)
        slot_a, slot_b = Slot(_S.COMMITTED, first), Slot(_S.EMPTY)
        _write_state(store.state_path, BootState(1, SlotName.A, SlotName.A, slot_a, slot_b, None, counter))
        return store

    def image_path(self, name: SlotName) -> Path:
        """Return the file standing for slot ``name``'s partition."""
        return self.directory / f"slot-{name}.img"

    def active_image_path(self) -> Path:
        """Return the active slot's image file; raise as :meth:`read_state` does."""
        return self.image_path(self.read_state().active)

    def read_state(self) -> BootState:
        """Return the boot state; raise ``SlotStateInvalid`` if missing or invalid, ``SlotIoFailed``."""
        try:
            with self.state_path.open("rb") as file:
                data = file.read(_MAX_STATE_BYTES + 1)
        except FileNotFoundError as exc:
            raise SlotStateInvalid(str(self.state_path), "missing (SlotStore.initialize creates it)") from exc
        except OSError as exc:
            raise SlotIoFailed(f"cannot read {self.state_path}: {exc.strerror}") from exc
        if len(data) > _MAX_STATE_BYTES:
            raise SlotStateInvalid(str(self.state_path), f"larger than {_MAX_STATE_BYTES} bytes")
        return parse_boot_state(data, where=str(self.state_path))

    def begin_install(self, release: str, counter: int, sha256: str, length: int) -> BootState:
        """Record the release the inactive slot is about to receive.

        Raises ``SlotInputInvalid``; ``AntiRollbackRefused`` for a counter below the minimum or the
        committed counter with another image; ``SlotTransitionRefused`` while a switch is pending or
        the device runs the inactive slot.
        """
        image = SlotImage(release, counter, Sha256Hex(sha256), length)
        state = self.read_state()
        return self._save(state, _begin_install(state, image))

    def write_image(self, source: Iterable[bytes] | Path) -> BootState:
        """Stream ``source`` into the inactive slot; check its length and SHA-256.

        On a mismatch the slot is marked invalid and ``ImageTooLarge`` or ``ImageMismatch`` raised.
        Anything ``source`` raises passes through with the slot left ``writing`` (never bootable).
        """
        state = self.read_state()
        target = _require(state, _Operation.WRITE)
        image = state.slot(target).image
        assert image is not None  # a writing slot holds an image (checked when parsed)
        chunks = _chunks(source) if isinstance(source, Path) else source
        try:
            measured = _write_slot(self.image_path(target), chunks, image.length)
        except ImageTooLarge as exc:
            self._save(state, _invalidated(state, target, str(exc)))
            raise
        return self._checked(state, target, measured, _Operation.WRITE)

    def mark_installed(self) -> BootState:
        """Read the written slot back and check it again; mark it installed.

        Raises ``ImageMismatch`` (and marks the slot invalid) if the slot no longer matches.
        """
        state = self.read_state()
        target = _require(state, _Operation.MARK_INSTALLED)
        image = state.slot(target).image
        assert image is not None  # a written slot holds an image (checked when parsed)
        measured = _measure(self.image_path(target), image.length)
        return self._checked(state, target, measured, _Operation.MARK_INSTALLED)

    def switch(self, tries: int = DEFAULT_TRIES) -> BootState:
        """Make the installed inactive slot the one the bootloader tries next, ``tries`` times.

        Raises ``SlotInputInvalid`` for ``tries`` outside 1..MAX_TRIES, ``SlotTransitionRefused``.
        """
        state = self.read_state()
        return self._save(state, _switch(state, tries))

    def boot(self) -> BootState:
        """Act as the bootloader: use one try of a pending switch, or roll back when none is left.

        Returns the state whose ``booted`` is the slot started.
        """
        state = self.read_state()
        return self._save(state, _boot(state))

    def commit(self) -> BootState:
        """Mark the booted new slot good: it becomes active and ``min_release_counter`` rises to its
        counter. Raises ``SlotTransitionRefused`` without a pending switch or if it was not booted."""
        state = self.read_state()
        return self._save(state, _commit(state))

    def rollback(self, reason: str) -> BootState:
        """Abandon the update in the inactive slot: mark it invalid with ``reason``, clear the switch.

        The active slot stays active. Raises ``SlotTransitionRefused`` if no update is in progress.
        """
        state = self.read_state()
        return self._save(state, _rolled_back(state, reason))

    def _checked(
        self, state: BootState, name: SlotName, measured: _Measured, operation: _Operation
    ) -> BootState:
        image = state.slot(name).image
        assert image is not None
        actual = f"{measured.length} bytes, sha256 {measured.sha256}"
        expected = f"{image.length} bytes, sha256 {image.sha256}"
        if actual != expected:
            self._save(state, _invalidated(state, name, f"image mismatch: {actual}"))
            raise ImageMismatch(
                f"slot {name} holds {actual}; release {image.release} has {expected}",
                expected=expected,
                actual=actual,
            )
        return self._save(state, _moved(state, operation, name))

    def _save(self, old: BootState, new: BootState) -> BootState:
        saved = replace(new, generation=old.generation + 1)
        _write_state(self.state_path, saved)
        return saved


# -- files ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Measured:
    sha256: Sha256Hex
    length: int


def _write_slot(path: Path, chunks: Iterable[bytes], limit: int) -> _Measured:
    """Replace the content of ``path`` (mode 0600) with ``chunks``; fsync; raise past ``limit`` bytes."""
    digest, length = hashlib.sha256(), 0
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o600)
            for chunk in chunks:
                length += len(chunk)
                if length > limit:
                    raise ImageTooLarge(
                        f"the image for {path.name} is longer than the declared {limit} bytes"
                    )
                digest.update(chunk)
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        _fsync_directory(path.parent)
    except OSError as exc:
        raise SlotIoFailed(f"cannot write {path}: {exc.strerror}") from exc
    return _Measured(Sha256Hex(digest.hexdigest()), length)


def _measure(path: Path, limit: int) -> _Measured:
    """Return the SHA-256 and length of ``path``, reading at most ``limit + 1`` bytes."""
    digest, length = hashlib.sha256(), 0
    try:
        for chunk in _chunks(path, limit + 1):
            digest.update(chunk)
            length += len(chunk)
    except OSError as exc:
        raise SlotIoFailed(f"cannot read {path}: {exc.strerror}") from exc
    return _Measured(Sha256Hex(digest.hexdigest()), length)


def _chunks(path: Path, limit: int = MAX_IMAGE_BYTES + 1) -> Iterator[bytes]:
    with path.open("rb") as file:
        while limit > 0 and (chunk := file.read(min(_CHUNK, limit))):
            limit -= len(chunk)
            yield chunk


def _write_state(path: Path, state: BootState) -> None:
    """Replace ``path`` atomically and durably: sibling written 0600 and fsynced, rename, fsync the
    directory (so the rename itself survives a power cut)."""
    problem = _inconsistency(state)
    assert problem is None, problem  # the transitions keep the invariants; this catches a bug in them
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.unlink(missing_ok=True)
        create_private_file(temporary, serialize_boot_state(state))
        os.replace(temporary, path)
        _fsync_directory(path.parent)
    except OSError as exc:
        raise SlotIoFailed(f"cannot write {path}: {exc.strerror}") from exc


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- bootstate.json -------------------------------------------------------------------------------


class _Malformed(ValueError):
    """A part of the document is not what the format says; translated to ``SlotStateInvalid``."""


_TOP_KEYS: Final = frozenset(
    {"version", "generation", "active", "booted", "min_release_counter", "pending", "slots"}
)
_SLOT_KEYS: Final = frozenset({"state", "image", "reason"})
_IMAGE_KEYS: Final = frozenset({"release", "counter", "sha256", "length"})
_PENDING_KEYS: Final = frozenset({"target", "tries_remaining"})


def serialize_boot_state(state: BootState) -> bytes:
    """Return the ``bootstate.json`` bytes for ``state`` (keys sorted, one trailing newline)."""
    document = {
        "version": FORMAT_VERSION,
        "generation": state.generation,
        "active": str(state.active),
        "booted": str(state.booted),
        "min_release_counter": state.min_release_counter,
        "pending": None
        if state.pending is None
        else {"target": str(state.pending.target), "tries_remaining": state.pending.tries_remaining},
        "slots": {str(name): _slot_document(state.slot(name)) for name in SlotName},
    }
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def _slot_document(slot: Slot) -> dict[str, object]:
    image = slot.image
    return {
        "state": str(slot.state),
        "reason": slot.reason,
        "image": None
        if image is None
        else {
            "release": image.release,
            "counter": image.counter,
            "sha256": image.sha256,
            "length": image.length,
        },
    }


def parse_boot_state(data: bytes, *, where: str = "bootstate.json") -> BootState:
    """Return the state in ``data``; raise ``SlotStateInvalid`` for anything but a valid version-1
    document whose slots are consistent (one committed active slot, a pending switch only to a
    trying slot, ...)."""
    try:
        document = json.loads(data, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
        state = _boot_state(document)
    except (ValueError, RecursionError, SlotInputInvalid) as exc:  # ValueError: JSON, UTF-8, _Malformed
        raise SlotStateInvalid(where, str(exc) or type(exc).__name__) from exc
    problem = _inconsistency(state)
    if problem is not None:
        raise SlotStateInvalid(where, problem)
    return state


def _boot_state(document: object) -> BootState:
    top = _object(document, _TOP_KEYS, "the document")
    if top["version"] != FORMAT_VERSION or not _is_int(top["version"]):
        raise _Malformed(f"version {top['version']!r} is not {FORMAT_VERSION}")
    slots = _object(top["slots"], frozenset(SlotName), "slots")
    return BootState(
        generation=_integer(top["generation"], "generation", _MAX_COUNTER),
        active=_member(SlotName, top["active"], "active"),
        booted=_member(SlotName, top["booted"], "booted"),
        a=_slot(slots["a"], "slot a"),
        b=_slot(slots["b"], "slot b"),
        pending=None if top["pending"] is None else _pending(top["pending"]),
        min_release_counter=_integer(top["min_release_counter"], "min_release_counter", _MAX_COUNTER),
    )


def _slot(value: object, what: str) -> Slot:
    fields = _object(value, _SLOT_KEYS, what)
    reason = fields["reason"]
    if reason is not None and not (isinstance(reason, str) and len(reason) <= _MAX_REASON):
        raise _Malformed(f"{what}: the reason must be null or a string of at most {_MAX_REASON} characters")
    image = None if fields["image"] is None else _image(fields["image"], what)
    return Slot(_member(SlotState, fields["state"], f"{what} state"), image, reason)


def _image(value: object, what: str) -> SlotImage:
    fields = _object(value, _IMAGE_KEYS, f"{what} image")
    release, sha256 = fields["release"], fields["sha256"]
    if not (isinstance(release, str) and isinstance(sha256, str)):
        raise _Malformed(f"{what}: the release and sha256 must be strings")
    counter = _integer(fields["counter"], f"{what} counter", _MAX_COUNTER)
    return SlotImage(
        release, counter, Sha256Hex(sha256), _integer(fields["length"], f"{what} length", MAX_IMAGE_BYTES)
    )


def _pending(value: object) -> PendingSwitch:
    fields = _object(value, _PENDING_KEYS, "pending")
    tries = _integer(fields["tries_remaining"], "tries_remaining", MAX_TRIES)
    return PendingSwitch(_member(SlotName, fields["target"], "pending target"), tries)


def _inconsistency(state: BootState) -> str | None:
    """Return the first invariant ``state`` breaks (those the transitions keep), or ``None``."""
    return next(_problems(state), None)


def _problems(state: BootState) -> Iterator[str]:
    active, inactive = state.slot(state.active), state.slot(state.inactive)
    for name in SlotName:
        slot = state.slot(name)
        if (slot.image is None) != (slot.state is _S.EMPTY):
            yield f"slot {name} is {slot.state} but {'holds no' if slot.image is None else 'holds an'} image"
        if (slot.reason is not None) != (slot.state is _S.INVALID):
            yield f"slot {name} is {slot.state}; only an invalid slot has a reason"
    if active.state is not _S.COMMITTED or inactive.state is _S.COMMITTED:
        yield f"the active slot {state.active} must be the one committed slot"
    if (state.pending is not None) != (inactive.state is _S.TRYING):
        yield f"a pending switch must go with a trying slot {state.inactive}"
    if state.pending is not None and state.pending.target is not state.inactive:
        yield "the pending switch targets the active slot"
    if state.booted is not state.active and inactive.state not in {_S.TRYING, _S.INVALID}:
        yield f"slot {state.booted} was booted but is {inactive.state}"
    if active.image is not None and active.image.counter < state.min_release_counter:
        yield "the active release's counter is below min_release_counter"


def _object(value: object, keys: frozenset[str], what: str) -> dict[str, object]:
    if not isinstance(value, dict) or set(value) != keys:
        raise _Malformed(f"{what} must be an object with exactly the keys {', '.join(sorted(keys))}")
    return value


def _integer(value: object, what: str, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise _Malformed(f"{what} must be an integer from 0 to {maximum}")
    return value


def _member(enum: type[_E], value: object, what: str) -> _E:
    if not isinstance(value, str) or value not in enum._value2member_map_:
        raise _Malformed(f"{what} must be one of {', '.join(e.value for e in enum)}")
    return enum(value)


def _is_int(value: object) -> bool:
    return type(value) is int  # bool is an int subclass; JSON true is not a counter


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _Malformed("duplicate keys")
    return dict(pairs)


def _no_constant(name: str) -> object:
    raise _Malformed(f"{name} is not JSON")


# -- health check and the boot sequence ---------------------------------------------------------


class HealthStatus(StrEnum):
    """The outcome of a health check."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class HealthResult:
    """A health check's outcome and a one-line reason."""

    status: HealthStatus
    reason: str


class HealthCheck(Protocol):
    """Decides whether the booted slot works; never raises for an unhealthy system."""

    def check(self) -> HealthResult:
        """Return the outcome."""
        ...


class CommandHealthCheck:
    """Runs ``argv`` (no shell): exit status 0 within ``timeout_s`` seconds is healthy."""

    __slots__ = ("argv", "timeout_s")

    def __init__(self, argv: Sequence[str], timeout_s: float = 60.0) -> None:
        if not argv or not all(argv):
            raise AgentConfigInvalid("the health check command is empty")
        if not 0 < timeout_s <= 3600:
            raise AgentConfigInvalid("the health check timeout must be between 0 and 3600 seconds")
        self.argv = tuple(argv)
        self.timeout_s = timeout_s

    def check(self) -> HealthResult:
        """Run the command; unhealthy (with the tail of its stderr) on a non-zero exit, a signal, a
        timeout (its process group is killed) or when it cannot be started."""
        name = self.argv[0]
        with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: output is bounded, no deadlock
            try:
                process = subprocess.Popen(  # noqa: S603 - the configured argv, no shell
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,
                )
            except OSError as exc:
                return HealthResult(HealthStatus.UNHEALTHY, f"cannot run {name}: {exc.strerror}")
            status = _wait(process, self.timeout_s)
            tail = _tail(stderr)
        if status is None:
            return HealthResult(
                HealthStatus.UNHEALTHY, f"{name} did not finish within {self.timeout_s:g} s: {tail}"
            )
        if status != 0:
            return HealthResult(HealthStatus.UNHEALTHY, f"{name} exited with status {status}: {tail}")
        return HealthResult(HealthStatus.HEALTHY, f"{name} exited with status 0")


def _wait(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """Return the exit status (negative: the signal), or ``None`` after killing the group on timeout."""
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # the group is already gone
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None


def _tail(file: IO[bytes]) -> str:
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - _STDERR_TAIL))
    text = " ".join(file.read(_STDERR_TAIL).decode(errors="replace").split())
    return text or "no output on stderr"


def run_boot_sequence(store: SlotStore, health: HealthCheck, report: Report) -> BootState:
    """Boot; in a new slot run ``health`` and commit or roll back. Reports REBOOTED, then HEALTHY
    and COMMITTED or ROLLED_BACK; ROLLED_BACK alone when the boot counter ran out. Returns the state."""
    pending = store.read_state().pending
    state = store.boot()
    if pending is not None and state.pending is None:
        report(UpdateStep.ROLLED_BACK, state.slot(pending.target).reason or "")
        return state
    if state.pending is None or state.booted is not state.pending.target:
        return state
    image = state.slot(state.booted).image
    assert image is not None
    report(
        UpdateStep.REBOOTED,
        f"slot {state.booted} runs {image.release} ({state.pending.tries_remaining} tries left)",
    )
    result = health.check()
    if result.status is HealthStatus.UNHEALTHY:
        state = store.rollback(result.reason)
        report(UpdateStep.ROLLED_BACK, result.reason)
        return state
    report(UpdateStep.HEALTHY, result.reason)
    state = store.commit()
    report(UpdateStep.COMMITTED, f"{image.release} committed; rollback counter {state.min_release_counter}")
    return state
