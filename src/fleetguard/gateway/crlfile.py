"""What may go into the broker's ``crlfile``, checked before it is written.

Mosquitto 2.0.11 loads ``crlfile`` with OpenSSL's ``X509_load_crl_file`` (every PEM CRL in the file)
and checks the leaf certificate of each new connection against it (``X509_V_FLAG_CRL_CHECK``). What
was verified against the Debian build, and what it means here:

* After a SIGHUP, a revoked certificate is refused at the next handshake, but live sessions of that
  certificate stay connected and keep publishing: revocation also needs a kick.
* An *expired* CRL (nextUpdate in the past) makes every handshake fail: one stale file is a fleet-wide
  outage. So a CRL must be current to be installed, and the file must be refreshed before nextUpdate.
* A *missing or unparsable* file at SIGHUP is logged as an error, and the broker then accepts revoked
  certificates (it fails open) until it restarts; at start-up the same file makes it exit (it fails
  closed). So the file is replaced atomically, only with CRLs that parse and verify here, and
  :meth:`~fleetguard.gateway.broker.MosquittoBroker.reload` restarts the broker when a reload logs an
  error.
* Every issuing CA whose devices connect needs its CRL in the file, or OpenSSL refuses its devices
  ("unable to get certificate CRL"), so a bundle without one for some issuing CA is refused.

fleetguard's complete CRL of an issuing CA (``RevocationPublisher.crl(issuer_id, None)``) is what goes
here; delta CRLs are refused (Mosquitto does not set ``X509_V_FLAG_USE_DELTAS``, so OpenSSL would
ignore them).
"""

from __future__ import annotations

import datetime as dt
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetguard.gateway.errors import CrlRejected

__all__ = ["MAX_CRL_FILE_BYTES", "require_crl_bundle"]

MAX_CRL_FILE_BYTES = 256 * 1024 * 1024
"""A complete CRL with a million entries is about 50 MB (fleetguard.pki.crl); PEM adds a third."""
_CLOCK_SKEW = dt.timedelta(minutes=5)
_MAX_CRLS = 64
_CRL_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----\r?\n.+?-----END X509 CRL-----", re.DOTALL)
_CERT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.DOTALL)


def require_crl_bundle(crl_pem: bytes, ca_bundle_pem: bytes, *, now: dt.datetime) -> bytes:
    """Return the PEM to write as ``crlfile``, or raise :class:`CrlRejected` saying what is wrong.

    Every CRL must be a complete CRL signed by a CA of ``ca_bundle_pem``, issued before ``now`` (with
    five minutes of skew) and with a nextUpdate after it; every issuing CA of the bundle (a CA not
    signed by itself, or the only CA when all are self-signed) must have one.
    """
    if len(crl_pem) > MAX_CRL_FILE_BYTES:
        raise CrlRejected(f"CRL file is {len(crl_pem)} bytes; at most {MAX_CRL_FILE_BYTES}")
    blocks = _CRL_BLOCK.findall(crl_pem)
    if not blocks:
        raise CrlRejected("no PEM CRL ('-----BEGIN X509 CRL-----') in the input")
    if len(blocks) > _MAX_CRLS:
        raise CrlRejected(f"{len(blocks)} CRLs; at most {_MAX_CRLS}")
    authorities = _authorities(ca_bundle_pem)
    covered: set[bytes] = set()
    for block in blocks:
        crl = _load(block)
        issuer = _require_signed(crl, authorities)
        _require_current(crl, now)
        covered.add(issuer.subject.public_bytes())
    _require_coverage(authorities, covered)
    return b"".join(block + b"\n" for block in blocks)


def _authorities(ca_bundle_pem: bytes) -> list[x509.Certificate]:
    authorities = []
    for block in _CERT_BLOCK.findall(ca_bundle_pem):
        try:
            authorities.append(x509.load_pem_x509_certificate(block))
        except ValueError as exc:
            raise CrlRejected(f"the CA bundle holds a certificate that does not parse: {exc}") from exc
    if not authorities:
        raise CrlRejected("the CA bundle holds no certificate")
    return authorities


def _load(block: bytes) -> x509.CertificateRevocationList:
    try:
        crl = x509.load_pem_x509_crl(block)
        crl.public_bytes(serialization.Encoding.DER)
    except ValueError as exc:
        raise CrlRejected(f"a CRL does not parse: {exc}") from exc
    try:
        crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    except x509.ExtensionNotFound:
        return crl
    raise CrlRejected(f"the CRL from {crl.issuer.rfc4514_string()} is a delta CRL; a complete CRL is needed")


def _require_signed(
    crl: x509.CertificateRevocationList, authorities: list[x509.Certificate]
) -> x509.Certificate:
    for authority in authorities:
        if authority.subject == crl.issuer and crl.is_signature_valid(authority.public_key()):  # type: ignore[arg-type]
            return authority
    raise CrlRejected(f"the CRL from {crl.issuer.rfc4514_string()} is not signed by a CA of the bundle")


def _require_current(crl: x509.CertificateRevocationList, now: dt.datetime) -> None:
    issuer = crl.issuer.rfc4514_string()
    next_update = crl.next_update_utc
    if next_update is None:
        raise CrlRejected(f"the CRL from {issuer} has no nextUpdate (RFC 5280 5.1.2.5)")
    if next_update <= now:
        raise CrlRejected(f"the CRL from {issuer} expired at {next_update.isoformat()}")
    if crl.last_update_utc > now + _CLOCK_SKEW:
        raise CrlRejected(
            f"the CRL from {issuer} is issued in the future ({crl.last_update_utc.isoformat()})"
        )


def _require_coverage(authorities: list[x509.Certificate], covered: set[bytes]) -> None:
    issuing = [ca for ca in authorities if ca.subject != ca.issuer] or authorities
    missing = [ca.subject.rfc4514_string() for ca in issuing if ca.subject.public_bytes() not in covered]
    if missing:
        raise CrlRejected(
            f"no CRL for {', '.join(missing)}: the broker would refuse every device that CA issued",
            hint="add that CA's complete CRL",
        )
