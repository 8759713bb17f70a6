"""Graph passes that prepare an ONNX model for a TensorRT 10 strongly typed build.

* ``remove_int32_bias_dequantize``: TensorRT's ONNX parser dequantizes INT8/FP8/INT4 only
  (onnx-tensorrt operators.md: "DequantizeLinear | INT8, FP8, FP4, INT4"), but some exporters
  quantize conv/gemm biases to int32 and feed them through a DequantizeLinear. Such a DQ of a
  constant is folded into a float initializer here.

* ``to_fp16_outside_qdq``: a strongly typed network takes every tensor type from the graph (no
  ``--fp16`` builder flag), so FP16 has to be written into the ONNX model. The activation path
  that is not quantized becomes float16; graph inputs and outputs stay float32 behind Cast
  nodes; Q/DQ scales take the type of the float tensor they quantize or produce.

  ONNX consequence: before opset 19, QuantizeLinear/DequantizeLinear only accept float32 scales
  and DequantizeLinear only outputs float32 (opset 13 schema: ``x_scale: tensor(float)``,
  ``y: tensor(float)``); opset 19 makes the scale a type variable shared with the float side
  (``T1`` for QuantizeLinear x/y_scale, ``T2`` for DequantizeLinear x_scale/y, both allowing
  float16). A model with Q/DQ nodes below opset 19 is therefore upgraded to opset 19 with
  ``onnx.version_converter`` first (reported in the pass report). TensorRT 10's parser reads
  opset 19. Models without Q/DQ keep their opset.

  What stays float32: graph inputs/outputs (a Cast at the boundary), tensors on shape
  computations (anything derived from Shape/Size without touching activations, e.g.
  ``Shape -> Cast(float) -> Mul -> Cast(int64)``), control inputs that are not data (Resize
  ``roi``/``scales``, every input whose schema type is fixed to ``tensor(float)``), ops in
  ``DEFAULT_KEEP_FP32_OPS``, ops with subgraphs, non-default domains, and any op whose schema
  does not allow float16 at the model's opset. Wherever an FP16 and an FP32 part meet, a Cast is
  inserted, so the result is type-correct (checked with ``onnx.checker`` full check).

The int32 bias DQ should be folded before FP16 conversion: its scale (input scale x weight
scale) is typically far below float16's range. ``to_fp16_outside_qdq`` folds any it finds.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...errors import ConversionError
from . import PassReport, register

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
MIN_FP16_QDQ_OPSET = 19
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_SHAPE_OPS = frozenset({"Shape", "Size"})
_DEFAULT_DOMAINS = ("", "ai.onnx")
# Data-typed inputs that carry control values, not activations: keep them float32.
_FIXED_FP32_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}
# Ops left in float32 (inputs cast back if needed): index/shape generators, random ops, NMS.
DEFAULT_KEEP_FP32_OPS = frozenset({
    "Range", "ConstantOfShape", "EyeLike", "RandomNormal", "RandomNormalLike", "RandomUniform",
    "RandomUniformLike", "Multinomial", "Bernoulli", "NonMaxSuppression", "If", "Loop", "Scan",
})


# ---------------------------------------------------------------------------------------------
# helpers


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS:
            return imp.version
    raise ConversionError("the ONNX model imports no default-domain opset")


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _subgraph_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a nested subgraph reads (outer-scope references included)."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                for n in sub.node:
                    names.update(n.input)
                names |= _subgraph_names(sub)
    return names


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            value = _constant_value(node)
            if value is not None:
                values[node.output[0]] = value
    return values


def _drop_unused_constants(graph: onnx.GraphProto, candidates: Iterable[str]) -> int:
    """Remove initializers / Constant nodes among ``candidates`` that nothing reads any more."""
    candidates = set(candidates)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    used |= _subgraph_names(graph)
    dropped = 0
    for init in list(graph.initializer):
        if init.name in candidates and init.name not in used:
            graph.initializer.remove(init)
            dropped += 1
    for node in list(graph.node):
        if node.op_type == "Constant" and node.output[0] in candidates and node.output[0] not in used:
            graph.node.remove(node)
            dropped += 1
    graph_inputs = [i for i in graph.input if i.name in candidates and i.name not in used]
    for inp in graph_inputs:  # IR < 4 models list initializers as inputs too
        if not any(init.name == inp.name for init in graph.initializer):
            graph.input.remove(inp)
    return dropped


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 1
    while candidate in taken:
        candidate = f"{name}_{i}"
        i += 1
    taken.add(candidate)
    return candidate


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {o.name for o in graph.output}
    names |= {init.name for init in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        if node.name:
            names.add(node.name)
    return names


# ---------------------------------------------------------------------------------------------
# remove_int32_bias_dequantize


def _dequantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int) -> np.ndarray:
    """(x - zero_point) * scale in float32, the way ONNX Runtime's DequantizeLinear computes it."""
    diff = x.astype(np.int64)
    zp = None if zero_point is None else zero_point.astype(np.int64)
    scale = scale.astype(np.float32)
    if scale.ndim > 0 and x.ndim > 0:  # per-axis: scale (and zero point) run along `axis`
        shape = [1] * x.ndim
        shape[axis % x.ndim] = -1
        scale = scale.reshape(shape)
        zp = None if zp is None else zp.reshape(shape)
    if zp is not None:
        diff = diff - zp
    return diff.astype(np.float32) * scale


