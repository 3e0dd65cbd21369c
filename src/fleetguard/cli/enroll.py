"""``fleetguard enroll``: the operator's controls over first enrollment (EST, RFC 7030).

Four groups, one per thing the enrollment service keeps: ``manufacturers`` (the CAs whose factory
certificates are trusted), ``rules`` (zero-touch: enroll automatically or queue for approval),
``tokens`` (one-time tokens for devices without a factory certificate; the secret is shown once) and
``requests`` (the approval queue); and ``batch``, manufacturing batches (:mod:`.enroll_batch`).
Approving a request issues the device's certificate, so it unlocks the CA key like ``certs issue``:
passphrase from FLEETGUARD_CA_PASSPHRASE or ``--passphrase-file``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shlex
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization

from fleetguard.cli import enroll_batch
from fleetguard.cli.ca import PassphraseFile, signing_context
from fleetguard.cli.context import cli_context, operator_actor
from fleetguard.cli.exit_status import EXIT_STATUS_EPILOG
from fleetguard.cli.output import JsonFlag, format_time, print_json, print_notice, print_records
from fleetguard.config import Settings
from fleetguard.enroll import (
    EnrollmentInputRejected,
    EnrollmentRule,
    EnrollmentToken,
    ManufacturerCa,
    ModelAttribute,
    QueuedRequest,
    RequestStatus,
    RuleMode,
)
from fleetguard.pki.manufacturer import MAX_BUNDLE_SIZE
from fleetguard.types import utc_now

__all__ = ["app"]

app = typer.Typer(
    name="enroll",
    help="Control first enrollment over EST: manufacturer CAs, zero-touch rules, one-time tokens, approvals; "
    "and manufacturing batches.",
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
)
manufacturers_app = typer.Typer(
    name="manufacturers",
    help="Trust, list and remove the manufacturer CAs that sign factory certificates (IDevIDs).",
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
)
rules_app = typer.Typer(
    name="rules",
    help="Set, list and remove zero-touch rules: what happens to a device with a valid factory certificate.",
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
)
tokens_app = typer.Typer(
    name="tokens",
    help="Create, list and revoke one-time enrollment tokens for devices without a factory certificate.",
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
)
requests_app = typer.Typer(
    name="requests",
    help="List, approve and reject enrollment requests queued by approve rules.",
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
)
app.add_typer(manufacturers_app)
app.add_typer(rules_app)
app.add_typer(tokens_app)
app.add_typer(requests_app)
app.add_typer(enroll_batch.app)

_MAX_TTL_HOURS = 30 * 24  # fleetguard.enroll.tokens.MAX_TOKEN_TTL
_MAX_PAGE = 10_000

Manufacturer = Annotated[
    str, typer.Argument(metavar="MANUFACTURER", help="The manufacturer's name.", show_default=False)
]
Model = Annotated[
    str, typer.Argument(metavar="MODEL", help="The device model, or * for any model.", show_default=False)
]
DeviceId = Annotated[str, typer.Argument(metavar="DEVICE_ID", help="The device id.", show_default=False)]


# -- manufacturers ---------------------------------------------------------------------------------


@manufacturers_app.command("add")
def add_manufacturer(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The manufacturer's name.", show_default=False)],
    pem_file: Annotated[
        Path,
        typer.Argument(
            metavar="PEMFILE",
            exists=True,
            dir_okay=False,
            readable=True,
            show_default=False,
            help=f"The manufacturer's CA certificates, PEM, at most {MAX_BUNDLE_SIZE // 1024} KiB.",
        ),
    ],
    model_attribute: Annotated[
        ModelAttribute,
        typer.Option(
            "--model-attribute", help="The factory certificate's subject attribute naming the model."
        ),
    ] = ModelAttribute.OU,
    as_json: JsonFlag = False,
) -> None:
    """Trust the CA certificates in PEMFILE for NAME's factory certificates."""
    pem = _read_bounded(pem_file, MAX_BUNDLE_SIZE)
    with cli_context(ctx).runtime() as runtime:
        added = runtime.enroll.add_manufacturer_ca(
            name, pem, actor=operator_actor(), model_attribute=model_attribute
        )
    if as_json:
        print_json([_manufacturer_record(ca) for ca in added])
        return
    for ca in added:
        typer.echo(f"trusted {ca.id} for {ca.manufacturer}: {ca.subject} (until {format_time(ca.not_after)})")


