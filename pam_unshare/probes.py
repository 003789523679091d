"""The channel probes: every way a user might see another user's process, as one POSIX sh script
that runs inside a session as that user, and the parser of what it prints.

`pam-unshare verify`, the isolation suite (tests/isolation) and the Ansible role's self-test all
run this one script, so that a channel added here is probed everywhere.

The script takes the foreign process as environment variables, never as arguments:

    PU_PID          its PID on the host
    PU_SECRET_HEAD  the first part of a word on its command line
    PU_SECRET_TAIL  the rest of that word
    PU_UNIT         its systemd unit (e.g. pu-verify-x.scope), or empty

The secret arrives in two halves so that no command line of the probe (its shell, or a `su -c`
that starts it) holds the whole word: a probe that saw its own command line would report a leak
that is not there. For the same reason the script compares text with `case`, a shell builtin,
and never passes the secret to grep.

It prints one line per channel, in CHANNELS order:

    CHANNEL <TAB> closed|OPEN|n/a <TAB> evidence

OPEN: the channel shows the foreign process (its secret, or its PID as a process that is neither
the user's nor root's). n/a: the channel does not exist here (systemd is not PID 1, the tool is
missing, there is no user manager); the evidence says which. Every command that could block runs
under `timeout 20`, so a probe always ends.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Sequence

CHANNELS = ("ps", "proc-list", "proc-files", "other-procfs", "cgroup", "kill",
            "systemctl-status", "loginctl", "GetUnitProcesses", "systemd-run-user")
# Channels that root, outside any session, must see through: if it does not, the probe (or the
# foreign process) is broken and every "closed" proves nothing.
CONTROL_CHANNELS = ("ps", "proc-list")
CLOSED, OPEN, NOT_APPLICABLE = "closed", "OPEN", "n/a"
VERDICTS = (CLOSED, OPEN, NOT_APPLICABLE)
# Per command: long enough for systemd on an emulated VM, short enough that a hung bus call
# cannot hang the probe.
TIMEOUT_SECONDS = 20

SCRIPT = r"""
pid=${PU_PID:?}
secret=$PU_SECRET_HEAD$PU_SECRET_TAIL
unit=${PU_UNIT:-}
me=$(id -u)
[ -n "$PU_SECRET_HEAD" ] && [ -n "$PU_SECRET_TAIL" ] || { echo "probe: no secret" >&2; exit 2; }
if timeout --foreground 5 true 2>/dev/null; then
    # In the probe's process group: a signal to the group (verify interrupted) reaches it.
    t() { timeout --foreground @TIMEOUT@ "$@"; }
elif command -v timeout >/dev/null 2>&1; then
    t() { timeout @TIMEOUT@ "$@"; }
else
    t() { "$@"; }
fi
say() {  # CHANNEL VERDICT EVIDENCE: evidence on one printable line
    printf '%s\t%s\t%s\n' "$1" "$2" "$(printf '%s' "$3" | tr -c '[:print:]' ' ' | cut -c1-200)"
}
has() { case $1 in *"$secret"*) return 0 ;; esac; return 1; }
line_with() {  # TEXT: its first line holding the secret
    printf '%s\n' "$1" | while IFS= read -r l; do
        case $l in *"$secret"*) printf '%s' "$l"; break ;; esac
    done
}
theirs() {  # DIR: a /proc/PID directory of a process that is neither ours nor root's
    [ -e "$1" ] || return 1
    o=$(stat -c %u "$1" 2>/dev/null) || return 0
    [ "$o" != "$me" ] && [ "$o" != 0 ]
}
same_number() {  # /proc/PID is a process of this session that happens to carry the number
    [ -e "/proc/$pid" ] && ! theirs "/proc/$pid"
}
systemd_here() { [ -d /run/systemd/system ]; }

ch_ps() {
    command -v ps >/dev/null 2>&1 || { say ps n/a "no ps"; return; }
    out=$(t ps -eww -o pid=,user=,args= 2>&1)
    if has "$out"; then say ps OPEN "$(line_with "$out")"; return; fi
    row=$(printf '%s\n' "$out" | awk -v p="$pid" '$1 == p')
    if [ -n "$row" ] && theirs "/proc/$pid"; then say ps OPEN "$row"; return; fi
    say ps closed "$(printf '%s\n' "$out" | grep -c .) processes listed, not $pid"
}

ch_proc_list() {
    if theirs "/proc/$pid"; then
        say proc-list OPEN "/proc/$pid exists, owner uid $(stat -c %u "/proc/$pid" 2>/dev/null)"
    elif same_number; then
        say proc-list closed "/proc/$pid is a process of ours or root's (same number)"
    else
        say proc-list closed "no /proc/$pid"
    fi
}

