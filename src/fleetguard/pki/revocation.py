"""Revocation records: RFC 5280 reasons, revoked entries, and how serials map to CRL shards.

Theory of operation. A revocation is recorded once as a :class:`RevokedEntry` (serial, time, reason,
and the certificate's ``notAfter`` so that CRLs can drop it once it has expired, RFC 5280 3.3). CRLs
are partitioned: every serial belongs to exactly one shard, ``partition_of(serial, partitions)``, and
the device certificate's CRL distribution point names that shard's URL (see
:func:`fleetguard.pki.crl.distribution_point_url`). Serials are 159-bit random numbers, so
``serial % partitions`` spreads them evenly; the mapping only depends on the two integers, so it is
stable across processes and releases. The partition count is therefore fixed for the life of an
issuing CA: certificates already carry their shard's URL.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from cryptography import x509

__all__ = [
    "MAX_SERIAL",
    "RevocationReason",
    "RevokedEntry",
    "partition_of",
]

MAX_SERIAL = 2**159 - 1
"""RFC 5280 4.1.2.2: a serial is a positive INTEGER of at most 20 octets, sign bit included."""


class RevocationReason(enum.StrEnum):
    """The CRLReason values (RFC 5280 5.3.1) that fleetguard records, named as in the RFC.

    ``certificateHold`` is not offered: fleetguard never suspends a certificate, it revokes it and
    issues a new one. ``removeFromCRL`` is not a reason to revoke: it only exists to undo a hold in a
    delta CRL, so it is not needed either.
    """

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    CA_COMPROMISE = "cACompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"
    PRIVILEGE_WITHDRAWN = "privilegeWithdrawn"
    AA_COMPROMISE = "aACompromise"

    @property
    def code(self) -> int:
        """The CRLReason ENUMERATED value (RFC 5280 5.3.1)."""
        return _CODES[self]

    @property
    def reason_flag(self) -> x509.ReasonFlags:
        """The equivalent ``cryptography`` value."""
        return x509.ReasonFlags(self.value)

    @classmethod
    def from_reason_flag(cls, flag: x509.ReasonFlags) -> RevocationReason:
        """Map a ``cryptography`` reason back; raise ``ValueError`` for hold and removeFromCRL."""
        return cls(flag.value)


# RFC 5280 5.3.1: CRLReason ::= ENUMERATED { unspecified (0), keyCompromise (1), cACompromise (2),
# affiliationChanged (3), superseded (4), cessationOfOperation (5), certificateHold (6),
# -- value 7 is not used, removeFromCRL (8), privilegeWithdrawn (9), aACompromise (10) }
_CODES: dict[RevocationReason, int] = {
    RevocationReason.UNSPECIFIED: 0,
    RevocationReason.KEY_COMPROMISE: 1,
    RevocationReason.CA_COMPROMISE: 2,
    RevocationReason.AFFILIATION_CHANGED: 3,
    RevocationReason.SUPERSEDED: 4,
    RevocationReason.CESSATION_OF_OPERATION: 5,
    RevocationReason.PRIVILEGE_WITHDRAWN: 9,
    RevocationReason.AA_COMPROMISE: 10,
}


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    """One revoked certificate as the CRL and OCSP builders need it.

    ``serial`` is positive and at most 20 octets (RFC 5280 4.1.2.2); both times are timezone-aware.
    ``not_after`` is the certificate's expiry: once it has passed, the entry may leave the CRL (RFC
    5280 3.3). Raises ``ValueError`` on a serial out of range or a naive time.
    """

    serial: int
    revoked_at: dt.datetime
    reason: RevocationReason
    not_after: dt.datetime

    def __post_init__(self) -> None:
        if not 0 < self.serial <= MAX_SERIAL:
            raise ValueError(f"serial must be positive and at most 20 octets, got {self.serial}")
        if self.revoked_at.tzinfo is None or self.not_after.tzinfo is None:
            raise ValueError(f"serial {self.serial:x}: revoked_at and not_after must be timezone-aware")


def partition_of(serial: int, partitions: int) -> int:
    """Return the CRL shard (``0 <= shard < partitions``) that holds ``serial``.

    Raises ``ValueError`` if ``partitions`` is not positive.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    return serial % partitions
