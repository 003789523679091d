"""Reading a shared object's ELF headers and dynamic symbol table without loading it.

Loading a library runs its constructors: root must not do that to judge a file. What PAM needs
from a session module is visible in the file itself: an ELF shared object of this machine's
class, byte order and architecture that exports pam_sm_open_session and pam_sm_close_session.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Dict, List, Tuple

MAX_SIZE = 64 << 20  # far above any PAM module; a bigger file is not read
ET_DYN = 3
SHT_DYNSYM = 11
SHN_UNDEF = 0
STB_GLOBAL, STB_WEAK = 1, 2
STT_FUNC, STT_GNU_IFUNC = 2, 10
STV_DEFAULT, STV_PROTECTED = 0, 3
MACHINES = {3: "i386", 8: "MIPS", 20: "PowerPC", 21: "PowerPC64", 22: "s390", 40: "ARM",
            62: "x86-64", 183: "AArch64", 243: "RISC-V", 258: "LoongArch"}


class NotAModule(ValueError):
    """The file is not what its name says; the message says why."""


@dataclass(frozen=True)
class Header:
    bits: int  # 32 or 64
    order: str  # "<" little endian, ">" big endian
    type: int
    machine: int
    shoff: int
    shentsize: int
    shnum: int

    @property
    def arch(self) -> str:
        return MACHINES.get(self.machine, f"machine {self.machine}")


def header(data: bytes) -> Header:
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise NotAModule("is not an ELF file")
    if data[4] not in (1, 2) or data[5] not in (1, 2):
        raise NotAModule("has an ELF header of an unknown class or byte order")
    bits = 32 if data[4] == 1 else 64
    order = "<" if data[5] == 1 else ">"
    e_type, machine = struct.unpack_from(order + "HH", data, 16)
    if bits == 64:
        shoff, = struct.unpack_from(order + "Q", data, 40)
        shentsize, shnum = struct.unpack_from(order + "HH", data, 58)
    else:
        shoff, = struct.unpack_from(order + "I", data, 32)
        shentsize, shnum = struct.unpack_from(order + "HH", data, 46)
    return Header(bits, order, e_type, machine, shoff, shentsize, shnum)


def _sections(data: bytes, head: Header) -> List[Tuple[int, int, int, int, int]]:
    """(type, offset, size, link, entsize) of every section."""
    need = 64 if head.bits == 64 else 40
    if head.shnum == 0 or head.shentsize < need:
        raise NotAModule("has no section headers, so its symbols cannot be read")
    if head.shoff + head.shnum * head.shentsize > len(data):
        raise NotAModule("is truncated (its section headers lie past its end)")
    sections = []
    for index in range(head.shnum):
        at = head.shoff + index * head.shentsize
        if head.bits == 64:
            _, kind, _, _, offset, size, link, _, _, entsize = struct.unpack_from(
                head.order + "IIQQQQIIQQ", data, at)
        else:
            _, kind, _, _, offset, size, link, _, _, entsize = struct.unpack_from(
                head.order + "IIIIIIIIII", data, at)
        sections.append((kind, offset, size, link, entsize))
    return sections


def _name(data: bytes, start: int, end: int, offset: int) -> str:
    if offset >= end - start:
        return ""
    stop = data.find(b"\0", start + offset, end)
    return data[start + offset:stop if stop >= 0 else end].decode("ascii", "replace")


def exported_functions(data: bytes, head: Header) -> Dict[str, int]:
    """The functions the dynamic linker would hand to dlsym: name -> value."""
    sections = _sections(data, head)
    found: Dict[str, int] = {}
    for kind, offset, size, link, entsize in sections:
        if kind != SHT_DYNSYM or link >= len(sections):
            continue
        _, str_offset, str_size, _, _ = sections[link]
        str_end = min(str_offset + str_size, len(data))
        step = entsize or (24 if head.bits == 64 else 16)
        if offset + size > len(data) or step < (24 if head.bits == 64 else 16):
            raise NotAModule("is truncated (its symbol table lies past its end)")
        for at in range(offset, offset + size - step + 1, step):
            if head.bits == 64:
                name, info, other, shndx, value, _ = struct.unpack_from(
                    head.order + "IBBHQQ", data, at)
            else:
                name, value, _, info, other, shndx = struct.unpack_from(
                    head.order + "IIIBBH", data, at)
            if (shndx != SHN_UNDEF and info >> 4 in (STB_GLOBAL, STB_WEAK)
                    and info & 0xF in (STT_FUNC, STT_GNU_IFUNC)
                    and other & 3 in (STV_DEFAULT, STV_PROTECTED)):
                found[_name(data, str_offset, str_end, name)] = value
    return found


def _this_machine() -> Header:
    with open("/proc/self/exe", "rb") as handle:
        return header(handle.read(64))


def module_problem(data: bytes, required: Tuple[str, ...]) -> str | None:
    """Why DATA is not a shared object this machine's PAM could use as a module exporting every
    function in REQUIRED, or None. Raises nothing for malformed input: says what is wrong."""
    try:
        head = header(data)
        ours = _this_machine()
        if (head.bits, head.order) != (ours.bits, ours.order):
            order = {"<": "little", ">": "big"}
            return (f"is a {head.bits}-bit {order[head.order]}-endian ELF file; this machine "
                    f"loads {ours.bits}-bit {order[ours.order]}-endian modules")
        if head.machine != ours.machine:
            return f"is built for {head.arch}, and this machine is {ours.arch}"
        if head.type != ET_DYN:
            return f"is not a shared object (ELF type {head.type})"
        exported = exported_functions(data, head)
    except NotAModule as error:
        return str(error)
    except struct.error:
        return "is truncated (an ELF header or symbol lies past its end)"
    missing = [name for name in required if name not in exported]
    if missing:
        return f"is not a PAM session module (no {', '.join(missing)})"
    return None
