"""``fleetguard certs``: issue, renew, list, show and revoke certificates; CRLs; renewals that are due.

A CSR only proves possession of a key: the certificate's subject (CN = device id) and SAN
(``spiffe://<trust domain>/device/<id>``) come from the inventory, never from the request. Serials are
hexadecimal, as ``openssl x509 -serial`` prints them (colons and a ``0x`` prefix are accepted); a
malformed one is a usage error. Revoking unlocks the CA key first, so a wrong passphrase changes
nothing, then re-signs the certificate's CRL shard before the command returns. Commands that sign
take the CA key passphrase from FLEETGUARD_CA_PASSPHRASE or ``--passphrase-file``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import string
from pathlib import Path
from typing import Annotated

import typer

from fleetguard.cli.ca import PassphraseFile, signing_context, write_artifact
from fleetguard.cli.context import cli_context, operator_actor
from fleetguard.cli.device_options import DeviceIdArgument
from fleetguard.cli.exit_status import EXIT_STATUS_EPILOG
from fleetguard.cli.output import JsonFlag, format_time, print_fields, print_json, print_notice, print_table
from fleetguard.cli.renewal_scheduler import DueRenewal, DueWindow, describe, find_due
from fleetguard.installation import Runtime
from fleetguard.pki.crl import SignedCrl
from fleetguard.pki.csr import MAX_CSR_BYTES
from fleetguard.pki.errors import CsrRejected, PkiError
from fleetguard.pki.revocation import MAX_SERIAL, RevocationReason
from fleetguard.pki.service import CertificateRecord, CertificateStatus, FleetView
from fleetguard.types import parse_utc, utc_now

__all__ = ["app", "certificate_record", "parse_serial"]

app = typer.Typer(
    name="certs",
    help="Issue, renew, list, show and revoke certificates; write CRLs; list renewals that are due.",
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
)

_DAY = dt.timedelta(days=1)
_MAX_PAGE = 10_000
_LIST_COLUMNS = ("serial", "device", "status", "not after", "days left")
_DUE_COLUMNS = ("serial", "device", "renew at", "not after", "days left")


def parse_serial(text: str) -> int:
    """Return the serial written in hex in ``text``; raise ``typer.BadParameter`` (usage) if malformed."""
    digits = text.strip().lower().removeprefix("0x").replace(":", "")
    # RFC 5280 4.1.2.2: at most 20 octets, positive.
    if not digits or len(digits) > 40 or any(c not in string.hexdigits for c in digits):
        raise typer.BadParameter(f"{text[:80]!r} is not a serial number in hex, e.g. 4f3a9c...")
    serial = int(digits, 16)
    if not 0 < serial <= MAX_SERIAL:
        raise typer.BadParameter(f"{text[:80]!r} is out of range: serials are positive and at most 20 octets")
    return serial


def _parse_time(text: str) -> dt.datetime:
    try:
        return parse_utc(text)
    except ValueError as exc:
        raise typer.BadParameter(
            f"{text[:80]!r} is not an ISO 8601 time with offset, e.g. 2025-01-31T12:00:00Z"
        ) from exc


SerialArgument = Annotated[
    int,
    typer.Argument(
        parser=parse_serial, metavar="SERIAL", help="The certificate's serial in hex.", show_default=False
    ),
]
CsrFile = Annotated[
    Path,
    typer.Option(
        "--csr",
        metavar="FILE",
        exists=True,
        dir_okay=False,
        readable=True,
        show_default=False,
        help=f"The PKCS#10 request, PEM or DER, at most {MAX_CSR_BYTES // 1024} KiB; only its key is used.",
    ),
]
OutFile = Annotated[
    Path | None,
    typer.Option("--out", metavar="FILE", dir_okay=False, help="Write to FILE instead of stdout."),
]
ReasonOption = Annotated[
    RevocationReason,
    typer.Option("--reason", show_default=False, help="The RFC 5280 reason, put in the CRL and OCSP."),
]
DeviceOption = Annotated[str | None, typer.Option("--device", metavar="ID", help="Only this device's.")]
ViewOption = Annotated[
    FleetView,
    typer.Option(
        "--view",
        help="all; expiring: valid and expiring within --within-days; expired: valid but past notAfter; "
        "revoked.",
    ),
]
WithinDays = Annotated[
    int, typer.Option("--within-days", min=1, max=3650, help="With --view expiring: the horizon in days.")
]
Limit = Annotated[int, typer.Option("--limit", min=1, max=_MAX_PAGE, help="At most this many.")]
AfterSerial = Annotated[
    int | None,
    typer.Option("--after", parser=parse_serial, metavar="SERIAL", help="Start after this serial (paging)."),
]
PemFlag = Annotated[bool, typer.Option("--pem", help="PEM instead of DER.")]
ShowPem = Annotated[bool, typer.Option("--pem", help="Print the certificate as PEM (with --json: add it).")]
CaOption = Annotated[
    str | None, typer.Option("--ca", metavar="ID", help="The issuing CA (default: the one that issues now).")
]
ShardOption = Annotated[
    int | None,
    typer.Option("--shard", min=0, metavar="N", help="The shard's CRL (a certificate's crl_partition)."),
]
FullFlag = Annotated[bool, typer.Option("--full", help="The complete CRL of the CA (every shard).")]
DeltaFlag = Annotated[bool, typer.Option("--delta", help="The delta CRL instead of the full one.")]
AtOption = Annotated[
    dt.datetime | None,
    typer.Option(
        "--at", parser=_parse_time, metavar="TIME", help="Evaluate at this ISO 8601 time instead of now."
    ),
]


@app.command("issue")
def issue_certificate(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    device_id: DeviceIdArgument,
    csr: CsrFile,
    out: OutFile = None,
    passphrase_file: PassphraseFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Issue DEVICE_ID's certificate for the key in the CSR; print it as PEM, or write it to --out.

    Quarantined and decommissioned devices get none. With --json, print the record (with renew_at and
    the PEM).
    """
    request = _read_csr(csr)
    with signing_context(ctx, passphrase_file).runtime() as runtime:
        record = runtime.pki.issue_device(device_id, request, actor=operator_actor())
        renew_at = runtime.pki.renewal_due(record)
    _print_issued(record, renew_at, out=out, as_json=as_json, verb="issued")