ch_proc_files() {
    c=$(t tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline")
    if has "$c"; then say proc-files OPEN "/proc/$pid/cmdline: $c"; return; fi
    if theirs "/proc/$pid" && t cat "/proc/$pid/environ" >/dev/null 2>&1; then
        say proc-files OPEN "/proc/$pid/environ readable"; return
    fi
    say proc-files closed "/proc/$pid/cmdline and environ show nothing of it"
}

ch_other_procfs() {
    mounts=$(t awk '{ for (i = 7; i <= NF; i++) if ($i == "-") {
                          if ($(i + 1) == "proc" && $5 != "/proc") print $5; break } }' \
             /proc/self/mountinfo 2>/dev/null)
    n=0
    found=""
    nl='
'
    old_ifs=$IFS
    IFS=$nl
    for raw in $mounts; do
        IFS=$old_ifs
        m=$(printf '%b' "$raw")  # mountinfo writes a blank as \040
        n=$((n + 1))
        if theirs "$m/$pid"; then found="$m/$pid exists"; break; fi
        c=$(t cat "$m"/[0-9]*/cmdline 2>/dev/null | tr '\0' ' ')
        if has "$c"; then found="$m: a command line shows it"; break; fi
    done
    IFS=$old_ifs
    if [ -n "$found" ]; then say other-procfs OPEN "$found"
    elif [ "$n" = 0 ]; then say other-procfs closed "no procfs mounted besides /proc"
    else say other-procfs closed "$n other procfs mounts show nothing of it"
    fi
}

ch_cgroup() {
    [ -d /sys/fs/cgroup ] || { say cgroup n/a "no /sys/fs/cgroup"; return; }
    hit=$(t find /sys/fs/cgroup -name cgroup.procs -exec grep -lx "$pid" {} + 2>/dev/null |
          head -n 1)
    if [ -z "$hit" ]; then say cgroup closed "no cgroup.procs lists $pid"
    elif same_number; then say cgroup closed "$hit lists $pid, a process of ours or root's"
    else say cgroup OPEN "$hit lists $pid"
    fi
}

ch_kill() {
    if same_number; then say kill closed "$pid is a process of ours or root's"; return; fi
    if out=$(kill -0 "$pid" 2>&1); then say kill OPEN "kill -0 $pid succeeded"; return; fi
    case $out in
        *"No such process"*) say kill closed "kill -0 $pid: No such process" ;;
        *) say kill OPEN "kill -0 $pid: $out" ;;
    esac
}

no_systemd() {  # CHANNEL TOOL: says n/a and succeeds when the channel does not exist here
    if ! systemd_here; then say "$1" n/a "systemd is not PID 1"; return 0; fi
    if ! command -v "$2" >/dev/null 2>&1; then say "$1" n/a "no $2"; return 0; fi
    return 1
}

no_bus() {  # TEXT: the tool could not reach systemd at all
    case $1 in *"Failed to connect to bus"*|*"not been booted with systemd"*) return 0 ;; esac
    return 1
}

ch_systemctl_status() {
    no_systemd systemctl-status systemctl && return
    for try in 1 2 3; do
        out=$(t systemctl status --no-pager --full --lines=0 2>&1)
        [ -n "$unit" ] && out="$out
$(t systemctl status --no-pager --full --lines=0 "$unit" 2>&1)"
        if has "$out"; then say systemctl-status OPEN "$(line_with "$out")"; return; fi
        # systemd gives up on the whole tree when a process exits while it reads it: try again,
        # unless it refused (the D-Bus policy), which it does every time.
        case $out in
            *"Access denied"*) break ;;
            *"Failed to dump process list"*) sleep 1 ;;
            *) break ;;
        esac
    done
    if no_bus "$out"; then say systemctl-status n/a "$(printf '%s' "$out" | head -n 1)"
    else case $out in
        *"Access denied"*) say systemctl-status closed "process lists refused: Access denied" ;;
        *) say systemctl-status closed "no process list shows it" ;;
    esac fi
}

ch_loginctl() {
    no_systemd loginctl loginctl && return
    out=""
    for s in $(t loginctl list-sessions --no-legend 2>/dev/null | awk '{print $1}'); do
        out="$out$(t loginctl session-status --no-pager --full "$s" 2>&1)
"
    done
    for u in $(t loginctl list-users --no-legend 2>/dev/null | awk '{print $1}'); do
        out="$out$(t loginctl user-status --no-pager --full "$u" 2>&1)
"
    done
    if has "$out"; then say loginctl OPEN "$(line_with "$out")"
    else say loginctl closed "no session-status or user-status shows it"
    fi
}

