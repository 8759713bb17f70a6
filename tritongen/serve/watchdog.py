"""Watch a running tritonserver: reload a Python model whose backend stub process died.

Measured on tritonserver 2.51 (nvidia-pytriton 0.7.0, CPU), and what this relies on:

- each instance of a Python model runs in a ``triton_python_backend_stub`` child of
  tritonserver, started with ``<repository>/<model>/<version>/model.py`` as its first argument
  and ``<model>_<group>_<instance>`` (e.g. ``tiny_runtime_0_0``) near the end;
- a stub that dies (``kill -9``, the OOM killer) stays a zombie child: Triton does not notice.
  The model stays READY, /v2/health/ready stays 200, and every request routed to that instance
  fails with INTERNAL "Stub process '<instance>' is not healthy" (each after ~1 s), for good;
- a plain load of the model is then a no-op; unload then load starts new stubs (~2.5 s for the
  demo classifier, warm-up included). Unloading a composing model unloads the ensembles that
  use it and loading it loads them again. Meanwhile both answer NOT_FOUND "Request for unknown
  model: '<name>' has no available versions" and /v2/health/ready (strict readiness) answers 400;
- once a request has reached the dead stub, the old version never finishes unloading: its other
  stubs stay alive, and tritonserver's own shutdown waits out ``--exit-timeout-secs``. The
  watchdog remembers them (:attr:`Watchdog.stale_pids`) so ``TritonServer.stop`` need not wait.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Protocol

STUB = "triton_python_backend_stub"
CONFIRM_S = 0.2  # a stub Triton ends on purpose is a zombie only until Triton reaps it, microseconds later


@dataclass(frozen=True)
class Proc:
    """One process as /proc shows it."""

    pid: int
    ppid: int
    pgid: int
    state: str  # "Z": exited, not reaped yet
    exit_status: int  # waitpid(2) status of a zombie (0 for a live process)
    argv: tuple[str, ...]


def processes() -> list[Proc]:
    """Every process this machine's /proc lists (a process that ends meanwhile is skipped)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            proc = read_proc(int(entry.name))
            if proc is not None:
                found.append(proc)
    return found


