"""PP-LiteSeg-T (STDC1) and BiSeNetV2 as PaddleSeg deploy exports, for benchmarks.

The networks are the ``paddleseg`` 2.8 wheel's own ``PPLiteSeg`` / ``STDC1`` / ``BiSeNetV2``
with the arguments of the upstream configs (github.com/PaddlePaddle/PaddleSeg, release/2.8)::

    configs/pp_liteseg/pp_liteseg_stdc1_cityscapes_1024x512_scale0.5_160k.yml
        model PPLiteSeg, backbone STDC1, arm_out_chs [32, 64, 128], seg_head_inter_chs
        [32, 64, 64] ("PP-LiteSeg-T"); test scales 0.5 (1024x512 of the 2048x1024 images)
    configs/bisenet/bisenet_cityscapes_1024x1024_160k.yml   model BiSeNetV2, num_classes 19
    configs/_base_/cityscapes.yml   19 classes; val_dataset transforms: [Normalize]

The benchmarks run offline (no trained weights are downloaded), so the weights are random with
BatchNorm statistics re-estimated on real photos (skimage's sample images) pushed through the
deploy transforms: activations then have realistic ranges, which is what latency and INT8
calibration depend on.
Latency is meaningful; INT8-vs-FP32 agreement is not (random logits have small margins between
classes, so INT8 rounding flips a third or more of the argmax pixels).

The export is what ``tools/export.py`` writes: ``PADDLESEG_EXPORT_STAGE=True``, the model
wrapped by ``paddleseg.deploy.export.WrappedModel`` (``--output_op argmax``, the default:
``paddle.argmax(axis=1, dtype='int32')``; or ``softmax``; ``none`` leaves the logits, like
FastDeploy's ``*_without_argmax_infer`` archives), ``paddle.jit.to_static`` with one
``InputSpec([None, 3, None, None])`` (feed ``x``), ``paddle.jit.save`` to
``model.pdmodel``/``model.pdiparams`` and ``deploy.yaml`` (``Deploy``: model, params,
transforms, input_shape, output_op, output_dtype; ``yaml.dump``'s sorted keys).

Upstream ``deploy.yaml`` transforms are the val transforms, ``[Normalize]`` only: the network
then runs at the image's own size. For the benchmark the transforms start with
``Resize target_size [1024, 512]`` (PaddleSeg's (width, height)), the scale-0.5 test size of
the config, so every image costs the same; ``--no-resize`` writes the upstream list.

    .venv/bin/python benchmarks/paddleseg_exports.py pp_liteseg_t OUT [--output-op none]
"""
from __future__ import annotations

import os

os.environ.setdefault("PADDLESEG_EXPORT_STAGE", "True")  # tools/export.py: SyncBatchNorm -> BatchNorm2D

import zlib  # noqa: F401  (before paddle)

import argparse
from pathlib import Path

import cv2
import numpy as np
import yaml

from paddledet_exports import photo_paths  # noqa: E402  (this folder is on sys.path: run as a script or from run_detseg.py)

NUM_CLASSES = 19  # Cityscapes
TARGET_SIZE = [1024, 512]  # PaddleSeg Resize target_size: (width, height)
MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]  # PaddleSeg Normalize defaults


def _pp_liteseg_t():
    from paddleseg.models import PPLiteSeg
    from paddleseg.models.backbones import STDC1

    return PPLiteSeg(num_classes=NUM_CLASSES, backbone=STDC1(), arm_out_chs=[32, 64, 128], seg_head_inter_chs=[32, 64, 64])


def _bisenetv2():
    from paddleseg.models import BiSeNetV2

    return BiSeNetV2(num_classes=NUM_CLASSES)


ARCHS = {"pp_liteseg_t": _pp_liteseg_t, "bisenetv2": _bisenetv2}


