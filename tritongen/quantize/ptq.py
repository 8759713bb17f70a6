"""Post-training quantization with PaddleSlim (``quant_post_static``, ONNX-style QDQ output)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import TritongenError
from ..intake.program import load_program_desc, save_program_desc
from ..intake.spec import QDQ_OPS, ModelSpec
from .calibration import CalibrationData, ImageSet
from .config import CalibrationAlgo

ALGOS = tuple(a.value for a in CalibrationAlgo)


@dataclass
class PtqResult:
    """What quant_post_static actually ran with (algo / batch size may differ from the request)."""

    algo: str
    batch_size: int
    batch_nums: int | None
    float_tensors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def has_scalar_activations(model_file: Path) -> bool:
    """True when the program has 0-D (scalar) activations, on which PaddleSlim's 'avg' crashes."""
    program = load_program_desc(model_file)
    return any(
        not var.persistable and var.type.type == 7 and len(var.type.lod_tensor.tensor.dims) == 0  # 7 = LOD_TENSOR
        for block in program.blocks
        for var in block.vars
        if var.name not in ("feed", "fetch")
    )


def keep_float(model_file: Path, tensors: Sequence[str] = (), detection_tail: str | None = None) -> list[str]:
    """Remove *observer* Q/DQ pairs from a PaddleSlim QDQ program so the tensors stay float.

    ``onnx_format=True`` puts an observer Q/DQ pair after the output of every supported op
    (elementwise, concat, split, sigmoid, ...) to record its scale. Paddle's executor ignores
    observers, but oneDNN INT8 and ONNX Runtime run them as real int8 tensors. Removed here:

    * ``tensors`` (``--skip-tensors``): PaddleSlim only stops quantizing the ops that *read*
      such a tensor; the observer on the tensor itself would still round it everywhere;
    * with ``detection_tail`` (the image feed's name), a detector's post-processing: tensors
      that no longer reach a weight-quantized op (conv/matmul) — box decoding, sigmoid
      scores, NMS inputs, the fetched outputs — and everything computed from a non-image feed
      (``scale_factor``, ``im_shape``). In int8, box corners in pixels over a ~[-50, 700]
      range would move in ~3 px steps and scale_factor would be rounded.

    Q/DQ on conv/matmul inputs and weights (the actual INT8 compute) stay. Rewrites
    ``model_file`` in place; returns the tensors made float.
    """
    program = load_program_desc(model_file)
    if len(program.blocks) != 1:  # control flow: leave the program as PaddleSlim wrote it
        return []
    block = program.blocks[0]
    ops = list(block.ops)

    def args(slots, name=None):
        return [a for slot in slots if name is None or slot.parameter == name for a in slot.arguments]

    wanted = set(tensors)
    if detection_tail is not None:
        wanted |= _detection_tail(ops, {v.name for v in block.vars if v.persistable}, detection_tail, args)
    observed = {args(op.outputs, "Y")[0]: (i, args(op.inputs, "X")[0]) for i, op in enumerate(ops)
                if op.type == "quantize_linear" and any(a.name == "only_observer" and a.b for a in op.attrs)}
    drop, rename, made_float = set(), {}, []
    for i, op in enumerate(ops):
        if op.type != "dequantize_linear" or args(op.inputs, "X")[0] not in observed:
            continue
        q_index, tensor = observed[args(op.inputs, "X")[0]]
        if tensor in wanted:
            drop.update((i, q_index))
            rename[args(op.outputs, "Y")[0]] = tensor
            made_float.append(tensor)
    if not drop:
        return []
    kept = [op for i, op in enumerate(ops) if i not in drop]
    for op in kept:
        for slot in op.inputs:
            for j, name in enumerate(slot.arguments):
                if name in rename:
                    slot.arguments[j] = rename[name]
    del block.ops[:]
    block.ops.extend(kept)
    save_program_desc(program, model_file)
    return made_float


