"""Private files: created 0600 without following links, replaced atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetguard.private_file import create_private_file, replace_private_file


def test_created_owner_only_and_never_over_anything(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    create_private_file(path, b"secret")
    assert (path.read_bytes(), path.stat().st_mode & 0o777) == (b"secret", 0o600)
    with pytest.raises(FileExistsError):
        create_private_file(path, b"other")
    assert path.read_bytes() == b"secret"
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        create_private_file(link, b"x")
    assert not (tmp_path / "nowhere").exists()


def test_replace_swaps_content_whole_and_keeps_mode(tmp_path: Path) -> None:
    path = tmp_path / "server.pem"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    replace_private_file(path, b"new")
    assert (path.read_bytes(), path.stat().st_mode & 0o777) == (b"new", 0o600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.pem"]
