"""``fleetguard enroll batch``: manufacturing batches for a production line.

``fleetguard enroll batch --model M --count N --csrs PATH --out FILE`` registers N devices of device
type M, one per CSR (the device id is the CSR's subject CN), and issues their certificates; the line
keeps its keys. ``--generate-keys`` instead makes the keys here, for devices that cannot, and delivers
them once in FILE, every key in a PKCS#12 encrypted under the bundle passphrase (from
``--bundle-pass-file`` or FLEETGUARD_BUNDLE_PASSPHRASE, never an argument). Either way FILE is a
new tar (mode 0600; an existing file is never overwritten) holding ``manifest.json``, its Ed25519
signature ``manifest.sig``, ``ca-chain.pem`` and ``devices/<id>.pem`` or ``.p12``; it is written
before the batch is recorded and named after, so it exists exactly when the batch does.

Issuing unlocks the CA key like ``certs issue``: FLEETGUARD_CA_PASSPHRASE or ``--passphrase-file``.
``list``, ``show`` and ``verify`` read what was recorded; ``verify`` checks a manifest offline too,
against the key ``fleetguard events public-key`` prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetguard.cli.ca import PassphraseFile, signing_context, write_artifact
from fleetguard.cli.certs import ReasonOption
from fleetguard.cli.context import cli_context, operator_actor
from fleetguard.cli.exit_status import EXIT_STATUS_EPILOG
from fleetguard.cli.output import (
    JsonFlag,
    StageProgress,
    format_time,
    print_json,
    print_notice,
    print_records,
    progress_bar,
)
from fleetguard.enroll import (
    MAX_BATCH_DEVICES,
    MIN_PASSPHRASE_LENGTH,
    Batch,
    BatchMode,
    BundleFile,
    IssuedBatch,
    ManifestInvalid,
    parse_manifest,
    read_csrs,
    require_bundle_passphrase,
    verify_manifest,
)
from fleetguard.enroll.batch import Progress
from fleetguard.enroll.manifest import MAX_MANIFEST_BYTES
from fleetguard.events.checkpoint import load_public_key
from fleetguard.installation import Runtime
from fleetguard.pki.keys import Passphrase

__all__ = ["BUNDLE_PASSPHRASE_ENV", "app", "create_batch"]

BUNDLE_PASSPHRASE_ENV = "FLEETGUARD_BUNDLE_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret

app = typer.Typer(
    name="batch",
    help="Manufacturing batches: register a production run's devices and issue their certificates at "
    "once.\n\n"
    "Make one: fleetguard enroll batch --model TYPE --count N (--csrs PATH | --generate-keys) --out FILE. "
    "CSR mode takes one CSR per device (its subject CN is the device id); --generate-keys makes the keys "
    "here and delivers them once, each in a PKCS#12 encrypted under the bundle passphrase. FILE is a new "
    "tar with manifest.json, manifest.sig (Ed25519, the event-log checkpoint key), ca-chain.pem and "
    "devices/<id>.pem or .p12. All or nothing: a bad CSR is named by its position and nothing is recorded.",
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
)

_MAX_PAGE = 10_000
_KEY_FILE_LIMIT = 4096
_SIGNATURE_LIMIT = 1024  # a raw Ed25519 signature is 64 bytes; verify names a wrong length


@app.callback(invoke_without_command=True)
def create(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", metavar="TYPE", help="The device type of every device (fleetguard types list)."
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(
            "--count", min=1, max=MAX_BATCH_DEVICES, help="How many devices; must match the CSRs given."
        ),
    ] = None,
    csrs: Annotated[
        Path | None,
        typer.Option(
            "--csrs",
            metavar="PATH",
            exists=True,
            readable=True,
            help="CSR mode: a file of concatenated PEM CSRs, or a directory of *.csr / *.pem files (one "
            "CSR each, taken in name order). Each CSR's subject CN is its device's id.",
        ),
    ] = None,
    generate_keys: Annotated[
        bool,
        typer.Option(
            "--generate-keys",
            help="Key-generation mode, for devices that cannot make keys: make P-256 keys here and "
            "deliver them once, encrypted, in --out. They are never stored.",
        ),
    ] = False,
    id_prefix: Annotated[
        str | None,
        typer.Option(
            "--id-prefix",
            metavar="PREFIX",
            help="With --generate-keys: device ids PREFIX000001, PREFIX000002, ... (default: UUIDs).",
        ),
    ] = None,
    first: Annotated[
        int, typer.Option("--first", min=0, help="With --id-prefix: the first sequence number.")
    ] = 1,
    bundle_passphrase_file: Annotated[
        Path | None,
        typer.Option(
            "--bundle-pass-file",
            metavar="FILE",
            dir_okay=False,
            help=f"With --generate-keys: read the passphrase that encrypts every key in the bundle from "
            f"FILE (mode 0600) instead of {BUNDLE_PASSPHRASE_ENV}; at least {MIN_PASSPHRASE_LENGTH} "
            "characters.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", metavar="FILE", help="The tar to write; it must not exist.", dir_okay=False),
    ] = None,
    passphrase_file: PassphraseFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Make a batch: --model TYPE --count N (--csrs PATH | --generate-keys) --out FILE.

    Every device is registered (label fleetguard.batch=<batch id>), issued its certificate and moved
    to provisioned in one transaction with the batch's signed manifest: a bad CSR, a repeated or
    registered device id, or a count that does not match records nothing.
    """
    if ctx.invoked_subcommand is not None:
        return
    if model is None or count is None or out is None:
        raise typer.BadParameter("a batch needs --model, --count and --out")
    if (csrs is None) == (not generate_keys):
        raise typer.BadParameter("give exactly one of --csrs PATH (CSR mode) and --generate-keys")
    if csrs is not None and (id_prefix is not None or bundle_passphrase_file is not None or first != 1):
        raise typer.BadParameter("--id-prefix, --first and --bundle-pass-file go with --generate-keys")
    bundle = BundleFile(
        out, passphrase=None if csrs is not None else _bundle_passphrase(bundle_passphrase_file)
    )
    bundle.require_free()
    with signing_context(ctx, passphrase_file).runtime() as runtime:
        issued = create_batch(
            runtime, model, count, csrs=csrs, bundle=bundle, id_prefix=id_prefix, first=first,
            actor=operator_actor(),
        )  # fmt: skip
    _print_created(issued, out, as_json=as_json)


