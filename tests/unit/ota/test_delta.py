"""Deltas between releases: both methods, the choice, the container, and every way a delta is refused."""

from __future__ import annotations

import bz2
import dataclasses
import hashlib
import random
import struct
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.ota.delta import (
    HEADER_SIZE,
    MAX_IMAGE_SIZE,
    Delta,
    DeltaMethod,
    apply_delta,
    apply_delta_file,
    build_delta,
    compressed_size,
    make_delta,
    parse_delta,
)
from fleetguard.ota.errors import DeltaInvalid, DeltaMismatch, DeltaTooLarge


def firmware_image(size: int, seed: int) -> bytes:
    """Return a deterministic image with firmware-like structure.

    Runs of "code" (4-byte words from a small vocabulary), text, already-compressed (random) data and
    zero padding, so that zstd compresses it to about a third, as it does real root filesystems.
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not a secret
    words = [rng.randbytes(4) for _ in range(512)]
    vocabulary = [rng.randbytes(rng.randint(2, 10)).hex().encode() for _ in range(2000)]
    out = bytearray()
    while len(out) < size:
        kind, length = rng.random(), rng.randint(4096, 262_144)
        if kind < 0.45:
            out += b"".join(rng.choices(words, k=length // 4))
        elif kind < 0.7:
            out += b" ".join(rng.choices(vocabulary, k=length // 8))
        elif kind < 0.85:
            out += rng.randbytes(length)
        else:
            out += bytes(length)
    return bytes(out[:size])


def small_change(image: bytes, seed: int) -> bytes:
    """Return ``image`` with a new version string, four 1 KiB patches and 3 KiB inserted (8 KiB new)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not a secret
    changed = bytearray(image)
    changed[64:80] = b"version 2.0.1   "
    for _ in range(4):
        at = rng.randrange(len(changed) - 2048)
        changed[at : at + 1024] = rng.randbytes(1024)
    at = rng.randrange(len(changed))
    changed[at:at] = rng.randbytes(3072)
    return bytes(changed)


@pytest.fixture(scope="module")
def release_pair() -> tuple[bytes, bytes]:
    old = firmware_image(6 << 20, seed=1)
    return old, small_change(old, seed=2)


OLD = firmware_image(64 << 10, seed=3)
NEW = small_change(OLD, seed=4)


def _container(delta: Delta) -> bytearray:
    return bytearray(delta.to_bytes())


def _with_payload(delta: Delta, payload: bytes) -> Delta:
    return dataclasses.replace(delta, payload=payload)


# Round trips and the choice ---------------------------------------------------------------------


@pytest.mark.parametrize("method", list(DeltaMethod))
def test_each_method_round_trips(method: DeltaMethod) -> None:
    delta = build_delta(method, OLD, NEW)

    assert delta.method is method
    assert delta.source_sha256 == hashlib.sha256(OLD).hexdigest()
    assert delta.target_length == len(NEW)
    assert parse_delta(delta.to_bytes()) == delta
    assert apply_delta(OLD, delta, max_output=len(NEW)) == NEW


def test_make_delta_keeps_the_smaller_candidate() -> None:
    chosen = make_delta(OLD, NEW)

    sizes = {method: build_delta(method, OLD, NEW).size for method in DeltaMethod}
    assert chosen is not None
    assert chosen.size == min(sizes.values())
    assert apply_delta(OLD, chosen, max_output=len(NEW)) == NEW


def test_bsdiff_wins_when_every_pointer_shifts() -> None:
    # Relinked code: every 16th 32-bit word (a pointer) moved by the same amount. bsdiff's diff block
    # is zeros and one repeated byte; zstd needs a sequence for each pointer.
    rng = random.Random(5)  # noqa: S311 - reproducible test data, not a secret
    words = [rng.randrange(1 << 31) for _ in range(64 << 10)]
    old = struct.pack(f"<{len(words)}I", *words)
    moved = [word + 0x1000 if index % 16 == 0 else word for index, word in enumerate(words)]
    new = struct.pack(f"<{len(moved)}I", *moved)

    delta = make_delta(old, new)

    assert delta is not None
    assert delta.method is DeltaMethod.BSDIFF
    assert delta.size < build_delta(DeltaMethod.ZSTD, old, new).size
    assert apply_delta(old, delta, max_output=len(new)) == new


