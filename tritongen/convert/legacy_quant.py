"""Older Paddle INT8 programs -> the Q/DQ program paddle2onnx and Paddle's oneDNN INT8 passes take.

paddle2onnx 1.3.1 converts ``quantize_linear`` / ``dequantize_linear`` pairs (what PaddleSlim
ACT and ``quant_post_static(onnx_format=True)`` write) but aborts on the older fake-quant ops.
:func:`legacy_to_qdq` rewrites those into Q/DQ pairs with the same scales, editing the program
protobuf and the combined params file directly (no executor, no static-graph mode).

Notation: ``R = 2**(bits-1) - 1 = 127``; ``s`` an abs-max scale (Paddle's convention, also the
``Scale`` of ``quantize_linear``: ``q = round(clip(x, -s, s) / s * R)``, ``x' = q * s / R``).

Frozen (``quant_post_static(onnx_format=False)``, QuantizationFreezePass)::

    x -> fake_quantize_{range,moving_average}_abs_max(s_x) -> q_x      (integer-valued floats)
    conv2d/mul/matmul(q_x, W_q) -> y                                   (W_q: int8-valued floats)
    fake_channel_wise_dequantize_max_abs(y, Scales=[s_w[c], s_x]) -> y * s_w[c] * s_x / R**2
    fake_dequantize_max_abs(y, Scale=s_x, max_range=R*R/s_w)       -> y * s_x * s_w / R**2

  conv/mul/matmul are linear in each input, so ``conv(q_x, W_q) * s_x * s_w / R**2 =
  conv(q_x * s_x / R, W_q * s_w / R)``: the rewrite dequantizes each input instead of the
  output — ``quantize_linear(x, s_x) -> dequantize_linear`` on the activation, real weights
  ``W = W_q * s_w / R`` with their own pair (per channel on the fake dequant's ``quant_axis``),
  and the op writes the dequant op's output variable directly.

Unfrozen QAT (QuantizationTransformPass, AddQuantDequantPass, ImperativeQuantAware without
``onnx_format``): ``fake_quantize_* -> fake_(channel_wise_)dequantize_max_abs`` pairs and
``fake_*quantize_dequantize_*`` ops compute exactly ``quantize_linear -> dequantize_linear``;
they are replaced one for one. The scale is the op's calibrated ``InScale``; ops that compute
it from their input (``*abs_max`` without moving average) get ``abs max`` of the input when it
is a weight (fixed, so the same value every run). On an activation that scale changes with
every input, which a static Q/DQ pair cannot express: :class:`ConversionError`.

Output scales: the legacy format keeps each op's calibrated output abs max in ``out_threshold`` /
``{Arg}{i}_threshold`` attributes where onnx_format writes observer-only Q/DQ pairs; the rewrite
adds those pairs (paddle2onnx's ONNX Runtime processor quantizes a Conv only when its output has a
scale too). The legacy ops' ``round_type`` is kept, so Paddle computes the same numbers as before.
"""
from __future__ import annotations

import dataclasses
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConversionError
from ..intake.families import copy_deploy_files
from ..intake.program import load_program_desc, read_program, save_program_desc
from ..intake.spec import LEGACY_QUANT_OPS, ModelSpec, QuantFormat

if TYPE_CHECKING:
    from paddle.base.proto import framework_pb2

__all__ = ["legacy_to_qdq", "ParamsFile"]

QUANT_OPS = frozenset({"fake_quantize_abs_max", "fake_quantize_range_abs_max", "fake_quantize_moving_average_abs_max",
                       "fake_channel_wise_quantize_abs_max"})
DEQUANT_OPS = frozenset({"fake_dequantize_max_abs", "fake_channel_wise_dequantize_max_abs"})
QUANT_DEQUANT_OPS = frozenset({"fake_quantize_dequantize_abs_max", "fake_quantize_dequantize_moving_average_abs_max",
                               "fake_channel_wise_quantize_dequantize_abs_max"})
