"""The ELF hardening reader: gcc-built programs with each protection toggled, real binaries, handmade
cross-architecture headers, and truncated or crafted files."""

from __future__ import annotations

import dataclasses
import platform
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.firmware.elf import (
    ElfKind,
    ElfRejected,
    Hardening,
    Relro,
    elf_hardening,
    inspect_elf,
    parse_elf,
)

GCC = shutil.which("gcc")
HOST_ARCH = {"x86_64": "x86-64", "i686": "x86"}.get(platform.machine(), platform.machine())
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc is not installed")

# One strcpy into a stack array and one printf: a canary candidate and two fortifiable calls.
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
LIBRARY = r"""
#include <string.h>
int demo(char *out, const char *in) { char tmp[32]; strcpy(tmp, in); strcpy(out, tmp); return 0; }
"""
MODULE = r"""
__attribute__((section(".modinfo"), used)) static const char license[] = "license=GPL";
int init_module(void) { return 0; }
"""

HARDENED = {
    "stack": "-z noexecstack",
    "pie": "-fPIE -pie",
    "relro": "-z relro -z now",
    "canary": "-fstack-protector-all",
    "fortify": "-D_FORTIFY_SOURCE=2",
    "strip": "",
}


def build(out: Path, name: str, source: str = PROGRAM, extra: str = "", **toggles: str) -> Path:
    """Compile ``source`` with the hardened flags, each of ``toggles`` replacing one of them."""
    flags = {**HARDENED, **toggles}
    src = out / f"{name}.c"
    src.write_text(source)
    binary = out / name
    # gcc hands "-z keyword" to the linker itself; -U first so distributions' defaults do not leak in
    args = ["-O2", "-U_FORTIFY_SOURCE", *" ".join(flags.values()).split(), *extra.split()]
    subprocess.run([str(GCC), *args, str(src), "-o", str(binary)], check=True, capture_output=True)
    return binary


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if GCC is None:
        pytest.skip("gcc is not installed")
    out = tmp_path_factory.mktemp("elf")
    return {
        "hardened": build(out, "hardened"),
        "execstack": build(out, "execstack", stack="-z execstack"),
        "no-pie": build(out, "no-pie", pie="-fno-PIE -no-pie"),
        "norelro": build(out, "norelro", relro="-z norelro"),
        "lazy": build(out, "lazy", relro="-z relro -z lazy"),
        "no-canary": build(out, "no-canary", canary="-fno-stack-protector"),
        "no-fortify": build(out, "no-fortify", fortify="-D_FORTIFY_SOURCE=0"),
        "stripped": build(out, "stripped", strip="-s"),
        "static": build(out, "static", pie="-static"),
        "static-stripped-no-canary": build(
            out, "static-stripped-no-canary", pie="-static", strip="-s", canary="-fno-stack-protector"
        ),
        "library": build(out, "libdemo.so.1", LIBRARY, "-shared -fPIC -Wl,-soname,libdemo.so.1", pie=""),
        "object": build(out, "demo.o", LIBRARY, "-c", pie="", relro="", stack=""),
        "module": build(out, "demo.ko", MODULE, "-c", pie="", relro="", stack=""),
    }


@needs_gcc
def test_hardened_program_has_every_protection(built: dict[str, Path]) -> None:
    h = elf_hardening(built["hardened"])

    assert h is not None
    assert h.interp is not None
    assert h.interp.startswith("/lib")
    assert dataclasses.replace(h, interp=None) == Hardening(
        kind=ElfKind.EXECUTABLE,
        arch=HOST_ARCH,
        bits=64,
        big_endian=False,
        nx=True,
        nx_basis="PT_GNU_STACK RW",
        pie=True,
        relro=Relro.FULL,
        canary=True,
        fortified=2,
        fortifiable=2,
        stripped=False,
        static=False,
    )
    assert h.fortify


