"""Read feeds, fetches and op types straight from a ``.pdmodel`` protobuf (no executor)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import IntakeError
from .spec import TensorSpec

if TYPE_CHECKING:
    from paddle.base.proto import framework_pb2

# paddle/fluid/framework/framework.proto VarType.Type
_PADDLE_DTYPES = {0: "bool", 1: "int16", 2: "int32", 3: "int64", 4: "float16", 5: "float32", 6: "float64", 20: "uint8", 21: "int8"}


@dataclass
class ProgramInfo:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_types: frozenset[str]


def load_program_desc(model_file: Path) -> framework_pb2.ProgramDesc:
    """The ``.pdmodel`` protobuf, parsed; the one place tritongen reads a Paddle program."""
    from paddle.base.proto import framework_pb2
    from google.protobuf.message import DecodeError

    model_file = Path(model_file)
    program = framework_pb2.ProgramDesc()
    try:
        program.ParseFromString(model_file.read_bytes())
    except (DecodeError, ValueError) as exc:
        raise IntakeError(f"{model_file}: not a Paddle inference program ({exc})") from None
    if not program.blocks:
        raise IntakeError(f"{model_file}: the program has no blocks")
    return program


def save_program_desc(program: framework_pb2.ProgramDesc, model_file: Path) -> None:
    """Write ``program`` (a :func:`load_program_desc` result, edited) back to ``model_file``."""
    Path(model_file).write_bytes(program.SerializeToString())


def read_program(model_file: Path) -> ProgramInfo:
    program = load_program_desc(model_file)
    block = program.blocks[0]
    variables = {v.name: v for v in block.vars}

    def tensor(name: str) -> TensorSpec:
        var = variables.get(name)
        if var is None:
            raise IntakeError(f"{model_file}: variable {name!r} is fed or fetched but not declared")
        t = var.type.lod_tensor.tensor
        return TensorSpec(name, _PADDLE_DTYPES.get(t.data_type, f"paddle_type_{t.data_type}"), tuple(t.dims))

    def column(op) -> int:
        return next((a.i for a in op.attrs if a.name == "col"), 0)

    feeds = sorted((op for op in block.ops if op.type == "feed"), key=column)
    fetches = sorted((op for op in block.ops if op.type == "fetch"), key=column)
    if not feeds or not fetches:
        raise IntakeError(f"{model_file}: the program has no feed/fetch ops; export it with paddle.jit.save or save_inference_model")
    op_types = frozenset(op.type for b in program.blocks for op in b.ops) - {"feed", "fetch"}
    return ProgramInfo(
        inputs=[tensor(op.outputs[0].arguments[0]) for op in feeds],
        outputs=[tensor(op.inputs[0].arguments[0]) for op in fetches],
        op_types=op_types,
    )
