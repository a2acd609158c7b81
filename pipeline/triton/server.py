"""A real Triton server for tests and local runs: the `tritonserver` binary that nvidia-pytriton ships.

nvidia-pytriton 0.7.0 carries tritonserver 2.51 with the python backend only, and pins numpy < 2, so it lives
in its own venv (`make venv-triton` -> `.venv-triton`). Starting it by hand takes four things pytriton
otherwise does for you:

* LD_LIBRARY_PATH with `site-packages/nvidia_pytriton.libs` (libtritonserver and its bundled libraries) and
  the directory of a Python 3.11 `libpython3.11.so` (the venv's base interpreter's LIBDIR);
* a backends directory: `python/` with libtriton_python.so, triton_python_backend_utils.py and the stub built
  for the venv's Python version, plus `onnxruntime/model.py` (`pipeline.triton.python_backend`) so
  `platform: "onnxruntime_onnx"` models load through the python backend;
* PATH starting with the venv's `bin/`: the stub embeds an isolated interpreter that ignores PYTHONPATH and
  finds its prefix from `python3` on PATH, so this makes it use the venv's site-packages (numpy 1.x,
  onnxruntime) instead of the base interpreter's;
* `--http-address/--grpc-address 127.0.0.1` (it binds 0.0.0.0 otherwise) and metrics off.

The server runs in explicit model-control mode: nothing is loaded until a client asks.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

log = logging.getLogger(__name__)


class ServerError(RuntimeError):
    """tritonserver could not be found, did not start, or died."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _venv_python_info(venv: Path) -> tuple[str, Path, Path]:
    """(X.Y version, site-packages, LIBDIR of the base interpreter) of a venv, asked from its own python."""
    python = venv / "bin" / "python"
    if not python.exists():
        raise ServerError(f"{venv}: not a virtual environment (no bin/python); run `make venv-triton`")
    code = ("import sys, sysconfig; print(f'{sys.version_info[0]}.{sys.version_info[1]}'); "
            "print(sysconfig.get_paths()['purelib']); print(sysconfig.get_config_var('LIBDIR'))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, timeout=60)
    version, purelib, libdir = out.stdout.split("\n")[:3]
    return version, Path(purelib), Path(libdir)


class LocalTritonServer:
    """`with LocalTritonServer(venv, repo, workdir) as server: server.url` - tritonserver on 127.0.0.1."""

    def __init__(self, venv: str | Path, model_repository: str | Path, workdir: str | Path,
                 startup_timeout_s: float = 60.0, exit_timeout_s: int = 15):
        self.venv = Path(venv).resolve()
        self.model_repository = Path(model_repository).resolve()
        self.workdir = Path(workdir).resolve()
        self.startup_timeout_s = startup_timeout_s
        self.exit_timeout_s = exit_timeout_s
        self.http_port = self.grpc_port = 0
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / "tritonserver.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    # -- preparation ---------------------------------------------------------------------------------------------
    def _layout(self) -> tuple[Path, dict[str, str]]:
        from pipeline.triton.python_backend import install_onnxruntime_backend

        version, site, libdir = _venv_python_info(self.venv)
        dist = site / "pytriton" / "tritonserver"
        libs = site / "nvidia_pytriton.libs"
        binary = dist / "bin" / "tritonserver"
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        libpython = libdir / f"libpython{version}.so"
        for needed, what in ((binary, "tritonserver binary"), (stub, f"python {version} backend stub"),
                             (libs, "bundled libraries"), (libpython, "shared libpython")):
            if not needed.exists():
                raise ServerError(f"{needed}: {what} not found (is nvidia-pytriton installed in {self.venv}?)")
        backends = self.workdir / "backends"
        python_dir = backends / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        for src in (dist / "backends" / "python" / "libtriton_python.so",
                    dist / "backends" / "python" / "triton_python_backend_utils.py", stub):
            shutil.copy2(src, python_dir / src.name)
        install_onnxruntime_backend(backends)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(libs), str(libdir)] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
        env["PATH"] = os.pathsep.join([str(self.venv / "bin"), env.get("PATH", "")])
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        return binary, env

    def command(self, binary: Path) -> list[str]:
        return [
            str(binary), f"--model-repository={self.model_repository}",
            f"--backend-directory={self.workdir / 'backends'}", "--model-control-mode=explicit",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false", "--allow-gpu-metrics=false", "--allow-cpu-metrics=false",
            "--strict-readiness=true", f"--exit-timeout-secs={self.exit_timeout_s}",
            "--pinned-memory-pool-byte-size=0",
            # unique shared-memory names: several servers (parallel test runs) may share /dev/shm
            f"--backend-config=python,shm-region-prefix-name=nightshift-{uuid.uuid4().hex[:8]}",
        ]

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> "LocalTritonServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.model_repository.mkdir(parents=True, exist_ok=True)
        binary, env = self._layout()
        self.http_port, self.grpc_port = _free_port(), _free_port()
        command = self.command(binary)
        log.info("starting %s", " ".join(command))
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.live():
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with {self.process.returncode} during start-up:\n"
                                  f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"tritonserver not live after {self.startup_timeout_s:.0f}s:\n{self.log_tail()}")
            time.sleep(0.2)
        log.info("tritonserver live at %s (grpc 127.0.0.1:%d), repository %s", self.url, self.grpc_port,
                 self.model_repository)
        return self

    def live(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/live", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> "LocalTritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
