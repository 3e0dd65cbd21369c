"""The signed manifest of a manufacturing batch: which certificates were issued to which devices.

A manifest is canonical JSON, version 1: one object with sorted keys, no insignificant whitespace
(separators ``,`` and ``:``), non-ASCII characters escaped (so the bytes are ASCII), no trailing
newline. Its members::

    format        "fleetguard-batch-manifest/1"
    batch_id      the batch's id (a UUID)
    model         the device type every device of the batch was registered as
    mode          "csr" (the production line sent CSRs) or "keygen" (the server generated the keys)
    count         the number of devices, equal to the length of ``devices``
    created_at    RFC 3339 UTC with microseconds and "Z", e.g. "2025-01-31T12:00:00.000000Z"
    actor         who made the batch (as in the event log)
    trust_domain  the installation's trust domain (the devices' SPIFFE ids live under it)
    issuer        {"id": issuing CA id, "sha256": hex SHA-256 of its DER certificate}
    devices       in batch order: {"device_id", "serial" (lowercase hex, as the CLI and API print
                  serials), "sha256" (hex SHA-256 of the DER certificate), "not_after" (as created_at)}

The signature is detached: the raw 64-byte Ed25519 signature (RFC 8032 5.1.6) over exactly the
manifest's bytes, made with the installation's event-log checkpoint key, whose public half
``fleetguard events public-key`` prints. Plain OpenSSL 3 checks it::

    openssl pkeyutl -verify -pubin -inkey key.pem -rawin -in manifest.json -sigfile manifest.sig

The checkpoint key signs checkpoint notes too. The two cannot be confused: a note's body is lines
ending in LF (:mod:`fleetguard.events.checkpoint`), and a canonical manifest holds no LF byte at all
(JSON escapes one inside a string).

Parsing is strict: a manifest that parses re-encodes to the same bytes, and anything else raises
:class:`~fleetguard.enroll.errors.ManifestInvalid`.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleetguard.enroll.errors import ManifestInvalid

__all__ = [
    "MANIFEST_FORMAT",
    "MAX_MANIFEST_BYTES",
    "BatchMode",
    "Manifest",
    "ManifestDevice",
    "parse_manifest",
    "sign_manifest",
    "verify_manifest",
]

MANIFEST_FORMAT = "fleetguard-batch-manifest/1"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
"""Largest manifest read: 100,000 devices take about 20 MiB."""

_SIGNATURE_SIZE = 64  # RFC 8032 5.1.6
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEX_SERIAL = re.compile(r"[1-9a-f][0-9a-f]{0,39}")  # RFC 5280 4.1.2.2: positive, at most 20 octets
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_TOP_KEYS = frozenset(
    {
        "format",
        "batch_id",
        "model",
        "mode",
        "count",
        "created_at",
        "actor",
        "trust_domain",
        "issuer",
        "devices",
    }
)
_DEVICE_KEYS = frozenset({"device_id", "serial", "sha256", "not_after"})
_ISSUER_KEYS = frozenset({"id", "sha256"})


class BatchMode(enum.StrEnum):
    """Where the keys of a batch's devices come from."""

    CSR = "csr"  # the production line sent a CSR per device; no private key reaches the server
    KEYGEN = "keygen"  # the server generated the keys and delivered them once, in an encrypted bundle


@dataclass(frozen=True, slots=True)
class ManifestDevice:
    """One device of a batch and the certificate it was issued."""

    device_id: str
    serial: int
    sha256: bytes
    not_after: dt.datetime


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a batch issued; :meth:`to_bytes` is what is signed."""

    batch_id: str
    model: str
    mode: BatchMode
    created_at: dt.datetime
    actor: str
    trust_domain: str
    issuer_id: str
    issuer_sha256: bytes
    devices: tuple[ManifestDevice, ...]

    @property
    def count(self) -> int:
        """The number of devices."""
        return len(self.devices)

    def to_bytes(self) -> bytes:
        """Return the canonical encoding described in the module docstring."""
        document = {
            "format": MANIFEST_FORMAT,
            "batch_id": self.batch_id,
            "model": self.model,
            "mode": self.mode.value,
            "count": self.count,
            "created_at": _time(self.created_at),
            "actor": self.actor,
            "trust_domain": self.trust_domain,
            "issuer": {"id": self.issuer_id, "sha256": self.issuer_sha256.hex()},
            "devices": [
                {
                    "device_id": device.device_id,
                    "serial": f"{device.serial:x}",
                    "sha256": device.sha256.hex(),
                    "not_after": _time(device.not_after),
                }
                for device in self.devices
            ],
        }
        return _canonical(document)


def sign_manifest(manifest: bytes, key: Ed25519PrivateKey) -> bytes:
    """Return the detached raw 64-byte Ed25519 signature of ``manifest``'s bytes."""
    return key.sign(manifest)


