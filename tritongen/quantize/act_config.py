"""PaddleSlim ACT (auto-compression) configuration: load, validate, fill in defaults.

An ACT yaml has the sections ``Global``, ``QuantAware``, ``QuantPost``, ``Distillation`` and
``TrainConfig`` (as in PaddleSlim's ``example/auto_compression`` configs). The valid keys of the
strategy sections and of ``TrainConfig`` are read from PaddleSlim's own classes
(``paddleslim.auto_compression.strategy_config``: the parameters of each ``__init__``), and those
of ``Global`` from ``AutoCompression.__init__``, so they follow the installed PaddleSlim.

Every key is either passed through to ACT or rejected with a reason; none is silently dropped:

* ``Global.model_dir`` / ``model_filename`` / ``params_filename`` / ``save_dir`` (arguments of
  ``AutoCompression``) are set by tritongen: the model comes from SOURCE and the output goes to
  the work directory. A yaml copied from a PaddleSlim example has them, so they are *ignored
  with a note* rather than refused; the effective config that :func:`quantize_qat` returns
  records the values really used, and loading it again gives the same notes.
* ``Global.batch_size`` and ``Global.input_list`` / ``Global.input_name`` are keys of the
  PaddleSlim example scripts, not of ACT; tritongen implements them itself (the batch size of
  the calibration DataLoader; the feed name, which must be the model's image input).
* Keys that cannot take effect here are refused with the reason (:data:`UNSUPPORTED`): ACT
  silently ignores them in this setting (``target_speedup``, ``origin_metric``, ...), they need
  a GPU (``amp_config``), or they break the run (``input_shapes``). Any other
  ``AutoCompression`` argument a later PaddleSlim adds is passed through.
* QuantAware keys that ACT checks but does not apply in the ONNX format (``dtype``,
  ``window_size``, ``activation_quantize_type`` other than moving-average) are accepted only
  with the value that really takes effect.
* Keys that ACT ignores unless another key is set (``QuantPost.lr`` without ``recon_level``, ...)
  and combinations ACT mishandles (``QuantAware`` + ``QuantPost`` segfaults in PaddleSlim 2.6) are
  refused too.

Types are checked against the PaddleSlim defaults (an int where a float is expected is
converted: ACT treats ``learning_rate: 1`` as a scheduler dict and crashes). Floats written
``1e-4`` are read as numbers (YAML 1.2), not as the string PyYAML's YAML 1.1 rules give.
"""
from __future__ import annotations

import ast
import copy
import difflib
import functools
import importlib.util
import inspect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import TritongenError

SECTIONS = ("Global", "QuantAware", "QuantPost", "Distillation", "TrainConfig")
STRATEGY_SECTIONS = ("QuantAware", "QuantPost", "Distillation")

# AutoCompression.__init__ parameters that are Python objects, never yaml values.
_GLOBAL_NOT_YAML = ("self", "train_dataloader", "config", "eval_callback", "eval_dataloader")
# AutoCompression.__init__ parameters tritongen sets itself: ignored (with a note) in a yaml.
GLOBAL_SET_BY_TRITONGEN = ("model_dir", "model_filename", "params_filename", "save_dir")
# Keys of the PaddleSlim example scripts' Global section that tritongen implements itself.
GLOBAL_EXTRA: dict[str, tuple[type, ...]] = {
    "batch_size": (int,),
    "input_list": (list, str),
    "input_name": (str,),
}

UNSUPPORTED: dict[tuple[str, str], str] = {
    ("Global", "target_speedup"): "it only steers ACT's automatic strategy search; tritongen always names the strategy",
    ("Global", "input_shapes"): "ACT uses it to re-export the model with a fixed input shape (the INT8 model would "
    "lose its variable height/width), and in PaddleSlim 2.6 that re-export makes the final convert() fail at random "
    "('Generated graph shouldn't contain cycle'); ACT trains variable-shape models fine without it",
    ("Global", "deploy_hardware"): "it only steers ACT's automatic strategy search; tritongen always names the "
    "strategy and always trains on CPU (deploy_hardware='cpu')",
    ("TrainConfig", "origin_metric"): "it needs a labelled evaluation function; tritongen distils on unlabeled images",
    ("TrainConfig", "target_metric"): "it needs a labelled evaluation function; tritongen distils on unlabeled images",
    ("TrainConfig", "amp_config"): "mixed-precision training needs a GPU; tritongen trains on CPU",
    ("TrainConfig", "recompute_config"): "ACT uses it only in multi-GPU (fleet) training; tritongen trains on CPU",
    ("TrainConfig", "sharding_config"): "ACT uses it only in multi-GPU (fleet) training; tritongen trains on CPU",
}

