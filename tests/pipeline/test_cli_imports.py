"""Start-up cost: `nightshift --help` and each command's module import only what they use.

Checked on sys.modules in a fresh interpreter, not with timings: a heavy library that creeps into the import
path of `--help` or of a stage module fails here on any machine, however fast.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from pipeline import cli

# what no command module may import at the top: each is paid for by every Airflow task and every `--help`
HEAVY = ("torch", "torchvision", "mlflow", "great_expectations", "dvc", "dvc_data", "pandas", "onnx",
         "onnxruntime", "tritonclient", "boto3", "botocore", "matplotlib", "faster_coco_eval", "pycocotools",
         "kubernetes", "sqlalchemy", "scipy", "jinja2", "moto")


def _modules_after(code: str) -> set[str]:
    """Top-level names of the modules loaded after running `code` in a fresh interpreter."""
    script = code + "\nimport json, sys\nprint('MODULES ' + json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("MODULES ")][-1]
    return set(json.loads(line[len("MODULES "):]))


def test_help_imports_no_command_module_and_no_third_party_library():
    baseline = _modules_after("pass")
    loaded = _modules_after(textwrap.dedent("""
        import contextlib, io
        from pipeline.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as text, contextlib.suppress(SystemExit):
            main(["--help"])
        assert "ingest" in text.getvalue() and "score" in text.getvalue()
        import sys
        stages = [m for m in sys.modules if m.startswith(("pipeline.stages.", "pipeline.metrics.", "pipeline.report."))]
        assert not stages, stages
    """))
    third_party = {m for m in loaded - baseline if m not in sys.stdlib_module_names and not m.startswith("_")}
    assert third_party == {"pipeline"}, third_party


def test_help_lists_every_command_with_its_docstring_first_paragraph():
    text = cli.build_parser(summary_only=True).format_help()
    flat = " ".join(text.split())
    for name, modname in {**{s: f"pipeline.stages.{s}" for s in cli.STAGES}, **cli.TOOLS}.items():
        assert name in text
        import importlib

        # the whole first paragraph, not its first line: a summary that wraps in the docstring is listed whole
        first = " ".join(importlib.import_module(modname).__doc__.strip().split("\n\n")[0].split())
        for prefix in (f"{name}: ", f"{name}?: "):  # "gate: refuse ..." is listed as "gate  Refuse ..."
            if first.startswith(prefix):
                first = first[len(prefix):][:1].upper() + first[len(prefix) + 1:]
        assert " ".join(first.split()) in flat, (name, first)
        assert f"{name}: " not in flat and f"{name}?: " not in flat, name


def test_each_command_module_imports_no_heavy_library():
    modules = [f"pipeline.stages.{s}" for s in cli.STAGES] + list(cli.TOOLS.values())
    # one interpreter, modules imported one after another: the first to bring a library in is the culprit
    code = textwrap.dedent(f"""
        import importlib, json, sys
        heavy = {HEAVY!r}
        culprits = {{}}
        for name in {modules!r}:
            before = set(sys.modules)
            importlib.import_module(name)
            new = {{m.split(".")[0] for m in set(sys.modules) - before}} & set(heavy)
            if new:
                culprits[name] = sorted(new)
        print("CULPRITS " + json.dumps(culprits))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    culprits = json.loads([l for l in out.stdout.splitlines() if l.startswith("CULPRITS ")][-1][len("CULPRITS "):])
    assert culprits == {}, culprits


def test_stage_help_imports_only_that_stage():
    loaded = _modules_after(textwrap.dedent("""
        import contextlib, io, sys
        from pipeline.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as text, contextlib.suppress(SystemExit):
            main(["export", "--help"])
        assert "--run-id" in text.getvalue()
        others = [m for m in sys.modules if m.startswith("pipeline.stages.") and m != "pipeline.stages.export"]
        assert not others, others
    """))
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
