"""Module options, parsed by the module's own C parser through the cffi binding."""

from __future__ import annotations

import grp
from dataclasses import dataclass
from typing import Sequence, Tuple

from pam_unshare._core import ffi, lib

_ONERR = {lib.PU_ONERR_FAIL: "fail", lib.PU_ONERR_SUCCEED: "succeed"}
_PROPAGATION = {lib.PU_PROPAGATION_SLAVE: "slave", lib.PU_PROPAGATION_PRIVATE: "private"}
_ON_LOGOUT = {lib.PU_ON_LOGOUT_LINGER: "linger", lib.PU_ON_LOGOUT_KILL: "kill"}
_SCOPE = {lib.PU_SCOPE_SESSION: "session", lib.PU_SCOPE_USER: "user"}


@dataclass(frozen=True)
class Options:
    """The settings the module would run with. A list that was not given is None."""

    # In the order `status --json` has always shown them.
    onerr: str
    propagation: str
    on_logout: str
    scope: str
    max_sessions: int  # 0: no limit
    debug: bool
    exempt_users: Tuple[str, ...] | None
    exempt_groups: Tuple[str, ...] | None
    only_groups: Tuple[str, ...] | None


@dataclass(frozen=True)
class Rejection:
    argument: str
    reason: str


def _names(pointer: object) -> Tuple[str, ...] | None:
    if pointer == ffi.NULL:
        return None
    text = ffi.string(pointer).decode()
    return tuple(text.split(",")) if text else ()


def parse(arguments: Sequence[str]) -> Tuple[Options, Tuple[Rejection, ...]]:
    """Parses module arguments exactly as pam_unshare.so does at login."""
    opts = ffi.new("struct pu_options *")
    lib.pu_options_init(opts)
    # The C struct points into these buffers: keep them alive until the values are copied out.
    buffers = [ffi.new("char[]", argument.encode()) for argument in arguments]
    rejections = []
    for argument, buffer in zip(arguments, buffers):
        if "\0" in argument:
            rejections.append(Rejection(argument, "NUL byte in option"))
            continue
        why = lib.pu_option_apply(opts, buffer)
        if why != ffi.NULL:
            rejections.append(Rejection(argument, ffi.string(why).decode()))
    options = Options(
        debug=bool(opts.debug),
        onerr=_ONERR[opts.onerr],
        propagation=_PROPAGATION[opts.propagation],
        on_logout=_ON_LOGOUT[opts.on_logout],
        scope=_SCOPE[opts.scope],
        max_sessions=int(opts.max_sessions),
        exempt_users=_names(opts.exempt_users),
        exempt_groups=_names(opts.exempt_groups),
        only_groups=_names(opts.only_groups),
    )
    return options, tuple(rejections)


def name_in_list(names: str, name: str) -> bool:
    """Whether NAME is an element of the comma-separated NAMES, as the module decides it."""
    return bool(lib.pu_name_in_list(names.encode(), name.encode()))


def unresolved_groups(parsed: Options) -> Tuple[str, ...]:
    """Group names in exempt_groups and only_groups that name no group on this host: at login
    an unknown only_groups name refuses sessions (onerr), an unknown exempt_groups name exempts
    nobody; either is almost surely a typo."""
    names = (parsed.exempt_groups or ()) + (parsed.only_groups or ())
    missing = []
    for name in names:
        try:
            grp.getgrnam(name)
        except KeyError:
            missing.append(name)
    return tuple(missing)
