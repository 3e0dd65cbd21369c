"""``fleetguard tokens``: API tokens for operators and scripts (the secret is shown once)."""

import datetime as dt
from typing import Annotated

import typer

from fleetguard.api.tokens import Role, TokenInfo
from fleetguard.cli.context import cli_context, operator_actor
from fleetguard.cli.exit_status import EXIT_STATUS_EPILOG
from fleetguard.cli.output import JsonFlag, format_time, print_json, print_notice, print_table
from fleetguard.types import utc_now

__all__ = ["app"]

app = typer.Typer(
    name="tokens", help="Create, list and revoke API tokens.", epilog=EXIT_STATUS_EPILOG, no_args_is_help=True
)

Name = Annotated[
    str, typer.Argument(help="What the token is for, e.g. ci-import or alice.", show_default=False)
]
RoleOption = Annotated[
    Role,
    typer.Option(
        "--role",
        help="admin: everything; operator: devices and lifecycle; auditor: read and verify the log; "
        "read-only: read devices.",
        show_default=False,
    ),
]
ExpiresInDays = Annotated[
    int | None,
    typer.Option("--expires-in-days", min=1, max=3650, help="Expire after N days (default: never)."),
]
TokenId = Annotated[
    str, typer.Argument(help="The token id (12 hex digits, from tokens list).", show_default=False)
]
Reason = Annotated[str, typer.Option("--reason", help="Why: recorded in the event log.")]


@app.command("create")
def create_token(
    ctx: typer.Context,
    name: Name,
    role: RoleOption,
    expires_in_days: ExpiresInDays = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a token and print its secret; it is shown only this once."""
    now = utc_now()
    expires_at = None if expires_in_days is None else now + dt.timedelta(days=expires_in_days)
    with cli_context(ctx).runtime() as runtime:
        info, secret = runtime.tokens.create(
            name, role, actor=operator_actor(), now=now, expires_at=expires_at
        )
    if as_json:
        print_json({**_record(info), "token": secret})
        return
    typer.echo(secret)
    print_notice(
        f"created {info.role} token {info.id} ({info.name}); the secret above is shown only this once"
    )


@app.command("list")
def list_tokens(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List every token (never its secret), oldest first."""
    with cli_context(ctx).runtime() as runtime:
        tokens = runtime.tokens.tokens()
    if as_json:
        print_json([_record(info) for info in tokens])
        return
    print_table(
        ("id", "name", "role", "created", "expires", "revoked"),
        [
            (
                t.id,
                t.name,
                t.role,
                format_time(t.created_at),
                format_time(t.expires_at),
                format_time(t.revoked_at),
            )
            for t in tokens
        ],
        empty="no tokens",
    )


@app.command("revoke")
def revoke_token(ctx: typer.Context, token_id: TokenId, reason: Reason = "") -> None:
    """Revoke a token at once (revoking twice is harmless)."""
    with cli_context(ctx).runtime() as runtime:
        info = runtime.tokens.revoke(token_id, actor=operator_actor(), now=utc_now(), reason=reason)
    typer.echo(f"revoked token {info.id} ({info.name})")


def _record(info: TokenInfo) -> dict[str, object]:
    return {
        "id": info.id,
        "name": info.name,
        "role": info.role.value,
        "created_at": format_time(info.created_at),
        "expires_at": format_time(info.expires_at),
        "revoked_at": format_time(info.revoked_at),
    }