def test_zstd_wins_when_new_content_repeats_itself() -> None:
    # New, incompressible content that appears twice, further apart than a bzip2 block (900 kB):
    # bsdiff's extra block holds it twice, zstd refers back to the first copy.
    rng = random.Random(6)  # noqa: S311 - reproducible test data, not a secret
    old = rng.randbytes(64 << 10)
    novel = rng.randbytes(1 << 20)
    new = old + novel + old + novel

    delta = make_delta(old, new)

    assert delta is not None
    assert delta.method is DeltaMethod.ZSTD
    assert delta.size < build_delta(DeltaMethod.BSDIFF, old, new).size
    assert apply_delta(old, delta, max_output=len(new)) == new


def test_unrelated_random_images_get_no_delta() -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible test data, not a secret

    assert make_delta(rng.randbytes(256 << 10), rng.randbytes(256 << 10)) is None


def test_no_delta_unless_smaller_than_the_full_image_given() -> None:
    delta = build_delta(DeltaMethod.ZSTD, OLD, NEW)

    assert make_delta(OLD, NEW, full_compressed_size=min(delta.size, 100)) is None


def test_small_change_to_a_firmware_image_is_under_5_percent(release_pair: tuple[bytes, bytes]) -> None:
    old, new = release_pair
    full = compressed_size(new)

    delta = make_delta(old, new, full_compressed_size=full)

    assert delta is not None
    assert delta.size <= full * 5 // 100
    assert build_delta(DeltaMethod.ZSTD, old, new).size <= full * 5 // 100
    assert apply_delta(old, delta, max_output=len(new)) == new


# Applying: the base, the output, the bounds ----------------------------------------------------


@pytest.mark.parametrize("method", list(DeltaMethod))
def test_wrong_base_is_refused_and_the_output_file_is_untouched(method: DeltaMethod, tmp_path: Path) -> None:
    delta = build_delta(method, OLD, NEW)
    other = bytearray(OLD)
    other[100] ^= 1
    base, out = tmp_path / "base.img", tmp_path / "out.img"
    base.write_bytes(other)
    out.write_bytes(b"previous release")

    with pytest.raises(
        DeltaMismatch, match=r"delta is for base sha256:[0-9a-f]{64} \(\d+ bytes\), not sha256:"
    ):
        apply_delta_file(base, delta, out, max_output=len(NEW))

    assert out.read_bytes() == b"previous release"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.img", "out.img"]


def test_base_of_the_wrong_length_is_refused_before_reading(tmp_path: Path) -> None:
    delta = build_delta(DeltaMethod.ZSTD, OLD, NEW)
    base, out = tmp_path / "base.img", tmp_path / "out.img"
    base.write_bytes(OLD + b"\0")

    with pytest.raises(DeltaMismatch, match=r"delta is for base .*, not a 65537-byte file"):
        apply_delta_file(base, delta, out, max_output=len(NEW))
    with pytest.raises(DeltaMismatch, match=r"not a 65537-byte image"):
        apply_delta(OLD + b"\0", delta, max_output=len(NEW))

    assert not out.exists()


def test_apply_delta_file_writes_the_verified_target(tmp_path: Path) -> None:
    delta = make_delta(OLD, NEW)
    assert delta is not None
    base, out = tmp_path / "base.img", tmp_path / "out.img"
    base.write_bytes(OLD)
    out.write_bytes(b"previous release")

    apply_delta_file(base, delta, out, max_output=len(NEW))

    assert out.read_bytes() == NEW
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.img", "out.img"]


def test_target_over_max_output_is_refused() -> None:
    delta = build_delta(DeltaMethod.ZSTD, OLD, NEW)

    with pytest.raises(DeltaTooLarge, match=rf"delta target is {len(NEW)} bytes, more than the 1000 allowed"):
        apply_delta(OLD, delta, max_output=1000)