def _is_int32_const_dequantize(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> bool:
    if node.op_type != "DequantizeLinear" or node.domain not in _DEFAULT_DOMAINS:
        return False
    x = consts.get(node.input[0])
    return x is not None and x.dtype == np.int32


@register("remove_int32_bias_dequantize")
def remove_int32_bias_dequantize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, PassReport]:
    """Fold every DequantizeLinear of a constant int32 tensor into a float initializer.

    The initializer takes the DQ output's name, so consumers are unchanged; the int32 tensor,
    scale and zero point are dropped when nothing else reads them.
    """
    model = _copy(model)
    graph = model.graph
    consts = _constants(graph)
    report = PassReport("remove_int32_bias_dequantize", {"folded": 0, "skipped": 0, "constants_dropped": 0})
    folded: list[tuple[onnx.NodeProto, onnx.TensorProto]] = []
    for node in graph.node:
        if not _is_int32_const_dequantize(node, consts):
            continue
        attrs = _attrs(node)
        scale = consts.get(node.input[1])
        zp_name = node.input[2] if len(node.input) > 2 else ""
        zero_point = consts.get(zp_name) if zp_name else None
        if scale is None or (zp_name and zero_point is None) or attrs.get("block_size", 0):
            report.counts["skipped"] += 1
            report.notes.append(
                f"DequantizeLinear {node.name or node.output[0]!r}: int32 input kept (non-constant scale/zero point "
                "or blocked quantization); TensorRT will reject it"
            )
            continue
        values = _dequantize(consts[node.input[0]], scale, zero_point, int(attrs.get("axis", 1)))
        out_dtype = (
            helper.tensor_dtype_to_np_dtype(attrs["output_dtype"]) if attrs.get("output_dtype") else scale.dtype
        )
        folded.append((node, numpy_helper.from_array(values.astype(out_dtype), node.output[0])))
    candidates = set()
    for node, init in folded:
        candidates.update(n for n in node.input if n)
        graph.node.remove(node)
        graph.initializer.append(init)
    report.counts["folded"] = len(folded)
    report.counts["constants_dropped"] = _drop_unused_constants(graph, candidates)
    return model, report


# ---------------------------------------------------------------------------------------------
# to_fp16_outside_qdq


def _schema(op_type: str, opset: int) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return None


