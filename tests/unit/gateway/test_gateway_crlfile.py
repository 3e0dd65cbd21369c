"""What may go into the broker's crlfile: complete, current CRLs of every issuing CA, signed by it."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from gateway_pki import NOW, make_authority

from fleetguard.gateway.crlfile import MAX_CRL_FILE_BYTES, require_crl_bundle
from fleetguard.gateway.errors import CrlRejected

ROOT = make_authority("root")
ISSUING = make_authority("issuing", ROOT)
OTHER = make_authority("other issuing", ROOT)
BUNDLE = ISSUING.pem + ROOT.pem


def test_a_current_crl_of_the_issuing_ca_is_accepted_as_is() -> None:
    crl = ISSUING.crl((7, 8))
    written = require_crl_bundle(crl, BUNDLE, now=NOW)
    assert [entry.serial_number for entry in x509.load_pem_x509_crl(written)] == [7, 8]


def test_every_issuing_ca_needs_its_crl() -> None:
    bundle = ISSUING.pem + OTHER.pem + ROOT.pem
    with pytest.raises(
        CrlRejected, match="no CRL for CN=other issuing: the broker would refuse every device"
    ):
        require_crl_bundle(ISSUING.crl(), bundle, now=NOW)
    both = require_crl_bundle(ISSUING.crl() + OTHER.crl(), bundle, now=NOW)
    assert both.count(b"-----BEGIN X509 CRL-----") == 2


def test_self_signed_cas_alone_each_need_a_crl() -> None:
    assert require_crl_bundle(ROOT.crl(), ROOT.pem, now=NOW)
    second = make_authority("second root")
    with pytest.raises(CrlRejected, match="no CRL for CN=second root"):
        require_crl_bundle(ROOT.crl(), ROOT.pem + second.pem, now=NOW)


def test_an_expired_crl_is_refused() -> None:
    stale = ISSUING.crl(this_update=NOW - dt.timedelta(days=2), next_update=NOW - dt.timedelta(seconds=1))
    with pytest.raises(CrlRejected, match="CN=issuing expired at"):
        require_crl_bundle(stale, BUNDLE, now=NOW)


def test_a_crl_from_the_future_is_refused_beyond_clock_skew() -> None:
    soon = ISSUING.crl(this_update=NOW + dt.timedelta(minutes=4), next_update=NOW + dt.timedelta(days=1))
    assert require_crl_bundle(soon, BUNDLE, now=NOW)
    later = ISSUING.crl(this_update=NOW + dt.timedelta(hours=1), next_update=NOW + dt.timedelta(days=1))
    with pytest.raises(CrlRejected, match="issued in the future"):
        require_crl_bundle(later, BUNDLE, now=NOW)


def test_a_crl_signed_by_another_key_is_refused() -> None:
    forged = ISSUING.crl(signer=OTHER.key)
    with pytest.raises(CrlRejected, match="CN=issuing is not signed by a CA of the bundle"):
        require_crl_bundle(forged, BUNDLE, now=NOW)


def test_a_crl_of_an_unknown_ca_is_refused() -> None:
    stranger = make_authority("issuing")  # same name, different key
    with pytest.raises(CrlRejected, match="not signed by a CA of the bundle"):
        require_crl_bundle(stranger.crl(), BUNDLE, now=NOW)


def test_a_delta_crl_is_refused() -> None:
    with pytest.raises(CrlRejected, match="is a delta CRL"):
        require_crl_bundle(ISSUING.crl(delta_of=1), BUNDLE, now=NOW)


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"", "no PEM CRL"),
        (b"hello", "no PEM CRL"),
        (b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "does not parse"),
    ],
)
def test_input_that_is_no_crl_is_refused(garbage: bytes, reason: str) -> None:
    with pytest.raises(CrlRejected, match=reason):
        require_crl_bundle(garbage, BUNDLE, now=NOW)


def test_the_size_is_bounded_before_parsing() -> None:
    with pytest.raises(CrlRejected, match=f"at most {MAX_CRL_FILE_BYTES}"):
        require_crl_bundle(b" " * (MAX_CRL_FILE_BYTES + 1), BUNDLE, now=NOW)


def test_an_empty_bundle_is_refused() -> None:
    with pytest.raises(CrlRejected, match="holds no certificate"):
        require_crl_bundle(ISSUING.crl(), b"", now=NOW)