@manufacturers_app.command("list")
def list_manufacturers(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the trusted manufacturer CAs, by manufacturer."""
    with cli_context(ctx).runtime() as runtime:
        cas = runtime.enroll.manufacturer_cas()
    records = [_manufacturer_record(ca) for ca in cas]
    print_records(
        records,
        (
            ("id", "id"),
            ("manufacturer", "manufacturer"),
            ("model_attribute", "model attribute"),
            ("not_after", "not after"),
            ("subject", "subject"),
        ),
        as_json=as_json,
        empty="no manufacturer CA: add one with fleetguard enroll manufacturers add",
    )


@manufacturers_app.command("remove")
def remove_manufacturer(
    ctx: typer.Context,
    ca_id: Annotated[
        str,
        typer.Argument(metavar="CA_ID", help="The CA's id (from manufacturers list).", show_default=False),
    ],
) -> None:
    """Stop trusting one manufacturer CA; its factory certificates no longer enroll."""
    with cli_context(ctx).runtime() as runtime:
        removed = runtime.enroll.remove_manufacturer_ca(ca_id, actor=operator_actor())
    typer.echo(f"removed {removed.id} of {removed.manufacturer} ({removed.subject})")


# -- rules -----------------------------------------------------------------------------------------


@rules_app.command("set")
def set_rule(
    ctx: typer.Context,
    manufacturer: Manufacturer,
    model: Model,
    mode: Annotated[
        RuleMode,
        typer.Option(
            "--mode", show_default=False, help="auto: enroll at once; approve: queue for an operator."
        ),
    ],
    register_unknown: Annotated[
        bool,
        typer.Option(
            "--register-unknown",
            help="With --mode auto: register devices the inventory does not know yet "
            "(approve rules queue them; approving registers them).",
        ),
    ] = False,
) -> None:
    """Create or replace the rule for MANUFACTURER and MODEL."""
    with cli_context(ctx).runtime() as runtime:
        rule = runtime.enroll.set_rule(
            manufacturer, model, mode, actor=operator_actor(), register_unknown=register_unknown
        )
    unknown = "registers unknown devices" if rule.register_unknown else "known devices only"
    typer.echo(f"rule {rule.manufacturer} {rule.model}: {rule.mode} ({unknown})")


@rules_app.command("list")
def list_rules(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the zero-touch rules."""
    with cli_context(ctx).runtime() as runtime:
        rules = runtime.enroll.rules()
    records = [_rule_record(rule) for rule in rules]
    print_records(
        records,
        (
            ("manufacturer", "manufacturer"),
            ("model", "model"),
            ("mode", "mode"),
            ("register_unknown", "register unknown"),
            ("updated_at", "updated"),
        ),
        as_json=as_json,
        empty="no rules: factory certificates enroll no device (add one with fleetguard enroll rules set)",
    )


@rules_app.command("remove")
def remove_rule(ctx: typer.Context, manufacturer: Manufacturer, model: Model) -> None:
    """Delete the rule for MANUFACTURER and MODEL."""
    with cli_context(ctx).runtime() as runtime:
        rule = runtime.enroll.remove_rule(manufacturer, model, actor=operator_actor())
    typer.echo(f"removed rule {rule.manufacturer} {rule.model} ({rule.mode})")


# -- tokens ----------------------------------------------------------------------------------------


@tokens_app.command("create")
def create_token(
    ctx: typer.Context,
    device_id: DeviceId,
    ttl_hours: Annotated[
        int, typer.Option("--ttl-hours", min=1, max=_MAX_TTL_HOURS, help="Expire after N hours.")
    ] = 24,
    as_json: JsonFlag = False,
) -> None:
    """Create a one-time enrollment token for DEVICE_ID and print it; it is shown only this once."""
    with cli_context(ctx).runtime() as runtime:
        token, text = runtime.enroll.create_token(
            device_id, ttl=dt.timedelta(hours=ttl_hours), actor=operator_actor()
        )
        command = _curl_command(runtime.settings, device_id, text)
    if as_json:
        print_json({**_token_record(token, utc_now()), "token": text, "curl": command})
        return
    typer.echo(text)
    print_notice(
        f"created enrollment token {token.id} for device {token.device_id}, valid until "
        f"{format_time(token.expires_at)}; the token above is shown only this once"
    )
    print_notice(f"an EST client enrolls with: {command}")


@tokens_app.command("list")
def list_tokens(
    ctx: typer.Context,
    device: Annotated[str | None, typer.Option("--device", metavar="ID", help="Only this device's.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List enrollment tokens, newest first (never their secrets)."""
    now = utc_now()
    with cli_context(ctx).runtime() as runtime:
        tokens = runtime.enroll.tokens(device_id=device)
    records = [_token_record(token, now) for token in tokens]
    print_records(
        records,
        (
            ("id", "id"),
            ("device_id", "device"),
            ("status", "status"),
            ("created_at", "created"),
            ("expires_at", "expires"),
            ("used_at", "used"),
        ),
        as_json=as_json,
        empty="no enrollment tokens",
    )


@tokens_app.command("revoke")
def revoke_token(
    ctx: typer.Context,
    token_id: Annotated[
        str, typer.Argument(metavar="TOKEN_ID", help="The token's id (from tokens list).", show_default=False)
    ],
) -> None:
    """Revoke an enrollment token (revoking twice is harmless)."""
    with cli_context(ctx).runtime() as runtime:
        token = runtime.enroll.revoke_token(token_id, actor=operator_actor())
    typer.echo(f"revoked enrollment token {token.id} of device {token.device_id}")


# -- requests --------------------------------------------------------------------------------------

RequestId = Annotated[
    str,
    typer.Argument(metavar="REQUEST_ID", help="The request's id (from requests list).", show_default=False),
]


@requests_app.command("list")
def list_requests(
    ctx: typer.Context,
    status: Annotated[
        RequestStatus | None, typer.Option("--status", help="Only requests with this status (default: any).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=_MAX_PAGE, help="At most this many.")] = 100,
    after: Annotated[
        str | None, typer.Option("--after", metavar="ID", help="Start after this request id (paging).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List queued enrollment requests, oldest first."""
    with cli_context(ctx).runtime() as runtime:
        requests = runtime.enroll.requests(status=status, limit=limit, after=after)
    records = [_request_record(request) for request in requests]
    print_records(
        records,
        (
            ("id", "id"),
            ("status", "status"),
            ("manufacturer", "manufacturer"),
            ("model", "model"),
            ("device_serial", "serial"),
            ("device_id", "device"),
            ("source", "source"),
            ("created_at", "created"),
        ),
        as_json=as_json,
        empty="no enrollment requests",
    )
    if len(requests) == limit:
        print_notice(f"more may match: add --after {requests[-1].id}")


@requests_app.command("approve")
def approve_request(
    ctx: typer.Context,
    request_id: RequestId,
    passphrase_file: PassphraseFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Approve a pending request: register the device if unknown and issue its certificate.

    The device receives the certificate when it repeats its request.
    """
    with signing_context(ctx, passphrase_file).runtime() as runtime:
        record = runtime.enroll.approve(request_id, actor=operator_actor())
    if as_json:
        print_json(
            {
                "request_id": request_id,
                "device_id": record.device_id,
                "serial": f"{record.serial:x}",
                "not_after": format_time(record.not_after),
            }
        )
        return
    typer.echo(
        f"approved request {request_id}: issued certificate {record.serial:x} for device "
        f"{record.device_id}, valid until {format_time(record.not_after)}; the device receives it "
        "when it repeats its request"
    )


@requests_app.command("reject")
def reject_request(
    ctx: typer.Context,
    request_id: RequestId,
    reason: Annotated[
        str, typer.Option("--reason", show_default=False, help="Why: recorded and told to the device.")
    ],
) -> None:
    """Reject a pending request; the same factory certificate is refused from then on."""
    with cli_context(ctx).runtime() as runtime:
        request = runtime.enroll.reject(request_id, reason, actor=operator_actor())
    typer.echo(f"rejected request {request.id} ({request.manufacturer} {request.device_serial})")


# -- records ---------------------------------------------------------------------------------------


def _read_bounded(path: Path, limit: int) -> bytes:
    with path.open("rb") as file:
        data = file.read(limit + 1)  # bounded: the file may be anything
    if len(data) > limit:
        raise EnrollmentInputRejected(f"{path.name} holds more than {limit} bytes")
    return data


def _curl_command(settings: Settings, device_id: str, token: str) -> str:
    """Return the curl command line with which an EST client enrolls (RFC 7030 4.2.1)."""
    host = settings.est_host or settings.api_host
    url = f"https://{host}:{settings.est_port}/.well-known/est/simpleenroll"
    return (
        f"curl --cacert bundle.pem --user {shlex.quote(f'{device_id}:{token}')} "
        f"-H 'Content-Type: application/pkcs10' --data-binary @csr.b64 {shlex.quote(url)}"
    )


def _manufacturer_record(ca: ManufacturerCa) -> dict[str, object]:
    der = ca.certificate.public_bytes(serialization.Encoding.DER)
    return {
        "id": ca.id,
        "manufacturer": ca.manufacturer,
        "model_attribute": ca.model_attribute.value,
        "subject": ca.subject,
        "not_after": format_time(ca.not_after),
        "added_at": format_time(ca.added_at),
        "sha256": hashlib.sha256(der).hexdigest(),
    }


def _rule_record(rule: EnrollmentRule) -> dict[str, object]:
    return {
        "manufacturer": rule.manufacturer,
        "model": rule.model,
        "mode": rule.mode.value,
        "register_unknown": rule.register_unknown,
        "created_at": format_time(rule.created_at),
        "updated_at": format_time(rule.updated_at),
    }


def _token_record(token: EnrollmentToken, now: dt.datetime) -> dict[str, object]:
    return {
        "id": token.id,
        "device_id": token.device_id,
        "status": token.status(now).value,
        "created_at": format_time(token.created_at),
        "expires_at": format_time(token.expires_at),
        "used_at": format_time(token.used_at),
        "used_source": token.used_source,
        "revoked_at": format_time(token.revoked_at),
    }


def _request_record(request: QueuedRequest) -> dict[str, object]:
    return {
        "id": request.id,
        "status": request.status.value,
        "manufacturer": request.manufacturer,
        "model": request.model,
        "device_serial": request.device_serial,
        "device_id": request.device_id,
        "factory_sha256": request.factory_fingerprint.hex(),
        "key_sha256": request.key_fingerprint.hex(),
        "source": request.source,
        "created_at": format_time(request.created_at),
        "decided_at": format_time(request.decided_at),
        "decided_by": request.decided_by,
        "reason": request.reason,
        "certificate_serial": None
        if request.certificate_serial is None
        else f"{request.certificate_serial:x}",
    }
