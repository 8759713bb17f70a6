"""What ``tritongen tune`` varies: per composing model, instances and dynamic-batching settings.

A :class:`Candidate` is read from the configs the server serves (JSON, as Triton's model
configuration API returns them) and applied back to such a config, complete, for a load
request with a config override (Triton does not merge an override into config.pbtxt: it
replaces it), or to a parsed ``config.pbtxt`` (``model_config_pb2.ModelConfig``) for ``--write``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Iterator

from ..errors import TritongenError


class TuneError(TritongenError):
    """``tritongen tune`` cannot run: bad settings, an unknown model, a server not in explicit mode."""


@dataclass(frozen=True)
class ModelSettings:
    """One model's tunables. ``max_queue_delay_us`` None: the model has no dynamic batching
    (tune never adds it: a model without it may not handle several requests per execution)."""

    instances: int
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int | None = None

    @property
    def dynamic_batching(self) -> bool:
        return self.max_queue_delay_us is not None

    def problems(self) -> list[str]:
        """Why Triton would refuse these settings (its own message is 'failed to poll')."""
        out = []
        if self.instances < 1:
            out.append("instances must be >= 1")
        if self.max_batch_size < 0:
            out.append("max_batch_size must be >= 0")
        if self.dynamic_batching and self.max_queue_delay_us < 0:
            out.append("max_queue_delay_microseconds must be >= 0")
        if any(p < 1 or (self.max_batch_size and p > self.max_batch_size) for p in self.preferred_batch_sizes):
            out.append(f"preferred batch sizes {list(self.preferred_batch_sizes)} must lie in 1..max_batch_size "
                       f"({self.max_batch_size})")
        if self.preferred_batch_sizes and not self.dynamic_batching:
            out.append("preferred batch sizes need dynamic batching")
        return out

    def short(self) -> str:
        """``2×`` or ``1× b8 [4] 100µs``: instances, then batching when the model batches dynamically."""
        text = f"{self.instances}×"
        if self.dynamic_batching:
            preferred = f" [{','.join(map(str, self.preferred_batch_sizes))}]" if self.preferred_batch_sizes else ""
            text += f" b{self.max_batch_size}{preferred} {self.max_queue_delay_us}µs"
        elif self.max_batch_size:
            text += f" b{self.max_batch_size}"
        return text


@dataclass(frozen=True)
class Candidate:
    """A configuration of the tuned models (an ensemble's composing models, or the model itself)."""

    models: tuple[tuple[str, ModelSettings], ...]

    @classmethod
    def of(cls, settings: dict[str, ModelSettings]) -> "Candidate":
        return cls(tuple(settings.items()))

    def __getitem__(self, name: str) -> ModelSettings:
        for key, value in self.models:
            if key == name:
                return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[tuple[str, ModelSettings]]:
        return iter(self.models)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.models]

    def with_model(self, name: str, **changes: Any) -> "Candidate":
        return Candidate(tuple((n, replace(s, **changes) if n == name else s) for n, s in self.models))

    def changed_models(self, other: "Candidate") -> list[str]:
        """Models whose settings differ from ``other``'s."""
        return [name for name, settings in self.models if other[name] != settings]

    def problems(self, floor_batch_size: int = 0) -> list[str]:
        out = [f"{name}: {p}" for name, s in self.models for p in s.problems()]
        for name, s in self.models:
            if floor_batch_size and s.max_batch_size and s.max_batch_size < floor_batch_size:
                out.append(f"{name}: max_batch_size {s.max_batch_size} is below the ensemble's {floor_batch_size}")
        return out

    def describe(self, strip_prefix: str = "") -> str:
        return " · ".join(f"{short_name(n, strip_prefix)} {s.short()}" for n, s in self.models)


def short_name(name: str, prefix: str) -> str:
    """``NAME_runtime`` -> ``runtime`` (prefix ``NAME_``), for tables."""
    return name[len(prefix):] if prefix and name.startswith(prefix) and len(name) > len(prefix) else name


def settings_from_json(config: dict[str, Any]) -> ModelSettings:
    """A model's tunables from its served config (Triton's JSON: int64 fields arrive as strings)."""
    groups = config.get("instance_group") or [{}]
    batching = config.get("dynamic_batching")
    return ModelSettings(
        instances=int(groups[0].get("count", 1)),
        max_batch_size=int(config.get("max_batch_size", 0)),
        preferred_batch_sizes=tuple(int(p) for p in (batching or {}).get("preferred_batch_size", [])),
        max_queue_delay_us=int(batching.get("max_queue_delay_microseconds", 0)) if batching is not None else None,
    )


def apply_to_json(config: dict[str, Any], settings: ModelSettings) -> dict[str, Any]:
    """A copy of a served config (JSON) with ``settings``: the complete override for a load request.

    Only the first instance group's count is tuned; other groups are kept as they are."""
    out = copy.deepcopy(config)
    groups = out.get("instance_group") or [{"kind": "KIND_CPU"}]
    groups[0] = {**groups[0], "count": settings.instances}
    out["instance_group"] = groups
    out["max_batch_size"] = settings.max_batch_size
    if settings.dynamic_batching:
        batching = dict(out.get("dynamic_batching") or {})
        batching["preferred_batch_size"] = list(settings.preferred_batch_sizes)
        batching["max_queue_delay_microseconds"] = str(settings.max_queue_delay_us)
        out["dynamic_batching"] = batching
    else:
        out.pop("dynamic_batching", None)
    return out


def apply_to_proto(config, settings: ModelSettings, base: ModelSettings, kind: str = "KIND_CPU") -> list[str]:
    """Set on ``config`` (a ``ModelConfig``) the fields where ``settings`` differs from ``base``
    (the served settings the search started from), so fields Triton filled in when it loaded the
    model (a preferred batch size equal to max_batch_size, ...) are not written into the file.
    Returns what changed, as text."""
    from tritonclient.grpc import model_config_pb2

    changes = []
    if settings.instances != base.instances:
        if not config.instance_group:
            group = config.instance_group.add()
            group.kind = model_config_pb2.ModelInstanceGroup.Kind.Value(kind)
        config.instance_group[0].count = settings.instances
        changes.append(f"instances {base.instances} -> {settings.instances}")
    if settings.max_batch_size != base.max_batch_size:
        config.max_batch_size = settings.max_batch_size
        changes.append(f"max_batch_size {base.max_batch_size} -> {settings.max_batch_size}")
    if settings.dynamic_batching != base.dynamic_batching:
        if settings.dynamic_batching:
            config.dynamic_batching.SetInParent()
        else:
            config.ClearField("dynamic_batching")
    filled_in = settings.preferred_batch_sizes == (settings.max_batch_size,) and not config.dynamic_batching.preferred_batch_size
    if settings.preferred_batch_sizes != base.preferred_batch_sizes and not filled_in:  # Triton fills [max_batch_size] in
        del config.dynamic_batching.preferred_batch_size[:]
        config.dynamic_batching.preferred_batch_size.extend(settings.preferred_batch_sizes)
        changes.append(f"preferred_batch_size {list(base.preferred_batch_sizes)} -> {list(settings.preferred_batch_sizes)}")
    if settings.max_queue_delay_us != base.max_queue_delay_us and settings.dynamic_batching:
        config.dynamic_batching.max_queue_delay_microseconds = settings.max_queue_delay_us
        changes.append(f"max_queue_delay_microseconds {base.max_queue_delay_us} -> {settings.max_queue_delay_us}")
    return changes
