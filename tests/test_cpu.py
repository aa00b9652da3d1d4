"""The daemon's threads under the batch CPU scheduling policy (edge.daemon.cpu): in a thread of
this process, and in a real `edge run` process, thread by thread."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from edge.daemon import cpu
from tests.daemon_process import DaemonProcess

pytestmark = pytest.mark.skipif(
    not hasattr(os, "SCHED_BATCH"), reason="CPU scheduling policies are Linux's"
)


def _in_a_thread(body: Any) -> Any:
    """``body()``'s value, run in a new thread (so this one's policy is never changed)."""
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(body()))
    thread.start()
    thread.join(10)
    return got[0]


def test_batch_puts_the_calling_thread_under_sched_batch_and_its_children_inherit() -> None:
    def body() -> tuple[str, int, int]:
        applied = cpu.apply("batch")
        child = _in_a_thread(lambda: os.sched_getscheduler(0))
        return applied, os.sched_getscheduler(0), child

    assert _in_a_thread(body) == ("batch", os.SCHED_BATCH, os.SCHED_BATCH)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # this thread untouched


def test_inherit_changes_nothing() -> None:
    assert _in_a_thread(lambda: (cpu.apply("inherit"), os.sched_getscheduler(0))) == (
        "other",
        os.SCHED_OTHER,
    )


def test_a_thread_started_under_another_policy_keeps_it() -> None:
    def body() -> tuple[str, int]:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return cpu.apply("batch"), os.sched_getscheduler(0)

    assert _in_a_thread(body) == ("idle", os.SCHED_IDLE)


def test_a_refused_policy_is_logged_and_the_thread_serves_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*_: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    assert _in_a_thread(lambda: cpu.apply("batch")) == "other"
    err = capsys.readouterr()
    said = err.out + err.err
    assert "cannot put a thread under the batch CPU scheduling policy" in said
    assert "Operation not permitted" in said


def test_threads_started_in_the_block_inherit_batch_and_the_caller_gets_its_own_back() -> None:
    def body() -> tuple[str, list[int], int]:
        context = zmq.Context()
        before = set(os.listdir("/proc/self/task"))
        try:
            with cpu.for_threads_started_here("batch") as got:
                context.socket(zmq.PUB).close(linger=0)  # libzmq starts its threads here
            started = [int(t) for t in set(os.listdir("/proc/self/task")) - before]
            return got, [os.sched_getscheduler(t) for t in started], os.sched_getscheduler(0)
        finally:
            context.term()

    got, started, caller = _in_a_thread(body)
    assert got == "batch" and started and set(started) == {os.SCHED_BATCH}, started
    assert caller == os.SCHED_OTHER


def _policies(pid: int) -> dict[str, set[str]]:
    """Each thread name of process ``pid`` -> the policies its threads run under."""
    found: dict[str, set[str]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            found.setdefault(name, set()).add(cpu._NAMES[os.sched_getscheduler(int(task.name))])
        except (OSError, KeyError):
            continue  # a thread that just ended
    return found


def _wait_for_threads(daemon: DaemonProcess, names: set[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not names <= set(_policies(daemon.pid)):
        assert daemon.poll() is None, daemon.stderr
        assert time.monotonic() < deadline, (sorted(_policies(daemon.pid)), daemon.stderr)
        time.sleep(0.1)


ROLES = {"receiver", "publisher", "inference-0", "finishing-0", "ZMQbg/IO/0"}


def test_a_real_daemons_threads_run_under_batch_and_its_main_thread_does_not(
    tiny_repo: Path,
) -> None:
    with DaemonProcess(tiny_repo) as daemon:
        daemon.listener().start(first_within_s=60)  # ready: every thread started
        _wait_for_threads(daemon, ROLES)
        policies = _policies(daemon.pid)
        assert all(policies[role] == {"batch"} for role in ROLES), policies
        # The main thread (its tid is the pid) keeps the policy it was started with.
        assert os.sched_getscheduler(daemon.pid) == os.SCHED_OTHER
        assert '"cpu_scheduling": "batch"' in daemon.stderr


def test_inherit_leaves_a_real_daemons_threads_as_started(tiny_repo: Path) -> None:
    with DaemonProcess(tiny_repo, config='cpu_scheduling = "inherit"\n') as daemon:
        daemon.listener().start(first_within_s=60)
        _wait_for_threads(daemon, ROLES)
        policies = _policies(daemon.pid)
        assert all(p == {"other"} for p in policies.values()), policies
        assert '"cpu_scheduling": "other"' in daemon.stderr
