"""Quant-aware distillation training (QAT) with PaddleSlim ACT, on unlabeled calibration images.

The FP32 model is its own teacher: ACT inserts fake-quant (QDQ) ops into a copy of the program
and trains it to reproduce the FP32 model's outputs (l2 by default) on ``data.calibration``;
``data.holdout`` is never shown to ACT. The result is an ONNX-style QDQ program
(quantize_linear/dequantize_linear) saved as ``inference.pdmodel``/``inference.pdiparams``.

Two departures from ACT's defaults, both because ACT's give a model that real INT8 backends
(ONNX Runtime, TensorRT, oneDNN) run wrongly while Paddle's own executor hides it (the QDQ ops
are ``only_observer``: Paddle computes activations in FP32 and only weights are rounded):

* ``Distillation.node`` empty = the model's outputs, not the last weighted layers (see
  :data:`~tritongen.quantize.act_config.OUTPUT_NODES_NOTE`).
* batch_norm keeps its FP32 statistics during training (``use_global_stats``); ACT would
  re-estimate them from batches of a few calibration images.

ACT runs in a child Python process (``python -m tritongen.quantize.qat JOB``):

* PaddleSlim 2.6 can kill the interpreter (a segfault in a quantize kernel, seen with configs
  that slip past validation); in a child that becomes a :class:`QatError` with the log tail.
* ACT switches Paddle to static mode, fills the global scope and writes into its model folder;
  none of that leaks into the caller.
* Its output (config dumps, glog lines, progress bars of the quant passes, deprecation warnings)
  goes to ``work_dir/qat.log``; the user sees one progress bar fed by ACT's per-iteration
  ``Total iter: N ... loss: L`` lines.

The child is forced onto the CPU (``CUDA_VISIBLE_DEVICES=''``, ``paddle.set_device('cpu')``,
``deploy_hardware='cpu'``).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

from ..errors import TritongenError
from ..residue import die_with_parent
from ..intake.program import load_program_desc, save_program_desc
from ..intake.spec import QDQ_OPS, ModelSpec
from .act_config import (
    OUTPUT_NODES_NOTE,
    ActConfig,
    ActConfigError,
    _node_names,
    act_global_arguments,
    effective_config,
    total_train_iters,
)
from .calibration import CalibrationData

LOG_FILE = "qat.log"
SEED = 0
_ITER_RE = re.compile(r"Total iter: (\d+), epoch: (\d+), batch: (\d+), loss: \[?([-+0-9.eE]+|nan|inf)")
_ERROR_TAG = "TRITONGEN-QAT-ERROR: "

_log = logging.getLogger(__name__)


class QatError(TritongenError):
    """Quant-aware training failed or produced an unusable program."""


def check_qat_supported(spec: ModelSpec) -> None:
    """QAT distills single-input models only. A detector's extra feeds (scale_factor, im_shape)
    would have to travel through ACT's data pipeline, and its outputs — multiclass_nms3 rows
    whose number depends on the scores, or raw boxes in original-image pixels — are no
    distillation target ACT's l2 loss can follow; PTQ quantizes detectors."""
    if len(spec.inputs) != 1:
        others = [t.name for t in spec.inputs if t.name != spec.image_input.name]
        raise QatError(
            f"{spec.model_file}: --method qat (PaddleSlim ACT distillation) supports single-input models; this "
            f"{spec.task} model also takes {', '.join(others)}. Use --method ptq (post-training quantization), which "
            "calibrates with every input")


