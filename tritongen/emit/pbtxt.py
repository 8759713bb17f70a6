"""Render config.pbtxt from tritongen/templates/ with jinja2; parse every result with Triton's proto."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jinja2

from ..errors import EmitError

NUMPY_TO_TRITON = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bytes": "TYPE_STRING",
}


TEMPLATES = Path(__file__).resolve().parents[1] / "templates"  # package data: ships in the wheel


def templates_dir() -> Path:
    if not (TEMPLATES / "ensemble").is_dir():
        raise EmitError(f"{TEMPLATES} is missing (a broken install); reinstall tritongen")
    return TEMPLATES


def _pbstr(value: Any) -> str:
    """A protobuf text-format string literal."""
    text = str(value)
    if any(ord(c) < 0x20 for c in text):
        raise EmitError(f"control character in config value {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["pbstr"] = _pbstr
    return env


def template_path(relative: str) -> Path:
    return templates_dir() / relative


def render_config(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def parse_config(text: str, expected_name: str):
    """Parse config.pbtxt text into ``model_config_pb2.ModelConfig``; raise EmitError if invalid."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise EmitError(f"generated config for {expected_name!r} does not parse as a Triton ModelConfig: {exc}\n{text}") from None
    if config.name != expected_name:
        raise EmitError(f"generated config names model {config.name!r}, expected {expected_name!r}")
    if not (config.platform or config.backend):
        raise EmitError(f"generated config for {expected_name!r} has neither platform nor backend")
    return config


def read_configs(repository: Path) -> dict:
    """Every model's parsed ``config.pbtxt`` in ``repository``, by model name (sorted); EmitError
    naming the file that does not parse. Directories starting with '.' are not models (a build's
    staging, editor and VCS directories) and are skipped."""
    configs = {}
    for path in sorted(Path(repository).glob("*/config.pbtxt")):
        if path.parent.name.startswith("."):
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EmitError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); config.pbtxt must be UTF-8") from None
        except OSError as exc:
            raise EmitError(f"{path}: cannot read it ({exc.strerror or exc})") from None
        try:
            configs[path.parent.name] = parse_config(text, path.parent.name)
        except EmitError as exc:
            raise EmitError(f"{path}: {exc}") from None
    return configs