@pytest.mark.parametrize("method", list(DeltaMethod))
def test_wrong_target_hash_is_a_mismatch(method: DeltaMethod) -> None:
    delta = dataclasses.replace(build_delta(method, OLD, NEW), target_sha256="0" * 64)

    with pytest.raises(
        DeltaMismatch, match=r"delta produced sha256:[0-9a-f]{64}, not the target sha256:0{64}"
    ):
        apply_delta(OLD, delta, max_output=len(NEW))


def test_truncated_zstd_payload_is_invalid() -> None:
    delta = build_delta(DeltaMethod.ZSTD, OLD, NEW)

    with pytest.raises(DeltaInvalid, match="zstd delta frame is truncated"):
        apply_delta(OLD, _with_payload(delta, delta.payload[:-1]), max_output=len(NEW))


def test_zstd_payload_of_another_image_of_the_same_length_is_a_mismatch() -> None:
    delta = build_delta(DeltaMethod.ZSTD, OLD, NEW)
    other = build_delta(DeltaMethod.ZSTD, OLD, NEW[::-1])

    with pytest.raises(DeltaMismatch, match=r"delta produced sha256:[0-9a-f]{64}, not the target sha256:"):
        apply_delta(OLD, _with_payload(delta, other.payload), max_output=len(NEW))


def test_zstd_payload_with_trailing_data_is_invalid() -> None:
    delta = build_delta(DeltaMethod.ZSTD, OLD, NEW)

    with pytest.raises(DeltaInvalid, match="1 bytes of trailing data after the zstd delta frame"):
        apply_delta(OLD, _with_payload(delta, delta.payload + b"\0"), max_output=len(NEW))


def test_zstd_frame_larger_than_the_target_is_refused_from_its_header() -> None:
    delta = build_delta(DeltaMethod.ZSTD, OLD, NEW)
    bigger = zstandard.ZstdCompressor().compress(NEW + b"x")

    with pytest.raises(
        DeltaTooLarge, match=rf"claims {len(NEW) + 1} bytes, more than the target's {len(NEW)}"
    ):
        apply_delta(OLD, _with_payload(delta, bigger), max_output=len(NEW))


def test_zstd_frame_claiming_a_terabyte_is_refused_without_allocating() -> None:
    # RFC 8878 3.1.1: magic, a descriptor with an 8-byte content size and single segment, the size,
    # then one last RLE block of 128 KiB (block header: last=1, type=RLE, size << 3).
    header = (0xFD2FB528).to_bytes(4, "little") + bytes([0xE0]) + (1 << 40).to_bytes(8, "little")
    block = ((128 << 10) << 3 | 0b011).to_bytes(3, "little") + b"A"
    delta = _with_payload(build_delta(DeltaMethod.ZSTD, OLD, NEW), header + block)

    with pytest.raises(DeltaTooLarge, match=r"claims 1099511627776 bytes"):
        apply_delta(OLD, delta, max_output=len(NEW))


def test_zstd_frame_without_content_size_is_invalid() -> None:
    delta = build_delta(DeltaMethod.ZSTD, OLD, NEW)
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(NEW)

    with pytest.raises(DeltaInvalid, match="does not record its content size"):
        apply_delta(OLD, _with_payload(delta, frame), max_output=len(NEW))


def test_zstd_payload_that_is_not_a_frame_is_invalid() -> None:
    delta = _with_payload(build_delta(DeltaMethod.ZSTD, OLD, NEW), b"not zstd at all")

    with pytest.raises(DeltaInvalid, match="does not start with a valid frame header"):
        apply_delta(OLD, delta, max_output=len(NEW))


def _bsdiff_payload(control: bytes, diff: bytes, extra: bytes, target_length: int) -> bytes:
    def offset(value: int) -> bytes:
        return (abs(value) | ((1 << 63) if value < 0 else 0)).to_bytes(8, "little")

    blocks = [bz2.compress(block) for block in (control, diff, extra)]
    return (
        b"BSDIFF40"
        + offset(len(blocks[0]))
        + offset(len(blocks[1]))
        + offset(target_length)
        + b"".join(blocks)
    )


def _triple(x: int, y: int, z: int) -> bytes:
    return b"".join((abs(v) | ((1 << 63) if v < 0 else 0)).to_bytes(8, "little") for v in (x, y, z))