# QuantAware keys that ACT validates but does not apply in the ONNX (QDQ) format tritongen
# needs: QuantizationTransformPassV2 always inserts moving-average activation quantizers, and
# the dtype is never read. Accepted only with the value that really takes effect.
_ONLY_VALUE: dict[tuple[str, str], tuple[Any, str]] = {
    ("QuantAware", "activation_quantize_type"): (
        "moving_average_abs_max", "with onnx_format ACT always quantizes activations by moving-average abs-max"),
    ("QuantAware", "window_size"): (10000, "it only sizes 'range_abs_max', which ACT's onnx_format pass never uses"),
    ("QuantAware", "dtype"): ("int8", "PaddleSlim checks it but never uses it; the QDQ program is int8"),
}

# QuantPost keys ACT passes on only when recon_level is set (quant_recon_static); with
# recon_level None it calls quant_post, which never sees them.
_RECON_ONLY = ("epochs", "lr", "regions", "region_weights_names", "simulate_activation_quant", "skip_tensor_list")

# Types of keys whose PaddleSlim default is None or whose documented type is a union.
_TYPE_OVERRIDES: dict[tuple[str, str], tuple[type, ...]] = {
    ("Distillation", "loss"): (str, list),
    ("Distillation", "node"): (list,),
    ("Distillation", "alpha"): (float, list),
    ("Distillation", "teacher_model_dir"): (str,),
    ("Distillation", "teacher_model_filename"): (str,),
    ("Distillation", "teacher_params_filename"): (str,),
    ("QuantPost", "batch_nums"): (int,),
    ("QuantPost", "regions"): (list,),
    ("QuantPost", "region_weights_names"): (list,),
    ("QuantPost", "recon_level"): (str,),
    ("QuantPost", "skip_tensor_list"): (list,),
    ("TrainConfig", "epochs"): (int,),
    ("TrainConfig", "train_iter"): (int,),
    ("TrainConfig", "learning_rate"): (float, dict),
    ("TrainConfig", "optimizer_builder"): (dict,),
}
_POSITIVE_INTS = {
    ("Global", "batch_size"), ("QuantPost", "batch_size"), ("QuantPost", "batch_nums"),
    ("TrainConfig", "epochs"), ("TrainConfig", "train_iter"), ("TrainConfig", "eval_iter"),
    ("TrainConfig", "logging_iter"), ("QuantAware", "weight_bits"), ("QuantAware", "activation_bits"),
    ("QuantPost", "weight_bits"), ("QuantPost", "activation_bits"),
}

# Why an empty Distillation.node means the model outputs in tritongen, not ACT's default.
OUTPUT_NODES_NOTE = (
    "ACT's own default (the outputs of the last weighted layers) prunes the training program there, so the "
    "activation quantizers after those layers (e.g. on the softmax input) never see data and keep their "
    "initial scale 1.0: a real INT8 backend then clips the logits to [-1, 1]"
)

DEFAULT_TRAIN_ITERS = 300
DEFAULT_LEARNING_RATE = 1e-4


class ActConfigError(TritongenError):
    """An ACT configuration (yaml or dict) that tritongen cannot run as written."""


@dataclass
class ActConfig:
    """A validated ACT configuration: the sections as written (ints converted to floats where
    ACT needs floats, relative teacher paths made absolute), where it came from, and notes."""

    sections: dict[str, dict[str, Any]]
    source: str = "<config>"
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self.sections)


# --------------------------------------------------------------------------- introspection


@functools.lru_cache(maxsize=None)
def _paddleslim_dir() -> Path:
    found = importlib.util.find_spec("paddleslim")  # locates the package without importing it
    if found is None or not found.submodule_search_locations:
        raise ActConfigError("PaddleSlim is not installed (pip install paddleslim)")
    return Path(list(found.submodule_search_locations)[0])


