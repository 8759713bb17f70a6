"""``--write REPO``: the chosen configuration into the repository's config.pbtxt files, atomically.

Each changed model's config.pbtxt is parsed into Triton's ``ModelConfig`` (the file as it is on
disk, not the server's filled-in config), only the tuned fields that changed are set, the result
is rendered with protobuf's text format and parsed back (``tritongen.emit.pbtxt.parse_config``)
and checked against the chosen settings; the ensemble's max_batch_size is checked against the new
composing ones. Every file is staged beside its original before any is replaced (``os.replace``),
so a failure leaves the repository untouched.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .candidate import TuneError, apply_to_proto, settings_from_json
from .search import TuneResult


@dataclass(frozen=True)
class WrittenConfig:
    model: str
    path: Path
    changes: list[str]


def _parse(path: Path, name: str):
    from ..emit.pbtxt import parse_config
    from ..errors import EmitError

    if not path.is_file():
        raise TuneError(f"{path}: missing (is the repository the one the server serves?)")
    try:
        return parse_config(path.read_text(encoding="utf-8"), name)
    except EmitError as exc:
        raise TuneError(f"{path}: {exc}") from None


def _settings_of(config):
    from google.protobuf import json_format

    return settings_from_json(json_format.MessageToDict(config, preserving_proto_field_name=True))


def write_configs(repository: str | Path, result: TuneResult) -> list[WrittenConfig]:
    """Write the chosen settings into ``repository``; return what was written (nothing when the
    chosen configuration is the served one). TuneError before any file changes when a model is
    missing or a rendered config does not validate."""
    from google.protobuf import text_format

    repository = Path(repository)
    if not repository.is_dir():
        raise TuneError(f"--write {repository}: no such model repository")
    if result.chosen is None:
        raise TuneError("no configuration met the objective; nothing to write")
    staged: list[tuple[Path, str, WrittenConfig]] = []
    for name, (before, after) in result.changes().items():
        path = repository / name / "config.pbtxt"
        config = _parse(path, name)
        kind = (result.target.configs[name].get("instance_group") or [{}])[0].get("kind", "KIND_CPU")
        changes = apply_to_proto(config, after, before, kind)
        text = header(result) + text_format.MessageToString(config)
        written = _settings_of(_parse_text(text, name, path))
        served_like = written.preferred_batch_sizes == after.preferred_batch_sizes or (
            not written.preferred_batch_sizes and after.preferred_batch_sizes == (after.max_batch_size,))
        if (written.instances, written.max_batch_size, written.max_queue_delay_us) != (
                after.instances, after.max_batch_size, after.max_queue_delay_us) or not served_like:
            raise TuneError(f"{path}: the rendered config has {written.short()}, expected {after.short()}")
        staged.append((path, text, WrittenConfig(name, path, changes)))
    if result.target.is_ensemble and staged:
        ensemble = _parse(repository / result.model / "config.pbtxt", result.model)
        for path, text, item in staged:
            size = _parse_text(text, item.model, path).max_batch_size
            if ensemble.max_batch_size > size > 0:
                raise TuneError(f"{path}: max_batch_size {size} is below the ensemble's {ensemble.max_batch_size}")
    temps: list[tuple[Path, Path]] = []
    try:
        for path, text, _ in staged:
            fd, tmp = tempfile.mkstemp(prefix=".config.pbtxt.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, path.stat().st_mode & 0o777)
            temps.append((Path(tmp), path))
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            if tmp.exists():
                tmp.unlink()
    return [item for _, _, item in staged]


def header(result: TuneResult) -> str:
    """A comment on top of each written file: what was measured for the chosen configuration."""
    c = result.chosen
    return (f"# tritongen tune {result.model}: {result.objective.describe()}, concurrency {result.concurrency}; "
            f"chose #{c.index} of {len(result.trials)}: {c.throughput:.1f} infer/s, p99 {c.p99_ms:.2f} ms\n")


def _parse_text(text: str, name: str, path: Path):
    from ..emit.pbtxt import parse_config
    from ..errors import EmitError

    try:
        return parse_config(text, name)
    except EmitError as exc:
        raise TuneError(f"{path}: the tuned config does not validate: {exc}") from None
