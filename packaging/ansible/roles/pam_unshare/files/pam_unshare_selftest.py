#!/usr/bin/python3
"""The pam_unshare role's live self-test, run on a managed host (ansible.builtin.script).

  pam_unshare_selftest.py load                      the installed module dlopen()s
  pam_unshare_selftest.py load --module=PATH        the module at PATH (one extracted from a
                                                    new package with dpkg-deb -x) dlopen()s
  pam_unshare_selftest.py pam USER [OPTION...]      one session through a PAM service of the
                                                    test's own, in a temporary directory
                                                    (pam_start_confdir): /etc/pam.d is not read
                                                    and nothing on the host changes; with
                                                    --module=PATH first, that module's
                                                    session (before it is installed)
  pam_unshare_selftest.py su USER                   one real su session (PAM service su)
  pam_unshare_selftest.py sudo USER                 one real sudo session (PAM service sudo)

Each session runs a probe as USER that reads every /proc/PID/stat it can see. The session is
isolated when its PID 1 is the module's init (comm "pam_unshare") and neither the host's PID 1 nor
the process that opened the session is among what it sees.

Prints one JSON object, {"ok": true | false | null, "test": ..., "detail": ..., ...}, and exits
with 0 when ok is true, 1 when false; ok null (exit 0) means the test cannot run on this host
(libpam older than 1.4 has no pam_start_confdir) and says why.

Plain Python 3.8 with the standard library only: it runs with the interpreter Ansible uses.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Sequence, Tuple

INIT_COMM = "pam_unshare"
SERVICE = "pam-unshare-selftest"
# Directories PAM loads modules from on Debian-like and other Linux distributions.
MODULE_GLOBS = ("/usr/lib/*/security/pam_unshare.so", "/lib/*/security/pam_unshare.so",
                "/usr/lib64/security/pam_unshare.so", "/lib64/security/pam_unshare.so",
                "/usr/lib/security/pam_unshare.so", "/lib/security/pam_unshare.so")
# Reads every /proc/PID/stat the shell can see, with builtins only: the probe adds no process.
PROBE = ('for d in /proc/[0-9]*; do read -r s 2>/dev/null < "$d/stat" && printf "%s\\n" "$s";'
         " done; exit 0")
TIMEOUT = 60
# A fresh session holds its init, the probe's shell and perhaps the caller's helpers; more than
# this many processes means it sees something else.
MAX_VISIBLE = 16
PAM_CONV_ERR = 19

Process = Tuple[int, str, int]  # pid, comm, start time in clock ticks since boot


def parse_stat(line: str) -> Process | None:
    """pid, comm and start time from one /proc/PID/stat line (comm may hold spaces and ')')."""
    try:
        head, _, tail = line.rpartition(")")
        pid_text, _, comm = head.partition(" (")
        return int(pid_text), comm, int(tail.split()[19])
    except (ValueError, IndexError):
        return None


def own_stat(pid: int | str) -> Process | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_stat(f.read())
    except OSError:
        return None


def read_all_stats() -> str:
    lines = []
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(path) as f:
                lines.append(f.read().strip())
        except OSError:
            pass
    return "\n".join(lines)


def judge(probe_output: str, outsiders: Sequence[Process | None]) -> Dict[str, Any]:
    """Whether what a session saw is an isolated view."""
    seen = [p for p in (parse_stat(line) for line in probe_output.splitlines()) if p]
    comms = {pid: comm for pid, comm, _ in seen}
    pid1 = comms.get(1)
    result: Dict[str, Any] = {"pid1": pid1, "visible": sorted(f"{pid} {comm}" for pid, comm, _
                                                               in seen)}
    if not seen:
        result.update(ok=False, detail="the probe printed no process at all")
    elif pid1 != INIT_COMM:
        result.update(ok=False, detail=f"PID 1 in the session is {pid1!r}, not {INIT_COMM!r}: "
                      "the session has no PID namespace of its own")
    elif any((comm, start) == (o[1], o[2]) for o in outsiders if o for _, comm, start in seen):
        result.update(ok=False, detail="a process outside the session (the host's PID 1 or the "
                      "process that opened it) is visible inside it")
    elif len(seen) > MAX_VISIBLE:
        result.update(ok=False, detail=f"the session sees {len(seen)} processes")
    else:
        result.update(ok=True, detail=f"PID 1 is {INIT_COMM}, {len(seen)} processes visible, "
                      "the host's are not")
    return result


def module_path() -> str | None:
    for pattern in MODULE_GLOBS:
        for path in sorted(glob.glob(pattern)):
            return path
    return None


def journal_since(started: float) -> List[str]:
    """The module's log lines since STARTED, for the failure message."""
    if shutil.which("journalctl") is None:
        return []
    res = subprocess.run(["journalctl", "-q", "--no-pager", "-o", "cat",
                          f"--since=@{started:.6f}"], capture_output=True, text=True,
                         timeout=30)
    return [line for line in res.stdout.splitlines() if "pam_unshare" in line][-10:]


def test_load(path: str | None = None) -> Dict[str, Any]:
    path = path or module_path()
    if path is None:
        return {"ok": False, "detail": "pam_unshare.so is not in any PAM module directory"}
    if not os.path.isabs(path) or not os.path.isfile(path):
        return {"ok": False, "module": path, "detail": f"{path} is not a file"}
    try:
        lib = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
        lib.pam_sm_open_session  # noqa: B018 - raises AttributeError if not exported
        lib.pam_sm_close_session  # noqa: B018
    except (OSError, AttributeError) as error:
        return {"ok": False, "module": path, "detail": f"{path} does not load: {error}"}
    return {"ok": True, "module": path, "detail": f"{path} loads and exports pam_sm_*"}