@functools.lru_cache(maxsize=None)
def _strategy_classes() -> dict[str, type]:
    """PaddleSlim's strategy config classes, from ``auto_compression/strategy_config.py``.

    That module is plain Python (no Paddle import), so it is executed on its own: importing
    ``paddleslim`` itself takes seconds.
    """
    path = _paddleslim_dir() / "auto_compression" / "strategy_config.py"
    spec = importlib.util.spec_from_file_location("_tritongen_paddleslim_strategy_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {"QuantAware": module.QuantAware, "QuantPost": module.QuantPost, "Distillation": module.Distillation,
            "TrainConfig": module.TrainConfig, "SUPPORTED_CONFIG": module.SUPPORTED_CONFIG}


def _ast_function(path: Path, name: str, cls: str | None = None) -> ast.FunctionDef:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    scope = tree.body
    if cls is not None:
        scope = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    return next(n for n in scope if isinstance(n, ast.FunctionDef) and n.name == name)


def _ast_parameters(fn: ast.FunctionDef) -> dict[str, inspect.Parameter]:
    args = fn.args.args
    defaults = [inspect.Parameter.empty] * (len(args) - len(fn.args.defaults)) + [
        ast.literal_eval(d) for d in fn.args.defaults]
    return {a.arg: inspect.Parameter(a.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d)
            for a, d in zip(args, defaults)}


@functools.lru_cache(maxsize=None)
def _act_parameters(section: str) -> dict[str, inspect.Parameter]:
    """The parameters ACT accepts for ``section``, read from PaddleSlim's own code: the
    ``__init__`` signatures of its strategy classes, and for Global that of ``AutoCompression``
    (read from the source, as importing paddleslim.auto_compression takes seconds)."""
    if section == "Global":
        fn = _ast_function(_paddleslim_dir() / "auto_compression" / "compressor.py", "__init__", "AutoCompression")
        params = _ast_parameters(fn)
        return {n: p for n, p in params.items() if n not in _GLOBAL_NOT_YAML}
    params = inspect.signature(_strategy_classes()[section].__init__).parameters
    return {n: p for n, p in params.items() if n != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}


def act_global_arguments() -> set[str]:
    """Global keys that are ``AutoCompression`` arguments tritongen passes through (none in
    PaddleSlim 2.6: the others are set by tritongen or refused; a new argument would pass)."""
    return {k for k in _act_parameters("Global")
            if k not in GLOBAL_SET_BY_TRITONGEN and ("Global", k) not in UNSUPPORTED}


def valid_keys(section: str) -> list[str]:
    """Keys tritongen accepts in ``section``: ACT's parameters minus :data:`UNSUPPORTED`."""
    keys = set(_act_parameters(section))
    if section == "Global":
        keys |= set(GLOBAL_EXTRA)
    return sorted(k for k in keys if (section, k) not in UNSUPPORTED)


def act_defaults(section: str) -> dict[str, Any]:
    """PaddleSlim's default for every key of a strategy/TrainConfig section."""
    return {n: copy.deepcopy(p.default) for n, p in _act_parameters(section).items()
            if p.default is not p.empty and (section, n) not in UNSUPPORTED}


