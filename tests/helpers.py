"""Helpers the test suites share, each written once: `from tests.helpers import ...`.

`python -m pytest` runs from the repository root and puts it on sys.path, so every test folder imports this
module the way they import tests/faults.py. Nothing heavy is imported at module level: tests/dags and
tests/infra run in .venv-airflow, which has no torch (`pipeline.cli` itself imports only the standard library
and pipeline.errors).
"""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

from pipeline import cli

# -- the result line every stage prints: `NIGHTSHIFT_RESULT {json}` --------------------------------------------


def result_line(text: str, *, required: bool = True) -> dict | None:
    """The JSON of the last result line in `text` (a command's stdout, a log file's text).

    With `required` (the default) a missing line fails the test showing the end of `text`; otherwise it is None.
    """
    lines = [line for line in text.splitlines() if line.startswith(cli.RESULT_MARKER)]
    if not lines:
        assert not required, f"no {cli.RESULT_MARKER.strip()} line in:\n{text[-3000:]}"
        return None
    return json.loads(lines[-1][len(cli.RESULT_MARKER):])


def last_result(capsys) -> dict:
    """The result line of what the test printed so far (consumes the captured output)."""
    return result_line(capsys.readouterr().out)


# -- which commands the CLI's parser knows ----------------------------------------------------------------------
# The parser imports the module of every command it lists, and stage modules pull in torch, MLflow or Great
# Expectations: a test that runs one command limits the parser to it, so it does not depend on every other
# stage importing cleanly. The real tables are read once, before any test patches them.
ALL_STAGES = tuple(cli.STAGES)
ALL_TOOLS = dict(cli.TOOLS)


def only_commands(monkeypatch, *names: str) -> None:
    """Let the CLI know only `names` (stages and tools, e.g. `only_commands(mp, "export", "promote")`)."""
    unknown = [n for n in names if n not in ALL_STAGES and n not in ALL_TOOLS]
    assert not unknown, f"not a nightshift command: {unknown}"
    _set_commands(monkeypatch, tuple(s for s in ALL_STAGES if s in names),
                  {n: m for n, m in ALL_TOOLS.items() if n in names})


def _set_commands(monkeypatch, stages: tuple[str, ...], tools: dict[str, str]) -> None:
    monkeypatch.setattr(cli, "STAGES", stages)
    monkeypatch.setattr(cli, "TOOLS", tools)


def add_fake_stage(monkeypatch, name: str, run, doc: str, spec=None) -> types.ModuleType:
    """Install `pipeline.stages.<name>`, a stage doing `run(cfg, ctx)`, as the only command the CLI knows.

    `spec` is the stage's `pipeline.spec.StageSpec` (what it declares to the CLI; the default StageSpec() when
    None); the module is returned so a test can change its `run` or hang its own state on it.
    """
    module = types.ModuleType(f"pipeline.stages.{name}")
    module.__doc__ = doc
    module.run = run
    if spec is not None:
        module.SPEC = spec
    monkeypatch.setitem(sys.modules, module.__name__, module)
    _set_commands(monkeypatch, (name,), {})
    return module


# -- the train stage's model.pt ----------------------------------------------------------------------------------
# the classes of pipeline.datasets.synthetic, in category-id order
SHAPES = ({"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"})


def save_model_pt(path: Path, model, model_name: str, image_size: int, categories=SHAPES) -> Path:
    """Write `model` as the train stage writes `model.pt` (through `training.models.save_trained`)."""
    from pipeline.training.models import save_trained

    save_trained(path, model, model_name, image_size, [dict(c) for c in categories])
    return path


def he_init_backbone(model) -> None:
    """He-initialise the backbone's convolutions: torchvision's init ties every score of an untrained SSDlite,
    and tied scores reorder detections between runtimes, so parity could not be checked."""
    import torch

    with torch.no_grad():
        for module in model.backbone.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")


# -- files ---------------------------------------------------------------------------------------------------------

def write_image(path: Path, width: int, height: int, colour=(10, 200, 30)) -> Path:
    """A one-colour RGB image at `path` (its format from the suffix), folders made as needed."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), colour).save(path)
    return path


def stage_argv(stage: str, run_id: str, tracking: str, *sets: str) -> list[str]:
    """`nightshift <stage> --run-id RUN --set <tracking> --set ...` as the stage tests call cli.main with it."""
    out = [stage, "--run-id", run_id, "--set", tracking]
    for s in sets:
        out += ["--set", s]
    return out
