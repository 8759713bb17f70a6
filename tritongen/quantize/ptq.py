"""Post-training quantization with PaddleSlim (``quant_post_static``, ONNX-style QDQ output)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import TritongenError
from ..intake.spec import ModelSpec
from .calibration import CalibrationData, ImageSet

ALGOS = ("avg", "abs_max", "hist", "KL", "mse")


def has_scalar_activations(model_file: Path) -> bool:
    """True when the program has 0-D (scalar) activations, on which PaddleSlim's 'avg' crashes."""
    import zlib  # noqa: F401

    from paddle.base.proto import framework_pb2

    program = framework_pb2.ProgramDesc()
    program.ParseFromString(model_file.read_bytes())
    return any(
        not var.persistable and var.type.type == 7 and len(var.type.lod_tensor.tensor.dims) == 0  # 7 = LOD_TENSOR
        for block in program.blocks
        for var in block.vars
        if var.name not in ("feed", "fetch")
    )


def _data_loader(images: ImageSet, feed_name: str, batch_size: int):
    """PaddleSlim needs a real ``paddle.io.DataLoader`` (generators are rejected) yielding feed dicts."""
    import paddle

    class Tensors(paddle.io.Dataset):
        def __len__(self) -> int:
            return len(images.tensors)

        def __getitem__(self, index: int) -> dict[str, Any]:
            return {feed_name: images.tensors[index]}

    return paddle.io.DataLoader(Tensors(), batch_size=batch_size, shuffle=False, drop_last=False, return_list=True)


def quantize_ptq(
    spec: ModelSpec,
    data: CalibrationData,
    work_dir: Path,
    algo: str = "hist",
    batch_size: int = 4,
    batch_nums: int | None = None,
    skip_tensors: Sequence[str] = (),
    hist_percent: float = 0.9999,
) -> dict[str, Any]:
    """Calibrate on ``data.calibration``; write the program and params into ``work_dir`` under the source's names.

    Returns the settings actually used (``algo`` may differ from the request, see notes).
    """
    if algo not in ALGOS:
        raise TritongenError(f"unknown --algo {algo!r}; choose one of {', '.join(ALGOS)}")
    notes = []
    if algo == "avg" and has_scalar_activations(spec.model_file):
        notes.append("algo 'avg' crashes in PaddleSlim on models with 0-D activations; used 'abs_max' instead")
        algo = "abs_max"
    import paddle
    from paddleslim.quant import quant_post_static

    paddle.enable_static()
    try:
        exe = paddle.static.Executor(paddle.CPUPlace())
        loader = _data_loader(data.calibration, spec.image_input.name, batch_size)
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
    return {
        "method": "ptq",
        "algo": algo,
        "batch_size": batch_size,
        "batch_nums": batch_nums,
        "hist_percent": hist_percent if algo == "hist" else None,
        "skip_tensors": list(skip_tensors),
        "calibration_images": len(data.calibration),
        "notes": notes,
    }
