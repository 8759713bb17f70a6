"""ONNX graph passes that make an INT8 QDQ model run at ONNX Runtime CPU's native speed.

Paddle's QDQ models (paddle2onnx of a PaddleSlim program) quantize activations to int8 with
zero point 0. ORT's x86 kernels (MLAS) compute u8s8: uint8 activations, int8 weights; with
int8 activations ORT falls back to slower paths or leaves Q/DQ unfused. The same scale with
a uint8 zero point of 128 represents the same grid, so the conversion is exact.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...residue import owned_temp_dir


def constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs by name."""
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            users[name].append(node)
    return users


def activations_to_uint8(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """int8 (zero point 0) activation Q/DQ pairs -> uint8 with zero point 128, same scales.

    Only QuantizeLinear nodes whose input is computed at run time are changed (weights stay
    int8, as ORT wants); every DequantizeLinear reading such a Q is changed with it.
    Returns the model and the number of Q nodes converted.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    consts = constant_values(model)
    users = _consumers(model)
    converted = 0
    for node in list(model.graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] in consts or len(node.input) < 3:
            continue
        zero_point = consts.get(node.input[2])
        if zero_point is None or zero_point.dtype != np.int8 or np.any(zero_point != 0):
            continue
        new_name = f"{node.output[0]}__zero_point_u8"
        model.graph.initializer.append(numpy_helper.from_array(np.full(zero_point.shape, 128, np.uint8), new_name))
        node.input[2] = new_name
        for dq in users.get(node.output[0], []):
            if dq.op_type == "DequantizeLinear":
                while len(dq.input) < 3:
                    dq.input.append("")
                dq.input[2] = new_name
        converted += 1
    _drop_unused_constants(model)
    return model, converted


def fuse_relu_requantization(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Let ONNX Runtime fuse Conv + Relu (and Add + Relu) in Paddle's QDQ graph.

    PaddleSlim writes an observer Q/DQ pair on the output of every conv *and* on the Relu
    after it: ``Conv -> Q/DQ -> Relu -> Q/DQ -> next Conv``. ONNX Runtime fuses ``DQ -> Conv
    -> Q`` into QLinearConv but then runs ``DQ -> Relu -> Q`` in float after every conv
    (MobileNetV1: 27 of them, 6.8 ms vs 3.6 ms for ORT's own placement; ResNet50_vd: 51).
    Where a Relu's only reader is an activation QuantizeLinear (int8 zero point 0, or uint8
    zero point 128 after :func:`activations_to_uint8`) read only by DequantizeLinear nodes:

    * that Q gets zero point 0 in uint8 at the same scale: the same grid on [0, 127 * scale]
      (all a Relu output uses of Paddle's int8 range), plus the levels up to 255 * scale that
      Paddle's int8 would clip. A zero point of 0 clamps at 0 by itself, so ORT drops the Relu
      (ReluQuantFusion) and the producer's ``DQ -> Conv -> Q`` fuses;
    * the observer Q/DQ pair between the producer and the Relu, if any, is removed: the
      producer's output is quantized once, after the Relu, as oneDNN's fused conv + relu does
      (one rounding less than Paddle's simulated graph).

    Relus read by anything else keep their Q/DQ pairs: without a Q right after it, a conv
    would lose its fusion (PP-LiteSeg). Returns the model and the number of Relus made fusable.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    consts = constant_values(model)
    users = _consumers(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    graph_outputs = {o.name for o in model.graph.output}

    def single_reader(name: str) -> onnx.NodeProto | None:
        readers = users.get(name, [])
        return readers[0] if len(readers) == 1 and name not in graph_outputs else None

    def eligible(q: onnx.NodeProto) -> bool:
        zero_point = consts.get(q.input[2]) if len(q.input) > 2 else None
        return zero_point is not None and ((zero_point.dtype == np.int8 and bool(np.all(zero_point == 0)))
                                           or (zero_point.dtype == np.uint8 and bool(np.all(zero_point == 128))))

    def unsigned_chain(q: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        """``q`` and every Q/DQ whose zero point must change with it: its DQ readers and, where
        paddle2onnx wrote a redundant ``Q -> DQ -> Q -> DQ`` (two observers with one scale), the
        next pair too (ORT removes the middle DQ -> Q only when the zero points match; a
        mismatch would leave it in and stop the next conv's fusion: BiSeNetV2). None when a
        reader is not a DequantizeLinear."""
        chain, todo, seen = [], [q], {id(q)}
        while todo:
            node = todo.pop()
            readers = users.get(node.output[0], [])
            if not readers or node.output[0] in graph_outputs or any(r.op_type != "DequantizeLinear" for r in readers):
                return None
            chain += [node, *readers]
            scale = consts.get(node.input[1])
            for dq in readers:
                for nxt in users.get(dq.output[0], []):
                    if (id(nxt) not in seen and nxt.op_type == "QuantizeLinear" and eligible(nxt) and scale is not None
                            and consts.get(nxt.input[1]) is not None and np.array_equal(consts[nxt.input[1]], scale)):
                        seen.add(id(nxt))
                        todo.append(nxt)
        return chain

    dropped: set[int] = set()
    fused = 0
    for relu in model.graph.node:
        if relu.op_type != "Relu":
            continue
        q = single_reader(relu.output[0])
        if q is None or q.op_type != "QuantizeLinear" or not eligible(q):
            continue
        zero_point = consts[q.input[2]]
        chain = unsigned_chain(q)
        if chain is None:
            continue
        name = f"{q.output[0]}__zero_point_u8_relu"
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(zero_point.shape, np.uint8), name))
        for node in chain:
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = name
        fused += 1
        # The observer pair in front of the Relu: producer -> Q -> DQ -> Relu.
        dq = producer.get(relu.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or single_reader(dq.output[0]) is not relu:
            continue
        observer = producer.get(dq.input[0])
        if (observer is None or observer.op_type != "QuantizeLinear" or observer.input[0] in consts
                or single_reader(observer.output[0]) is not dq):
            continue
        relu.input[0] = observer.input[0]
        dropped |= {id(observer), id(dq)}
    kept = [n for n in model.graph.node if id(n) not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    _drop_unused_constants(model)
    return model, fused


def _drop_unused_constants(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    keep = [n for n in model.graph.node if not (n.op_type == "Constant" and n.output[0] not in used)]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    inits = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)


def fix_nms_squeeze(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Give paddle2onnx's axis-less ``Squeeze`` nodes after ``NonMaxSuppression`` their axes.

    paddle2onnx 1.3.1 maps ``multiclass_nms3``'s keep_top_k step as ``Gather(selected_indices,
    [1], axis=1)`` -> ``[K, 1]`` class ids (and ``[2]`` -> box ids), then ``Squeeze`` *without
    axes* -> ``[K]``, then ``Gather(axis=0)`` with TopK's indices. Without axes, Squeeze drops
    every dimension that is 1 *at run time*: when exactly one box survives NMS (K = 1) the
    class and box ids become 0-D and ONNX Runtime fails with "Gather node ... axis 0 is not
    in valid range [-0,-1]". Whether that happens depends on the image (and on the model's
    precision: an INT8 model's slightly different scores change K), so FP32 ONNX and every
    INT8 recipe built from paddle2onnx are affected.

    Every axis-less Squeeze whose input is computed from a ``NonMaxSuppression`` output (so
    has a data-dependent dimension) gets the axes ONNX shape inference knows are 1; the
    dynamic count dimension is never squeezed. Returns the model and the number of Squeeze
    nodes fixed. Nodes whose input rank or static size-1 dims are unknown are left alone.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    from_nms: set[str] = set()
    for node in model.graph.node:
        if node.op_type == "NonMaxSuppression" or set(node.input) & from_nms:
            from_nms |= set(node.output)
    candidates = [n for n in model.graph.node if n.op_type == "Squeeze" and n.input[0] in from_nms
                  and not any(a.name == "axes" for a in n.attribute) and (len(n.input) < 2 or not n.input[1])]
    if not candidates:
        return model, 0
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: v.type.tensor_type.shape for v in [*inferred.graph.value_info, *inferred.graph.output]
              if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=13)
    fixed = 0
    for node in candidates:
        shape = shapes.get(node.input[0])
        if shape is None:
            continue
        axes = [i for i, d in enumerate(shape.dim) if d.HasField("dim_value") and d.dim_value == 1]
        if not axes:
            continue
        if opset >= 13:
            name = f"{node.name or node.output[0]}__axes"
            model.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), name))
            if len(node.input) < 2:
                node.input.append(name)
            else:
                node.input[1] = name
        else:
            node.attribute.append(helper.make_attribute("axes", axes))
        fixed += 1
    return model, fixed


def rename_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Give graph outputs the names the Paddle program fetches (paddle2onnx may suffix them)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    if len(names) != len(model.graph.output):
        raise ValueError(f"{len(model.graph.output)} graph outputs, {len(names)} names")
    for output, name in zip(model.graph.output, names):
        old = output.name
        if old == name:
            continue
        for node in model.graph.node:
            for i, out in enumerate(node.output):
                if out == old:
                    node.output[i] = name
            for i, inp in enumerate(node.input):
                if inp == old:
                    node.input[i] = name
        output.name = name
    return model


def activation_ranges(model: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    """Float range each per-tensor-quantized activation was calibrated to, by tensor name."""
    consts = constant_values(model)
    ranges: dict[str, tuple[float, float]] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in consts:
            continue
        scale = consts.get(node.input[1])
        zero_point = consts.get(node.input[2]) if len(node.input) > 2 else np.zeros((), np.uint8)
        if scale is None or zero_point is None or scale.size != 1:
            continue
        s, z = float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0])
        lo, hi = (-128, 127) if zero_point.dtype == np.int8 else (0, 255)
        ranges[node.input[0]] = ((lo - z) * s, (hi - z) * s)
    return ranges


@dataclass
class FusionReport:
    convs: int  # Conv / ConvTranspose / MatMul / Gemm in the float model
    fused: int  # run as integer kernels after ORT's optimizations
    kernels: dict[str, int]

    def __str__(self) -> str:
        return f"{self.fused}/{self.convs} conv/matmul ops run as INT8 kernels"


COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
INT8_KERNELS = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul",
                "QLinearConvTranspose", "MatMulIntegerToFloat"}


def fusion_report(model_path: Path) -> FusionReport:
    """Ask ONNX Runtime which ops it actually runs after graph optimization."""
    
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    total = sum(1 for n in model.graph.node if n.op_type in COMPUTE_OPS)
    with owned_temp_dir("tritongen-ort-passes-") as tmp:  # pid-named: a SIGKILLed build's is removed later
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(opts.optimized_model_filepath)
    kernels = Counter(n.op_type for n in optimized.graph.node if n.op_type in COMPUTE_OPS | INT8_KERNELS)
    fused = sum(v for k, v in kernels.items() if k in INT8_KERNELS)
    return FusionReport(convs=total, fused=min(fused, total), kernels=dict(kernels))


__all__ = ["activations_to_uint8", "fix_nms_squeeze", "fuse_relu_requantization", "rename_outputs", "activation_ranges", "fusion_report", "FusionReport",
           "constant_values", "TensorProto", "helper"]