# Ops QuantizationFreezePass puts a dequant op after (the ones with weights), each linear in every input.
QUANTIZED_OPS = frozenset({"conv2d", "depthwise_conv2d", "conv2d_transpose", "mul", "matmul", "matmul_v2"})
BITS = 8  # paddle2onnx / ONNX Runtime / TensorRT: int8 only
R = (1 << (BITS - 1)) - 1
# Scale 0 (a channel of zero weights, a tensor that was 0 on every calibration image) would divide
# by zero in Q/DQ; any positive scale gives the same zeros.
MIN_SCALE = 1e-8
_THRESHOLD = re.compile(r"^([A-Za-z_]+?)(\d+)_threshold$")  # PaddleSlim's per-output scale attribute: Out0_threshold
_FLOATS = {4, 5, 6}  # FP16, FP32, FP64


def legacy_to_qdq(spec: ModelSpec, out_dir: Path) -> ModelSpec:
    """Rewrite ``spec``'s fake-quant program into a Q/DQ program in ``out_dir`` (same file names,
    deploy files copied) and return the spec for it; a spec without fake-quant ops is returned as it is."""
    if spec.quant_format is not QuantFormat.LEGACY:
        return spec
    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(spec.source_dir).resolve():
        raise ConversionError(f"legacy_to_qdq writes a new export; {out_dir} is the source export itself")
    program = load_program_desc(spec.model_file)
    params = ParamsFile.read(program, spec.params_file)
    _Rewrite(program, params, spec.model_file).run()
    out_dir.mkdir(parents=True, exist_ok=True)
    model_file, params_file = out_dir / spec.model_file.name, out_dir / spec.params_file.name
    save_program_desc(program, model_file)
    params.write(program, params_file)
    copy_deploy_files(spec.source_dir, out_dir)
    info = read_program(model_file)
    if len(info.outputs) != len(spec.outputs):
        raise ConversionError(f"the rewritten program fetches {len(info.outputs)} tensors, the source {len(spec.outputs)}")
    return dataclasses.replace(spec.relocated(out_dir, info),
                               notes=[*spec.notes, f"{', '.join(sorted(spec.op_types & LEGACY_QUANT_OPS))} rewritten to "
                                                   "quantize_linear/dequantize_linear pairs with the same scales"])


# ------------------------------------------------------------------------------ params file

# framework.proto VarType.Type -> numpy (bf16 has no numpy type: such tensors are only copied)
_NUMPY = {0: np.bool_, 1: np.int16, 2: np.int32, 3: np.int64, 4: np.float16, 5: np.float32, 6: np.float64,
          20: np.uint8, 21: np.int8, 22: np.uint16, 23: np.complex64, 24: np.complex128}
_PROTO = {np.dtype(t): k for k, t in _NUMPY.items() if k != 22}


def _param_names(block: framework_pb2.BlockDesc) -> list[str]:
    """The tensors of a combined params file, in file order: the persistable variables Paddle
    Inference loads (not feed/fetch/raw), sorted by name (AnalysisPredictor::LoadParameters)."""
    from paddle.base.proto import framework_pb2

    skip = {framework_pb2.VarType.FEED_MINIBATCH, framework_pb2.VarType.FETCH_LIST, framework_pb2.VarType.RAW}
    return sorted(v.name for v in block.vars if v.persistable and v.type.type not in skip)


