"""Progress bars: tqdm on a terminal, a plain line every 10 % or 30 s in a log."""
from __future__ import annotations

import io
import logging

from pipeline.training.progress import PeriodicProgress, progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_not_a_tty_prints_a_line_every_ten_percent(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    bar = progress(range(100), desc="epoch 1/6", unit="batch", stream=io.StringIO())
    assert isinstance(bar, PeriodicProgress)
    for i in bar:
        if i == 50:
            bar.set_postfix(loss="0.512")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10, lines  # 10 %, 20 %, ... 100 %: not one line per batch
    assert lines[0].startswith("epoch 1/6: 10/100 batch (10 %)") and "ETA" in lines[0]
    assert lines[-1].startswith("epoch 1/6: 100/100 batch (100 %)") and "loss=0.512" in lines[-1]
    assert all("\r" not in line for line in lines)


def test_slow_loops_print_every_thirty_seconds_too(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    clock = Clock()
    bar = PeriodicProgress(range(1000), desc="predict", clock=clock)
    for i in bar:
        clock.now += 7.0  # 7 s a step: 30 s pass long before 10 % (100 steps) do
        if i == 20:
            break
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert 4 <= len(lines) <= 6, lines  # ~147 s / 30 s, plus the closing line
    assert "ETA" in lines[0]


def test_disabled_and_resumed_bars():
    quiet = PeriodicProgress(range(10), disable=True, logger=logging.getLogger("test.quiet"))
    assert list(quiet) == list(range(10))
    resumed = PeriodicProgress(range(5), total=10, initial=5)
    assert list(resumed) == list(range(5)) and resumed.n == 10


def test_a_terminal_gets_tqdm():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    from tqdm import tqdm

    bar = progress(range(3), desc="x", stream=Tty())
    assert isinstance(bar, tqdm) and list(bar) == [0, 1, 2]