@functools.lru_cache(maxsize=None)
def distill_losses() -> list[str]:
    """The pairwise distillation losses ACT can name: ACT does ``eval(loss)(teacher_var, student_var)``
    over ``from paddleslim.dist import *``, so the functions exported there that take
    (teacher_var_name, student_var_name)."""
    dist = _paddleslim_dir() / "dist"
    exported = set()
    for node in ast.parse((dist / "__init__.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module == "single_distiller":
            exported |= {a.asname or a.name for a in node.names}
    names = []
    for node in ast.parse((dist / "single_distiller.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and node.name in exported:
            if [a.arg for a in node.args.args[:2]] == ["teacher_var_name", "student_var_name"]:
                names.append(node.name)
    return sorted(names)


# --------------------------------------------------------------------------- yaml


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (``1e-4``) and duplicate keys reported."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_act_config(path: str | Path) -> ActConfig:
    """Read and validate an ACT yaml. Relative ``Distillation.teacher_model_dir`` is resolved
    against the yaml's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ActConfigError(f"{path}: ACT config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ActConfigError(f"{path}: cannot read the ACT config ({exc})") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        raise ActConfigError(f"{path}{where}: malformed YAML: {problem}" + (f" ({context})" if context else "")) from None
    if data is None:
        data = {}
    config = validate_act_config(data, source=str(path))
    distill = config.sections.get("Distillation") or {}
    teacher = distill.get("teacher_model_dir")
    if teacher and not Path(teacher).is_absolute():
        distill["teacher_model_dir"] = str((path.parent / teacher).resolve())
    return config


# --------------------------------------------------------------------------- validation


def _type_names(kinds: tuple[type, ...]) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _expected_types(section: str, key: str, params: dict[str, inspect.Parameter]) -> tuple[type, ...] | None:
    if (section, key) in _TYPE_OVERRIDES:
        return _TYPE_OVERRIDES[(section, key)]
    if section == "Global" and key in GLOBAL_EXTRA:
        return GLOBAL_EXTRA[key]
    param = params.get(key)
    if param is None or param.default is param.empty or param.default is None:
        return None
    for kind in (bool, int, float, str, list, dict):  # bool before int: True is an int
        if isinstance(param.default, kind):
            return (kind,)
    return None


def _check_type(where: str, section: str, key: str, value: Any, kinds: tuple[type, ...] | None) -> Any:
    if value is None or kinds is None:
        return value
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # ACT tests isinstance(..., float): an int learning_rate/alpha crashes it
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        hint = ""
        if isinstance(value, str) and (int in kinds or float in kinds):
            hint = " (quoted?)"
        names = _type_names(kinds)
        article = "an" if names[0] in "aeiou" else "a"
        raise ActConfigError(
            f"{where}: section '{section}', key '{key}' must be {article} {names}, got {value!r}{hint}")
    if (section, key) in _POSITIVE_INTS and isinstance(value, int) and value < 1:
        raise ActConfigError(f"{where}: section '{section}', key '{key}' must be at least 1, got {value}")
    return value


def _unknown_key(where: str, section: str, key: Any) -> ActConfigError:
    if (section, key) in UNSUPPORTED:
        return ActConfigError(f"{where}: section '{section}', key '{key}' is not supported by tritongen: "
                              f"{UNSUPPORTED[(section, key)]}. Valid keys: {', '.join(valid_keys(section))}")
    keys = valid_keys(section)
    close = difflib.get_close_matches(str(key), keys, n=1)
    extra = ""
    if section == "Global" and key in ("data_dir", "reader_config", "eval_dir", "image_size"):
        extra = " (tritongen reads the calibration images from its own image folder)"
    return ActConfigError(
        f"{where}: section '{section}' has unknown key '{key}'{extra}"
        + (f" (did you mean '{close[0]}'?)" if close else "")
        + f". Valid keys: {', '.join(keys)}")


def validate_act_config(data: dict[str, Any], source: str = "<config>") -> ActConfig:
    """Check sections, keys, types and combinations; return them (not yet merged with defaults)."""
    where = source
    if isinstance(data, ActConfig):
        return ActConfig(data.as_dict(), data.source, list(data.notes))
    if not isinstance(data, dict):
        raise ActConfigError(f"{where}: an ACT config must be a mapping of sections ({', '.join(SECTIONS)}), "
                             f"got {type(data).__name__}")
    notes: list[str] = []
    sections: dict[str, dict[str, Any]] = {}
    for name, body in data.items():
        if name not in SECTIONS:
            known = _strategy_classes()["SUPPORTED_CONFIG"]
            why = " (an ACT strategy tritongen does not run: it only quantizes)" if name in known else ""
            close = difflib.get_close_matches(str(name), SECTIONS, n=1)
            raise ActConfigError(
                f"{where}: unknown section '{name}'{why}" + (f" (did you mean '{close[0]}'?)" if close else "")
                + f". Valid sections: {', '.join(SECTIONS)}")
        if body is None:
            body = {}  # "QuantAware:" alone = all ACT defaults, as ACT itself reads it
        if not isinstance(body, dict):
            raise ActConfigError(f"{where}: section '{name}' must be a mapping of keys, got {body!r}")
        params = _act_parameters(name)
        allowed = set(valid_keys(name))
        out: dict[str, Any] = {}
        for key, value in body.items():
            if name == "Global" and key in GLOBAL_SET_BY_TRITONGEN:
                notes.append(f"{where}: Global.{key} ({value!r}) is ignored: tritongen sets it "
                             "(the model comes from SOURCE, the output goes to the work directory)")
                continue
            if key not in allowed:
                raise _unknown_key(where, name, key)
            out[key] = _check_type(where, name, key, value, _expected_types(name, key, params))
        sections[name] = out
    _check_values(where, sections)
    return ActConfig(sections, source, notes)


def _check_values(where: str, s: dict[str, dict[str, Any]]) -> None:
    qa, qp, dist, train = (s.get(k) for k in ("QuantAware", "QuantPost", "Distillation", "TrainConfig"))
    if qa is not None and qp is not None:
        raise ActConfigError(
            f"{where}: sections 'QuantAware' and 'QuantPost' together: ACT would post-quantize and then run "
            "quant-aware training on the already quantized program (PaddleSlim 2.6 crashes on it). Keep one: "
            "QuantAware (+ Distillation) for quant-aware training, QuantPost for post-training quantization")
    if qp is not None and dist is not None:
        raise ActConfigError(f"{where}: section 'Distillation' goes with 'QuantAware'; with 'QuantPost' ACT would "
                             "distil the FP32 model into itself before post-training quantization. Remove one")
    if qp is not None and train is not None:
        raise ActConfigError(f"{where}: section 'TrainConfig' has no effect with 'QuantPost' (post-training "
                             "quantization does not train). Remove it, or use QuantAware + Distillation")
    for name, body in (("QuantAware", qa), ("QuantPost", qp)):
        if body and body.get("onnx_format") is False:
            raise ActConfigError(
                f"{where}: section '{name}', key 'onnx_format': false writes PaddleSlim's legacy fake_quantize "
                "ops, which tritongen's backends (Paddle Inference oneDNN INT8, paddle2onnx, TensorRT) do not "
                "take; use onnx_format: true (quantize_linear/dequantize_linear)")
    for (section, key), (value, why) in _ONLY_VALUE.items():
        body = s.get(section)
        if body and key in body and body[key] != value:
            raise ActConfigError(f"{where}: section '{section}', key '{key}': {body[key]!r} would be silently ignored "
                                 f"({why}); remove it or set {value!r}")
    if qp is not None and qp.get("recon_level") is None:
        for key in _RECON_ONLY:
            if key in qp:
                raise ActConfigError(f"{where}: section 'QuantPost', key '{key}' is used by ACT only with "
                                     f"'recon_level' (layer-wise or region-wise); without it ACT ignores it")
    if dist:
        _check_distillation(where, dist)
    if train:
        _check_train(where, train)


def _check_distillation(where: str, d: dict[str, Any]) -> None:
    losses = distill_losses()
    loss = d.get("loss", "l2")
    node = d.get("node", [])
    alpha = d.get("alpha", 1.0)
    loss_list = loss if isinstance(loss, list) else [loss]
    for name in loss_list:
        if name not in losses:
            raise ActConfigError(f"{where}: section 'Distillation', key 'loss': unknown loss {name!r}; "
                                 f"ACT's pairwise losses are {', '.join(losses)}")
    if isinstance(alpha, (int, float)) and alpha <= 0:
        raise ActConfigError(f"{where}: section 'Distillation', key 'alpha' must be > 0, got {alpha} "
                             "(ACT silently replaces 0 with 1.0)")
    if isinstance(loss, list) or isinstance(alpha, list) or (node and isinstance(node[0], list)):
        groups = len(node)
        if not (isinstance(loss, list) and isinstance(alpha, list) and node and all(isinstance(n, list) for n in node)
                and len(loss) == len(alpha) == groups):
            raise ActConfigError(
                f"{where}: section 'Distillation': for several losses give 'loss' and 'alpha' as lists of the "
                "same length and 'node' as a list of lists of variable names, one per loss; got "
                f"loss={loss!r}, alpha={alpha!r}, node={node!r}")
        for a in alpha:
            if not isinstance(a, (int, float)) or isinstance(a, bool) or a <= 0:
                raise ActConfigError(f"{where}: section 'Distillation', key 'alpha': every weight must be a "
                                     f"number > 0, got {a!r}")
        d["alpha"] = [float(a) for a in alpha]
    for name in _node_names(node):
        if not isinstance(name, str):
            raise ActConfigError(f"{where}: section 'Distillation', key 'node' must list variable names, got {name!r}")
    if d.get("teacher_model_dir") is None:
        for key in ("teacher_model_filename", "teacher_params_filename"):
            if d.get(key) is not None:
                raise ActConfigError(f"{where}: section 'Distillation', key '{key}' needs 'teacher_model_dir' "
                                     "(without it the teacher is the FP32 model being quantized)")


def _node_names(node: list) -> list:
    return [n for group in node for n in (group if isinstance(group, list) else [group])]


def _check_train(where: str, t: dict[str, Any]) -> None:
    import paddle

    lr = t.get("learning_rate")
    if isinstance(lr, float) and not lr > 0:
        raise ActConfigError(f"{where}: section 'TrainConfig', key 'learning_rate' must be > 0, got {lr}")
    if isinstance(lr, dict):
        kind = lr.get("type")
        if not isinstance(kind, str) or not isinstance(getattr(paddle.optimizer.lr, kind, None), type):
            schedulers = sorted(n for n in dir(paddle.optimizer.lr) if n.endswith("Decay") or n in ("LinearWarmup", "OneCycleLR", "CyclicLR"))
            raise ActConfigError(f"{where}: section 'TrainConfig', key 'learning_rate' as a mapping needs 'type': "
                                 f"a class of paddle.optimizer.lr ({', '.join(schedulers)}); got {kind!r}")
    opt = t.get("optimizer_builder")
    if opt is not None:
        inner = opt.get("optimizer")
        kind = inner.get("type") if isinstance(inner, dict) else None
        if not isinstance(kind, str) or not isinstance(getattr(paddle.optimizer, kind, None), type):
            raise ActConfigError(
                f"{where}: section 'TrainConfig', key 'optimizer_builder' needs 'optimizer: {{type: ...}}' naming a "
                f"class of paddle.optimizer (SGD, Momentum, Adam, AdamW, ...); got {inner!r}")
        unknown = set(opt) - {"optimizer", "weight_decay", "regularizer", "grad_clip"}
        if unknown:
            raise ActConfigError(f"{where}: section 'TrainConfig', key 'optimizer_builder' has unknown key(s) "
                                 f"{', '.join(sorted(map(str, unknown)))}; ACT reads optimizer, weight_decay, "
                                 "regularizer, grad_clip")


# --------------------------------------------------------------------------- defaults


def default_qat_config(train_iters: int = DEFAULT_TRAIN_ITERS, learning_rate: float = DEFAULT_LEARNING_RATE,
                       batch_size: int = 4) -> dict[str, dict[str, Any]]:
    """A small quant-aware distillation config for unlabeled images.

    INT8 weights (per channel) and activations (moving-average abs-max) in the ONNX-style QDQ
    format; the student is distilled from the FP32 model itself (ACT's default teacher) with an
    l2 loss on the model's outputs (``node: []`` here means the outputs, filled in by
    :func:`quantize_qat` — see :data:`OUTPUT_NODES_NOTE`); ``train_iters`` Momentum steps with a
    cosine-decayed learning rate starting at ``learning_rate`` (small: this is fine-tuning a
    trained model on a few hundred unlabeled images).
    """
    if train_iters < 1:
        raise ActConfigError(f"train_iters must be at least 1, got {train_iters}")
    return {
        "Global": {"batch_size": batch_size},
        "QuantAware": {
            "onnx_format": True,
            "use_pact": False,
            "weight_bits": 8,
            "activation_bits": 8,
            "weight_quantize_type": "channel_wise_abs_max",
            "activation_quantize_type": "moving_average_abs_max",
            "quantize_op_types": ["conv2d", "depthwise_conv2d", "conv2d_transpose", "mul", "matmul", "matmul_v2"],
        },
        "Distillation": {"loss": "l2", "node": [], "alpha": 1.0},
        "TrainConfig": _default_train(train_iters, learning_rate),
    }


def _default_train(total_iters: int, learning_rate: float = DEFAULT_LEARNING_RATE) -> dict[str, Any]:
    return {
        "train_iter": total_iters,
        "learning_rate": {"type": "CosineAnnealingDecay", "learning_rate": learning_rate, "T_max": total_iters},
        "optimizer_builder": {"optimizer": {"type": "Momentum", "momentum": 0.9}, "weight_decay": 4.0e-05},
        "eval_iter": total_iters + 1,  # no eval callback: ACT would only warn "Not set eval function"
        "logging_iter": 10,
    }


def effective_config(config: ActConfig | dict | None, n_images: int, batch_size: int = 4,
                     train_iters: int | None = None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Resolve what ACT will run on ``n_images`` calibration images: (config, notes).

    * No strategy section in ``config`` -> tritongen's default QuantAware + Distillation;
      QuantAware without Distillation -> the default Distillation is added (ACT runs QuantAware
      only as quant-aware *distillation*: alone it selects no strategy and fails an assert).
    * TrainConfig keys overlay tritongen's defaults (ACT's own are 100 epochs at lr 0.02).
      ``train_iters`` (if given) overrides ``TrainConfig.train_iter``. ``epochs`` is always set:
      with epochs unset ACT stops after 100 passes over the data whatever train_iter says.
    * ``Global.batch_size`` (if set) overrides ``batch_size``; for QuantPost, ``QuantPost.batch_size``
      is the batch size of the calibration loader (ACT passes it on, but a DataLoader batches itself).
    * Every strategy / TrainConfig key is then spelled out with PaddleSlim's default.
    """
    cfg = validate_act_config(config if config is not None else {}, source=getattr(config, "source", "<config>"))
    notes = list(cfg.notes)
    where = cfg.source
    user = cfg.sections
    out: dict[str, dict[str, Any]] = {}
    glob = dict(user.get("Global", {}))
    named = [s for s in STRATEGY_SECTIONS if s in user]
    defaults = default_qat_config()
    if not named:
        strategy = {"QuantAware": defaults["QuantAware"], "Distillation": defaults["Distillation"]}
    else:
        strategy = {s: dict(user[s]) for s in named}
        if "QuantAware" in strategy and "Distillation" not in strategy:
            strategy["Distillation"] = defaults["Distillation"]
            notes.append(f"{where}: no Distillation section; using the default (l2 between the FP32 model's "
                         "outputs and the quantized ones): ACT trains QuantAware only with distillation")
        if "Distillation" in strategy and "QuantAware" not in strategy:
            raise ActConfigError(f"{where}: section 'Distillation' without 'QuantAware' would only distil the FP32 "
                                 "model into itself; add a QuantAware section (it may be empty)")
    ptq = "QuantPost" in strategy
    batch = glob.get("batch_size", batch_size)
    if ptq:
        batch = strategy["QuantPost"].get("batch_size", glob.get("batch_size", batch_size))
        strategy["QuantPost"]["batch_size"] = batch
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ActConfigError(f"batch_size must be a positive integer, got {batch!r}")
    if n_images < 1:
        raise ActConfigError("no calibration images to train on")
    glob["batch_size"] = batch
    out["Global"] = glob

    for name in ("QuantAware", "QuantPost", "Distillation"):
        if name in strategy:
            out[name] = {**act_defaults(name), **strategy[name]}
    if ptq and out["QuantPost"].get("recon_level") is None:
        for key in _RECON_ONLY:  # not used without recon_level (and refused in a config)
            out["QuantPost"].pop(key, None)
    if not ptq:
        utrain = dict(user.get("TrainConfig", {}))
        batches_per_epoch = math.ceil(n_images / batch)
        if train_iters is not None:
            if train_iters < 1:
                raise ActConfigError(f"train_iters must be at least 1, got {train_iters}")
            if "train_iter" in utrain and utrain["train_iter"] != train_iters:
                notes.append(f"{where}: TrainConfig.train_iter {utrain['train_iter']} overridden by "
                             f"train_iters={train_iters}")
            utrain["train_iter"] = train_iters
        if "train_iter" not in utrain and "epochs" not in utrain:
            utrain["train_iter"] = DEFAULT_TRAIN_ITERS
        train_iter = utrain.get("train_iter")
        epochs = utrain.get("epochs") or math.ceil(train_iter / batches_per_epoch)
        total = min(train_iter or math.inf, epochs * batches_per_epoch)
        train = {**act_defaults("TrainConfig"), **_default_train(int(total)), **utrain}
        train["train_iter"], train["epochs"] = train_iter, epochs
        out["TrainConfig"] = train
    return out, notes


def total_train_iters(effective: dict[str, dict[str, Any]], n_images: int) -> int | None:
    """How many optimizer steps ACT will take with ``effective`` (None for QuantPost)."""
    train = effective.get("TrainConfig")
    if not train:
        return None
    per_epoch = math.ceil(n_images / effective["Global"]["batch_size"])
    return int(min(train.get("train_iter") or math.inf, train["epochs"] * per_epoch))
