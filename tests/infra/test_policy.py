"""The restricted pod security profile, requests and limits, and pinned images on every pod we create:
the workloads in infra/k8s (Deployments, StatefulSets, Jobs, the Trainer runtime) and every pod the DAGs
build on the kubernetes runner (stage pods with their xcom sidecar, Indexed Job and TrainJob nodes)."""
from __future__ import annotations

import copy

import pytest
from infra_manifests import documents, pod_templates

pytestmark = pytest.mark.airflow


def _image_problem(image: str) -> str | None:
    if "@sha256:" in image:
        return None
    name = image.rsplit("/", 1)[-1]
    if ":" not in name:
        return f"image {image!r} has no tag (means latest)"
    if name.rsplit(":", 1)[1] == "latest":
        return f"image {image!r} uses the latest tag"
    return None


def violations(template: dict, *, security: bool = True) -> list[str]:
    """Every missing restricted-profile field, request/limit or pinned tag in a pod (template)."""
    spec = template.get("spec") or {}
    pod_sc = spec.get("securityContext") or {}
    out = []
    containers = [("container", c) for c in spec.get("containers") or []]
    containers += [("initContainer", c) for c in spec.get("initContainers") or []]
    if not containers:
        out.append("no containers")
    for kind, c in containers:
        where = f"{kind} {c.get('name')}"
        problem = _image_problem(c.get("image", ""))
        if problem:
            out.append(f"{where}: {problem}")
        res = c.get("resources") or {}
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (res.get(section) or {}):
                    out.append(f"{where}: no {section}.{resource}")
        if not security:
            continue
        sc = c.get("securityContext") or {}
        if (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))) is not True:
            out.append(f"{where}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            out.append(f"{where}: runs as uid 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{where}: readOnlyRootFilesystem is not true")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            out.append(f"{where}: capabilities do not drop ALL")
        if (sc.get("capabilities") or {}).get("add"):
            out.append(f"{where}: adds capabilities")
        if sc.get("privileged"):
            out.append(f"{where}: privileged")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{where}: seccompProfile is not RuntimeDefault")
    if security:
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                out.append(f"pod: {flag}")
        for vol in spec.get("volumes") or []:
            if "hostPath" in vol:
                out.append(f"pod: hostPath volume {vol['name']}")
    return out


INFRA_TEMPLATES = [(f"{name} {where}", doc["kind"], tpl) for name, doc in documents()
                   for where, tpl in pod_templates(doc)]


def test_every_workload_kind_is_walked():
    kinds = {kind for _, kind, _ in INFRA_TEMPLATES}
    assert {"Deployment", "StatefulSet", "Job", "TrainingRuntime"} <= kinds
    assert len(INFRA_TEMPLATES) >= 6


@pytest.mark.parametrize("name,kind,template", INFRA_TEMPLATES, ids=[n for n, _, _ in INFRA_TEMPLATES])
def test_infra_pods_follow_the_restricted_profile(name, kind, template):
    assert violations(template) == []


def test_dag_pods_follow_the_restricted_profile(dag_pods):
    kinds = set()
    for name, obj in dag_pods.items():
        kinds.add(obj["kind"])
        for where, template in pod_templates(obj):
            # a TrainJob's pod security lives in the TrainingRuntime, checked above
            problems = violations(template, security=obj["kind"] != "TrainJob")
            assert problems == [], f"{name} {where}: {problems}"
    assert {"Pod", "Job", "TrainJob"} <= kinds
    stage_pods = [n for n in dag_pods if n.endswith("(pod)")]
    # 11 retrain tasks that run pods (all but check_conf and the branch) + rollback + the weekly report
    assert len(stage_pods) == 13


@pytest.mark.parametrize("mutate,expected", [
    (lambda c, p: c["securityContext"].pop("readOnlyRootFilesystem"), "readOnlyRootFilesystem"),
    (lambda c, p: c["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
    (lambda c, p: c["securityContext"]["capabilities"].update(drop=["NET_RAW"]), "drop ALL"),
    (lambda c, p: (c["securityContext"].pop("runAsNonRoot"), p["securityContext"].pop("runAsNonRoot")),
     "runAsNonRoot"),
    (lambda c, p: (c["securityContext"].pop("seccompProfile"), p["securityContext"].pop("seccompProfile")),
     "seccompProfile"),
    (lambda c, p: c["resources"].pop("limits"), "no limits.cpu"),
    (lambda c, p: c["resources"]["requests"].pop("memory"), "no requests.memory"),
    (lambda c, p: c.update(image="nvcr.io/nvidia/tritonserver:latest"), "latest tag"),
    (lambda c, p: c.update(image="postgres"), "no tag"),
    (lambda c, p: p.update(hostNetwork=True), "hostNetwork"),
])
def test_the_policy_catches_each_missing_field(mutate, expected):
    (_, _, template) = next(t for t in INFRA_TEMPLATES if t[1] == "Deployment")
    template = copy.deepcopy(template)
    mutate(template["spec"]["containers"][0], template["spec"])
    problems = violations(template)
    assert any(expected in p for p in problems), problems
    assert _image_problem("registry/x@sha256:" + "a" * 64) is None