def verify_manifest(manifest: bytes, signature: bytes, public_key: Ed25519PublicKey) -> None:
    """Check that ``signature`` is ``public_key``'s over ``manifest``, and that it is a manifest.

    Returns ``None``; raises :class:`ManifestInvalid` if the signature is not 64 bytes or does not
    verify, or if the signed bytes are not a canonical version-1 manifest (see :func:`parse_manifest`).
    """
    if len(signature) != _SIGNATURE_SIZE:
        raise ManifestInvalid(
            f"signature is {len(signature)} bytes, not the {_SIGNATURE_SIZE} of a raw Ed25519 signature"
        )
    try:
        public_key.verify(signature, manifest)
    except InvalidSignature as exc:
        raise ManifestInvalid(
            "manifest signature does not verify with this key",
            hint="check that the manifest and signature belong together and the key is the installation's",
        ) from exc
    parse_manifest(manifest)


def parse_manifest(data: bytes) -> Manifest:
    """Decode a canonical version-1 manifest; return it (unverified: see :func:`verify_manifest`).

    Raises :class:`ManifestInvalid` if ``data`` is larger than ``MAX_MANIFEST_BYTES``, is not
    JSON, misses or adds a member, has a value of the wrong form, has ``count`` unequal to the
    number of devices, or is not in canonical form.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestInvalid(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ManifestInvalid("manifest is not JSON") from exc
    manifest = _manifest(_object(document, _TOP_KEYS, "manifest"))
    if manifest.to_bytes() != data:
        raise ManifestInvalid("manifest is not in canonical form (sorted keys, no whitespace, ASCII)")
    return manifest


def _manifest(document: dict[str, Any]) -> Manifest:
    if document["format"] != MANIFEST_FORMAT:
        raise ManifestInvalid(f"manifest format is {str(document['format'])[:64]!r}, not {MANIFEST_FORMAT!r}")
    try:
        mode = BatchMode(document["mode"])
    except ValueError as exc:
        raise ManifestInvalid(f"manifest mode {str(document['mode'])[:16]!r} is not csr or keygen") from exc
    issuer = _object(document["issuer"], _ISSUER_KEYS, "issuer")
    devices = document["devices"]
    if not isinstance(devices, list):
        raise ManifestInvalid("manifest devices is not a list")
    manifest = Manifest(
        batch_id=_text(document, "batch_id"),
        model=_text(document, "model"),
        mode=mode,
        created_at=_parse_time(document["created_at"], "created_at"),
        actor=_text(document, "actor"),
        trust_domain=_text(document, "trust_domain"),
        issuer_id=_text(issuer, "id"),
        issuer_sha256=_sha256(issuer["sha256"], "issuer sha256"),
        devices=tuple(_device(entry, number) for number, entry in enumerate(devices, start=1)),
    )
    count = document["count"]
    if type(count) is not int or count != manifest.count:
        raise ManifestInvalid(
            f"manifest count {str(count)[:20]} is not the {manifest.count} devices it lists"
        )
    return manifest


def _device(entry: object, number: int) -> ManifestDevice:
    where = f"device {number}"
    fields = _object(entry, _DEVICE_KEYS, where)
    serial = fields["serial"]
    if not isinstance(serial, str) or not _HEX_SERIAL.fullmatch(serial):
        raise ManifestInvalid(f"{where}: serial is not lowercase hex of at most 20 octets")
    return ManifestDevice(
        device_id=_text(fields, "device_id"),
        serial=int(serial, 16),
        sha256=_sha256(fields["sha256"], f"{where} sha256"),
        not_after=_parse_time(fields["not_after"], f"{where} not_after"),
    )


def _object(value: object, keys: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{what} is not a JSON object")
    if set(value) != keys:
        missing, extra = sorted(keys - set(value)), sorted(set(value) - keys)
        raise ManifestInvalid(f"{what} members differ from version 1: missing {missing}, unexpected {extra}")
    return value


def _text(fields: dict[str, Any], name: str) -> str:
    value = fields[name]
    if not isinstance(value, str) or not value:
        raise ManifestInvalid(f"manifest {name} is not a non-empty string")
    return value


def _sha256(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not _HEX_SHA256.fullmatch(value):
        raise ManifestInvalid(f"{what} is not 64 lowercase hex digits")
    return bytes.fromhex(value)


def _parse_time(value: object, what: str) -> dt.datetime:
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise ManifestInvalid(f"{what} is not an RFC 3339 UTC time with microseconds and 'Z'")
    try:
        return dt.datetime.fromisoformat(value).astimezone(dt.UTC)
    except ValueError as exc:
        raise ManifestInvalid(f"{what} {value!r} is not a valid time") from exc


def _time(value: dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("naive datetime refused: manifests record UTC only")
    return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