def _detection_tail(ops, persistable: set[str], image_feed: str, args) -> set[str]:
    """Tensors from which no weight-quantized op is reachable, and tensors computed from non-image feeds."""
    dequantized_weights = {args(op.outputs, "Y")[0] for op in ops
                           if op.type == "dequantize_linear" and args(op.inputs, "X")[0] in persistable}
    reaches_compute: set[str] = set()
    every: set[str] = set()
    for op in reversed(ops):
        inputs = set(args(op.inputs))
        every |= inputs | set(args(op.outputs))
        is_compute = op.type not in QDQ_OPS and bool(inputs & dequantized_weights)
        if is_compute or set(args(op.outputs)) & reaches_compute:
            reaches_compute |= inputs
    from_side = {args(op.outputs)[0] for op in ops if op.type == "feed"} - {image_feed}
    for op in ops:
        if set(args(op.inputs)) & from_side:
            from_side |= set(args(op.outputs))
    return (every - reaches_compute) | from_side


def _data_loader(images: ImageSet, batch_size: int):
    """PaddleSlim needs a real ``paddle.io.DataLoader`` (generators are rejected) yielding feed
    dicts: every model feed of each image (image, and scale_factor / im_shape for detectors)."""
    import paddle

    class Feeds(paddle.io.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, index: int) -> dict[str, Any]:
            return images.feeds[index]

    return paddle.io.DataLoader(Feeds(), batch_size=batch_size, shuffle=False, drop_last=False, return_list=True)


def quantize_ptq(
    spec: ModelSpec,
    data: CalibrationData,
    work_dir: Path,
    algo: str = "hist",
    batch_size: int = 4,
    batch_nums: int | None = None,
    skip_tensors: Sequence[str] = (),
    hist_percent: float = 0.9999,
    keep_tail_float: bool = False,
) -> PtqResult:
    """Calibrate on ``data.calibration``; write the program and params into ``work_dir`` under the source's names.

    ``keep_tail_float``: a detector's post-processing stays float (see :func:`keep_float`).
    Returns the settings actually used (``algo`` may differ from the request, see notes).
    """
    if algo not in ALGOS:
        raise TritongenError(f"unknown --algo {algo!r}; choose one of {', '.join(ALGOS)}")
    notes = []
    if not data.calibration.uniform and batch_size != 1:
        notes.append(f"the calibration images preprocess to different shapes (keep-ratio resize); calibrated one "
                     f"image per batch instead of --batch-size {batch_size}, as a single request runs")
        if batch_nums:
            batch_nums *= batch_size  # the same number of images
        batch_size = 1
    if algo == "avg" and has_scalar_activations(spec.model_file):
        notes.append("algo 'avg' crashes in PaddleSlim on models with 0-D activations; used 'abs_max' instead")
        algo = "abs_max"
    import paddle
    from paddleslim.quant import quant_post_static

    paddle.enable_static()
    try:
        exe = paddle.static.Executor(paddle.CPUPlace())
        loader = _data_loader(data.calibration, batch_size)
        quant_post_static(
            executor=exe,
            model_dir=str(spec.model_file.parent),
            quantize_model_path=str(work_dir),
            data_loader=loader,
            model_filename=spec.model_file.name,
            params_filename=spec.params_file.name,
            save_model_filename=spec.model_file.name,  # the deploy yaml may name the files (PaddleSeg)
            save_params_filename=spec.params_file.name,
            batch_size=batch_size,
            batch_nums=batch_nums,
            algo=algo,
            hist_percent=hist_percent,
            round_type="round",
            onnx_format=True,
            skip_tensor_list=list(skip_tensors) or None,
        )
    except (ValueError, AssertionError, RuntimeError, IndexError, TypeError) as exc:
        raise TritongenError(f"PaddleSlim post-training quantization ({algo}) failed: {type(exc).__name__}: {exc}") from None
    finally:
        paddle.disable_static()
    made_float = keep_float(work_dir / spec.model_file.name, skip_tensors,
                            detection_tail=spec.image_input.name if keep_tail_float else None)
    tail = [t for t in made_float if t not in set(skip_tensors)]
    if tail:
        notes.append(f"kept {len(tail)} post-processing tensors in float (box decoding, scores, scale_factor/im_shape "
                     "math, NMS inputs): their INT8 observers are removed, conv/matmul stay INT8")
    return PtqResult(algo=algo, batch_size=batch_size, batch_nums=batch_nums, float_tensors=made_float, notes=notes)
