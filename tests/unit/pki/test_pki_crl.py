"""CRLs: partitioned full and delta CRLs that pkilint, cryptography and openssl all accept."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.pki.ca import CertificateAuthority
from fleetguard.pki.crl import (
    DEFAULT_PARTITIONS,
    MAX_CRL_NUMBER,
    SignedCrl,
    build_crl,
    build_crl_shards,
    build_delta_crl,
    crl_url,
    distribution_point_url,
    partitions_for,
)
from fleetguard.pki.errors import CaError, SigningFailed
from fleetguard.pki.keys import Curve, SigningKey, SoftwareKey, generate_software_key
from fleetguard.pki.revocation import MAX_SERIAL, RevocationReason, RevokedEntry, partition_of

BASE = "http://pki.fleet.example.org/ca/issuing-1"
PARTITIONS = 8
DAY = dt.timedelta(days=1)
Lint = Callable[[bytes, str], list[str]]
OpenSsl = Callable[..., subprocess.CompletedProcess[str]]


def _entry(
    serial: int,
    now: dt.datetime,
    reason: RevocationReason = RevocationReason.KEY_COMPROMISE,
    *,
    not_after: dt.datetime | None = None,
) -> RevokedEntry:
    return RevokedEntry(serial, now - dt.timedelta(hours=1), reason, not_after or now + 30 * DAY)


def _shard_entries(now: dt.datetime, partition: int, count: int) -> list[RevokedEntry]:
    """``count`` entries of ``partition``, one per reason in turn."""
    reasons = list(RevocationReason)
    return [
        _entry(
            (2**158 + 7919 * index) // PARTITIONS * PARTITIONS + partition, now, reasons[index % len(reasons)]
        )
        for index in range(count)
    ]


def _full(
    ca: CertificateAuthority, entries: Sequence[RevokedEntry], now: dt.datetime, **kw: object
) -> SignedCrl:
    arguments: dict[str, object] = {
        "issuer_cert": ca.issuing,
        "key": ca.key,
        "number": 7,
        "this_update": now,
        "next_update": now + DAY,
        "partition": 3,
        "partitions": PARTITIONS,
        "base_url": BASE,
    }
    arguments.update(kw)
    return build_crl(entries, **arguments)  # type: ignore[arg-type]


def _serials(crl: SignedCrl) -> set[int]:
    return {revoked.serial_number for revoked in x509.load_der_x509_crl(crl.der)}


def _idp(crl: x509.CertificateRevocationList) -> x509.Extension[x509.IssuingDistributionPoint]:
    return crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)


# --- URLs and partitions ---------------------------------------------------------------------------


def test_urls_name_the_shard_and_its_delta() -> None:
    assert crl_url(BASE, 5) == f"{BASE}/crl/5.crl"
    assert crl_url(BASE, 5, delta=True) == f"{BASE}/crl/5-delta.crl"
    assert crl_url(BASE, None) == f"{BASE}/crl/full.crl"
    assert crl_url(BASE, None, delta=True) == f"{BASE}/crl/full-delta.crl"


def test_distribution_point_url_is_the_serials_shard() -> None:
    serial = 2**158 + 12345
    assert distribution_point_url(BASE, serial, 1024) == f"{BASE}/crl/{serial % 1024}.crl"


def test_bad_base_url_and_partition_are_refused() -> None:
    with pytest.raises(ValueError, match="must not end with '/'"):
        crl_url(BASE + "/", 1)
    with pytest.raises(ValueError, match="must not be negative"):
        crl_url(BASE, -1)


def test_partition_count_for_the_size_goal() -> None:
    # 1M entries of at most 55 bytes with 2 KiB overhead: 1824 entries fit in 100 KiB, so the mean
    # shard may hold 1622 (1622 + 5 * sqrt(1622) <= 1824): 617 shards.
    assert partitions_for(1_000_000, 100 * 1024) == 617
    assert partitions_for(1_000_000, 100 * 1024) <= DEFAULT_PARTITIONS
    assert partitions_for(0, 100 * 1024) == 1
    assert partitions_for(10, 100 * 1024) == 1
    with pytest.raises(ValueError, match="leaves no room"):
        partitions_for(10, 2048)


def test_largest_entries_fit_the_size_model(ca: CertificateAuthority, now: dt.datetime) -> None:
    # A shard of 1000 entries of the largest kind (20-octet serial, GeneralizedTime, reasonCode).
    late = dt.datetime(2051, 1, 1, tzinfo=dt.UTC)
    entries = [
        RevokedEntry(MAX_SERIAL - index * PARTITIONS, late, RevocationReason.AA_COMPROMISE, late)
        for index in range(1000)
    ]
    crl = _full(ca, entries, now, partition=partition_of(MAX_SERIAL, PARTITIONS))
    assert crl.entries == 1000
    assert len(crl.der) <= 2048 + 1000 * 55


# --- full CRLs -------------------------------------------------------------------------------------


def test_shard_crl_passes_pkilint_and_carries_its_scope(
    ca: CertificateAuthority, now: dt.datetime, pkilint_findings: Lint
) -> None:
    entries = _shard_entries(now, 3, 16)
    signed = _full(ca, entries, now, with_delta=True)
    assert pkilint_findings(signed.der, "crl") == []
    crl = x509.load_der_x509_crl(signed.der)
    assert crl.is_signature_valid(ca.key.public_key())
    assert crl.issuer == ca.issuing.subject
    assert crl.last_update_utc == now.replace(microsecond=0)
    assert crl.next_update_utc == (now + DAY).replace(microsecond=0)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    ski = ca.issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    idp = _idp(crl)
    assert idp.critical
    assert idp.value.full_name == [x509.UniformResourceIdentifier(f"{BASE}/crl/3.crl")]
    assert idp.value.only_contains_user_certs
    freshest = crl.extensions.get_extension_for_class(x509.FreshestCRL)
    assert freshest.value[0].full_name == [x509.UniformResourceIdentifier(f"{BASE}/crl/3-delta.crl")]
    assert (signed.url, signed.number, signed.partition, signed.base_number) == (
        f"{BASE}/crl/3.crl",
        7,
        3,
        None,
    )
    assert signed.entries == 16
    assert _serials(signed) == {entry.serial for entry in entries}


def test_reason_code_is_present_except_for_unspecified(ca: CertificateAuthority, now: dt.datetime) -> None:
    entries = _shard_entries(now, 3, len(RevocationReason))
    crl = x509.load_der_x509_crl(_full(ca, entries, now).der)
    for entry in entries:
        revoked = crl.get_revoked_certificate_by_serial_number(entry.serial)
        assert revoked is not None
        assert revoked.revocation_date_utc == entry.revoked_at.replace(microsecond=0)
        if entry.reason is RevocationReason.UNSPECIFIED:
            assert len(revoked.extensions) == 0  # RFC 5280 5.3.1: absent rather than unspecified
        else:
            reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
            assert RevocationReason.from_reason_flag(reason) is entry.reason


def test_complete_crl_has_scope_without_a_distribution_point(
    ca: CertificateAuthority, now: dt.datetime, pkilint_findings: Lint
) -> None:
    entries = [_entry(serial, now) for serial in range(1000, 1020)]
    signed = _full(ca, entries, now, partition=None)
    assert pkilint_findings(signed.der, "crl") == []
    idp = _idp(x509.load_der_x509_crl(signed.der))
    assert idp.value.full_name is None
    assert idp.value.only_contains_user_certs
    assert signed.url == f"{BASE}/crl/full.crl"
    assert _serials(signed) == set(range(1000, 1020))


def test_empty_shard_omits_the_revoked_list(
    ca: CertificateAuthority, now: dt.datetime, pkilint_findings: Lint, openssl: OpenSsl, tmp_path: Path
) -> None:
    signed = _full(ca, [], now)
    assert pkilint_findings(signed.der, "crl") == []
    assert len(x509.load_der_x509_crl(signed.der)) == 0
    (tmp_path / "empty.crl").write_bytes(signed.der)
    shown = openssl("crl", "-inform", "DER", "-in", tmp_path / "empty.crl", "-noout", "-text")
    assert shown.returncode == 0, shown.stderr
    assert "No Revoked Certificates." in shown.stdout


def test_openssl_parses_the_crl(
    ca: CertificateAuthority, now: dt.datetime, openssl: OpenSsl, tmp_path: Path
) -> None:
    path = tmp_path / "3.crl"
    path.write_bytes(_full(ca, _shard_entries(now, 3, 4), now).der)
    shown = openssl("crl", "-inform", "DER", "-in", path, "-noout", "-text")
    assert shown.returncode == 0, shown.stderr
    assert "X509v3 Issuing Distribution Point: critical" in shown.stdout
    assert f"URI:{BASE}/crl/3.crl" in shown.stdout
    assert "Only User Certificates" in shown.stdout
    assert "Key Compromise" in shown.stdout


def test_pem_is_what_mosquitto_reads(ca: CertificateAuthority, now: dt.datetime) -> None:
    signed = _full(ca, _shard_entries(now, 3, 2), now)
    pem = signed.pem()
    assert pem.startswith(b"-----BEGIN X509 CRL-----\n")
    assert x509.load_pem_x509_crl(pem).public_bytes(serialization.Encoding.DER) == signed.der


@pytest.mark.parametrize("serial", [1, 127, 128, 255, 256, 2**64, 2**158, MAX_SERIAL])
def test_serials_are_encoded_as_positive_integers(
    ca: CertificateAuthority, now: dt.datetime, serial: int
) -> None:
    signed = _full(ca, [_entry(serial, now)], now, partition=None)
    assert _serials(signed) == {serial}


def test_revocation_after_2049_uses_generalized_time(ca: CertificateAuthority, now: dt.datetime) -> None:
    late = dt.datetime(2050, 1, 1, 0, 0, 1, tzinfo=dt.UTC)
    entry = RevokedEntry(99, late, RevocationReason.SUPERSEDED, late + DAY)
    signed = _full(ca, [entry], now, partition=None)
    assert b"\x18\x0f20500101000001Z" in signed.der
    revoked = x509.load_der_x509_crl(signed.der).get_revoked_certificate_by_serial_number(99)
    assert revoked is not None
    assert revoked.revocation_date_utc == late


def test_times_in_other_zones_are_written_in_utc(ca: CertificateAuthority, now: dt.datetime) -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    signed = _full(ca, [], now.astimezone(plus_two), next_update=(now + DAY).astimezone(plus_two))
    assert x509.load_der_x509_crl(signed.der).last_update_utc == now.replace(microsecond=0)


# --- expiry (RFC 5280 3.3) -------------------------------------------------------------------------


def test_expired_entries_stay_one_period_then_leave(ca: CertificateAuthority, now: dt.datetime) -> None:
    keep_after = now - DAY  # this_update - (next_update - this_update)
    entries = [
        _entry(8 * 1 + 3, now, not_after=now + DAY),  # valid
        _entry(8 * 2 + 3, now, not_after=now - dt.timedelta(hours=1)),  # expired, not yet on a later CRL
        _entry(8 * 3 + 3, now, not_after=keep_after),  # exactly at the boundary: kept
        _entry(8 * 4 + 3, now, not_after=keep_after - dt.timedelta(microseconds=1)),  # dropped
        _entry(8 * 5 + 3, now, not_after=now - 10 * DAY),  # long expired: dropped
    ]
    signed = _full(ca, entries, now)
    assert _serials(signed) == {8 * 1 + 3, 8 * 2 + 3, 8 * 3 + 3}
    assert signed.entries == 3


def test_shards_drop_expired_entries_too(ca: CertificateAuthority, now: dt.datetime) -> None:
    entries = [_entry(serial, now, not_after=now - 10 * DAY) for serial in range(1, 50)]
    shards = build_crl_shards(
        entries,
        issuer_cert=ca.issuing,
        key=ca.key,
        number=1,
        this_update=now,
        next_update=now + DAY,
        partitions=PARTITIONS,
        base_url=BASE,
    )
    assert [shard.entries for shard in shards] == [0] * PARTITIONS


# --- partitioning ----------------------------------------------------------------------------------


def test_each_serial_is_in_exactly_one_shard(ca: CertificateAuthority, now: dt.datetime) -> None:
    entries = [_entry(2**158 + 104729 * index, now) for index in range(200)]
    shards = build_crl_shards(
        entries,
        issuer_cert=ca.issuing,
        key=ca.key,
        number=9,
        this_update=now,
        next_update=now + DAY,
        partitions=PARTITIONS,
        base_url=BASE,
    )
    assert [shard.partition for shard in shards] == list(range(PARTITIONS))
    seen: dict[int, int] = {}
    for shard in shards:
        for serial in _serials(shard):
            assert serial not in seen, f"serial {serial} in shards {seen[serial]} and {shard.partition}"
            seen[serial] = shard.partition  # type: ignore[assignment]
    assert seen == {entry.serial: partition_of(entry.serial, PARTITIONS) for entry in entries}
    # The one-pass build and the per-shard build agree.
    one = _full(ca, entries, now, number=9, partition=5)
    assert _serials(one) == _serials(shards[5])


def test_build_crl_leaves_out_other_shards(ca: CertificateAuthority, now: dt.datetime) -> None:
    entries = [_entry(serial, now) for serial in range(1, 33)]
    assert _serials(_full(ca, entries, now, partition=3)) == {3, 11, 19, 27}


def test_partition_of_is_stable_and_in_range() -> None:
    assert [partition_of(serial, 4) for serial in range(1, 9)] == [1, 2, 3, 0, 1, 2, 3, 0]
    with pytest.raises(ValueError, match="at least 1"):
        partition_of(5, 0)


# --- delta CRLs ------------------------------------------------------------------------------------


def test_delta_crl_passes_pkilint_and_names_its_base(
    ca: CertificateAuthority, now: dt.datetime, pkilint_findings: Lint, openssl: OpenSsl, tmp_path: Path
) -> None:
    base = _full(ca, _shard_entries(now, 3, 10), now, number=7)
    new = [_entry(8 * 1000 + 3, now, RevocationReason.CESSATION_OF_OPERATION)]
    signed = build_delta_crl(
        new,
        issuer_cert=ca.issuing,
        key=ca.key,
        number=8,
        base_number=base.number,
        this_update=now,
        next_update=now + DAY,
        partition=3,
        partitions=PARTITIONS,
        base_url=BASE,
    )
    assert pkilint_findings(signed.der, "crl") == []
    crl = x509.load_der_x509_crl(signed.der)
    indicator = crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    assert indicator.critical
    assert indicator.value.crl_number == 7
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 8
    # RFC 5280 5.2.4: the same scope as its base.
    assert _idp(crl).value == _idp(x509.load_der_x509_crl(base.der)).value
    assert (signed.url, signed.base_number) == (f"{BASE}/crl/3-delta.crl", 7)
    assert _serials(signed) == {8 * 1000 + 3}
    (tmp_path / "delta.crl").write_bytes(signed.der)
    shown = openssl("crl", "-inform", "DER", "-in", tmp_path / "delta.crl", "-noout", "-text")
    assert shown.returncode == 0, shown.stderr
    assert "X509v3 Delta CRL Indicator: critical" in shown.stdout


def test_delta_number_must_follow_its_base(ca: CertificateAuthority, now: dt.datetime) -> None:
    with pytest.raises(ValueError, match="must exceed its base CRL number"):
        build_delta_crl(
            [],
            issuer_cert=ca.issuing,
            key=ca.key,
            number=7,
            base_number=7,
            this_update=now,
            next_update=now + DAY,
            partition=3,
            partitions=PARTITIONS,
            base_url=BASE,
        )


# --- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"number": -1}, "outside 0..2"),
        ({"number": MAX_CRL_NUMBER + 1}, "outside 0..2"),
        ({"partition": PARTITIONS}, "outside 0..7"),
        ({"partitions": 0}, "at least 1"),
        ({"next_update": dt.datetime(2026, 3, 14, 15, 9, 26, 999999, tzinfo=dt.UTC)}, "at least a second"),
        ({"this_update": dt.datetime(2026, 3, 14)}, "timezone-aware"),  # noqa: DTZ001 - the naive time under test
    ],
)
def test_out_of_range_input_is_refused(
    ca: CertificateAuthority, now: dt.datetime, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _full(ca, [], now, **changes)


def test_key_of_another_ca_is_refused(ca: CertificateAuthority, now: dt.datetime) -> None:
    with pytest.raises(CaError, match="the signing key is not the key of issuer"):
        _full(ca, [], now, key=generate_software_key(Curve.P256))


class _BrokenToken:
    """A key backend that signs with the wrong key: its signatures do not verify."""

    def __init__(self, key: SoftwareKey) -> None:
        self._real = key
        self._other = generate_software_key(Curve.P256)

    def public_key(self) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        return self._real.public_key()

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return self._real.hash_algorithm

    def sign(self, data: bytes) -> bytes:
        return self._other.sign(data)


def test_signature_that_does_not_verify_is_never_returned(ca: CertificateAuthority, now: dt.datetime) -> None:
    assert isinstance(ca.key, SoftwareKey)
    broken: SigningKey = _BrokenToken(ca.key)
    with pytest.raises(SigningFailed, match="CRL signature made by the key backend does not verify"):
        _full(ca, [], now, key=broken)


# --- openssl verify -crl_check: the CRL revokes what it should, where the certificate points -------


def _device_certificate(ca: CertificateAuthority, serial: int, now: dt.datetime) -> x509.Certificate:
    assert isinstance(ca.key, SoftwareKey)
    key = ec.generate_private_key(ec.SECP256R1())
    ski = ca.issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    url = distribution_point_url(BASE, serial, PARTITIONS)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"device-{serial}")]))
        .issuer_name(ca.issuing.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now.replace(microsecond=0))
        .not_valid_after(now.replace(microsecond=0) + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .add_extension(
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)]
            ),
            critical=False,
        )
        .sign(ca.key.private_key, hashes.SHA256())
    )


def _verify(
    openssl: OpenSsl,
    tmp_path: Path,
    *,
    ca: CertificateAuthority,
    device: x509.Certificate,
    crl: SignedCrl,
    now: dt.datetime,
) -> subprocess.CompletedProcess[str]:
    pem = serialization.Encoding.PEM
    (tmp_path / "root.pem").write_bytes(ca.root.public_bytes(pem))
    (tmp_path / "issuing.pem").write_bytes(ca.issuing.public_bytes(pem))
    (tmp_path / "device.pem").write_bytes(device.public_bytes(pem))
    (tmp_path / "crl.pem").write_bytes(crl.pem())
    return openssl(
        *("verify", "-attime", str(int(now.timestamp()) + 60), "-crl_check"),
        *("-CAfile", tmp_path / "root.pem", "-untrusted", tmp_path / "issuing.pem"),
        *("-CRLfile", tmp_path / "crl.pem", tmp_path / "device.pem"),
    )


def test_openssl_rejects_revoked_and_accepts_good_device_in_the_shard(
    ca: CertificateAuthority, now: dt.datetime, openssl: OpenSsl, tmp_path: Path
) -> None:
    revoked_serial, good_serial = 2**158 + 8 * 11 + 3, 2**158 + 8 * 12 + 3
    revoked = _device_certificate(ca, revoked_serial, now)
    good = _device_certificate(ca, good_serial, now)
    shard = _full(ca, [_entry(revoked_serial, now)], now, partition=partition_of(revoked_serial, PARTITIONS))

    refused = _verify(openssl, tmp_path, ca=ca, device=revoked, crl=shard, now=now)
    assert refused.returncode != 0
    assert "certificate revoked" in refused.stdout + refused.stderr

    accepted = _verify(openssl, tmp_path, ca=ca, device=good, crl=shard, now=now)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "device.pem: OK" in accepted.stdout


def test_openssl_uses_the_complete_crl_for_any_shard(
    ca: CertificateAuthority, now: dt.datetime, openssl: OpenSsl, tmp_path: Path
) -> None:
    serial = 2**158 + 8 * 13 + 5
    complete = _full(ca, [_entry(serial, now)], now, partition=None)
    device = _device_certificate(ca, serial, now)
    refused = _verify(openssl, tmp_path, ca=ca, device=device, crl=complete, now=now)
    assert "certificate revoked" in refused.stdout + refused.stderr


def test_openssl_does_not_take_another_shards_crl_as_complete(
    ca: CertificateAuthority, now: dt.datetime, openssl: OpenSsl, tmp_path: Path
) -> None:
    # The shard's IssuingDistributionPoint limits its scope: a certificate of shard 5 is not covered
    # by shard 3's CRL, so revocation cannot be decided (fail closed), never "good".
    device = _device_certificate(ca, 2**158 + 8 * 14 + 5, now)
    other = _full(ca, [], now, partition=3)
    result = _verify(openssl, tmp_path, ca=ca, device=device, crl=other, now=now)
    assert result.returncode != 0
    assert "different CRL scope" in result.stdout + result.stderr


# --- property: the encoder agrees with cryptography's parser ---------------------------------------

_TIMES = st.datetimes(
    min_value=dt.datetime(1990, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive; timezones= makes them aware
    max_value=dt.datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.just(dt.UTC),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, MAX_SERIAL), _TIMES, st.sampled_from(list(RevocationReason))),
        max_size=20,
        unique_by=lambda item: item[0],
    )
)
def test_any_entries_round_trip_through_cryptography(
    ca: CertificateAuthority, items: list[tuple[int, dt.datetime, RevocationReason]]
) -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    entries = [RevokedEntry(serial, at, reason, now + DAY) for serial, at, reason in items]
    signed = _full(ca, entries, now, partition=None)
    crl = x509.load_der_x509_crl(signed.der)
    assert crl.is_signature_valid(ca.key.public_key())
    parsed = {revoked.serial_number: (revoked.revocation_date_utc, _reason_of(revoked)) for revoked in crl}
    assert parsed == {
        entry.serial: (entry.revoked_at.replace(microsecond=0), entry.reason) for entry in entries
    }


def _reason_of(revoked: x509.RevokedCertificate) -> RevocationReason:
    try:
        flag = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return RevocationReason.UNSPECIFIED
    return RevocationReason.from_reason_flag(flag)