def photos(target_size=TARGET_SIZE) -> np.ndarray:
    """The photos through the deploy transforms: read as float32 RGB, Resize (bilinear),
    Normalize (/255, mean 0.5, std 0.5), CHW -> [N, 3, H, W]."""
    images = []
    for p in photo_paths():
        img = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB).astype(np.float32)
        img = cv2.resize(img, tuple(target_size), interpolation=cv2.INTER_LINEAR) / 255.0
        images.append(((img - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(images).astype(np.float32)


def calibrate(model, images: np.ndarray, batch: int = 8) -> None:
    """BatchNorm running statistics := those of ``images``, in chunks of ``batch`` (all photos
    at 1024x512 at once need several GB): each chunk runs normalised by its own statistics
    (momentum 0), and the chunks' means and second moments are pooled."""
    import paddle

    bns = [l for l in model.sublayers() if isinstance(l, (paddle.nn.BatchNorm, paddle.nn.BatchNorm2D))]
    model.eval()
    for layer in bns:
        layer._momentum = 0.0
        layer.train()
    moments = {id(l): [0.0, 0.0] for l in bns}
    with paddle.no_grad():
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            model(paddle.to_tensor(chunk))
            for layer in bns:
                mean, var = layer._mean.numpy().astype(np.float64), layer._variance.numpy().astype(np.float64)
                moments[id(layer)][0] += mean * len(chunk)
                moments[id(layer)][1] += (var + mean ** 2) * len(chunk)
    for layer in bns:
        mean = moments[id(layer)][0] / len(images)
        var = moments[id(layer)][1] / len(images) - mean ** 2
        layer._mean.set_value(mean.astype(np.float32))
        layer._variance.set_value(np.maximum(var, 0.0).astype(np.float32))
        layer.eval()


def input_shape(fixed: bool) -> list:
    """``--input_shape`` of tools/export.py: [None, 3, None, None] by default; fixed is
    ``--input_shape -1 3 512 1024`` (the Resize size, any batch)."""
    return [-1, 3, TARGET_SIZE[1], TARGET_SIZE[0]] if fixed else [None, 3, None, None]


def deploy_yaml(output_op: str, resize: bool = True, fixed_shape: bool = False) -> dict:
    transforms = ([{"type": "Resize", "target_size": list(TARGET_SIZE)}] if resize else []) + [{"type": "Normalize"}]
    return {"Deploy": {
        "model": "model.pdmodel",
        "params": "model.pdiparams",
        "transforms": transforms,
        "input_shape": input_shape(fixed_shape),
        "output_op": output_op,
        "output_dtype": "int32" if output_op == "argmax" else "float32",
    }}


def export(arch: str, out: Path, output_op: str = "argmax", resize: bool = True, fixed_shape: bool = False,
           seed: int = 0) -> Path:
    import paddle

    if fixed_shape and not resize:
        raise SystemExit("--fixed-shape needs the Resize transform (the network input is 512x1024)")
    paddle.seed(seed)
    model = ARCHS[arch]()
    images = photos()
    calibrate(model, images)
    if output_op != "none":
        from paddleseg.deploy.export import WrappedModel

        model = WrappedModel(model, output_op)
    model.eval()
    static = paddle.jit.to_static(model, input_spec=[paddle.static.InputSpec(shape=input_shape(fixed_shape), dtype="float32")])
    out.mkdir(parents=True, exist_ok=True)
    paddle.jit.save(static, str(out / "model"))
    with open(out / "deploy.yaml", "w", encoding="utf-8") as f:
        yaml.dump(deploy_yaml(output_op, resize, fixed_shape), f)
    (out / "export_info.yml").write_text(yaml.safe_dump({
        "model": arch, "weights": f"random (seed {seed}), BatchNorm statistics from {len(images)} photos",
        "output_op": output_op}, sort_keys=False), encoding="utf-8")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", choices=sorted(ARCHS))
    parser.add_argument("out", type=Path)
    parser.add_argument("--output-op", choices=["argmax", "softmax", "none"], default="argmax")
    parser.add_argument("--no-resize", dest="resize", action="store_false",
                        help="deploy.yaml transforms [Normalize] only, like upstream (the network runs at the image size)")
    parser.add_argument("--fixed-shape", action="store_true",
                        help="input_shape [-1, 3, 512, 1024] instead of [None, 3, None, None] (paddle2onnx needs it "
                             "for PP-LiteSeg's adaptive pooling)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(export(args.arch, args.out, output_op=args.output_op, resize=args.resize, fixed_shape=args.fixed_shape,
                 seed=args.seed))
