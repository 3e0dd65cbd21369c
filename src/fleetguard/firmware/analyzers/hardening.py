"""ELF hardening: one finding per binary and missing protection, and a summary table per image.

Rules (``Category.HARDENING``), applied to executables and shared libraries; kernel modules and
relocatable objects are counted but not judged (the kernel, not the loader, places them):

============================  ========  ===============================================================
rule                          severity  when
============================  ========  ===============================================================
``elf.executable-stack``      high      stack executable: PT_GNU_STACK has PF_X, or there is none
``elf.no-pie``                low       an executable that is not position independent
``elf.no-relro``              medium    a dynamically linked file without PT_GNU_RELRO
``elf.partial-relro``         low       PT_GNU_RELRO with lazy binding (the PLT GOT stays writable)
``elf.no-stack-canary``       medium    no ``__stack_chk_fail``/``__stack_chk_guard`` (unknown: skipped)
``elf.no-fortify``            low       imports functions FORTIFY covers, none of them fortified
``elf.unreadable``            info      the ELF magic, but truncated or corrupt headers
``elf.hardening-summary``     info      one per image: the counts, as ``details`` rows for a table
============================  ========  ===============================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import assert_never

from fleetguard.firmware.elf import ElfKind, ElfRejected, Hardening, Relro, inspect_elf
from fleetguard.firmware.model import Category, ExtractedTree, FileEntry, Finding, Severity

__all__ = ["HardeningAnalyzer"]


@dataclass(slots=True)
class _Tally:
    """Counts for the summary finding."""

    binaries: int = 0
    unreadable: int = 0
    judged: int = 0
    executables: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1


class HardeningAnalyzer:
    """Reads the ELF headers of every regular file; never the whole file."""

    name = "hardening"

    def analyze(self, tree: ExtractedTree) -> Iterable[Finding]:
        """Return per-binary findings followed by one ``elf.hardening-summary`` finding."""
        tally = _Tally()
        findings: list[Finding] = []
        for entry, result in _elf_files(tree):
            tally.binaries += 1
            if isinstance(result, ElfRejected):
                tally.unreadable += 1
                findings.append(_unreadable(entry, result))
                continue
            if result.kind in (ElfKind.EXECUTABLE, ElfKind.SHARED_LIBRARY):
                findings.extend(_judge(entry.path, result))
            _count(tally, result)
        if tally.binaries:
            findings.append(_summary(tally))
        return findings


def _elf_files(tree: ExtractedTree) -> Iterator[tuple[FileEntry, Hardening | ElfRejected]]:
    """Each regular file that starts with the ELF magic, with what :func:`parse_elf` made of it."""
    for entry in tree.files():
        assert entry.data is not None  # files() yields only entries with data
        result = inspect_elf(entry.data)
        if result is not None:
            yield entry, result


# rule -> (severity, title): the table in the module docstring.
_RULES: dict[str, tuple[Severity, str]] = {
    "elf.executable-stack": (Severity.HIGH, "Executable stack (no NX)"),
    "elf.no-pie": (Severity.LOW, "Executable is not position independent (no PIE)"),
    "elf.no-relro": (Severity.MEDIUM, "No RELRO"),
    "elf.partial-relro": (Severity.LOW, "Partial RELRO"),
    "elf.no-stack-canary": (Severity.MEDIUM, "No stack canary"),
    "elf.no-fortify": (Severity.LOW, "Not built with FORTIFY_SOURCE"),
    "elf.unreadable": (Severity.INFO, "ELF file with unreadable headers"),
}
_Details = tuple[tuple[str, str], ...]


def _judge(path: str, h: Hardening) -> Iterator[Finding]:
    details = (("kind", str(h.kind)), ("arch", h.arch))
    if not h.nx:
        yield _finding("elf.executable-stack", path, h.nx_basis, details)
    if h.kind is ElfKind.EXECUTABLE and not h.pie:
        basis = "static ET_EXEC at a fixed address" if h.static else "ET_EXEC: loaded at a fixed address"
        yield _finding("elf.no-pie", path, basis, details)
    if not h.static:
        yield from _relro(path, h, details)
    if h.canary is False:
        yield _finding(
            "elf.no-stack-canary", path, "no __stack_chk_fail or __stack_chk_guard symbol", details
        )
    if h.fortifiable and not h.fortified:
        basis = f"0 of {h.fortifiable} fortifiable libc functions use their __*_chk variant"
        yield _finding("elf.no-fortify", path, basis, details)


def _relro(path: str, h: Hardening, details: _Details) -> Iterator[Finding]:
    match h.relro:
        case Relro.FULL:
            return
        case Relro.PARTIAL:
            basis = "PT_GNU_RELRO without BIND_NOW: the PLT GOT stays writable"
            yield _finding("elf.partial-relro", path, basis, details)
        case Relro.NONE:
            yield _finding("elf.no-relro", path, "no PT_GNU_RELRO: relocated data stays writable", details)
        case _:
            assert_never(h.relro)


def _finding(rule: str, path: str, evidence: str, details: _Details) -> Finding:
    severity, title = _RULES[rule]
    return Finding(rule, Category.HARDENING, severity, title, path, evidence, details=details)


def _unreadable(entry: FileEntry, rejected: ElfRejected) -> Finding:
    return _finding("elf.unreadable", entry.path, rejected.reason, ())


def _count(tally: _Tally, h: Hardening) -> None:
    if h.kind not in (ElfKind.EXECUTABLE, ElfKind.SHARED_LIBRARY):
        tally.add(str(h.kind))
        return
    tally.judged += 1
    tally.add(str(h.kind))
    if h.kind is ElfKind.EXECUTABLE:
        tally.executables += 1
        if h.pie:
            tally.add("pie")
    for key, present in (("nx", h.nx), ("canary", h.canary is True), ("fortify", h.fortify)):
        if present:
            tally.add(key)
    if not h.static:
        tally.add(f"relro-{h.relro}")
    if h.stripped:
        tally.add("stripped")


def _summary(tally: _Tally) -> Finding:
    c, judged = tally.counts, tally.judged
    rows = (
        ("elf files", str(tally.binaries)),
        ("executables", str(c.get(str(ElfKind.EXECUTABLE), 0))),
        ("shared libraries", str(c.get(str(ElfKind.SHARED_LIBRARY), 0))),
        ("kernel modules", str(c.get(str(ElfKind.KERNEL_MODULE), 0))),
        ("objects", str(c.get(str(ElfKind.OBJECT), 0))),
        ("unreadable", str(tally.unreadable)),
        ("nx", f"{c.get('nx', 0)}/{judged}"),
        ("pie", f"{c.get('pie', 0)}/{tally.executables}"),
        ("relro full", str(c.get("relro-full", 0))),
        ("relro partial", str(c.get("relro-partial", 0))),
        ("relro none", str(c.get("relro-none", 0))),
        ("canary", f"{c.get('canary', 0)}/{judged}"),
        ("fortify", f"{c.get('fortify', 0)}/{judged}"),
        ("stripped", f"{c.get('stripped', 0)}/{judged}"),
    )
    evidence = ", ".join(f"{key} {value}" for key, value in rows)
    title = f"ELF hardening of {judged} executables and shared libraries"
    return Finding(
        "elf.hardening-summary", Category.HARDENING, Severity.INFO, title, "/", evidence, details=rows
    )