@dataclass
class ParamsFile:
    """A ``.pdiparams`` (save_combine) file: per tensor, the serialized LoDTensor (version, LoD,
    version, TensorDesc size + proto, raw data). Unchanged tensors are written back byte for byte."""

    raw: dict[str, bytes]
    arrays: dict[str, np.ndarray]  # tensors read as numpy (on demand) or set by the rewrite

    @classmethod
    def read(cls, program: framework_pb2.ProgramDesc, path: Path) -> "ParamsFile":
        data, names, pos, raw = Path(path).read_bytes(), _param_names(program.blocks[0]), 0, {}
        for name in names:
            try:
                end = _tensor_end(data, pos)
            except (struct.error, ValueError) as exc:
                raise ConversionError(f"{path}: cannot read tensor {name!r} ({exc}); does it belong to this program?") from None
            raw[name], pos = data[pos:end], end
        if pos != len(data):
            raise ConversionError(f"{path} holds more data than the program's {len(names)} persistable tensors")
        return cls(raw, {})

    def array(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            if name not in self.raw:
                raise ConversionError(f"the params file has no tensor {name!r}")
            self.arrays[name] = _tensor_array(self.raw[name])
        return self.arrays[name]

    def set(self, name: str, value: np.ndarray) -> None:
        self.arrays[name] = np.ascontiguousarray(value)
        self.raw.pop(name, None)

    def write(self, program: framework_pb2.ProgramDesc, path: Path) -> None:
        with open(path, "wb") as f:
            for name in _param_names(program.blocks[0]):
                f.write(self.raw[name] if name in self.raw else _tensor_bytes(self.array(name)))


def _tensor_end(data: bytes, pos: int) -> int:
    from paddle.base.proto import framework_pb2

    pos += 4  # uint32 LoDTensor version
    (levels,) = struct.unpack_from("<Q", data, pos)
    pos += 8
    for _ in range(levels):
        (size,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + size
    pos += 4  # uint32 Tensor version
    (size,) = struct.unpack_from("<i", data, pos)
    pos += 4
    desc = framework_pb2.VarType.TensorDesc.FromString(data[pos:pos + size])
    pos += size
    if desc.data_type not in _NUMPY:
        raise ValueError(f"unknown data type {desc.data_type}")
    end = pos + int(np.prod(desc.dims, dtype=np.int64)) * np.dtype(_NUMPY[desc.data_type]).itemsize
    if end > len(data):
        raise ValueError("the file ends inside it")
    return end


def _tensor_array(record: bytes) -> np.ndarray:
    from paddle.base.proto import framework_pb2

    pos = 4
    (levels,) = struct.unpack_from("<Q", record, pos)
    pos += 8
    for _ in range(levels):
        pos += 8 + struct.unpack_from("<Q", record, pos)[0]
    pos += 4
    (size,) = struct.unpack_from("<i", record, pos)
    desc = framework_pb2.VarType.TensorDesc.FromString(record[pos + 4:pos + 4 + size])
    if desc.data_type == 22:
        raise ConversionError("bfloat16 quantization scales or weights are not supported")
    return np.frombuffer(record[pos + 4 + size:], _NUMPY[desc.data_type]).reshape(tuple(desc.dims)).copy()


def _tensor_bytes(array: np.ndarray) -> bytes:
    from paddle.base.proto import framework_pb2

    desc = framework_pb2.VarType.TensorDesc(data_type=_PROTO[array.dtype], dims=list(array.shape)).SerializeToString()
    return struct.pack("<IQIi", 0, 0, 0, len(desc)) + desc + array.tobytes()


# ------------------------------------------------------------------------------ the rewrite


@dataclass
class _Scale:
    var: str  # persistable scale variable (abs max), shape [1] or [channels]
    axis: int  # quant_axis: -1 per tensor
    round_type: int  # the legacy op's rounding (0 ties to even, 1 ties away from zero), kept for Paddle


def _looks_legacy(op_type: str) -> bool:
    """Paddle names every fake-quant op fake_*quant*; paddle2onnx aborts on ones it does not know."""
    return op_type.startswith("fake_") and "quant" in op_type


def _attr(op, name: str, default=None):
    for a in op.attrs:
        if a.name == name:
            field = {0: "i", 1: "f", 2: "s", 3: "ints", 4: "floats", 6: "b", 9: "l"}.get(a.type)
            return default if field is None else getattr(a, field)
    return default


def _args(slots, name: str) -> list[str]:
    return [a for v in slots if v.parameter == name for a in v.arguments]


def _one(slots, name: str) -> str | None:
    args = _args(slots, name)
    return args[0] if args else None


class _Rewrite:
    def __init__(self, program: framework_pb2.ProgramDesc, params: ParamsFile, source: Path):
        from paddle.base.proto import framework_pb2

        self.pb, self.program, self.params, self.source = framework_pb2, program, params, source
        self.block = program.blocks[0]
        self.vars = {v.name: v for v in self.block.vars}
        self.ops = list(self.block.ops)
        self.producer = {a: op for op in self.ops for v in op.outputs for a in v.arguments}
        self.consumers: dict[str, list] = {}
        for op in self.ops:
            for a in {a for v in op.inputs for a in v.arguments}:
                self.consumers.setdefault(a, []).append(op)
        self.scales: dict[str, _Scale] = {}  # fake quant op's Out -> its scale
        self.dequantized: dict[str, str] = {}  # frozen activation q (integers) -> its dequantized variable
        self.weights: dict[str, tuple[str, np.ndarray]] = {}  # frozen weight -> (dequantized var, scale)
        self.touched: set[str] = set()  # variables the removed ops referenced
        self.created: set[str] = set()  # variables the rewrite added
        self.new_ops: list = []
        self.observed: dict[str, str] = {}  # variable -> its observer pair's output, for the ops after it
        # Observer pairs go where PaddleSlim's onnx_format puts them: not on tensors a real pair
        # quantizes, nor on fetched ones (their names are the model's outputs).
        self.no_observer = {_one(op.inputs, "X") for op in self.ops if op.type in QUANT_OPS | QUANT_DEQUANT_OPS}
        self.no_observer |= {a for op in self.ops if op.type == "fetch" for v in op.inputs for a in v.arguments}

    def fail(self, message: str) -> ConversionError:
        return ConversionError(f"{self.source}: {message}")

    def run(self) -> None:
        for index, block in enumerate(self.program.blocks[1:], start=1):
            legacy = sorted(t for t in {op.type for op in block.ops} if t in LEGACY_QUANT_OPS or _looks_legacy(t))
            if legacy:
                raise self.fail(f"{', '.join(legacy)} inside control flow (block {index}) cannot be rewritten to Q/DQ")
        for op in self.ops:
            if op.type in QUANT_OPS:
                self.quant(op)
            elif op.type in QUANT_DEQUANT_OPS:
                self.quant_dequant(op)
            elif op.type in DEQUANT_OPS:
                self.dequant(op)
            elif op.type in LEGACY_QUANT_OPS or _looks_legacy(op.type):  # one this module does not know
                raise self.fail(f"cannot rewrite {op.type} to quantize_linear/dequantize_linear (it knows "
                                f"{', '.join(sorted(LEGACY_QUANT_OPS))})")
            elif self.post_dequant(op) is not None:
                self.frozen(op)
            else:
                self.keep(op)
        del self.block.ops[:]
        self.block.ops.extend(self.new_ops)
        self.tidy()

    # -- per op type

    def quant(self, op) -> None:
        """fake_quantize_*: its output is quantize_linear's output (integer-valued in both).
        Frozen: the quantized ops after it get a dequantize_linear (made here, once)."""
        x, out = _one(op.inputs, "X"), _one(op.outputs, "Out")
        scale = self.scale_of(op, x)
        self.scales[out] = scale
        self.drop(op)
        self.emit_q(x, out, scale)
        if any(c.type not in DEQUANT_OPS for c in self.consumers.get(out, [])):
            self.dequantized[out] = self.fresh(f"{out}.dequantized", like=out)
            self.emit_dq(out, self.dequantized[out], scale)

    def quant_dequant(self, op) -> None:
        x, out = _one(op.inputs, "X"), _one(op.outputs, "Out")
        scale = self.scale_of(op, x)
        self.drop(op)
        q = self.fresh(f"{x}.quantized", like=x)
        self.emit_q(x, q, scale)
        self.emit_dq(q, out, scale)

    def dequant(self, op) -> None:
        """Unfrozen pair fake_quantize -> fake_dequantize: dequantize_linear with the quant op's scale.
        After a quantized op (frozen) the op is folded into that op by :meth:`frozen`."""
        x, out = _one(op.inputs, "X"), _one(op.outputs, "Out")
        if x not in self.scales:
            producer = self.producer.get(x)
            if producer is not None and self.post_dequant(producer) is op:
                self.drop(op)
                return
            raise self.fail(f"{op.type} on {x!r}, which no fake_quantize op nor conv2d/mul/matmul writes, has no "
                            "Q/DQ equivalent")
        scale, quant = self.scales[x], self.producer[x]
        scale_inputs = _args(op.inputs, "Scales") or _args(op.inputs, "Scale")
        quant_scales = set(_args(quant.outputs, "OutScale")) | set(_args(quant.inputs, "InScale"))
        max_range = _attr(op, "max_range")
        if len(scale_inputs) != 1 or scale_inputs[0] not in quant_scales or list(_attr(op, "quant_bits", [BITS])) != [
                BITS] or (max_range is not None and not np.isclose(max_range, R)):
            raise self.fail(f"{op.type} on {x!r} does not undo its fake_quantize op (scales {scale_inputs}, "
                            f"max_range {max_range})")
        self.drop(op)
        self.emit_dq(x, out, scale)

    def frozen(self, op) -> None:
        """A quantized op of a frozen program: dequantized inputs in, the dequant op's output out."""
        dequant = self.post_dequant(op)
        out, y = _one(dequant.outputs, "Out"), _one(dequant.inputs, "X")
        weight_scale = self.frozen_weight_scale(op, dequant)
        slots, activation = [], None
        for slot in op.inputs:
            args = list(slot.arguments)
            for i, name in enumerate(args):
                if name in self.dequantized and activation is None:
                    activation, args[i] = name, self.dequantized[name]
                elif self.is_param(name):
                    args[i] = self.dequant_weight(op, name, weight_scale)
                else:
                    raise self.fail(f"{op.type} before {dequant.type} reads {name!r}, which is neither a weight nor "
                                    "the output of a fake_quantize op (one of each expected)")
            slots.append((slot.parameter, args))
        if activation is None:
            raise self.fail(f"{op.type} before {dequant.type} has no fake-quantized activation input")
        act_scale = _args(dequant.inputs, "Scales")[1:] or _args(dequant.inputs, "Scale")
        if not np.allclose(self.params.array(act_scale[0]), self.params.array(self.scales[activation].var)):
            raise self.fail(f"{dequant.type} after {op.type} dequantizes with {act_scale[0]!r}, not the scale its input "
                            f"{activation!r} was quantized with")
        new = self.copy(op)
        del new.inputs[:]
        for parameter, args in slots:
            new.inputs.add(parameter=parameter, arguments=args)
        for slot in new.outputs:
            slot.arguments[:] = [out if a == y else a for a in slot.arguments]
        self.touched.add(y)
        self.append(new)

    def keep(self, op) -> None:
        for name in {a for v in op.inputs for a in v.arguments} & set(self.dequantized):
            raise self.fail(f"{op.type} reads the integer output {name!r} of a fake_quantize op without a dequant "
                            "op after it; there is no Q/DQ equivalent")
        self.append(self.copy(op))

    def append(self, op) -> None:
        """Add a kept (or frozen-rewritten) op: reading observed tensors through their observer pairs,
        and followed by observer pairs for the output thresholds it carries."""
        for slot in op.inputs:
            slot.arguments[:] = [self.observed.get(a, a) for a in slot.arguments]
        for slot in op.outputs:  # an in-place op writes a new value: later readers take it directly
            for a in slot.arguments:
                self.observed.pop(a, None)
        self.new_ops.append(op)
        self.observe(op)

    def observe(self, op) -> None:
        """The legacy format keeps each op's calibrated output abs max as ``{Arg}{i}_threshold``
        attributes; onnx_format writes observer-only Q/DQ pairs with the same scale instead. paddle2onnx
        (onnxruntime backend) quantizes Conv/MatMul/Add/... only when their outputs have scales too."""
        for attr in op.attrs:
            match = _THRESHOLD.match(attr.name)
            if not match or attr.type != self.pb.FLOAT or attr.f <= 0:
                continue
            args = _args(op.outputs, match.group(1))
            index = int(match.group(2))
            if index >= len(args):
                continue
            name = args[index]
            var = self.vars.get(name)
            if (name in self.no_observer or name in self.observed or var is None or var.persistable
                    or var.type.lod_tensor.tensor.data_type not in _FLOATS):
                continue
            scale = _Scale(self.scale_var(f"{name}@scale", np.array([attr.f])), -1, 0)
            q = self.fresh(f"{name}.quantized", like=name)
            dq = self.fresh(f"{name}.quantized.dequantized", like=name)
            self.emit_q(name, q, scale, observer=True)
            self.emit_dq(q, dq, scale, observer=True)
            self.observed[name] = dq

    # -- scales

    def scale_of(self, op, x: str) -> _Scale:
        """The abs-max scale a quant op applies: its calibrated InScale, or for a weight the abs max
        the op computes from it (per channel on quant_axis for channel-wise ops)."""
        bits = _attr(op, "bit_length", BITS)
        if bits != BITS:
            raise self.fail(f"{op.type} on {x!r} quantizes to {bits} bits; Q/DQ runtimes take {BITS}")
        round_type = _attr(op, "round_type", 0)
        in_scale = _one(op.inputs, "InScale")
        if in_scale is not None:  # calibrated (range / moving average abs max): the variable is reused as it is
            if not self.is_param(in_scale) or self.params.array(in_scale).size != 1:
                raise self.fail(f"{op.type} on {x!r} has no saved per-tensor scale {in_scale!r}")
            if self.params.array(in_scale).reshape(-1)[0] <= 0:
                self.params.set(in_scale, np.full(self.params.array(in_scale).shape, MIN_SCALE, np.float32))
            return _Scale(in_scale, -1, round_type)
        if not self.is_param(x):
            raise self.fail(f"{op.type} computes the scale of activation {x!r} from each input at run time; a Q/DQ "
                            "program needs a calibrated scale (re-quantize with range_abs_max or moving_average_abs_max "
                            "activations)")
        value = np.abs(self.params.array(x).astype(np.float64))
        if "channel_wise" in op.type:
            axis = _attr(op, "quant_axis", 0)
            value = value.max(axis=tuple(i for i in range(value.ndim) if i != axis))
            return _Scale(self.scale_var(f"{x}@scale", value), axis, round_type)
        return _Scale(self.scale_var(f"{x}@scale", np.array([value.max()])), -1, round_type)

    def frozen_weight_scale(self, op, dequant) -> tuple[np.ndarray, int]:
        """The weight's abs-max scale and axis (-1 per tensor) from the dequant op's arguments."""
        if dequant.type == "fake_channel_wise_dequantize_max_abs":
            bits = list(_attr(dequant, "quant_bits", []))
            if bits != [BITS, BITS]:
                raise self.fail(f"{dequant.type} after {op.type} has quant_bits {bits}; Q/DQ runtimes take {BITS}")
            scale = self.params.array(_args(dequant.inputs, "Scales")[0]).astype(np.float64).reshape(-1)
            return scale, _attr(dequant, "quant_axis", 0)
        # max_range = R_w * R_x / s_w (QuantizationFreezePass._insert_post_dequant_op)
        return np.array([R * R / _attr(dequant, "max_range")]), -1

    def dequant_weight(self, op, name: str, weight_scale: tuple[np.ndarray, int]) -> str:
        """int8-valued weights -> real weights W_q * s_w / R behind their own Q/DQ pair."""
        scale, axis = weight_scale
        if name in self.weights:
            var, done = self.weights[name]
            if done.shape != scale.shape or not np.allclose(done, scale):
                raise self.fail(f"weight {name!r} is shared by quantized ops with different scales")
            return var
        w = self.params.array(name)
        if w.dtype.kind != "f" or not np.array_equal(w, np.round(w)) or np.abs(w).max(initial=0) > R:
            raise self.fail(f"{op.type} weight {name!r} is not int8-valued as a frozen program's are")
        if axis >= 0 and (axis >= w.ndim or w.shape[axis] != scale.size):
            raise self.fail(f"{op.type} weight {name!r} {list(w.shape)} has no axis {axis} of {scale.size} channels")
        shape = [-1 if i == axis else 1 for i in range(w.ndim)] if axis >= 0 else [1] * w.ndim
        real = (w.astype(np.float64) * scale.reshape(shape) / R).astype(w.dtype)
        self.params.set(name, real)
        q = self.fresh(f"{name}.quantized", like=name)
        dq = self.fresh(f"{name}.quantized.dequantized", like=name)
        s = _Scale(self.scale_var(f"{name}@scale", scale), axis, 0)
        self.emit_q(name, q, s)
        self.emit_dq(q, dq, s)
        self.weights[name] = (dq, scale)
        return dq

    def post_dequant(self, op):
        """The fake dequant op after a quantized op of a frozen program (None if there is none)."""
        if op.type not in QUANTIZED_OPS:
            return None
        outputs = [a for v in op.outputs for a in v.arguments]
        readers = self.consumers.get(outputs[0], []) if len(outputs) == 1 else []
        if not any(r.type in DEQUANT_OPS for r in readers):
            return None
        if len(readers) != 1:
            raise self.fail(f"{op.type} output {outputs[0]!r} goes to its dequant op and to other ops")
        dequant = readers[0]
        if dequant.type == "fake_channel_wise_dequantize_max_abs" and len(_args(dequant.inputs, "Scales")) != 2:
            raise self.fail(f"{dequant.type} after {op.type} has {len(_args(dequant.inputs, 'Scales'))} scale(s), "
                            "expected the weight's and the activation's")
        return dequant

    # -- program editing

    def is_param(self, name: str) -> bool:
        var = self.vars.get(name)
        return var is not None and var.persistable

    def unique(self, name: str) -> str:
        base, n = name, 0
        while name in self.vars:
            n += 1
            name = f"{base}_{n}"
        self.created.add(name)
        return name

    def fresh(self, name: str, like: str) -> str:
        """A new non-persistable variable shaped like ``like``."""
        name = self.unique(name)
        var = self.block.vars.add()
        var.CopyFrom(self.vars[like])
        var.name, var.persistable, var.is_parameter, var.need_check_feed = name, False, False, False
        self.vars[name] = var
        return name

    def scale_var(self, name: str, value: np.ndarray) -> str:
        """A new persistable float32 scale variable holding ``value`` (abs max; [1] or [channels])."""
        name = self.unique(name)
        value = np.maximum(np.asarray(value, np.float64).reshape(-1), MIN_SCALE).astype(np.float32)
        self.add_param(name, value)
        return name

    def add_param(self, name: str, value: np.ndarray) -> None:
        var = self.block.vars.add()
        var.name, var.persistable = name, True
        var.type.type = self.pb.VarType.LOD_TENSOR
        var.type.lod_tensor.tensor.data_type = _PROTO[value.dtype]
        var.type.lod_tensor.tensor.dims.extend(value.shape)
        self.vars[name] = var
        self.params.set(name, value)

    def zero_point(self, name: str, scale: str) -> str:
        # PaddleSlim gives each Q and DQ op its own int32 zeros shaped like the scale; so do we.
        name = self.unique(f"{name}@zero_point")
        self.add_param(name, np.zeros(self.params.array(scale).shape, np.int32))
        return name

    def emit_q(self, x: str, y: str, scale: _Scale, observer: bool = False) -> None:
        self.emit("quantize_linear", x, y, scale, self.zero_point(y, scale.var), observer)

    def emit_dq(self, x: str, y: str, scale: _Scale, observer: bool = False) -> None:
        self.emit("dequantize_linear", x, y, scale, self.zero_point(y, scale.var), observer)

    def emit(self, op_type: str, x: str, y: str, scale: _Scale, zero_point: str, observer: bool) -> None:
        """An op with the inputs and attributes PaddleSlim's quant_post_static(onnx_format=True) writes."""
        op = self.pb.OpDesc(type=op_type)
        for parameter, arg in (("X", x), ("Scale", scale.var), ("ZeroPoint", zero_point)):
            op.inputs.add(parameter=parameter, arguments=[arg])
        op.outputs.add(parameter="Y", arguments=[y])
        for name, value in (("bit_length", BITS), ("quant_axis", scale.axis), ("round_type", scale.round_type),
                            ("op_role", 0)):
            op.attrs.add(name=name, type=self.pb.INT, i=value)
        op.attrs.add(name="only_observer", type=self.pb.BOOLEAN, b=observer)  # observer: Y = X, scale recorded
        self.new_ops.append(op)

    def copy(self, op):
        new = self.pb.OpDesc()
        new.CopyFrom(op)
        return new

    def drop(self, op) -> None:
        self.touched.update(a for slots in (op.inputs, op.outputs) for v in slots for a in v.arguments)

    def tidy(self) -> None:
        """Remove the variables only the removed ops used (fake-quant scales, int outputs, state)
        and check that every variable the rewrite touched is a parameter or written before it is read."""
        used = {a for b in self.program.blocks for op in b.ops for slots in (op.inputs, op.outputs)
                for v in slots for a in v.arguments}
        keep = [v for v in self.block.vars if v.name in used or v.name not in self.touched]
        del self.block.vars[:]
        self.block.vars.extend(keep)
        for name in self.touched - used:
            self.params.raw.pop(name, None)
            self.params.arrays.pop(name, None)
        available = {v.name for v in self.block.vars if v.persistable}
        for op in self.block.ops:
            for name in (a for v in op.inputs for a in v.arguments):
                if name not in available and (name in self.touched or name in self.created):
                    raise self.fail(f"rewriting left {op.type} reading {name!r} before anything writes it")
            available.update(a for v in op.outputs for a in v.arguments)
