"""``fleetguard ca``: create, show, rotate and export the installation's certificate authorities.

The root CA (P-384) key is always an encrypted file in the data directory, so that it can be moved
offline; the issuing CA (P-256) key is a file too, or with ``--hsm`` a non-extractable key made in
the PKCS#11 token named by FLEETGUARD_PKCS11_TOKEN (module FLEETGUARD_PKCS11_MODULE, user PIN from
FLEETGUARD_PKCS11_PIN). Key files are unlocked with the passphrase from FLEETGUARD_CA_PASSPHRASE or
from ``--passphrase-file``, never from an argument, which ``ps`` would show. What ``ca show`` prints
is public: subjects, validity, fingerprints and the kind of key backend, never a path or a secret.

The options and the output helper that every command using a CA key shares live here too
(``fleetguard certs`` imports them): :data:`PassphraseFile`, :func:`signing_context` and
:func:`write_artifact`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization

from fleetguard.cli.context import CliContext, cli_context, operator_actor
from fleetguard.cli.exit_status import EXIT_STATUS_EPILOG
from fleetguard.cli.output import JsonFlag, format_time, print_json, print_notice, print_table
from fleetguard.pki.ca import ChainFormat
from fleetguard.pki.service import AuthorityRecord
from fleetguard.types import utc_now

__all__ = [
    "PassphraseFile",
    "app",
    "authority_record",
    "key_backend",
    "signing_context",
    "write_artifact",
]

app = typer.Typer(
    name="ca",
    help="Create, show, rotate and export the certificate authorities (root P-384, issuing P-256).",
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
)

_STDOUT = "-"
_AUTHORITY_COLUMNS = ("id", "role", "status", "key", "not before", "not after", "subject", "sha256")

PassphraseFile = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        metavar="FILE",
        dir_okay=False,
        help="Read the CA key passphrase from FILE (mode 0600) instead of FLEETGUARD_CA_PASSPHRASE. "
        "The passphrase itself is never an argument.",
    ),
]
HsmFlag = Annotated[
    bool,
    typer.Option(
        "--hsm",
        help="Make the issuing CA key in the PKCS#11 token FLEETGUARD_PKCS11_TOKEN "
        "(module FLEETGUARD_PKCS11_MODULE, PIN from FLEETGUARD_PKCS11_PIN); it never leaves the token.",
    ),
]
OutputFile = Annotated[str, typer.Argument(metavar="FILE", help="File to write; - (the default) is stdout.")]
Format = Annotated[
    ChainFormat,
    typer.Option(
        "--format",
        help="pem: every unexpired CA, issuing CAs first; der: the active issuing CA alone; "
        "pkcs7: a certs-only PKCS#7 bundle (what EST /cacerts returns).",
    ),
]


@app.command("init")
def init_ca(
    ctx: typer.Context,
    hsm: HsmFlag = False,
    passphrase_file: PassphraseFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Create the root CA and the first issuing CA; fails if the CA exists (use ca rotate)."""
    with signing_context(ctx, passphrase_file).runtime() as runtime:
        authorities = runtime.pki.initialize(actor=operator_actor(), now=utc_now(), hsm=hsm)
    _print_authorities(authorities, as_json=as_json)
    if not as_json:
        print_notice(
            "CA created; give relying parties the trust bundle: fleetguard ca export bundle.pem "
            "(keep the root key offline once the CAs you need exist)"
        )


@app.command("show")
def show_ca(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the CAs: root first, then issuing CAs oldest first (the active one issues)."""
    with cli_context(ctx).runtime() as runtime:
        authorities = runtime.pki.authorities()
    _print_authorities(authorities, as_json=as_json)


@app.command("rotate")
def rotate_ca(
    ctx: typer.Context,
    hsm: HsmFlag = False,
    passphrase_file: PassphraseFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Add a new issuing CA under the root and make it the one that issues.

    The previous issuing CA stops issuing but keeps publishing CRLs and OCSP answers until it expires,
    so no device loses trust; export the trust bundle again afterwards.
    """
    with signing_context(ctx, passphrase_file).runtime() as runtime:
        authority = runtime.pki.rotate(actor=operator_actor(), now=utc_now(), hsm=hsm)
    _print_authorities([authority], as_json=as_json)
    if not as_json:
        print_notice(
            f"{authority.id} now issues; earlier issuing CAs are retired for issuance and still answer "
            "for their certificates: export the trust bundle again (fleetguard ca export)"
        )


@app.command("export")
def export_ca(ctx: typer.Context, target: OutputFile = _STDOUT, fmt: Format = ChainFormat.PEM) -> None:
    """Write the trust bundle: the root and every unexpired issuing CA (DER: the active issuing CA)."""
    with cli_context(ctx).runtime() as runtime:
        bundle = runtime.pki.trust_bundle(fmt)
    write_artifact(bundle, target, binary=fmt is not ChainFormat.PEM)
    if target != _STDOUT:
        print_notice(f"wrote the trust bundle ({fmt}) to {target}")


def signing_context(ctx: typer.Context, passphrase_file: Path | None) -> CliContext:
    """Return the invocation's context, with ``--passphrase-file`` (if given) unlocking the CA key files."""
    context = cli_context(ctx)
    if passphrase_file is None:
        return context
    settings = context.settings.model_copy(update={"ca_passphrase_file": passphrase_file})
    return dataclasses.replace(context, settings=settings)


def write_artifact(data: bytes, target: str, *, binary: bool) -> None:
    """Write ``data`` to the file ``target``, or to stdout when it is ``-``.

    Raises ``typer.BadParameter`` (usage) rather than write binary data to a terminal.
    """
    if target != _STDOUT:
        Path(target).write_bytes(data)
        return
    stream = typer.get_binary_stream("stdout")
    if binary and stream.isatty():
        raise typer.BadParameter("refusing to write binary data to a terminal: name a FILE or redirect")
    stream.write(data)
    stream.flush()


def key_backend(key_ref: str) -> str:
    """Return the kind of key backend a key reference names (``file`` or ``pkcs11``), never its location."""
    kind, sep, _ = key_ref.partition(":")
    return kind if sep and kind in {"file", "pkcs11"} else "unknown"


def authority_record(authority: AuthorityRecord) -> dict[str, object]:
    """Return what may be shown of a CA, as JSON values."""
    certificate = authority.certificate
    der = certificate.public_bytes(serialization.Encoding.DER)
    return {
        "id": authority.id,
        "role": authority.role,
        "status": authority.status,
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "serial": f"{certificate.serial_number:x}",
        "not_before": format_time(certificate.not_valid_before_utc),
        "not_after": format_time(certificate.not_valid_after_utc),
        "sha256": hashlib.sha256(der).hexdigest(),
        "key_backend": key_backend(authority.key_ref),
    }


def _print_authorities(authorities: list[AuthorityRecord], *, as_json: bool) -> None:
    records = [authority_record(a) for a in authorities]
    if as_json:
        print_json(records)
        return
    keys = ("id", "role", "status", "key_backend", "not_before", "not_after", "subject", "sha256")
    rows = [[record[key] for key in keys] for record in records]
    print_table(_AUTHORITY_COLUMNS, rows, empty="no CA yet: run fleetguard ca init")
