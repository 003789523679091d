"""Reading a PAM configuration as PAM does: which session modules a service runs, in which order,
following @include, include and substack, with Linux-PAM's precedence of the admin's directory
(/etc/pam.d) over the vendor's (/usr/lib/pam.d). Read-only.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Mapping, Tuple

from pam_unshare import pamd

# Where Linux-PAM (1.4 and later) reads a service or included file that /etc/pam.d lacks.
VENDOR_DIR = Path("/usr/lib/pam.d")
# Linux-PAM's PAM_SUBSTACK_MAX_LEVEL: deeper nesting is an error (and catches include loops).
MAX_INCLUDE_LEVEL = 16
# Files in a PAM directory that are not services: editors', dpkg's, ucf's and our own leftovers.
_NOT_SERVICES = (pamd.BACKUP_SUFFIX, ".dpkg-old", ".dpkg-dist", ".dpkg-new", ".dpkg-bak",
                 ".dpkg-tmp", ".ucf-old", ".ucf-dist", ".ucf-new", ".bak", ".orig", ".rej", "~",
                 pamd.VENDOR_SUFFIX)


def _service_files(directory: Path) -> List[str]:
    names = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if not is_service_name(entry.name):
                    continue
                try:
                    if stat.S_ISREG(os.stat(entry.path).st_mode):
                        names.append(entry.name)
                except OSError:
                    continue
    except (FileNotFoundError, NotADirectoryError):
        pass
    return names


class StackError(Exception):
    """A stack PAM could not load as intended (a missing or unparsable file, an include loop)."""


@dataclass(frozen=True)
class Entry:
    """One module of a service's session stack."""

    file: str  # the file the line is in, as named in the directory or by an include
    rule: pamd.Rule
    depth: int  # substack depth: a jump or "done" never leaves its substack

    @property
    def where(self) -> str:
        return f"{self.file}:{self.rule.number}"

    @property
    def module_name(self) -> str:
        return os.path.basename(self.rule.module)


def is_service_name(name: str) -> bool:
    """A plain file name that PAM could be asked for and that is not a leftover."""
    return (bool(name) and "/" not in name and not name.startswith(".") and "\0" not in name
            and not name.endswith(_NOT_SERVICES))


def vendor_dir_for(pam_dir: Path) -> Path | None:
    """The vendor directory Linux-PAM reads after PAM_DIR: /usr/lib/pam.d for /etc/pam.d, and
    ROOT/usr/lib/pam.d for ROOT/etc/pam.d (an image's tree); None for any other directory (a
    bare copy of a PAM directory has no vendor files)."""
    if pam_dir.parts[-2:] != ("etc", "pam.d"):
        return None
    return pam_dir.parent.parent / VENDOR_DIR.relative_to("/")


class PamTree:
    """The files of one PAM configuration, read lazily: PAM_DIR's, and for a name PAM_DIR lacks,
    VENDOR_DIR's (default: vendor_dir_for(PAM_DIR)), as Linux-PAM looks a service or an
    included file up; optionally with some files' planned texts (OVERRIDES: name -> text, the
    planned content of PAM_DIR/name) in place of what is on disk."""

    def __init__(self, pam_dir: Path, overrides: Mapping[str, str] | None = None,
                 vendor_dir: Path | None | Literal["auto"] = "auto") -> None:
        self.pam_dir = pam_dir
        self.vendor_dir = vendor_dir_for(pam_dir) if vendor_dir == "auto" else vendor_dir
        self.overrides: Dict[str, str] = dict(overrides or {})
        self._texts: Dict[str, str | None] = {}
        self._parsed: Dict[str, pamd.PamFile | pamd.ParseError] = {}

    def with_overrides(self, overrides: Mapping[str, str]) -> PamTree:
        return PamTree(self.pam_dir, {**self.overrides, **overrides}, self.vendor_dir)

    def path(self, name: str) -> Path:
        """Where PAM reads NAME from: PAM_DIR/NAME if it is a file there (or planned), else
        VENDOR_DIR/NAME if that is a file, else PAM_DIR/NAME (which does not exist)."""
        if name.startswith("/"):
            return Path(name)
        own = self.pam_dir / name
        if name in self.overrides or self.vendor_dir is None or own.is_file():
            return own
        vendor = self.vendor_dir / name
        return vendor if vendor.is_file() else own

    def is_vendor(self, name: str) -> bool:
        """Whether PAM reads NAME from the vendor directory (no file of that name in PAM_DIR)."""
        return self.vendor_dir is not None and self.path(name).parent == self.vendor_dir

    def text(self, name: str) -> str | None:
        """The file's text, or None when there is no such regular file."""
        if name in self.overrides:
            return self.overrides[name]
        if name not in self._texts:
            try:
                path = self.path(name)
                self._texts[name] = pamd.read(path) if path.is_file() else None
            except OSError:
                self._texts[name] = None
        return self._texts[name]

    def parsed(self, name: str) -> pamd.PamFile:
        """The parsed file; raises FileNotFoundError or pamd.ParseError."""
        if name not in self._parsed:
            text = self.text(name)
            if text is None:
                raise FileNotFoundError(f"{self.path(name)} does not exist")
            try:
                self._parsed[name] = pamd.parse(text)
            except pamd.ParseError as error:
                self._parsed[name] = error
        result = self._parsed[name]
        if isinstance(result, pamd.ParseError):
            raise result
        return result

    def services(self) -> List[str]:
        """Names of the service files in both directories (and planned ones), sorted."""
        names = set(self.overrides)
        for directory in (self.pam_dir, self.vendor_dir):
            if directory is not None:
                names.update(_service_files(directory))
        return sorted(names)

    def session_stack(self, service: str) -> List[Entry]:
        """The session modules SERVICE runs, in order, includes and substacks flattened.
        Raises StackError when PAM could not load the stack as written."""
        entries: List[Entry] = []
        self._flatten(service, 0, 0, entries, ())
        return entries

    def _flatten(self, name: str, depth: int, level: int, out: List[Entry],
                 chain: Tuple[str, ...]) -> None:
        if level >= MAX_INCLUDE_LEVEL or name in chain:
            raise StackError(f"include loop: {' -> '.join((*chain, name))}")
        try:
            pam = self.parsed(name)
        except FileNotFoundError:
            via = f" (included by {chain[-1]})" if chain else ""
            raise StackError(f"{self.path(name)} does not exist{via}") from None
        except pamd.ParseError as error:
            raise StackError(f"{self.path(name)}: {error}") from None
        for rule in pam.rules:
            included = rule.included
            if rule.is_directive:
                self._flatten(included, depth, level + 1, out, (*chain, name))
            elif rule.is_session and included is not None:
                deeper = depth + (rule.control.lower() == "substack")
                self._flatten(included, deeper, level + 1, out, (*chain, name))
            elif rule.is_session:
                out.append(Entry(name, rule, depth))

    def includes(self, service: str) -> List[str]:
        """Every file SERVICE's session stack pulls in, directly or not (not SERVICE itself);
        files that cannot be read are skipped."""
        found: List[str] = []
        pending = [service]
        while pending:
            name = pending.pop()
            try:
                rules = self.parsed(name).rules
            except (FileNotFoundError, pamd.ParseError):
                continue
            for rule in rules:
                included = rule.included
                if included and (rule.is_directive or rule.is_session) and included not in found \
                        and included != service:
                    found.append(included)
                    pending.append(included)
        return found
