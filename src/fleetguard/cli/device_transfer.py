"""``fleetguard devices import`` and ``export``: devices in bulk as CSV or JSON, with progress.

Import is all or nothing: the file is size-checked before it is read (``FLEETGUARD_MAX_IMPORT_BYTES``),
read, validated row by row, then written in one transaction; the first bad row rejects the whole file
with its row number and why, and nothing is written. Export counts the matching devices first, then
streams them; an export to a file is written to a temporary file beside it and renamed into place,
so a failed export never leaves a partial file. The formats are described in
:mod:`fleetguard.inventory.transfer`; an export can be imported into another installation.
"""

import enum
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, BinaryIO, TextIO, assert_never

import typer
from rich.progress import Progress, TaskID

from fleetguard.cli.context import cli_context, operator_actor
from fleetguard.cli.device_options import (
    CreatedAfter,
    CreatedBefore,
    FirmwareOption,
    HardwareRevisionOption,
    LabelOption,
    ManufacturerOption,
    ModelOption,
    MudUrlOption,
    OwnerOption,
    ReasonOption,
    SearchOption,
    SeenAfter,
    SeenBefore,
    SerialOption,
    SiteOption,
    StateOption,
    TypeOption,
    device_filter,
)
from fleetguard.cli.output import print_notice, progress_bar
from fleetguard.errors import LimitExceeded
from fleetguard.inventory.model import Device, DeviceSpec
from fleetguard.inventory.service import Inventory
from fleetguard.inventory.transfer import parse_csv, parse_json, write_csv, write_json

__all__ = ["TransferFormat", "export_command", "import_command"]

_CHUNK_BYTES = 1024 * 1024


class TransferFormat(enum.StrEnum):
    """The file formats of import and export."""

    CSV = "csv"
    JSON = "json"


_WRITERS: dict[TransferFormat, Callable[[Iterable[Device], TextIO], int]] = {
    TransferFormat.CSV: write_csv,
    TransferFormat.JSON: write_json,
}

ImportFormat = Annotated[
    TransferFormat | None, typer.Option("--format", help="File format (default: from the file's extension).")
]
ExportFormat = Annotated[
    TransferFormat | None,
    typer.Option("--format", help="File format (default: from the file's extension; csv for stdout)."),
]
ImportFile = Annotated[
    str, typer.Argument(metavar="FILE", help="CSV or JSON file to import; - reads stdin (needs --format).")
]
ExportFile = Annotated[str, typer.Argument(metavar="FILE", help="File to write; - (the default) is stdout.")]


def import_command(
    ctx: typer.Context, file: ImportFile, file_format: ImportFormat = None, reason: ReasonOption = ""
) -> None:
    """Import devices from CSV or JSON: every row, or none of them.

    CSV has a header row naming columns (serial and manufacturer are required; labels is a JSON
    object in one cell); JSON is an array of objects with the same names. Export files import as
    they are. The first bad row rejects the file (exit 1) with its row number and why.
    """
    chosen = _format_of(file, file_format, default=None)
    context = cli_context(ctx)
    settings = context.settings
    with context.runtime() as runtime, progress_bar() as progress:
        data = _read(file, settings.max_import_bytes, progress)
        specs = _parse(data, chosen, settings.max_import_rows, progress)
        count = _write(runtime.inventory, specs, reason, progress)
    typer.echo(f"imported {count} devices")


def _read(source: str, limit: int, progress: Progress) -> bytes:
    if source == "-":
        return _read_stream(typer.get_binary_stream("stdin"), limit, None, progress, "stdin")
    path = Path(source)
    size = path.stat().st_size
    _require_size(size, limit, source)  # before reading a byte
    with path.open("rb") as stream:
        return _read_stream(stream, limit, size, progress, source)