def _slot_types(names, formals) -> list[str | None]:
    """The schema type string of each slot (a type parameter like "T" or a fixed "tensor(float)")."""
    out: list[str | None] = []
    for i, _ in enumerate(names):
        if i < len(formals):
            out.append(formals[i].type_str)
        elif formals and formals[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
            out.append(formals[-1].type_str)
        else:
            out.append(None)
    return out


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  (inference is best effort; missing types keep tensors fp32)
        inferred = model
    graph = inferred.graph
    types: dict[str, int] = {}
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    for node in graph.node:
        if node.op_type == "Constant":
            value = _constant_value(node)
            if value is not None:
                types[node.output[0]] = helper.np_dtype_to_tensor_dtype(value.dtype)
    return types


def _to_fp16(values: np.ndarray, stats: dict[str, int]) -> np.ndarray:
    finite = np.isfinite(values)
    stats["values_clipped"] += int(np.count_nonzero(finite & (np.abs(values) > FP16_MAX)))
    half = np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16)
    stats["values_flushed_to_zero"] += int(np.count_nonzero((values != 0) & finite & (half == 0)))
    return half


def upgrade_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        upgraded = version_converter.convert_version(model, target)
    except Exception as exc:  # noqa: BLE001  (the converter raises RuntimeError / ValueError / C++ errors)
        raise ConversionError(f"cannot upgrade the ONNX model to opset {target}: {exc}") from None
    return upgraded


