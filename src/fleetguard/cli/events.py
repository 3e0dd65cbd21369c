"""``fleetguard events``: read, verify and prove the tamper-evident event log.

``verify`` recomputes every hash, link and signed checkpoint and names each entry that was modified,
deleted, inserted or reordered (exit 1 when it finds anything). ``prove`` and ``consistency`` print
RFC 9162 proofs as JSON with hex hashes, checked before they are printed, together with the signed
checkpoint of the same tree size when there is one, so that an auditor can check them offline
against the public key that ``public-key`` prints.
"""

from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleetguard.cli.context import cli_context
from fleetguard.cli.exit_status import EXIT_STATUS_EPILOG, ExitStatus
from fleetguard.cli.output import (
    JsonFlag,
    format_time,
    print_fields,
    print_json,
    print_notice,
    print_table,
    progress_bar,
)
from fleetguard.events.checkpoint import SignedTreeHead, load_public_key
from fleetguard.events.log import EventLog, VerificationReport
from fleetguard.events.merkle import verify_consistency, verify_inclusion
from fleetguard.installation import Runtime
from fleetguard.inventory.service import device_event_subject
from fleetguard.types import utc_now

__all__ = ["app"]

app = typer.Typer(
    name="events",
    help="Read, verify and prove the tamper-evident event log.",
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
)

_KEY_FILE_LIMIT = 4096  # load_public_key refuses larger PEM files anyway

Subject = Annotated[
    str | None, typer.Option("--subject", help="Only this subject, e.g. device:<id>, token:<id>.")
]
DeviceOption = Annotated[
    str | None, typer.Option("--device", metavar="ID", help="Only this device's entries.")
]
ActionOption = Annotated[
    str | None, typer.Option("--action", help="Only this action, e.g. device.quarantine.")
]
After = Annotated[
    int,
    typer.Option(
        "--after", min=0, metavar="SEQ", help="Entries after this sequence number (before, with --newest)."
    ),
]
Limit = Annotated[int, typer.Option("--limit", min=1, max=10_000, help="At most this many entries.")]
Newest = Annotated[bool, typer.Option("--newest", help="Newest first.")]
Seq = Annotated[
    int, typer.Argument(min=1, help="Sequence number of the entry (1 is the first).", show_default=False)
]
TreeSize = Annotated[
    int | None,
    typer.Option("--tree-size", min=1, help="Size of the tree to prove in (default: the whole log)."),
]
PublicKeyFile = Annotated[
    Path | None,
    typer.Option(
        "--public-key",
        metavar="PEM",
        help="Verify checkpoints with this public key (default: the installation's own key).",
    ),
]


@app.command("list")
def list_events(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    subject: Subject = None,
    device: DeviceOption = None,
    action: ActionOption = None,
    after: After = 0,
    limit: Limit = 50,
    newest: Newest = False,
    as_json: JsonFlag = False,
) -> None:
    """List event-log entries, oldest first."""
    if device is not None:
        if subject is not None:
            raise typer.BadParameter("give --device or --subject, not both", param_hint="'--device'")
        subject = device_event_subject(device)
    with cli_context(ctx).runtime() as runtime:
        entries = runtime.log.entries(
            after_seq=after, limit=limit, subject=subject, action=action, newest_first=newest
        )
    if as_json:
        print_json([entry.to_json() for entry in entries])
        return
    print_table(
        ("seq", "time", "actor", "subject", "action", "reason"),
        [(e.seq, format_time(e.time), e.actor, e.subject, e.action, e.reason) for e in entries],
        empty="no entries match",
    )


@app.command("show")
def show_event(ctx: typer.Context, seq: Seq, as_json: JsonFlag = False) -> None:
    """Show one entry with its data and both hashes."""
    with cli_context(ctx).runtime() as runtime:
        record = runtime.log.get(seq).to_json()
    if as_json:
        print_json(record)
        return
    print_fields(list(record.items()))


@app.command("verify")
def verify_log(ctx: typer.Context, public_key: PublicKeyFile = None, as_json: JsonFlag = False) -> None:
    """Check every entry's hash and link and every signed checkpoint; exit 1 if anything is wrong.

    Names each entry that was modified, deleted, inserted or reordered, and each signed range that
    was rewritten. Pass --public-key with a copy of the key kept outside the data directory to
    rule out checkpoints re-signed by someone who can also write the data directory.
    """
    with cli_context(ctx).runtime() as runtime:
        key = _public_key(runtime, public_key)
        report = _verify(runtime.log, key)
    _print_report(report, as_json=as_json)
    if not report.intact:
        total = len(report.findings) + report.more_findings
        print_notice(f"error: event log tampered: {total} finding(s) (restore from backup and investigate)")
        raise typer.Exit(ExitStatus.FAILURE)


