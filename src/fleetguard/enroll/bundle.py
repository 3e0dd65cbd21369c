"""The output of a manufacturing batch: one tar file, written once, never kept by the server.

Members, in this order::

    manifest.json          the signed manifest (fleetguard.enroll.manifest), byte for byte as signed
    manifest.sig           its detached raw 64-byte Ed25519 signature
    ca-chain.pem           the issuing CA, then the root CA
    devices/<id>.pem       CSR mode: the device's certificate, then the issuing CA and the root
    devices/<id>.p12       key-generation mode: PKCS#12 with the device's private key, its certificate
                           and the issuing CA and root, encrypted under the operator's passphrase

Each PKCS#12 file is encrypted with PBES2 (AES-256-CBC, PBKDF2-HMAC-SHA256; RFC 8018 6.2) for the key
bag and the certificate bag, and integrity-protected with HMAC-SHA256 (RFC 7292 appendix B), which
``openssl pkcs12`` 3.x reads. ``_PKCS12_KDF_ROUNDS`` of PBKDF2 per bag, with the passphrase at least
``MIN_PASSPHRASE_LENGTH`` characters long, is what stands between a copied bundle and the keys of a
production run; it makes a key-generation batch cost about 8 ms a device on one core (10,000 devices:
about 75 s), where a CSR batch costs under 1 ms.

:class:`BundleFile` writes the tar to a hidden temporary file beside the target, created with mode
0600 and ``O_EXCL`` (:func:`fleetguard.private_file.open_private_file`), before the batch is
recorded; once it is, :meth:`BundleFile.publish` hard-links the file to its name, which fails rather
than replace anything there. So the named file appears whole or not at all, only for a recorded
batch, and a batch whose keys could not be written is never recorded.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from fleetguard.enroll.errors import BatchRejected, EnrollmentConflict, EnrollmentError
from fleetguard.enroll.manifest import BatchMode
from fleetguard.pki.keys import Passphrase
from fleetguard.private_file import open_private_file

if TYPE_CHECKING:
    from fleetguard.enroll.batch import BatchDevice, IssuedBatch

__all__ = [
    "MIN_PASSPHRASE_LENGTH",
    "BundleFile",
    "bundle_members",
    "device_pkcs12",
    "require_bundle_passphrase",
]

MIN_PASSPHRASE_LENGTH = 16
"""Characters a bundle passphrase needs at least: it guards every key of the batch, offline."""

# PBKDF2 iterations per PKCS#12 bag: twice the JDK's PKCS#12 default (10,000, java.security
# keystore.pkcs12.keyPbeIterationCount), ten times NIST SP 800-132's minimum of 1,000.
_PKCS12_KDF_ROUNDS = 20_000
_PEM = serialization.Encoding.PEM

Progress = Callable[[str, int, int], None]


def require_bundle_passphrase(passphrase: Passphrase) -> None:
    """Raise :class:`BatchRejected` unless ``passphrase`` is at least ``MIN_PASSPHRASE_LENGTH`` characters."""
    try:
        length = len(passphrase.reveal().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BatchRejected(f"the bundle passphrase from {passphrase.source} is not UTF-8") from exc
    if length < MIN_PASSPHRASE_LENGTH:
        raise BatchRejected(
            f"the bundle passphrase from {passphrase.source} has {length} characters; "
            f"at least {MIN_PASSPHRASE_LENGTH} are required",
            hint="use a long random passphrase, e.g. from: openssl rand -base64 24",
        )


def device_pkcs12(device: BatchDevice, chain: tuple[x509.Certificate, ...], passphrase: Passphrase) -> bytes:
    """Return ``device``'s key, certificate and ``chain`` as PKCS#12, encrypted as the module says."""
    if device.key is None:
        raise EnrollmentError(f"device {device.device_id!r} has no generated key to deliver")
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(_PKCS12_KDF_ROUNDS)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(passphrase.reveal())
    )
    return pkcs12.serialize_key_and_certificates(
        device.device_id.encode(), device.key, device.certificate, list(chain), encryption
    )


