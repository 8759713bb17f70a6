"""A small PaddleClas-style export made on the spot, for the offline demo and the tests.

The network names the dominant colour of an image (its pooled colour against colour
prototypes) plus a small seeded convolutional branch, so its answers are meaningful on real
photos *and* depend on every preprocessing detail (resize, crop, normalisation, RGB order).
It is exported exactly as PaddleClas exports: inference.pdmodel/.pdiparams, a softmax head,
inference_cls.yaml and a class_id_map_file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

COLOURS: dict[str, tuple[int, int, int]] = {  # RGB prototypes
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (230, 210, 40),
    "cyan": (40, 200, 210),
    "magenta": (200, 40, 200),
    "orange": (240, 140, 30),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
    "black": (15, 15, 15),
    "brown": (120, 75, 40),
    "skin": (225, 180, 150),
}


def default_transform_ops(resize_short: int = 256, crop: int = 224) -> list[dict[str, Any]]:
    return [
        {"ResizeImage": {"resize_short": resize_short}},
        {"CropImage": {"size": crop}},
        {"NormalizeImage": {"scale": 0.00392157, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "order": ""}},
        {"ToCHWImage": None},
    ]


def make_classifier(
    out_dir: str | Path,
    transform_ops: list[dict[str, Any]] | None = None,
    input_hw: tuple[int, int] = (224, 224),
    topk: int = 5,
    label_file: str | None = "colour_labels.txt",
    conv_channels: int = 16,
    seed: int = 0,
    extra_global: dict[str, Any] | None = None,
    scalar_gate: bool = False,
) -> Path:
    """Write a PaddleClas-style inference export into ``out_dir``; return it."""
    import paddle

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ops = transform_ops if transform_ops is not None else default_transform_ops()
    mean, std, scale = _normalisation(ops)
    names = list(COLOURS)
    protos = (np.array([COLOURS[n] for n in names], np.float32) * scale - mean) / std  # [K, 3]
    sharpness = 4.0
    rng = np.random.default_rng(seed)

    paddle.enable_static()
    try:
        main, startup = paddle.static.Program(), paddle.static.Program()
        # A fresh name scope: variable names (fc_0.tmp_1, ...) must not depend on what this
        # process built before.
        with paddle.utils.unique_name.guard():
            _build_program(paddle, main, startup, out, input_hw, names, protos, sharpness, rng, conv_channels, scalar_gate)
    finally:
        paddle.disable_static()
    _write_config(out, ops, names, topk, label_file, extra_global)
    return out


def _build_program(paddle, main, startup, out, input_hw, names, protos, sharpness, rng, conv_channels, scalar_gate):
    """The colour-prototype head plus a seeded two-conv texture head, saved as an inference model."""
    with paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [None, 3, *input_hw], "float32")
        pooled = paddle.flatten(paddle.nn.functional.adaptive_avg_pool2d(x, 1), 1)  # [N, 3]
        colour_logits = paddle.static.nn.fc(
            pooled, len(names),
            weight_attr=_const(2 * sharpness * protos.T),
            bias_attr=_const(-sharpness * (protos**2).sum(1)),
        )
        h = paddle.static.nn.conv2d(x, conv_channels, 3, stride=2, padding=1, act="relu",
                                    param_attr=_const(rng.normal(0, 0.3, (conv_channels, 3, 3, 3))), bias_attr=False)
        h = paddle.static.nn.batch_norm(h, is_test=True)
        h = paddle.static.nn.conv2d(h, conv_channels, 3, stride=2, padding=1, act="relu",
                                    param_attr=_const(rng.normal(0, 0.2, (conv_channels, conv_channels, 3, 3))),
                                    bias_attr=False)
        h = paddle.flatten(paddle.nn.functional.adaptive_avg_pool2d(h, 1), 1)
        texture_logits = paddle.static.nn.fc(h, len(names),
                                             weight_attr=_const(rng.normal(0, 0.5, (conv_channels, len(names)))))
        logits = colour_logits + texture_logits
        if scalar_gate:  # a 0-D activation (a scalar mean), which some quantizers trip over
            logits = logits * (1.0 + 0.0 * paddle.mean(x))
        probs = paddle.nn.functional.softmax(logits)
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(startup)
    paddle.static.save_inference_model(str(out / "inference"), [x], [probs], exe, program=main)


def _write_config(out: Path, ops, names, topk, label_file, extra_global) -> None:
    """inference_cls.yaml and the class_id_map_file, as PaddleClas exports them."""
    topk_cfg: dict[str, Any] = {"topk": topk}
    if label_file:
        (out / label_file).write_text("".join(f"{i} {n}\n" for i, n in enumerate(names)), encoding="utf-8")
        topk_cfg["class_id_map_file"] = label_file
    config = {
        "Global": {"inference_model_dir": ".", "batch_size": 1, "use_gpu": False, "enable_mkldnn": False,
                   "cpu_num_threads": 1, **(extra_global or {})},
        "PreProcess": {"transform_ops": ops},
        "PostProcess": {"main_indicator": "Topk", "Topk": topk_cfg},
    }
    (out / "inference_cls.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _const(value: np.ndarray):
    import paddle

    return paddle.ParamAttr(initializer=paddle.nn.initializer.Assign(np.asarray(value, np.float32)))


def _normalisation(ops: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, float]:
    for op in ops:
        if "NormalizeImage" in op:
            p = op["NormalizeImage"] or {}
            scale = p.get("scale", 1 / 255)
            if isinstance(scale, str):
                from .processing.ops import _eval_arithmetic

                scale = _eval_arithmetic(scale, "NormalizeImage", "scale")
            return (np.array(p.get("mean", [0.485, 0.456, 0.406]), np.float32),
                    np.array(p.get("std", [0.229, 0.224, 0.225]), np.float32), float(scale))
    return np.zeros(3, np.float32), np.ones(3, np.float32), 1.0
