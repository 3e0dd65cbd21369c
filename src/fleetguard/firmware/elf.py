"""How an ELF binary was hardened: NX stack, PIE, RELRO, stack canary, FORTIFY, symbols.

A bounded, pure-Python reader of the parts of an ELF file that say how it was built: the file header,
the program headers, the dynamic section and, where present, the section headers and the dynamic
symbol table. Every offset and count is checked against the buffer before it is used, so a
truncated or crafted file gives :class:`ElfRejected` with the reason, never an exception. Files are
mapped (``mmap``) rather than read: only the pages holding headers and tables are touched, which is
what lets the hardening analyzer go through hundreds of megabytes of firmware in a second or two.

The references are the System V gABI (ELF header, program and section headers, ``.dynamic``), the
Linux kernel's ``fs/binfmt_elf.c`` (``PT_GNU_STACK`` and ``elf_read_implies_exec``) and binutils/
glibc for the GNU extensions (``PT_GNU_RELRO``, ``DT_FLAGS_1``, ``__*_chk``).

Executable stack without ``PT_GNU_STACK``
    When no ``PT_GNU_STACK`` header is present, the stack is treated as executable on every
    architecture, and :attr:`Hardening.nx_basis` says why for the one at hand:

    * ARM (32-bit), MIPS (both endians), x86 (32-bit), PowerPC (32-bit): the kernel sets
      ``READ_IMPLIES_EXEC`` for such binaries (``elf_read_implies_exec``), so the stack and every
      readable mapping are executable.
    * x86-64, AArch64, PowerPC64 and other 64-bit ports: since Linux 5.8 the kernel no longer
      implies exec for 64-bit binaries, but glibc's and uClibc's loaders default to
      ``PF_R|PF_W|PF_X`` stack permissions when an object lacks ``PT_GNU_STACK``
      (glibc ``DEFAULT_STACK_PERMS``), and firmware kernels are often older than 5.8.

    An old MIPS toolchain that emits no ``PT_GNU_STACK`` is the common case in router firmware.
"""

from __future__ import annotations

import enum
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ELF_MAGIC",
    "ElfKind",
    "ElfRejected",
    "Hardening",
    "Relro",
    "elf_hardening",
    "inspect_elf",
    "parse_elf",
]

ELF_MAGIC = b"\x7fELF"

# Limits: real binaries have about 10 program headers, 30-40 sections, a few thousand dynamic
# symbols (libc: about 3000). Anything far beyond is crafted, and refused rather than walked.
_MAX_PHNUM = 4096
_MAX_SHNUM = 65536
_MAX_DYN_ENTRIES = 8192
_MAX_DYNSYMS = 500_000
_MAX_INTERP = 4096

# gABI e_type
_ET_REL, _ET_EXEC, _ET_DYN, _ET_CORE = 1, 2, 3, 4
# gABI p_type, plus the GNU extensions (binutils include/elf/common.h)
_PT_DYNAMIC, _PT_INTERP = 2, 3
_PT_GNU_STACK, _PT_GNU_RELRO = 0x6474E551, 0x6474E552
_PF_X = 0x1
# gABI sh_type
_SHT_SYMTAB, _SHT_STRTAB, _SHT_DYNSYM = 2, 3, 11
_SHN_UNDEF = 0
# gABI d_tag, plus DT_FLAGS_1 (Solaris/GNU)
_DT_NULL, _DT_STRTAB, _DT_STRSZ, _DT_SONAME, _DT_BIND_NOW, _DT_FLAGS = 0, 5, 10, 14, 24, 30
_DT_FLAGS_1 = 0x6FFFFFFB
_DF_BIND_NOW = 0x8
_DF_1_NOW, _DF_1_PIE = 0x1, 0x08000000

# gABI e_machine values for the architectures firmware ships; others are named "em-<n>".
_MACHINES: dict[int, str] = {
    3: "x86",
    8: "mips",
    20: "powerpc",
    21: "powerpc64",
    40: "arm",
    62: "x86-64",
    183: "aarch64",
    243: "riscv",
}
# Architectures whose kernel sets READ_IMPLIES_EXEC when PT_GNU_STACK is absent (see docstring).
_KERNEL_IMPLIES_EXEC = frozenset({"x86", "mips", "mipsel", "powerpc", "arm"})