@needs_gcc
@pytest.mark.parametrize(
    ("variant", "field", "expected"),
    [
        ("execstack", "nx", False),
        ("execstack", "nx_basis", "PT_GNU_STACK RWX"),
        ("no-pie", "pie", False),
        ("no-pie", "kind", ElfKind.EXECUTABLE),
        ("norelro", "relro", Relro.NONE),
        ("lazy", "relro", Relro.PARTIAL),
        ("no-canary", "canary", False),
        ("no-fortify", "fortified", 0),
        ("no-fortify", "fortifiable", 2),
        ("stripped", "stripped", True),
        ("static", "static", True),
        ("static", "pie", False),
        ("static", "canary", True),  # read from .symtab: a static binary has no imports
        ("static-stripped-no-canary", "canary", None),  # nothing left to tell
        ("library", "kind", ElfKind.SHARED_LIBRARY),
        ("library", "soname", "libdemo.so.1"),
        ("library", "pie", False),
        ("library", "interp", None),
        ("object", "kind", ElfKind.OBJECT),
        ("module", "kind", ElfKind.KERNEL_MODULE),
    ],
)
def test_each_flag_toggles_exactly_its_property(
    built: dict[str, Path], variant: str, field: str, expected: object
) -> None:
    h = elf_hardening(built[variant])

    assert h is not None
    assert getattr(h, field) == expected


@needs_gcc
@pytest.mark.parametrize("variant", ["execstack", "no-pie", "norelro", "lazy", "no-canary", "no-fortify"])
def test_a_toggle_leaves_the_other_protections_alone(built: dict[str, Path], variant: str) -> None:
    reference, h = elf_hardening(built["hardened"]), elf_hardening(built[variant])
    assert reference is not None
    assert h is not None

    changed = {
        name
        for name in ("nx", "pie", "relro", "canary", "fortified", "stripped")
        if getattr(h, name) != getattr(reference, name)
    }

    assert (
        changed
        == {
            "execstack": {"nx"},
            "no-pie": {"pie"},
            "norelro": {"relro"},
            "lazy": {"relro"},
            "no-canary": {"canary"},
            "no-fortify": {"fortified"},
        }[variant]
    )


# -- real binaries, checked against binutils' readelf ----------------------------------------------


def readelf(path: Path) -> str:
    return subprocess.run(["readelf", "-lWd", str(path)], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils is not installed")
@pytest.mark.parametrize("name", ["ls", "true", "cat", "sh", "apt"])
def test_real_binaries_agree_with_readelf(name: str) -> None:
    path = Path(shutil.which(name) or f"/usr/bin/{name}").resolve()
    if not path.is_file():
        pytest.skip(f"no {name}")
    text = readelf(path)

    h = elf_hardening(path)

    assert h is not None
    assert h.arch == HOST_ARCH
    assert h.nx is ("GNU_STACK" in text and "RWE" not in _line(text, "GNU_STACK"))
    assert h.pie is ("DYN" in _line(text, "Elf file type") and "INTERP" in text)
    now = "BIND_NOW" in text or " NOW" in _line(text, "FLAGS_1")
    assert h.relro is (Relro.NONE if "GNU_RELRO" not in text else Relro.FULL if now else Relro.PARTIAL)


def test_ls_is_a_nx_pie_with_relro() -> None:
    ls = Path("/usr/bin/ls")
    if not ls.is_file():
        pytest.skip("no /usr/bin/ls")

    h = elf_hardening(ls)

    assert h is not None
    assert (h.kind, h.nx, h.pie, h.static) == (ElfKind.EXECUTABLE, True, True, False)
    assert h.relro in (Relro.FULL, Relro.PARTIAL)  # Debian links without -z now; Fedora with it


def _line(text: str, marker: str) -> str:
    return next((line for line in text.splitlines() if marker in line), "")


# -- handmade headers: other architectures and byte orders -----------------------------------------

PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_GNU_STACK, PT_GNU_RELRO = 1, 2, 3, 0x6474E551, 0x6474E552
PF_X, PF_W, PF_R = 1, 2, 4
EM_MIPS, EM_PPC64, EM_ARM, EM_AARCH64, EM_386 = 8, 21, 40, 183, 3


def handmade(
    *,
    bits: int,
    big: bool,
    machine: int,
    e_type: int = 2,
    segments: tuple[tuple[int, int, bytes], ...] = (),
) -> bytes:
    """An ELF file with only a header and program headers, each segment's bytes after them."""
    e = ">" if big else "<"
    ehsize, phentsize = (52, 32) if bits == 32 else (64, 56)
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, 2 if big else 1, 1]) + bytes(9)
    word = "I" if bits == 32 else "Q"
    header = struct.pack(
        f"{e}HHI{word}{word}{word}IHHHHHH",
        e_type,
        machine,
        1,
        0,
        ehsize,
        0,
        0,
        ehsize,
        phentsize,
        len(segments),
        0,
        0,
        0,
    )
    offset = ehsize + phentsize * len(segments)
    table, payload = b"", b""
    for p_type, p_flags, data in segments:
        at = offset + len(payload)
        if bits == 32:
            table += struct.pack(f"{e}8I", p_type, at, at, at, len(data), len(data), p_flags, 4)
        else:
            table += struct.pack(f"{e}IIQQQQQQ", p_type, p_flags, at, at, at, len(data), len(data), 8)
        payload += data
    return ident + header + table + payload