def _read_stream(stream: BinaryIO, limit: int, size: int | None, progress: Progress, name: str) -> bytes:
    task = progress.add_task("reading", total=size)
    chunks: list[bytes] = []
    done = 0
    while chunk := stream.read(_CHUNK_BYTES):
        done += len(chunk)
        _require_size(done, limit, name)  # stdin has no size, and a file may grow while read
        chunks.append(chunk)
        progress.update(task, completed=done)
    progress.update(task, total=done, completed=done)
    return b"".join(chunks)


def _require_size(size: int, limit: int, name: str) -> None:
    if size > limit:
        raise LimitExceeded(
            f"{name} is larger than the import limit of {limit} bytes",
            hint="split it, or raise FLEETGUARD_MAX_IMPORT_BYTES",
        )


def _parse(data: bytes, file_format: TransferFormat, max_rows: int, progress: Progress) -> list[DeviceSpec]:
    task = progress.add_task("validating", total=None)
    match file_format:
        case TransferFormat.CSV:
            specs = parse_csv(data, max_rows=max_rows)
        case TransferFormat.JSON:
            specs = parse_json(data, max_rows=max_rows)
        case _:
            assert_never(file_format)
    progress.update(task, total=len(specs), completed=len(specs))
    return specs


def _write(inventory: Inventory, specs: list[DeviceSpec], reason: str, progress: Progress) -> int:
    task = progress.add_task("writing", total=len(specs))

    def advance(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return inventory.import_devices(specs, actor=operator_actor(), reason=reason, progress=advance)


def export_command(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    file: ExportFile = "-",
    file_format: ExportFormat = None,
    serial: SerialOption = None,
    manufacturer: ManufacturerOption = None,
    model: ModelOption = None,
    device_type: TypeOption = None,
    hardware_revision: HardwareRevisionOption = None,
    firmware: FirmwareOption = None,
    mud_url: MudUrlOption = None,
    site: SiteOption = None,
    owner: OwnerOption = None,
    state: StateOption = None,
    label: LabelOption = None,
    search: SearchOption = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    seen_after: SeenAfter = None,
    seen_before: SeenBefore = None,
) -> None:
    """Export the devices matching every given filter as CSV or JSON, ordered by id."""
    chosen = _format_of(file, file_format, default=TransferFormat.CSV)
    criteria = device_filter(
        serial=serial, manufacturer=manufacturer, model=model, device_type=device_type,
        hardware_revision=hardware_revision, firmware=firmware, mud_url=mud_url, site=site, owner=owner,
        state=state, labels=label, search=search, created_after=created_after,
        created_before=created_before, seen_after=seen_after, seen_before=seen_before,
    )  # fmt: skip
    with cli_context(ctx).runtime() as runtime:
        total = runtime.inventory.count(criteria)
        devices = runtime.inventory.iterate(criteria)
        if file == "-":
            count = _WRITERS[chosen](devices, typer.get_text_stream("stdout"))
        else:
            count = _export_to_file(Path(file), chosen, devices, total)
    print_notice(f"exported {count} devices" + ("" if file == "-" else f" to {file}"))


def _export_to_file(path: Path, file_format: TransferFormat, devices: Iterable[Device], total: int) -> int:
    with progress_bar() as progress, _replacing(path) as out:
        task = progress.add_task("writing", total=total)
        return _WRITERS[file_format](_advancing(devices, progress, task), out)


def _advancing(devices: Iterable[Device], progress: Progress, task: TaskID) -> Iterator[Device]:
    for device in devices:
        yield device
        progress.advance(task)


@contextmanager
def _replacing(path: Path) -> Iterator[TextIO]:
    """Yield a temporary file beside ``path`` (mode 0600) that replaces ``path`` on success only."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _format_of(name: str, given: TransferFormat | None, *, default: TransferFormat | None) -> TransferFormat:
    if given is not None:
        return given
    suffix = Path(name).suffix.lower().lstrip(".")
    if suffix in {member.value for member in TransferFormat}:
        return TransferFormat(suffix)
    if name == "-" and default is not None:
        return default
    raise typer.BadParameter(
        f"cannot tell the format of {name!r} from its extension", param_hint="'--format'"
    )
