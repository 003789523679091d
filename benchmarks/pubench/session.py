"""One session at a time: the memory and idle CPU of its PID 1, and how fast it leaves at logout.

A held session runs `sleep` tagged with an environment variable (the tests' convention: other runs
share this machine, so a process is never picked by name alone). Its PID namespace comes from the
sleep, its PID 1 from the namespace.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Dict, List

from pam_unshare_testsupport import hostprocs

from pam_unshare.proc import INIT_COMM
from pubench import procs
from pubench.env import ENTRIES, BenchEnv

SLEEP = ["sleep", "600"]


@dataclass
class Held:
    entry: str
    process: subprocess.Popen
    sleeper: hostprocs.HostProcess
    namespace: int
    init: hostprocs.HostProcess | None


def open_held(env: BenchEnv, entry: str, background: bool = False) -> Held:
    """A session of ENTRY whose last process is a tagged `sleep 600`: the command itself
    (exec'd), or with BACKGROUND a job the shell leaves behind (nohup-style) before it exits."""
    tag = env.new_tag()
    job = f"env {hostprocs.tag_assignment(tag)} {' '.join(SLEEP)}"
    command = (f"setsid {job} </dev/null >/dev/null 2>&1 &" if background else f"exec {job}")
    process = subprocess.Popen(env.entry_argv(entry, command), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/")
    env.popens.append(process)
    if background:
        process.wait(timeout=60)
    sleepers = hostprocs.wait_for(lambda: [
        found for found in hostprocs.tagged(tag) if hostprocs.cmdline(found.pid) == SLEEP],
        interval=0.01)
    if len(sleepers) != 1:
        rc = process.poll()
        err = b"" if rc is None or process.stderr is None else process.stderr.read()
        raise RuntimeError(f"{entry}: the session did not start (rc {rc}): "
                           f"{err.decode(errors='replace')}")
    namespace = hostprocs.pid_namespace(sleepers[0].pid)
    if namespace is None:
        raise RuntimeError(f"{entry}: no PID namespace for {sleepers[0]}")
    env.remember_namespace(namespace)
    return Held(entry, process, sleepers[0], namespace, hostprocs.namespace_init(namespace))


def close_held(env: BenchEnv, held: Held) -> None:
    hostprocs.kill(held.sleeper)
    try:
        held.process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        held.process.kill()
        held.process.communicate()
    init = held.init
    if init is not None:
        # Reaping while waiting: PID 1 stays until sshd's session child, re-parented to us, is.
        hostprocs.wait_for(lambda: env.reap() < 0 or not hostprocs.is_present(init),
                           interval=0.01)
    env.reap()
    env.popens.remove(held.process)


def _helpers(held: Held, uid: int) -> List[Dict[str, object]]:
    """Processes the module keeps for the session besides its PID 1: anything in the namespace
    that is neither PID 1 nor the user's own."""
    found = []
    for process in hostprocs.in_namespace(held.namespace):
        if process.is_namespace_init:
            continue
        owner = int(hostprocs.status_fields(process.pid)["Uid"].split()[0])
        if owner != uid:
            memory = procs.smaps_rollup(process.pid)
            found.append({"pid": process.pid, "comm": process.comm,
                          "pss_kib": memory.get("Pss"), "rss_kib": memory.get("Rss")})
    return found


def memory_and_cpu(env: BenchEnv, idle_seconds: float) -> Dict[str, object]:
    """PID 1's Pss and Rss per entry path (each session measured alone, so no page is shared with
    another session's PID 1), then the CPU all three PID 1s use while idle together."""
    env.set_mode(True)
    memory: Dict[str, object] = {}
    for entry in ENTRIES:
        held = open_held(env, entry)
        try:
            if held.init is None or held.init.comm != INIT_COMM:
                memory[entry] = {"error": f"no session PID 1 (found {held.init})"}
                continue
            rollup = procs.smaps_rollup(held.init.pid)
            memory[entry] = {
                "pss_kib": rollup["Pss"], "rss_kib": rollup["Rss"],
                "pss_anon_kib": rollup.get("Pss_Anon"), "pss_file_kib": rollup.get("Pss_File"),
                "private_kib": rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0),
                "vmsize_kib": int(hostprocs.status_fields(held.init.pid)["VmSize"].split()[0]),
                "helpers": _helpers(held, env.uid),
                "cmdline": hostprocs.cmdline(held.init.pid),
            }
        finally:
            close_held(env, held)

    sessions = [open_held(env, entry) for entry in ENTRIES]
    try:
        time.sleep(1)  # past the session's start
        before = {held.entry: procs.cpu_use(held.init.pid) for held in sessions if held.init}
        time.sleep(idle_seconds)
        after = {held.entry: procs.cpu_use(held.init.pid) for held in sessions if held.init}
        cpu = {entry: {"ticks": used.ticks, "run_us": round(used.run_ns / 1000, 1),
                       "context_switches": used.switches}
               for entry, used in ((e, after[e].minus(before[e])) for e in after)}
    finally:
        for held in sessions:
            close_held(env, held)
    return {"memory": memory, "idle_seconds": idle_seconds, "idle_cpu": cpu,
            "clock_ticks_per_second": os.sysconf("SC_CLK_TCK")}


def _logout_once(env: BenchEnv, scenario: str) -> Dict[str, float | None]:
    """SIGKILLs the session's last process; times, in ms from that signal, its exit, the caller
    (su) exiting, PID 1 having exited (PF_EXITING) and PID 1 being gone (its pidfd readable).
    Each time is when this process saw it (pidfds polled with a 1 ms timeout): an upper bound."""
    background = scenario == "nohup job"
    held = open_held(env, "su", background=background)
    pids = {"last": held.sleeper.pid}
    if not background:
        pids["su"] = held.process.pid
    if held.init is not None:
        pids["init"] = held.init.pid
    watch = procs.ExitWatch(pids)
    try:
        killed = time.perf_counter_ns()
        signal.pidfd_send_signal(watch.fds["last"], signal.SIGKILL)
        complete = watch.wait(pids, timeout=30)
    finally:
        watch.close()
        close_held(env, held)

    def since_kill(times: Dict[str, int], name: str) -> float | None:
        return round((times[name] - killed) / 1e6, 3) if name in times else None

    return {"last_exit_ms": since_kill(watch.exited_ns, "last"),
            "su_exit_ms": since_kill(watch.exited_ns, "su"),
            "init_exiting_ms": since_kill(watch.exiting_ns, "init"),
            "init_gone_ms": since_kill(watch.exited_ns, "init"),
            "complete": complete}


LOGOUT_SCENARIOS = {
    # name: (module on, options, what ends)
    "command exits, module off": (False, ()),
    "command exits": (True, ()),
    "command exits, on_logout=kill": (True, ("on_logout=kill",)),
    "nohup job": (True, ()),
}


def logout(env: BenchEnv, sessions: int) -> Dict[str, object]:
    """Per scenario, SESSIONS su sessions, one at a time: the medians of _logout_once()."""
    out: Dict[str, object] = {}
    for scenario, (on, options) in LOGOUT_SCENARIOS.items():
        env.set_mode(on, options)
        runs = [_logout_once(env, scenario) for _ in range(sessions)]
        summary: Dict[str, object] = {"sessions": sessions,
                                      "incomplete": sum(not run["complete"] for run in runs)}
        for key in ("last_exit_ms", "su_exit_ms", "init_exiting_ms", "init_gone_ms"):
            values = sorted(run[key] for run in runs if run[key] is not None)
            if values:
                summary[key] = {"median": round(statistics.median(values), 3),
                                "max": values[-1], "values": values}
        out[scenario] = summary
    env.set_mode(True)
    return out
