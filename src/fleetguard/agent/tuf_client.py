"""The device's TUF client, with the client-under-test interface of the TUF conformance suite.

Theory of operation. python-tuf's ``ngclient.Updater`` does the TUF client workflow (TUF spec 5.3 to
5.7); this module gives it the three operations of the conformance suite's CLIENT-CLI.md
(github.com/theupdateframework/tuf-conformance), over a metadata URL and a local directory:

``init``
    Verify the trusted root (it must carry a threshold of its own signatures, TUF spec 5.2) and store
    it as ``root.json`` in the metadata directory. No network request.
``refresh``
    Update the top-level metadata (root, timestamp, snapshot, targets) from the repository. The
    Updater bootstraps from the ``root.json`` that ``init`` stored; metadata is written to the
    directory only once verified, under the role's unversioned name (``timestamp.json``, ...): a
    refused update leaves the trusted files as they were.
``download``
    Refresh, find the target's info (walking delegations), and download it into the target directory
    unless a file with the target's length and hashes is already there. The bytes are verified
    against the targets metadata before they are written (TUF spec 5.7.3); a mismatch leaves nothing.

Sizes are bounded by ``UpdaterConfig``'s defaults (root 512 kB, timestamp 16 kB, snapshot 2 MB,
targets 5 MB; a target by its length in the signed metadata).

Time. ``days_in_future`` evaluates expiry as if it were that many days later, like the suite's
``--days-in-future`` option of older releases (newer ones run the client under ``faketime``, which
needs nothing from us). python-tuf has no public setting for the reference time: the Updater reads
the clock once, into its trusted metadata set's ``reference_time``, when it is constructed; we move
that attribute forward before the first verification, as the suite's python-tuf client does. Only a
forward shift is accepted, so the option can only make metadata expire sooner, never revive expired
metadata.

Run ``python -m fleetguard.agent.tuf_client --help`` for the conformance suite's argument layout;
``fleetguard-agent tuf ...`` offers the same operations with the agent's conventions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import urllib3.exceptions
from tuf.api.exceptions import DownloadError, RepositoryError
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import Updater, UpdaterConfig

from fleetguard.agent.errors import TufUpdateFailed

__all__ = ["DownloadedTarget", "download", "init", "main", "refresh"]

_ROOT_FILENAME = "root.json"
_MAX_DAYS_IN_FUTURE = 36_500  # a century: beyond any metadata's expiry, below datetime's range
# What python-tuf and its HTTP fetcher raise for a verification, download or local-file failure.
_TUF_FAILURES = (RepositoryError, DownloadError, urllib3.exceptions.HTTPError, OSError, ValueError)


@dataclass(frozen=True, slots=True)
class DownloadedTarget:
    """A verified target file on disk; ``cached`` when it was already there and not fetched again."""

    path: Path
    cached: bool


def init(metadata_dir: Path, trusted_root: Path) -> None:
    """Store ``trusted_root`` as the trusted ``root.json`` in ``metadata_dir`` (created if needed).

    Raises:
        TufUpdateFailed: the file cannot be read, is larger than a root may be, is not root metadata,
            or lacks a threshold of valid signatures by its own root keys.
    """
    try:
        data = _read_bounded(trusted_root, UpdaterConfig().root_max_length)
        _verify_self_signed_root(data)
        metadata_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_atomically(metadata_dir / _ROOT_FILENAME, data)
    except _TUF_FAILURES as exc:
        raise TufUpdateFailed("init", f"{trusted_root}: {_describe(exc)}") from exc


def refresh(metadata_dir: Path, metadata_url: str, *, days_in_future: int = 0) -> None:
    """Update the trusted top-level metadata in ``metadata_dir`` from ``metadata_url`` (TUF spec 5.3-5.6).

    Raises:
        TufUpdateFailed: no trusted root in ``metadata_dir`` (run ``init``), a download failed, or the
            repository's metadata was refused (bad signature, rollback, expired, too large, ...).
    """
    try:
        _updater("refresh", metadata_dir, metadata_url, days_in_future=days_in_future).refresh()
    except _TUF_FAILURES as exc:
        raise TufUpdateFailed("refresh", _describe(exc)) from exc


def download(
    metadata_dir: Path,
    metadata_url: str,
    target_name: str,
    target_dir: Path,
    target_base_url: str,
    *,
    days_in_future: int = 0,
) -> DownloadedTarget:
    """Refresh the metadata, then make ``target_name`` present and verified in ``target_dir``.

    The file is named by the URL-quoted target path (python-tuf's choice), so a target downloaded
    again after its content changed replaces the earlier file.

    Returns:
        Where the file is, and whether it was already there (then nothing is fetched).

    Raises:
        TufUpdateFailed: the refresh failed, the repository has no such target, or the downloaded
            bytes do not match the target's length and hashes (nothing is written then).
    """
    try:
        updater = _updater(
            "download",
            metadata_dir,
            metadata_url,
            days_in_future=days_in_future,
            target_dir=target_dir,
            target_base_url=target_base_url,
        )
        updater.refresh()
        info = updater.get_targetinfo(target_name)
        if info is None:
            raise TufUpdateFailed("download", f"the repository has no target {target_name!r}")
        cached = updater.find_cached_target(info)
        if cached is not None:
            return DownloadedTarget(Path(cached), cached=True)
        target_dir.mkdir(parents=True, exist_ok=True)
        return DownloadedTarget(Path(updater.download_target(info)), cached=False)
    except _TUF_FAILURES as exc:
        raise TufUpdateFailed("download", f"{target_name}: {_describe(exc)}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Run the conformance suite's client-under-test CLI; return 0 on success, 1 on failure.

    A usage error exits with status 2 (argparse).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _dispatch(parser, args)
    except TufUpdateFailed as exc:
        if args.verbose:
            traceback.print_exception(exc, file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# -- the Updater ---------------------------------------------------------------------------------


def _updater(
    operation: str,
    metadata_dir: Path,
    metadata_url: str,
    *,
    days_in_future: int,
    target_dir: Path | None = None,
    target_base_url: str | None = None,
) -> Updater:
    _require_days_in_future(operation, days_in_future)
    if not (metadata_dir / _ROOT_FILENAME).is_file():
        raise TufUpdateFailed(operation, f"no trusted {_ROOT_FILENAME} in {metadata_dir}: run init first")
    # bootstrap=None: the trusted root is the root.json that init stored (and ngclient keeps current).
    updater = Updater(
        str(metadata_dir),
        metadata_url,
        None if target_dir is None else str(target_dir),
        target_base_url,
        config=UpdaterConfig(),
        bootstrap=None,
    )
    if days_in_future:
        _shift_reference_time(operation, updater, dt.timedelta(days=days_in_future))
    return updater


def _shift_reference_time(operation: str, updater: Updater, delta: dt.timedelta) -> None:
    # python-tuf 7 reads the clock once, in TrustedMetadataSet.__init__, and compares every expiry
    # with that `reference_time` (the suite's python-tuf client moves it the same way). Fail closed if
    # a python-tuf release renames it: a silently ignored option would make the tests lie.
    trusted_set = updater._trusted_set  # private: python-tuf has no public setting for it
    reference_time = getattr(trusted_set, "reference_time", None)
    if not isinstance(reference_time, dt.datetime):
        raise TufUpdateFailed(operation, "this python-tuf release cannot evaluate expiry at another time")
    trusted_set.reference_time = reference_time + delta


def _require_days_in_future(operation: str, days: int) -> None:
    if not 0 <= days <= _MAX_DAYS_IN_FUTURE:
        raise TufUpdateFailed(
            operation, f"--days-in-future must be between 0 and {_MAX_DAYS_IN_FUTURE}, got {days}"
        )


# -- init ------------------------------------------------------------------------------------------


def _read_bounded(path: Path, limit: int) -> bytes:
    with path.open("rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes, the most a root may be")
    return data


def _verify_self_signed_root(data: bytes) -> None:
    # The check ngclient makes of its bootstrap root (TUF spec 5.2): root metadata, signed by a
    # threshold of its own root keys. Expiry is not checked: an expired initial root is allowed and
    # is superseded in the refresh (TUF spec 5.3.10 checks the final root).
    metadata = Metadata[Root].from_bytes(data)
    if not isinstance(metadata.signed, Root):
        raise RepositoryError(f"expected root metadata, got {metadata.signed.type}")
    metadata.signed.verify_delegate(Root.type, metadata.signed_bytes, metadata.signatures)


def _write_atomically(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    try:
        Path(file.name).replace(path)  # a root.json symlink left by ngclient is replaced, not followed
    except OSError:
        Path(file.name).unlink(missing_ok=True)
        raise


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


# -- the conformance suite's CLI -------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fleetguard.agent.tuf_client",
        description="TUF client-under-test for the tuf-conformance suite (its CLIENT-CLI.md): "
        "init, refresh and download over a metadata URL and a metadata directory.",
        epilog="Options may also follow the command. Exit status: 0 ok; 1 failure; 2 usage error.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Show the traceback on failure.")
    _add_location_options(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init_parser = commands.add_parser("init", help="Trust the given root.json. No network request.")
    init_parser.add_argument("trusted_root", nargs="?", metavar="TRUSTED_ROOT", help="The initial root.json.")
    init_parser.add_argument(
        "--trusted-root", dest="trusted_root_option", metavar="FILE", help="The same, as an option."
    )
    refresh_parser = commands.add_parser("refresh", help="Update the top-level metadata.")
    download_parser = commands.add_parser("download", help="Refresh, then download and verify a target.")
    for subparser in (init_parser, refresh_parser, download_parser):
        # SUPPRESS: an option given before the command is not reset by the command's parser.
        _add_location_options(subparser, default=argparse.SUPPRESS)
    return parser


def _add_location_options(parser: argparse.ArgumentParser, *, default: object) -> None:
    parser.add_argument("--metadata-dir", default=default, help="Trusted local metadata.")
    parser.add_argument("--metadata-url", default=default, help="The repository's metadata base URL.")
    parser.add_argument("--target-name", default=default, help="The target path to download.")
    parser.add_argument("--target-dir", default=default, help="Where targets are stored.")
    parser.add_argument("--target-base-url", default=default, help="The repository's targets base URL.")
    parser.add_argument(
        "--days-in-future",
        type=int,
        default=0 if default is None else default,
        help="Check expiry as if it were this many days later (0 to 36500).",
    )


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    metadata_dir = Path(_required(parser, args, "metadata_dir"))
    if args.command == "init":
        trusted_root = args.trusted_root or args.trusted_root_option
        if trusted_root is None or (args.trusted_root and args.trusted_root_option):
            parser.error("init takes one trusted root: TRUSTED_ROOT or --trusted-root FILE")
        init(metadata_dir, Path(trusted_root))
    elif args.command == "refresh":
        refresh(metadata_dir, _required(parser, args, "metadata_url"), days_in_future=args.days_in_future)
    else:
        download(
            metadata_dir,
            _required(parser, args, "metadata_url"),
            _required(parser, args, "target_name"),
            Path(_required(parser, args, "target_dir")),
            _required(parser, args, "target_base_url"),
            days_in_future=args.days_in_future,
        )


def _required(parser: argparse.ArgumentParser, args: argparse.Namespace, name: str) -> str:
    value: str | None = getattr(args, name)
    if value is None:
        parser.error(f"{args.command} needs --{name.replace('_', '-')}")
    return value


if __name__ == "__main__":
    sys.exit(main())
