"""Cut ``multiclass_nms3`` off a PaddleDetection graph so that the runtime batches.

A PaddleDetection export with NMS inside returns the rows of all images concatenated plus
per-image counts, and paddle2onnx's NonMaxSuppression form runs one image at a time. Triton's
ONNX Runtime and TensorRT platforms cannot unpack that. Ending the program at the op's inputs
(boxes [N, A, 4] already in original-image pixels, scores [N, C, A]) gives exactly what
``exclude_nms=True`` exports; the op's own attributes go to the postprocess model, whose numpy
NMS reproduces ``multiclass_nms3`` row for row (processing/detection.py). TensorRT's
EfficientNMS plugin is not used: its tie-breaking and top-k differ from Paddle's kernel.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ..errors import ConversionError
from ..intake.families import copy_deploy_files, load_yaml
from ..intake.paddledetection import NMS_OP, nms_op_attrs
from ..intake.program import read_program
from ..intake.spec import ModelSpec
from ..processing.detection import NmsSettings
from ..residue import describe_exit, die_with_parent, last_error_line

# Static-graph mode and the global scope are process-wide: prune in a child process.
_PRUNE_SCRIPT = """
import json, sys, zlib
import paddle
args = json.loads(sys.argv[1])
paddle.enable_static()
exe = paddle.static.Executor(paddle.CPUPlace())
program, feed_names, _ = paddle.static.load_inference_model(args["prefix"], exe)
block = program.global_block()
nms = [op for op in block.ops if op.type == args["op"]]
if len(nms) != 1:
    sys.exit(f"expected one {args['op']} op, found {len(nms)}")
boxes, scores = nms[0].input("BBoxes")[0], nms[0].input("Scores")[0]
# save_inference_model names its fetch ops save_infer_model/scale_N, which the export already
# uses: a name prefix keeps the new ones apart.
with paddle.utils.unique_name.guard("nms_cut_"):
    paddle.static.save_inference_model(args["out"], [block.var(n) for n in feed_names],
                                       [block.var(boxes), block.var(scores)], exe, program=program)
print(json.dumps({"boxes": boxes, "scores": scores}))
"""


def cut_nms(spec: ModelSpec, out_dir: Path) -> ModelSpec:
    """``spec`` (NMS in the graph) -> an export in ``out_dir`` ending before ``multiclass_nms3``,
    with the op's settings as the postprocess model's NMS."""
    if not spec.nms_in_graph:
        return spec
    (attrs,) = nms_op_attrs(spec.model_file)  # intake checked there is exactly one
    if float(attrs.get("nms_eta", 1.0)) != 1.0:
        raise ConversionError(f"{spec.model_file}: {NMS_OP} uses adaptive NMS (nms_eta {attrs['nms_eta']}), which the "
                              "postprocess model does not implement. Use --backend python-onnxruntime or python-paddle")
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / "model"
    args = {"prefix": str(spec.model_file.with_suffix("")), "out": str(prefix), "op": NMS_OP}
    if spec.params_file.with_suffix("") != spec.model_file.with_suffix(""):  # load_inference_model wants one prefix
        staged = out_dir / "source"
        staged.mkdir()
        shutil.copyfile(spec.model_file, staged / "model.pdmodel")
        shutil.copyfile(spec.params_file, staged / "model.pdiparams")
        args["prefix"] = str(staged / "model")
    proc = subprocess.run([sys.executable, "-c", _PRUNE_SCRIPT, json.dumps(args)], capture_output=True, text=True,
                          timeout=600, preexec_fn=die_with_parent())  # dies with us, even on SIGKILL
    model_file, params_file = prefix.with_suffix(".pdmodel"), prefix.with_suffix(".pdiparams")
    if proc.returncode != 0 or not model_file.is_file():
        raise ConversionError(f"cannot cut {NMS_OP} off {spec.model_file} ({describe_exit(proc.returncode)}): "
                              f"{last_error_line(proc.stderr or proc.stdout)}")
    shutil.rmtree(out_dir / "source", ignore_errors=True)
    cut_names = json.loads(proc.stdout.strip().splitlines()[-1])
    program = read_program(model_file)
    boxes, scores = program.outputs
    if len(boxes.shape) != 3 or boxes.shape[2] != 4 or len(scores.shape) != 3:
        raise ConversionError(
            f"{spec.model_file}: {NMS_OP} takes {cut_names['boxes']} {list(boxes.shape)} and {cut_names['scores']} "
            f"{list(scores.shape)}; only batched boxes [N, A, 4] + scores [N, C, A] (PP-YOLOE, PaddleYOLO) can run "
            "NMS outside the graph. Use --backend python-onnxruntime or python-paddle"
        )
    copy_deploy_files(spec.source_dir, out_dir)  # infer_cfg.yml and label files travel along
    nms = NmsSettings(
        # float32 attributes: 0.01 is stored as 0.0099999998; the rounded value is the same float32
        score_threshold=round(float(attrs.get("score_threshold", 0.0)), 7),
        nms_threshold=round(float(attrs.get("nms_threshold", 0.5)), 7),
        nms_top_k=int(attrs.get("nms_top_k", -1)),
        keep_top_k=int(attrs.get("keep_top_k", -1)),
        normalized=bool(attrs.get("normalized", True)),
        background_label=int(attrs.get("background_label", 0)),
    )
    # The directory is then a complete exclude_nms export: its infer_cfg.yml names the op's NMS.
    config_file = out_dir / spec.config_file.name
    cfg = load_yaml(config_file)
    cfg["NMS"] = {"name": "MultiClassNMS", **nms.to_dict()}
    config_file.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    postprocess = dataclasses.replace(spec.postprocess, nms_in_graph=False, keep_top_k=None, nms=nms,
                                      nms_cut_from_graph=True)
    return dataclasses.replace(
        spec, source_dir=out_dir, config_file=config_file, model_file=model_file, params_file=params_file,
        inputs=list(program.inputs), outputs=[boxes, scores],
        op_types=program.op_types, postprocess=postprocess,
        notes=[*spec.notes, f"{NMS_OP} was cut off the graph: NMS runs batched in the postprocess model with the op's "
                            f"settings ({', '.join(f'{k}={v}' for k, v in nms.to_dict().items())})"],
    )
