"""Progress bars for people: tqdm on a terminal, one plain log line every 10 % or 30 s elsewhere.

tqdm redraws its bar with carriage returns; in a task log or a pod's log (not a TTY) every redraw becomes a
line of its own, hundreds per epoch. `progress(iterable, desc=..., total=...)` keeps tqdm where it renders
and prints periodic lines with the rate and ETA where it does not.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator

log = logging.getLogger("pipeline.progress")

EVERY_FRACTION = 0.10  # a line every 10 % of the total ...
EVERY_SECONDS = 30.0  # ... or every 30 s, whichever comes first


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(iterable: Iterable, *, desc: str = "", total: int | None = None, initial: int = 0,
             disable: bool = False, unit: str = "it", stream=None, **tqdm_kwargs):
    """tqdm when `stream` (default stderr) is a terminal, else a PeriodicProgress logging plain lines."""
    stream = stream if stream is not None else sys.stderr
    if _is_tty(stream):
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, initial=initial, disable=disable, unit=unit, file=stream,
                    **tqdm_kwargs)
    return PeriodicProgress(iterable, desc=desc, total=total, initial=initial, disable=disable, unit=unit)


class PeriodicProgress:
    """Iterate `iterable`, logging `desc: n/total unit (p %), rate, ETA[, postfix]` every EVERY_FRACTION of
    the total or EVERY_SECONDS, and once at the end. Has tqdm's set_postfix() and close()."""

    def __init__(self, iterable: Iterable, *, desc: str = "", total: int | None = None, initial: int = 0,
                 disable: bool = False, unit: str = "it", every_fraction: float = EVERY_FRACTION,
                 every_seconds: float = EVERY_SECONDS, clock=time.monotonic, logger: logging.Logger = log):
        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total, self.n, self.initial = total, initial, initial
        self.every_n = max(1, round(total * every_fraction)) if total else None
        self.every_seconds, self.clock, self.logger = every_seconds, clock, logger
        self.postfix = ""
        self.started = self.last_time = clock()
        self.last_n = initial
        self.closed = False

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        done = self.n - self.initial
        rate = done / elapsed
        parts = [f"{self.n}/{self.total}" if self.total else str(self.n)]
        if self.total:
            parts[0] += f" {self.unit} ({100 * self.n / self.total:.0f} %)"
        else:
            parts[0] += f" {self.unit}"
        parts.append(f"{elapsed:.0f} s elapsed, {rate:.2f} {self.unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {(self.total - self.n) / rate:.0f} s")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: " + ", ".join(parts) if self.desc else ", ".join(parts)

    def _maybe_print(self) -> None:
        now = self.clock()
        due_n = self.every_n is not None and self.n - self.last_n >= self.every_n
        if due_n or now - self.last_time >= self.every_seconds:
            self.logger.info("%s", self.line())
            self.last_n, self.last_time = self.n, now

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.n += 1
            if not self.disable:
                self._maybe_print()
        self.close()

    def close(self) -> None:
        if not self.closed and not self.disable and self.n != self.last_n:
            self.logger.info("%s", self.line())
            self.last_n = self.n
        self.closed = True
