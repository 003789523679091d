"""A PAM session opened by this process, through libpam with ctypes.

`verify` needs real sessions of a service without anyone's password: it calls pam_start and
pam_open_session only (as su does for root, without pam_authenticate). python-pam cannot: it
opens a session only after a successful authentication. Going to libpam.so.0 directly also
keeps the CLI free of a runtime dependency beyond cffi.
"""

from __future__ import annotations

import ctypes
from typing import Dict, List

PAM_SUCCESS = 0
PAM_BUF_ERR = 5
PAM_CONV_ERR = 19
PAM_TTY = 3
PAM_RUSER = 8
PAM_PROMPT_ECHO_OFF = 1
PAM_PROMPT_ECHO_ON = 2
PAM_ERROR_MSG = 3


class PamError(RuntimeError):
    pass


class _Message(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class _Response(ctypes.Structure):
    # resp stays NULL: libpam frees what it points to, so it must never be Python's memory.
    _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]


_CONV = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.POINTER(_Message)),
                         ctypes.POINTER(ctypes.POINTER(_Response)), ctypes.c_void_p)


class _Conv(ctypes.Structure):
    _fields_ = [("conv", _CONV), ("appdata_ptr", ctypes.c_void_p)]


def _load() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    libpam = ctypes.CDLL("libpam.so.0")
    libc = ctypes.CDLL(None)
    handle = ctypes.c_void_p
    libpam.pam_start.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_Conv),
                                 ctypes.POINTER(handle)]
    libpam.pam_set_item.argtypes = [handle, ctypes.c_int, ctypes.c_void_p]
    for name in ("pam_open_session", "pam_close_session", "pam_end"):
        getattr(libpam, name).argtypes = [handle, ctypes.c_int]
    libpam.pam_strerror.argtypes = [handle, ctypes.c_int]
    libpam.pam_strerror.restype = ctypes.c_char_p
    libpam.pam_getenvlist.argtypes = [handle]
    libpam.pam_getenvlist.restype = ctypes.POINTER(ctypes.c_char_p)
    libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    libc.calloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    return libpam, libc


class Session:
    """pam_start(SERVICE, USER), then open() and close(); end() always. Prompts are refused
    (a session stack has no business asking); error messages are kept for the report."""

    def __init__(self, service: str, user: str) -> None:
        self._libpam, self._libc = _load()
        self.messages: List[str] = []
        self._conv = _Conv(_CONV(self._converse), None)  # referenced: libpam calls it later
        self._handle = ctypes.c_void_p()
        rc = self._libpam.pam_start(service.encode(), user.encode(), ctypes.byref(self._conv),
                                    ctypes.byref(self._handle))
        if rc != PAM_SUCCESS:
            raise PamError(f"pam_start({service}, {user}) failed ({rc})")
        self._libpam.pam_set_item(self._handle, PAM_RUSER, ctypes.c_char_p(b"root"))
        self._opened = False

    def _converse(self, count: int, messages, responses, _data) -> int:  # noqa: ANN001
        array = self._libc.calloc(max(count, 1), ctypes.sizeof(_Response))
        if not array:
            return PAM_BUF_ERR
        for index in range(count):
            message = messages[index].contents
            if message.msg_style in (PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON):
                self._libc.free(array)
                return PAM_CONV_ERR
            if message.msg_style == PAM_ERROR_MSG and message.msg:
                self.messages.append(message.msg.decode(errors="replace"))
        responses[0] = ctypes.cast(array, ctypes.POINTER(_Response))
        return PAM_SUCCESS

    def _error(self, what: str, rc: int) -> PamError:
        text = self._libpam.pam_strerror(self._handle, rc) or b"?"
        said = f" ({'; '.join(self.messages)})" if self.messages else ""
        return PamError(f"{what}: {text.decode(errors='replace')}{said}")

    def open(self) -> None:
        rc = self._libpam.pam_open_session(self._handle, 0)
        if rc != PAM_SUCCESS:
            raise self._error("pam_open_session", rc)
        self._opened = True

    def environment(self) -> Dict[str, str]:
        """What the session's modules put in the PAM environment (XDG_RUNTIME_DIR, ...)."""
        found: Dict[str, str] = {}
        array = self._libpam.pam_getenvlist(self._handle)
        if not array:
            return found
        index = 0
        while array[index]:
            name, _, value = array[index].decode(errors="replace").partition("=")
            found[name] = value
            index += 1
        return found

    def close(self) -> None:
        if self._opened:
            self._opened = False
            rc = self._libpam.pam_close_session(self._handle, 0)
            if rc != PAM_SUCCESS:
                raise self._error("pam_close_session", rc)

    def end(self) -> None:
        if self._handle:
            self._libpam.pam_end(self._handle, PAM_SUCCESS)
            self._handle = ctypes.c_void_p()