@app.command("renew")
def renew_certificate(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    device_id: DeviceIdArgument,
    serial: SerialArgument,
    csr: CsrFile,
    out: OutFile = None,
    passphrase_file: PassphraseFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Renew DEVICE_ID's certificate SERIAL for the key in the CSR, even expired within the grace window.

    The previous certificate stays valid until it expires. Fails for a revoked certificate, another
    device's, or one expired beyond FLEETGUARD_RENEWAL_GRACE_DAYS (enrol the device again).
    """
    request = _read_csr(csr)
    with signing_context(ctx, passphrase_file).runtime() as runtime:
        record = runtime.pki.renew_device(device_id, request, serial=serial, actor=operator_actor())
        renew_at = runtime.pki.renewal_due(record)
    _print_issued(record, renew_at, out=out, as_json=as_json, verb="renewed")


DnsNames = Annotated[
    list[str],
    typer.Option(
        "--dns", metavar="NAME", help="A DNS name the server answers to (repeat; the first is the CN)."
    ),
]
IpAddresses = Annotated[
    list[str] | None,
    typer.Option("--ip", metavar="ADDRESS", help="An IP address the server answers on (repeat)."),
]


@app.command("issue-server")
def issue_server_certificate(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="File name for the key and certificate, e.g. broker or api.")
    ],
    dns: DnsNames,
    ip: IpAddresses = None,
    passphrase_file: PassphraseFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Issue a TLS server certificate (MQTT broker, API) with a key that this server keeps and renews.

    Writes NAME.key.pem (0600), NAME.pem and NAME.chain.pem under <data dir>/pki/servers; `fleetguard
    up` re-issues them at two thirds of their life.
    """
    try:
        addresses = [ipaddress.ip_address(text) for text in ip or []]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ip") from exc
    with signing_context(ctx, passphrase_file).runtime() as runtime:
        record = runtime.pki.issue_server(name, dns, addresses, actor=operator_actor())
        renew_at = runtime.pki.renewal_due(record)
        directory = runtime.settings.data_dir / "pki" / "servers"
    if as_json:
        print_json({**certificate_record(record, renew_at, utc_now()), "directory": str(directory)})
        return
    print_notice(
        f"issued server certificate {record.serial:x} ({record.subject}) valid until "
        f"{format_time(record.not_after)}; key and chain in {directory}"
    )


@app.command("list")
def list_certificates(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    device: DeviceOption = None,
    view: ViewOption = FleetView.ALL,
    within_days: WithinDays = 7,
    limit: Limit = 100,
    after: AfterSerial = None,
    as_json: JsonFlag = False,
) -> None:
    """List certificates of one fleet view, soonest notAfter first."""
    now = utc_now()
    with cli_context(ctx).runtime() as runtime:
        records = runtime.pki.certificates(
            view=view, device_id=device, within=within_days * _DAY, now=now, limit=limit, after=after
        )
        renewals = [runtime.pki.renewal_due(record) for record in records]
    if as_json:
        print_json([certificate_record(r, due, now) for r, due in zip(records, renewals, strict=True)])
        return
    rows = [
        (f"{r.serial:x}", r.device_id, _state(r, now), format_time(r.not_after), _days_left(r, now))
        for r in records
    ]
    print_table(_LIST_COLUMNS, rows, empty="no certificates match")
    if len(records) == limit:
        print_notice(f"more may match: add --after {records[-1].serial:x}")


@app.command("show")
def show_certificate(
    ctx: typer.Context, serial: SerialArgument, pem: ShowPem = False, as_json: JsonFlag = False
) -> None:
    """Show one certificate's record; --pem prints the certificate itself."""
    now = utc_now()
    with cli_context(ctx).runtime() as runtime:
        record = runtime.pki.certificate(serial)
        renew_at = runtime.pki.renewal_due(record)
    if as_json:
        extra = {"pem": record.pem().decode()} if pem else {}
        print_json({**certificate_record(record, renew_at, now), **extra})
        return
    if pem:
        typer.echo(record.pem().decode(), nl=False)
        return
    fields = certificate_record(record, renew_at, now)
    fields["status"] = _state(record, now)
    del fields["expired"]
    print_fields([(name.replace("_", " "), value) for name, value in fields.items()])


@app.command("revoke")
def revoke_certificate(
    ctx: typer.Context,
    serial: SerialArgument,
    reason: ReasonOption,
    passphrase_file: PassphraseFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Revoke one certificate; its CRL shard is re-signed before this returns (revoking twice is harmless)."""
    now = utc_now()
    with signing_context(ctx, passphrase_file).runtime() as runtime:
        record = runtime.pki.certificate(serial)
        already = record.status is CertificateStatus.REVOKED
        if not already:
            # Unlock the CA key first, so that a wrong passphrase fails before anything changes.
            runtime.pki.issuer(record.issuer_id)
            record = runtime.pki.revoke(serial, reason, actor=operator_actor(), now=now)
        renew_at = runtime.pki.renewal_due(record)
    if as_json:
        print_json(certificate_record(record, renew_at, now))
    elif already:
        revoked_at = format_time(record.revoked_at)
        typer.echo(f"certificate {serial:x} was revoked already at {revoked_at} ({record.reason})")
    else:
        typer.echo(
            f"revoked certificate {serial:x} ({reason}); CRL shard {record.crl_partition} of "
            f"{record.issuer_id} re-signed"
        )


@app.command("revoke-device")
def revoke_device_certificates(
    ctx: typer.Context,
    device_id: DeviceIdArgument,
    reason: ReasonOption,
    passphrase_file: PassphraseFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Revoke every valid certificate of DEVICE_ID; their CRL shards are re-signed before this returns."""
    now = utc_now()
    with signing_context(ctx, passphrase_file).runtime() as runtime:
        runtime.inventory.get(device_id)  # a mistyped id fails instead of revoking nothing
        _unlock_issuers(runtime, device_id)
        revoked = runtime.pki.revoke_device(device_id, reason, actor=operator_actor(), now=now)
        renewals = [runtime.pki.renewal_due(record) for record in revoked]
    if as_json:
        print_json([certificate_record(r, due, now) for r, due in zip(revoked, renewals, strict=True)])
        return
    if not revoked:
        typer.echo(f"device {device_id} has no valid certificate: nothing revoked")
        return
    serials = ", ".join(f"{r.serial:x}" for r in revoked)
    typer.echo(f"revoked {len(revoked)} certificates of device {device_id} ({reason}): {serials}")


@app.command("crl")
def write_crl(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    ca: CaOption = None,
    shard: ShardOption = None,
    full: FullFlag = False,
    delta: DeltaFlag = False,
    out: OutFile = None,
    pem: PemFlag = False,
    passphrase_file: PassphraseFile = None,
) -> None:
    """Write the current CRL of one shard (--shard N) or of the whole CA (--full), as DER or --pem.

    A certificate's shard is the crl_partition that certs show prints; it is also named in its CRL
    distribution point. Prints the CRL number, scope and size on stderr.
    """
    context = signing_context(ctx, passphrase_file)
    partition = _partition(shard, full=full, partitions=context.settings.crl_partitions)
    with context.runtime() as runtime:
        issuer_id = ca if ca is not None else runtime.pki.active_issuer_id()
        _require_issuing_ca(runtime, issuer_id)
        crl = runtime.revocation.crl(issuer_id, partition, delta=delta)
    write_artifact(crl.pem() if pem else crl.der, "-" if out is None else str(out), binary=not pem)
    print_notice(_describe_crl(crl, issuer_id, delta=delta))


@app.command("due")
def due_certificates(
    ctx: typer.Context, at: AtOption = None, limit: Limit = 100, as_json: JsonFlag = False
) -> None:
    """List the certificates due for renewal now (or --at TIME), most urgent first.

    Due: valid, renewal time (2/3 of the life, jittered) passed, expired at most
    FLEETGUARD_RENEWAL_GRACE_DAYS ago, and not superseded by a newer certificate of its device.
    """
    now = utc_now() if at is None else at
    with cli_context(ctx).runtime() as runtime:
        report = find_due(runtime.pki, DueWindow.from_settings(runtime.settings), now=now)
    shown = report.due[:limit]
    if as_json:
        print_json([_due_record(d, now) for d in shown])
    else:
        rows = [
            (
                f"{d.record.serial:x}",
                d.record.device_id,
                format_time(d.renew_at),
                format_time(d.record.not_after),
                _days_left(d.record, now),
            )
            for d in shown
        ]
        print_table(_DUE_COLUMNS, rows, empty="no certificate is due for renewal")
    if len(report.due) > limit or not report.complete:
        print_notice(describe(report))


def certificate_record(
    record: CertificateRecord, renew_at: dt.datetime, now: dt.datetime
) -> dict[str, object]:
    """Return a certificate's record as JSON values; ``expired`` is judged at ``now``."""
    return {
        "serial": f"{record.serial:x}",
        "device_id": record.device_id,
        "profile": record.profile,
        "subject": record.subject,
        "issuer_id": record.issuer_id,
        "status": record.status.value,
        "expired": record.not_after <= now,
        "not_before": format_time(record.not_before),
        "not_after": format_time(record.not_after),
        "renew_at": format_time(renew_at),
        "revoked_at": format_time(record.revoked_at),
        "reason": None if record.reason is None else record.reason.value,
        "renewed_from": None if record.renewed_from is None else f"{record.renewed_from:x}",
        "crl_partition": record.crl_partition,
        "sha256": record.sha256.hex(),
    }


def _read_csr(path: Path) -> bytes:
    with path.open("rb") as file:
        data = file.read(MAX_CSR_BYTES + 1)  # bounded: the file may be anything
    if len(data) > MAX_CSR_BYTES:
        raise CsrRejected(f"{path.name} holds more than {MAX_CSR_BYTES} bytes")
    return data


def _print_issued(
    record: CertificateRecord, renew_at: dt.datetime, *, out: Path | None, as_json: bool, verb: str
) -> None:
    pem = record.pem()
    if out is not None:
        write_artifact(pem, str(out), binary=False)
    if as_json:
        print_json({**certificate_record(record, renew_at, utc_now()), "pem": pem.decode()})
        return
    if out is None:
        typer.echo(pem.decode(), nl=False)
    print_notice(
        f"{verb} certificate {record.serial:x} for device {record.device_id}: valid until "
        f"{format_time(record.not_after)}, renew from {format_time(renew_at)}"
        + ("" if out is None else f"; written to {out}")
    )


def _unlock_issuers(runtime: Runtime, device_id: str) -> None:
    """Load the key of every CA that issued a valid certificate of ``device_id`` (fails before any change)."""
    records = runtime.pki.certificates(view=FleetView.ALL, device_id=device_id, limit=_MAX_PAGE)
    for issuer_id in sorted({r.issuer_id for r in records if r.status is CertificateStatus.VALID}):
        runtime.pki.issuer(issuer_id)


def _partition(shard: int | None, *, full: bool, partitions: int) -> int | None:
    if full == (shard is not None):
        raise typer.BadParameter("give exactly one of --shard N and --full")
    if shard is not None and shard >= partitions:
        raise typer.BadParameter(f"shard {shard} does not exist: shards are 0..{partitions - 1}")
    return shard


def _require_issuing_ca(runtime: Runtime, authority_id: str) -> None:
    issuing = [a.id for a in runtime.pki.authorities() if a.role == "issuing"]
    if authority_id not in issuing:
        raise PkiError(f"no issuing CA {authority_id!r}", hint=f"issuing CAs: {', '.join(issuing) or 'none'}")


def _describe_crl(crl: SignedCrl, issuer_id: str, *, delta: bool) -> str:
    kind = f"delta CRL (base {crl.base_number})" if delta else "CRL"
    scope = "every shard" if crl.partition is None else f"shard {crl.partition}"
    return (
        f"{kind} number {crl.number} of {issuer_id}, {scope}: {crl.entries} revoked, "
        f"next update {format_time(crl.next_update)}, published at {crl.url}"
    )


def _due_record(due: DueRenewal, now: dt.datetime) -> dict[str, object]:
    return {
        "serial": f"{due.record.serial:x}",
        "device_id": due.record.device_id,
        "renew_at": format_time(due.renew_at),
        "not_after": format_time(due.record.not_after),
        "expired": due.record.not_after <= now,
    }


def _state(record: CertificateRecord, now: dt.datetime) -> str:
    if record.status is CertificateStatus.REVOKED:
        return "revoked"
    return "expired" if record.not_after <= now else "valid"


def _days_left(record: CertificateRecord, now: dt.datetime) -> int | None:
    if record.status is CertificateStatus.REVOKED:
        return None
    return (record.not_after - now) // _DAY
