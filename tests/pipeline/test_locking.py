"""File locks between real processes: the holder is named, a waiter gives up at its deadline, and a holder
killed with -9 never blocks anyone."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.locking import LockBusy, file_lock, holder_of

HOLD = """
import sys, time
from pipeline.locking import file_lock
with file_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder_process(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.stdout.readline().strip() == "held"  # the condition, not a sleep: it has the lock now
    return proc


def test_a_busy_lock_names_its_holder_and_the_waiter_gives_up_at_its_deadline(tmp_path):
    path = tmp_path / "x.lock"
    proc = _holder_process(path)
    try:
        with pytest.raises(LockBusy) as busy:
            with file_lock(path):
                pass
        assert busy.value.holder.startswith(f"pid {proc.pid} on ")
        waits = []
        started = time.monotonic()
        with pytest.raises(LockBusy):
            with file_lock(path, timeout_s=0.5, on_wait=waits.append):
                pass
        assert 0.5 <= time.monotonic() - started < 10 and len(waits) == 1 and waits[0].startswith("pid ")
    finally:
        proc.kill()
        proc.wait(30)


def test_a_holder_killed_with_9_frees_the_lock(tmp_path):
    path = tmp_path / "x.lock"
    proc = _holder_process(path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    with file_lock(path, timeout_s=10):
        assert holder_of(path).startswith(f"pid {os.getpid()} on ")
