"""PAM service files: parsing them, placing our one session line, and the only code that writes
them.

Enabling inserts exactly one line and disabling removes exactly that line, so a file goes back to
its original bytes (comments, spacing, a missing final newline and all). Files are read and
written as bytes decoded with surrogateescape: bytes that are not UTF-8 survive unchanged.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

from pam_unshare.atomic import replace_atomically

MODULE_TOKEN = "pam_unshare.so"
TYPES = ("auth", "account", "password", "session")
CONTROL_KEYWORDS = ("required", "requisite", "sufficient", "optional", "include", "substack")
INCLUDE_DIRECTIVE = "@include"
BACKUP_SUFFIX = ".pam-unshare.bak"
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"


class ParseError(ValueError):
    """A line that PAM would not accept as written: we refuse to edit such a file."""

    def __init__(self, number: int, reason: str) -> None:
        super().__init__(f"line {number}: {reason}")
        self.number = number
        self.reason = reason


@dataclass(frozen=True)
class Rule:
    """One configuration line (a continued line spans several physical lines)."""

    first: int  # index of its first physical line
    last: int  # index of its last physical line
    type: str  # auth, account, password, session (lower case, without "-"); "" for @include
    silent: bool  # written with a leading "-": PAM skips it if the module cannot be loaded
    control: str  # as written, e.g. "required" or "[success=1 default=ignore]"; "" for @include
    module: str  # the module path, or the file that @include / include / substack names
    args: Tuple[str, ...]

    @property
    def number(self) -> int:
        """Its line number in the file (of its first physical line), counting from 1."""
        return self.first + 1

    @property
    def is_directive(self) -> bool:
        """An @include line."""
        return self.type == ""

    @property
    def included(self) -> str | None:
        """The file this line pulls in (@include, include, substack), if it does."""
        if self.is_directive or self.control.lower() in ("include", "substack"):
            return self.module
        return None

    @property
    def is_session(self) -> bool:
        return self.type == "session"

    @property
    def is_ours(self) -> bool:
        return (self.is_session and self.included is None
                and os.path.basename(self.module) == MODULE_TOKEN)

    @property
    def may_open_sessions(self) -> bool:
        """Session lines and @include lines: ours must come after every one of them."""
        return self.is_session or self.is_directive


@dataclass(frozen=True)
class PamFile:
    lines: Tuple[str, ...]  # the physical lines, each with its line ending (the last may lack it)
    rules: Tuple[Rule, ...]

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def ours(self) -> List[Rule]:
        return [rule for rule in self.rules if rule.is_ours]


def split_lines(text: str) -> List[str]:
    """TEXT as physical lines, split at "\\n" only, each keeping its ending."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _strip_comment(line: str) -> Tuple[str, bool]:
    """The line up to its first "#" and whether it continues on the next line (a trailing
    backslash, unless the line has a comment), as Linux-PAM assembles lines."""
    body = line.rstrip("\n")
    continued = "#" not in body and body.rstrip(" \t\r").endswith("\\")
    if continued:
        body = body.rstrip(" \t\r")[:-1]
    return body.split("#", 1)[0], continued


def tokenize(text: str) -> List[Tuple[str, bool]]:
    """Splits TEXT into (token, complete) pairs as Linux-PAM's _pam_StrTok does: blanks separate
    tokens, "[...]" is one token up to the first "]" ("\\]" escapes one). COMPLETE is False for a
    "[" without its "]"."""
    tokens = []
    i, end = 0, len(text)
    while True:
        while i < end and text[i] in " \t\r\n":
            i += 1
        if i >= end:
            return tokens
        if text[i] == "[":
            j = i + 1
            while j < end and text[j] != "]":
                j += 2 if text[j] == "\\" and j + 1 < end and text[j + 1] == "]" else 1
            tokens.append((text[i:j + 1], j < end))
            i = j + 1
        else:
            j = i
            while j < end and text[j] not in " \t\r\n":
                j += 1
            tokens.append((text[i:j], True))
            i = j


def _rule(first: int, last: int, text: str) -> Rule | None:
    tokens = tokenize(text)
    if not tokens:
        return None
    number = first + 1
    head = tokens[0][0]
    if head == INCLUDE_DIRECTIVE:
        if len(tokens) < 2:
            raise ParseError(number, "@include without a file name")
        return Rule(first, last, "", False, "", tokens[1][0], ())
    silent = head.startswith("-")
    kind = head[1:] if silent else head
    if kind.lower() not in TYPES:
        raise ParseError(number, f'"{head}" is neither a module type '
                         f"({', '.join(TYPES)}) nor {INCLUDE_DIRECTIVE}")
    if len(tokens) < 2:
        raise ParseError(number, "no control field")
    control, complete = tokens[1]
    if control.startswith("["):
        if not complete:
            raise ParseError(number, f'control field "{control}" has no closing "]"')
    elif control.lower() not in CONTROL_KEYWORDS:
        raise ParseError(number, f'control field "{control}" is neither one of '
                         f"{', '.join(CONTROL_KEYWORDS)} nor [...]")
    if len(tokens) < 3:
        raise ParseError(number, "no module path")
    module, complete = tokens[2]
    if not complete:
        raise ParseError(number, f'module path "{module}" has no closing "]"')
    return Rule(first, last, kind.lower(), silent, control, module,
                tuple(token for token, _ in tokens[3:]))


