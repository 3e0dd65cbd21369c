"""The device's TUF client against a small TUF repository served over HTTP on 127.0.0.1.

The repository is built here with ``tuf.api.metadata`` (root, targets, snapshot, timestamp; consistent
snapshots; one target), and the client is checked the way the tuf-conformance suite checks a client:
its exit status, the metadata it keeps in the metadata directory (``root.json``, ``timestamp.json``,
...), the files in the target directory, and the requests it made.
"""

from __future__ import annotations

import datetime as dt
import functools
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    TOP_LEVEL_ROLE_NAMES,
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from typer.testing import CliRunner

from fleetguard.agent import tuf_client
from fleetguard.agent.errors import TufUpdateFailed
from fleetguard.agent.main import app

TARGET_NAME = "firmware/image.bin"
TARGET_BYTES = b"firmware image v1\n" * 64
LOCAL_TARGET_NAME = "firmware%2Fimage.bin"  # ngclient names a target file by its URL-quoted path
TOP_LEVEL_FILES = ["root.json", "snapshot.json", "targets.json", "timestamp.json"]
EXPIRY = dt.timedelta(days=30)


class _Repository:
    """A TUF repository as static files under ``directory`` (TUF spec 4, consistent snapshots)."""

    def __init__(self, directory: Path) -> None:
        self.metadata_dir = directory / "metadata"
        self.targets_dir = directory / "targets"
        self.metadata_dir.mkdir(parents=True)
        self.signers = {role: CryptoSigner.generate_ed25519() for role in TOP_LEVEL_ROLE_NAMES}
        expires = dt.datetime.now(dt.UTC) + EXPIRY
        root = Root(expires=expires, consistent_snapshot=True)
        for role, signer in self.signers.items():
            root.add_key(signer.public_key, role)
        self.root = Metadata(root)
        self.targets = Metadata(Targets(expires=expires))
        self.snapshot = Metadata(Snapshot(expires=expires))
        self.timestamp = Metadata(Timestamp(expires=expires))
        self.add_target(TARGET_NAME, TARGET_BYTES)
        self.root_bytes = self._write(self.root, "1.root.json")
        self._write(self.targets, "1.targets.json")
        self._write(self.snapshot, "1.snapshot.json")
        self._write(self.timestamp, "timestamp.json")

    def add_target(self, path: str, data: bytes) -> Path:
        """Add ``path`` to targets (not yet published) and store its hash-prefixed file (TUF spec 5.7.3)."""
        target = TargetFile.from_data(path, data, ["sha256"])
        self.targets.signed.targets[path] = target
        directory, _, name = path.rpartition("/")
        stored = self.targets_dir / directory / f"{target.hashes['sha256']}.{name}"
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_bytes(data)
        return stored

    def publish_timestamp(self, *, expires: dt.datetime) -> None:
        """Publish the next timestamp version, expiring at ``expires``."""
        self.timestamp.signed.version += 1
        self.timestamp.signed.expires = expires
        self._write(self.timestamp, "timestamp.json")

    def publish_new_target(self, path: str, data: bytes) -> None:
        """Publish ``path`` in the next targets version, with a new snapshot and timestamp."""
        self.add_target(path, data)
        for metadata in (self.targets, self.snapshot, self.timestamp):
            metadata.signed.version += 1
        self.snapshot.signed.meta["targets.json"] = MetaFile(self.targets.signed.version)
        self.timestamp.signed.snapshot_meta = MetaFile(self.snapshot.signed.version)
        self._write(self.targets, f"{self.targets.signed.version}.targets.json")
        self._write(self.snapshot, f"{self.snapshot.signed.version}.snapshot.json")
        self._write(self.timestamp, "timestamp.json")

    def _write(self, metadata: Metadata[Any], filename: str) -> bytes:
        signed: Signed = metadata.signed
        metadata.sign(self.signers[signed.type], append=False)
        data = metadata.to_bytes(JSONSerializer())
        (self.metadata_dir / filename).write_bytes(data)
        return data


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the repository's files and records each requested path."""

    def __init__(self, *args: Any, requests: list[str], **kwargs: Any) -> None:
        self._requests = requests  # before super().__init__, which handles the request
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self._requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@dataclass
class Served:
    repository: _Repository
    metadata_url: str
    targets_url: str
    requests: list[str]
    metadata_dir: Path
    target_dir: Path
    trusted_root: Path

    def refresh_args(self, *extra: str) -> list[str]:
        return ["--metadata-url", self.metadata_url, "--metadata-dir", str(self.metadata_dir), *extra]

    def download_args(self, target_name: str = TARGET_NAME) -> list[str]:
        return [
            *self.refresh_args(),
            "--target-name", target_name,
            "--target-dir", str(self.target_dir),
            "--target-base-url", self.targets_url,
        ]  # fmt: skip

    def downloaded(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in self.target_dir.rglob("*") if p.is_file()}

    def trusted_files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in self.metadata_dir.glob("*.json")}


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    repository = _Repository(tmp_path / "repository")
    requests: list[str] = []
    handler = functools.partial(_RecordingHandler, requests=requests, directory=str(tmp_path / "repository"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    client = tmp_path / "client"
    (client / "metadata").mkdir(parents=True)
    (client / "targets").mkdir()
    trusted_root = client / "initial_root.json"
    trusted_root.write_bytes(repository.root_bytes)
    try:
        yield Served(
            repository=repository,
            metadata_url=f"{base}/metadata",
            targets_url=f"{base}/targets",
            requests=requests,
            metadata_dir=client / "metadata",
            target_dir=client / "targets",
            trusted_root=trusted_root,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _initialised(served: Served) -> None:
    assert (
        tuf_client.main(["--metadata-dir", str(served.metadata_dir), "init", str(served.trusted_root)]) == 0
    )


def _run_module(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in {"http_proxy", "all_proxy"}}
    return subprocess.run(
        [sys.executable, "-m", "fleetguard.agent.tuf_client", *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


# -- the conformance suite's flow, through the module's CLI ---------------------------------------


def test_init_refresh_download_through_the_command_line(served: Served) -> None:
    init = _run_module("--metadata-dir", str(served.metadata_dir), "init", str(served.trusted_root))
    assert init.returncode == 0, init.stderr
    assert served.requests == []  # CLIENT-CLI.md: init makes no request

    refresh = _run_module(*served.refresh_args(), "refresh")
    assert refresh.returncode == 0, refresh.stderr
    assert sorted(served.trusted_files()) == TOP_LEVEL_FILES
    assert Metadata.from_file(str(served.metadata_dir / "timestamp.json")).signed.version == 1

    download = _run_module(*served.download_args(), "download")
    assert download.returncode == 0, download.stderr
    assert served.downloaded() == {LOCAL_TARGET_NAME: TARGET_BYTES}


def test_options_may_follow_the_command_and_the_root_may_be_an_option(served: Served) -> None:
    root = ["--metadata-dir", str(served.metadata_dir), "--trusted-root", str(served.trusted_root)]
    assert tuf_client.main(["init", *root]) == 0
    assert tuf_client.main(["refresh", *served.refresh_args()]) == 0
    assert tuf_client.main(["download", *served.download_args()]) == 0
    assert served.downloaded() == {LOCAL_TARGET_NAME: TARGET_BYTES}


def test_refresh_needs_the_metadata_url(served: Served) -> None:
    with pytest.raises(SystemExit) as exit_:
        tuf_client.main(["--metadata-dir", str(served.metadata_dir), "refresh"])
    assert exit_.value.code == 2


# -- refusals --------------------------------------------------------------------------------------


def test_expired_timestamp_is_refused_and_the_trusted_files_stay(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    _initialised(served)
    assert tuf_client.main([*served.refresh_args(), "refresh"]) == 0
    before = served.trusted_files()
    served.repository.publish_timestamp(expires=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))

    assert tuf_client.main([*served.refresh_args(), "refresh"]) == 1

    assert "timestamp.json is expired" in capsys.readouterr().err
    assert served.trusted_files() == before
    assert Metadata.from_file(str(served.metadata_dir / "timestamp.json")).signed.version == 1


def test_days_in_future_past_the_expiry_is_refused(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    _initialised(served)
    days = str(EXPIRY.days + 1)

    assert tuf_client.main([*served.refresh_args("--days-in-future", days), "refresh"]) == 1

    assert "is expired" in capsys.readouterr().err
    assert sorted(served.trusted_files()) == ["root.json"]
    assert tuf_client.main([*served.refresh_args("--days-in-future", str(EXPIRY.days - 1)), "refresh"]) == 0


def test_days_in_future_cannot_go_back_in_time(served: Served) -> None:
    _initialised(served)
    served.repository.publish_timestamp(expires=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))

    with pytest.raises(TufUpdateFailed, match="--days-in-future must be between 0 and 36500, got -2"):
        tuf_client.refresh(served.metadata_dir, served.metadata_url, days_in_future=-2)
    assert served.requests == []


def test_tampered_target_is_refused_and_nothing_is_written(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    _initialised(served)
    stored = served.repository.targets_dir / "firmware"
    (tampered,) = stored.iterdir()
    tampered.write_bytes(TARGET_BYTES.replace(b"v1", b"v6"))  # same length, other bytes

    assert tuf_client.main([*served.download_args(), "download"]) == 1

    assert "hash" in capsys.readouterr().err
    assert served.downloaded() == {}


def test_missing_target_is_refused(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    _initialised(served)

    assert tuf_client.main([*served.download_args("firmware/absent.bin"), "download"]) == 1

    assert "the repository has no target 'firmware/absent.bin'" in capsys.readouterr().err
    assert served.downloaded() == {}


def test_refresh_before_init_is_refused(served: Served) -> None:
    with pytest.raises(TufUpdateFailed, match=r"TUF refresh failed: no trusted root\.json in .*: run init"):
        tuf_client.refresh(served.metadata_dir, served.metadata_url)
    assert served.requests == []


def _targets_metadata(served: Served) -> bytes:
    return (served.repository.metadata_dir / "1.targets.json").read_bytes()


def _root_signed_by_another_key(served: Served) -> bytes:
    root = Metadata.from_bytes(served.repository.root_bytes)
    root.sign(CryptoSigner.generate_ed25519(), append=False)
    return root.to_bytes(JSONSerializer())


@pytest.mark.parametrize(
    ("make_root", "reason"),
    [
        pytest.param(lambda _served: b"{not json", "Failed to deserialize", id="malformed"),
        pytest.param(_targets_metadata, "expected root metadata, got targets", id="not-a-root"),
        pytest.param(_root_signed_by_another_key, "root was signed by 0/1 keys", id="not-self-signed"),
    ],
)
def test_init_with_a_bad_root_is_refused(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str], make_root: Any, reason: str
) -> None:
    bad_root = tmp_path / "bad_root.json"
    bad_root.write_bytes(make_root(served))

    assert tuf_client.main(["--metadata-dir", str(served.metadata_dir), "init", str(bad_root)]) == 1

    assert reason in capsys.readouterr().err
    assert list(served.metadata_dir.iterdir()) == []


# -- caching ---------------------------------------------------------------------------------------


def test_a_present_target_is_not_fetched_again(served: Served) -> None:
    _initialised(served)
    first = tuf_client.download(
        served.metadata_dir, served.metadata_url, TARGET_NAME, served.target_dir, served.targets_url
    )
    second = tuf_client.download(
        served.metadata_dir, served.metadata_url, TARGET_NAME, served.target_dir, served.targets_url
    )

    assert (first.cached, second.cached) == (False, True)
    assert first.path == second.path == served.target_dir / LOCAL_TARGET_NAME
    assert len([r for r in served.requests if r.startswith("/targets/")]) == 1


def test_a_changed_target_is_downloaded_again_under_the_same_name(served: Served) -> None:
    _initialised(served)
    assert tuf_client.main([*served.download_args(), "download"]) == 0
    served.repository.publish_new_target(TARGET_NAME, b"firmware image v2\n")

    assert tuf_client.main([*served.download_args(), "download"]) == 0

    assert served.downloaded() == {LOCAL_TARGET_NAME: b"firmware image v2\n"}
    assert Metadata.from_file(str(served.metadata_dir / "targets.json")).signed.version == 2


# -- fleetguard-agent tuf ----------------------------------------------------------------------------


def test_the_agent_tuf_commands(served: Served) -> None:
    runner = CliRunner()
    metadata_dir = ["--metadata-dir", str(served.metadata_dir)]
    metadata = [*metadata_dir, "--metadata-url", served.metadata_url]
    target = ["--target-name", TARGET_NAME, "--target-dir", str(served.target_dir)]

    init = runner.invoke(app, ["tuf", "init", *metadata_dir, "--trusted-root", str(served.trusted_root)])
    refresh = runner.invoke(app, ["tuf", "refresh", *metadata])
    download = runner.invoke(
        app, ["tuf", "download", *metadata, *target, "--target-base-url", served.targets_url]
    )

    assert (init.exit_code, refresh.exit_code, download.exit_code) == (0, 0, 0), download.output
    assert f"downloaded: {served.target_dir / LOCAL_TARGET_NAME}" in download.output
    assert served.downloaded() == {LOCAL_TARGET_NAME: TARGET_BYTES}


def test_the_agent_reports_a_refusal_in_one_line(served: Served) -> None:
    _initialised(served)
    served.repository.publish_timestamp(expires=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))

    metadata = ["--metadata-dir", str(served.metadata_dir), "--metadata-url", served.metadata_url]
    result = CliRunner().invoke(app, ["tuf", "refresh", *metadata])

    assert result.exit_code == 1
    assert "error: TUF refresh failed: timestamp.json is expired" in result.output
