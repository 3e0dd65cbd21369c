"""``fleetguard firmware``: scan images, report, see the fleet's exposure, and gate releases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fleetguard.cli.context import cli_context, operator_actor
from fleetguard.cli.exit_status import EXIT_STATUS_EPILOG
from fleetguard.cli.output import (
    JsonFlag,
    StageProgress,
    format_time,
    print_fields,
    print_json,
    print_records,
    print_table,
    progress_bar,
)
from fleetguard.errors import InvalidInput
from fleetguard.firmware.model import Category, ScanResult, Severity
from fleetguard.private_file import replace_private_file
from fleetguard.types import parse_utc

if TYPE_CHECKING:
    from fleetguard.firmware.service import GateDecision, StoredScan

__all__ = ["app"]

app = typer.Typer(
    name="firmware",
    help="Scan firmware images (secrets, credentials, services, permissions, ELF hardening, components, "
    "known vulnerabilities) offline, write SBOM/SARIF/HTML reports, list exposed devices, gate releases.",
    no_args_is_help=True,
    epilog=EXIT_STATUS_EPILOG,
)
gate_app = typer.Typer(name="gate", help="The release gate: a severity threshold and per-finding waivers.")
vulndb_app = typer.Typer(name="vulndb", help="The offline vulnerability database (OSV records).")
app.add_typer(gate_app)
app.add_typer(vulndb_app)

Image = Annotated[
    Path,
    typer.Argument(
        metavar="IMAGE",
        exists=True,
        dir_okay=False,
        readable=True,
        show_default=False,
        help="The firmware image file.",
    ),
]
ScanId = Annotated[str, typer.Argument(metavar="SCAN_ID", help="A scan id (from `firmware scans`).")]
Output = Annotated[Path | None, typer.Option(dir_okay=False, writable=True, show_default=False)]


@app.command("scan")
def scan(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    image: Image,
    version: Annotated[
        str | None,
        typer.Option(
            "--version", help="The firmware version this image is (links the scan to devices reporting it)."
        ),
    ] = None,
    device_type: Annotated[str | None, typer.Option("--type", help="The device type it is for.")] = None,
    sbom: Output = None,
    sarif_file: Annotated[Path | None, typer.Option("--sarif", dir_okay=False, show_default=False)] = None,
    html: Output = None,
    as_json: JsonFlag = False,
) -> None:
    """Extract IMAGE safely, run every analyzer, match components against the offline vulnerability
    database, store the scan, and print a summary (or the full result with --json).

    --sbom writes CycloneDX 1.6, --sarif SARIF 2.1.0, --html a self-contained report. An image from
    which nothing can be extracted is reported as such, with its entropy: never as clean. Exit 0
    whatever is found; use `firmware gate check` to decide.
    """
    with cli_context(ctx).runtime() as runtime, progress_bar() as bar:
        stored = runtime.firmware.scan(
            image,
            actor=operator_actor(),
            firmware_version=version,
            device_type=device_type,
            progress=StageProgress(bar),
        )
    _write_reports(stored.result, sbom=sbom, sarif_file=sarif_file, html=html)
    if as_json:
        from fleetguard.firmware.report_json import to_json

        print_json({"id": stored.id, **to_json(stored.result)})
        return
    _summary(stored)


@app.command("scans")
def list_scans(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List stored scans, newest first."""
    with cli_context(ctx).runtime() as runtime:
        scans = runtime.firmware.scans()
    records = [
        {
            "id": s.id,
            "image": s.result.image_name,
            "sha256": s.result.image_sha256,
            "version": s.firmware_version,
            "type": s.device_type,
            "risk": s.result.risk,
            "findings": len(s.result.findings),
            "scanned_at": format_time(s.scanned_at),
        }
        for s in scans
    ]
    print_records(
        records,
        [
            ("id", "id"),
            ("image", "image"),
            ("version", "version"),
            ("type", "type"),
            ("risk", "risk"),
            ("findings", "findings"),
            ("scanned_at", "scanned"),
        ],
        as_json=as_json,
        empty="no scans yet: fleetguard firmware scan IMAGE",
    )


