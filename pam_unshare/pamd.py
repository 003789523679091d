"""PAM service files: parsing them, placing our one session line, and the only code that writes
them.

Enabling inserts exactly one line and disabling removes exactly that line, so a file goes back to
its original bytes (comments, spacing, a missing final newline and all). Files are read and
written as bytes decoded with surrogateescape: bytes that are not UTF-8 survive unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

from pam_unshare import atomic, trust
from pam_unshare.errors import Failed, Refused

MODULE_TOKEN = "pam_unshare.so"
TYPES = ("auth", "account", "password", "session")
CONTROL_KEYWORDS = ("required", "requisite", "sufficient", "optional", "include", "substack")
INCLUDE_DIRECTIVE = "@include"
BACKUP_SUFFIX = ".pam-unshare.bak"
# Next to a file that enable created from a vendor file (/usr/lib/pam.d/NAME): the vendor text it
# was made from. It tells disable that the file is ours to remove again.
VENDOR_SUFFIX = ".pam-unshare.vendor"
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# What tells that a file is still the one that was read.
_IDENTITY = ("st_dev", "st_ino", "st_size", "st_mtime_ns")


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


def with_arguments(text: str, arguments: Sequence[str]) -> str:
    """TEXT with ARGUMENTS as the arguments of every line of ours, each keeping its type, control
    and module path (a test host's lines, whatever the admin wrote there). Nothing else changes."""
    pam = parse(text)
    lines = list(pam.lines)
    for rule in reversed(pam.ours()):
        kind = ("-" if rule.silent else "") + rule.type
        last = lines[rule.last]
        lines[rule.first:rule.last + 1] = [
            " ".join([kind, rule.control, rule.module, *arguments])
            + last[len(last.rstrip("\r\n")):]]
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


@dataclass(frozen=True)
class Original:
    """A service file as read: its bytes, and what says it is still the same file."""

    name: str
    data: bytes
    info: os.stat_result
    vendor: bool = False  # read from the vendor directory: the file to edit does not exist yet

    @property
    def text(self) -> str:
        return self.data.decode(_ENCODING, _ERRORS)

    def same_as(self, info: os.stat_result | None) -> bool:
        return info is not None and stat.S_ISREG(info.st_mode) and all(
            getattr(info, key) == getattr(self.info, key) for key in _IDENTITY)


@dataclass(frozen=True)
class Edit:
    name: str
    original: Original | None  # None: a new file (mode 0644, owned by the caller)
    text: str | None  # None: remove ORIGINAL
    backup: bool  # save ORIGINAL as NAME.pam-unshare.bak first


class PamDir:
    """An open PAM directory, the one way PAM files are read for editing and written.

    Every read and write goes through the directory's descriptor: a file is opened with
    O_NOFOLLOW (a symlink is refused, never followed), and is replaced only if it is still the
    file that was read (device, inode, size and modification time). Run as root, a directory
    that someone else could write (or any directory on the way to it) is refused: its owner
    could swap files under root's feet. With LOCK, holds an exclusive flock on the directory
    itself (no lock file to leave behind), so concurrent runs never lose each other's changes."""

    def __init__(self, path: Path, lock: bool = True) -> None:
        self.path = path
        if os.geteuid() == 0:
            why = trust.problem(str(path), directory=True)
            if why:
                raise Refused(f"refusing to edit files in {path}: {why}, and whoever can write "
                              f"there could steer what root writes; nothing written")
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if lock:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise

    def __enter__(self) -> PamDir:
        return self

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)

    def _stat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def read(self, name: str) -> Original | None:
        """NAME's bytes, or None when there is no such file. Refuses (errors.Refused) a symlink
        or anything but a regular file."""
        try:
            fd = os.open(name, _READ, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            try:
                target = os.readlink(name, dir_fd=self.fd)
            except OSError:  # a link a moment ago, something else now
                raise Failed(self._changed(name)) from None
            raise Refused(f"{self.path / name} is a symbolic link (to {target}); pam-unshare "
                          f"edits only regular files in the PAM directory itself: edit the file "
                          f"it points to, or put a copy in its place; nothing written") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise Refused(f"{self.path / name} is not a regular file; nothing written")
        with os.fdopen(fd, "rb") as handle:
            return Original(name, handle.read(), info)

    def _still(self, original: Original | None, name: str) -> Callable[[], None]:
        def check() -> None:
            now = self._stat(name)
            if (original is None and now is None) or (original and original.same_as(now)):
                return
            raise Failed(self._changed(name))
        return check

    def _changed(self, name: str) -> str:
        return (f"{self.path / name} was replaced or changed while pam-unshare was editing it; "
                f"left as it is")

    def _remove(self, edit: Edit, undo: List[Tuple[str, Callable[[], None]]]) -> None:
        """Removes EDIT's file if it is still the one read: no one else's file goes."""
        if edit.original is None:
            return
        self._still(edit.original, edit.name)()
        os.unlink(edit.name, dir_fd=self.fd)
        os.fsync(self.fd)
        undo.append((edit.name, self._putter(edit.name, edit.original)))

    def _replace(self, edit: Edit, undo: List[Tuple[str, Callable[[], None]]]) -> Path | None:
        original = edit.original
        if edit.text is None:
            self._remove(edit, undo)
            return None
        if original is None:
            mode, uid, gid = 0o644, os.geteuid(), os.getegid()
        else:
            info = original.info
            mode, uid, gid = stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid
        saved = None
        if edit.backup and original is not None:
            name = edit.name + BACKUP_SUFFIX
            try:
                previous = self.read(name)
            except Refused:
                previous = None
            atomic.replace_at(self.fd, name, original.data, mode, uid, gid)
            undo.append((name, self._putter(name, previous)))
            saved = self.path / name
        check = self._still(original, edit.name)
        atomic.replace_at(self.fd, edit.name, edit.text.encode(_ENCODING, _ERRORS), mode, uid,
                          gid, check)
        undo.append((edit.name, self._putter(edit.name, original)))
        return saved

    def _putter(self, name: str, original: Original | None) -> Callable[[], None]:
        """What puts NAME back as ORIGINAL (None: removes it)."""
        def put() -> None:
            if original is None:
                os.unlink(name, dir_fd=self.fd)
                return
            info = original.info
            atomic.replace_at(self.fd, name, original.data, stat.S_IMODE(info.st_mode),
                              info.st_uid, info.st_gid)
        return put

    def apply(self, edits: Sequence[Edit]) -> Dict[str, Path | None]:
        """Makes every edit (a write, or a removal), or none: when one fails, the files already
        written or removed are put back and errors.Failed says what failed and which files were
        put back. Returns each name's backup, if one was saved."""
        undo: List[Tuple[str, Callable[[], None]]] = []
        saved: Dict[str, Path | None] = {}
        for edit in edits:
            try:
                saved[edit.name] = self._replace(edit, undo)
            except (OSError, Failed) as error:
                verb = "removing" if edit.text is None else "writing"
                raise Failed(f"{verb} {self.path / edit.name} failed: {_why(error)}; "
                             f"{self._undo(undo)}") from None
        return saved

    def _undo(self, undo: List[Tuple[str, Callable[[], None]]]) -> str:
        restored, stuck = [], []
        for name, put in reversed(undo):
            try:
                put()
                restored.append(name)
            except OSError as error:
                stuck.append(f"{self.path / name} ({_why(error)})")
        done = f"put back {', '.join(reversed(restored))} as before" if restored else ""
        if stuck:
            return f"could not put back {', '.join(stuck)}" + (f"; {done}" if done else "")
        return f"{done}, so nothing changed" if done else "nothing changed"


def _why(error: Exception) -> str:
    if not isinstance(error, OSError):
        return str(error)
    text = error.strerror or str(error)
    name = error.filename2 or error.filename
    if isinstance(name, str) and not name.endswith(atomic.TEMP_SUFFIX):
        text = f"{name}: {text}"
    return text


def write(path: Path, text: str, backup: bool = True) -> Path | None:
    """Replaces PATH's content with TEXT atomically, keeping its mode and owner, through
    PamDir (a symlink is refused). With BACKUP, the previous content is first saved as
    PATH.pam-unshare.bak; returns that path. A new file gets mode 0644."""
    with PamDir(path.parent) as directory:
        original = directory.read(path.name)
        return directory.apply([Edit(path.name, original, text, backup)])[path.name]


@contextlib.contextmanager
def locked(pam_dir: Path) -> Iterator[None]:
    """Holds PamDir's exclusive lock on PAM_DIR for a read-modify-rename."""
    with PamDir(pam_dir):
        yield
