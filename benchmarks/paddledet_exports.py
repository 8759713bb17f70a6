"""PP-YOLOE-s (ppyoloe_crn_s_300e_coco) as a PaddleDetection deploy export, for benchmarks.

The network is built from the ``paddledet`` 2.6 wheel's own classes (``CSPResNet``,
``CustomCSPPAN``, ``PPYOLOEHead``, ``MultiClassNMS``, architecture ``YOLOv3``) with the
arguments of the upstream config, which the wheel does not ship::

    configs/ppyoloe/ppyoloe_crn_s_300e_coco.yml   depth_mult 0.33, width_mult 0.50
    configs/ppyoloe/_base_/ppyoloe_crn.yml        architecture YOLOv3, CSPResNet layers
        [3, 6, 6, 3] channels [64, 128, 256, 512, 1024] return_idx [1, 2, 3] use_large_stem;
        CustomCSPPAN out_channels [768, 384, 192] stage_num 1 block_num 3 act swish spp;
        PPYOLOEHead fpn_strides [32, 16, 8] grid_cell_scale 5.0 grid_cell_offset 0.5;
        nms MultiClassNMS nms_top_k 1000 keep_top_k 100 score_threshold 0.01 nms_threshold 0.6
    configs/ppyoloe/_base_/ppyoloe_reader.yml     eval_size [640, 640]; TestReader Resize
        640x640 keep_ratio false interp 2, NormalizeImage ImageNet mean/std is_scale, Permute
    (github.com/PaddlePaddle/PaddleDetection, release/2.6)

The benchmarks run offline (no trained weights are downloaded), so the weights are random with
BatchNorm statistics re-estimated on real photos (skimage's sample images) pushed through the
deploy preprocessing: activations then have realistic ranges, which is what latency and INT8
calibration depend on.
The prediction convolutions get random weights too (upstream initialises them to zero, which
gives every anchor exactly score 0.01: NMS would see no box at all), and the classification
one is then rescaled so that on the 75th-percentile photo about ``CANDIDATES_PER_IMAGE``
scores pass NMS's 0.01 threshold and about ``DETECTIONS_PER_IMAGE`` the 0.5
``draw_threshold`` (flat photos get none, busy ones many more; ``export_info.yml`` lists every
photo's counts): the boxes are garbage, but NMS and post-processing have a trained model's
amount of work. Latency is meaningful; INT8-vs-FP32 agreement is not (a random network's
scores are a small residual on a large common offset, which INT8 rounding swamps).

The export is what ``tools/export_model.py`` writes (``ppdet/engine/trainer.py``
``_get_infer_cfg_and_input_spec`` + ``export_utils.py``): RepVGG blocks fused
(``convert_to_deploy``), ``paddle.jit.to_static`` with the ``image`` [-1, 3, 640, 640] /
``im_shape`` / ``scale_factor`` spec, the spec pruned to the feeds the program uses (``image``,
``scale_factor``), ``paddle.jit.save`` to ``model.pdmodel``/``model.pdiparams``, and
``infer_cfg.yml``. By default ``multiclass_nms3`` is in the graph; ``--exclude-nms`` is
``-o PPYOLOEHead.exclude_nms=True`` (raw boxes [N, 8400, 4] and scores [N, 80, 8400]); both
can be written from one calibrated model (the same weights). ``ENABLE_FALL_BACK=False`` is set
for paddle's dy2static, as the export needs.

``infer_cfg.yml`` is ``_dump_infer_config``'s: mode, draw_threshold, metric,
use_dynamic_shape, arch ``YOLO`` (``architecture: YOLOv3``), min_subgraph_size 3, Preprocess,
label_list (COCO's 80 names from the wheel's ``category.py``). Upstream writes an ``NMS``
section only for PicoDet; the ``--exclude-nms`` export carries one with the head's
MultiClassNMS settings (``normalized: true``, MultiClassNMS's default) so whoever runs NMS
outside the graph runs the same NMS.

    .venv/bin/python benchmarks/paddledet_exports.py OUT [--exclude-nms RAW_OUT]
"""
from __future__ import annotations

import os

os.environ.setdefault("ENABLE_FALL_BACK", "False")  # paddle dy2static: fail instead of falling back to dygraph

import zlib  # noqa: F401  (before paddle)

import argparse
import ast
import copy
import importlib
import importlib.util
import sys
import types
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import yaml