def parse(text: str) -> PamFile:
    """Parses a PAM service file (the /etc/pam.d syntax: no service field). Raises ParseError for
    a line whose type is not auth/account/password/session (optionally with "-") or @include, or
    whose control field is neither a keyword nor a balanced [...]."""
    lines = split_lines(text)
    rules = []
    logical = ""
    start = 0
    for index, line in enumerate(lines):
        if not logical:
            start = index
        body, continued = _strip_comment(line)
        logical += body + (" " if continued else "")
        if continued and index + 1 < len(lines):
            continue
        rule = _rule(start, index, logical)
        if rule is not None:
            rules.append(rule)
        logical = ""
    return PamFile(tuple(lines), tuple(rules))


def session_line(module: str = MODULE_TOKEN, options: Sequence[str] = ()) -> str:
    return " ".join(["session", "required", module, *options])


def _anchor(pam: PamFile) -> Rule | None:
    """The last session line or @include other than ours: our line goes right after it."""
    others = [rule for rule in pam.rules if rule.may_open_sessions and not rule.is_ours]
    return others[-1] if others else None


def is_placed(pam: PamFile, rule: Rule) -> bool:
    """Whether RULE comes after every other session line and @include of the file."""
    anchor = _anchor(pam)
    return anchor is None or anchor.last < rule.first


def _remove(lines: List[str], rule: Rule) -> None:
    at_end = rule.last == len(lines) - 1 and not lines[rule.last].endswith("\n")
    del lines[rule.first:rule.last + 1]
    if at_end and rule.first > 0:
        # Undo what _insert did for a file without a final newline.
        lines[rule.first - 1] = lines[rule.first - 1][:-1]


def _insert(lines: List[str], after: int, line: str) -> None:
    """Inserts LINE after physical line AFTER (-1: at the top). After a last line without a
    newline, that line gets one and LINE goes without: the file keeps lacking its final newline,
    and _remove restores the original bytes."""
    if 0 <= after and not lines[after].endswith("\n"):
        lines[after] += "\n"
        lines.insert(after + 1, line)
        return
    ending = "\r\n" if after >= 0 and lines[after].endswith("\r\n") else "\n"
    lines.insert(after + 1, line + ending)


def with_session_line(text: str, line: str) -> str:
    """TEXT with LINE as our one session line, after every other session line and @include
    (pam_loginuid and pam_systemd need /proc/self, which the caller loses once we have run).

    An existing line of ours in the right place is rewritten in place; otherwise every line of
    ours goes and LINE is inserted. Nothing else in the file changes."""
    pam = parse(text)
    lines = list(pam.lines)
    ours = pam.ours()
    if len(ours) == 1 and ours[0].first == ours[0].last and is_placed(pam, ours[0]):
        old = lines[ours[0].first]
        lines[ours[0].first] = line + old[len(old.rstrip("\r\n")):]
        return "".join(lines)
    for rule in reversed(ours):
        _remove(lines, rule)
    stripped = parse("".join(lines))
    anchor = _anchor(stripped)
    _insert(lines, anchor.last if anchor else len(lines) - 1, line)
    return "".join(lines)


def without_session_line(text: str) -> str:
    """TEXT without any line of ours: after with_session_line, the original bytes."""
    pam = parse(text)
    lines = list(pam.lines)
    for rule in reversed(pam.ours()):
        _remove(lines, rule)
    return "".join(lines)


def read(path: Path) -> str:
    return path.read_bytes().decode(_ENCODING, _ERRORS)


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + BACKUP_SUFFIX)


def write(path: Path, text: str, backup: bool = True) -> Path | None:
    """Replaces PATH's content with TEXT atomically, keeping its mode and owner (a symlink is
    followed: its target is rewritten). With BACKUP, the previous content is first saved as
    PATH.pam-unshare.bak; returns that path. A new file gets mode 0644."""
    target = Path(os.path.realpath(path))
    try:
        info = os.stat(target)
        mode, uid, gid = stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid
    except FileNotFoundError:
        info = None
        mode, uid, gid = 0o644, os.geteuid(), os.getegid()
    saved = None
    if backup and info is not None:
        saved = backup_path(target)
        replace_atomically(saved, target.read_bytes(), mode, uid, gid)
    replace_atomically(target, text.encode(_ENCODING, _ERRORS), mode, uid, gid)
    return saved


@contextlib.contextmanager
def locked(pam_dir: Path) -> Iterator[None]:
    """Holds an exclusive lock on PAM_DIR itself (flock on the directory: no lock file to leave
    behind) for a read-modify-rename, so concurrent runs never lose each other's changes."""
    fd = os.open(pam_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
