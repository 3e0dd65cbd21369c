"""Role keys: Ed25519 PEM files, written once (0600), read back as TUF signers."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import Signature, SSlibKey

from fleetguard.ota.errors import SigningError
from fleetguard.ota.keys import generate_key_file, load_public_key, load_signer, public_key_pem


def _sign_and_verify(path: Path, passphrase: bytes | None = None) -> Signature:
    signer = load_signer(path, passphrase=passphrase)
    signature = signer.sign(b"payload")
    signer.public_key.verify_signature(signature, b"payload")
    return signature


def test_generated_key_round_trips_as_a_signer(tmp_path: Path) -> None:
    path = tmp_path / "root.pem"
    public = generate_key_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert load_signer(path).public_key.keyid == public.keyid
    assert public.keytype == "ed25519"
    _sign_and_verify(path)


def test_encrypted_key_round_trips_with_its_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "root.pem"
    public = generate_key_file(path, passphrase=b"correct horse")
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert load_signer(path, passphrase=b"correct horse").public_key.keyid == public.keyid
    _sign_and_verify(path, b"correct horse")


def test_wrong_passphrase_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "root.pem"
    generate_key_file(path, passphrase=b"correct horse")
    with pytest.raises(
        SigningError, match=r"is not a readable private key.*check the file and its passphrase"
    ):
        load_signer(path, passphrase=b"battery staple")


def test_missing_passphrase_for_an_encrypted_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "root.pem"
    generate_key_file(path, passphrase=b"correct horse")
    with pytest.raises(SigningError, match="is not a readable private key"):
        load_signer(path)


def test_passphrase_for_a_plain_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "root.pem"
    generate_key_file(path)
    with pytest.raises(SigningError, match="is not a readable private key"):
        load_signer(path, passphrase=b"unexpected")


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "root.pem"
    generate_key_file(path)
    before = path.read_bytes()
    with pytest.raises(SigningError, match="exists; refusing to overwrite a key"):
        generate_key_file(path)
    assert path.read_bytes() == before


def test_generate_refuses_a_dangling_link(tmp_path: Path) -> None:
    path = tmp_path / "root.pem"
    path.symlink_to(tmp_path / "elsewhere.pem")
    with pytest.raises(SigningError, match="refusing to overwrite"):
        generate_key_file(path)
    assert not (tmp_path / "elsewhere.pem").exists()


def test_generate_into_a_missing_directory_is_a_signing_error(tmp_path: Path) -> None:
    with pytest.raises(SigningError, match="cannot write key file"):
        generate_key_file(tmp_path / "absent" / "root.pem")


def _ec_private_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_non_ed25519_private_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    path.write_bytes(_ec_private_pem())
    with pytest.raises(SigningError, match="holds a ECPrivateKey; OTA role keys are Ed25519"):
        load_signer(path)


def test_non_ed25519_public_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ec.pub"
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    path.write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SigningError, match="holds a ECPublicKey; OTA role keys are Ed25519"):
        load_public_key(path)


def test_garbage_is_not_a_key(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pem"
    path.write_bytes(b"not a key at all\n")
    with pytest.raises(SigningError, match="is not a readable private key"):
        load_signer(path)
    with pytest.raises(SigningError, match="is not a PEM public key"):
        load_public_key(path)


def test_oversized_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.pem"
    path.write_bytes(b"A" * (16 * 1024 + 1))
    with pytest.raises(SigningError, match="larger than 16384 bytes"):
        load_signer(path)
    with pytest.raises(SigningError, match="larger than 16384 bytes"):
        load_public_key(path)


def test_a_key_file_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "padded.pem"
    pem = _ec_private_pem()
    path.write_bytes(pem + b"\n" * (16 * 1024 - len(pem)))
    with pytest.raises(SigningError, match="OTA role keys are Ed25519"):  # read, parsed, then refused
        load_signer(path)


def test_a_pipe_is_read_with_the_same_bound(tmp_path: Path) -> None:
    # st_size of a FIFO is 0: the bound must hold on what is read, not on what stat says.
    path = tmp_path / "fifo.pem"
    os.mkfifo(path)

    def feed() -> None:
        with open(path, "wb") as pipe:
            pipe.write(b"A" * (64 * 1024))

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        with pytest.raises(SigningError, match="larger than 16384 bytes"):
            load_signer(path)
    finally:
        writer.join(timeout=10)


def test_missing_file_is_a_signing_error(tmp_path: Path) -> None:
    with pytest.raises(SigningError, match=r"cannot read key file .*No such file or directory"):
        load_signer(tmp_path / "absent.pem")
    with pytest.raises(SigningError, match="cannot read key file"):
        load_public_key(tmp_path / "absent.pub")


def test_public_key_pem_round_trips_through_load_public_key(tmp_path: Path) -> None:
    public = generate_key_file(tmp_path / "root.pem")
    pem = public_key_pem(public)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    (tmp_path / "root.pub").write_text(pem)
    loaded = load_public_key(tmp_path / "root.pub")
    assert loaded.keyid == public.keyid
    assert public_key_pem(loaded) == pem


def test_load_public_key_refuses_a_private_key(tmp_path: Path) -> None:
    path = tmp_path / "root.pem"
    generate_key_file(path)
    with pytest.raises(SigningError, match="holds a private key; pass the public key file"):
        load_public_key(path)


def test_public_key_pem_passes_a_pem_value_through() -> None:
    private = Ed25519PrivateKey.generate()
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    key = SSlibKey("id", "ed25519", "ed25519", {"public": pem})
    assert public_key_pem(key) == pem


def test_public_key_pem_refuses_a_key_without_a_public_value() -> None:
    key = SSlibKey.from_crypto(Ed25519PrivateKey.generate().public_key())
    key.keyval.pop("public")
    with pytest.raises(SigningError, match=f"key {key.keyid[:16]} has no public value"):
        public_key_pem(key)
