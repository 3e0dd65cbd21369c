"""The signing-key interface: curves and hashes, in-memory keys, and the passphrase that unlocks a key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

from fleetguard.pki.errors import InsecureKeyFile, KeyBackendError, KeyUnlockFailed, ProfileInputRejected
from fleetguard.pki.keys import (
    MAX_SECRET_SIZE,
    Curve,
    Passphrase,
    SoftwareKey,
    curve_of,
    generate_software_key,
    hash_for_curve,
    signature_algorithm_oid,
)


class RsaKey:
    """A SigningKey over an RSA key, signing PKCS#1 v1.5 with ``hash_algorithm``."""

    def __init__(self, hash_algorithm: hashes.HashAlgorithm) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._hash = hash_algorithm

    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return self._hash

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, padding.PKCS1v15(), self._hash)


@pytest.mark.parametrize(
    ("curve", "hash_name", "oid"),
    [
        (Curve.P256, "sha256", SignatureAlgorithmOID.ECDSA_WITH_SHA256),
        (Curve.P384, "sha384", SignatureAlgorithmOID.ECDSA_WITH_SHA384),
    ],
)
def test_each_curve_signs_with_the_hash_of_matching_strength(
    curve: Curve, hash_name: str, oid: object
) -> None:
    key = generate_software_key(curve)

    assert hash_for_curve(curve).name == hash_name
    assert key.hash_algorithm.name == hash_name
    assert key.curve is curve
    assert curve_of(key.public_key()) is curve
    assert signature_algorithm_oid(key) == oid
    key.public_key().verify(key.sign(b"tbs"), b"tbs", ec.ECDSA(key.hash_algorithm))


def test_rsa_keys_name_pkcs1_signature_algorithms() -> None:
    assert signature_algorithm_oid(RsaKey(hashes.SHA256())) == SignatureAlgorithmOID.RSA_WITH_SHA256
    assert signature_algorithm_oid(RsaKey(hashes.SHA384())) == SignatureAlgorithmOID.RSA_WITH_SHA384


def test_a_key_hashing_with_sha1_has_no_signature_algorithm() -> None:
    with pytest.raises(KeyBackendError, match="uses hash sha1"):
        signature_algorithm_oid(RsaKey(hashes.SHA1()))  # noqa: S303 - the weak hash is the point


def test_software_key_refuses_other_curves() -> None:
    with pytest.raises(ProfileInputRejected, match="secp521r1 is not allowed"):
        SoftwareKey(ec.generate_private_key(ec.SECP521R1()))


def test_software_key_repr_shows_no_key_material() -> None:
    key = generate_software_key(Curve.P256)

    assert "private_key" not in repr(key)
    assert repr(key) == "SoftwareKey()"


def test_passphrase_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FG_TEST_PASSPHRASE", "correct horse")

    passphrase = Passphrase.from_env("FG_TEST_PASSPHRASE")

    assert passphrase.reveal() == b"correct horse"
    assert passphrase.source == "environment variable FG_TEST_PASSPHRASE"
    assert "correct horse" not in repr(passphrase)


def test_passphrase_from_unset_env_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FG_TEST_PASSPHRASE", raising=False)

    with pytest.raises(KeyUnlockFailed, match="FG_TEST_PASSPHRASE is not set"):
        Passphrase.from_env("FG_TEST_PASSPHRASE")


def test_empty_passphrase_from_env_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FG_TEST_PASSPHRASE", "")

    with pytest.raises(KeyUnlockFailed, match="from environment variable FG_TEST_PASSPHRASE is empty"):
        Passphrase.from_env("FG_TEST_PASSPHRASE")


def _secret_file(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"s3cret\n", b"s3cret"),
        (b"s3cret\r\n", b"s3cret"),
        (b"s3cret", b"s3cret"),
        (b"s3cret\n\n", b"s3cret\n"),  # only one newline is an editor's; the rest is the secret
        (b" s3cret \n", b" s3cret "),
    ],
)
def test_passphrase_from_file_drops_one_trailing_newline(
    tmp_path: Path, content: bytes, expected: bytes
) -> None:
    passphrase = Passphrase.from_file(_secret_file(tmp_path / "pass", content))

    assert passphrase.reveal() == expected
    assert passphrase.source == f"file {tmp_path / 'pass'}"


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
def test_empty_passphrase_file_is_refused(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(KeyUnlockFailed, match="is empty"):
        Passphrase.from_file(_secret_file(tmp_path / "pass", content))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_passphrase_file_others_can_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = _secret_file(tmp_path / "pass", b"s3cret\n", mode)

    with pytest.raises(InsecureKeyFile, match=f"has mode {mode:04o}: others can access it") as raised:
        Passphrase.from_file(path)

    assert raised.value.hint == f"chmod 600 {path}"
    assert "s3cret" not in str(raised.value)


def test_passphrase_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)

    with pytest.raises(InsecureKeyFile, match="is not a regular file"):
        Passphrase.from_file(directory)


def test_missing_passphrase_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyBackendError, match=r"cannot open passphrase file .*missing"):
        Passphrase.from_file(tmp_path / "missing")


def test_oversize_passphrase_file_is_refused(tmp_path: Path) -> None:
    path = _secret_file(tmp_path / "pass", b"x" * (MAX_SECRET_SIZE + 3))

    with pytest.raises(KeyBackendError, match="is larger than"):
        Passphrase.from_file(path)


def test_oversize_passphrase_is_refused() -> None:
    with pytest.raises(KeyUnlockFailed, match=f"larger than {MAX_SECRET_SIZE} bytes"):
        Passphrase(b"x" * (MAX_SECRET_SIZE + 1), source="test")
