"""tests/pipeline mirrors pipeline/: `tests/pipeline/<pkg>/test_<module>.py` beside `pipeline/<pkg>/<module>.py`.

A test file is named after the module it tests (`test_<module>.py`), an aspect of it (`test_<module>_<aspect>.py`,
e.g. test_promote_crash.py), or its package (`test_<pkg>.py` for what `pipeline/<pkg>/__init__.py` holds).
The few suites that exercise a whole package through the CLI are listed below with the reason.
"""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE, TESTS = REPO / "pipeline", REPO / "tests" / "pipeline"

# test file (relative to tests/pipeline) -> why it is named after no one module
ACROSS_MODULES = {
    "formats/test_bad_inputs.py": "bad input in every format, through `nightshift ingest`",
    "formats/test_real_exports.py": "exports written by real tools, through ingest and validate",
}


def misplaced(package: Path, tests: Path, across: dict[str, str]) -> list[str]:
    """Test files under `tests` that mirror no module of `package`, each with what was expected."""
    out = []
    for test in sorted(tests.rglob("test_*.py")):
        rel = test.relative_to(tests)
        if rel.as_posix() in across:
            continue
        folder = package.joinpath(*rel.parts[:-1])
        if not folder.is_dir():
            out.append(f"{rel}: pipeline/{rel.parent.as_posix()}/ does not exist")
            continue
        name = test.stem.removeprefix("test_")
        modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
        own_package = rel.parent.name if len(rel.parts) > 1 else None
        if name in modules or name == own_package or any(name.startswith(m + "_") for m in modules):
            continue
        out.append(f"{rel}: no pipeline/{rel.parent.as_posix() + '/' if len(rel.parts) > 1 else ''}{name}.py "
                   f"(name it test_<module>.py or test_<module>_<aspect>.py)")
    return out


def test_every_test_file_mirrors_a_module():
    assert misplaced(PACKAGE, TESTS, ACROSS_MODULES) == []


def test_the_exceptions_are_still_there():
    assert [rel for rel in ACROSS_MODULES if not (TESTS / rel).is_file()] == []


def test_a_misnamed_test_file_is_named(tmp_path):
    package, tests = tmp_path / "pipeline", tmp_path / "tests"
    for rel in ("formats/__init__.py", "formats/coco.py", "stages/promote.py", "cli.py"):
        (package / rel).parent.mkdir(parents=True, exist_ok=True)
        (package / rel).write_text("")
    for rel in ("formats/test_coco.py", "formats/test_formats.py", "stages/test_promote_crash.py", "test_cli.py",
                "formats/test_formats_coco.py", "metrics/test_coco.py", "test_everything.py"):
        (tests / rel).parent.mkdir(parents=True, exist_ok=True)
        (tests / rel).write_text("")
    assert misplaced(package, tests, {}) == [
        "formats/test_formats_coco.py: no pipeline/formats/formats_coco.py "
        "(name it test_<module>.py or test_<module>_<aspect>.py)",
        "metrics/test_coco.py: pipeline/metrics/ does not exist",
        "test_everything.py: no pipeline/everything.py (name it test_<module>.py or test_<module>_<aspect>.py)",
    ]
