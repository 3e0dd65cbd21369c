"""The installation's two OTA repositories on disk and their online keys.

Layout under ``<data dir>/ota``::

    image/      the image repository (root and targets offline; one delegated role per hardware id)
    director/   the director repository (root offline; targets, snapshot, timestamp online)
    keys/       the online keys (0600): image-snapshot, image-timestamp, director-{targets,snapshot,timestamp}

Both ``image/`` and ``director/`` are static trees that ``fleetguard up`` serves under ``/ota/`` and that
any web server can serve (the director's per-device root alias aside, see
:mod:`fleetguard.ota.director`). Hardware ids name delegated roles ``hw-<hardware id>`` trusted for
the paths ``<hardware id>/*/*`` (TUF spec 4.5, delegation by path: releases are
``<hardware id>/<release>/<file>`` and deltas ``<hardware id>/deltas/<file>``; a ``*`` matches one path
segment), so that the release keys of one hardware line sign nothing for another.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from securesystemslib.signer import Signer

from fleetguard.ota.director import Director
from fleetguard.ota.errors import OtaError, SigningError
from fleetguard.ota.keys import generate_key_file, load_signer
from fleetguard.ota.repository import (
    Published,
    RoleKeys,
    Staged,
    TufRepository,
    add_delegation,
    replace_role_keys,
)

__all__ = ["HARDWARE_ID", "OtaNotInitialized", "OtaRepositories", "hardware_role"]

HARDWARE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,60}")
_ONLINE = ("image-snapshot", "image-timestamp", "director-targets", "director-snapshot", "director-timestamp")


class OtaNotInitialized(OtaError):
    """The OTA repositories have not been created (``fleetguard ota init``)."""

    status = 409
    code = "ota-not-initialized"


def hardware_role(hardware_id: str) -> str:
    """Return the image repository role that signs releases for ``hardware_id``."""
    if not HARDWARE_ID.fullmatch(hardware_id):
        raise SigningError(f"hardware id {hardware_id[:80]!r} must be letters, digits, '.', '_' or '-'")
    return f"hw-{hardware_id}"


class OtaRepositories:
    """Opens the image repository and the director of one installation (see the module docstring)."""

    def __init__(self, data_dir: Path, *, clock: Callable[[], dt.datetime]) -> None:
        self.base = data_dir / "ota"
        self.keys_dir = self.base / "keys"
        self._clock = clock

    @property
    def initialized(self) -> bool:
        """Whether both repositories exist."""
        return all((self.base / name / "metadata" / "1.root.json").exists() for name in ("image", "director"))

    def initialize(
        self,
        *,
        image_root: RoleKeys,
        image_targets: RoleKeys,
        director_root: RoleKeys,
        image_root_signers: Sequence[Signer],
        image_targets_signers: Sequence[Signer],
        director_root_signers: Sequence[Signer],
    ) -> None:
        """Generate the online keys and write version 1 of both repositories.

        Raises :class:`SigningError` when a threshold is not met or the repositories exist.
        """
        if self.initialized:
            raise SigningError(f"{self.base} already holds OTA repositories")
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in _ONLINE:
            path = self.keys_dir / f"{name}.pem"
            if not path.exists():
                generate_key_file(path)
        self.image.create(
            root=image_root, targets=image_targets,
            root_signers=image_root_signers, targets_signers=image_targets_signers,
        )  # fmt: skip
        self.director.create(root=director_root, root_signers=director_root_signers)

    @functools.cached_property
    def image(self) -> TufRepository:
        """The image repository."""
        return TufRepository(
            self.base / "image",
            snapshot_signer=self._online("image-snapshot"),
            timestamp_signer=self._online("image-timestamp"),
            clock=self._clock,
        )

    @functools.cached_property
    def director(self) -> Director:
        """The director repository."""
        return Director(
            self.base / "director",
            targets_signer=self._online("director-targets"),
            snapshot_signer=self._online("director-snapshot"),
            timestamp_signer=self._online("director-timestamp"),
            clock=self._clock,
        )

    def require_initialized(self) -> None:
        """Raise :class:`OtaNotInitialized` unless both repositories exist."""
        if not self.initialized:
            raise OtaNotInitialized(
                "the OTA repositories are not initialized", hint="run: fleetguard ota init"
            )

    def add_hardware(
        self, hardware_id: str, keys: RoleKeys, targets_signers: Sequence[Signer]
    ) -> Published | Staged:
        """Delegate ``<hardware_id>/*/*`` to a new release role trusting ``keys`` (signed by targets keys)."""
        self.require_initialized()
        role = hardware_role(hardware_id)
        return self.image.update_targets(
            "targets",
            lambda targets: add_delegation(targets, role, keys, [f"{hardware_id}/*/*"]),
            targets_signers,
        )

    def rotate_online(self, name: str, root_signers: Sequence[Signer]) -> int:
        """Replace the online key ``name`` (``image-timestamp``, ...); return how many devices were re-signed.

        The repository's root trusts the new key instead of the old one (a new root version, which
        needs the root threshold in this one call: an online key cannot wait for signatures, since
        nothing can be published between the two roots). Rotating a director key re-signs every
        device's metadata (and, for its targets key, the top-level targets): the old signatures stop
        verifying under the new root. Raises :class:`SigningError`.
        """
        self.require_initialized()
        if name not in _ONLINE:
            raise SigningError(f"{name!r} is not an online key; choose one of {', '.join(_ONLINE)}")
        repository_name, role = name.split("-", 1)
        fresh = self.keys_dir / f"{name}.next.pem"
        fresh.unlink(missing_ok=True)  # left by an interrupted rotation: it was never trusted
        generate_key_file(fresh)
        signer = load_signer(fresh)
        online = {key: self._online(key) for key in _ONLINE} | {name: signer}
        repository = self._repository(repository_name, online)
        outcome = repository.update_root(
            lambda root: replace_role_keys(root, role, RoleKeys((signer.public_key,), 1)), root_signers
        )
        if not isinstance(outcome, Published):
            repository.discard_staged("root")
            fresh.unlink()
            raise SigningError(
                f"rotating {name} needs the {repository_name} root's threshold of keys in one command",
                hint="pass every root key holder's --key",
            )
        os.replace(fresh, self.keys_dir / f"{name}.pem")
        self.__dict__.pop(repository_name, None)  # the cached repository holds the old key
        if repository_name != "director":
            return 0
        if role == "targets":
            self.director.repository.update_targets("targets", lambda targets: None, [signer])
        return self.director.resign_all()  # every device's metadata is signed by all three keys

    def _repository(self, name: str, online: dict[str, Signer]) -> TufRepository:
        return TufRepository(
            self.base / name, snapshot_signer=online[f"{name}-snapshot"],
            timestamp_signer=online[f"{name}-timestamp"], clock=self._clock,
        )  # fmt: skip

    def refresh(self) -> bool:
        """Re-sign the image repository's snapshot and timestamp when due; return whether it did."""
        if not self.initialized:
            return False
        return self.image.refresh()

    def _online(self, name: str) -> Signer:
        path = self.keys_dir / f"{name}.pem"
        if not path.exists():
            raise OtaNotInitialized(f"online key {path} is missing", hint="run: fleetguard ota init")
        return load_signer(path)