ch_get_unit_processes() {
    no_systemd GetUnitProcesses busctl && return
    [ -n "$unit" ] || { say GetUnitProcesses n/a "the foreign process is in no unit"; return; }
    out=$(t busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 \
          org.freedesktop.systemd1.Manager GetUnitProcesses s "$unit" 2>&1)
    if has "$out"; then say GetUnitProcesses OPEN "$(line_with "$out")"
    elif no_bus "$out"; then say GetUnitProcesses n/a "$out"
    else say GetUnitProcesses closed "$out"
    fi
}

ch_systemd_run_user() {
    no_systemd systemd-run-user systemd-run && return
    [ -n "${XDG_RUNTIME_DIR:-}" ] || XDG_RUNTIME_DIR=/run/user/$me
    export XDG_RUNTIME_DIR
    if out=$(t systemd-run --user --pipe --quiet ps -eww -o pid=,user=,args= 2>&1 </dev/null)
    then
        if has "$out"; then say systemd-run-user OPEN "$(line_with "$out")"
        else say systemd-run-user closed "the user manager's ps: $(printf '%s\n' "$out" |
                                          grep -c .) processes, not it"
        fi
    elif has "$out"; then say systemd-run-user OPEN "$(line_with "$out")"
    else say systemd-run-user n/a "no user manager: $(printf '%s' "$out" | head -n 1)"
    fi
}

ch_ps
ch_proc_list
ch_proc_files
ch_other_procfs
ch_cgroup
ch_kill
ch_systemctl_status
ch_loginctl
ch_get_unit_processes
ch_systemd_run_user
""".replace("@TIMEOUT@", str(TIMEOUT_SECONDS))


class ProbeError(RuntimeError):
    """The probe did not report every channel: it failed, or its output was cut."""


@dataclass(frozen=True)
class ChannelResult:
    channel: str
    verdict: str  # closed, OPEN or n/a
    evidence: str

    @property
    def open(self) -> bool:
        return self.verdict == OPEN

    def as_dict(self) -> Dict[str, str]:
        return asdict(self)


def environment(pid: int, secret: str, unit: str | None = None) -> Dict[str, str]:
    """The variables the script reads (see the module's docstring)."""
    if len(secret) < 2:
        raise ValueError("the secret must have at least two characters")
    middle = len(secret) // 2
    return {"PU_PID": str(pid), "PU_SECRET_HEAD": secret[:middle],
            "PU_SECRET_TAIL": secret[middle:], "PU_UNIT": unit or ""}


def shell_command(pid: int, secret: str, unit: str | None, script_path: str) -> str:
    """A shell command line that runs the script stored at SCRIPT_PATH (for `su -c`, ssh, ...).
    It holds the secret only in halves."""
    variables = environment(pid, secret, unit)
    return "env " + " ".join(f"{key}={shlex.quote(value)}" for key, value in variables.items()) \
        + f" sh {shlex.quote(script_path)} </dev/null"


def argv() -> List[str]:
    """The script as an argv for exec, with environment() in its environment."""
    return ["/bin/sh", "-c", SCRIPT, "pam-unshare-probe"]


def parse(output: str, channels: Sequence[str] = CHANNELS) -> List[ChannelResult]:
    """The records in OUTPUT, one per channel in CHANNELS order. Lines that are not a probe's
    (a login banner, a terminal's echo) are ignored; a channel missing from OUTPUT raises
    ProbeError."""
    found: Dict[str, ChannelResult] = {}
    for line in output.replace("\r", "").splitlines():
        fields = line.split("\t", 2)
        if len(fields) != 3:
            continue
        channel, verdict, evidence = fields
        # Through a pty, echoed control characters can precede the first line.
        channel = next((name for name in channels if channel.endswith(name)), "")
        if channel and verdict in VERDICTS and channel not in found:
            found[channel] = ChannelResult(channel, verdict, evidence.strip())
    missing = [name for name in channels if name not in found]
    if missing:
        raise ProbeError(f"the probe reported no verdict for {', '.join(missing)}: "
                         f"{output[-1500:]!r}")
    return [found[name] for name in channels]


def run(pid: int, secret: str, unit: str | None = None, user: int | None = None,
        extra_env: Mapping[str, str] | None = None, timeout: float = 600) -> List[ChannelResult]:
    """Runs the probe here (as USER, a uid, if given; as the caller otherwise) and parses it:
    the control run of `verify`, outside any session."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "LC_ALL": "C", **(extra_env or {}), **environment(pid, secret, unit)}
    result = subprocess.run(argv(), env=env, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, errors="replace", timeout=timeout, user=user)
    try:
        return parse(result.stdout)
    except ProbeError as error:
        raise ProbeError(f"{error} (exit status {result.returncode}, stderr "
                         f"{result.stderr[-500:]!r})") from None
