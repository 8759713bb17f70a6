"""Start, watch and stop a local tritonserver.

The nvidia-pytriton wheel carries tritonserver 2.51, its Python backend and one backend
stub per Python version; the stub matching this interpreter is copied into a backend
directory under the cache. Python models import from the interpreter whose bin directory is
first on PATH when the server starts (PYTHONPATH is not honoured), so this one goes first.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import EmitError, ServeError
from ..storage import RepositorySource, open_repository
from .watchdog import StubCrash, Watchdog, children, ensembles_using, group_members

LOCAL_BACKENDS = {"python"}  # what this CPU-only server build can host (plus ensembles)
MODEL_CONTROL_MODES = ("none", "poll", "explicit")  # what the user asks for (none and explicit both run explicit)
SHM_DIR = Path("/dev/shm")
STUCK_GRACE_S = 1.0  # after SIGTERM: how long only stubs of a crashed model version may remain before SIGKILL
# Log lines that explain a failed start, most telling first; then any other error line.
CAUSES = (r"failed to start \w+ service", r"already in use", r"failed to load '", r"^error:|error: creating server")
NOISE = re.compile(r"cuda|gpu|nvml|dcgm|unable to create stream", re.IGNORECASE)  # probing a GPU this host lacks
GLOG_PREFIX = re.compile(r"^[EWI]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\]\s*")


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


def check_repository(repository: "Path | str | RepositorySource") -> list[str]:
    """Model names in ``repository`` (a directory, a storage URI or a resolved source); ServeError
    if a model needs a backend this server lacks. Directories whose name starts with '.' (e.g. a
    killed build's ``.tritongen-staging-*``) are not models."""
    return list(_repository_configs(open_repository(repository)))


def _repository_configs(source: RepositorySource) -> dict:
    try:
        configs = source.read_configs()
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
        raise ServeError(f"{source.describe()}: no models (expected <model>/config.pbtxt)")
    return configs


def _shorten(line: str, limit: int = 600) -> str:
    """A log line without its glog prefix, quotes and Python's embedded traceback, capped in length."""
    line = GLOG_PREFIX.sub("", line).split("\\n\\nAt:")[0].strip()
    if len(line) > 1 and line[0] == '"':
        line = line.strip('"').strip()
    return line if len(line) <= limit else line[:limit] + " ..."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_in_use(port: int) -> bool:
    """127.0.0.1:``port`` cannot be bound: something listens there, or a socket holds it bound
    without listening (which a connect test misses). SO_REUSEADDR as servers set it, so a port
    whose old connections are in TIME_WAIT counts as free."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@dataclass
class TritonServer:
    """A tritonserver child process bound to 127.0.0.1; use as a context manager.

    ``model_control``: ``"none"`` (default: the repository is loaded once), ``"explicit"`` (the
    same, and models may then be loaded / unloaded through the model-control API, with a config
    override if given: what ``tritongen tune`` needs) or ``"poll"`` (changes on disk are picked up
    every ``repository_poll_secs``). Under the hood, none and explicit both run Triton's explicit
    mode, loading each model :func:`check_repository` finds by name, so that a watchdog
    (:mod:`.watchdog`) can reload a Python model whose backend process died (``crashes`` lists
    them; ``on_fault`` gets one line each). Poll mode has no model-control API: a crash is
    reported, not repaired.

    The Python backend's shared-memory regions are named ``/dev/shm/<shm_prefix>*``; ``stop``
    removes those of this server, also after a crash or a failed start."""

    repository: "Path | str | RepositorySource"  # a directory or a storage URI (s3://, gs://, as://)
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    log_file: Path | None = None
    verbose: int = 0
    extra_args: list[str] = field(default_factory=list)
    model_control: str = "none"
    repository_poll_secs: int = 5
    on_fault: Callable[[str], None] | None = None  # one line per backend crash / reload (default: logging)
    watch_interval: float = 0.5
    process: subprocess.Popen | None = None
    shm_prefix: str = field(default_factory=lambda: f"tritongen_{os.getpid()}_{secrets.token_hex(4)}_")
    source: RepositorySource | None = field(default=None, init=False)  # set by start: what tritonserver reads
    _configs: dict = field(default_factory=dict, init=False, repr=False)
    _watchdog: Watchdog | None = field(default=None, init=False, repr=False)
    _load_timeout: float = field(default=180.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.model_control not in MODEL_CONTROL_MODES:
            raise ServeError(f"model control mode {self.model_control!r}: choose {', '.join(MODEL_CONTROL_MODES)}")
        if self.model_control == "poll" and self.repository_poll_secs < 1:
            raise ServeError("repository poll interval must be at least 1 s")

    @property
    def recovers(self) -> bool:
        """Whether a model whose backend process dies is reloaded (not in poll mode)."""
        return self.model_control != "poll"

    def model_control_args(self) -> list[str]:
        """tritonserver flags for ``model_control``: explicit mode loading each model by name (none,
        explicit; the names are known once ``start`` checked the repository) or poll mode."""
        if self.model_control == "poll":
            return ["--model-control-mode=poll", f"--repository-poll-secs={self.repository_poll_secs}"]
        return ["--model-control-mode=explicit", *(f"--load-model={name}" for name in self._configs)]

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def crashes(self) -> list[StubCrash]:
        """Backend processes that died since the start, with when their model answered again."""
        return self._watchdog.crashes if self._watchdog else []

    @property
    def client_models(self) -> list[str]:
        """The models clients call: ensembles and the models no ensemble runs (fused models)."""
        composing = {step.model_name for c in self._configs.values() for step in c.ensemble_scheduling.step}
        return [name for name, c in self._configs.items() if c.platform == "ensemble" or name not in composing]

    def start(self, timeout: float = 180.0) -> "TritonServer":
        self.source = open_repository(self.repository)
        self._configs = _repository_configs(self.source)
        for option, port in (("--grpc-port", self.grpc_port), ("--http-port", self.http_port),
                             ("--metrics-port", self.metrics_port)):
            if _port_in_use(port):
                raise ServeError(f"port {port} on 127.0.0.1 ({option}) is already in use; choose another with "
                                 "--grpc-port/--http-port/--metrics-port")
        install = find_tritonserver()
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        if install.libs:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(install.libs), env.get("LD_LIBRARY_PATH")]))
        cmd = [
            str(install.binary),
            # A remote repository: tritonserver reads the credentials from the environment it inherits.
            f"--model-repository={self.source.location}",
            f"--backend-directory={backend_directory(install)}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
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
        self._load_timeout = timeout
        try:
            self._wait_ready(timeout)
            self._watchdog = Watchdog(
                self.process, self, recover=self.recovers, notify=self.on_fault or logging.getLogger(__name__).warning,
                ensembles_using=ensembles_using({n: [s.model_name for s in c.ensemble_scheduling.step]
                                                 for n, c in self._configs.items() if c.platform == "ensemble"}),
                interval=self.watch_interval, no_recovery_reason="no recovery with --model-control poll",
            ).start()
        except BaseException:
            self.stop(drain_timeout=0)
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready (every model loaded) and every service up: the metrics service starts after the
        HTTP one and may still fail, e.g. on a port taken meanwhile."""
        deadline = time.monotonic() + timeout
        urls = [f"http://{self.http_url}/v2/health/ready", self.metrics_url]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServeError(self._start_failure(f"tritonserver exited with code {self.process.returncode} while starting"))
            try:
                while urls:
                    with urllib.request.urlopen(urls[0], timeout=2) as response:
                        if response.status != 200:
                            break
                    urls.pop(0)
                if not urls:
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise ServeError(self._start_failure(f"tritonserver was not ready after {timeout:.0f}s"))

    def _start_failure(self, what: str) -> str:
        """The cause first (one line), then what else the log says."""
        cause, _, rest = self.failure_summary().partition("\n")
        return f"tritonserver could not start: {cause}\n{what}\n{rest}"

    def exit_reason(self) -> str:
        """One line on why the process ended: a signal, a clean stop from outside, or the log's cause."""
        code = self.process.returncode if self.process is not None else None
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name}"
        if code == 0:
            return "it stopped cleanly (exit code 0: stopped from outside, e.g. a SIGTERM)"
        cause = next((l for l in self.failure_summary().splitlines() if l.strip("+-| ")), "(the log is empty)")
        return f"exit code {code}: {cause}"

    def failure_summary(self, lines: int = 15) -> str:
        """The log lines that explain a failure, cause first: a service that could not start (a port
        in use), a model that failed to load, then other errors; GPU probing noise left out."""
        text = self.log_file.read_text(errors="replace") if self.log_file and self.log_file.exists() else ""
        all_lines = [l for l in text.splitlines() if l.strip() and not NOISE.search(l)]
        chosen: list[str] = []
        for pattern in CAUSES:
            chosen += [l for l in all_lines if re.search(pattern, _shorten(l)) and l not in chosen]
        chosen += [l for l in all_lines if l.startswith("E") and l not in chosen]
        chosen = chosen or all_lines[-lines:] or ["(the log is empty)"]
        shortened = list(dict.fromkeys(_shorten(l) for l in chosen))  # in order, without repeats
        return "\n".join(shortened[:lines]) + f"\n(full log: {self.log_file})"

    # ---------------------------------------------------------------- model control (HTTP)

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = 30.0):
        data = None if method == "GET" else json.dumps(body or {}).encode()
        request = urllib.request.Request(f"http://{self.http_url}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read() or b"{}").get("error") or exc.reason
            except ValueError:
                message = exc.reason
            raise ServeError(f"{method} {path}: HTTP {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServeError(f"tritonserver at {self.http_url} did not answer {method} {path}: {exc}") from None
        return json.loads(payload) if payload else None

    def model_states(self) -> dict[str, dict]:
        """``{name: {"name", "version", "state", "reason"}}`` from the repository index (without the
        directories whose name starts with '.': never models, never loaded)."""
        index = self._call("POST", "/v2/repository/index", timeout=5)
        return {m["name"]: m for m in index if not m["name"].startswith(".")}

    def load_model(self, name: str) -> None:
        """Load (or, after an unload, load again) ``name``; returns once it is loaded."""
        self._call("POST", f"/v2/repository/models/{urllib.parse.quote(name)}/load", timeout=self._load_timeout)

    def unload_model(self, name: str) -> None:
        """Ask Triton to unload ``name``: it finishes the requests in flight first (returns at once)."""
        self._call("POST", f"/v2/repository/models/{urllib.parse.quote(name)}/unload", timeout=30)

    def model_ready(self, name: str) -> bool:
        try:
            self._call("GET", f"/v2/models/{urllib.parse.quote(name)}/ready", timeout=5)
            return True
        except ServeError:
            return False

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # ---------------------------------------------------------------- stopping

    def drain(self, timeout: float) -> bool:
        """Unload the client-facing models (:attr:`client_models`) and wait up to ``timeout`` s
        until they are: Triton finishes their requests in flight (an ensemble's later steps
        included: its composing models stay loaded) and answers new ones NOT_FOUND. True if all
        were unloaded in time. Not in poll mode (no model-control API there)."""
        if not self.recovers or not self.is_running():
            return False
        deadline = time.monotonic() + timeout
        names = self.client_models
        try:
            for name in names:
                self.unload_model(name)
            while True:
                states = self.model_states()
                if all(states.get(n, {}).get("state") not in ("READY", "LOADING", "UNLOADING") for n in names):
                    return True
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.1)
        except ServeError:
            return False

    def stop(self, timeout: float = 30.0, drain_timeout: float = 10.0) -> int | None:
        """Drain (see :meth:`drain`; ``drain_timeout=0``: not), SIGTERM (Triton unloads the other
        models and ends its stubs), then SIGKILL whatever is left of the process group and remove
        this server's shared-memory regions. A model version that lost a backend process can never
        finish unloading: once only its stubs are left, the server is killed at once instead of
        after ``timeout`` (Triton's own exit timeout is 15 s). Returns the exit code."""
        if self.process is None:
            return None
        pgid = self.process.pid
        if self._watchdog is not None:
            self._watchdog.stop()
        if drain_timeout > 0:
            self.drain(drain_timeout)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self._wait_exit(timeout)
        try:  # stubs left behind by a crash share the process group
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            code = self.process.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        deadline = time.monotonic() + 5
        while any(p.state != "Z" for p in group_members(pgid)) and time.monotonic() < deadline:
            time.sleep(0.05)  # SIGKILL takes effect at once; the zombies are init's to reap
        self.remove_shared_memory()
        return code

    def _wait_exit(self, timeout: float) -> None:
        stale = self._watchdog.stale_pids if self._watchdog else set()
        crashed = bool(self.crashes)
        deadline, stuck_since = time.monotonic() + timeout, None
        while self.process.poll() is None and time.monotonic() < deadline:
            if crashed:
                live = [p for p in children(self.process.pid) if p.state != "Z" and p.pid not in stale]
                stuck_since = (stuck_since or time.monotonic()) if not live else None
                if stuck_since and time.monotonic() - stuck_since > STUCK_GRACE_S:
                    return  # only a crashed version's stubs are left: Triton would wait its exit timeout
            time.sleep(0.05)

    def remove_shared_memory(self) -> list[Path]:
        """Remove this server's Python-backend regions (``/dev/shm/<shm_prefix>*``) that a crash
        or a kill left; the paths removed."""
        removed = []
        for path in SHM_DIR.glob(f"{self.shm_prefix}*"):
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
        return removed

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