class PamMessage(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class PamResponse(ctypes.Structure):
    _fields_ = [("resp", ctypes.c_char_p), ("resp_retcode", ctypes.c_int)]


CONV_FUNC = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int,
                             ctypes.POINTER(ctypes.POINTER(PamMessage)),
                             ctypes.POINTER(ctypes.POINTER(PamResponse)), ctypes.c_void_p)


class PamConv(ctypes.Structure):
    _fields_ = [("conv", CONV_FUNC), ("appdata_ptr", ctypes.c_void_p)]


def _no_conversation(_n: int, _msg: Any, _resp: Any, _data: Any) -> int:
    return PAM_CONV_ERR  # a session module has nothing to ask


def _pam_child(libpam: ctypes.CDLL, user: str, confdir: str, out: int) -> int:
    """In a child of its own (the module moves its caller into the session's namespaces):
    open a session, fork the probe inside it, close the session. Writes JSON to OUT."""
    signal.alarm(TIMEOUT)
    libpam.pam_strerror.restype = ctypes.c_char_p
    libpam.pam_strerror.argtypes = [ctypes.c_void_p, ctypes.c_int]
    conv = PamConv(CONV_FUNC(_no_conversation), None)
    pamh = ctypes.c_void_p()
    report: Dict[str, Any] = {}
    rc = libpam.pam_start_confdir(SERVICE.encode(), user.encode(), ctypes.byref(conv),
                                  confdir.encode(), ctypes.byref(pamh))
    if rc != 0:
        report = {"failed": f"pam_start_confdir: {libpam.pam_strerror(None, rc).decode()}"}
    else:
        rc = libpam.pam_open_session(pamh, 0)
        if rc != 0:
            report = {"failed": "pam_open_session refused the session: "
                      + libpam.pam_strerror(pamh, rc).decode()}
        else:
            read_end, write_end = os.pipe()
            probe = os.fork()
            if probe == 0:  # the first child born in the session's PID namespace
                os.close(read_end)
                os.write(write_end, read_all_stats().encode())
                os._exit(0)
            os.close(write_end)
            with os.fdopen(read_end) as f:
                report = {"probe": f.read()}
            os.waitpid(probe, 0)
            rc = libpam.pam_close_session(pamh, 0)
            if rc != 0:
                report["failed"] = ("pam_close_session: "
                                    + libpam.pam_strerror(pamh, rc).decode())
        libpam.pam_end(pamh, rc)
    os.write(out, json.dumps(report).encode())
    return 0


def test_pam(user: str, options: Sequence[str], module: str | None = None) -> Dict[str, Any]:
    loaded = test_load(module)
    if not loaded["ok"]:
        return loaded
    libpam = ctypes.CDLL("libpam.so.0", use_errno=True)
    if not hasattr(libpam, "pam_start_confdir"):
        return {"ok": None, "detail": "libpam has no pam_start_confdir (libpam < 1.4): the "
                "session through a service of the test's own cannot run here"}
    confdir = tempfile.mkdtemp(prefix="pam-unshare-selftest.")
    try:
        line = " ".join(["session", "required", loaded["module"], *options])
        with open(os.path.join(confdir, SERVICE), "w") as f:
            f.write(line + "\n")
        started = time.time()
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:
            code = 1
            try:
                os.close(read_end)
                code = _pam_child(libpam, user, confdir, write_end)
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end) as f:
            text = f.read()
        _, status = os.waitpid(child, 0)
    finally:
        shutil.rmtree(confdir, ignore_errors=True)
    result: Dict[str, Any] = {"module": loaded["module"], "service_line": line}
    try:
        report = json.loads(text)
    except ValueError:
        report = {"failed": f"the session's process died (wait status {status})"}
    if "probe" in report:
        result.update(judge(report["probe"], [own_stat(1), own_stat(os.getpid())]))
    if "failed" in report:
        result.update(ok=False, detail=report["failed"])
    if not result.get("ok"):
        result["log"] = journal_since(started)
    return result


def test_command(argv: List[str]) -> Dict[str, Any]:
    started = time.time()
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "detail": f"{argv[0]} did not finish within {TIMEOUT} s",
                "log": journal_since(started)}
    if res.returncode != 0:
        result = {"ok": False, "detail": f"{argv[0]} exited with status {res.returncode}: "
                  f"{res.stderr.strip()[-500:]}"}
    else:
        result = judge(res.stdout, [own_stat(1), own_stat(os.getpid())])
    if not result["ok"]:
        result["log"] = journal_since(started)
    return result


def main(argv: List[str]) -> int:
    test, args = (argv[0], argv[1:]) if argv else ("", [])
    module = None
    if args and args[0].startswith("--module="):
        module, args = args[0][len("--module="):], args[1:]
    if test not in ("load", "pam", "su", "sudo") or (test != "load" and not args) or (
            module is not None and test in ("su", "sudo")):
        print(__doc__, file=sys.stderr)
        return 2
    if test == "load":
        result = test_load(module)
    elif test == "pam":
        result = test_pam(args[0], args[1:], module)
    elif test == "su":  # the account after --: never read as an option
        result = test_command(["su", "-s", "/bin/sh", "-c", PROBE, "--", args[0]])
    else:
        result = test_command(["sudo", "-n", "-u", args[0], "--", "/bin/sh", "-c", PROBE])
    result["test"] = test
    print(json.dumps(result, sort_keys=True))
    return 1 if result["ok"] is False else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