_CANARY_SYMBOLS = frozenset({b"__stack_chk_fail", b"__stack_chk_guard", b"__stack_chk_fail_local"})
# glibc's fortified entry points (debug/Versions): the plain function each one replaces. An import
# of the plain name where a _chk variant exists is "fortifiable".
_FORTIFIABLE = frozenset(
    b"asprintf confstr dprintf explicit_bzero fgets fgets_unlocked fgetws fgetws_unlocked fprintf "
    b"fread fread_unlocked fwprintf getcwd getdomainname getgroups gethostname getlogin_r gets getwd "
    b"longjmp mbsnrtowcs mbsrtowcs mbstowcs memcpy memmove mempcpy memset obstack_printf "
    b"obstack_vprintf poll ppoll pread pread64 printf ptsname_r read readlink readlinkat realpath recv "
    b"recvfrom snprintf sprintf stpcpy stpncpy strcat strcpy strncat strncpy swprintf syslog ttyname_r "
    b"vasprintf vdprintf vfprintf vfwprintf vprintf vsnprintf vsprintf vswprintf vsyslog vwprintf "
    b"wcpcpy wcpncpy wcrtomb wcscat wcscpy wcsncat wcsncpy wcsnrtombs wcsrtombs wcstombs wctomb "
    b"wmemcpy wmemmove wmempcpy wmemset wprintf".split()
)
_CHK_NAME = re.compile(rb"\A__(\w+)_chk\Z")
_CHK_IN_STRTAB = re.compile(rb"(?<=\x00)__(\w{1,40})_chk(?=\x00)")


class ElfKind(enum.StrEnum):
    """What an ELF file is for."""

    EXECUTABLE = "executable"
    SHARED_LIBRARY = "shared library"
    KERNEL_MODULE = "kernel module"
    OBJECT = "object"


class Relro(enum.StrEnum):
    """How much of the relocated data is made read-only after loading."""

    FULL = "full"  # PT_GNU_RELRO and immediate binding: the whole GOT is read-only
    PARTIAL = "partial"  # PT_GNU_RELRO with lazy binding: .got.plt stays writable
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Hardening:
    """The hardening properties of one ELF file.

    ``nx`` is False when the stack is executable (``PT_GNU_STACK`` with ``PF_X``, or no
    ``PT_GNU_STACK``: see the module docstring), and ``nx_basis`` says which. ``pie`` is true for an
    ``ET_DYN`` with an interpreter or ``DF_1_PIE``. ``canary`` is None when it cannot be told (a
    statically linked, stripped file has no symbol names left). ``fortified`` counts the distinct
    ``__*_chk`` functions imported, ``fortifiable`` those plus the plain functions imported that
    have a ``_chk`` variant. ``stripped`` means no ``.symtab``. ``static`` means no dynamic section.
    """

    kind: ElfKind
    arch: str
    bits: int
    big_endian: bool
    nx: bool
    nx_basis: str
    pie: bool
    relro: Relro
    canary: bool | None
    fortified: int
    fortifiable: int
    stripped: bool
    static: bool
    interp: str | None = None
    soname: str | None = None

    @property
    def fortify(self) -> bool:
        """True when at least one fortified (``__*_chk``) function is imported."""
        return self.fortified > 0


@dataclass(frozen=True, slots=True)
class ElfRejected:
    """An ELF file (right magic) whose headers are truncated, inconsistent or beyond the limits."""

    reason: str


class _Corrupt(Exception):
    """Internal: raised inside the parser, turned into :class:`ElfRejected` at its entry point."""


@dataclass(frozen=True, slots=True)
class _Layout:
    """The struct formats for one class (32/64-bit) and byte order."""

    header: struct.Struct
    phdr: struct.Struct
    shdr: struct.Struct
    dyn: struct.Struct
    sym: struct.Struct
    sym_name_info_shndx: tuple[int, int, int]  # field indexes in sym


def _layout(is64: bool, big: bool) -> _Layout:
    e = ">" if big else "<"
    if is64:
        return _Layout(
            struct.Struct(e + "HHIQQQIHHHHHH"),
            struct.Struct(e + "IIQQQQQQ"),
            struct.Struct(e + "IIQQQQIIQQ"),
            struct.Struct(e + "qQ"),
            struct.Struct(e + "IBBHQQ"),
            (0, 1, 3),
        )
    return _Layout(
        struct.Struct(e + "HHIIIIIHHHHHH"),
        struct.Struct(e + "IIIIIIII"),
        struct.Struct(e + "IIIIIIIIII"),
        struct.Struct(e + "iI"),
        struct.Struct(e + "IIIBBH"),
        (0, 3, 5),
    )


@dataclass(frozen=True, slots=True)
class _Segment:
    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int


@dataclass(frozen=True, slots=True)
class _Section:
    name: int
    type: int
    flags: int
    offset: int
    size: int
    link: int
    entsize: int


