"""The hardening analyzer: one finding per binary and missing protection, a summary per image."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from fleetguard.firmware.analyzers.hardening import HardeningAnalyzer
from fleetguard.firmware.model import (
    Analyzer,
    Category,
    EntryKind,
    ExtractedTree,
    FileEntry,
    Finding,
    Severity,
)

GCC = shutil.which("gcc")
PROGRAM = r"""
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    char buf[64];
    strcpy(buf, argc > 1 ? argv[1] : "x");
    printf("%s=%d\n", buf, argc);
    return 0;
}
"""
MODULE = r"""
__attribute__((section(".modinfo"), used)) static const char license[] = "license=GPL";
int init_module(void) { char b[64]; __builtin_strcpy(b, "x"); return b[0]; }
"""
GOOD = "-z noexecstack -fPIE -pie -z relro -z now -fstack-protector-all -D_FORTIFY_SOURCE=2"
WEAK = "-z execstack -fno-PIE -no-pie -z norelro -fno-stack-protector -D_FORTIFY_SOURCE=0"
LAZY_LIBRARY = "-shared -fPIC -z noexecstack -z relro -z lazy -fno-stack-protector -D_FORTIFY_SOURCE=2"


def compile_c(out: Path, name: str, flags: str, source: str = PROGRAM) -> Path:
    src, binary = out / f"{name}.c", out / name
    src.write_text(source)
    command = [str(GCC), "-O2", "-U_FORTIFY_SOURCE", *flags.split(), str(src), "-o", str(binary)]
    subprocess.run(command, check=True, capture_output=True)
    return binary


def entry(path: str, data: Path | None = None, kind: EntryKind = EntryKind.FILE) -> FileEntry:
    return FileEntry(
        path, kind, 0o755, data=data, link_target="busybox" if kind is EntryKind.SYMLINK else None
    )


def tree_of(*entries: FileEntry) -> ExtractedTree:
    return ExtractedTree(image_sha256="0" * 64, image_size=0, entries=entries, layers=())


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> ExtractedTree:
    if GCC is None:
        pytest.skip("gcc is not installed")
    out = tmp_path_factory.mktemp("image")
    good = compile_c(out, "good", GOOD)
    broken = out / "broken"
    broken.write_bytes(good.read_bytes()[:200])
    passwd = out / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/sh\n")
    return tree_of(
        entry("/bin/good", good),
        entry("/bin/weak", compile_c(out, "weak", WEAK)),
        entry("/usr/lib/libweak.so", compile_c(out, "libweak.so", LAZY_LIBRARY)),
        entry("/lib/modules/4.14.90/demo.ko", compile_c(out, "demo.ko", "-c -fno-stack-protector", MODULE)),
        entry("/bin/broken", broken),
        entry("/etc/passwd", passwd),
        entry("/bin/sh", kind=EntryKind.SYMLINK),
        entry("/bin/unextracted"),  # over a limit: no bytes on disk
    )


def rules(findings: list[Finding]) -> set[tuple[str, str, Severity]]:
    return {(f.rule, f.path, f.severity) for f in findings if f.rule != "elf.hardening-summary"}


def test_is_an_analyzer() -> None:
    analyzer: Analyzer = HardeningAnalyzer()

    assert analyzer.name == "hardening"


def test_one_finding_per_binary_and_missing_protection(image: ExtractedTree) -> None:
    findings = list(HardeningAnalyzer().analyze(image))

    assert rules(findings) == {
        ("elf.executable-stack", "/bin/weak", Severity.HIGH),
        ("elf.no-pie", "/bin/weak", Severity.LOW),
        ("elf.no-relro", "/bin/weak", Severity.MEDIUM),
        ("elf.no-stack-canary", "/bin/weak", Severity.MEDIUM),
        ("elf.no-fortify", "/bin/weak", Severity.LOW),
        ("elf.partial-relro", "/usr/lib/libweak.so", Severity.LOW),
        ("elf.no-stack-canary", "/usr/lib/libweak.so", Severity.MEDIUM),
        ("elf.unreadable", "/bin/broken", Severity.INFO),
    }
    assert all(f.category is Category.HARDENING for f in findings)


def test_findings_carry_the_evidence(image: ExtractedTree) -> None:
    by_rule = {(f.rule, f.path): f for f in HardeningAnalyzer().analyze(image)}

    stack = by_rule["elf.executable-stack", "/bin/weak"]
    assert stack.evidence == "PT_GNU_STACK RWX"
    assert stack.title == "Executable stack (no NX)"
    assert dict(stack.details) == {"kind": "executable", "arch": stack.details[1][1]}
    assert by_rule["elf.no-fortify", "/bin/weak"].evidence == (
        "0 of 2 fortifiable libc functions use their __*_chk variant"
    )
    assert by_rule["elf.partial-relro", "/usr/lib/libweak.so"].evidence == (
        "PT_GNU_RELRO without BIND_NOW: the PLT GOT stays writable"
    )
    assert by_rule["elf.unreadable", "/bin/broken"].evidence.startswith("program header table at 0x40+")


def test_the_summary_counts_every_elf_file(image: ExtractedTree) -> None:
    summary = [f for f in HardeningAnalyzer().analyze(image) if f.rule == "elf.hardening-summary"]

    assert len(summary) == 1
    assert (summary[0].severity, summary[0].path) == (Severity.INFO, "/")
    assert summary[0].title == "ELF hardening of 3 executables and shared libraries"
    assert summary[0].details == (
        ("elf files", "5"),
        ("executables", "2"),
        ("shared libraries", "1"),
        ("kernel modules", "1"),
        ("objects", "0"),
        ("unreadable", "1"),
        ("nx", "2/3"),
        ("pie", "1/2"),
        ("relro full", "1"),
        ("relro partial", "1"),
        ("relro none", "1"),
        ("canary", "1/3"),
        ("fortify", "2/3"),
        ("stripped", "0/3"),
    )
    assert summary[0].evidence.startswith("elf files 5, executables 2, shared libraries 1, kernel modules 1")


def test_an_image_without_elf_files_has_no_findings(tmp_path: Path) -> None:
    script = tmp_path / "rc"
    script.write_text("#!/bin/sh\n")

    assert list(HardeningAnalyzer().analyze(tree_of(entry("/etc/rc", script)))) == []


def test_a_mips_binary_without_gnu_stack_is_flagged_with_the_reason(tmp_path: Path) -> None:
    # 32-bit big-endian MIPS ET_EXEC with one PT_LOAD and no PT_GNU_STACK (old toolchains)
    header = b"\x7fELF\x01\x02\x01" + bytes(9)
    header += struct.pack(">HHIIIIIHHHHHH", 2, 8, 1, 0x400000, 52, 0, 0, 52, 32, 1, 0, 0, 0)
    header += struct.pack(">8I", 1, 0, 0x400000, 0x400000, 84, 84, 5, 0x1000)
    binary = tmp_path / "httpd"
    binary.write_bytes(header)

    findings = list(HardeningAnalyzer().analyze(tree_of(entry("/usr/sbin/httpd", binary))))

    assert rules(findings) == {
        ("elf.executable-stack", "/usr/sbin/httpd", Severity.HIGH),
        ("elf.no-pie", "/usr/sbin/httpd", Severity.LOW),
    }
    stack = next(f for f in findings if f.rule == "elf.executable-stack")
    assert (
        stack.evidence == "no PT_GNU_STACK: the mips kernel implies an executable stack (READ_IMPLIES_EXEC)"
    )
    assert dict(stack.details) == {"kind": "executable", "arch": "mips"}
