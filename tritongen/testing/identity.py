"""A trivial identity Python model, the reference load for ``tritongen perf`` tests and benchmarks."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..emit.pbtxt import NUMPY_TO_TRITON, parse_config, render_config, template_path


def write_identity_model(repository: str | Path, name: str = "identity", dims: tuple[int, ...] = (16,),
                         dtype: str = "float32", max_batch_size: int = 8, instances: int = 1,
                         dynamic_batching: bool = True, delay_ms: float = 0.0) -> Path:
    """``repository/name``: INPUT0 -> OUTPUT0, same dtype and dims, python backend; each
    execution sleeps ``delay_ms``."""
    tensor = {"data_type": NUMPY_TO_TRITON[dtype], "dims": list(dims)}
    text = render_config(
        "model/config.pbtxt.j2", name=name, platform=None, backend="python", max_batch_size=max_batch_size,
        inputs=[{"name": "INPUT0", **tensor}], outputs=[{"name": "OUTPUT0", **tensor}], instance_count=instances,
        instance_kind="KIND_CPU", dynamic_batching=dynamic_batching, preferred_batch_sizes=[], max_queue_delay_us=0,
        gpu_accelerators=[], parameters={"delay_ms": f"{delay_ms:g}"},
    )
    parse_config(text, name)
    model = Path(repository) / name
    (model / "1").mkdir(parents=True, exist_ok=True)
    (model / "config.pbtxt").write_text(text, encoding="utf-8")
    shutil.copyfile(template_path("python/identity.py"), model / "1" / "model.py")
    return model
