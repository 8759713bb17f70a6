"""Tiny PaddleDetection (PP-YOLOE) and PaddleSeg exports made on the spot, for the tests.

Like :mod:`tritongen.demo` (PaddleClas), each builder writes, in a second or two, a real
Paddle inference program whose feeds, fetches, op types and deploy config are those of the
real toolkit's export, with a network small enough to build in-process:

* :func:`make_detector` mirrors PaddleDetection 2.6 ``tools/export_model.py`` on a PP-YOLOE /
  PP-YOLOE+ config (``architecture: YOLOv3`` + ``PPYOLOEHead``, ``post_process: ~``):
  ``model.pdmodel``, ``model.pdiparams``, ``infer_cfg.yml``.
* :func:`make_segmenter` mirrors PaddleSeg 2.8 ``tools/export.py``: ``model.pdmodel``,
  ``model.pdiparams``, ``deploy.yaml``.

The networks "see" colour: class scores come from the distance of (pooled) pixel colours to
colour prototypes (the classes are colour names), plus a small seeded convolutional branch,
so different images give different, sensible answers and every preprocessing detail
(resize, normalisation, RGB order, scale_factor) changes the output.

Fetch names: Paddle 2.6's ``save_inference_model`` (and so ``paddle.jit.save``) appends an
identity ``scale`` op per fetch and fetches ``save_infer_model/scale_N.tmp_0``; Paddle <= 2.5
``jit.save`` (which made the published model-zoo exports) fetched the raw tensors, e.g.
``multiclass_nms3_0.tmp_0`` / ``multiclass_nms3_0.tmp_2`` or ``argmax_0.tmp_0``. By default the
builders remove those identity ops so the fetches are named like the published exports;
``paddle26_fetch_names=True`` keeps them.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..demo import COLOURS
from ..intake.program import load_program_desc, save_program_desc

# -------------------------------------------------------------------------------- detector

# PP-YOLOE / PP-YOLOE+ MultiClassNMS (configs/ppyoloe/_base_/ppyoloe_plus_crn.yml).
PPYOLOE_NMS = {"score_threshold": 0.01, "nms_top_k": 1000, "keep_top_k": 300, "nms_threshold": 0.7}
DETECTOR_FILES = ("model.pdmodel", "model.pdiparams", "infer_cfg.yml")
SEGMENTER_FILES = ("model.pdmodel", "model.pdiparams", "deploy.yaml")


def ppyoloe_plus_preprocess(input_hw: tuple[int, int]) -> list[dict[str, Any]]:
    """infer_cfg.yml ``Preprocess`` of a PP-YOLOE+ export (ppyoloe_plus_reader.yml TestReader).

    Each entry as ppdet's ``_parse_reader`` writes it: ``{'type': name, **params}``, Resize
    with the export's fixed ``target_size`` and its ``interp``; keys sorted as ``yaml.dump``
    sorts a plain dict. (PP-YOLOE, not "+", uses ImageNet mean/std instead.)"""
    return [
        {"interp": 2, "keep_ratio": False, "target_size": [int(input_hw[0]), int(input_hw[1])], "type": "Resize"},
        {"mean": [0.0, 0.0, 0.0], "norm_type": "none", "std": [1.0, 1.0, 1.0], "type": "NormalizeImage"},
        {"type": "Permute"},
    ]


def make_detector(
    out_dir: str | Path,
    *,
    with_nms: bool,
    num_classes: int = 4,
    input_hw: tuple[int, int] = (320, 320),
    infer_cfg_overrides: dict[str, Any] | None = None,
    seed: int = 0,
    feed_im_shape: bool = False,
    score_threshold: float = PPYOLOE_NMS["score_threshold"],
    nms_top_k: int = PPYOLOE_NMS["nms_top_k"],
    keep_top_k: int = PPYOLOE_NMS["keep_top_k"],
    nms_threshold: float = PPYOLOE_NMS["nms_threshold"],
    fpn_strides: tuple[int, ...] = (32, 16),
    reg_max: int = 4,
    arch: str = "YOLO",
    paddle26_fetch_names: bool = False,
) -> Path:
    """Write a tiny PP-YOLOE-style PaddleDetection export into ``out_dir``; return it.

    Mirrors ``tools/export_model.py`` of PaddleDetection 2.6 on a PP-YOLOE+ config
    (``TestReader.inputs_def.image_shape: [3, H, W]``, so a fixed input size):

    Feeds (in program order)
        ``image`` float32 [-1, 3, H, W]; ``scale_factor`` float32 [-1, 2] = [resized_h /
        orig_h, resized_w / orig_w]. ``feed_im_shape=True`` adds ``im_shape`` float32 [-1, 2]
        (resized [h, w]) as other archs (YOLOv3, PP-YOLO, RCNN...) feed it; the network then
        clips the boxes to the original image (im_shape / scale_factor) as yolo_box does. The
        feeds then come in the order ``im_shape, image, scale_factor``: ppdet passes a dict
        input spec and paddle's ``flatten`` sorts dict keys.
    Network (``PPYOLOEHead.forward_eval`` + ``post_process`` with a fixed ``eval_size``)
        two conv+BN+swish stages to stride 4; for each fpn stride a pooled feature map, class
        scores ``sigmoid`` -> reshape [-1, C, h*w], DFL box distributions reshape
        [-1, 4, reg_max+1, h*w] -> transpose [0, 2, 3, 1] -> softmax -> concat over levels ->
        1x1 ``proj_conv`` -> squeeze; ``batch_distance2bbox`` with constant anchor points
        (grid + 0.5) then ``*= stride``; then boxes /= scale_factor as [sx, sy, sx, sy]
        reshaped [-1, 1, 4]. Boxes are x1, y1, x2, y2 in original-image pixels.
    Fetches
        ``with_nms=True``: ``multiclass_nms3`` (background_label -1, normalized False, nms_eta
        1, with rois_num) -> ``multiclass_nms3_0.tmp_0`` float32 [-1, 6] rows (class_id,
        score, x1, y1, x2, y2) for all images, and ``multiclass_nms3_0.tmp_2`` int32 [-1]
        rows per image (the model's ``bbox`` / ``bbox_num`` outputs).
        ``with_nms=False`` (``PPYOLOEHead.exclude_nms=True``): ``post_process`` returns
        (pred_bboxes, pred_scores) as ``bbox``/``bbox_num``: boxes float32 [-1, A, 4] (the
        ``/=`` result, a ``tmp_N`` var) then scores float32 [-1, num_classes, A] (sigmoid
        probabilities, the ``concat_N.tmp_0`` of the levels), A = sum(H/s * W/s).
    infer_cfg.yml
        as ``ppdet/engine/export_utils.py::_dump_infer_config`` writes it: mode, draw_threshold,
        metric, use_dynamic_shape, arch (``YOLO`` for ``architecture: YOLOv3``; ``PPYOLOE``
        for ``architecture: PPYOLOE``), min_subgraph_size, Preprocess, label_list. ppdet
        writes no NMS section for PP-YOLOE (only PicoDet gets ``NMS``/``fpn_stride``), and
        nothing marks an exclude_nms export. ``infer_cfg_overrides`` replaces top-level keys
        (e.g. a whole ``Preprocess`` list); the network de-normalises with the final
        NormalizeImage, so overrides such as ``is_scale: false`` stay meaningful.

    Deviations from a real export: a 2-conv backbone instead of CSPResNet + CustomCSPPAN;
    the colour-prototype class head; two fpn levels by default (32, 16) instead of three;
    reg_max 4 instead of 16; classes are colour names. NMS defaults are PP-YOLOE's
    (score_threshold 0.01, nms_top_k 1000, keep_top_k 300, nms_threshold 0.7).
    """
    import paddle

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    H, W = int(input_hw[0]), int(input_hw[1])
    for s in fpn_strides:
        if H % s or W % s or s % 4:
            raise ValueError(f"input_hw {input_hw} must be a multiple of every fpn stride {fpn_strides} (each a multiple of 4)")
    names, protos = _colour_classes(num_classes, seed)
    cfg = _infer_cfg(input_hw, names, arch, infer_cfg_overrides)
    pix_scale, pix_shift = _ppdet_denormalisation(cfg.get("Preprocess", []))
    nms = {"score_threshold": float(score_threshold), "nms_top_k": int(nms_top_k),
           "keep_top_k": int(keep_top_k), "nms_threshold": float(nms_threshold)}
    rng = np.random.default_rng(seed)

    paddle.enable_static()
    try:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.utils.unique_name.guard():  # names must not depend on earlier builds
            feeds, fetches = _build_detector(
                paddle, main, startup, (H, W), protos, pix_scale, pix_shift, rng, with_nms,
                feed_im_shape, nms, tuple(fpn_strides), reg_max)
            _save(paddle, main, startup, out, feeds, fetches, paddle26_fetch_names)
    finally:
        paddle.disable_static()
    (out / "infer_cfg.yml").write_text(_dump_ordered(cfg), encoding="utf-8")
    return out


def _infer_cfg(input_hw, names, arch, overrides) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "mode": "paddle",
        "draw_threshold": 0.5,
        "metric": "COCO",
        "use_dynamic_shape": False,
        "arch": arch,
        "min_subgraph_size": 3,
        "Preprocess": ppyoloe_plus_preprocess(input_hw),
        "label_list": list(names),
    }
    for key, value in (overrides or {}).items():
        cfg[key] = copy.deepcopy(value)
    return cfg


def _ppdet_denormalisation(preprocess: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) with rgb_in_0_1 = image * a + b, undoing ppdet's NormalizeImage."""
    for op in preprocess:
        if op.get("type") == "NormalizeImage":
            is_scale = bool(op.get("is_scale", True))
            scale = 1.0 / 255.0 if is_scale else 1.0
            if op.get("norm_type", "mean_std") == "mean_std":
                mean = np.asarray(op.get("mean", [0.485, 0.456, 0.406]), np.float32)
                std = np.asarray(op.get("std", [0.229, 0.224, 0.225]), np.float32)
            else:
                mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
            # image = (pix * scale - mean) / std  ->  pix / 255 = (image * std + mean) / (scale * 255)
            return std / (scale * 255.0), mean / (scale * 255.0)
    return np.full(3, 1 / 255.0, np.float32), np.zeros(3, np.float32)  # raw 0..255 pixels


def _build_detector(paddle, main, startup, hw, protos, pix_scale, pix_shift, rng, with_nms, feed_im_shape, nms,
                    strides, reg_max):
    F = paddle.nn.functional
    H, W = hw
    C = len(protos)
    ch = 8
    with paddle.static.program_guard(main, startup):
        im_shape = paddle.static.data("im_shape", [None, 2], "float32") if feed_im_shape else None
        image = paddle.static.data("image", [None, 3, H, W], "float32")
        scale_factor = paddle.static.data("scale_factor", [None, 2], "float32")

        rgb = image * _param(paddle, pix_scale.reshape(1, 3, 1, 1)) + _param(paddle, pix_shift.reshape(1, 3, 1, 1))
        colour_logit = _colour_logits(paddle, rgb, protos, sharpness=40.0, radius=0.3)  # [N, C, H, W]
        h = _conv_bn_swish(paddle, image, ch, 3, rng.normal(0, 0.3, (ch, 3, 3, 3)))
        h = _conv_bn_swish(paddle, h, ch, ch, rng.normal(0, 0.2, (ch, ch, 3, 3)))  # stride 4

        cls_scores, reg_dists, anchors, stride_rows = [], [], [], []
        for s in strides:
            feat = F.avg_pool2d(h, s // 4, s // 4)  # [N, ch, H/s, W/s]
            colour = F.avg_pool2d(colour_logit, s, s)  # [N, C, H/s, W/s]
            avg_feat = F.adaptive_avg_pool2d(feat, 1)  # PP-YOLOE's ESE gate
            gate = F.sigmoid(paddle.static.nn.conv2d(avg_feat, ch, 1, param_attr=_const(rng.normal(0, 0.3, (ch, ch, 1, 1))),
                                                     bias_attr=_const(np.zeros(ch))))
            feat = feat * gate + feat
            cls_logit = colour + paddle.static.nn.conv2d(
                feat, C, 1, param_attr=_const(rng.normal(0, 0.1, (C, ch, 1, 1))), bias_attr=_const(np.zeros(C)))
            hs, ws = H // s, W // s
            l = hs * ws
            reg = paddle.static.nn.conv2d(
                paddle.concat([feat, colour], axis=1), 4 * (reg_max + 1), 1,
                param_attr=_const(rng.normal(0, 0.4, (4 * (reg_max + 1), ch + C, 1, 1))),
                bias_attr=_const(np.tile(-0.6 * (np.arange(reg_max + 1) - 1.5) ** 2, 4)))
            reg = paddle.transpose(paddle.reshape(reg, [-1, 4, reg_max + 1, l]), [0, 2, 3, 1])
            reg_dists.append(F.softmax(reg, axis=1))  # [N, reg_max+1, l, 4]
            cls_scores.append(paddle.reshape(F.sigmoid(cls_logit), [-1, C, l]))
            gy, gx = np.meshgrid(np.arange(hs) + 0.5, np.arange(ws) + 0.5, indexing="ij")
            anchors.append(np.stack([gx, gy], -1).reshape(-1, 2))
            stride_rows.append(np.full((l, 1), s))

        pred_scores = paddle.concat(cls_scores, axis=-1)  # [N, C, A]
        dist = paddle.concat(reg_dists, axis=2)
        proj = np.arange(reg_max + 1, dtype=np.float32).reshape(1, reg_max + 1, 1, 1)
        dist = paddle.squeeze(paddle.static.nn.conv2d(dist, 1, 1, param_attr=_const(proj), bias_attr=False), 1)  # [N, A, 4]
        anchor_points = _param(paddle, np.concatenate(anchors).astype(np.float32))
        stride_tensor = _param(paddle, np.concatenate(stride_rows).astype(np.float32))

        lt, rb = paddle.split(dist, 2, -1)  # batch_distance2bbox
        pred_bboxes = paddle.concat([-lt + anchor_points, rb + anchor_points], -1)
        pred_bboxes = pred_bboxes * stride_tensor
        scale_y, scale_x = paddle.split(scale_factor, 2, axis=-1)
        sf = paddle.reshape(paddle.concat([scale_x, scale_y, scale_x, scale_y], axis=-1), [-1, 1, 4])
        pred_bboxes = pred_bboxes / sf
        if im_shape is not None:  # clip to the original image, as yolo_box does with im_shape
            origin = paddle.floor(im_shape / scale_factor + 0.5)
            oh, ow = paddle.split(origin, 2, axis=-1)
            upper = paddle.reshape(paddle.concat([ow, oh, ow, oh], axis=-1), [-1, 1, 4])
            pred_bboxes = paddle.minimum(paddle.maximum(pred_bboxes, paddle.zeros_like(pred_bboxes)), upper)

        if with_nms:
            bbox, bbox_num = _multiclass_nms3(pred_bboxes, pred_scores, **nms)
            fetches = [bbox, bbox_num]
        else:
            fetches = [pred_bboxes, pred_scores]
    feeds = [v for v in (im_shape, image, scale_factor) if v is not None]
    return feeds, fetches


def _multiclass_nms3(bboxes, scores, *, score_threshold, nms_top_k, keep_top_k, nms_threshold, normalized=False):
    """The static-graph branch of ``ppdet.modeling.ops.multiclass_nms`` (paddle 2.6 has no
    public multiclass_nms API) as ``MultiClassNMS.__call__`` calls it for PP-YOLOE."""
    from paddle.base.layer_helper import LayerHelper

    helper = LayerHelper("multiclass_nms3")
    output = helper.create_variable_for_type_inference(dtype=bboxes.dtype)
    index = helper.create_variable_for_type_inference(dtype="int32")
    rois_num = helper.create_variable_for_type_inference(dtype="int32")
    helper.append_op(
        type="multiclass_nms3",
        inputs={"BBoxes": bboxes, "Scores": scores},
        attrs={"background_label": -1, "score_threshold": score_threshold, "nms_top_k": nms_top_k,
               "nms_threshold": nms_threshold, "keep_top_k": keep_top_k, "nms_eta": 1.0, "normalized": normalized},
        outputs={"Out": output, "Index": index, "NmsRoisNum": rois_num},
    )
    output.stop_gradient = index.stop_gradient = rois_num.stop_gradient = True
    return output, rois_num


def _conv_bn_swish(paddle, x, out_ch, in_ch, weight):
    h = paddle.static.nn.conv2d(x, out_ch, 3, stride=2, padding=1, param_attr=_const(weight), bias_attr=False)
    h = paddle.static.nn.batch_norm(h, is_test=True)
    return paddle.nn.functional.swish(h)


# ------------------------------------------------------------------------------ segmenter


def make_segmenter(
    out_dir: str | Path,
    *,
    with_argmax: bool,
    num_classes: int = 5,
    input_hw: tuple[int, int] | None = None,
    deploy_overrides: dict[str, Any] | None = None,
    seed: int = 0,
    output_op: str | None = None,
    paddle26_fetch_names: bool = False,
) -> Path:
    """Write a tiny PaddleSeg-style export into ``out_dir``; return it.

    Mirrors PaddleSeg 2.8 ``tools/export.py`` (``WrappedModel`` from
    ``paddleseg/deploy/export.py``, ``paddle.jit.save(model, save_dir/'model')``):

    Feed
        ``x`` float32 [-1, 3, -1, -1] (the forward argument's name; ``input_hw=(H, W)`` gives
        [-1, 3, H, W], as ``--input_shape -1 3 H W`` would).
    Network
        fully convolutional: per-pixel colour-prototype logits and two stride-2 conv+BN+ReLU
        stages, both at stride 4, added, then ``F.interpolate(logit, paddle.shape(x)[2:],
        mode='bilinear', align_corners=False)`` back to the input size (``bilinear_interp_v2``
        with a runtime size, as PP-LiteSeg does).
    Fetch (``output_op``; default ``'argmax'`` if ``with_argmax`` else ``'none'``)
        ``argmax``: ``paddle.argmax(logit, axis=1, dtype='int32')`` -> int32 [-1, H, W]
        label map (``argmax_0.tmp_0``); ``softmax``: float32 [-1, C, H, W] probabilities;
        ``none``: float32 [-1, C, H, W] logits. (PaddleSeg < 2.8's export.py used
        ``paddle.argmax(out, axis=1)``: int64.)
    deploy.yaml
        ``yaml.dump`` (sorted keys) of ``{'Deploy': {model, params, transforms, input_shape,
        output_op, output_dtype}}``; ``transforms`` is the config's val_dataset transforms,
        here ``[{type: Normalize, mean: [0.5]*3, std: [0.5]*3}]`` (PP-LiteSeg configs write a
        bare ``- type: Normalize`` meaning those defaults); ``input_shape`` is the InputSpec
        shape, ``[null, 3, null, null]`` for the default dynamic export (2.8 uses
        ``[None, 3, None, None]``); ``output_dtype`` int32 for argmax else float32.
        ``deploy_overrides`` replaces keys inside ``Deploy``; the network de-normalises with
        the final Normalize transform.

    Deviations from a real export: a 2-conv network instead of STDCNet + PP-LiteSeg decoder;
    colour-named classes (class k = the k-th colour of :data:`tritongen.demo.COLOURS`).
    """
    import paddle

    op = output_op or ("argmax" if with_argmax else "none")
    if op not in ("argmax", "softmax", "none"):
        raise ValueError(f"output_op must be argmax, softmax or none, not {op!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names, protos = _colour_classes(num_classes, seed)
    shape = [None, 3, None, None] if input_hw is None else [-1, 3, int(input_hw[0]), int(input_hw[1])]
    deploy: dict[str, Any] = {
        "model": "model.pdmodel",
        "params": "model.pdiparams",
        "transforms": [{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "type": "Normalize"}],
        "input_shape": shape,
        "output_op": op,
        "output_dtype": "int32" if op == "argmax" else "float32",
    }
    for key, value in (deploy_overrides or {}).items():
        deploy[key] = copy.deepcopy(value)
    pix_scale, pix_shift = _seg_denormalisation(deploy.get("transforms") or [])
    rng = np.random.default_rng(seed)

    paddle.enable_static()
    try:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.utils.unique_name.guard():
            feeds, fetches = _build_segmenter(paddle, main, startup, input_hw, protos, pix_scale, pix_shift, rng, op)
            _save(paddle, main, startup, out, feeds, fetches, paddle26_fetch_names)
    finally:
        paddle.disable_static()
    (out / "deploy.yaml").write_text(yaml.safe_dump({"Deploy": deploy}), encoding="utf-8")
    return out


def _seg_denormalisation(transforms: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) with rgb_in_0_1 = x * a + b, undoing PaddleSeg's Normalize (im/255 - mean) / std."""
    for t in transforms:
        if t.get("type") == "Normalize":
            mean = np.broadcast_to(np.asarray(t.get("mean", [0.5]), np.float32), 3)
            std = np.broadcast_to(np.asarray(t.get("std", [0.5]), np.float32), 3)
            return std.copy(), mean.copy()
    return np.full(3, 1 / 255.0, np.float32), np.zeros(3, np.float32)


def _build_segmenter(paddle, main, startup, input_hw, protos, pix_scale, pix_shift, rng, op):
    F = paddle.nn.functional
    C = len(protos)
    ch = 8
    with paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [None, 3, *(input_hw or (None, None))], "float32")
        rgb = x * _param(paddle, pix_scale.reshape(1, 3, 1, 1)) + _param(paddle, pix_shift.reshape(1, 3, 1, 1))
        colour = _colour_logits(paddle, rgb, protos, sharpness=12.0, radius=0.3)
        colour = F.avg_pool2d(F.avg_pool2d(colour, 3, 2, 1), 3, 2, 1)  # stride 4, ceil(H/4)
        h = x
        for i, in_ch in enumerate((3, ch)):
            h = paddle.static.nn.conv2d(h, ch, 3, stride=2, padding=1, bias_attr=False,
                                        param_attr=_const(rng.normal(0, 0.3 if i == 0 else 0.2, (ch, in_ch, 3, 3))))
            h = F.relu(paddle.static.nn.batch_norm(h, is_test=True))
        logit = colour + paddle.static.nn.conv2d(h, C, 1, param_attr=_const(rng.normal(0, 0.15, (C, ch, 1, 1))),
                                                 bias_attr=_const(np.zeros(C)))
        logit = F.interpolate(logit, paddle.shape(x)[2:], mode="bilinear", align_corners=False)
        if op == "argmax":
            result = paddle.argmax(logit, axis=1, dtype="int32")
        elif op == "softmax":
            result = F.softmax(logit, axis=1)
        else:
            result = logit
    return [x], [result]


# --------------------------------------------------------------------------------- shared


def _colour_classes(num_classes: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Class names and RGB prototypes in [0, 1]: the demo's colours, then seeded extras."""
    if num_classes < 1:
        raise ValueError("num_classes must be >= 1")
    names = list(COLOURS)[:num_classes]
    protos = [np.array(COLOURS[n], np.float32) / 255.0 for n in names]
    rng = np.random.default_rng(seed + 1000)
    while len(names) < num_classes:
        names.append(f"class_{len(names)}")
        protos.append(rng.uniform(0, 1, 3).astype(np.float32))
    return names, np.stack(protos)


def _colour_logits(paddle, rgb, protos, *, sharpness: float, radius: float):
    """sharpness * (radius^2 - |rgb - proto_c|^2) per pixel: [N, C, H, W]; > 0 near a prototype."""
    cross = paddle.static.nn.conv2d(
        rgb, len(protos), 1, param_attr=_const((2 * sharpness * protos)[:, :, None, None]),
        bias_attr=_const(sharpness * (radius**2 - (protos**2).sum(1))))
    return cross - sharpness * paddle.sum(rgb * rgb, axis=1, keepdim=True)


def _save(paddle, main, startup, out: Path, feeds, fetches, paddle26_fetch_names: bool) -> None:
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(startup)
    paddle.static.save_inference_model(str(out / "model"), feeds, fetches, exe, program=main)
    _tidy_program(out / "model.pdmodel", strip_fetch_scales=not paddle26_fetch_names)


def _tidy_program(model_file: Path, *, strip_fetch_scales: bool) -> None:
    """Drop the ``op_callstack`` debug attributes a few ops keep (Python tracebacks: the
    bytes would depend on the caller) and, with ``strip_fetch_scales``, the identity
    ``save_infer_model/scale_N`` ops Paddle 2.6 appends before each fetch, so the fetch ops
    read the raw tensors as in exports made by Paddle <= 2.5 ``jit.save``."""
    program = load_program_desc(model_file)
    for blk in program.blocks:
        for op in blk.ops:
            attrs = [a for a in op.attrs if a.name != "op_callstack"]
            if len(attrs) != len(op.attrs):
                del op.attrs[:]
                op.attrs.extend(attrs)
    block = program.blocks[0]
    renamed: dict[str, str] = {}
    keep = []
    for op in block.ops:
        outs = [a for v in op.outputs for a in v.arguments]
        if strip_fetch_scales and op.type == "scale" and outs and outs[0].startswith("save_infer_model/scale_"):
            renamed[outs[0]] = next(a for v in op.inputs if v.parameter == "X" for a in v.arguments)
            continue
        keep.append(op)
    if not renamed:
        save_program_desc(program, model_file)
        return
    for op in keep:
        if op.type == "fetch":
            for v in op.inputs:
                v.arguments[:] = [renamed.get(a, a) for a in v.arguments]
    del block.ops[:]
    block.ops.extend(keep)
    kept_vars = [v for v in block.vars if v.name not in renamed]
    del block.vars[:]
    block.vars.extend(kept_vars)
    save_program_desc(program, model_file)


def _dump_ordered(cfg: dict[str, Any]) -> str:
    """ppdet dumps the top level in insertion order (an OrderedDict representer) and every
    nested plain dict with sorted keys."""
    return "".join(yaml.safe_dump({k: v}, default_flow_style=False, sort_keys=True) for k, v in cfg.items())


def _const(value):
    import paddle

    return paddle.ParamAttr(initializer=paddle.nn.initializer.Assign(np.asarray(value, np.float32)))


def _param(paddle, value: np.ndarray):
    """A persistable constant saved in model.pdiparams (like ppdet's anchor buffers)."""
    value = np.asarray(value, np.float32)
    p = paddle.static.create_parameter(list(value.shape), "float32",
                                       default_initializer=paddle.nn.initializer.Assign(value))
    p.stop_gradient = True
    return p
