"""Errors of the PKI: key backends, signing, CA material, profiles and factory certificates.

``KeyBackendError`` and its leaves say a signing key cannot be used now (a token is missing, a PIN
or passphrase is wrong, a key file is readable by others): an operator fixes them, a client retries.
``SigningFailed`` and ``CaError`` are server-side faults: a signature that does not verify is never
returned, and CA material that does not chain is never used. ``ProfileInputRejected`` and
``ChainExportRejected`` reject bad input from the caller; ``FactoryCertificateRejected`` refuses a
device's manufacturer (IDevID) certificate at enrollment. ``CsrRejected`` and ``OcspMalformed``
reject what a device or relying party sent; ``RenewalRefused`` tells a device whose certificate
expired beyond the grace window to enrol again.
"""

from __future__ import annotations

import datetime as dt

from fleetguard.errors import Conflict, FleetguardError, InvalidInput, Unavailable

__all__ = [
    "CaError",
    "CaNotInitialized",
    "CertificateNotFound",
    "ChainExportRejected",
    "CsrRejected",
    "FactoryCertificateRejected",
    "InsecureKeyFile",
    "IssuanceRefused",
    "KeyBackendError",
    "KeyExists",
    "KeyUnlockFailed",
    "OcspMalformed",
    "PkiError",
    "ProfileInputRejected",
    "RenewalRefused",
    "RenewalThrottled",
    "SigningFailed",
    "UnknownAuthority",
]


class PkiError(FleetguardError):
    """Base of the errors raised by ``fleetguard.pki``."""

    code = "pki"


class KeyBackendError(Unavailable, PkiError):
    """A signing key cannot be used now: the token or key file is missing, unreadable or failing."""

    code = "key-backend-unavailable"


class KeyUnlockFailed(KeyBackendError):
    """The passphrase or PIN that unlocks a key is missing, empty or wrong."""

    code = "key-unlock-failed"


class InsecureKeyFile(KeyBackendError):
    """A key or passphrase file is not a regular file, or others may read or write it."""

    code = "insecure-key-file"


class KeyExists(Conflict, PkiError):
    """A key is to be generated where one already exists; the existing key is left as it was."""

    code = "key-exists"


class SigningFailed(PkiError):
    """A signature made by a key backend does not verify with the key's public key; nothing is returned."""

    status = 500
    code = "signing-failed"


class CaError(PkiError):
    """CA material is inconsistent: a certificate does not chain, or a key does not match its certificate."""

    status = 500
    code = "ca-invalid"


class ProfileInputRejected(InvalidInput, PkiError):
    """A value to be put in a certificate is malformed or out of range (device id, name, URL, validity)."""

    code = "profile-input-rejected"


class ChainExportRejected(InvalidInput, PkiError):
    """A chain cannot be exported in the format asked for."""

    code = "chain-export-rejected"


class FactoryCertificateRejected(PkiError):
    """A manufacturer (IDevID) certificate does not chain to that manufacturer's trusted CAs at ``now``."""

    status = 403
    code = "factory-certificate-rejected"

    def __init__(self, manufacturer: str, reason: str) -> None:
        super().__init__(
            f"factory certificate rejected for manufacturer {manufacturer!r}: {reason}",
            hint="check the manufacturer name and that its CA is in the trust store",
        )
        self.manufacturer = manufacturer
        self.reason = reason


class CsrRejected(InvalidInput, PkiError):
    """A CSR is refused: malformed, too large, badly signed, a weak or unsupported key, or it asks for CA."""

    code = "csr-rejected"

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"CSR rejected: {reason}",
            hint="send a PKCS#10 request signed with a P-256, P-384 or RSA >= 2048 key",
        )
        self.reason = reason


class RenewalRefused(PkiError):
    """A certificate expired longer ago than the grace window allows; the device must enrol again."""

    status = 403
    code = "renewal-refused"

    def __init__(self, *, not_after: dt.datetime, now: dt.datetime, grace: dt.timedelta) -> None:
        super().__init__(
            f"certificate expired at {not_after.isoformat()}, beyond the renewal grace of {grace} "
            f"(now {now.isoformat()})",
            hint="enrol the device again with its factory identity",
        )
        self.not_after = not_after
        self.now = now
        self.grace = grace


class OcspMalformed(PkiError):
    """An OCSP request cannot be decoded or is out of bounds; the responder answers ``malformedRequest``."""

    status = 400
    code = "ocsp-malformed"

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed OCSP request: {reason}")
        self.reason = reason


class CertificateNotFound(PkiError):
    """No certificate with this serial was issued here."""

    status = 404
    code = "certificate-not-found"


class IssuanceRefused(Conflict, PkiError):
    """The device may not get a certificate now (quarantined, decommissioned, or not its certificate)."""

    code = "issuance-refused"


class RenewalThrottled(Unavailable, PkiError):
    """A renewal rate limit is exhausted; the client retries after ``retry_after_s`` seconds."""

    code = "renewal-throttled"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message, hint=f"retry in {max(1, round(retry_after_s))} s")
        self.retry_after_s = retry_after_s


class CaNotInitialized(Conflict, PkiError):
    """The installation has no CA yet."""

    code = "ca-not-initialized"

    def __init__(self) -> None:
        super().__init__("the CA is not initialized", hint="run `fleetguard ca init`")


class UnknownAuthority(PkiError):
    """No CA of this installation has this id."""

    status = 404
    code = "unknown-authority"