class _Reader:
    """Bounds-checked access to one buffer; every failure raises :class:`_Corrupt`."""

    def __init__(self, buf: memoryview, is64: bool, big: bool) -> None:
        self.buf = buf
        self.size = len(buf)
        self.is64 = is64
        self.layout = _layout(is64, big)

    def span(self, offset: int, length: int, what: str) -> memoryview:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise _Corrupt(
                f"{what} at {offset:#x}+{length:#x} is beyond the end of the file ({self.size:#x})"
            )
        return self.buf[offset : offset + length]

    def table(
        self, offset: int, count: int, entsize: int, fmt: struct.Struct, what: str
    ) -> list[tuple[int, ...]]:
        if count and entsize < fmt.size:
            raise _Corrupt(f"{what} entry size {entsize} is smaller than {fmt.size}")
        data = self.span(offset, count * entsize, what)
        if entsize == fmt.size:
            return list(fmt.iter_unpack(data))
        return [fmt.unpack_from(data, i * entsize) for i in range(count)]

    def cstring(self, table: memoryview, offset: int) -> bytes:
        if offset >= len(table):
            raise _Corrupt(f"string offset {offset:#x} beyond its table ({len(table):#x})")
        raw = bytes(table[offset : offset + 256])
        end = raw.find(b"\x00")
        return raw if end < 0 else raw[:end]


def parse_elf(buf: bytes | bytearray | memoryview | mmap.mmap) -> Hardening | ElfRejected | None:
    """Read the hardening properties from the bytes of a file.

    Returns None when ``buf`` does not start with the ELF magic, :class:`ElfRejected` with the reason
    when it does but is truncated, inconsistent or beyond the limits, else :class:`Hardening`.
    Never raises for any content.
    """
    view = memoryview(buf)
    if bytes(view[:4]) != ELF_MAGIC:
        return None
    try:
        return _parse(view)
    except _Corrupt as exc:
        return ElfRejected(str(exc))
    except (struct.error, ValueError, OverflowError) as exc:
        return ElfRejected(f"malformed: {exc}")


def inspect_elf(path: Path) -> Hardening | ElfRejected | None:
    """Map ``path`` and :func:`parse_elf` it; None for a non-ELF, empty or unreadable file."""
    try:
        with path.open("rb") as handle:
            if handle.read(4) != ELF_MAGIC:
                return None
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return parse_elf(mapped)
    except (OSError, ValueError):
        return None


def elf_hardening(path: Path) -> Hardening | None:
    """The hardening of the ELF file at ``path``; None for a non-ELF or a corrupt one.

    Use :func:`inspect_elf` to learn why a file with the ELF magic was not readable.
    """
    result = inspect_elf(path)
    return result if isinstance(result, Hardening) else None