@register("to_fp16_outside_qdq")
def to_fp16_outside_qdq(
    model: onnx.ModelProto, keep_ops: frozenset[str] = DEFAULT_KEEP_FP32_OPS
) -> tuple[onnx.ModelProto, PassReport]:
    """Make the non-quantized float32 part of the graph float16 (see the module docstring)."""
    report = PassReport("to_fp16_outside_qdq")
    counts = report.counts
    counts.update(dict.fromkeys(
        ["int32_dequantize_folded", "nodes_fp16", "nodes_fp32", "qdq_nodes_fp16", "initializers_fp16",
         "constants_fp16", "casts_inserted", "values_clipped", "values_flushed_to_zero"], 0))
    consts = _constants(model.graph)
    if any(_is_int32_const_dequantize(n, consts) for n in model.graph.node):
        model, folded = remove_int32_bias_dequantize(model)
        counts["int32_dequantize_folded"] = folded.counts["folded"]
        report.notes.extend(folded.notes)
    else:
        model = _copy(model)
    opset = counts["opset_before"] = default_opset(model)
    if opset < MIN_FP16_QDQ_OPSET and any(n.op_type in QDQ_OPS for n in model.graph.node):
        model = upgrade_opset(model, MIN_FP16_QDQ_OPSET)
        opset = MIN_FP16_QDQ_OPSET
        report.notes.append(
            f"opset {counts['opset_before']} -> {opset}: float16 Q/DQ scales need QuantizeLinear/DequantizeLinear-19"
        )
    counts["opset_after"] = opset

    graph = model.graph
    nodes = list(graph.node)
    types = _elem_types(model)
    is_float = lambda name: types.get(name) == TensorProto.FLOAT  # noqa: E731
    init_names = {init.name for init in graph.initializer}
    graph_inputs = [i.name for i in graph.input if i.name not in init_names]
    graph_outputs = {o.name for o in graph.output}

    # Activations (D): everything computed from a graph input, except through Shape/Size.
    # Shape values (S): what is computed from Shape/Size outputs without activations.
    data, shape_path = set(graph_inputs), set()
    for node in nodes:
        inputs = [i for i in node.input if i]
        if node.op_type in _SHAPE_OPS:
            shape_path.update(node.output)
        elif any(i in data for i in inputs):
            data.update(node.output)
        elif any(i in shape_path for i in inputs):
            shape_path.update(node.output)

    parent: dict[str, str] = {}

    def find(name: str) -> str:
        parent.setdefault(name, name)
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    def union(names: list[str]) -> None:
        for other in names[1:]:
            parent[find(other)] = find(names[0])

    # For every node that may run in fp16: which tensors share each type parameter.
    groups_of: dict[int, dict[str, list[str]]] = {}
    param_slots: dict[int, tuple[set[int], set[int]]] = {}  # node -> (input slots, output slots) typed by a parameter
    for idx, node in enumerate(nodes):
        outputs = [o for o in node.output if o]
        if (
            node.domain not in _DEFAULT_DOMAINS
            or node.op_type in keep_ops
            or _has_subgraph(node)
            or (node.op_type not in _SHAPE_OPS and outputs and all(o in shape_path for o in outputs))
        ):
            continue
        schema = _schema(node.op_type, opset)
        if schema is None:
            continue
        allowed = {tc.type_param_str: set(tc.allowed_type_strs) for tc in schema.type_constraints}
        fixed_inputs = _FIXED_FP32_INPUTS.get(node.op_type, ())
        groups: dict[str, list[str]] = defaultdict(list)
        in_slots, out_slots = set(), set()
        for i, (name, ts) in enumerate(zip(node.input, _slot_types(node.input, schema.inputs))):
            # A Cast reads any type: its input neither joins a class nor needs a cast in front.
            if name and ts in allowed and i not in fixed_inputs and node.op_type != "Cast":
                groups[ts].append(name)
                in_slots.add(i)
        for i, (name, ts) in enumerate(zip(node.output, _slot_types(node.output, schema.outputs))):
            if name and ts in allowed:
                groups[ts].append(name)
                out_slots.add(i)
        if any("tensor(float16)" not in allowed[p] and any(map(is_float, names)) for p, names in groups.items()):
            continue  # this op cannot take float16 here: it stays float32 behind casts
        groups_of[idx] = dict(groups)
        param_slots[idx] = (in_slots, out_slots)
        for names in groups.values():
            union(names)

    members: dict[str, set[str]] = defaultdict(set)
    for name in list(parent):
        members[find(name)].add(name)
    binders: dict[str, set[int]] = defaultdict(set)
    for idx, groups in groups_of.items():
        for names in groups.values():
            binders[find(names[0])].add(idx)
    # A class goes fp16 when it is float32 activations that some op computes on. Classes only
    # Cast nodes produce (e.g. the float32 boundary casts of an earlier run) stay as they are,
    # which makes the pass idempotent.
    fp16_roots = {
        root for root, names in members.items()
        if all(map(is_float, names)) and names & data and not names & shape_path
        and any(nodes[b].op_type != "Cast" for b in binders[root])
    }
    converted = {idx for idx, groups in groups_of.items()
                 if any(find(names[0]) in fp16_roots for names in groups.values())}
    # Constant-only classes (BatchNorm statistics, ...) follow the nodes that read them: fp16
    # when every such node (other than nodes computing purely inside the class) runs in fp16.
    readers: dict[str, set[int]] = defaultdict(set)
    for idx, groups in groups_of.items():
        roots = {find(names[0]) for names in groups.values()}
        for i in param_slots[idx][0]:
            root = find(nodes[idx].input[i])
            if roots != {root}:
                readers[root].add(idx)
    for root, names in members.items():
        if root in fp16_roots or not all(map(is_float, names)) or names & (data | shape_path):
            continue
        if readers[root] and readers[root] <= converted:
            fp16_roots.add(root)
    # Tensors read inside subgraphs (If/Loop/Scan bodies, kept float32) stay float32.
    outer_refs = _subgraph_names(graph)
    fp16_roots = {root for root in fp16_roots if not members[root] & outer_refs}
    fp16 = {name for root in fp16_roots for name in members[root]}

    # Who produces each fp16 tensor, in which type, and who reads it in which type.
    constant_nodes = {node.output[0]: idx for idx, node in enumerate(nodes) if node.op_type == "Constant"}
    producer: dict[str, tuple[int, int]] = {}
    for idx, node in enumerate(nodes):
        for slot, name in enumerate(node.output):
            if name:
                producer[name] = (idx, slot)
    uses: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for idx, node in enumerate(nodes):
        if node.op_type == "Cast" and node.domain in _DEFAULT_DOMAINS:
            continue  # reads float16 as well as float32
        for slot, name in enumerate(node.input):
            if name in fp16:
                uses[name].append((idx, slot))

    def produced_fp16(name: str) -> bool:
        if name in init_names:
            return True
        if name not in producer:
            return False  # a graph input
        idx, slot = producer[name]
        return idx in groups_of and slot in param_slots[idx][1]

    def wants_fp16(idx: int, slot: int) -> bool:
        return idx in groups_of and slot in param_slots[idx][0]

    stats = {"values_clipped": 0, "values_flushed_to_zero": 0}
    # Ops whose output type is an attribute follow their (fp16) outputs.
    for idx in sorted({producer[n][0] for n in fp16 if n in producer and produced_fp16(n)}):
        node = nodes[idx]
        if node.op_type == "Constant":
            value = _constant_value(node)
            if value is not None and value.dtype == np.float32:
                del node.attribute[:]
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(_to_fp16(value, stats))))
                counts["constants_fp16"] += 1
        elif node.op_type in ("Cast", "DequantizeLinear"):  # Cast `to`, DequantizeLinear-23 `output_dtype`
            for attr in node.attribute:
                if attr.name in ("to", "output_dtype") and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16

    taken = _all_names(graph)
    start: list[onnx.NodeProto] = []
    after: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    new_inits: list[onnx.TensorProto] = []

    def cast(src: str, dst: str, to: int) -> onnx.NodeProto:
        counts["casts_inserted"] += 1
        return helper.make_node("Cast", [src], [dst], name=_unique(f"{dst}_cast", taken), to=to)

    def place(name: str, node: onnx.NodeProto) -> None:
        if name in producer:
            after[producer[name][0]].append(node)
        else:
            start.append(node)

    initializers = {init.name: init for init in graph.initializer}
    for name in sorted(fp16):
        half_uses = [u for u in uses[name] if wants_fp16(*u)]
        full_uses = [u for u in uses[name] if not wants_fp16(*u)]
        if name in initializers:
            init = initializers[name]
            half = numpy_helper.from_array(_to_fp16(numpy_helper.to_array(init), stats), name)
            counts["initializers_fp16"] += 1
            if not full_uses and name not in graph_outputs:
                init.CopyFrom(half)
            else:  # float32 readers keep the original values
                half.name = _unique(f"{name}_fp16", taken)
                new_inits.append(half)
                for idx, slot in half_uses:
                    nodes[idx].input[slot] = half.name
            continue
        if produced_fp16(name):
            if name in graph_outputs:
                renamed = _unique(f"{name}_fp16", taken)
                idx, slot = producer[name]
                nodes[idx].output[slot] = renamed
                for u_idx, u_slot in half_uses:
                    nodes[u_idx].input[u_slot] = renamed
                after[idx].append(cast(renamed, name, TensorProto.FLOAT))
            elif full_uses:
                full = _unique(f"{name}_fp32", taken)
                place(name, cast(name, full, TensorProto.FLOAT))
                for u_idx, u_slot in full_uses:
                    nodes[u_idx].input[u_slot] = full
        elif half_uses:
            half_name = _unique(f"{name}_fp16", taken)
            place(name, cast(name, half_name, TensorProto.FLOAT16))
            for u_idx, u_slot in half_uses:
                nodes[u_idx].input[u_slot] = half_name

    counts["nodes_fp16"] = len(converted - set(constant_nodes.values()))
    counts["qdq_nodes_fp16"] = sum(1 for idx in converted if nodes[idx].op_type in QDQ_OPS)
    counts["nodes_fp32"] = sum(
        1 for idx, node in enumerate(nodes)
        if idx not in converted and any(is_float(n) for n in [*node.input, *node.output] if n)
    )
    counts.update(stats)

    ordered: list[onnx.NodeProto] = list(start)
    for idx, node in enumerate(nodes):
        ordered.append(node)
        ordered.extend(after[idx])
    del graph.node[:]
    graph.node.extend(ordered)
    graph.initializer.extend(new_inits)
    del graph.value_info[:]  # stale float32 types; re-inferred below
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001
        pass
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ConversionError(f"float16 conversion produced an invalid ONNX model: {exc}") from None
    if stats["values_clipped"]:
        report.notes.append(f"{stats['values_clipped']} constant values beyond float16's range were clipped to ±65504")
    return model, report
