"""Turning a firmware image into an :class:`~fleetguard.firmware.model.ExtractedTree`.

Theory of operation
-------------------
1. The image is mapped (``mmap``) and carved (:mod:`fleetguard.firmware.carving`) in offset order.
2. Each hit goes to its extractor (:mod:`fleetguard.firmware.extractors`), which records entries
   with the filesystem's own metadata and writes regular files into a private layer directory
   under ``workdir`` through :class:`~fleetguard.firmware.workdir.SafeDir`. The bytes it consumed
   are skipped by the carver, so magics inside an extracted filesystem are not extracted twice.
3. Payloads an extractor produces (decompressed streams, uImage payloads, TRX partitions, UBI
   volumes, FIT images) are carved again, one level deeper; so is every extracted regular file
   that *starts* with a known container (a squashfs inside a cpio, for example), its entries
   placed under ``<file path>_extract``. Depth is bounded by :attr:`Limits.max_depth`.
4. What no extractor claimed at the top level is reported as :class:`UnextractedRegion` with its
   entropy; a region of 4 KiB or more above 7.9 bits/byte also gets an ENCRYPTED layer.

A corrupt or truncated container gives a FAILED or PARTIAL layer with a ``detail`` and extraction
goes on with the rest. A weak magic (a compression header, a cpio or tar header) that does not
decode is taken for a false positive and dropped. Limits (bytes, output/input ratio, files, file
size, tool time) stop the layer that hits them (PARTIAL) and every later one.
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import mmap
import shutil
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fleetguard.firmware.carving import Buffer, Carver, Format, Hit, hit_at
from fleetguard.firmware.errors import ExtractionLimit, ImageInvalid, UnsafePath
from fleetguard.firmware.extractors import EXTRACTORS, Collector, Done, Source, Stream
from fleetguard.firmware.model import (
    EntryKind,
    ExtractedTree,
    FileEntry,
    Layer,
    LayerStatus,
    UnextractedRegion,
)
from fleetguard.firmware.workdir import Budget, SafeDir, region_entropy

__all__ = ["Limits", "extract_image"]

_MIB = 1 << 20
_RATIO_FLOOR = _MIB  # the ratio limit never forbids the first MiB: tiny images are not bombs
_ENCRYPTED_ENTROPY = 7.9
_ENCRYPTED_MIN_SIZE = 4096
_NESTED_MIN_SIZE = 64
# A container found by one of these magics must decode, or it is a false positive.
_STRONG = frozenset({Format.SQUASHFS, Format.UIMAGE, Format.UBI, Format.SEVENZIP, Format.CRAMFS, Format.TRX})
# Parsing errors a corrupt container can raise from the standard library's decoders.
_CORRUPT = (
    ImageInvalid,
    UnsafePath,
    struct.error,
    ValueError,
    IndexError,
    KeyError,
    OSError,
    EOFError,
    lzma.LZMAError,
    zlib.error,
    tarfile.TarError,
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one extraction.

    ``max_total_bytes`` and ``max_ratio`` (output bytes per image byte; never below 1 MiB of
    output) bound what is written; ``max_files`` the files written; ``max_file_bytes`` one file
    or stream; ``max_depth`` the nesting of containers; ``extractor_timeout_s`` each tool run.
    """

    max_total_bytes: int = 2 << 30
    max_ratio: int = 200
    max_depth: int = 8
    max_files: int = 200_000
    extractor_timeout_s: float = 120.0
    max_file_bytes: int = 512 << 20


@dataclass(frozen=True, slots=True)
class _Where:
    """Where a buffer sits: its parent layer, the label its layers' names start with, the image
    path prefix of its entries, its nesting depth."""

    parent: str | None
    label: str
    prefix: str
    depth: int