def test_bsdiff_extra_block_that_inflates_past_the_target_is_too_large() -> None:
    delta = build_delta(DeltaMethod.BSDIFF, OLD, NEW)
    bomb = _bsdiff_payload(_triple(0, len(NEW), 0), b"", bytes(len(NEW) + 1), len(NEW))

    with pytest.raises(
        DeltaTooLarge, match=rf"bsdiff4 extra block decompresses to more than {len(NEW)} bytes"
    ):
        apply_delta(OLD, _with_payload(delta, bomb), max_output=len(NEW))


def test_bsdiff_control_block_over_its_bound_is_too_large() -> None:
    delta = build_delta(DeltaMethod.BSDIFF, OLD, NEW)
    control = _triple(0, 0, 0) * (len(NEW) // 8 + 65)
    bomb = _bsdiff_payload(control, b"", NEW, len(NEW))

    with pytest.raises(DeltaTooLarge, match="bsdiff4 control block decompresses to more than"):
        apply_delta(OLD, _with_payload(delta, bomb), max_output=len(NEW))


@pytest.mark.parametrize(
    ("control", "diff", "extra", "message"),
    [
        (_triple(-1, 0, 0), b"", b"", "negative length"),
        (_triple(0, 10, 0), b"", b"123", "run past the diff or extra block"),
        (_triple(0, 3, 0), b"", b"123", "do not make the target's length"),
        (_triple(0, 3, 0)[:-1], b"", b"123", "not a whole number of entries"),
    ],
)
def test_bsdiff_control_entries_are_checked(control: bytes, diff: bytes, extra: bytes, message: str) -> None:
    delta = build_delta(DeltaMethod.BSDIFF, OLD, NEW)
    payload = _bsdiff_payload(control, diff, extra, len(NEW))

    with pytest.raises(DeltaInvalid, match=message):
        apply_delta(OLD, _with_payload(delta, payload), max_output=len(NEW))


def test_bsdiff_tampered_payloads_are_invalid() -> None:
    delta = build_delta(DeltaMethod.BSDIFF, OLD, NEW)
    payload = delta.payload
    length = (len(NEW) + 1).to_bytes(8, "little")
    cases = {
        "does not start with a BSDIFF40 header": b"BSDIFF39" + payload[8:],
        rf"makes {len(NEW) + 1} bytes, not the target's": payload[:24] + length + payload[32:],
        "block lengths do not add up": payload[:8] + (1 << 40).to_bytes(8, "little") + payload[16:],
        "control block is not valid bzip2": payload[:32] + b"XYZ" + payload[35:],
        "extra block is truncated": payload[:-5],
        "extra block is followed by 2 bytes": payload + b"BZ",
    }
    for message, tampered in cases.items():
        with pytest.raises(DeltaInvalid, match=message):
            apply_delta(OLD, _with_payload(delta, tampered), max_output=len(NEW))


# The container ---------------------------------------------------------------------------------


def test_container_layout() -> None:
    delta = build_delta(DeltaMethod.BSDIFF, OLD, NEW)
    data = delta.to_bytes()

    assert data[:12] == b"FGDELTA\x00\x01\x02\x00\x00"
    assert int.from_bytes(data[12:20], "big") == len(OLD)
    assert data[20:52] == hashlib.sha256(OLD).digest()
    assert int.from_bytes(data[52:60], "big") == len(NEW)
    assert data[60:92] == hashlib.sha256(NEW).digest()
    assert int.from_bytes(data[92:100], "big") == len(delta.payload)
    assert data[HEADER_SIZE:] == delta.payload
    assert delta.size == len(data)


def test_every_truncation_is_invalid() -> None:
    data = build_delta(DeltaMethod.ZSTD, b"base image", b"target image").to_bytes()

    for length in range(len(data)):
        with pytest.raises(DeltaInvalid, match="truncated"):
            parse_delta(data[:length])


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"X", r"not a fleetguard delta \(bad magic\)"),
        (8, b"\x02", r"unsupported delta container version 2 \(this reader knows 1\)"),
        (9, b"\x07", "unknown delta method code 7"),
        (9, b"\x00", "unknown delta method code 0"),
        (11, b"\x01", "reserved delta header bytes are not zero"),
    ],
)
def test_bad_header_fields_are_invalid(offset: int, value: bytes, message: str) -> None:
    data = _container(build_delta(DeltaMethod.ZSTD, OLD, NEW))
    data[offset : offset + 1] = value

    with pytest.raises(DeltaInvalid, match=message):
        parse_delta(bytes(data))