def dynamic(*entries: tuple[int, int], bits: int, big: bool) -> bytes:
    fmt = (">" if big else "<") + ("iI" if bits == 32 else "qQ")
    return b"".join(struct.pack(fmt, tag, value) for tag, value in (*entries, (0, 0)))


def test_arm_little_endian_with_gnu_stack_rw() -> None:
    data = handmade(bits=32, big=False, machine=EM_ARM, segments=((PT_GNU_STACK, PF_R | PF_W, b""),))

    h = parse_elf(data)

    assert isinstance(h, Hardening)
    assert (h.arch, h.bits, h.big_endian, h.nx, h.nx_basis) == ("arm", 32, False, True, "PT_GNU_STACK RW")
    assert (h.kind, h.pie, h.relro, h.static, h.stripped) == (
        ElfKind.EXECUTABLE,
        False,
        Relro.NONE,
        True,
        True,
    )


def test_mips_big_endian_without_gnu_stack_has_an_executable_stack() -> None:
    data = handmade(bits=32, big=True, machine=EM_MIPS, segments=((PT_LOAD, PF_R | PF_X, b"\0" * 16),))

    h = parse_elf(data)

    assert isinstance(h, Hardening)
    assert (h.arch, h.big_endian, h.nx) == ("mips", True, False)
    assert h.nx_basis == "no PT_GNU_STACK: the mips kernel implies an executable stack (READ_IMPLIES_EXEC)"


def test_mips_little_endian_is_mipsel() -> None:
    data = handmade(bits=32, big=False, machine=EM_MIPS, segments=((PT_GNU_STACK, PF_R | PF_W | PF_X, b""),))

    h = parse_elf(data)

    assert isinstance(h, Hardening)
    assert (h.arch, h.nx, h.nx_basis) == ("mipsel", False, "PT_GNU_STACK RWX")


def test_aarch64_without_gnu_stack_names_the_loader_default() -> None:
    h = parse_elf(handmade(bits=64, big=False, machine=EM_AARCH64, segments=((PT_LOAD, PF_R, b"\0"),)))

    assert isinstance(h, Hardening)
    assert (h.arch, h.bits, h.nx) == ("aarch64", 64, False)
    assert h.nx_basis == "no PT_GNU_STACK: aarch64 loaders default to an executable stack (PF_X)"


@pytest.mark.parametrize(
    ("flags_tag", "flags_value", "relro"),
    [(30, 0x8, Relro.FULL), (0x6FFFFFFB, 0x1, Relro.FULL), (24, 0, Relro.FULL), (30, 0, Relro.PARTIAL)],
)
def test_powerpc64_big_endian_pie_and_relro_from_the_dynamic_section(
    flags_tag: int, flags_value: int, relro: Relro
) -> None:
    dyn = dynamic((flags_tag, flags_value), bits=64, big=True)
    data = handmade(
        bits=64,
        big=True,
        machine=EM_PPC64,
        e_type=3,
        segments=(
            (PT_INTERP, PF_R, b"/lib/ld64.so.1\0"),
            (PT_DYNAMIC, PF_R | PF_W, dyn),
            (PT_GNU_RELRO, PF_R, b""),
            (PT_GNU_STACK, PF_R | PF_W, b""),
        ),
    )

    h = parse_elf(data)

    assert isinstance(h, Hardening)
    assert (h.arch, h.big_endian, h.kind, h.pie, h.interp) == (
        "powerpc64",
        True,
        ElfKind.EXECUTABLE,
        True,
        "/lib/ld64.so.1",
    )
    assert h.relro is relro
    assert h.static is False


