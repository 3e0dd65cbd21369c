"""workdir: member names are normalised or refused; nothing is written through a symlink; the
budget stops at its limits; entropy is Shannon's."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.firmware.errors import ExtractionLimit, UnsafePath
from fleetguard.firmware.workdir import Budget, SafeDir, normalise_member, region_entropy, shannon_entropy


def _budget(max_bytes: int = 1 << 20, max_files: int = 100, max_file_bytes: int = 1 << 20) -> Budget:
    return Budget(max_bytes, max_files, max_file_bytes)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("bin/sh", "bin/sh"), ("./etc//passwd", "etc/passwd"), ("a/./b/", "a/b"), (".", "")],
)
def test_member_names_are_normalised(name: str, expected: str) -> None:
    assert normalise_member(name) == expected


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/etc/passwd", "absolute member path"),
        ("../x", "escapes the work directory"),
        ("a/../../x", "escapes the work directory"),
        ("a\x00b", "contains NUL"),
        ("a" * 256, "longer than 255 bytes"),
        ("a/" * 2100, "longer than 4096 bytes"),
    ],
)
def test_unsafe_member_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(UnsafePath, match=message):
        normalise_member(name)


def test_write_creates_a_0600_file_and_counts_it(tmp_path: Path) -> None:
    budget = _budget()
    path, written = SafeDir(tmp_path / "root", budget).write("etc/passwd", [b"root", b":x"])
    assert (path.read_bytes(), written) == (b"root:x", 6)
    assert path.stat().st_mode & 0o7777 == 0o600
    assert (budget.used_bytes, budget.used_files) == (6, 1)


def test_write_through_a_planted_symlink_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = SafeDir(tmp_path / "root", _budget())
    (tmp_path / "root" / "link").symlink_to(outside)
    with pytest.raises(UnsafePath, match="not a directory"):
        root.write("link/evil", [b"x"])
    assert list(outside.iterdir()) == []


def test_file_named_like_a_planted_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    root = SafeDir(tmp_path / "root", _budget())
    (tmp_path / "root" / "link").symlink_to(target)
    with pytest.raises(UnsafePath, match="non-file"):
        root.write("link", [b"overwrite"])
    assert target.read_bytes() == b"keep"


def test_a_later_member_replaces_a_regular_file(tmp_path: Path) -> None:
    root = SafeDir(tmp_path / "root", _budget())
    root.write("a", [b"first"])
    path, _ = root.write("a", [b"second"])
    assert path.read_bytes() == b"second"


def test_byte_budget_raises_at_the_limit(tmp_path: Path) -> None:
    budget = _budget(max_bytes=10)
    root = SafeDir(tmp_path / "root", budget)
    with pytest.raises(ExtractionLimit, match=r"output size limit reached \(10 bytes\)"):
        root.write("big", [b"12345", b"67890", b"x"])
    assert (tmp_path / "root" / "big").stat().st_size == 10


def test_file_budget_raises_at_the_limit(tmp_path: Path) -> None:
    root = SafeDir(tmp_path / "root", _budget(max_files=1))
    root.write("one", [b"1"])
    with pytest.raises(ExtractionLimit, match=r"file count limit reached \(1 files\)"):
        root.write("two", [b"2"])
    assert not (tmp_path / "root" / "two").exists()


def test_single_file_limit(tmp_path: Path) -> None:
    root = SafeDir(tmp_path / "root", _budget(max_file_bytes=4))
    with pytest.raises(ExtractionLimit, match="file larger than 4 bytes"):
        root.write("f", [b"12345"])


def test_directories_are_private(tmp_path: Path) -> None:
    root = SafeDir(tmp_path / "root", _budget())
    root.make_dir("a/b/c")
    assert (tmp_path / "root" / "a" / "b" / "c").stat().st_mode & 0o777 == 0o700


@given(st.text(max_size=64))
def test_normalised_names_never_escape(name: str) -> None:
    try:
        rel = normalise_member(name)
    except UnsafePath:
        return
    assert not rel.startswith("/")
    assert ".." not in rel.split("/")
    assert os.path.normpath("/root/" + rel).startswith("/root")


def test_entropy_of_constant_and_random_data() -> None:
    assert shannon_entropy(bytes(4096)) == 0.0
    assert shannon_entropy(b"") == 0.0
    assert shannon_entropy(bytes(range(256)) * 16) == pytest.approx(8.0)
    blob = random.Random(1).randbytes(1 << 20)  # noqa: S311 - test data
    assert region_entropy(blob, 0, len(blob)) > 7.99


def test_region_entropy_measures_only_the_region() -> None:
    blob = bytes(65536) + random.Random(2).randbytes(65536)  # noqa: S311 - test data
    assert region_entropy(blob, 0, 65536) == 0.0
    assert region_entropy(blob, 65536, 65536) > 7.99
    assert region_entropy(blob, 0, 0) == 0.0
