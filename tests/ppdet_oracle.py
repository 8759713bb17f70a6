"""PaddleDetection's own data operators (ppdet 2.6 wheel), loaded without the ppdet package.

``ppdet/data/transform/operators.py`` is read from the installed paddledet package (the setup
script installs it with --no-deps: a test oracle, never a runtime dependency); the few
framework modules it imports at the top (workspace registry, logger, op helpers) are stubbed,
since Resize / NormalizeImage / Permute / Pad do not use them.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path

_MODULE = None


def operators_file() -> Path | None:
    """ppdet's operators.py on disk, found without importing ppdet (its __init__ needs the training stack)."""
    spec = importlib.util.find_spec("ppdet")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "transform" / "operators.py"
    return path if path.is_file() else None


def load():
    global _MODULE
    if _MODULE is not None:
        return _MODULE
    path = operators_file()
    if path is None:
        return None
    source = path.read_text(encoding="utf-8")
    saved = {k: sys.modules.get(k) for k in list(sys.modules) if k == "ppdet" or k.startswith("ppdet.")}

    def stub(name, **attrs):
        mod = types.ModuleType(name)
        mod.__path__ = []
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    helper_names = ["satisfy_sample_constraint", "filter_and_process", "generate_sample_bbox", "clip_bbox",
                    "data_anchor_sampling", "satisfy_sample_constraint_coverage", "crop_image_sampling",
                    "generate_sample_bbox_square", "bbox_area_sampling", "is_poly", "get_border"]
    try:
        stub("ppdet")
        stub("ppdet.core")
        stub("ppdet.core.workspace", serializable=lambda cls: cls)
        stub("ppdet.data")
        stub("ppdet.data.reader", Compose=object)
        stub("ppdet.data.transform")
        stub("ppdet.data.transform.op_helper", **{n: None for n in helper_names})
        stub("ppdet.utils")
        stub("ppdet.utils.logger", setup_logger=lambda name: logging.getLogger(name))
        stub("ppdet.modeling")
        stub("ppdet.modeling.keypoint_utils", get_affine_transform=None, affine_transform=None)
        mod = types.ModuleType("ppdet.data.transform.operators")
        mod.__package__ = "ppdet.data.transform"
        exec(compile(source, "ppdet/data/transform/operators.py", "exec"), mod.__dict__)
    finally:
        for k in [k for k in sys.modules if k == "ppdet" or k.startswith("ppdet.")]:
            del sys.modules[k]
        sys.modules.update({k: v for k, v in saved.items() if v is not None})
    _MODULE = mod
    return mod


def paddle_nms(boxes, scores, nms: dict):
    """Paddle's own multiclass_nms3 op (as ppdet's MultiClassNMS calls it) on raw boxes [N, A, 4] /
    scores [N, C, A] -> (rows [M, 6], per-image counts). ``nms``: score_threshold, nms_top_k,
    keep_top_k, nms_threshold and optionally normalized (default False)."""
    import numpy as np
    import paddle

    from tritongen.testing.demo_exports import _multiclass_nms3

    keys = ("score_threshold", "nms_top_k", "keep_top_k", "nms_threshold", "normalized")
    paddle.enable_static()
    try:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, startup):
            b = paddle.static.data("b", [None, boxes.shape[1], 4], "float32")
            s = paddle.static.data("s", [None, scores.shape[1], scores.shape[2]], "float32")
            out, num = _multiclass_nms3(b, s, **{k: nms[k] for k in keys if k in nms})
        exe = paddle.static.Executor(paddle.CPUPlace())
        rows, counts = exe.run(main, feed={"b": boxes.astype(np.float32), "s": scores.astype(np.float32)},
                               fetch_list=[out, num])
    finally:
        paddle.disable_static()
    return np.asarray(rows), np.asarray(counts)