def quantize_qat(
    spec: ModelSpec,
    data: CalibrationData,
    work_dir: Path,
    config: dict | ActConfig | None = None,
    batch_size: int = 4,
    train_iters: int | None = None,
) -> dict:
    """Quant-aware distillation of ``spec`` on ``data.calibration``; write ``work_dir/inference.pd*``.

    ``config``: an ACT config (a dict with the yaml's sections, or :func:`load_act_config`'s
    result); None = :func:`default_qat_config`. ``train_iters`` overrides TrainConfig.train_iter.
    Returns the effective config (every ACT key spelled out, Global with the paths used).
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    feed = spec.image_input.name
    check_qat_supported(spec)
    if len(data.calibration) == 0:
        raise QatError("no calibration images to train on")
    n_images = len(data.calibration)
    effective, notes = effective_config(config, n_images, batch_size=batch_size, train_iters=train_iters)
    source = getattr(config, "source", "<config>")
    _check_against_model(effective, spec, source, notes)
    for note in notes:
        _log.warning(note)

    # The quantized export keeps the source's file names: the deploy yaml may name them (PaddleSeg).
    outputs = [work_dir / spec.model_file.name, work_dir / spec.params_file.name]
    for path in outputs:  # never leave an earlier result next to a failed run
        path.unlink(missing_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".qat-", dir=work_dir))
    try:
        model_dir = stage / "fp32"
        model_dir.mkdir()
        # ACT rewrites the model file in its model_dir: give it a copy, never the user's export.
        shutil.copy2(spec.model_file, model_dir / "inference.pdmodel")
        shutil.copy2(spec.params_file, model_dir / "inference.pdiparams")
        _freeze_batch_norm(model_dir / "inference.pdmodel")
        np.save(stage / "calibration.npy", np.stack(data.calibration.tensors).astype(np.float32, copy=False))
        act_sections = {k: v for k, v in effective.items() if k != "Global"}
        glob = effective["Global"]
        job = {
            "model_dir": str(model_dir),
            "model_filename": "inference.pdmodel",
            "params_filename": "inference.pdiparams",
            "save_dir": str(stage / "out"),
            "tensors": str(stage / "calibration.npy"),
            "feed": feed,
            "batch_size": glob["batch_size"],
            "seed": SEED,
            "config": act_sections,
            "act_kwargs": {k: v for k, v in glob.items() if k in act_global_arguments()},
        }
        job_path = stage / "job.json"
        job_path.write_text(json.dumps(job, indent=1), encoding="utf-8")
        _run_child(job_path, work_dir / LOG_FILE, total_train_iters(effective, n_images), cwd=stage)
        model_file, params_file = _find_output(stage / "out", work_dir / LOG_FILE)
        # ACT names its output after model_filename (model.pdmodel when it is None): the work
        # directory gets the source's names.
        shutil.move(str(model_file), outputs[0])
        shutil.move(str(params_file), outputs[1])
        _restore_fetch_names(outputs[0], [t.name for t in spec.outputs])
        _check_quantized(outputs[0], effective)
    except BaseException:
        for path in outputs:
            path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    effective["Global"] = {
        "model_dir": str(spec.model_file.parent),
        "model_filename": spec.model_file.name,
        "params_filename": spec.params_file.name,
        "save_dir": str(work_dir),
        "input_list": [feed],
        **{k: v for k, v in glob.items() if k not in ("input_list", "input_name")},
    }
    return effective


# --------------------------------------------------------------------------- checks on the model


def _check_against_model(effective: dict, spec: ModelSpec, source: str, notes: list[str]) -> None:
    """Check the config against the model; fill ``Distillation.node`` (empty -> the model outputs)."""
    from ..intake.families import find_model_files
    from ..intake.program import read_program

    feed = spec.image_input.name
    glob = effective["Global"]
    names = glob.get("input_list")
    if names is not None:
        names = [names] if isinstance(names, str) else names
        if names != [feed]:
            raise ActConfigError(f"{source}: section 'Global', key 'input_list' is {names!r}, but {spec.model_file.name} "
                                 f"takes [{feed!r}] (tritongen feeds the preprocessed image to it)")
    if "input_name" in glob and glob["input_name"] != feed:
        raise ActConfigError(f"{source}: section 'Global', key 'input_name' is {glob['input_name']!r}, but "
                             f"{spec.model_file.name} takes {feed!r}")
    distill = effective.get("Distillation")
    if not distill:
        return
    outputs = [t.name for t in spec.outputs]
    if not distill.get("node"):
        distill["node"] = list(outputs)  # see OUTPUT_NODES_NOTE
    nodes = _node_names(distill["node"])
    if not set(outputs) & set(nodes):
        notes.append(f"{source}: Distillation.node does not include the model outputs ({', '.join(outputs)}): "
                     f"activation scales after the named nodes are not calibrated. {OUTPUT_NODES_NOTE}")
    if nodes:
        variables = {v.name for b in load_program_desc(spec.model_file).blocks for v in b.vars}
        missing = [n for n in nodes if n not in variables]
        if missing:  # ACT would silently treat them as already-paired names and fail later
            outputs = ", ".join(t.name for t in spec.outputs)
            raise ActConfigError(
                f"{source}: section 'Distillation', key 'node': {', '.join(map(repr, missing))} "
                f"{'is' if len(missing) == 1 else 'are'} not a variable of {spec.model_file}; name variables of the "
                f"program (its outputs: {outputs}), or leave node empty for the outputs of the last weighted layers")
    teacher = distill.get("teacher_model_dir")
    if teacher is not None:
        tdir = Path(teacher)
        if not tdir.is_dir():
            raise ActConfigError(f"{source}: section 'Distillation', key 'teacher_model_dir': {tdir} is not a directory")
        if distill.get("teacher_model_filename") is None:
            try:
                tmodel, tparams = find_model_files(tdir)
            except TritongenError as exc:
                raise ActConfigError(f"{source}: section 'Distillation', key 'teacher_model_dir': {exc}") from None
            distill["teacher_model_filename"], distill["teacher_params_filename"] = tmodel.name, tparams.name
        tmodel = tdir / distill["teacher_model_filename"]
        if not tmodel.is_file() or not (tdir / (distill.get("teacher_params_filename") or "")).is_file():
            raise ActConfigError(f"{source}: section 'Distillation': teacher files {distill['teacher_model_filename']!r}"
                                 f" / {distill.get('teacher_params_filename')!r} not found in {tdir}")
        tfeeds = [t.name for t in read_program(tmodel).inputs]
        if tfeeds != [feed]:
            raise ActConfigError(f"{source}: section 'Distillation': the teacher {tmodel} takes {tfeeds}, the model "
                                 f"takes [{feed!r}]; ACT needs the same input names")
        distill["teacher_model_dir"] = str(tdir.resolve())


def _freeze_batch_norm(model_file: Path) -> int:
    """Make batch_norm use its stored (FP32) statistics during training.

    ACT turns every op to training mode (is_test=False), so batch_norm would normalise with
    the statistics of each calibration batch (4 images, the last maybe 1) and overwrite its
    moving mean/variance with them; the exported INT8 model then computes something else than
    the FP32 one. ``use_global_stats`` keeps the stored statistics (gradients still flow to the
    scale/bias); inference ignores the flag.
    """
    program = load_program_desc(model_file)
    count = 0
    for block in program.blocks:
        for op in block.ops:
            if op.type in ("batch_norm", "sync_batch_norm"):
                attr = next((a for a in op.attrs if a.name == "use_global_stats"), None)
                if attr is None:
                    attr = op.attrs.add()
                    attr.name = "use_global_stats"
                    attr.type = 6  # framework_pb2.AttrType.BOOLEAN
                attr.b = True
                count += 1
    if count:
        save_program_desc(program, model_file)
    return count


def _check_quantized(model_file: Path, effective: dict) -> None:
    program = load_program_desc(model_file)
    ops = {op.type for b in program.blocks for op in b.ops}
    if not ops & QDQ_OPS:
        section = effective.get("QuantAware") or effective.get("QuantPost") or {}
        raise QatError(
            f"ACT wrote a program without quantize_linear/dequantize_linear ops: quantize_op_types "
            f"{section.get('quantize_op_types')} matched none of the model's ops ({', '.join(sorted(ops - {'feed', 'fetch'}))})")


def _restore_fetch_names(model_file: Path, wanted: list[str]) -> None:
    """Give the quantized program the FP32 output names again (and drop no-op scale ops).

    ``paddle.static.save_inference_model`` appends a ``scale`` (x1) op before every fetch; ACT
    saves a program that already has one. In a fresh process the new op writes the same name
    in place (``scale_0.tmp_0 -> scale_0.tmp_0``); after other programs were built in the
    process it gets a new one (``...tmp_1``), and the output is renamed. Both are undone here.
    """
    program = load_program_desc(model_file)
    block = program.blocks[0]
    # An identity scale that writes its own input (x -> x) is a no-op that makes Paddle's IR
    # graph ambiguous (a variable written twice); drop it.
    changed = False
    for op in [op for op in block.ops if op.type == "scale" and _is_identity_scale(op)]:
        x = [a for i in op.inputs if i.parameter == "X" for a in i.arguments]
        out = [a for o in op.outputs if o.parameter == "Out" for a in o.arguments]
        if x and x == out:
            block.ops.remove(op)
            changed = True
    fetches = sorted((op for op in block.ops if op.type == "fetch"),
                     key=lambda op: next((a.i for a in op.attrs if a.name == "col"), 0))
    for fetch, want in zip(fetches, wanted):
        current = fetch.inputs[0].arguments[0]
        if current == want:
            continue
        chain, name = [], current
        ops = list(block.ops)
        position = ops.index(fetch)
        while name != want:  # walk back through the ops that wrote `name` last
            index = next((k for k in range(position - 1, -1, -1) if any(name in o.arguments for o in ops[k].outputs)), None)
            if index is None or ops[index].type != "scale" or not _is_identity_scale(ops[index]):
                break
            chain.append(ops[index])
            position = index
            name = next(i.arguments[0] for i in ops[index].inputs if i.parameter == "X")
        if name != want:
            raise QatError(f"{model_file}: output {current!r} should be {want!r} (as in the FP32 model) and is not "
                           "an identity copy of it; the quantized program changed its outputs")
        dropped = {o for op in chain for out in op.outputs for o in out.arguments}
        users = [op for op in block.ops if op is not fetch and op not in chain
                 and any(a in dropped for i in op.inputs for a in i.arguments)]
        if users:
            raise QatError(f"{model_file}: cannot restore output name {want!r}: {sorted(dropped)} are used elsewhere")
        for op in chain:
            block.ops.remove(op)
        for var in [v for v in block.vars if v.name in dropped]:
            block.vars.remove(var)
        fetch.inputs[0].arguments[0] = want
        changed = True
    if changed:
        save_program_desc(program, model_file)


def _is_identity_scale(op) -> bool:
    attrs = {a.name: a for a in op.attrs}
    scale = attrs["scale"].f if "scale" in attrs else 1.0
    bias = attrs["bias"].f if "bias" in attrs else 0.0
    has_tensor = any(i.parameter == "ScaleTensor" and i.arguments for i in op.inputs)
    return scale == 1.0 and bias == 0.0 and not has_tensor


def _find_output(out_dir: Path, log_path: Path) -> tuple[Path, Path]:
    models = sorted(out_dir.glob("*.pdmodel")) if out_dir.is_dir() else []
    if len(models) != 1:
        raise QatError(f"ACT finished but left {len(models)} .pdmodel files in its output folder "
                       f"({', '.join(m.name for m in models) or 'none'}); see {log_path}")
    params = models[0].with_suffix(".pdiparams")
    if not params.is_file():
        found = sorted(out_dir.glob("*.pdiparams"))
        if len(found) != 1:
            raise QatError(f"ACT saved {models[0].name} without its .pdiparams; see {log_path}")
        params = found[0]
    return models[0], params


# --------------------------------------------------------------------------- the child process


def _run_child(job_path: Path, log_path: Path, total: int | None, cwd: Path) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from ..progress import progress_bar

    import tritongen

    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU only, whatever Paddle build is installed
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONHASHSEED"] = str(SEED)  # Paddle's IR passes iterate over sets: same order every run
    env["PYTHONWARNINGS"] = "ignore"
    package_root = str(Path(tritongen.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "tritongen.quantize.qat", str(job_path)]
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with open(log_path, "w", encoding="utf-8") as log, progress_bar(*columns) as bar:
        task = bar.add_task("quant-aware training (ACT)", total=total)
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    errors="replace", env=env, cwd=cwd, preexec_fn=die_with_parent())
        except OSError as exc:
            raise QatError(f"cannot start the ACT process ({exc})") from None
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                match = _ITER_RE.search(line)
                if match:
                    bar.update(task, completed=int(match[1]) + 1,
                               description=f"quant-aware training (ACT), loss {float(match[4]):.4g}")
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if rc != 0:
        raise QatError(_failure_message(rc, log_path))


def _failure_message(rc: int, log_path: Path) -> str:
    text = log_path.read_text(encoding="utf-8", errors="replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    tagged = [ln[len(_ERROR_TAG):] for ln in lines if ln.startswith(_ERROR_TAG)]
    if tagged:
        detail = tagged[-1]
    else:
        fatal = [ln for ln in lines if ln.startswith(("FatalError", "Error:")) or re.match(r"^\w+Error: ", ln)]
        detail = fatal[-1] if fatal else (lines[-1] if lines else "no output")
    how = f"exit status {rc}"
    if rc < 0:
        try:
            how = f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            how = f"killed by signal {-rc}"
    return f"PaddleSlim ACT failed ({how}): {detail[:1500]}. Full log: {log_path}"


class _Images:
    """Dataset of preprocessed images as ACT wants them: one ``{feed: CHW float32}`` per item."""

    def __init__(self, tensors: np.ndarray, feed: str):
        self.tensors, self.feed = tensors, feed

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {self.feed: np.array(self.tensors[index], dtype=np.float32)}


def _child_main(job_path: str) -> None:
    import paddle
    from paddleslim.auto_compression import AutoCompression

    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    paddle.set_device("cpu")
    paddle.seed(job["seed"])
    np.random.seed(job["seed"])
    tensors = np.load(job["tensors"], mmap_mode="r")
    dataset = type("CalibrationImages", (_Images, paddle.io.Dataset), {})(tensors, job["feed"])
    # ACT calls the loader (``loader()``) once per epoch and feeds each batch dict to exe.run;
    # paddle.io.DataLoader is callable and collates dicts key-wise.
    loader = paddle.io.DataLoader(dataset, batch_size=job["batch_size"], shuffle=True, drop_last=False,
                                  return_list=True, num_workers=0)
    ac = AutoCompression(
        model_dir=job["model_dir"],
        train_dataloader=loader,
        model_filename=job["model_filename"],
        params_filename=job["params_filename"],
        save_dir=job["save_dir"],
        config=job["config"],
        deploy_hardware="cpu",
        **job["act_kwargs"],
    )
    ac.compress()


if __name__ == "__main__":
    try:
        _child_main(sys.argv[1])
    except BaseException as exc:  # report one clean line for the parent, then the traceback
        traceback.print_exc()
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        message = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not set(ln.strip()) <= set("-=")]
        if "Error Message Summary:" in str(exc):  # Paddle's C++ errors: the summary says what went wrong
            message = message[[i for i, ln in enumerate(message) if ln == "Error Message Summary:"][-1] + 1:]
        text = f"{type(exc).__name__}: {message[0] if message else '(no message)'}"
        if not message and frame is not None:
            text += f" at {Path(frame.filename).name}:{frame.lineno} `{frame.line}`"
        sys.stdout.flush()
        print(_ERROR_TAG + text, flush=True)
        sys.exit(1)
