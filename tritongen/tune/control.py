"""Triton's model-control API: load a candidate through config overrides and check it took effect.

Observed on tritonserver 2.51 (the container's 24.10 is the same release), and what this relies on:

- only a server in ``--model-control-mode=explicit`` accepts load requests; the others answer
  "explicit model load / unload is not allowed if polling is enabled";
- an override replaces config.pbtxt (it is not merged), so it is always the complete config;
- reloading a composing model reloads the ensembles that use it, and a later plain load of the
  ensemble keeps the composing models' overrides (a plain load of an overridden model is a no-op);
- an invalid override is refused with "failed to poll from model repository" and the old model
  keeps serving; a composing max_batch_size below the ensemble's unloads the ensemble. Candidates
  are therefore checked here first (:meth:`Candidate.problems`).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from .candidate import Candidate, TuneError, apply_to_json, settings_from_json

NOT_EXPLICIT = "not allowed if polling is enabled"  # Triton's answer outside explicit mode


@dataclass
class TuneTarget:
    """The model to tune and the models whose settings the search changes."""

    model: str
    tuned: list[str]  # composing models (non-ensemble), in step order; [model] for a plain model
    configs: dict[str, dict[str, Any]]  # served configs (JSON) at the start: what every override is built on
    is_ensemble: bool
    floor_batch_size: int  # the ensemble's max_batch_size: no composing model may go below it
    string_inputs: tuple[str, ...] = ()  # BYTES inputs (encoded images: perf needs --images)

    @property
    def prefix(self) -> str:
        """``NAME_``: stripped from composing model names in tables."""
        return f"{self.model}_" if self.is_ensemble else ""

    def baseline(self) -> Candidate:
        return Candidate.of({name: settings_from_json(self.configs[name]) for name in self.tuned})


class ModelControl:
    """A gRPC client for one server: inspect the model, load candidates, verify them."""

    def __init__(self, url: str, timeout_s: float = 300.0):
        import tritonclient.grpc as grpcclient

        self.url, self.timeout_s = url, timeout_s
        try:
            self.client = grpcclient.InferenceServerClient(url=url)
        except Exception as exc:  # malformed URL
            raise TuneError(f"cannot create a gRPC client for {url!r}: {exc}") from None
        self.loaded: dict[str, Any] = {}  # model -> ModelSettings it serves now (None: unknown)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "ModelControl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_live(self) -> None:
        from tritonclient.utils import InferenceServerException

        try:
            live = self.client.is_server_live(client_timeout=10)
        except InferenceServerException as exc:
            raise TuneError(f"Triton at {self.url} is unreachable: {exc.message() or exc}") from None
        if not live:
            raise TuneError(f"Triton at {self.url} is not live")

    def inspect(self, model: str) -> TuneTarget:
        """The model and its composing models; TuneError if it is unknown or not ready."""
        from tritonclient.utils import InferenceServerException

        self.check_live()
        try:
            index = self.client.get_model_repository_index(client_timeout=30)
        except InferenceServerException as exc:
            raise TuneError(f"cannot read the model repository of {self.url}: {exc.message()}") from None
        states = {m.name: (m.state, m.reason) for m in index.models}
        if model not in states:
            raise TuneError(f"model {model!r} is not in the repository served at {self.url} "
                            f"(models: {', '.join(sorted(states)) or 'none'})")
        if not self.client.is_model_ready(model, client_timeout=30):
            state, reason = states[model]
            raise TuneError(f"model {model!r} is not ready on {self.url} ({state or 'not loaded'}"
                            f"{': ' + reason if reason else ''})")
        config = self.served_config(model)
        steps = [s["model_name"] for s in config.get("ensemble_scheduling", {}).get("step", [])]
        is_ensemble = config.get("platform") == "ensemble"
        tuned, configs, pending = [], {model: config}, list(steps)
        while pending:  # nested ensembles: tune what they run
            name = pending.pop(0)
            if name in configs:
                continue
            configs[name] = self.served_config(name)
            sub_steps = [s["model_name"] for s in configs[name].get("ensemble_scheduling", {}).get("step", [])]
            if sub_steps:
                pending[:0] = sub_steps
            else:
                tuned.append(name)
        if not is_ensemble:
            tuned = [model]
        floor = int(config.get("max_batch_size", 0)) if is_ensemble else 0
        strings = tuple(t["name"] for t in config.get("input", []) if t.get("data_type") == "TYPE_STRING")
        target = TuneTarget(model, tuned, {n: configs[n] for n in tuned}, is_ensemble, floor, strings)
        self.loaded = dict(target.baseline())
        return target

    def served_config(self, name: str) -> dict[str, Any]:
        from tritonclient.utils import InferenceServerException

        try:
            response = self.client.get_model_config(name, as_json=True, client_timeout=30)
        except InferenceServerException as exc:
            raise TuneError(f"cannot read the config of {name!r} from {self.url}: {exc.message()}") from None
        return response["config"]

    def require_explicit(self, model: str) -> None:
        """A plain load request of ``model``: refused unless the server runs in explicit mode
        (where it changes nothing: the model is loaded and unchanged)."""
        from tritonclient.utils import InferenceServerException

        try:
            self.client.load_model(model, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            message = exc.message() or str(exc)
            if NOT_EXPLICIT in message:
                raise TuneError(
                    f"Triton at {self.url} does not accept model-control requests (it runs without "
                    "--model-control-mode=explicit); start it with `tritongen serve --model-control explicit` or "
                    "`tritonserver --model-control-mode=explicit --load-model=*`") from None
            raise TuneError(f"load request for {model!r} failed on {self.url}: {message}") from None

    def load(self, target: TuneTarget, candidate: Candidate) -> None:
        """Serve ``candidate``: each composing model whose settings differ from what it serves is
        loaded with its config override, then the ensemble is reloaded; the served configs are read
        back and compared. TuneError with Triton's message when a load is refused."""
        from tritonclient.utils import InferenceServerException

        problems = candidate.problems(target.floor_batch_size)
        if problems:
            raise TuneError("invalid configuration: " + "; ".join(problems))
        for name, settings in candidate:
            if self.loaded.get(name) == settings:
                continue
            override = apply_to_json(target.configs[name], settings)
            self.loaded[name] = None  # unknown until the load succeeds
            try:
                self.client.load_model(name, config=json.dumps(override),
                           client_timeout=self.timeout_s)
            except InferenceServerException as exc:
                raise TuneError(f"Triton refused {name} with {settings.short()}: {exc.message()}") from None
            self.loaded[name] = settings
        if target.is_ensemble:
            try:
                self.client.load_model(target.model, client_timeout=self.timeout_s)
            except InferenceServerException as exc:
                raise TuneError(f"Triton could not reload {target.model}: {exc.message()}") from None
        self._wait_ready(target.model)
        self.verify(target, candidate)

    def _wait_ready(self, model: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.client.is_model_ready(model, client_timeout=30):
            if time.monotonic() > deadline:
                raise TuneError(f"{model} is not ready {timeout_s:.0f}s after loading")
            time.sleep(0.2)

    def verify(self, target: TuneTarget, candidate: Candidate) -> None:
        """The server's configs carry the candidate (a preferred batch size Triton filled in as
        max_batch_size counts as none)."""
        for name, wanted in candidate:
            served = settings_from_json(self.served_config(name))
            same = (served.instances, served.max_batch_size, served.max_queue_delay_us) == (
                wanted.instances, wanted.max_batch_size, wanted.max_queue_delay_us)
            preferred_ok = served.preferred_batch_sizes == wanted.preferred_batch_sizes or (
                not wanted.preferred_batch_sizes and served.preferred_batch_sizes == (served.max_batch_size,))
            if not (same and preferred_ok):
                self.loaded[name] = None
                raise TuneError(f"Triton at {self.url} serves {name} with {served.short()} after loading it with "
                                f"{wanted.short()}: the override did not take effect")
