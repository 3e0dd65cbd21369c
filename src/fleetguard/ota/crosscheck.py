"""The device's decision to install: the director and the image repository must agree (Uptane 5.4.4.2).

Theory of operation. After both repositories' metadata verified under their own roots (python-tuf's
``Updater`` does that: signatures, thresholds, versions, expiry, lengths), the device still trusts
neither alone. :func:`verify_assignment` takes the director's target entry for this device and the
image repository's entry for the same path and raises :class:`UpdateRejected` unless

1. the director's entry names this device and its hardware id (no metadata meant for another device);
2. the image repository's entry has the same length and SHA-256 (Uptane 5.4.4.2 item 8: "the image
   repository's targets metadata must match"), so a director cannot send an image the offline keys
   never signed (arbitrary image), nor mix one release's hash with another's name (mix-and-match);
3. the image entry lists the hardware id and the same release counter as the director's;
4. the release counter is above ``installed_counter`` (anti-rollback: the update client passes the
   larger of the running image's counter and the highest counter it ever committed);
5. the offline-signed scope of the director's campaign covers this device now
   (:func:`fleetguard.ota.scope.require_in_scope`), so a compromised director cannot widen a rollout.

The answer is an :class:`Assignment`, the one value the update client acts on.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetguard.ota.errors import MetadataInvalid, ScopeViolation, UpdateRejected
from fleetguard.ota.scope import RolloutScope, require_in_scope

__all__ = ["Assignment", "ImageRelease", "TargetEntry", "image_release", "verify_assignment"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_SCOPES = 64


@dataclass(frozen=True, slots=True)
class TargetEntry:
    """The parts of a TUF target entry the cross-check reads (``tuf.api.metadata.TargetFile``)."""

    path: str
    length: int
    hashes: Mapping[str, str]
    custom: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ImageRelease:
    """What the image repository (offline keys) says about one image."""

    release: str
    release_counter: int
    hardware_ids: tuple[str, ...]
    scopes: tuple[RolloutScope, ...]


@dataclass(frozen=True, slots=True)
class Assignment:
    """An image this device may install, after the cross-check."""

    path: str
    length: int
    sha256: str
    release: str
    release_counter: int
    hardware_id: str
    campaign: str
    delta_path: str | None


def image_release(entry: TargetEntry) -> ImageRelease:
    """Parse ``custom.fleetguard`` of an image repository entry; raise :class:`UpdateRejected`."""
    fields = _fleetguard(entry, "image repository")
    release = fields.get("release")
    counter = fields.get("release_counter")
    hardware = fields.get("hardware_ids")
    scopes = fields.get("scopes", [])
    if not isinstance(release, str) or not release:
        raise UpdateRejected(f"image repository entry {entry.path} has no release name")
    if not isinstance(counter, int) or not _is_counter(counter):
        raise UpdateRejected(f"image repository entry {entry.path} has no valid release counter")
    if not isinstance(hardware, list) or not hardware or not all(isinstance(h, str) for h in hardware):
        raise UpdateRejected(f"image repository entry {entry.path} names no hardware ids")
    if not isinstance(scopes, list) or len(scopes) > _MAX_SCOPES:
        raise UpdateRejected(f"image repository entry {entry.path} has a malformed scope list")
    try:
        parsed = tuple(RolloutScope.from_custom(s) for s in scopes)
    except MetadataInvalid as exc:
        raise UpdateRejected(f"image repository entry {entry.path} has a malformed scope: {exc}") from exc
    return ImageRelease(release, counter, tuple(hardware), parsed)


def verify_assignment(
    director: TargetEntry,
    image: TargetEntry,
    *,
    device_id: str,
    hardware_id: str,
    installed_counter: int,
    now: dt.datetime,
) -> Assignment:
    """Return the assignment if the director and the image repository agree; raise otherwise.

    Raises :class:`UpdateRejected` (disagreement, rollback) or :class:`ScopeViolation` (outside the
    signed scope). Nothing is installed by this function; it only decides.
    """
    fields = _fleetguard(director, "director")
    if fields.get("device") != device_id:
        raise UpdateRejected(f"director metadata for {director.path} names another device")
    if fields.get("hardware_id") != hardware_id:
        raise UpdateRejected(f"director assigns {director.path} to hardware {fields.get('hardware_id')!r}")
    sha256 = _sha256(director, "director")
    if image.path != director.path or image.length != director.length or _sha256(image, "image") != sha256:
        raise UpdateRejected(
            f"the image repository does not sign {director.path} with that hash and length "
            "(arbitrary or mix-and-match image from the director)"
        )
    release = image_release(image)
    counter = fields.get("release_counter")
    if hardware_id not in release.hardware_ids:
        raise UpdateRejected(f"the image repository does not approve {director.path} for {hardware_id}")
    if counter != release.release_counter:
        raise UpdateRejected(
            f"release counter {counter!r} from the director differs from the image repository's "
            f"{release.release_counter}"
        )
    if release.release_counter <= installed_counter:
        raise UpdateRejected(
            f"release counter {release.release_counter} is not above the installed {installed_counter} "
            "(rollback refused)"
        )
    campaign = fields.get("campaign")
    scope = next((s for s in release.scopes if s.campaign == campaign), None)
    if scope is None:
        raise ScopeViolation(f"no signed scope for campaign {campaign!r} of {director.path}")
    require_in_scope(scope, device_id=device_id, hardware_id=hardware_id, now=now)
    delta = fields.get("delta")
    return Assignment(
        path=director.path,
        length=director.length,
        sha256=sha256,
        release=release.release,
        release_counter=release.release_counter,
        hardware_id=hardware_id,
        campaign=str(campaign),
        delta_path=delta if isinstance(delta, str) else None,
    )


def _fleetguard(entry: TargetEntry, source: str) -> Mapping[str, Any]:
    fields = entry.custom.get("fleetguard") if isinstance(entry.custom, Mapping) else None
    if not isinstance(fields, Mapping):
        raise UpdateRejected(f"{source} entry {entry.path} has no fleetguard fields")
    return fields


def _sha256(entry: TargetEntry, source: str) -> str:
    value = entry.hashes.get("sha256")
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise UpdateRejected(f"{source} entry {entry.path} has no SHA-256")
    return value


def _is_counter(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
