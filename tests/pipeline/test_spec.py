"""StageSpec: a stage declares what the CLI needs in one value; the CLI reads only SPEC and run."""
from __future__ import annotations

import ast
import dataclasses
import sys
import types
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.spec import StageSpec, spec_of
from pipeline.store import open_store

STAGES_DIR = Path(cli.__file__).parent / "stages"
# what the CLI used to look up by name; a stage module defining one now would be silently ignored
OLD_HOOKS = {"UPSTREAM", "SKIP_IF_DONE", "EXCLUSIVE", "STANDALONE"}


def _fake(monkeypatch, name: str, spec: StageSpec | None):
    module = types.ModuleType(f"pipeline.stages.{name}")
    module.__doc__ = f"{name}: a fake stage."
    module.calls = []

    def run(cfg, ctx, **kwargs):
        module.calls.append(kwargs)
        return {"epochs": cfg.train.epochs, **kwargs}

    module.run = run
    if spec is not None:
        module.SPEC = spec
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(cli, "STAGES", (name,))
    monkeypatch.setattr(cli, "TOOLS", {})
    return module


def _store():
    from pipeline.config import load_config

    return open_store(load_config().resolved().store.uri)


def test_every_stage_declares_a_spec_and_no_hook_by_name():
    for name in cli.STAGES:
        module = cli.stage_module(name)
        assert isinstance(module.SPEC, StageSpec), name
        assert callable(module.run), name
        tree = ast.parse((STAGES_DIR / f"{name}.py").read_text())
        assigned = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(t, ast.Name)}
        assert not assigned & OLD_HOOKS, f"{name}: {assigned & OLD_HOOKS} is ignored now: declare it in SPEC"
        for spec_field in dataclasses.fields(StageSpec):
            hook = getattr(module.SPEC, spec_field.name)
            for upstream in (hook if spec_field.name == "upstream" else ()):
                assert upstream in cli.STAGES, f"{name}: unknown upstream stage {upstream!r}"


def test_the_specs_say_what_the_stages_said_before():
    specs = {name: cli.stage_module(name).SPEC for name in cli.STAGES}
    assert {n for n, s in specs.items() if s.standalone} == {"ingest", "validate"}
    assert {n for n, s in specs.items() if s.exclusive} == {"ingest", "validate", "train", "evaluate", "export"}
    assert {n for n, s in specs.items() if not s.skip_if_done} == {"check", "audit", "changed", "gate", "notify"}
    assert specs["promote"].upstream == ("export", "gate") and specs["train"].upstream == ("ingest", "snapshot")


def test_a_fake_stage_with_only_run_gets_the_defaults(monkeypatch, capsys):
    module = _fake(monkeypatch, "fake", None)
    assert spec_of(module) == StageSpec()
    assert cli.main(["fake", "--run-id", "s1"]) == 0
    assert cli.main(["fake", "--run-id", "s1"]) == 0  # skip_if_done by default
    assert module.calls == [{}]
    with pytest.raises(SystemExit):  # not standalone: --run-id is required
        cli.main(["fake"])


def test_the_cli_uses_every_field_of_the_spec(monkeypatch, capsys, tmp_path):
    def add_arguments(parser):
        parser.add_argument("--speed", default="slow")
        parser.add_argument("--epochs")

    standalone_calls = []
    spec = StageSpec(skip_if_done=False, add_arguments=add_arguments,
                     overrides_from_args=lambda args: [f"train.epochs={args.epochs}"] if args.epochs else [],
                     run_kwargs=lambda args: {"speed": args.speed},
                     reproduce_args=lambda args: ["--speed", args.speed],
                     standalone=lambda cfg, args: standalone_calls.append(cfg.train.epochs) or 0)
    module = _fake(monkeypatch, "fake", spec)
    assert cli.main(["fake", "--run-id", "s2", "--speed", "fast", "--epochs", "7"]) == 0
    assert cli.main(["fake", "--run-id", "s2", "--speed", "fast", "--epochs", "7"]) == 0  # never skipped
    assert module.calls == [{"speed": "fast"}, {"speed": "fast"}]
    store = _store()
    assert store.get_json("runs/s2/fake/result.json")["epochs"] == 7
    assert "--speed fast" in store.get_bytes("runs/s2/fake/reproduce.sh").decode()
    assert cli.main(["fake", "--epochs", "3"]) == 0  # without --run-id: the standalone entry point
    assert standalone_calls == [3]


def test_upstream_results_feed_the_input_signature(monkeypatch, capsys):
    from pipeline.config import load_config
    from pipeline.context import RunContext

    module = _fake(monkeypatch, "fake", StageSpec(upstream=("snapshot",)))
    assert cli.main(["fake", "--run-id", "s3"]) == 0
    cfg = load_config().resolved()
    RunContext.create("s3", "snapshot", cfg).write_result({"status": "ok", "dataset_hash": "abc.dir"})
    assert cli.main(["fake", "--run-id", "s3"]) == 0  # a new upstream result: not the same inputs
    assert cli.main(["fake", "--run-id", "s3"]) == 0  # the same again: skipped
    assert len(module.calls) == 2


def test_a_malformed_spec_is_refused_naming_the_module():
    module = types.ModuleType("pipeline.stages.broken")
    module.SPEC = {"upstream": ("ingest",)}
    with pytest.raises(TypeError, match="pipeline.stages.broken.SPEC must be a StageSpec, not dict"):
        spec_of(module)
    with pytest.raises(TypeError, match="tuple of stage names"):
        StageSpec(upstream="ingest")