def create_batch(
    runtime: Runtime,
    model: str,
    count: int,
    *,
    csrs: Path | None,
    bundle: BundleFile,
    actor: str,
    id_prefix: str | None = None,
    first: int = 1,
    observer: Progress | None = None,
) -> IssuedBatch:
    """Make a batch as ``fleetguard enroll batch`` does, with its progress bar on stderr; return it.

    CSR mode when ``csrs`` is given, else key generation (``bundle`` holds the passphrase).
    ``observer`` sees the progress too (the benchmark times the stages with it).
    """
    with progress_bar() as bar:
        report = StageProgress(bar, observer)
        if csrs is not None:
            inputs = read_csrs(csrs)
            return runtime.batches.create_from_csrs(
                model, count, inputs, actor=actor, sink=bundle, progress=report
            )
        return runtime.batches.create_with_keys(
            model, count, actor=actor, sink=bundle, id_prefix=id_prefix, first=first, progress=report
        )


@app.command("list")
def list_batches(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", min=1, max=_MAX_PAGE, help="At most this many.")] = 100,
    after: Annotated[
        str | None, typer.Option("--after", metavar="ID", help="Start after this batch id (paging).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List batches, oldest first."""
    with cli_context(ctx).runtime() as runtime:
        batches = runtime.batches.batches(limit=limit, after=after)
    print_records(
        [_batch_record(batch) for batch in batches],
        (
            ("id", "id"),
            ("model", "model"),
            ("mode", "mode"),
            ("count", "devices"),
            ("created_at", "created"),
            ("actor", "actor"),
            ("manifest_sha256", "manifest sha256"),
        ),
        as_json=as_json,
        empty="no batches: make one with fleetguard enroll batch --model M --count N ...",
    )
    if len(batches) == limit:
        print_notice(f"more may match: add --after {batches[-1].id}")


@app.command("show")
def show_batch(
    ctx: typer.Context,
    batch_id: Annotated[
        str, typer.Argument(metavar="BATCH_ID", help="The batch's id (from batch list).", show_default=False)
    ],
    signature: Annotated[
        str | None,
        typer.Option("--signature", metavar="FILE", help="Also write the manifest's signature to FILE."),
    ] = None,
) -> None:
    """Print the batch's manifest exactly as signed (canonical JSON), e.g. to check it with verify."""
    with cli_context(ctx).runtime() as runtime:
        stored = runtime.batches.batch(batch_id)
    if signature is not None:
        write_artifact(stored.signature, signature, binary=True)
    write_artifact(stored.manifest, "-", binary=False)


@app.command("revoke")
def revoke_batch(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    batch_id: Annotated[
        str, typer.Argument(metavar="BATCH_ID", help="The batch's id (from batch list).", show_default=False)
    ],
    reason: ReasonOption,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    passphrase_file: PassphraseFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Revoke every valid certificate of every device of a batch, e.g. when its key bundle was lost.

    The devices are those of the batch's signed manifest. A device keeps its key when it renews, so
    all its certificates are revoked, not only the one the batch issued; it must enroll again (with a
    token) to get a new key. Each certificate's CRL shard is re-signed before the next is revoked.
    Running it again after an interruption revokes the rest.
    """
    with signing_context(ctx, passphrase_file).runtime() as runtime:
        stored = runtime.batches.batch(batch_id)
        runtime.pki.issuer(stored.batch.issuer_id)  # a wrong passphrase fails before anything changes
        if not yes and not typer.confirm(
            f"revoke the certificates of the {stored.batch.count} devices of batch {stored.batch.id} "
            f"({reason})?",
            err=True,
        ):
            raise typer.Exit(1)
        with progress_bar() as bar:
            result = runtime.batches.revoke(
                batch_id, reason, actor=operator_actor(), progress=StageProgress(bar)
            )
    if as_json:
        revoked = [f"{serial:x}" for serial in result.revoked]
        print_json(
            {"batch": result.batch_id, "devices": result.devices, "revoked": revoked, "reason": reason}
        )
        return
    typer.echo(
        f"batch {result.batch_id}: {len(result.revoked)} certificates of {result.devices} devices revoked "
        f"({reason}); their CRL shards re-signed"
    )


@app.command("verify")
def verify(
    ctx: typer.Context,
    manifest: Annotated[
        Path,
        typer.Argument(metavar="MANIFEST", exists=True, dir_okay=False, help="manifest.json of a bundle."),
    ],
    signature: Annotated[
        Path, typer.Argument(metavar="SIG", exists=True, dir_okay=False, help="Its manifest.sig.")
    ],
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            metavar="PEM",
            exists=True,
            dir_okay=False,
            help="Check against this Ed25519 public key (fleetguard events public-key) instead of the "
            "installation's own; needs no installation.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check a batch manifest's signature; exit 1 if it does not verify."""
    data = _read(manifest, MAX_MANIFEST_BYTES)
    signature_bytes = _read(signature, _SIGNATURE_LIMIT)
    if public_key is not None:
        key = load_public_key(_read(public_key, _KEY_FILE_LIMIT))
    else:
        with cli_context(ctx).runtime() as runtime:
            key = runtime.signer().public_key()
    verify_manifest(data, signature_bytes, key)
    parsed = parse_manifest(data)
    if as_json:
        print_json(
            {"verified": True, "batch_id": parsed.batch_id, "model": parsed.model, "mode": parsed.mode.value,
             "count": parsed.count, "created_at": format_time(parsed.created_at)}
        )  # fmt: skip
        return
    typer.echo(
        f"manifest of batch {parsed.batch_id} verified: {parsed.count} devices of {parsed.model} "
        f"({parsed.mode}), made {format_time(parsed.created_at)} by {parsed.actor}"
    )


# -- helpers -----------------------------------------------------------------------------------------


def _bundle_passphrase(path: Path | None) -> Passphrase:
    passphrase = (
        Passphrase.from_file(path) if path is not None else Passphrase.from_env(BUNDLE_PASSPHRASE_ENV)
    )
    require_bundle_passphrase(passphrase)
    return passphrase


def _read(path: Path, limit: int) -> bytes:
    with path.open("rb") as file:
        data = file.read(limit + 1)  # bounded: the file may be anything
    if len(data) > limit:
        raise ManifestInvalid(f"{path.name} holds more than {limit} bytes")
    return data


def _batch_record(batch: Batch) -> dict[str, object]:
    """Return ``batch`` as JSON values (what list and --json print)."""
    return {
        "id": batch.id,
        "model": batch.model,
        "mode": batch.mode.value,
        "count": batch.count,
        "issuer_id": batch.issuer_id,
        "actor": batch.actor,
        "created_at": format_time(batch.created_at),
        "manifest_sha256": batch.manifest_sha256.hex(),
    }


def _print_created(issued: IssuedBatch, out: Path, *, as_json: bool) -> None:
    batch = issued.batch
    if as_json:
        print_json({**_batch_record(batch), "out": str(out)})
        return
    kind = "CSRs" if batch.mode is BatchMode.CSR else "generated keys"
    typer.echo(
        f"batch {batch.id}: {batch.count} devices of {batch.model} from {kind}, certificates issued by "
        f"{batch.issuer_id}; bundle {out}; manifest sha256 {batch.manifest_sha256.hex()}"
    )
    if batch.mode is BatchMode.KEYGEN:
        print_notice(f"{out} holds the batch's only copy of its keys: deliver it, then delete it")
    print_notice("the line checks the bundle with: fleetguard enroll batch verify manifest.json manifest.sig")