def test_static_pie_is_recognised_by_df_1_pie() -> None:
    dyn = dynamic((0x6FFFFFFB, 0x08000000), bits=32, big=False)
    data = handmade(bits=32, big=False, machine=EM_386, e_type=3, segments=((PT_DYNAMIC, PF_R, dyn),))

    h = parse_elf(data)

    assert isinstance(h, Hardening)
    assert (h.arch, h.kind, h.pie, h.interp) == ("x86", ElfKind.EXECUTABLE, True, None)


# -- not ELF, truncated, crafted -------------------------------------------------------------------


def test_non_elf_and_empty_files_are_none(tmp_path: Path) -> None:
    text, empty = tmp_path / "script", tmp_path / "empty"
    text.write_bytes(b"#!/bin/sh\necho hi\n")
    empty.write_bytes(b"")

    assert inspect_elf(text) is None
    assert inspect_elf(empty) is None
    assert inspect_elf(tmp_path / "missing") is None
    assert parse_elf(b"\x7fEL") is None


@needs_gcc
def test_truncated_program_is_rejected_with_the_reason(built: dict[str, Path], tmp_path: Path) -> None:
    truncated = tmp_path / "truncated"
    truncated.write_bytes(built["hardened"].read_bytes()[:100])

    result = inspect_elf(truncated)

    assert isinstance(result, ElfRejected)
    assert result.reason.startswith("program header table at 0x40+")
    assert "beyond the end of the file (0x64)" in result.reason
    assert elf_hardening(truncated) is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x7fELF\x03\x01\x01" + bytes(60), "unknown ELF class 3 or data encoding 1"),
        (b"\x7fELF\x01\x01", "truncated ELF identification (under 16 bytes)"),
        (b"\x7fELF\x01\x01\x01" + bytes(20), "ELF header at 0x10+0x24 is beyond the end of the file (0x1b)"),
        (handmade(bits=32, big=False, machine=EM_ARM, e_type=4), "a core dump, not a program"),
        (handmade(bits=32, big=False, machine=EM_ARM, e_type=9), "unknown e_type 9"),
    ],
    ids=["class", "short-ident", "short-header", "core", "e_type"],
)
def test_corrupt_headers_are_rejected(data: bytes, reason: str) -> None:
    assert parse_elf(data) == ElfRejected(reason)


def test_absurd_program_header_count_is_refused_before_reading() -> None:
    data = bytearray(handmade(bits=64, big=False, machine=EM_AARCH64))
    struct.pack_into("<H", data, 56, 0xFFFF)  # e_phnum

    assert parse_elf(bytes(data)) == ElfRejected("65535 program headers (limit 4096)")


def test_dynamic_section_pointing_past_the_end_is_rejected() -> None:
    data = bytearray(handmade(bits=32, big=True, machine=EM_MIPS, segments=((PT_DYNAMIC, PF_R, bytes(16)),)))
    struct.pack_into(">I", data, 52 + 4, 0x7FFFFFF0)  # p_offset of the first program header

    result = parse_elf(bytes(data))

    assert isinstance(result, ElfRejected)
    assert result.reason.startswith("dynamic section at 0x7ffffff0+")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_after_the_magic_never_raise(tail: bytes) -> None:
    result = parse_elf(b"\x7fELF" + tail)

    assert result is None or isinstance(result, Hardening | ElfRejected)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 511), st.integers(0, 255)), max_size=12))
def test_mutated_real_headers_never_raise(mutations: list[tuple[int, int]]) -> None:
    data = bytearray(
        handmade(
            bits=64,
            big=False,
            machine=EM_AARCH64,
            e_type=3,
            segments=(
                (PT_INTERP, PF_R, b"/lib/ld-linux-aarch64.so.1\0"),
                (PT_DYNAMIC, PF_R | PF_W, dynamic((30, 8), (5, 0), (10, 64), (14, 1), bits=64, big=False)),
                (PT_GNU_RELRO, PF_R, b""),
            ),
        )
    )
    for offset, value in mutations:
        if offset < len(data):
            data[offset] = value

    result = parse_elf(bytes(data))

    assert result is None or isinstance(result, Hardening | ElfRejected)
