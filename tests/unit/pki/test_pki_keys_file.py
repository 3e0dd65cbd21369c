"""CA keys in encrypted PKCS#8 files: created 0600 and never overwritten; loading fails closed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fleetguard.pki.errors import InsecureKeyFile, KeyBackendError, KeyExists, KeyUnlockFailed
from fleetguard.pki.keys import Curve, Passphrase, SoftwareKey
from fleetguard.pki.keys_file import MAX_KEY_FILE_SIZE, FileKey

PASSPHRASE = Passphrase(b"correct horse battery staple", source="test passphrase")
WRONG = Passphrase(b"incorrect horse", source="test wrong passphrase")


def _spki(key: SoftwareKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


@pytest.mark.parametrize("curve", [Curve.P256, Curve.P384])
def test_generate_writes_an_encrypted_owner_only_file_that_loads_back(tmp_path: Path, curve: Curve) -> None:
    path = tmp_path / "issuing.key"

    generated = FileKey.generate(path, curve, PASSPHRASE)
    loaded = FileKey.load(path, PASSPHRASE)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert b"correct horse" not in path.read_bytes()
    assert loaded.curve is curve
    assert loaded.path == path
    assert _spki(loaded) == _spki(generated)


def test_generate_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        FileKey.generate(tmp_path / "k", Curve.P256, PASSPHRASE)
    finally:
        os.umask(previous)

    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_generate_never_overwrites_a_key(tmp_path: Path) -> None:
    path = tmp_path / "issuing.key"
    FileKey.generate(path, Curve.P256, PASSPHRASE)
    before = path.read_bytes()

    with pytest.raises(KeyExists, match="already exists"):
        FileKey.generate(path, Curve.P256, PASSPHRASE)

    assert path.read_bytes() == before


def test_generate_does_not_follow_a_dangling_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "issuing.key").symlink_to(target)

    with pytest.raises(KeyExists):
        FileKey.generate(tmp_path / "issuing.key", Curve.P256, PASSPHRASE)

    assert not target.exists()


def test_generate_into_a_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(KeyBackendError, match="cannot create key file"):
        FileKey.generate(tmp_path / "missing" / "k", Curve.P256, PASSPHRASE)


def test_wrong_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "issuing.key"
    FileKey.generate(path, Curve.P256, PASSPHRASE)

    with pytest.raises(
        KeyUnlockFailed, match=r"cannot decrypt key file .* with the passphrase from test wrong passphrase"
    ) as raised:
        FileKey.load(path, WRONG)

    assert raised.value.hint == "check the passphrase"
    assert raised.value.status == 503
    assert "incorrect horse" not in str(raised.value)


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o660, 0o606])
def test_key_file_others_can_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "issuing.key"
    FileKey.generate(path, Curve.P256, PASSPHRASE)
    os.chmod(path, mode)

    with pytest.raises(InsecureKeyFile, match=f"key file .* has mode {mode:04o}"):
        FileKey.load(path, PASSPHRASE)


def test_unencrypted_key_file_is_refused(tmp_path: Path) -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = _write_private(tmp_path / "plain.key", pem)

    with pytest.raises(KeyBackendError, match="is not an encrypted PKCS#8 PEM key"):
        FileKey.load(path, PASSPHRASE)


def test_rsa_key_file_is_refused(tmp_path: Path) -> None:
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE.reveal()),
    )
    path = _write_private(tmp_path / "rsa.key", pem)

    with pytest.raises(KeyBackendError, match="does not hold an EC key"):
        FileKey.load(path, PASSPHRASE)


def test_key_on_another_curve_is_refused(tmp_path: Path) -> None:
    pem = ec.generate_private_key(ec.SECP521R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE.reveal()),
    )
    path = _write_private(tmp_path / "p521.key", pem)

    with pytest.raises(KeyBackendError, match="secp521r1 is not allowed"):
        FileKey.load(path, PASSPHRASE)


def test_missing_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyBackendError, match="cannot open key file"):
        FileKey.load(tmp_path / "missing.key", PASSPHRASE)


def test_oversize_key_file_is_refused(tmp_path: Path) -> None:
    path = _write_private(tmp_path / "huge.key", b"-----BEGIN ENCRYPTED PRIVATE KEY-----" * MAX_KEY_FILE_SIZE)

    with pytest.raises(KeyBackendError, match=f"larger than {MAX_KEY_FILE_SIZE} bytes"):
        FileKey.load(path, PASSPHRASE)


def test_garbage_behind_the_header_is_refused(tmp_path: Path) -> None:
    path = _write_private(
        tmp_path / "bad.key",
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )

    with pytest.raises(KeyBackendError):
        FileKey.load(path, PASSPHRASE)


def test_file_key_repr_names_the_path_only(tmp_path: Path) -> None:
    key = FileKey.generate(tmp_path / "k", Curve.P256, PASSPHRASE)

    assert repr(key) == f"FileKey(path={tmp_path / 'k'!r})"
