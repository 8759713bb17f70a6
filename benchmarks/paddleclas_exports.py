"""Real PaddleClas architectures (ResNet50_vd, MobileNetV1, PP-LCNet) as deploy exports, for benchmarks.

Architectures come from the ``paddleclas`` wheel (installed with --no-deps by the setup
script; its package __init__ needs the whole training stack, so only the backbone modules
are loaded). The benchmarks run offline (no trained weights are downloaded), so the
weights are random with BatchNorm statistics re-estimated on real photos: the activations
then have realistic ranges, which is what latency and quantization depend on. The export is
what PaddleClas's ``tools/export_model.py`` writes: the network plus a softmax, feed ``x``
[-1, 3, 224, 224], and the standard ImageNet ``inference_cls.yaml``.
"""
from __future__ import annotations

import zlib  # noqa: F401  (before paddle)

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import yaml

ARCHS = {"resnet50_vd": ("resnet", "ResNet50_vd"), "mobilenetv1": ("mobilenet_v1", "MobileNetV1"),
         "pplcnet": ("pp_lcnet", "PPLCNet_x1_0")}


def _backbone(module: str, cls: str):
    spec = importlib.util.find_spec("paddleclas")
    if spec is None:
        raise SystemExit("paddleclas is not installed: pip install --no-deps paddleclas==2.6.0")
    root = Path(list(spec.submodule_search_locations)[0])
    for name, sub in [("paddleclas", ""), ("paddleclas.ppcls", "ppcls"), ("paddleclas.ppcls.arch", "ppcls/arch"),
                      ("paddleclas.ppcls.arch.backbone", "ppcls/arch/backbone"),
                      ("paddleclas.ppcls.utils", "ppcls/utils")]:
        if name not in sys.modules:
            m = types.ModuleType(name)
            m.__path__ = [str(root / sub)]
            sys.modules[name] = m
    mod = importlib.import_module(f"paddleclas.ppcls.arch.backbone.legendary_models.{module}")
    importlib.import_module("paddleclas.ppcls.utils.logger").init_logger()
    return getattr(mod, cls)


def _photos(size: int = 224) -> np.ndarray:
    import skimage.data

    imgs = []
    for p in sorted(Path(skimage.data.__file__).parent.glob("*.png")):
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is not None:
            img = cv2.resize(img[:, :, ::-1], (size, size)).astype(np.float32) / 255.0
            imgs.append(((img - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1))
    return np.stack(imgs).astype(np.float32)


def export(arch: str, out: Path, seed: int = 0) -> Path:
    import paddle

    paddle.seed(seed)
    net = _backbone(*ARCHS[arch])(class_num=1000)
    for layer in net.sublayers():  # momentum 0: running stats := statistics of the photo batch
        if isinstance(layer, (paddle.nn.BatchNorm, paddle.nn.BatchNorm2D)):
            layer._momentum = 0.0
    net.train()
    with paddle.no_grad():
        net(paddle.to_tensor(_photos()))
    net.eval()
    model = paddle.nn.Sequential(net, paddle.nn.Softmax())
    out.mkdir(parents=True, exist_ok=True)
    paddle.jit.save(model, str(out / "inference"), input_spec=[paddle.static.InputSpec([None, 3, 224, 224], "float32", "x")])
    config = {
        "Global": {"inference_model_dir": ".", "batch_size": 1, "use_gpu": False, "enable_mkldnn": True, "cpu_num_threads": 1},
        "PreProcess": {"transform_ops": [
            {"ResizeImage": {"resize_short": 256}},
            {"CropImage": {"size": 224}},
            {"NormalizeImage": {"scale": 0.00392157, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "order": ""}},
            {"ToCHWImage": None},
        ]},
        "PostProcess": {"main_indicator": "Topk", "Topk": {"topk": 5}},
    }
    (out / "inference_cls.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", choices=sorted(ARCHS))
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(export(args.arch, args.out, seed=args.seed))