def read_proc(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = tuple(a.decode(errors="replace") for a in f.read().split(b"\0") if a)
    except OSError:
        return None
    exit_status = int(fields[49]) if len(fields) > 49 else 0  # field 52 of stat(5)
    return Proc(pid, int(fields[1]), int(fields[2]), fields[0].decode(), exit_status, argv)


def children(pid: int) -> list[Proc]:
    return [p for p in processes() if p.ppid == pid]


def group_members(pgid: int) -> list[Proc]:
    """Processes of the process group ``pgid`` that have not been reaped."""
    return [p for p in processes() if p.pgid == pgid]


@dataclass(frozen=True)
class Stub:
    """A running Python-backend stub: one instance of one model."""

    pid: int
    model: str
    instance: str  # <model>_<group>_<instance>, as Triton names it in its messages

    @classmethod
    def of(cls, proc: Proc) -> "Stub | None":
        argv = proc.argv
        if proc.state == "Z" or len(argv) < 2 or not argv[0].endswith(STUB):
            return None
        model = Path(argv[1]).parent.parent.name  # <repository>/<model>/<version>/model.py
        instance = next((a for a in reversed(argv) if a.startswith(f"{model}_")), f"{model}_?")
        return cls(proc.pid, model, instance)


@dataclass(frozen=True)
class StubCrash:
    """A backend stub that died, and whether (when) its model answered again."""

    model: str
    instance: str
    pid: int
    died_at: float  # time.time() when the watchdog saw it dead (within ~0.5 s of its death)
    cause: str  # "killed by SIGKILL", "exited with code 1"
    recovered_at: float | None = None  # time.time() when the model (and its ensembles) were loaded again
    error: str | None = None  # why it was not recovered

    @property
    def downtime(self) -> float | None:
        """Seconds from noticing the death to the model being ready again."""
        return None if self.recovered_at is None else self.recovered_at - self.died_at

    def __str__(self) -> str:
        return f"backend process {self.instance} (pid {self.pid}) of model {self.model} {self.cause}"


def _cause(exit_status: int) -> str:
    if exit_status & 0x7F:
        number = exit_status & 0x7F
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by {name}" + (" (also what the kernel's OOM killer sends)" if number == signal.SIGKILL else "")
    return f"exited with code {exit_status >> 8}"


class ModelControl(Protocol):
    """What the watchdog needs from the server: Triton's model-control API."""

    def load_model(self, name: str) -> None: ...

    def unload_model(self, name: str) -> None: ...

    def model_ready(self, name: str) -> bool: ...


class Watchdog:
    """A daemon thread polling tritonserver's children every ``interval`` seconds.

    A stub that died is recorded as a :class:`StubCrash`, announced through ``notify`` (one
    line), and with ``recover`` its model is reloaded through ``control`` (unload, then load;
    then any ensemble in ``ensembles_using[model]`` that is not ready again is loaded too)."""

    def __init__(self, process, control: ModelControl, *, recover: bool, notify: Callable[[str], None],
                 ensembles_using: dict[str, list[str]] | None = None, interval: float = 0.5,
                 no_recovery_reason: str = "no recovery"):
        self.process = process  # subprocess.Popen of tritonserver
        self.control = control
        self.recover = recover
        self.notify = notify
        self.ensembles_using = ensembles_using or {}
        self.interval = interval
        self.no_recovery_reason = no_recovery_reason
        self.known: dict[int, Stub] = {}  # live stubs seen so far
        self.dead: set[int] = set()  # stubs already reported (a zombie may stay for good)
        self.stale_pids: set[int] = set()  # live stubs of a model version that lost one: it may never unload
        self._crashes: list[StubCrash] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tritongen-watchdog", daemon=True)

    @property
    def crashes(self) -> list[StubCrash]:
        with self._lock:
            return list(self._crashes)

    def start(self) -> "Watchdog":
        self.scan()  # the stubs as they are now: any death from here on is news
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread (a reload in progress is given ``timeout`` seconds), then record, without
        recovering, any death it had not seen yet."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self.process.poll() is None:
            self.scan(stopping=True)

    def _run(self) -> None:
        failures = 0
        while not self._stop.wait(self.interval):
            code = self.process.poll()
            if code is not None:
                self.notify(f"tritonserver exited (code {code})")
                return
            try:
                crashes = self.scan()
                failures = 0
            except Exception as exc:  # never let the thread die silently
                failures += 1
                if failures == 1:
                    self.notify(f"watchdog: cannot read tritonserver's processes: {exc}")
                continue
            by_model: dict[str, list[StubCrash]] = {}
            for crash in crashes:
                by_model.setdefault(crash.model, []).append(crash)
            for model, group in by_model.items():
                if self._stop.is_set():
                    break
                self._reload(model, group)

    def scan(self, stopping: bool = False) -> list[StubCrash]:
        """Read tritonserver's children: remember new stubs, record and announce the ones that
        died; return those to reload (none without ``recover`` or when ``stopping``)."""
        kids = {p.pid: p for p in children(self.process.pid)}
        for proc in kids.values():
            stub = Stub.of(proc)
            if stub is not None and proc.pid not in self.dead:
                self.known[proc.pid] = stub
        for pid in [pid for pid in self.known if pid not in kids]:  # reaped: Triton unloaded it on purpose
            del self.known[pid]
        self.stale_pids &= set(kids)
        zombies = [pid for pid, proc in kids.items() if proc.state == "Z" and pid in self.known]
        if not zombies:
            return []
        time.sleep(CONFIRM_S)
        crashes = []
        for pid in zombies:
            proc = read_proc(pid)
            if proc is None or proc.state != "Z":  # reaped meanwhile: ended on purpose
                self.known.pop(pid, None)
                continue
            stub = self.known.pop(pid)
            self.dead.add(pid)
            self.stale_pids |= {p for p, s in self.known.items() if s.model == stub.model}
            reload = self.recover and not stopping
            error = None if reload else "the server was stopping" if stopping else self.no_recovery_reason
            crash = StubCrash(stub.model, stub.instance, pid, time.time(), _cause(proc.exit_status), error=error)
            with self._lock:
                self._crashes.append(crash)
            if reload:
                self.notify(f"{crash}; reloading {stub.model}")
                crashes.append(crash)
            elif not stopping:
                self.notify(f"{crash}; {stub.model} fails its requests until the server restarts ({error})")
        return crashes

    def _reload(self, model: str, crashes: list[StubCrash]) -> None:
        try:
            self.control.unload_model(model)
            self.control.load_model(model)
            for ensemble in self.ensembles_using.get(model, []):
                if not self.control.model_ready(ensemble):  # Triton loads them with the model; make sure
                    self.control.load_model(ensemble)
        except Exception as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            for crash in crashes:
                self._update(crash, error=f"reload failed: {message}")
            self.notify(f"could not reload {model}: {message}")
            return
        now = time.time()
        for crash in crashes:
            self._update(crash, recovered_at=now)
        waited = now - min(c.died_at for c in crashes)
        names = ", ".join([model, *self.ensembles_using.get(model, [])])
        self.notify(f"reloaded {names}: answering again {waited:.1f} s after the crash was seen")

    def _update(self, crash: StubCrash, **changes) -> None:
        with self._lock:
            for i, seen in enumerate(self._crashes):
                if seen.pid == crash.pid and seen.died_at == crash.died_at:
                    self._crashes[i] = replace(seen, **changes)


def ensembles_using(steps: dict[str, Iterable[str]]) -> dict[str, list[str]]:
    """``{ensemble: its step models}`` -> ``{model: the ensembles that run it}``, nested ensembles
    included (an ensemble over an ensemble over ``model``)."""
    direct: dict[str, set[str]] = {}
    for ensemble, models in steps.items():
        for model in models:
            direct.setdefault(model, set()).add(ensemble)
    result = {}
    for model in direct:
        seen, pending = set(), list(direct[model])
        while pending:
            ensemble = pending.pop()
            if ensemble not in seen:
                seen.add(ensemble)
                pending.extend(direct.get(ensemble, ()))
        result[model] = sorted(seen)
    return result
