"""The Linux scheduling policy of the daemon's threads, and why it is ``batch``.

A frame goes from thread to thread: ZeroMQ's I/O thread, the receiver, an inference worker, the
publisher, and ZeroMQ's I/O thread again for its event. Each hand-off wakes a thread that needs
the GIL. Under the kernel's default policy (``SCHED_OTHER``) the woken thread often preempts the
one that woke it on the spot, while that one still holds the GIL; it then blocks on the GIL, and
the two swap back once the GIL is let go. ``perf record -e sched:sched_switch`` on the daemon at
300 clean strips/s: a third of the receiver's and the worker's context switches were such
preemptions, and as many again were waits for the GIL. Under ``SCHED_BATCH`` a woken thread
does not preempt a running one: it runs when the waker blocks (every thread here blocks right
after its hand-off), at the next scheduler tick, or at once on an idle core. Measured on 2
vCPUs with null models, the policy switched back and forth inside one running daemon
(docs/performance.md): context switches per clean strip 7.5 -> 4.7, the daemon's CPU per strip
9-10 % lower at 300 clean strips/s, 3 % at 40 all-defective ones, 6 % on a 20 % defective mix at
800/s, and at 900/s fewer frames shed in each of three rounds.

``inherit`` leaves every thread as the process was started (systemd's ``CPUSchedulingPolicy=``).
Only threads under the default policy are changed: one started as realtime, idle or batch keeps
what it was given.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Literal

import structlog

log = structlog.get_logger(__name__)

CpuScheduling = Literal["batch", "inherit"]
# The names systemd's CPUSchedulingPolicy= uses, for the log.
_NAMES = {
    getattr(os, attr): name
    for attr, name in (
        ("SCHED_OTHER", "other"),
        ("SCHED_BATCH", "batch"),
        ("SCHED_IDLE", "idle"),
        ("SCHED_FIFO", "fifo"),
        ("SCHED_RR", "rr"),
    )
    if hasattr(os, attr)
}


def policy_name() -> str:
    """The policy the calling thread runs under, as systemd names it."""
    if not hasattr(os, "sched_getscheduler"):
        return "unknown"
    return _NAMES.get(os.sched_getscheduler(0), "unknown")


def apply(policy: CpuScheduling) -> str:
    """Put the calling thread under ``policy``; the policy it then has.

    A failure is logged, never raised: the daemon serves under the default policy too, only with
    more context switches per strip.
    """
    if policy == "inherit" or not hasattr(os, "SCHED_BATCH"):
        return policy_name()
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            return policy_name()
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as err:
        log.warning("cannot put a thread under the batch CPU scheduling policy; it runs under "
                    "the kernel's default (more context switches per strip)",
                    thread=threading.current_thread().name, error=str(err), throttle=True)  # fmt: skip
    return policy_name()


@contextlib.contextmanager
def for_threads_started_here(policy: CpuScheduling) -> Iterator[str]:
    """Run the block with the calling thread under ``policy``, so that threads started in it
    inherit it (libzmq's, which it starts with a context's first socket); the calling thread's
    own policy is put back after. Yields the policy the block ran under."""
    if policy == "inherit" or not hasattr(os, "SCHED_BATCH"):
        yield policy_name()
        return
    before, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield apply(policy)
    finally:
        if os.sched_getscheduler(0) != before:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, before, param)