def _print_report(report: VerificationReport, *, as_json: bool) -> None:
    if as_json:
        print_json(_report_record(report))
    elif report.intact:
        typer.echo(f"event log intact: {report.entries} entries, {report.checkpoints} checkpoints")
    else:
        for finding in report.findings:
            typer.echo(f"seq {finding.seq}: {finding.kind}: {finding.detail}")
        if report.more_findings:
            typer.echo(f"... and {report.more_findings} more findings")


def _verify(log: EventLog, key: Ed25519PublicKey) -> VerificationReport:
    with progress_bar() as progress:
        task = progress.add_task("verifying", total=log.size())
        return log.verify(key, progress=lambda done: progress.update(task, completed=done))


def _public_key(runtime: Runtime, path: Path | None) -> Ed25519PublicKey:
    if path is None:
        return runtime.signer().public_key()
    with path.open("rb") as file:
        return load_public_key(file.read(_KEY_FILE_LIMIT + 1))


def _report_record(report: VerificationReport) -> dict[str, object]:
    return {
        "intact": report.intact,
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "findings": [{"seq": f.seq, "kind": f.kind.value, "detail": f.detail} for f in report.findings],
        "more_findings": report.more_findings,
    }


@app.command("checkpoint")
def sign_checkpoint(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Sign a checkpoint (tree head) over the whole log now and print it.

    The entries since the previous checkpoint are verified first; a tampered log is never signed.
    """
    with cli_context(ctx).runtime() as runtime:
        signed = runtime.log.checkpoint(runtime.signer(), now=utc_now())
    if as_json:
        print_json(_checkpoint_record(signed))
        return
    typer.echo(signed.to_note(), nl=False)


def _checkpoint_record(signed: SignedTreeHead) -> dict[str, object]:
    return {
        "origin": signed.head.origin,
        "tree_size": signed.head.tree_size,
        "root_hash": signed.head.root_hash.hex(),
        "timestamp": format_time(signed.head.timestamp),
        "key_id": signed.key_id,
        "note": signed.to_note(),
    }


@app.command("prove")
def prove_inclusion(ctx: typer.Context, seq: Seq, tree_size: TreeSize = None) -> None:
    """Print the RFC 9162 inclusion proof of entry SEQ as JSON (checked before it is printed)."""
    with cli_context(ctx).runtime() as runtime:
        proof = runtime.log.prove_inclusion(seq, tree_size)
        notes = _checkpoint_notes(runtime.log)
    verify_inclusion(proof.leaf_hash, proof.seq - 1, proof.tree_size, proof.path, proof.root_hash)
    print_json(
        {
            "seq": proof.seq,
            "leaf_index": proof.seq - 1,
            "tree_size": proof.tree_size,
            "leaf_hash": proof.leaf_hash.hex(),
            "path": [node.hex() for node in proof.path],
            "root_hash": proof.root_hash.hex(),
            "checkpoint": notes.get(proof.tree_size),
        }
    )


@app.command("consistency")
def prove_consistency(
    ctx: typer.Context,
    old_size: Annotated[
        int, typer.Argument(min=1, metavar="OLD", help="The earlier tree size.", show_default=False)
    ],
    new_size: Annotated[
        int | None, typer.Argument(min=1, metavar="NEW", help="The later tree size (default: the whole log).")
    ] = None,
) -> None:
    """Print the RFC 9162 proof that the log of size NEW extends the log of size OLD, as JSON."""
    with cli_context(ctx).runtime() as runtime:
        proof = runtime.log.prove_consistency(old_size, new_size)
        notes = _checkpoint_notes(runtime.log)
    verify_consistency(proof.old_size, proof.new_size, proof.old_root, proof.new_root, proof.path)
    print_json(
        {
            "old_size": proof.old_size,
            "new_size": proof.new_size,
            "old_root": proof.old_root.hex(),
            "new_root": proof.new_root.hex(),
            "path": [node.hex() for node in proof.path],
            "old_checkpoint": notes.get(proof.old_size),
            "new_checkpoint": notes.get(proof.new_size),
        }
    )


def _checkpoint_notes(log: EventLog) -> dict[int, str]:
    return {signed.head.tree_size: signed.to_note() for signed in log.checkpoints()}


@app.command("public-key")
def public_key_pem(ctx: typer.Context) -> None:
    """Print the public key that verifies this installation's checkpoints (PEM)."""
    with cli_context(ctx).runtime() as runtime:
        pem = runtime.signer().public_key_pem()
    typer.echo(pem.decode("ascii"), nl=False)