def test_bad_magic_is_named_even_when_short() -> None:
    with pytest.raises(DeltaInvalid, match="bad magic"):
        parse_delta(b"PK\x03\x04")


def test_trailing_data_is_invalid() -> None:
    data = build_delta(DeltaMethod.ZSTD, OLD, NEW).to_bytes()

    with pytest.raises(DeltaInvalid, match="3 bytes of trailing data after the delta payload"):
        parse_delta(data + b"abc")


def test_lengths_over_the_bound_are_too_large() -> None:
    data = _container(build_delta(DeltaMethod.ZSTD, OLD, NEW))
    huge = (MAX_IMAGE_SIZE + 1).to_bytes(8, "big")

    for offset, what in ((12, "delta source"), (52, "delta target"), (92, "delta payload")):
        tampered = bytearray(data)
        tampered[offset : offset + 8] = huge
        with pytest.raises(DeltaTooLarge, match=f"{what} is {MAX_IMAGE_SIZE + 1} bytes, more than"):
            parse_delta(bytes(tampered))


def test_empty_payload_is_invalid() -> None:
    data = _container(build_delta(DeltaMethod.ZSTD, OLD, NEW))
    header = bytes(data[: HEADER_SIZE - 8]) + bytes(8)

    with pytest.raises(DeltaInvalid, match="delta payload is empty"):
        parse_delta(header)


def test_delta_fields_are_validated() -> None:
    delta = build_delta(DeltaMethod.ZSTD, OLD, NEW)

    with pytest.raises(DeltaInvalid, match="source SHA-256 must be 64 lower-case hex digits"):
        dataclasses.replace(delta, source_sha256=delta.source_sha256.upper())
    with pytest.raises(DeltaInvalid, match="delta target length -1 is negative"):
        dataclasses.replace(delta, target_length=-1)
    with pytest.raises(DeltaInvalid, match="unknown delta method 'xdelta3'"):
        dataclasses.replace(delta, method="xdelta3")  # type: ignore[arg-type]


def test_images_over_the_bound_are_refused() -> None:
    class Huge(bytes):
        def __len__(self) -> int:
            return MAX_IMAGE_SIZE + 1

    with pytest.raises(DeltaTooLarge, match="target image is 1073741825 bytes, more than"):
        make_delta(OLD, Huge(b""), full_compressed_size=1)


# Properties ------------------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_parse_delta_raises_only_delta_errors(data: bytes) -> None:
    try:
        delta = parse_delta(data)
    except (DeltaInvalid, DeltaTooLarge):
        return
    assert delta.to_bytes() == data


@given(st.binary(max_size=200))
def test_parse_delta_on_valid_headers_raises_only_delta_errors(tail: bytes) -> None:
    header = build_delta(DeltaMethod.ZSTD, OLD, NEW).to_bytes()[:HEADER_SIZE]
    try:
        delta = parse_delta(header[:-8] + len(tail).to_bytes(8, "big") + tail)
    except DeltaInvalid:
        assert not tail
        return
    try:
        apply_delta(OLD, delta, max_output=len(NEW))
    except (DeltaInvalid, DeltaTooLarge):
        return
    pytest.fail("a random payload applied")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2000), st.binary(max_size=2000), st.sampled_from(list(DeltaMethod)))
def test_round_trip_on_small_inputs(old: bytes, new: bytes, method: DeltaMethod) -> None:
    delta = build_delta(method, old, new)

    assert parse_delta(delta.to_bytes()) == delta
    assert apply_delta(old, delta, max_output=len(new)) == new


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=2000), st.data())
def test_round_trip_on_small_edits(old: bytes, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(old)))
    new = old[:at] + data.draw(st.binary(max_size=50)) + old[at + data.draw(st.integers(0, 50)) :]

    delta = make_delta(old, new, full_compressed_size=MAX_IMAGE_SIZE)

    assert delta is not None
    assert apply_delta(old, delta, max_output=len(new)) == new
