"""Inter-process locks on local files: an flock, which the kernel releases when its holder dies (kill -9
included), with the holder's pid, host and start time written into the file for whoever has to wait.

Used for one stage of one run at a time (RunContext.exclusive) and one DVC operation per DVC project
(datasets/dvc.repo_lock). Locks across machines (the Triton repository on S3) are leases instead:
pipeline/triton/repository.py.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator


class LockBusy(Exception):
    """Another process held the lock for longer than the caller would wait; `holder` says who."""

    def __init__(self, path: Path, holder: str):
        self.path, self.holder = path, holder
        super().__init__(f"{path}: held by {holder}")


def holder_of(path: Path) -> str:
    """Who holds (or last held) the lock at `path`, as its holder wrote it; "holder unknown" if unreadable."""
    try:
        return Path(path).read_text().strip() or "holder unknown"
    except OSError:
        return "holder unknown"


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float = 0.0, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing). Busy: retry every 0.1 s for `timeout_s` seconds
    (0 = not at all), calling `on_wait(holder)` once, then raise LockBusy naming the holder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a+") as fh:
        waited = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockBusy(path, holder_of(path)) from None
                if not waited and on_wait is not None:
                    on_wait(holder_of(path))
                waited = True
                time.sleep(0.1)
        fh.seek(0)
        fh.truncate()
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
