"""Pre-quantized Paddle exports made on the spot with PaddleSlim, like the INT8 archives
FastDeploy publishes (``resnet50_vd_ptq``, ``ppyoloe_crn_l_300e_coco_qat``, PP-LiteSeg ``QAT_new``).

:func:`quantize_export` runs PaddleSlim's ``quant_post_static`` directly (not tritongen's
quantizer, so the fixture is independent of the code under test) on photo-like images pushed
through the export's own preprocessing, and writes the result beside the source's deploy
files under the source's file names:

* ``legacy=False`` (default): the Q/DQ format ACT and ``onnx_format=True`` write —
  ``quantize_linear`` / ``dequantize_linear`` pairs, float weights, PaddleSlim's observer-only
  pairs on op outputs.
* ``legacy=True``: the older frozen format (``onnx_format=False``) — ``fake_quantize_*`` on
  activations, int8-valued weights, ``fake_(channel_wise_)dequantize_max_abs`` after each
  quantized op.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..intake.families import copy_deploy_files


def quantize_export(source: str | Path, out: str | Path, *, legacy: bool = False, algo: str = "abs_max",
                    images: int = 4, seed: int = 0) -> Path:
    """Quantize the export in ``source`` into ``out`` (replaced); return ``out``."""
    import tritongen  # noqa: F401  (zlib before paddle)
    import paddle
    from paddleslim.quant import quant_post_static

    from ..convert.onnx import sample_inputs
    from ..intake import load_model

    source, out = Path(source), Path(out)
    spec = load_model(source)
    feeds = [{name: value[0] for name, value in sample_inputs(spec, batch=1, seed=seed + i).items()}
             for i in range(images)]

    class Feeds(paddle.io.Dataset):
        def __len__(self) -> int:
            return len(feeds)

        def __getitem__(self, index: int):
            return feeds[index]

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        work = Path(tmp) / "model"
        paddle.enable_static()
        try:
            quant_post_static(
                executor=paddle.static.Executor(paddle.CPUPlace()),
                model_dir=str(spec.model_file.parent),
                quantize_model_path=str(work),
                data_loader=paddle.io.DataLoader(Feeds(), batch_size=1, shuffle=False, return_list=True),
                model_filename=spec.model_file.name,
                params_filename=spec.params_file.name,
                save_model_filename=spec.model_file.name,
                save_params_filename=spec.params_file.name,
                batch_size=1,
                batch_nums=images,
                algo=algo,
                round_type="round",
                onnx_format=not legacy,
            )
        finally:
            paddle.disable_static()
        copy_deploy_files(spec.source_dir, work)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    np.random.seed(None)  # quant_post_static seeds numpy's global generator; do not leak that into tests
    return out
