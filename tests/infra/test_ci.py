"""The CI files offered to users: they parse and have the expected jobs, stages and commands.
(check-jsonschema is not installed, so the workflow schema itself is not checked.)"""
from __future__ import annotations

import copy

import pytest
import yaml
from infra_manifests import REPO

pytestmark = pytest.mark.airflow
GITHUB = REPO / ".github" / "workflows" / "ci.yml"
GITLAB = REPO / ".gitlab-ci.yml"
DOCKERFILES = {p.relative_to(REPO).as_posix() for p in (REPO / "docker").glob("*.Dockerfile")}


def _steps_text(job: dict) -> str:
    return "\n".join(str(step.get("run", "")) + " " + str(step.get("uses", "")) + " " + str(step.get("with", ""))
                     for step in job.get("steps", []))


def github_problems(wf: dict) -> list[str]:
    found = []
    jobs = wf.get("jobs") or {}
    for name in ("lint", "test", "demo", "images"):
        if name not in jobs:
            found.append(f"no job {name}")
    if found:
        return found
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True
    if not on or "pull_request" not in on:
        found.append("not run on pull requests")
    lint = _steps_text(jobs["lint"])
    if "ruff" not in lint or "hadolint" not in lint:
        found.append("lint does not run ruff and hadolint")
    if "make test" not in _steps_text(jobs["test"]):
        found.append("test does not run make test")
    if "make demo" not in _steps_text(jobs["demo"]):
        found.append("demo does not run make demo")
    build = [s for s in jobs["images"]["steps"] if str(s.get("uses", "")).startswith("docker/build-push-action@")]
    if not build:
        found.append("images do not use docker/build-push-action")
    elif "refs/tags/" not in str(build[0]["with"].get("push")):
        found.append("images push on every build, not only on tags")
    files = {item["dockerfile"] for item in jobs["images"].get("strategy", {}).get("matrix", {}).get("include", [])}
    if files != DOCKERFILES:
        found.append(f"images build {sorted(files)}, docker/ has {sorted(DOCKERFILES)}")
    for job_name, job in jobs.items():
        for step in job.get("steps", []):
            uses = step.get("uses")
            if uses and "@" not in uses:
                found.append(f"{job_name}: action {uses} is not pinned to a version")
    return found


def gitlab_problems(ci: dict) -> list[str]:
    found = []
    stages = ci.get("stages")
    if stages != ["lint", "test", "demo", "images"]:
        found.append(f"stages are {stages}")
    jobs = {k: v for k, v in ci.items() if isinstance(v, dict) and ("script" in v or "extends" in v)}
    for name, job in jobs.items():
        if name.startswith("."):
            continue
        stage = job.get("stage") or ci.get(job.get("extends", ""), {}).get("stage")
        if stage not in (stages or []):
            found.append(f"{name}: stage {stage} is not declared")
    text = yaml.safe_dump(ci)
    for command in ("ruff", "hadolint", "make test", "make demo", "docker push"):
        if command not in text:
            found.append(f"no job runs {command}")
    images = {job.get("variables", {}).get("DOCKERFILE") for job in jobs.values() if job.get("extends") == ".image"}
    if images != DOCKERFILES:
        found.append(f"images build {sorted(filter(None, images))}")
    push_script = "\n".join(ci.get(".image", {}).get("script", []))
    if "CI_COMMIT_TAG" not in push_script:
        found.append("images push on every build, not only on tags")
    return found


def test_github_workflow():
    assert github_problems(yaml.safe_load(GITHUB.read_text())) == []


def test_gitlab_ci():
    assert gitlab_problems(yaml.safe_load(GITLAB.read_text())) == []


def test_the_checks_catch_mistakes():
    wf = yaml.safe_load(GITHUB.read_text())
    broken = copy.deepcopy(wf)
    del broken["jobs"]["demo"]
    assert "no job demo" in github_problems(broken)
    broken = copy.deepcopy(wf)
    step = next(s for s in broken["jobs"]["images"]["steps"] if "build-push-action" in str(s.get("uses")))
    step["with"]["push"] = True
    assert "images push on every build, not only on tags" in github_problems(broken)
    broken["jobs"]["images"]["strategy"]["matrix"]["include"].pop()
    assert any(p.startswith("images build") for p in github_problems(broken))

    ci = yaml.safe_load(GITLAB.read_text())
    broken = copy.deepcopy(ci)
    broken["test"]["stage"] = "tests"
    assert "test: stage tests is not declared" in gitlab_problems(broken)
    broken = copy.deepcopy(ci)
    broken["demo"]["script"] = ["echo skipped"]
    assert "no job runs make demo" in gitlab_problems(broken)
