"""What the tritonserver tests share: the Triton test environment and one server per test module."""
from __future__ import annotations

from pathlib import Path

import pytest

VENV = Path(__file__).resolve().parents[3] / ".venv-triton"
NEEDS_TRITON = pytest.mark.skipif(
    not (VENV / ".installed").exists(),
    reason=f"{VENV} does not exist: `make venv-triton` creates it (`make test` does so before running tests)")


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    """A real tritonserver (python backend) over an empty model repository of this test module; it must exit
    cleanly when stopped."""
    from pipeline.triton.server import LocalTritonServer

    root = tmp_path_factory.mktemp(f"tritonserver-{request.module.__name__.rsplit('.', 1)[-1]}")
    srv = LocalTritonServer(VENV, root / "repo", root / "work", startup_timeout_s=60, exit_timeout_s=20)
    srv.start()
    yield srv
    code = srv.stop()
    assert code == 0, f"tritonserver exited with {code}:\n{srv.log_tail(30)}"
