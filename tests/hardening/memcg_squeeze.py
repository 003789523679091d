"""Run as an ordinary user who may write a memory cgroup's limit (v1; as systemd delegates the
controller): holds GROUP at the memory it uses, again and again, until killed. Each round sets
the limit below the usage as far as the kernel lets it (the write drains the per-CPU stock of
pre-charged pages, which would otherwise absorb small kernel allocations), holds it for 20 ms,
then lifts it for 1 ms so that processes waiting for memory go on (the OOM killer is off).
Meanwhile the kernel's allocations charged to GROUP fail with ENOMEM."""

from __future__ import annotations

import sys
import time

STEPS_BELOW = (512 << 10, 256 << 10, 128 << 10, 64 << 10, 0)


def main() -> None:
    group = sys.argv[1]
    limit = f"{group}/memory.limit_in_bytes"
    with open(f"{group}/memory.oom_control", "w") as oom_control:
        oom_control.write("1")
    while True:
        with open(f"{group}/memory.usage_in_bytes") as usage_file:
            usage = int(usage_file.read())
        for below in STEPS_BELOW:
            try:
                with open(limit, "w") as limit_file:
                    limit_file.write(str(max(usage - below, 4096)))
                break
            except OSError:  # EBUSY: the group cannot be reclaimed that far
                continue
        time.sleep(0.02)
        with open(limit, "w") as limit_file:
            limit_file.write("-1")
        time.sleep(0.001)


if __name__ == "__main__":
    main()
