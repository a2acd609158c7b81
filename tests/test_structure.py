"""The house rules, read from the code: no import cycle among the project's modules, no stage importing
another stage or the CLI, no `pipeline/` import of Airflow, and no heavy library loaded when the scheduler
parses the DAG files and the plugins package.

It mirrors no module: it is the rule every module answers to. Imports are read with `ast`, at any depth (a
function-level import is a cycle as soon as that function runs, so it counts as an edge like a top-level one).
An import of `a.b.c` also runs the packages `a.b` and `a`: those are edges too, except to the importer's own
packages (a package's `__init__` importing its submodules, which import their siblings through the package,
is how packages are built, not a cycle). Each rule is also run on a small package written for the purpose
in tmp_path, to show that it fails when broken.

Runs under either venv: the DAG-parse check starts .venv-airflow's python itself.
"""
from __future__ import annotations

import ast
import functools
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AIRFLOW_PYTHON = REPO / ".venv-airflow" / "bin" / "python"
# libraries a scheduler must never load to parse a DAG: seconds of import time and gigabytes of memory each
HEAVY = ("torch", "torchvision", "mlflow", "great_expectations", "onnx", "onnxruntime", "dvc", "numpy", "pandas",
         "PIL", "boto3", "cv2", "sklearn", "cleanlab")


# -- the import graph -------------------------------------------------------------------------------------------
def modules_of(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for the package `package` whose folder is `root`."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name `module` imports, at any depth of its code (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (the deepest known module of each name, and the packages above
    it that are not the importer's own)."""
    graph = {}
    for module, path in modules.items():
        own = set(_ancestors(module))
        deps = set()
        for name in imported_names(module, path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if not name:
                continue
            deps.update(n for n in (*_ancestors(name), name) if n in modules and n not in own)
        deps.discard(module)
        graph[module] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative), each sorted."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def stage_violations(graph: dict[str, set[str]], stages: str = "pipeline.stages",
                     cli: str = "pipeline.cli") -> list[str]:
    """`stage imports X` for every stage module importing another stage module or the CLI."""
    prefix = stages + "."
    return sorted(f"{module} imports {dep}" for module, deps in graph.items() if module.startswith(prefix)
                  for dep in deps if dep == cli or (dep.startswith(prefix) and dep != module))


def airflow_imports(modules: dict[str, Path]) -> list[str]:
    """`module imports name` for every import of airflow (or anything under it)."""
    return sorted(f"{module} imports {name}" for module, path in modules.items()
                  for name in imported_names(module, path) if name.split(".")[0] == "airflow")


@functools.lru_cache(maxsize=1)
def project_graph() -> dict[str, set[str]]:
    modules = {**modules_of(REPO / "pipeline", "pipeline"),
               **modules_of(REPO / "plugins" / "nightshift_airflow", "nightshift_airflow")}
    return import_graph(modules)


# -- what a DAG parse loads --------------------------------------------------------------------------------------
PARSE = r"""
import importlib, importlib.util, json, pkgutil, sys
from pathlib import Path

dags, plugins = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(plugins))  # as Airflow does with its plugins folder
for info in pkgutil.walk_packages([str(plugins)]):  # every module of the plugins folder, as the plugin manager
    importlib.import_module(info.name)
for path in sorted(dags.glob("*.py")):
    spec = importlib.util.spec_from_file_location("dag_" + path.stem, path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps(sorted(sys.modules)))
"""


