"""Keeping idle CPUs from halting while the daemon serves (``--keep-awake``, opt-in).

On a virtual machine an idle vCPU halts, and waking it for the next message costs the
hypervisor's wake-up latency, twice per round trip (the daemon's CPU for the request, the
client's for the reply). On the 2-vCPU development machine that was ~230 µs of a ~700 µs round
trip (benchmarks/RESULTS.md). The cure used by latency-critical services (``idle=poll``, the
haltpoll cpuidle governor, DPDK's polling) is not to halt; without root, this module gets the
same by running one spinner process per CPU under ``SCHED_IDLE``: the scheduler gives it only
cycles nobody else wants, so it delays no runnable thread, but the CPU never halts.

The price is that those CPUs show 100 % busy and draw power all the time: for a machine
dedicated to a hardware loop, not for a laptop on battery. Each spinner exits by itself when
the daemon is gone (it watches its parent), so a killed daemon leaves none behind.

``python -m hw_daemon.awake CPU PARENT_PID`` is one spinner.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable


def start(cpus: Iterable[int]) -> list[subprocess.Popen]:
    """One idle-priority spinner per CPU, children of this process."""
    procs = []
    for cpu in sorted(cpus):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "hw_daemon.awake", str(cpu), str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        )
    return procs


def stop(procs: Iterable[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def spin(cpu: int, parent: int) -> None:
    os.sched_setaffinity(0, {cpu})
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    while os.getppid() == parent:
        for _ in range(200_000):  # a few ms between looks at the parent
            pass


if __name__ == "__main__":
    spin(int(sys.argv[1]), int(sys.argv[2]))