INPUT_HW = (640, 640)
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ppyoloe_reader.yml (PP-YOLOE+ uses 0/1)
NMS = OrderedDict(name="MultiClassNMS", nms_top_k=1000, keep_top_k=100, score_threshold=0.01, nms_threshold=0.6)
# Head calibration: the 75th-percentile photo gets about CANDIDATES_PER_IMAGE scores (of 80 x
# 8400) above NMS's score_threshold 0.01 and DETECTIONS_PER_IMAGE >= draw_threshold 0.5 (before NMS).
CANDIDATES_PER_IMAGE = 2000
DETECTIONS_PER_IMAGE = 8
CALIBRATION_QUANTILE = 0.75

_PACKAGES = ["ppdet", "ppdet.core", "ppdet.modeling", "ppdet.modeling.backbones", "ppdet.modeling.necks",
             "ppdet.modeling.heads", "ppdet.modeling.losses", "ppdet.modeling.assigners",
             "ppdet.modeling.architectures", "ppdet.modeling.transformers"]


def _ppdet_root() -> Path:
    if "ppdet" in sys.modules:  # possibly our empty package object (no __spec__)
        return Path(list(sys.modules["ppdet"].__path__)[0])
    spec = importlib.util.find_spec("ppdet")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("paddledet is not installed: pip install --no-deps paddledet==2.6.0")
    return Path(list(spec.submodule_search_locations)[0])


def ppdet_modules() -> types.SimpleNamespace:
    """The modeling modules PP-YOLOE needs, without ``ppdet/__init__`` (which imports the
    whole training stack: pycocotools, ...). Package objects are created empty; only the
    modules below run, each the wheel's own file."""
    root = _ppdet_root()
    for name in _PACKAGES:
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
            sys.modules[name] = module
    # post_process.py imports `from .transformers import bbox_cxcywh_to_xyxy`; ppyoloe_head.py
    # `from ..losses import GIoULoss`: give the empty packages those names.
    utils = importlib.import_module("ppdet.modeling.transformers.utils")
    sys.modules["ppdet.modeling.transformers"].__dict__.update(
        {k: v for k, v in vars(utils).items() if not k.startswith("_")})
    sys.modules["ppdet.modeling.losses"].GIoULoss = importlib.import_module("ppdet.modeling.losses.iou_loss").GIoULoss
    return types.SimpleNamespace(
        cspresnet=importlib.import_module("ppdet.modeling.backbones.cspresnet"),
        custom_pan=importlib.import_module("ppdet.modeling.necks.custom_pan"),
        ppyoloe_head=importlib.import_module("ppdet.modeling.heads.ppyoloe_head"),
        layers=importlib.import_module("ppdet.modeling.layers"),
        yolo=importlib.import_module("ppdet.modeling.architectures.yolo"),
    )


def coco_label_list() -> list[str]:
    """COCO's 80 names, from the wheel's ``ppdet/data/source/category.py::_coco17_category``
    (what ``_parse_reader`` puts in ``label_list`` for metric COCO); only that function runs."""
    path = _ppdet_root() / "data" / "source" / "category.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_coco17_category")
    scope: dict = {}
    exec(compile(ast.Module(body=[func], type_ignores=[]), str(path), "exec"), scope)
    clsid2catid, catid2name = scope["_coco17_category"]()
    names = [str(catid2name[clsid2catid[i]]) for i in sorted(clsid2catid)]
    assert len(names) == 80, names
    return names


def photo_paths() -> list[Path]:
    """skimage's sample photos (the test extra installs scikit-image)."""
    import skimage.data

    root = Path(skimage.data.__file__).parent
    paths = []
    for p in sorted([*root.glob("*.png"), *root.glob("*.jpg")]):
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is not None and min(img.shape[:2]) >= 64:
            paths.append(p)
    return paths