def loaded_at_parse(dags: Path, plugins: Path, home: Path, runner: str, site: Path | None = None) -> set[str]:
    """The top-level names in sys.modules after importing every plugins module and every DAG file in a fresh
    .venv-airflow interpreter (the pipeline package is not on its path, as on a scheduler; `site`: a folder of
    extra importable modules)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NIGHTSHIFT_", "AIRFLOW", "PYTHONPATH"))}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__UNIT_TEST_MODE="True",
               AIRFLOW__CORE__DAGS_FOLDER=str(dags), AIRFLOW__CORE__PLUGINS_FOLDER=str(plugins),
               NIGHTSHIFT_RUNNER=runner)
    proc = subprocess.run([str(AIRFLOW_PYTHON), "-c", PARSE, str(dags), str(plugins)], cwd=home, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"importing the DAG files failed:\n{proc.stderr[-3000:]}"
    return {name.split(".")[0] for name in json.loads(proc.stdout.strip().splitlines()[-1])}


# -- the rules on this project -----------------------------------------------------------------------------------
def test_no_import_cycle_among_the_projects_modules():
    found = cycles(project_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_stage_imports_another_stage_or_the_cli():
    found = stage_violations(project_graph())
    assert not found, "stages must import capabilities only:\n" + "\n".join(found)


def test_pipeline_never_imports_airflow():
    found = airflow_imports(modules_of(REPO / "pipeline", "pipeline"))
    assert not found, "\n".join(found)


@pytest.mark.parametrize("runner", ["local", "kubernetes"])
def test_parsing_the_dags_loads_no_heavy_library(tmp_path, runner):
    loaded = loaded_at_parse(REPO / "dags", REPO / "plugins", tmp_path, runner)
    assert {"airflow", "nightshift_airflow"} <= loaded  # the parse really ran
    assert not loaded & set(HEAVY), f"loaded while parsing the DAGs ({runner} runner): {sorted(loaded & set(HEAVY))}"


# -- each rule fails when broken ----------------------------------------------------------------------------------
def write_package(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return modules_of(root / "pkg", "pkg")


def test_a_cycle_is_found_at_any_depth_and_through_a_package(tmp_path):
    modules = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from pkg.b import g\n",  # function-level: counts
        "pkg/b.py": "from . import a\n",  # relative: counts
        "pkg/c.py": "import pkg.report.render\n",  # importing render runs report/__init__, which imports build
        "pkg/report/__init__.py": "from pkg.report import build\n",
        "pkg/report/build.py": "from pkg.report.render import page\nfrom pkg import c\n",
        "pkg/report/render.py": "def page():\n    pass\n",
        "pkg/ok.py": "import json\nfrom pkg import a\n",
    })
    assert cycles(import_graph(modules)) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.report", "pkg.report.build"]]


def test_a_package_importing_its_own_submodules_is_no_cycle(tmp_path):
    modules = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/formats/__init__.py": "from pkg.formats.coco import read\n",
        "pkg/formats/coco.py": "from pkg.formats.base import Dataset\nfrom pkg.formats import base\n",
        "pkg/formats/base.py": "Dataset = object\n",
    })
    assert cycles(import_graph(modules)) == []


def test_a_stage_importing_a_stage_or_the_cli_is_found(tmp_path):
    modules = write_package(tmp_path, {
        "pkg/__init__.py": "", "pkg/cli.py": "", "pkg/tracking.py": "",
        "pkg/stages/__init__.py": "",
        "pkg/stages/promote.py": "from pkg import tracking\nfrom pkg.stages import promote as me\n",
        "pkg/stages/rollback.py": "def main():\n    from pkg.stages.promote import x\n    from pkg.cli import y\n",
    })
    assert stage_violations(import_graph(modules), "pkg.stages", "pkg.cli") == [
        "pkg.stages.rollback imports pkg.cli", "pkg.stages.rollback imports pkg.stages.promote"]


def test_an_airflow_import_is_found_at_any_depth(tmp_path):
    modules = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/ok.py": "import airflow_tools_of_ours_not\n",
        "pkg/bad.py": "def f():\n    from airflow.sdk import DAG\n",
    })
    assert airflow_imports(modules) == ["pkg.bad imports airflow.sdk", "pkg.bad imports airflow.sdk.DAG"]


def test_a_heavy_import_at_parse_time_is_found(tmp_path):
    """.venv-airflow has none of the heavy libraries installed (an import of one would fail the parse): stand-ins
    named like them, on the path, show that the check names whichever a DAG file or a plugins module loads."""
    dags, plugins, site = tmp_path / "dags", tmp_path / "plugins", tmp_path / "site"
    write_package(site, {"numpy/__init__.py": "", "pandas/__init__.py": ""})
    write_package(plugins, {"light/__init__.py": "import json\n"})
    write_package(dags, {"light_dag.py": "import light\n"})
    assert not loaded_at_parse(dags, plugins, tmp_path, "local", site) & set(HEAVY)
    (dags / "heavy_dag.py").write_text("import light\nimport numpy\n")  # a DAG file importing numpy at the top
    assert loaded_at_parse(dags, plugins, tmp_path, "local", site) & set(HEAVY) == {"numpy"}
    (dags / "heavy_dag.py").unlink()
    (plugins / "light" / "helper.py").write_text("def f():\n    pass\n\nimport pandas\n")  # a plugins module
    assert loaded_at_parse(dags, plugins, tmp_path, "local", site) & set(HEAVY) == {"pandas"}