def bundle_members(batch: IssuedBatch, passphrase: Passphrase | None) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, content)`` of every member of ``batch``'s bundle, in the module's order.

    Key-generation batches need ``passphrase``; CSR batches take none. Raises ``EnrollmentError``
    when that does not hold.
    """
    if (batch.batch.mode is BatchMode.KEYGEN) != (passphrase is not None):
        raise EnrollmentError(
            "a bundle of generated keys needs a passphrase, and only such a bundle takes one"
        )
    chain_pem = b"".join(certificate.public_bytes(_PEM) for certificate in batch.chain)
    yield "manifest.json", batch.manifest
    yield "manifest.sig", batch.signature
    yield "ca-chain.pem", chain_pem
    for device in batch.devices:
        if passphrase is None:
            yield f"devices/{device.device_id}.pem", device.certificate.public_bytes(_PEM) + chain_pem
        else:
            yield f"devices/{device.device_id}.p12", device_pkcs12(device, batch.chain, passphrase)


class BundleFile:
    """Writes a batch's bundle to ``path``, which must not exist (see the module docstring)."""

    def __init__(self, path: Path, *, passphrase: Passphrase | None = None) -> None:
        self.path = path
        self._passphrase = passphrase
        self._staged: Path | None = None

    def require_free(self) -> None:
        """Raise ``EnrollmentConflict`` if something is at the target path, ``BatchRejected`` if its
        directory does not exist: checked before any work, and enforced again by :meth:`publish`."""
        if self.path.exists() or self.path.is_symlink():
            raise EnrollmentConflict(
                f"{self.path} exists already", hint="choose another --out: a bundle is never overwritten"
            )
        if not self.path.parent.is_dir():
            raise BatchRejected(f"directory {self.path.parent} does not exist", hint="create it first")

    def stage(self, batch: IssuedBatch, progress: Progress | None = None) -> None:
        """Write the bundle to a new hidden file beside the target (mode 0600); raises ``OSError``."""
        self.require_free()
        staged = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:12]}.tmp")
        file = open_private_file(staged)
        try:
            _write_tar(file, batch, self._passphrase, progress)
            file.flush()
            os.fsync(file.fileno())
        except BaseException:
            file.close()
            staged.unlink(missing_ok=True)
            raise
        file.close()
        self._staged = staged

    def publish(self) -> Path:
        """Give the staged bundle its name; return it. Raises ``EnrollmentConflict`` if the name was
        taken meanwhile (the bundle then stays where the error says, to be moved by hand)."""
        staged = self._staged
        assert staged is not None, "stage() first"
        try:
            os.link(staged, self.path)  # unlike rename, never replaces what is there
        except FileExistsError as exc:
            raise EnrollmentConflict(
                f"{self.path} appeared while the batch was made; the recorded batch's bundle is {staged}",
                hint=f"move {staged} where it belongs; it holds the batch's only copy",
            ) from exc
        staged.unlink()
        self._staged = None
        _sync_directory(self.path.parent)
        return self.path

    def discard(self) -> None:
        """Remove the staged bundle (the batch was not recorded)."""
        if self._staged is not None:
            self._staged.unlink(missing_ok=True)
            self._staged = None


def _write_tar(
    file: BinaryIO, batch: IssuedBatch, passphrase: Passphrase | None, progress: Progress | None
) -> None:
    mtime = int(batch.batch.created_at.timestamp())
    mode = 0o600 if passphrase is not None else 0o644
    total = batch.batch.count
    written = 0
    with tarfile.open(fileobj=file, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in bundle_members(batch, passphrase):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(content), mtime, mode
            archive.addfile(info, io.BytesIO(content))
            if name.startswith("devices/"):
                written += 1
                if progress is not None and (written % 500 == 0 or written == total):
                    progress("packing", written, total)


def _sync_directory(directory: Path) -> None:
    # The new name is durable only once the directory itself is synced (POSIX fsync on a directory).
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
