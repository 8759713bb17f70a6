"""Start, watch and stop a local tritonserver.

The nvidia-pytriton wheel carries tritonserver 2.51, its Python backend and one backend
stub per Python version; the stub matching this interpreter is copied into a backend
directory under the cache. Python models import from the interpreter whose bin directory is
first on PATH when the server starts (PYTHONPATH is not honoured), so this one goes first.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EmitError, ServeError
from ..emit.pbtxt import read_configs

LOCAL_BACKENDS = {"python"}  # what this CPU-only server build can host (plus ensembles)
MODEL_CONTROL_MODES = ("none", "poll", "explicit")  # tritonserver --model-control-mode


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    python_backend: Path
    stub: Path
    libs: Path | None


def find_tritonserver() -> TritonInstall:
    try:
        import pytriton
    except ImportError:
        raise ServeError("nvidia-pytriton is not installed; it provides the tritonserver binary (pip install nvidia-pytriton==0.7.0)") from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=next((p for p in Path(pytriton.__file__).parents[1].glob("nvidia_pytriton.libs")), None),
    )
    for path in (install.binary, install.python_backend, install.stub):
        if not path.exists():
            raise ServeError(f"{path} is missing from the nvidia-pytriton install (Python {version} needs its stub)")
    return install


def backend_directory(install: TritonInstall) -> Path:
    """A backends/ tree with the python backend and this interpreter's stub, built once."""
    cache = Path(os.environ.get("TRITONGEN_CACHE") or Path.home() / ".cache" / "tritongen")
    key = f"py{sys.version_info.major}{sys.version_info.minor}-{install.binary.stat().st_mtime_ns}"
    root = cache / "triton-backends" / key
    if (root / "python" / "triton_python_backend_stub").exists():
        return root
    tmp = Path(tempfile.mkdtemp(prefix=".backends-", dir=cache if cache.exists() else None))
    (tmp / "python").mkdir()
    for item in install.python_backend.iterdir():
        if item.is_file():
            shutil.copy2(item, tmp / "python" / item.name)
    shutil.copy2(install.stub, tmp / "python" / "triton_python_backend_stub")
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(root)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def check_repository(repository: Path) -> list[str]:
    """Model names in ``repository``; ServeError if a model needs a backend this server lacks."""
    if not repository.is_dir():
        raise ServeError(f"{repository}: no such model repository")
    try:
        configs = read_configs(repository)
    except EmitError as exc:
        raise ServeError(str(exc)) from None
    names, unsupported = list(configs), []
    for name, config in configs.items():
        if config.platform == "ensemble":
            continue
        kind = config.backend or config.platform
        if kind not in LOCAL_BACKENDS:
            unsupported.append(f"{name} ({kind})")
    if unsupported:
        raise ServeError(
            "this local tritonserver (CPU build from nvidia-pytriton) hosts Python-backend models and ensembles only; "
            f"cannot serve: {', '.join(unsupported)}. Rebuild with --backend python-onnxruntime or python-paddle, "
            "or serve this repository in the official tritonserver container (see docker/)."
        )
    if not names:
        raise ServeError(f"{repository}: no models (expected <model>/config.pbtxt)")
    return names


def _shorten(line: str, limit: int = 600) -> str:
    """A log line without Python's embedded traceback, capped in length."""
    line = line.split("\\n\\nAt:")[0]
    return line if len(line) <= limit else line[:limit] + " ..."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class TritonServer:
    """A tritonserver child process bound to 127.0.0.1; use as a context manager.

    ``model_control``: ``"none"`` (default; Triton's own default: the repository is loaded once),
    ``"poll"`` (changes on disk are picked up every ``repository_poll_secs``) or ``"explicit"``
    (every model loaded at start, then models load/unload only through the model-control API,
    with a config override if given: what ``tritongen tune`` needs)."""

    repository: Path
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    log_file: Path | None = None
    verbose: int = 0
    extra_args: list[str] = field(default_factory=list)
    model_control: str = "none"
    repository_poll_secs: int = 5
    process: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        if self.model_control not in MODEL_CONTROL_MODES:
            raise ServeError(f"model control mode {self.model_control!r}: choose {', '.join(MODEL_CONTROL_MODES)}")
        if self.model_control == "poll" and self.repository_poll_secs < 1:
            raise ServeError("repository poll interval must be at least 1 s")

    def model_control_args(self) -> list[str]:
        """tritonserver flags for ``model_control`` (none: no flag, Triton's default)."""
        if self.model_control == "explicit":
            return ["--model-control-mode=explicit", "--load-model=*"]
        if self.model_control == "poll":
            return ["--model-control-mode=poll", f"--repository-poll-secs={self.repository_poll_secs}"]
        return []

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 180.0) -> "TritonServer":
        self.repository = Path(self.repository).resolve()
        check_repository(self.repository)
        for port in (self.grpc_port, self.http_port, self.metrics_port):
            if _port_in_use(port):
                raise ServeError(f"port {port} on 127.0.0.1 is already in use; choose another with --grpc-port/--http-port/--metrics-port")
        install = find_tritonserver()
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        if install.libs:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(install.libs), env.get("LD_LIBRARY_PATH")]))
        cmd = [
            str(install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_directory(install)}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true", "--allow-gpu-metrics=false",
            "--exit-on-error=true", "--strict-readiness=true", "--exit-timeout-secs=15",
            f"--log-verbose={self.verbose}",
            *self.model_control_args(),
            *self.extra_args,
        ]
        if self.log_file is None:
            self.log_file = Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        log = open(self.log_file, "wb")
        # A session of its own: stop() can signal the server and its backend stubs together.
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServeError(f"tritonserver exited with code {self.process.returncode} while starting:\n{self.failure_summary()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise ServeError(f"tritonserver was not ready after {timeout:.0f}s:\n{self.failure_summary()}")

    def failure_summary(self, lines: int = 15) -> str:
        """The log lines that explain a failure (model load errors first)."""
        text = self.log_file.read_text(errors="replace") if self.log_file and self.log_file.exists() else ""
        all_lines = text.splitlines()
        # "failed to load 'MODEL' version 1: <reason>" says it all; CUDA probing noise says nothing.
        model_errors = [l for l in all_lines if re.search(r"failed to load '[^']+' version", l)]
        fatal = [l for l in all_lines if l.startswith("error:") or "error: creating server" in l]
        chosen = model_errors + fatal or [l for l in all_lines if l.startswith("E") and "Cuda" not in l][-lines:]
        chosen = chosen or all_lines[-lines:]
        return "\n".join(_shorten(l) for l in chosen[-lines:]) + f"\n(full log: {self.log_file})"

    def model_states(self) -> dict[str, dict]:
        req = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as response:
            return {m["name"]: m for m in json.loads(response.read())}

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (Triton unloads models and ends its stubs), then SIGKILL the whole group."""
        if self.process is None:
            return None
        pgid = self.process.pid
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # stubs left behind by a crash share the process group
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            return self.process.wait(5)
        except subprocess.TimeoutExpired:
            return None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