@dataclass(slots=True)
class _Run:
    """The state of one extraction: the budget, the layers and entries found so far."""

    limits: Limits
    budget: Budget
    root: Path
    scratch: Path
    image_size: int
    progress: Callable[[int, int], None] | None
    entries: list[FileEntry] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stopped: str = ""
    _count: int = 0

    def carve(self, path: Path, data: Buffer, at: _Where) -> list[tuple[int, int]]:
        """Extract every container of ``data``; return the (start, end) ranges they claimed."""
        claimed: list[tuple[int, int]] = []
        carver = Carver(data)
        for hit in carver:
            if self.stopped:
                break
            done = self._extract(path, data, hit, at)
            if done is not None:
                end = min(len(data), hit.offset + max(done.size, 1))
                claimed.append((hit.offset, end))
                carver.skip_to(end)
            if at.parent is None and self.progress is not None:
                self.progress(min(carver_position(claimed, hit), self.image_size), self.image_size)
        return claimed

    def _extract(self, path: Path, data: Buffer, hit: Hit, at: _Where) -> Done | None:
        parent, prefix, depth = at.parent, at.prefix, at.depth
        name = f"{hit.format.value}@{hit.offset:#x}"
        layer = f"{at.label}/{name}" if at.label else name
        self._count += 1
        out_dir = self.root / f"{self._count:05d}"
        collect = Collector(layer, prefix)
        source = Source(
            path,
            data,
            hit,
            SafeDir(out_dir, self.budget),
            self.scratch,
            self.limits.extractor_timeout_s,
            collect,
        )
        extractor = EXTRACTORS[hit.format]
        try:
            done = extractor(source)
        except ExtractionLimit as exc:
            self.stopped = str(exc)
            done = Done(hit.size or len(data) - hit.offset, LayerStatus.PARTIAL, str(exc))
        except _CORRUPT as exc:
            produced = bool(collect.entries or collect.streams)
            if not produced and hit.format not in _STRONG:
                shutil.rmtree(out_dir, ignore_errors=True)
                return None
            status = LayerStatus.PARTIAL if produced else LayerStatus.FAILED
            done = Done(hit.size or 1, status, str(exc) or type(exc).__name__)
        tool = getattr(extractor, "__name__", "extract").removeprefix("extract_")
        size = min(done.size, len(data) - hit.offset)
        self.layers.append(
            Layer(layer, hit.format.value, hit.offset, size, done.status, tool, parent, done.detail)
        )
        self.entries.extend(collect.entries)
        self._descend(layer, collect, prefix, depth)
        return done

    def _descend(self, layer: str, collect: Collector, prefix: str, depth: int) -> None:
        if depth + 1 > self.limits.max_depth:
            if collect.streams or collect.entries:
                self.notes.append(
                    f"{layer}: nested containers not examined (depth limit {self.limits.max_depth})"
                )
            return
        for stream in collect.streams:
            self._stream(stream, layer, prefix, depth + 1)
        for entry in list(collect.entries):
            if entry.kind is EntryKind.FILE and entry.data is not None and entry.size >= _NESTED_MIN_SIZE:
                self._nested_file(entry, layer, depth + 1)

    def _stream(self, stream: Stream, parent: str, prefix: str, depth: int) -> None:
        claimed: list[tuple[int, int]] = []
        size = stream.path.stat().st_size
        if size and not self.stopped:
            with _mapped(stream.path) as data:
                where = _Where(parent, f"{parent}/{stream.name}", prefix, depth)
                claimed = self.carve(stream.path, data, where)
        if not claimed:
            # Nothing inside: the payload itself (a kernel, a blob) is a file of the image.
            path = f"{prefix}/{stream.name}"
            self.entries.append(
                FileEntry(path, EntryKind.FILE, 0o644, size=size, data=stream.path, filesystem=parent)
            )

    def _nested_file(self, entry: FileEntry, parent: str, depth: int) -> None:
        assert entry.data is not None
        with _mapped(entry.data) as data:
            hit = hit_at(data, 0)
            if hit is not None and not self.stopped:
                self.carve(
                    entry.data, data, _Where(parent, f"{parent}{entry.path}", f"{entry.path}_extract", depth)
                )


def carver_position(claimed: list[tuple[int, int]], hit: Hit) -> int:
    """How far the top-level walk got: the end of the last claimed range or the last hit."""
    return max(hit.offset, claimed[-1][1] if claimed else 0)


@contextlib.contextmanager
def _mapped(path: Path) -> Iterator[Buffer]:
    with path.open("rb") as handle:
        if handle.seek(0, 2) == 0:
            yield b""
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield data


def _gaps(claimed: list[tuple[int, int]], size: int) -> Iterator[tuple[int, int]]:
    pos = 0
    for start, end in sorted(claimed):
        if start > pos:
            yield pos, start
        pos = max(pos, end)
    if pos < size:
        yield pos, size


def _unextracted(data: Buffer, claimed: list[tuple[int, int]]) -> tuple[list[UnextractedRegion], list[Layer]]:
    regions: list[UnextractedRegion] = []
    layers: list[Layer] = []
    for start, end in _gaps(claimed, len(data)):
        entropy = round(region_entropy(data, start, end - start), 4)
        regions.append(UnextractedRegion(start, end - start, entropy))
        if entropy > _ENCRYPTED_ENTROPY and end - start >= _ENCRYPTED_MIN_SIZE:
            detail = f"entropy {entropy:.3f} bits/byte and no known format: encrypted or unknown compression"
            layers.append(
                Layer(
                    f"unknown@{start:#x}",
                    "unknown",
                    start,
                    end - start,
                    LayerStatus.ENCRYPTED,
                    "entropy",
                    None,
                    detail,
                )
            )
    return regions, layers


def extract_image(
    image: Path,
    workdir: Path,
    *,
    limits: Limits = Limits(),
    progress: Callable[[int, int], None] | None = None,
) -> ExtractedTree:
    """Extract every container and filesystem of ``image`` into ``workdir``.

    Returns the tree: entries with the filesystems' own metadata, one layer per container found
    (FAILED/PARTIAL ones with a detail), and the unextracted regions with their entropy. An image
    that yields nothing is returned with no entries, never as an error. ``progress`` is called
    with (bytes of the image done, image size). Raises ImageInvalid when the image cannot be read
    or is empty.
    """
    try:
        size = image.stat().st_size
        with image.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        raise ImageInvalid(f"cannot read the image: {exc.strerror}") from exc
    if size == 0:
        raise ImageInvalid("the image is empty")
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    root, scratch = workdir / "layers", workdir / "scratch"
    root.mkdir(mode=0o700, exist_ok=True)
    scratch.mkdir(mode=0o700, exist_ok=True)
    max_bytes = min(limits.max_total_bytes, max(limits.max_ratio * size, _RATIO_FLOOR))
    budget = Budget(max_bytes, limits.max_files, limits.max_file_bytes)
    run = _Run(limits, budget, root, scratch, size, progress)
    try:
        with _mapped(image) as data:
            claimed = run.carve(image, data, _Where(None, "", "", 0))
            regions, encrypted = _unextracted(data, claimed)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if run.stopped:
        run.notes.append(f"extraction stopped early: {run.stopped}")
    if progress is not None:
        progress(size, size)
    return ExtractedTree(
        image_sha256=digest,
        image_size=size,
        entries=tuple(run.entries),
        layers=tuple(run.layers + encrypted),
        unextracted=tuple(regions),
        notes=tuple(run.notes),
    )