def photos(hw: tuple[int, int] = INPUT_HW) -> np.ndarray:
    """The photos through the TestReader transforms: RGB, Resize (cubic, no keep_ratio),
    NormalizeImage (/255, ImageNet mean/std), Permute -> [N, 3, H, W]."""
    images = []
    for p in photo_paths():
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        img = cv2.resize(img[:, :, ::-1], (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
        images.append(((img - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(images).astype(np.float32)


def build_ppyoloe_s(exclude_nms: bool = False, seed: int = 0):
    """ppyoloe_crn_s_300e_coco, random weights, in eval mode (not yet calibrated)."""
    import paddle

    m = ppdet_modules()
    paddle.seed(seed)
    backbone = m.cspresnet.CSPResNet(layers=[3, 6, 6, 3], channels=[64, 128, 256, 512, 1024], act="swish",
                                     return_idx=[1, 2, 3], use_large_stem=True, width_mult=0.50, depth_mult=0.33)
    neck = m.custom_pan.CustomCSPPAN(in_channels=[s.channels for s in backbone.out_shape], out_channels=[768, 384, 192],
                                     act="swish", stage_num=1, block_num=3, spp=True, width_mult=0.50, depth_mult=0.33,
                                     eval_size=list(INPUT_HW))
    nms = m.layers.MultiClassNMS(**{k: v for k, v in NMS.items() if k != "name"})
    head = m.ppyoloe_head.PPYOLOEHead(in_channels=[s.channels for s in neck.out_shape], num_classes=80, act="swish",
                                      fpn_strides=[32, 16, 8], grid_cell_scale=5.0, grid_cell_offset=0.5,
                                      static_assigner_epoch=100, use_varifocal_loss=True, static_assigner=None,
                                      assigner=None, nms=nms, eval_size=list(INPUT_HW),
                                      loss_weight={"class": 1.0, "iou": 2.5, "dfl": 0.5}, exclude_nms=exclude_nms)
    model = m.yolo.YOLOv3(backbone=backbone, neck=neck, yolo_head=head, post_process=None)
    # The upstream init zeroes the prediction convolutions (every anchor: score 0.01, box 8 bins
    # wide); random ones make outputs depend on the image.
    rng = np.random.default_rng(seed)
    for conv in [*head.pred_cls, *head.pred_reg]:
        conv.weight.set_value(rng.normal(0.0, 0.01, conv.weight.shape).astype(np.float32))
    model.eval()
    return model


def _head_inputs(head, feats):
    """The inputs of the class and box prediction convolutions per level, as forward_eval has them."""
    import paddle.nn.functional as F

    cls, reg = [], []
    for i, feat in enumerate(feats):
        avg = F.adaptive_avg_pool2d(feat, (1, 1))
        cls.append(head.stem_cls[i](feat, avg) + feat)
        reg.append(head.stem_reg[i](feat, avg))
    return cls, reg


def calibrate(model, images: np.ndarray) -> dict:
    """BatchNorm statistics := those of ``images``; fuse RepVGG blocks; scale the head."""
    import paddle

    bns = [l for l in model.sublayers() if isinstance(l, (paddle.nn.BatchNorm, paddle.nn.BatchNorm2D))]
    for layer in bns:  # momentum 0: running stats := statistics of the photo batch
        layer._momentum = 0.0
        layer.train()
    with paddle.no_grad():
        model.yolo_head(model.neck(model.backbone({"image": paddle.to_tensor(images)})))
    for layer in bns:
        layer.eval()
    for layer in model.sublayers():  # what export does before to_static
        if hasattr(layer, "convert_to_deploy"):
            layer.convert_to_deploy()
    head = model.yolo_head
    with paddle.no_grad():
        cls_in, reg_in = _head_inputs(head, model.neck(model.backbone({"image": paddle.to_tensor(images)})))
        cls = [conv(x).numpy() for conv, x in zip(head.pred_cls, cls_in)]
        reg = [conv(x).numpy() for conv, x in zip(head.pred_reg, reg_in)]
    # Regression: distribution logits with std ~1 (varied box sides instead of 8 bins everywhere).
    reg_std = float(np.concatenate([r.ravel() for r in reg]).std())
    for conv in head.pred_reg:
        conv.weight.set_value(conv.weight.numpy() / max(reg_std, 1e-6))
    # Classification: an affine map of the logits putting the photos' quantiles where wanted.
    # A random network's scores spread very differently on different photos (on flat ones they
    # barely vary), so no map suits all: the CALIBRATION_QUANTILE photo gets the wanted counts,
    # flat photos get none and the synthetic ones (color.png, logo.png) ten times more;
    # export_info.yml lists the count of every photo.
    z = np.concatenate([c.reshape(len(images), -1) for c in cls], axis=1)  # [N, 80 * 8400]
    per_image = z.shape[1]
    lo = float(np.quantile(np.quantile(z, 1.0 - CANDIDATES_PER_IMAGE / per_image, axis=1), CALIBRATION_QUANTILE))
    hi = float(np.quantile(np.quantile(z, 1.0 - DETECTIONS_PER_IMAGE / per_image, axis=1), CALIBRATION_QUANTILE))
    target_lo, target_hi = np.log(0.01 / 0.99), 0.0  # logit(0.01), logit(0.5)
    a = (target_hi - target_lo) / (hi - lo)
    b = target_lo - a * lo
    for conv in head.pred_cls:
        conv.weight.set_value((conv.weight.numpy() * a).astype(np.float32))
        conv.bias.set_value((conv.bias.numpy() * a + b).astype(np.float32))
    z = z * a + b
    return {"cls_logit_scale": float(a), "cls_logit_shift": float(b), "reg_logit_std": reg_std,
            "scores_above_0.01_and_0.5_per_photo": [[int(c), int(d)] for c, d in zip((z > target_lo).sum(axis=1),
                                                                                  (z >= target_hi).sum(axis=1))]}


def _prune_input_spec(input_spec, program, targets):
    """``ppdet/engine/export_utils.py::_prune_input_spec``: keep the feeds the program uses."""
    import paddle

    paddle.enable_static()
    pruned = [{}]
    program = program.clone()._prune(targets=targets)
    block = program.global_block()
    for name, spec in input_spec[0].items():
        try:
            block.var(name)
            pruned[0][name] = spec
        except Exception:
            pass
    paddle.disable_static()
    return pruned


def _dump_ordered(cfg: dict) -> str:
    """ppdet dumps the top level in insertion order and nested plain dicts with sorted keys."""
    return "".join(yaml.safe_dump({k: v}, default_flow_style=False, sort_keys=True) for k, v in cfg.items())


def infer_cfg(exclude_nms: bool) -> dict:
    h, w = INPUT_HW
    cfg = {
        "mode": "paddle",
        "draw_threshold": 0.5,
        "metric": "COCO",
        "use_dynamic_shape": False,
        "arch": "YOLO",
        "min_subgraph_size": 3,
        "Preprocess": [
            {"interp": 2, "keep_ratio": False, "target_size": [h, w], "type": "Resize"},
            {"is_scale": True, "mean": list(MEAN), "std": list(STD), "type": "NormalizeImage"},
            {"type": "Permute"},
        ],
        "label_list": coco_label_list(),
    }
    if exclude_nms:
        cfg["NMS"] = {**NMS, "normalized": True}
    return cfg


def _save(model, out: Path, exclude_nms: bool, stats: dict, seed: int) -> Path:
    """``trainer.export``: to_static with the full input spec, prune it, jit.save, infer_cfg.yml."""
    import paddle
    from paddle.static import InputSpec

    model = copy.deepcopy(model)  # to_static caches its program on the layer: one copy per variant
    model.yolo_head.exclude_nms = exclude_nms
    h, w = INPUT_HW
    input_spec = [{
        "image": InputSpec(shape=[None, 3, h, w], name="image"),
        "im_shape": InputSpec(shape=[None, 2], name="im_shape"),
        "scale_factor": InputSpec(shape=[None, 2], name="scale_factor"),
    }]
    static_model = paddle.jit.to_static(model, input_spec=input_spec)
    pruned = _prune_input_spec(input_spec, static_model.forward.main_program, static_model.forward.outputs)
    out.mkdir(parents=True, exist_ok=True)
    paddle.jit.save(static_model, str(out / "model"), input_spec=pruned)
    (out / "infer_cfg.yml").write_text(_dump_ordered(infer_cfg(exclude_nms)), encoding="utf-8")
    (out / "export_info.yml").write_text(yaml.safe_dump({
        "model": "ppyoloe_crn_s_300e_coco", "weights": f"random (seed {seed}), BatchNorm statistics from photos",
        "exclude_nms": exclude_nms, **stats}, sort_keys=False), encoding="utf-8")
    return out


def export(out: Path | None, raw_out: Path | None = None, seed: int = 0) -> list[Path]:
    """The default export (NMS in the graph) into ``out`` and/or the ``exclude_nms`` one into
    ``raw_out``: the same weights, calibrated once."""
    model = build_ppyoloe_s(seed=seed)
    stats = calibrate(model, photos())
    stats["scores_above_0.01_and_0.5_per_photo"] = dict(zip(
        [p.name for p in photo_paths()], stats.pop("scores_above_0.01_and_0.5_per_photo")))
    done = []
    for target, exclude_nms in ((out, False), (raw_out, True)):
        if target is not None:
            done.append(_save(model, Path(target), exclude_nms, stats, seed))
    return done


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", help="the default export (multiclass_nms3 in the graph)")
    parser.add_argument("--exclude-nms", dest="raw_out", type=Path, metavar="RAW_OUT",
                        help="also (or only) the -o PPYOLOEHead.exclude_nms=True export: raw boxes + scores")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out is None and args.raw_out is None:
        parser.error("give OUT and/or --exclude-nms RAW_OUT")
    for path in export(args.out, args.raw_out, seed=args.seed):
        print(path)
