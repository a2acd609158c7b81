"""The DDP benchmark end to end at a tiny size: three torchrun jobs, figures and a verdict line."""
from __future__ import annotations

import json

import pytest

from pipeline.training import bench


@pytest.mark.slow
def test_bench_runs_one_two_and_two_independent_ranks(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--image-size", "64", "--steps", "2", "--warmup", "1", "--rounds", "1", "--batch", "2",
                       "--timeout", "240", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2-rank step-time overhead over 1 rank:" in text and "(goal <= 15 %:" in text
    figures = json.loads(out.read_text())["64"]
    for label in ("1", "2", "2*"):
        assert figures[label]["step_ms"] > 0 and len(figures[label]["step_ms_runs"]) == 1
    # two ranks process twice the images of one per step
    assert figures["2"]["images_per_s"] == pytest.approx(2 * 2 / figures["2"]["step_ms"] * 1e3)
    assert figures["overhead"] == pytest.approx(figures["2"]["step_ms"] / figures["1"]["step_ms"] - 1)


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--rounds", "0"])
    assert exc.value.code == 2 and "at least 1" in capsys.readouterr().err
