"""The file key store: a P-256 key in a mode-0600 PEM file, never overwritten, refused when exposed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fleetguard.agent.errors import KeyStoreError
from fleetguard.agent.keystore import KeyStoreKind
from fleetguard.agent.keystore_file import FileKeyStore
from fleetguard.agent.transport import TlsClientKey, TlsKeyKind
from fleetguard.pki.keys import SoftwareKey

PEM = serialization.Encoding.PEM
PKCS8 = serialization.PrivateFormat.PKCS8


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _pem(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    encryption: serialization.KeySerializationEncryption | None = None,
) -> bytes:
    return key.private_bytes(PEM, PKCS8, encryption or serialization.NoEncryption())


def test_create_writes_a_p256_key_only_the_owner_can_read(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "device-key.pem")
    assert not store.exists()

    store.create()

    assert store.exists()
    assert stat.S_IMODE((tmp_path / "device-key.pem").stat().st_mode) == 0o600
    key = store.signing_key()
    assert isinstance(key, SoftwareKey)
    assert key.public_key().curve.name == "secp256r1"


def test_the_key_is_the_same_on_every_load(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "device-key.pem")
    store.create()

    assert (
        store.signing_key().public_key()
        == FileKeyStore(tmp_path / "device-key.pem").signing_key().public_key()
    )


def test_create_never_overwrites_a_key(tmp_path: Path) -> None:
    path = tmp_path / "device-key.pem"
    store = FileKeyStore(path)
    store.create()
    before = path.read_bytes()

    with pytest.raises(KeyStoreError, match=rf"^{path} exists; the agent does not overwrite a key$"):
        store.create()

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device-key.pem"]


def test_create_does_not_follow_a_dangling_link(tmp_path: Path) -> None:
    path = tmp_path / "device-key.pem"
    path.symlink_to(tmp_path / "elsewhere.pem")
    store = FileKeyStore(path)

    assert store.exists()
    with pytest.raises(KeyStoreError, match=r"exists; the agent does not overwrite a key$"):
        store.create()
    assert not (tmp_path / "elsewhere.pem").exists()


def test_create_in_a_missing_directory_fails(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "device-key.pem"

    with pytest.raises(
        KeyStoreError, match=rf"^cannot write the key file {path}: No such file or directory$"
    ):
        FileKeyStore(path).create()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "device-key.pem", _pem(ec.generate_private_key(ec.SECP256R1())), mode)

    with pytest.raises(
        KeyStoreError,
        match=rf"^device key {path} has mode {mode:04o}: others can access it \(chmod 600 {path}\)$",
    ):
        FileKeyStore(path).signing_key()

    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_missing_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "device-key.pem"

    with pytest.raises(KeyStoreError, match=rf"^cannot open device key {path}: No such file or directory$"):
        FileKeyStore(path).signing_key()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a key",
        _pem(ec.generate_private_key(ec.SECP256R1()), serialization.BestAvailableEncryption(b"secret")),
    ],
)
def test_a_file_that_is_not_an_unencrypted_key_is_refused(tmp_path: Path, content: bytes) -> None:
    path = _write(tmp_path / "device-key.pem", content)

    with pytest.raises(KeyStoreError, match=rf"^{path} is not an unencrypted PEM private key$"):
        FileKeyStore(path).signing_key()


def test_an_rsa_key_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "device-key.pem", _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    )

    with pytest.raises(KeyStoreError, match=rf"^{path} is not an EC key$"):
        FileKeyStore(path).signing_key()


def test_a_key_on_another_curve_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "device-key.pem", _pem(ec.generate_private_key(ec.SECP521R1())))

    with pytest.raises(KeyStoreError, match=rf"^{path}: curve secp521r1 is not allowed"):
        FileKeyStore(path).signing_key()


def test_an_oversized_key_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "device-key.pem", b"x" * (16 * 1024 + 1))

    with pytest.raises(KeyStoreError, match=rf"^device key {path} is larger than 16384 bytes$"):
        FileKeyStore(path).signing_key()


def test_the_tls_key_is_the_file(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "device-key.pem")

    assert store.tls_key() == TlsClientKey(TlsKeyKind.FILE, str(tmp_path / "device-key.pem"))
    assert store.kind is KeyStoreKind.FILE
    assert store.describe() == f"file {tmp_path / 'device-key.pem'}"
    store.close()
    store.close()