def _parse(view: memoryview) -> Hardening:
    if len(view) < 16:
        raise _Corrupt("truncated ELF identification (under 16 bytes)")
    ei_class, ei_data = view[4], view[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        raise _Corrupt(f"unknown ELF class {ei_class} or data encoding {ei_data}")
    reader = _Reader(view, is64=ei_class == 2, big=ei_data == 2)
    header = reader.layout.header
    fields = header.unpack(reader.span(16, header.size, "ELF header"))
    e_type, e_machine, phoff, shoff = fields[0], fields[1], fields[4], fields[5]
    phentsize, phnum, shentsize, shnum, shstrndx = fields[8:13]
    if e_type not in (_ET_REL, _ET_EXEC, _ET_DYN):
        raise _Corrupt("a core dump, not a program" if e_type == _ET_CORE else f"unknown e_type {e_type}")
    arch = _arch(e_machine, big=ei_data == 2)
    segments = _segments(reader, phoff, phnum, phentsize)
    sections = _sections(reader, shoff, shnum, shentsize)
    dynamic = _Dynamic.read(reader, segments)
    names = _section_names(reader, sections, shstrndx)
    symbols = _symbols(reader, sections, dynamic)
    interp = _interp(reader, segments)
    kind = _kind(e_type, interp, dynamic, names)
    nx, nx_basis = _stack(segments, arch)
    has_relro = any(s.type == _PT_GNU_RELRO for s in segments)
    relro = (Relro.FULL if dynamic.bind_now else Relro.PARTIAL) if has_relro else Relro.NONE
    stripped = not any(s.type == _SHT_SYMTAB for s in sections)
    static = not any(s.type == _PT_DYNAMIC for s in segments)
    canary: bool | None = symbols.canary
    if not canary and static and stripped:
        canary = None  # no names left to look for
    return Hardening(
        kind=kind,
        arch=arch,
        bits=64 if reader.is64 else 32,
        big_endian=ei_data == 2,
        nx=nx,
        nx_basis=nx_basis,
        pie=e_type == _ET_DYN and (interp is not None or dynamic.flags_1 & _DF_1_PIE != 0),
        relro=relro,
        canary=canary,
        fortified=len(symbols.fortified),
        fortifiable=len(symbols.fortified | symbols.fortifiable),
        stripped=stripped,
        static=static,
        interp=interp,
        soname=dynamic.soname,
    )


def _arch(machine: int, *, big: bool) -> str:
    name = _MACHINES.get(machine, f"em-{machine}")
    return "mipsel" if name == "mips" and not big else name


def _segments(reader: _Reader, phoff: int, phnum: int, phentsize: int) -> list[_Segment]:
    if phnum == 0:
        return []
    if phnum > _MAX_PHNUM:
        raise _Corrupt(f"{phnum} program headers (limit {_MAX_PHNUM})")
    rows = reader.table(phoff, phnum, phentsize, reader.layout.phdr, "program header table")
    if reader.is64:  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, ...
        return [_Segment(r[0], r[1], r[2], r[3], r[5]) for r in rows]
    return [_Segment(r[0], r[6], r[1], r[2], r[4]) for r in rows]  # p_flags after p_memsz


def _sections(reader: _Reader, shoff: int, shnum: int, shentsize: int) -> list[_Section]:
    if shoff == 0:
        return []  # sstrip'd: no section headers at all
    if shnum == 0:  # gABI: a count >= SHN_LORESERVE is held in section 0's sh_size
        first = reader.table(shoff, 1, shentsize, reader.layout.shdr, "section header 0")[0]
        shnum = first[5]
    if shnum > _MAX_SHNUM:
        raise _Corrupt(f"{shnum} section headers (limit {_MAX_SHNUM})")
    rows = reader.table(shoff, shnum, shentsize, reader.layout.shdr, "section header table")
    return [_Section(r[0], r[1], r[2], r[4], r[5], r[6], r[9]) for r in rows]


def _section_names(reader: _Reader, sections: list[_Section], shstrndx: int) -> set[bytes]:
    if not sections or shstrndx >= len(sections):
        return set()
    table = sections[shstrndx]
    strings = reader.span(table.offset, table.size, "section name table")
    return {reader.cstring(strings, s.name) for s in sections if s.name < table.size}


def _interp(reader: _Reader, segments: list[_Segment]) -> str | None:
    for seg in segments:
        if seg.type == _PT_INTERP:
            raw = bytes(reader.span(seg.offset, min(seg.filesz, _MAX_INTERP), "PT_INTERP"))
            return raw.split(b"\x00", 1)[0].decode("utf-8", "replace")
    return None


def _vaddr_to_offset(segments: list[_Segment], vaddr: int) -> int | None:
    for seg in segments:
        if seg.type == 1 and seg.vaddr <= vaddr < seg.vaddr + seg.filesz:  # PT_LOAD
            return seg.offset + (vaddr - seg.vaddr)
    return None


@dataclass(frozen=True, slots=True)
class _Dynamic:
    bind_now: bool
    flags_1: int
    soname: str | None
    strtab: tuple[int, int] | None  # file offset and size of DT_STRTAB, when mapped by a PT_LOAD

    @classmethod
    def read(cls, reader: _Reader, segments: list[_Segment]) -> _Dynamic:
        seg = next((s for s in segments if s.type == _PT_DYNAMIC), None)
        if seg is None:
            return cls(bind_now=False, flags_1=0, soname=None, strtab=None)
        fmt = reader.layout.dyn
        count = min(seg.filesz // fmt.size, _MAX_DYN_ENTRIES)
        tags: dict[int, int] = {}
        bind_now = False
        for tag, value in reader.table(seg.offset, count, fmt.size, fmt, "dynamic section"):
            if tag == _DT_NULL:
                break
            bind_now |= tag == _DT_BIND_NOW
            tags.setdefault(tag, value)
        flags_1 = tags.get(_DT_FLAGS_1, 0)
        bind_now |= bool(tags.get(_DT_FLAGS, 0) & _DF_BIND_NOW) or bool(flags_1 & _DF_1_NOW)
        strtab = None
        offset = _vaddr_to_offset(segments, tags[_DT_STRTAB]) if _DT_STRTAB in tags else None
        if offset is not None and _DT_STRSZ in tags:
            strtab = (offset, tags[_DT_STRSZ])
        soname = None
        if strtab is not None and _DT_SONAME in tags:
            table = reader.span(strtab[0], strtab[1], "dynamic string table")
            soname = reader.cstring(table, tags[_DT_SONAME]).decode("utf-8", "replace")
        return cls(bind_now=bind_now, flags_1=flags_1, soname=soname, strtab=strtab)


@dataclass(frozen=True, slots=True)
class _Symbols:
    canary: bool
    fortified: frozenset[bytes]
    fortifiable: frozenset[bytes]


def _symbols(reader: _Reader, sections: list[_Section], dynamic: _Dynamic) -> _Symbols:
    """Canary and FORTIFY evidence from the dynamic symbols (imports) and, failing that, .symtab."""
    dynsym = next((s for s in sections if s.type == _SHT_DYNSYM), None)
    if dynsym is not None and dynsym.link < len(sections):
        found = _imports(reader, dynsym, sections[dynsym.link])
    elif dynamic.strtab is not None:  # no section headers: every name in DT_STRTAB
        found = _names_in_strtab(reader.span(*dynamic.strtab, "dynamic string table"))
    else:
        found = _Symbols(canary=False, fortified=frozenset(), fortifiable=frozenset())
    if found.canary or found.fortified:
        return found
    symtab = next((s for s in sections if s.type == _SHT_SYMTAB), None)
    if symtab is None or symtab.link >= len(sections):
        return found
    strtab = sections[symtab.link]
    local = _names_in_strtab(reader.span(strtab.offset, strtab.size, ".strtab"))
    return _Symbols(local.canary, local.fortified, found.fortifiable | local.fortifiable)


def _imports(reader: _Reader, dynsym: _Section, strsec: _Section) -> _Symbols:
    fmt = reader.layout.sym
    entsize = dynsym.entsize or fmt.size
    count = dynsym.size // entsize if entsize else 0
    if count > _MAX_DYNSYMS:
        raise _Corrupt(f"{count} dynamic symbols (limit {_MAX_DYNSYMS})")
    strings = reader.span(strsec.offset, strsec.size, ".dynstr")
    raw = bytes(strings)
    name_i, _info_i, shndx_i = reader.layout.sym_name_info_shndx
    canary = False
    fortified: set[bytes] = set()
    fortifiable: set[bytes] = set()
    for row in reader.table(dynsym.offset, count, entsize, fmt, ".dynsym"):
        start = row[name_i]
        if start == 0 or start >= len(raw):
            continue
        end = raw.find(b"\x00", start)
        name = raw[start:end] if end >= 0 else raw[start:]
        if name in _CANARY_SYMBOLS:
            canary = True
        elif row[shndx_i] == _SHN_UNDEF:
            chk = _CHK_NAME.match(name)
            if chk is not None:
                fortified.add(chk.group(1))
            elif name in _FORTIFIABLE:
                fortifiable.add(name)
    return _Symbols(canary, frozenset(fortified), frozenset(fortifiable))


def _names_in_strtab(strings: memoryview) -> _Symbols:
    """Evidence from a bare string table: names present, imports and definitions alike."""
    raw = b"\x00" + bytes(strings)
    canary = any(b"\x00" + name + b"\x00" in raw for name in _CANARY_SYMBOLS)
    fortified = frozenset(m.group(1) for m in _CHK_IN_STRTAB.finditer(raw) if m.group(1) != b"stack")
    return _Symbols(canary, fortified, frozenset())


def _stack(segments: list[_Segment], arch: str) -> tuple[bool, str]:
    if not segments:
        return (False, "no program headers: not loadable on its own")
    stack = next((s for s in segments if s.type == _PT_GNU_STACK), None)
    if stack is not None:
        executable = bool(stack.flags & _PF_X)
        return (not executable, "PT_GNU_STACK " + ("RWX" if executable else "RW"))
    if arch in _KERNEL_IMPLIES_EXEC:
        return (False, f"no PT_GNU_STACK: the {arch} kernel implies an executable stack (READ_IMPLIES_EXEC)")
    return (False, f"no PT_GNU_STACK: {arch} loaders default to an executable stack (PF_X)")


def _kind(e_type: int, interp: str | None, dynamic: _Dynamic, section_names: set[bytes]) -> ElfKind:
    if e_type == _ET_REL:
        module = b".modinfo" in section_names or b".gnu.linkonce.this_module" in section_names
        return ElfKind.KERNEL_MODULE if module else ElfKind.OBJECT
    if e_type == _ET_EXEC or dynamic.flags_1 & _DF_1_PIE:
        return ElfKind.EXECUTABLE
    # ET_DYN: a PIE has an interpreter and no SONAME; libc.so.6 has both and is a library.
    if interp is not None and dynamic.soname is None:
        return ElfKind.EXECUTABLE
    return ElfKind.SHARED_LIBRARY
