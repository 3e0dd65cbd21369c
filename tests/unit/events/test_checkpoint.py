"""Tests of signed tree heads: the note format, signatures, key ids and key files."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.events.checkpoint import (
    MAX_NOTE_SIZE,
    CheckpointSigner,
    SignedTreeHead,
    TreeHead,
    checkpoint_key_id,
    generate_signing_key,
    load_public_key,
    load_signing_key,
    verify_tree_head,
)
from fleetguard.events.errors import CheckpointError

ORIGIN = "fleetguard.example/events"
# RFC 8032 7.1 TEST 1 secret key, so that the key id and signatures below are fixed.
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
KEY = Ed25519PrivateKey.from_private_bytes(SEED)
RAW_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
ROOT = bytes(range(32))
WHEN = dt.datetime(2025, 3, 4, 5, 6, 7, 890, tzinfo=dt.UTC)
HEAD = TreeHead(origin=ORIGIN, tree_size=42, root_hash=ROOT, timestamp=WHEN)
BODY = (
    b"fleetguard.example/events\n"
    b"42\n"
    b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
    b"2025-03-04T05:06:07.000890Z\n"
)


def signed_note() -> str:
    """Return the note of HEAD signed by KEY."""
    return CheckpointSigner(KEY, ORIGIN).sign(HEAD).to_note()


def replace_line(note: str, index: int, line: str) -> str:
    """Return ``note`` with line ``index`` replaced."""
    lines = note.split("\n")
    lines[index] = line
    return "\n".join(lines)


# -- the body and the note -------------------------------------------------------------------------


def test_body_is_the_canonical_text() -> None:
    assert HEAD.body() == BODY


def test_body_writes_a_utc_offset_zero_zone_as_z() -> None:
    other_utc = WHEN.astimezone(dt.timezone(dt.timedelta(0), "GMT"))
    assert dataclasses.replace(HEAD, timestamp=other_utc).body() == BODY


def test_body_pads_whole_seconds_to_microseconds() -> None:
    head = dataclasses.replace(HEAD, timestamp=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    assert head.body().endswith(b"\n2025-01-01T00:00:00.000000Z\n")


def test_key_id_is_sha256_of_origin_newline_raw_public_key() -> None:
    assert KEY.public_key().public_bytes_raw() == RAW_PUBLIC
    expected = hashlib.sha256(ORIGIN.encode() + b"\n" + RAW_PUBLIC).hexdigest()[:16]
    assert checkpoint_key_id(ORIGIN, KEY.public_key()) == expected
    assert CheckpointSigner(KEY, ORIGIN).key_id == expected
    assert checkpoint_key_id("other.example/log", KEY.public_key()) != expected


def test_note_is_body_blank_line_and_one_signature_line() -> None:
    signer = CheckpointSigner(KEY, ORIGIN)
    sth = signer.sign(HEAD)
    signature = KEY.sign(BODY)  # Ed25519 is deterministic (RFC 8032 5.1.6)
    assert sth == SignedTreeHead(HEAD, signer.key_id, signature)
    expected = f"{BODY.decode()}\n\u2014 {signer.key_id} {base64.b64encode(signature).decode()}\n"
    assert sth.to_note() == expected


def test_note_round_trips_and_verifies() -> None:
    note = signed_note()
    parsed = SignedTreeHead.from_note(note)
    assert parsed == CheckpointSigner(KEY, ORIGIN).sign(HEAD)
    assert parsed.head.timestamp.tzinfo is dt.UTC
    assert parsed.to_note() == note
    verify_tree_head(parsed, KEY.public_key())


timestamps = st.datetimes(
    min_value=dt.datetime(1970, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive by API
    max_value=dt.datetime(9999, 12, 31),  # noqa: DTZ001
    timezones=st.just(dt.UTC),
)
origins = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="+"),
    min_size=1,
    max_size=255,
)
heads = st.builds(
    TreeHead,
    origin=origins,
    tree_size=st.integers(min_value=0, max_value=2**64 - 1),
    root_hash=st.binary(min_size=32, max_size=32),
    timestamp=timestamps,
)


@given(heads)
def test_any_signed_head_round_trips_through_its_note(head: TreeHead) -> None:
    sth = CheckpointSigner(KEY, head.origin).sign(head)
    parsed = SignedTreeHead.from_note(sth.to_note())
    assert parsed == sth
    verify_tree_head(parsed, KEY.public_key())


@given(st.text(max_size=400))
def test_parser_accepts_only_canonical_notes(text: str) -> None:
    try:
        parsed = SignedTreeHead.from_note(text)
    except CheckpointError:
        return
    assert parsed.to_note() == text


@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_any_changed_character_is_rejected(position: int, delta: int) -> None:
    note = signed_note()
    position %= len(note)
    changed = note[:position] + chr((ord(note[position]) + delta) % 0x110000) + note[position + 1 :]
    with pytest.raises(CheckpointError, match=r"checkpoint|origin|key id"):
        verify_tree_head(SignedTreeHead.from_note(changed), KEY.public_key())


# -- tampering and wrong keys ----------------------------------------------------------------------


SIGNATURE_INVALID = r"^checkpoint signature for fleetguard\.example/events at size \d+ is invalid$"


@pytest.mark.parametrize(
    ("index", "line", "pattern"),
    [
        (0, "fleetguard.example/other", r"^checkpoint key id [0-9a-f]{16} is not the expected"),
        (1, "43", SIGNATURE_INVALID),
        (2, base64.b64encode(bytes(32)).decode(), SIGNATURE_INVALID),
        (3, "2025-03-04T05:06:08.000890Z", SIGNATURE_INVALID),
    ],
    ids=["origin", "size", "root", "timestamp"],
)
def test_tampered_body_fails_verification(index: int, line: str, pattern: str) -> None:
    tampered = SignedTreeHead.from_note(replace_line(signed_note(), index, line))
    with pytest.raises(CheckpointError, match=pattern):
        verify_tree_head(tampered, KEY.public_key())


def test_tampered_size_fails_signature_check() -> None:
    tampered = SignedTreeHead.from_note(replace_line(signed_note(), 1, "41"))
    with pytest.raises(
        CheckpointError, match=r"^checkpoint signature for fleetguard.example/events at size 41"
    ):
        verify_tree_head(tampered, KEY.public_key())


def test_tampered_signature_fails_verification() -> None:
    sth = SignedTreeHead.from_note(signed_note())
    forged = dataclasses.replace(sth, signature=bytes([sth.signature[0] ^ 1]) + sth.signature[1:])
    with pytest.raises(CheckpointError, match=r"signature .* is invalid$"):
        verify_tree_head(forged, KEY.public_key())


def test_other_key_is_rejected_by_key_id() -> None:
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(CheckpointError, match=r"^checkpoint key id [0-9a-f]{16} is not the expected"):
        verify_tree_head(SignedTreeHead.from_note(signed_note()), other)


def test_other_key_with_copied_key_id_fails_signature_check() -> None:
    other = Ed25519PrivateKey.generate()
    forged = SignedTreeHead(HEAD, checkpoint_key_id(ORIGIN, KEY.public_key()), other.sign(BODY))
    with pytest.raises(CheckpointError, match=r"signature .* is invalid$"):
        verify_tree_head(forged, KEY.public_key())


def test_signer_refuses_a_head_of_another_origin() -> None:
    signer = CheckpointSigner(KEY, "other.example/log")
    with pytest.raises(CheckpointError, match=r"is not this signer's 'other.example/log'"):
        signer.sign(HEAD)


# -- malformed notes -------------------------------------------------------------------------------


NOTE = signed_note()
SIG_LINE = NOTE.split("\n")[5]
MALFORMED = r"^checkpoint note is malformed \(expected origin, size, root, timestamp, a blank line"
NOT_CANONICAL = r"^checkpoint note is not in canonical form$"


def _bad_origin(origin: str) -> str:
    return rf"^origin '{origin}' is not 1-255 visible ASCII characters without '\+'$"


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        pytest.param("", MALFORMED, id="empty"),
        pytest.param(NOTE[:-1], MALFORMED, id="no final newline"),
        pytest.param(NOTE.replace("\n", "\r\n"), MALFORMED, id="crlf"),
        pytest.param(NOTE.replace("\n\n", "\nextra\n\n"), MALFORMED, id="extra body line"),
        pytest.param(NOTE + SIG_LINE + "\n", MALFORMED, id="two signatures"),
        pytest.param(NOTE.split("\n\n")[0] + "\n\n", MALFORMED, id="no signature"),
        pytest.param(NOTE.replace("\u2014", "-"), MALFORMED, id="hyphen for em dash"),
        pytest.param(replace_line(NOTE, 1, "042"), MALFORMED, id="leading zero size"),
        pytest.param(replace_line(NOTE, 1, "-42"), MALFORMED, id="negative size"),
        pytest.param(
            replace_line(NOTE, 1, str(2**64)),
            r"^tree size 18446744073709551616 is out of range 0\.\.18446744073709551615$",
            id="size above uint64",
        ),
        pytest.param(replace_line(NOTE, 2, base64.b64encode(bytes(31)).decode()), MALFORMED, id="short root"),
        pytest.param(replace_line(NOTE, 2, "_" * 43 + "="), MALFORMED, id="urlsafe root"),
        pytest.param(
            replace_line(NOTE, 2, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9="),
            NOT_CANONICAL,
            id="non-canonical base64",
        ),
        pytest.param(replace_line(NOTE, 3, "2025-03-04T05:06:07.000890+00:00"), MALFORMED, id="offset"),
        pytest.param(replace_line(NOTE, 3, "2025-03-04T05:06:07.000Z"), MALFORMED, id="millis"),
        pytest.param(
            replace_line(NOTE, 3, "2025-02-30T05:06:07.000890Z"),
            r"^checkpoint timestamp '2025-02-30T05:06:07\.000890Z' is not a valid time$",
            id="impossible date",
        ),
        pytest.param(replace_line(NOTE, 0, ""), _bad_origin(""), id="empty origin"),
        pytest.param(replace_line(NOTE, 0, "a b"), _bad_origin("a b"), id="origin with space"),
        pytest.param(replace_line(NOTE, 0, "a+b"), _bad_origin("a\\+b"), id="origin with plus"),
        pytest.param(NOTE.replace(SIG_LINE, SIG_LINE.upper()), MALFORMED, id="uppercase key id"),
        pytest.param(NOTE.replace(SIG_LINE[2:18], SIG_LINE[2:17]), MALFORMED, id="short key id"),
    ],
)
def test_malformed_note_is_rejected(text: str, pattern: str) -> None:
    with pytest.raises(CheckpointError, match=pattern):
        SignedTreeHead.from_note(text)


def test_oversized_note_is_rejected_before_parsing() -> None:
    text = "x" * (MAX_NOTE_SIZE + 1)
    with pytest.raises(CheckpointError, match=r"^checkpoint note is larger than 4096 bytes$"):
        SignedTreeHead.from_note(text)
    with pytest.raises(CheckpointError, match=r"^checkpoint note is larger than 4096 bytes$"):
        SignedTreeHead.from_note("\u2014" * 1400)  # 1400 characters, 4200 UTF-8 bytes


# -- construction ----------------------------------------------------------------------------------


def test_naive_timestamp_is_rejected() -> None:
    with pytest.raises(CheckpointError, match=r"^timestamp 2025-03-04T05:06:07 is not aware UTC$"):
        dataclasses.replace(HEAD, timestamp=dt.datetime(2025, 3, 4, 5, 6, 7))  # noqa: DTZ001


def test_non_utc_timestamp_is_rejected() -> None:
    cet = dt.timezone(dt.timedelta(hours=1))
    with pytest.raises(CheckpointError, match=r"is not aware UTC$"):
        dataclasses.replace(HEAD, timestamp=WHEN.astimezone(cet))


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: dataclasses.replace(HEAD, tree_size=-1), r"^tree size -1 is out of range"),
        (
            lambda: dataclasses.replace(HEAD, tree_size=2**64),
            r"^tree size 18446744073709551616 is out of range",
        ),
        (lambda: dataclasses.replace(HEAD, root_hash=bytes(31)), r"^root hash is 31 bytes, expected 32$"),
        (lambda: dataclasses.replace(HEAD, origin="a\nb"), r"^origin 'a\\nb' is not"),
        (lambda: dataclasses.replace(HEAD, origin="x" * 256), r"^origin 'x{64}' is not"),
    ],
    ids=["negative size", "size above uint64", "short root", "newline in origin", "long origin"],
)
def test_invalid_tree_head_is_rejected(build: Callable[[], TreeHead], pattern: str) -> None:
    with pytest.raises(CheckpointError, match=pattern):
        build()


def test_invalid_signed_tree_head_is_rejected() -> None:
    with pytest.raises(CheckpointError, match=r"^key id 'ABCDEF0123456789' is not 16 lowercase"):
        SignedTreeHead(HEAD, "ABCDEF0123456789", bytes(64))
    with pytest.raises(CheckpointError, match=r"^signature is 63 bytes, expected 64$"):
        SignedTreeHead(HEAD, "abcdef0123456789", bytes(63))


# -- key files -------------------------------------------------------------------------------------


def test_generated_key_is_owner_only_pkcs8_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.key"
    generate_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    key = load_signing_key(path)
    sth = CheckpointSigner(key, ORIGIN).sign(HEAD)
    verify_tree_head(sth, key.public_key())


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.key"
    generate_signing_key(path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"already exists \(refusing to overwrite it\)$"):
        generate_signing_key(path)
    assert path.read_bytes() == before
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_generate_refuses_to_follow_a_dangling_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "checkpoint.key"
    link.symlink_to(target)
    with pytest.raises(CheckpointError, match=r"already exists"):
        generate_signing_key(link)
    assert not target.exists()


def test_generate_into_missing_directory_fails(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"^cannot create signing key .*: No such file"):
        generate_signing_key(tmp_path / "missing" / "checkpoint.key")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_load_refuses_a_key_others_can_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "checkpoint.key"
    generate_signing_key(path)
    path.chmod(mode)
    with pytest.raises(CheckpointError, match=rf"has mode 0{mode:o}: others can access it"):
        load_signing_key(path)


def test_load_accepts_a_read_only_owner_key(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.key"
    generate_signing_key(path)
    path.chmod(0o400)
    assert isinstance(load_signing_key(path), Ed25519PrivateKey)


def test_load_missing_key_fails(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"does not exist \(generate one first\)$"):
        load_signing_key(tmp_path / "absent.key")


def test_load_directory_fails(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(CheckpointError, match=r"is not a regular file$"):
        load_signing_key(directory)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def test_load_non_ed25519_key_fails(tmp_path: Path) -> None:
    path = tmp_path / "ec.key"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(path, pem)
    with pytest.raises(CheckpointError, match=r"is not an Ed25519 key$"):
        load_signing_key(path)


def test_load_encrypted_key_fails(tmp_path: Path) -> None:
    path = tmp_path / "encrypted.key"
    pem = KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    _write_private(path, pem)
    with pytest.raises(CheckpointError, match=r"is not an unencrypted PEM private key$"):
        load_signing_key(path)


def test_load_garbage_and_oversized_key_files_fail(tmp_path: Path) -> None:
    garbage, big = tmp_path / "garbage.key", tmp_path / "big.key"
    _write_private(garbage, b"not a key")
    _write_private(big, b"x" * 4097)
    with pytest.raises(CheckpointError, match=r"is not an unencrypted PEM private key$"):
        load_signing_key(garbage)
    with pytest.raises(CheckpointError, match=r"is larger than 4096 bytes$"):
        load_signing_key(big)


def test_public_key_pem_round_trips() -> None:
    pem = CheckpointSigner(KEY, ORIGIN).public_key_pem()
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert load_public_key(pem).public_bytes_raw() == RAW_PUBLIC


def test_load_public_key_rejects_other_algorithms_and_garbage() -> None:
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(CheckpointError, match=r"^public key is not an Ed25519 key$"):
        load_public_key(ec_pem)
    with pytest.raises(CheckpointError, match=r"^public key is not a PEM SubjectPublicKeyInfo$"):
        load_public_key(b"garbage")
    with pytest.raises(CheckpointError, match=r"^public key PEM is larger than 4096 bytes$"):
        load_public_key(b"x" * 4097)
