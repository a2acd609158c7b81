"""The promote stage: publication, registry, alias, idempotency, crash safety, Triton smoke test (fake server)."""
from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import cli, tracking
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.stages import promote
from pipeline.triton.repository import ModelRepository
from tests.helpers import he_init_backbone, only_commands




@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One exported ONNX model and one sqlite MLflow (its schema takes seconds) for the module."""
    from pipeline.export.onnx_export import export_onnx
    from pipeline.training.models import build_model

    root = tmp_path_factory.mktemp("promote")
    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenet_v3_large", 4, 320).eval()
    he_init_backbone(model)
    export = root / "export"
    spec = export_onnx(model, 320, export / "model.onnx")
    (export / "labels.txt").write_text("circle\nsquare\ntriangle\n")
    (export / "io.json").write_text(json.dumps(spec))
    return {"export": export, "tracking": f"sqlite:///{root / 'mlflow.db'}"}


def make_cfg(shared, tmp_path, *sets):
    """The registry is shared by the module: each test registers a model of its own name."""
    return load_config(None, [f"mlflow.tracking_uri={shared['tracking']}", f"promote.model_name={tmp_path.name}",
                              f"promote.triton_repo={tmp_path / 'repo'}", *sets]).resolved()


def alias_version(cfg):
    mv = tracking.current_alias(tracking.registry_client(cfg), cfg.promote.model_name, cfg.promote.alias)
    return int(mv.version) if mv else None


def registry_versions(cfg):
    client = tracking.registry_client(cfg)
    return sorted(int(v.version) for v in tracking.registered_versions(client, cfg.promote.model_name))


def test_promotions_publish_register_and_move_the_alias(shared, tmp_path, upstream):
    cfg = make_cfg(shared, tmp_path, "promote.keep_versions=2")
    mlrun = upstream(cfg, "night-1", shared["export"])
    first = promote.run(cfg, RunContext.create("night-1", "promote", cfg))
    assert (first["version"], first["registry_version"], first["previous_version"]) == (1, 1, None)
    repo = ModelRepository(cfg.promote.triton_repo)
    assert repo.versions(cfg.promote.model_name) == [1] and repo.served_version(cfg.promote.model_name) == 1 and alias_version(cfg) == 1
    assert set(repo.marker(cfg.promote.model_name, 1)["files"]) == {"model.onnx", "labels.txt", "io.json", "config.pbtxt"}
    text = repo.store.get_bytes(f"{cfg.promote.model_name}/config.pbtxt").decode()
    assert 'platform: "onnxruntime_onnx"' in text and "specific" in text and 'label_filename: "labels.txt"' in text
    mv = tracking.registry_client(cfg).get_model_version(cfg.promote.model_name, "1")
    assert mv.source == f"runs:/{mlrun}/model" and mv.run_id == mlrun
    assert mv.tags[tracking.TRITON_VERSION_TAG] == "1" and mv.tags[tracking.RUN_TAG] == "night-1"

    again = promote.run(cfg, RunContext.create("night-1", "promote", cfg))  # same run id: nothing new
    assert (again["version"], again["registry_version"], again["reused"]) == (1, 1, True)
    assert repo.versions(cfg.promote.model_name) == [1] and registry_versions(cfg) == [1]

    for night in ("night-2", "night-3"):
        upstream(cfg, night, shared["export"])
        promote.run(cfg, RunContext.create(night, "promote", cfg))
    assert repo.versions(cfg.promote.model_name) == [2, 3] and repo.served_version(cfg.promote.model_name) == 3 and alias_version(cfg) == 3


def test_crash_mid_upload_changes_nothing(shared, tmp_path, monkeypatch, upstream):
    cfg = make_cfg(shared, tmp_path)
    upstream(cfg, "night-1", shared["export"])
    promote.run(cfg, RunContext.create("night-1", "promote", cfg))
    upstream(cfg, "night-2", shared["export"])
    from pipeline.store import LocalStore

    real_put = LocalStore.put_file
    uploads = []

    def crash_after_one(self, local, key):
        if "/.staging/" in key:
            if uploads:
                raise ConnectionError("pod evicted mid-upload")
            uploads.append(key)
        return real_put(self, local, key)

    monkeypatch.setattr(LocalStore, "put_file", crash_after_one)
    with pytest.raises(ConnectionError):
        promote.run(cfg, RunContext.create("night-2", "promote", cfg))
    monkeypatch.setattr(LocalStore, "put_file", real_put)
    repo = ModelRepository(cfg.promote.triton_repo)
    assert uploads and repo.versions(cfg.promote.model_name) == [1] and repo.served_version(cfg.promote.model_name) == 1
    assert alias_version(cfg) == 1 and registry_versions(cfg) == [1]


def test_failed_gate_promotes_nothing(shared, tmp_path, monkeypatch, upstream):
    only_commands(monkeypatch, "promote")
    cfg = make_cfg(shared, tmp_path)
    upstream(cfg, "night-1", shared["export"], passed=False)
    code = cli.main(["promote", "--run-id", "night-1", "--set", f"mlflow.tracking_uri={shared['tracking']}",
                     "--set", f"promote.model_name={cfg.promote.model_name}", "--set", f"promote.triton_repo={tmp_path / 'repo'}"])
    assert code == 4
    assert ModelRepository(cfg.promote.triton_repo).versions(cfg.promote.model_name) == []


def test_only_the_bytes_a_passing_export_verified_are_promoted(shared, tmp_path, monkeypatch, capsys, upstream):
    """A model.onnx without export's result.json (export killed), with a failed result (exit 4), or with other
    bytes than export recorded (a later export killed mid-write) is refused with one line; nothing moves."""
    only_commands(monkeypatch, "promote")
    cfg = make_cfg(shared, tmp_path)
    upstream(cfg, "night-1", shared["export"])
    assert promote.run(cfg, RunContext.create("night-1", "promote", cfg))["version"] == 1
    upstream(cfg, "night-2", shared["export"])
    export = RunContext.create("night-2", "export", cfg)
    passed = export.store.get_json(export.key("result.json"))
    argv = ["promote", "--run-id", "night-2", "--set", f"mlflow.tracking_uri={shared['tracking']}",
            "--set", f"promote.model_name={cfg.promote.model_name}", "--set", f"promote.triton_repo={tmp_path / 'repo'}"]

    def refused(code: int, line: str) -> None:
        assert cli.main(argv) == code
        err = capsys.readouterr().err
        assert line in err and "Traceback" not in err, err
        repo = ModelRepository(cfg.promote.triton_repo)
        assert repo.versions(cfg.promote.model_name) == [1] and repo.served_version(cfg.promote.model_name) == 1
        assert alias_version(cfg) == 1 and registry_versions(cfg) == [1]

    export.store.delete_prefix(export.key("result.json"))  # killed before its result: the files alone
    refused(3, "no export result for this run")
    export.publish_json({**passed, "status": "gate_failed", "exit_code": 4}, "result.json")
    refused(4, "export did not pass for this run (status 'gate_failed', exit 4)")
    export.publish_json(passed, "result.json")
    truncated = tmp_path / "model.onnx"
    truncated.write_bytes((shared["export"] / "model.onnx").read_bytes()[:4096])
    export.publish(truncated, "model.onnx")  # a re-export killed mid-write over a checked model
    refused(3, "model.onnx: sha256: sha256 ")
    export.publish(shared["export"] / "model.onnx", "model.onnx")  # the verified bytes again: promoted
    assert cli.main(argv) == 0 and alias_version(cfg) == 2


def test_a_held_repository_lock_fails_in_one_line_naming_its_holder(shared, tmp_path, monkeypatch, capsys, upstream):
    only_commands(monkeypatch, "promote")
    cfg = make_cfg(shared, tmp_path)
    upstream(cfg, "night-1", shared["export"])
    repo = ModelRepository(cfg.promote.triton_repo)
    with repo.lock(cfg.promote.model_name, timeout_s=1):  # another promotion, still working
        code = cli.main(["promote", "--run-id", "night-1", "--set", f"mlflow.tracking_uri={shared['tracking']}",
                         "--set", f"promote.model_name={cfg.promote.model_name}",
                         "--set", f"promote.triton_repo={tmp_path / 'repo'}",
                         "--set", "promote.lock_timeout_s=0.5", "--set", "promote.lock_ttl_s=0.2"])
    err = capsys.readouterr().err
    assert code == 5 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and f"{tmp_path / 'repo' / cfg.promote.model_name / '.lock'}: held by pid {os.getpid()}" \
        in lines[0] and "promote.lock_timeout_s=0.5s" in lines[0]
    assert repo.versions(cfg.promote.model_name) == []


# -- a fake Triton: KServe v2 over HTTP/JSON, serving the repository's pinned version with onnxruntime ----------
class FakeTriton(ThreadingHTTPServer):
    def __init__(self, repo_dir: Path, broken: bool = False):
        super().__init__(("127.0.0.1", 0), FakeTritonHandler)
        self.repo_dir, self.broken, self.loaded, self.loads = repo_dir, broken, {}, []

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class FakeTritonHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, code, body=None):
        data = json.dumps(body or {}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # /v2/models/<name>/versions/<v>/ready
        parts = self.path.strip("/").split("/")
        ok = parts[-1] == "ready" and self.server.loaded.get(parts[2], (None,))[0] == int(parts[4])
        self._reply(200 if ok else 400, None if ok else {"error": "not ready"})

    def do_POST(self):
        from pipeline.export.onnx_export import ort_session
        from pipeline.triton.config import pinned_version

        body = self.rfile.read(int(self.headers.get("Content-Length", 0)) or 0)
        parts = self.path.strip("/").split("/")
        if parts[:3] == ["v2", "repository", "models"] and parts[-1] == "load":
            name = parts[3]
            version = pinned_version((self.server.repo_dir / name / "config.pbtxt").read_text())
            session = ort_session(self.server.repo_dir / name / str(version) / "model.onnx")
            self.server.loaded[name] = (version, session)
            self.server.loads.append(version)
            return self._reply(200)
        version, session = self.server.loaded[parts[2]]
        if int(parts[4]) != version:
            return self._reply(400, {"error": "version not loaded"})
        req = json.loads(body)
        x = np.array(req["inputs"][0]["data"], dtype=np.float32).reshape(req["inputs"][0]["shape"])
        outs = dict(zip(("boxes", "scores", "labels"), session.run(None, {"images": x})))
        if self.server.broken:
            outs["labels"] = np.zeros_like(outs["labels"])
        types = {"boxes": "FP32", "scores": "FP32", "labels": "INT64"}
        self._reply(200, {"model_name": parts[2], "model_version": str(version), "outputs": [
            {"name": n, "datatype": types[n], "shape": list(a.shape), "data": a.flatten().tolist()}
            for n, a in outs.items()]})


@pytest.fixture
def fake_triton(tmp_path):
    servers = []

    def start(broken=False):
        server = FakeTriton(tmp_path / "repo", broken)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_triton_smoke_test_gates_the_alias(shared, tmp_path, fake_triton, upstream):
    good = fake_triton()
    cfg = make_cfg(shared, tmp_path, f"promote.triton_url={good.url}")
    upstream(cfg, "night-1", shared["export"])
    result = promote.run(cfg, RunContext.create("night-1", "promote", cfg))
    assert result["smoke_test"]["match_fraction"] == 1.0 and good.loads == [1] and alias_version(cfg) == 1

    broken = fake_triton(broken=True)
    broken.loaded = dict(good.loaded)
    cfg = make_cfg(shared, tmp_path, f"promote.triton_url={broken.url}")
    upstream(cfg, "night-2", shared["export"])
    with pytest.raises(Exception, match="differ from ONNX Runtime"):
        promote.run(cfg, RunContext.create("night-2", "promote", cfg))
    repo = ModelRepository(cfg.promote.triton_repo)
    assert repo.versions(cfg.promote.model_name) == [1] and repo.served_version(cfg.promote.model_name) == 1
    assert alias_version(cfg) == 1 and registry_versions(cfg) == [1]
    assert broken.loads == [2, 1]  # the new version was loaded, then the previous one put back