@app.command("show")
def show(
    ctx: typer.Context,
    scan_id: ScanId,
    output_format: Annotated[
        str, typer.Option("--format", help="summary, json, sbom, sarif or html.")
    ] = "summary",
) -> None:
    """Print a stored scan: a summary, or one of its reports on stdout."""
    from fleetguard.firmware.report_html import render_html
    from fleetguard.firmware.report_json import to_json
    from fleetguard.firmware.sarif import sarif
    from fleetguard.firmware.sbom import cyclonedx

    with cli_context(ctx).runtime() as runtime:
        stored = runtime.firmware.get_scan(scan_id)
    match output_format:
        case "summary":
            _summary(stored)
        case "json":
            print_json({"id": stored.id, **to_json(stored.result)})
        case "sbom":
            print_json(cyclonedx(stored.result))
        case "sarif":
            print_json(sarif(stored.result))
        case "html":
            typer.echo(render_html(stored.result))
        case _:
            raise InvalidInput(f"unknown --format {output_format!r}: use summary, json, sbom, sarif or html")


@app.command("exposed")
def exposed(
    ctx: typer.Context,
    any_vulnerability: Annotated[
        bool, typer.Option("--any", help="Any known vulnerability, not only CISA known-exploited ones.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """List the devices that run firmware whose latest scan has a known-exploited vulnerability."""
    with cli_context(ctx).runtime() as runtime:
        found = runtime.firmware.exposed_devices(known_exploited_only=not any_vulnerability)
    records = [
        {
            "device": e.device.id,
            "firmware_version": e.device.firmware_version,
            "scan": e.scan_id,
            "known_exploited": list(e.known_exploited),
            "vulnerabilities": list(e.vulnerabilities),
        }
        for e in found
    ]
    print_records(
        records,
        [
            ("device", "device"),
            ("firmware_version", "firmware"),
            ("known_exploited", "known exploited"),
            ("scan", "scan"),
        ],
        as_json=as_json,
        empty="no device runs firmware with such a vulnerability (among scanned versions)",
    )


@gate_app.command("set")
def gate_set(
    ctx: typer.Context,
    threshold: Annotated[
        Severity, typer.Argument(help="Findings at or above this severity block a release.")
    ],
) -> None:
    """Set the release gate's threshold (logged)."""
    with cli_context(ctx).runtime() as runtime:
        runtime.firmware.set_gate_threshold(threshold, actor=operator_actor())
    typer.echo(f"release gate: findings at or above {threshold.value} block a release unless waived")


@gate_app.command("check")
def gate_check(
    ctx: typer.Context,
    image_sha256: Annotated[str, typer.Argument(metavar="SHA256", help="The image's SHA-256 (hex).")],
    as_json: JsonFlag = False,
) -> None:
    """Decide whether the image may be released (logged); exit 1 when the gate refuses it."""
    with cli_context(ctx).runtime() as runtime:
        decision = runtime.firmware.check_release(image_sha256.lower(), actor=operator_actor())
    if as_json:
        print_json(_decision(decision))
    else:
        verdict = "ALLOWED" if decision.allowed else "BLOCKED"
        typer.echo(f"{verdict}: {decision.reason} (threshold {decision.threshold.value})")
        print_table(
            ("severity", "rule", "path", "title"),
            [(f.severity.value, f.rule, f.path, f.title) for f in decision.blocking],
            empty="",
        )
    if not decision.allowed:
        raise typer.Exit(1)


@app.command("waive")
def waive(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    image_sha256: Annotated[str, typer.Argument(metavar="SHA256", help="The image's SHA-256 (hex).")],
    rule: Annotated[str, typer.Argument(help="The finding's rule id (e.g. CVE-2016-5195).")],
    reason: Annotated[str, typer.Option("--reason", help="Why this is acceptable (logged).")],
    path: Annotated[str | None, typer.Option("--path", help="Only at this path inside the image.")] = None,
    expires: Annotated[str | None, typer.Option("--expires", help="RFC 3339 time the waiver ends.")] = None,
) -> None:
    """Waive one finding rule for one image so the release gate lets it through (logged)."""
    expires_at = None if expires is None else parse_utc(expires)
    with cli_context(ctx).runtime() as runtime:
        waiver = runtime.firmware.waive(
            image_sha256.lower(),
            rule,
            reason=reason,
            actor=operator_actor(),
            path=path,
            expires_at=expires_at,
        )
    typer.echo(f"waived {rule} for {image_sha256[:16]}… ({waiver.id})")


@vulndb_app.command("import")
def vulndb_import(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="An OSV JSON record/list or an NVD JSON 2.0 export.",
        ),
    ],
) -> None:
    """Import vulnerability records (offline) into the installation's database."""
    with cli_context(ctx).runtime() as runtime:
        count = runtime.firmware.import_vulndb(file, actor=operator_actor())
    typer.echo(f"imported {count} record(s) from {file.name}")


@vulndb_app.command("info")
def vulndb_info(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show the database: records, components covered, known-exploited entries."""
    with cli_context(ctx).runtime() as runtime:
        db = runtime.firmware.vulndb()
    records = list(db)
    info: dict[str, object] = {
        "records": len(records),
        "components": sorted(db.packages()),
        "known_exploited": sorted(r.id for r in records if r.known_exploited),
    }
    if as_json:
        print_json(info)
        return
    print_fields([(name, ", ".join(v) if isinstance(v, list) else v) for name, v in info.items()])


# -- internals -------------------------------------------------------------------------------


def _write_reports(
    result: ScanResult, *, sbom: Path | None, sarif_file: Path | None, html: Path | None
) -> None:
    from fleetguard.firmware.report_html import render_html
    from fleetguard.firmware.sarif import sarif
    from fleetguard.firmware.sbom import cyclonedx

    if sbom is not None:
        replace_private_file(sbom, json.dumps(cyclonedx(result), indent=2).encode())
    if sarif_file is not None:
        replace_private_file(sarif_file, json.dumps(sarif(result), indent=2).encode())
    if html is not None:
        replace_private_file(html, render_html(result).encode())


def _summary(stored: StoredScan) -> None:
    result = stored.result
    counts = {s: sum(1 for f in result.findings if f.severity is s) for s in Severity}
    kev = sorted({f.rule for f in result.findings if dict(f.details).get("known_exploited") == "yes"})
    print_fields(
        [
            ("scan", stored.id),
            ("image", f"{result.image_name} ({result.image_size} bytes)"),
            ("sha256", result.image_sha256),
            (
                "extracted",
                "NOTHING (see the extraction findings)"
                if result.extracted_nothing
                else f"{result.file_count} files from {len(result.layers)} layer(s)",
            ),
            ("risk", f"{result.risk}/100"),
            ("findings", ", ".join(f"{counts[s]} {s.value}" for s in reversed(Severity))),
            ("components", len(result.components)),
            ("known exploited", ", ".join(kev) or "none"),
            ("took", f"{result.seconds:.1f} s"),
        ]
    )
    print_table(
        ("severity", "category", "rule", "path", "title"),
        [
            (f.severity.value, f.category.value, f.rule, f.path, f.title)
            for f in result.findings
            if f.category is not Category.HARDENING or f.severity.rank >= Severity.MEDIUM.rank
        ][:50],
        empty="no findings",
    )


def _decision(decision: GateDecision) -> dict[str, object]:
    return {
        "image_sha256": decision.image_sha256,
        "scan": decision.scan_id,
        "threshold": decision.threshold.value,
        "allowed": decision.allowed,
        "reason": decision.reason,
        "blocking": [
            {"rule": f.rule, "severity": f.severity.value, "path": f.path} for f in decision.blocking
        ],
        "waived": [{"rule": f.rule, "severity": f.severity.value, "path": f.path} for f in decision.waived],
    }
