"""Quantization-aware-training exports in Paddle's older formats, made on the spot with Paddle's
own passes (not tritongen's code), for tests of :mod:`tritongen.convert.legacy_quant`.

* :func:`static_qat_export`: Paddle's static-graph QAT passes (QuantizationTransformPass,
  AddQuantDequantPass — not the V2 ones — and the OutScale passes PaddleSlim's ``quant_aware``
  / ``convert`` run) applied to an export's program, scales calibrated by forward passes on
  photo-like images. ``freeze=False`` saves the test program as it is (the unfrozen format:
  ``fake_quantize_*`` + ``fake_dequantize_max_abs`` pairs before each conv/mul,
  ``fake_quantize_dequantize_moving_average_abs_max`` on elementwise_add/pool2d inputs);
  ``freeze=True`` runs QuantizationFreezePass first (int8-valued weights and a dequant op after
  each conv/mul; ``weight_quantize_type="abs_max"`` gives ``fake_dequantize_max_abs``).
* :func:`dygraph_qat_export`: a small dygraph network under ImperativeQuantAware saved with
  ``save_quantized_model(onnx_format=False)``, the format of dygraph QAT exports before Q/DQ:
  ``fake_channel_wise_quantize_dequantize_abs_max`` / ``fake_quantize_dequantize_abs_max`` on
  float weights, ``fake_quantize_dequantize_moving_average_abs_max`` on activations.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..intake.families import copy_deploy_files

QUANTIZED_OPS = ["conv2d", "depthwise_conv2d", "mul", "matmul", "matmul_v2"]


def _calibration_feeds(source: Path, images: int, seed: int):
    from ..convert.onnx import sample_inputs
    from ..intake import load_model

    spec = load_model(source)
    return spec, [sample_inputs(spec, batch=1, seed=seed + i) for i in range(images)]


def static_qat_export(source: str | Path, out: str | Path, *, freeze: bool = False,
                      weight_quantize_type: str = "channel_wise_abs_max",
                      activation_quantize_type: str = "moving_average_abs_max",
                      quant_dequant_ops: tuple[str, ...] = ("elementwise_add", "pool2d"),
                      images: int = 4, seed: int = 0) -> Path:
    """QAT-transform the export in ``source`` into ``out`` (replaced, same file names); return ``out``."""
    import tritongen  # noqa: F401  (zlib before paddle)
    import paddle
    from paddle.base.framework import IrGraph
    from paddle.framework import core
    from paddle.static.quantization import (AddQuantDequantPass, OutScaleForInferencePass, OutScaleForTrainingPass,
                                            QuantizationFreezePass, QuantizationTransformPass)

    source, out = Path(source), Path(out)
    spec, feeds = _calibration_feeds(source, images, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        work = Path(tmp) / "model"
        paddle.enable_static()
        try:
            place, scope = paddle.CPUPlace(), paddle.static.Scope()
            with paddle.static.scope_guard(scope), paddle.utils.unique_name.guard("qat_"):
                exe = paddle.static.Executor(place)
                program, feed_names, fetch_targets = paddle.static.load_inference_model(
                    str(spec.model_file.parent), exe, model_filename=spec.model_file.name,
                    params_filename=spec.params_file.name)
                train = IrGraph(core.Graph(program.desc), for_test=False)
                test = IrGraph(core.Graph(program.desc), for_test=True)
                for graph in (train, test):  # one pass object per graph: each keeps graph nodes (the step counter)
                    QuantizationTransformPass(
                        scope=scope, place=place, weight_quantize_type=weight_quantize_type,
                        activation_quantize_type=activation_quantize_type, quantizable_op_type=QUANTIZED_OPS,
                    ).apply(graph)
                    AddQuantDequantPass(scope=scope, place=place, quantizable_op_type=list(quant_dequant_ops)).apply(graph)
                OutScaleForTrainingPass(scope=scope, place=place).apply(train)
                calibrate = train.to_program()
                fetch_names = [t.name for t in fetch_targets]
                for feed in feeds:  # training-mode forward passes: moving averages and weight scales
                    exe.run(calibrate, feed=feed, fetch_list=fetch_names)
                OutScaleForInferencePass(scope=scope).apply(test)  # out_threshold attributes
                if freeze:
                    QuantizationFreezePass(scope=scope, place=place,
                                           weight_quantize_type=weight_quantize_type).apply(test)
                inference = test.to_program()
                block = inference.global_block()
                paddle.static.save_inference_model(
                    str(work / spec.model_file.stem), [block.var(n) for n in feed_names],
                    [block.var(n) for n in fetch_names], exe, program=inference)
        finally:
            paddle.disable_static()
        _rename_params(work, spec.model_file.stem, spec.params_file.name)
        copy_deploy_files(spec.source_dir, work)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    return out


def dygraph_qat_export(source: str | Path, out: str | Path, *, weight_quantize_type: str = "channel_wise_abs_max",
                       images: int = 4, seed: int = 0) -> Path:
    """A small conv net with the input and class count of the classifier export in ``source``,
    trained for nothing but calibrated by ImperativeQuantAware, saved in the pre-Q/DQ dygraph QAT
    format into ``out`` with ``source``'s deploy files; return ``out``."""
    import tritongen  # noqa: F401  (zlib before paddle)
    import paddle
    from paddle import nn
    from paddle.quantization import ImperativeQuantAware

    source, out = Path(source), Path(out)
    spec, feeds = _calibration_feeds(source, images, seed)
    image = spec.image_input
    classes = spec.outputs[0].shape[-1]

    class Net(nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2D(image.shape[1], 8, 3, stride=2, padding=1)
            self.conv2 = nn.Conv2D(8, 16, 3, stride=2, padding=1)
            self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
            self.pool, self.flatten = nn.AdaptiveAvgPool2D(1), nn.Flatten()
            self.fc, self.softmax = nn.Linear(16, classes), nn.Softmax()

        def forward(self, x):  # layers only: dy2static cannot see this function's closure
            x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
            return self.softmax(self.fc(self.flatten(self.pool(x))))

    paddle.seed(seed)
    net = Net()
    qat = ImperativeQuantAware(weight_quantize_type=weight_quantize_type,
                               activation_quantize_type="moving_average_abs_max", onnx_format=False)
    qat.quantize(net)
    net.train()  # forward passes in training mode calibrate the moving-average scales
    with paddle.no_grad():
        for feed in feeds:
            net(paddle.to_tensor(feed[image.name]))
    net.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        work = Path(tmp) / "model"
        work.mkdir()
        qat.save_quantized_model(net, str(work / spec.model_file.stem), input_spec=[
            paddle.static.InputSpec([None, *image.shape[1:]], "float32", name=image.name)])
        _rename_params(work, spec.model_file.stem, spec.params_file.name)
        for extra in work.glob("*.info"):  # jit.save bookkeeping, not part of an export
            extra.unlink()
        copy_deploy_files(spec.source_dir, work)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    np.random.seed(None)
    return out


def _rename_params(work: Path, stem: str, params_name: str) -> None:
    params = work / f"{stem}.pdiparams"
    if params.name != params_name:
        params.rename(work / params_name)
