"""Detection and segmentation on real architectures: exports, tritongen checks, latency rows.

    .venv/bin/python benchmarks/run_detseg.py                # exports (cached) + latency rows
    .venv/bin/python benchmarks/run_detseg.py --check        # + build / predictor checks of every export
    .venv/bin/python benchmarks/run_detseg.py --models pp_liteseg_t_raw --runs 5 --csv detseg.csv

Exports (``paddledet_exports.py``, ``paddleseg_exports.py``: the suites' real architectures,
random weights, BatchNorm statistics from skimage's photos) are made once into ``--cache``
(default ``$TRITONGEN_CACHE/benchmarks``, else ``~/.cache/tritongen/benchmarks``; about 5
minutes on 2 cores), with the photos copied to ``CACHE/photos`` as calibration images. On a
2-core CPU the rows then take about 15 minutes (PaddleSlim calibration and the three ONNX
Runtime INT8 recipes dominate; ``--no-int8``: about 2 minutes), ``--check`` about 4 more.

====================  =====================================================================
``ppyoloe_s``         ppyoloe_crn_s_300e_coco, tools/export_model.py default (multiclass_nms3)
``ppyoloe_s_nonms``   the same weights, ``-o PPYOLOEHead.exclude_nms=True`` (raw boxes+scores)
``pp_liteseg_t``      pp_liteseg_stdc1_cityscapes_1024x512_scale0.5, tools/export.py default
                      (argmax, input [None, 3, None, None])
``pp_liteseg_t_raw``  the same network as FastDeploy's ``*_without_argmax_infer`` (the model of
                      its published tables): ``--output_op none --input_shape -1 3 512 1024``
``bisenetv2``         bisenet_cityscapes_1024x1024_160k, tools/export.py default
====================  =====================================================================

Rows (FastDeploy's published tables' columns; 1 thread, batch 1, median of ``--runs`` interleaved runs):
``tritongen.bench.runtime.run_benchmark`` (FP32 vs INT8, ONNX Runtime and Paddle Inference)
where tritongen can quantize the model; otherwise FP32 only, timed the same way here (ONNX
Runtime vs Paddle Inference interleaved; end-to-end = decode + preprocess + model +
postprocess of one photo). Each row is set beside FastDeploy's published row of the same model (tritongen.bench.reference).

``--check``: per export, ``tritongen build`` with ``--backend python-onnxruntime`` and
``onnxruntime`` (exit code, error line, wall time), then ``tritongen.predict.LocalPredictor``
(Paddle Inference and ONNX Runtime) against the suites' own deploy semantics on the photos:
PaddleDetection's operators (``tests/ppdet_oracle.py``) + Paddle Inference + multiclass_nms3,
and PaddleSeg's transforms + Paddle Inference + argmax + ``reverse_transform``.
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

import tritongen  # noqa: E402,F401  (zlib before paddle)

# name -> (exporter argv after the script, rows: "int8" (FP32 vs INT8), "fp32" or None)
_DET = ["paddledet_exports.py", "{dir}/ppyoloe_s", "--exclude-nms", "{dir}/ppyoloe_s_nonms"]
EXPORTS = {
    "ppyoloe_s": (_DET, "int8"),
    "ppyoloe_s_nonms": (_DET, "fp32"),
    "pp_liteseg_t": (["paddleseg_exports.py", "pp_liteseg_t", "{dir}/pp_liteseg_t"], None),
    "pp_liteseg_t_raw": (["paddleseg_exports.py", "pp_liteseg_t", "{dir}/pp_liteseg_t_raw", "--output-op", "none",
                          "--fixed-shape"], "int8"),
    "bisenetv2": (["paddleseg_exports.py", "bisenetv2", "{dir}/bisenetv2"], None),
}

CSV_COLUMNS = ["family", "model", "backend", "hardware", "latency", "fp32_ms", "int8_ms", "int8_fp16_ms",
               "int8_fp16_pm_ms", "max_speedup", "fp32_acc", "int8_acc", "metric", "method"]


def default_cache() -> Path:
    root = os.environ.get("TRITONGEN_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "tritongen") / "benchmarks"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------- exports


def make_exports(cache: Path, names: list[str]) -> dict[str, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    done: dict[str, Path] = {}
    for name in names:
        target = cache / name
        if not (target / "model.pdmodel").is_file():
            argv = [a.format(dir=cache) for a in EXPORTS[name][0]]
            log(f"exporting {name}: {' '.join(argv)}")
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"export of {name} failed:\n{proc.stderr[-3000:]}")
            log(f"  done in {time.perf_counter() - t0:.0f} s")
        done[name] = target
    return done


def photo_dir(cache: Path) -> Path:
    """skimage's photos as files: calibration images (tritongen holds every 5th out)."""
    from paddledet_exports import photo_paths

    out = cache / "photos"
    out.mkdir(parents=True, exist_ok=True)
    for p in photo_paths():
        if not (out / p.name).exists():
            shutil.copy(p, out / p.name)
    return out


# ------------------------------------------------------------------------------- latency


@dataclass
class Row:
    model: str
    family: str
    backend: str
    latency: str
    fp32_ms: float
    int8_ms: float | None = None
    agreement: float | None = None  # INT8 vs FP32 on held-out photos, by ``metric``
    metric: str = ""
    method: str = "FP32 only"

    def csv_row(self) -> dict:
        speed = f"{self.fp32_ms / self.int8_ms:.2f}" if self.int8_ms else "None"
        return {"family": self.family, "model": self.model, "backend": self.backend, "hardware": "CPU",
                "latency": self.latency, "fp32_ms": f"{self.fp32_ms:.2f}",
                "int8_ms": "None" if self.int8_ms is None else f"{self.int8_ms:.2f}", "int8_fp16_ms": "None",
                "int8_fp16_pm_ms": "None", "max_speedup": speed, "fp32_acc": "None",
                "int8_acc": "None" if self.agreement is None else f"{self.agreement:.4f}",
                "metric": self.metric or "None", "method": self.method}


def int8_rows(export: Path, calib: Path, runs: int, warmup: int, backends: tuple[str, ...]) -> list[Row]:
    """FP32 vs INT8 through tritongen's own benchmark (raises TritongenError where unsupported)."""
    from tritongen.bench.runtime import run_benchmark
    from tritongen.quantize import QuantizeConfig

    report = run_benchmark(export, QuantizeConfig(calib), runs=runs, warmup=warmup, runtimes=backends,
                           step=lambda m: log(f"  {m}"))
    for note in report.notes:
        log(f"  note: {note}")
    return [Row(r.model, r.family, r.backend, r.latency, r.fp32_ms, r.int8_ms, r.agreement, r.metric, r.method)
            for r in report.rows]


def fp32_rows(export: Path, photo: Path, runs: int, warmup: int, backends: tuple[str, ...]) -> list[Row]:
    """FP32 only, timed as run_benchmark times its pairs: ONNX Runtime and Paddle Inference
    (oneDNN) interleaved, 1 thread; runtime on ``photo``'s feeds, end-to-end on its bytes.
    The ONNX model is not validated against Paddle here (tritongen's check fails on these
    graphs, see --check, which measures the agreement instead)."""
    from tritongen.bench.runtime import end_to_end
    from tritongen.measure import interleaved
    from tritongen.convert.onnx import paddle_to_onnx
    from tritongen.intake import load_model
    from tritongen.processing.pipeline import Preprocessor
    from tritongen.processing.runners import OnnxRuntimeRunner, PaddleInferenceRunner

    spec = load_model(export)
    config = spec.pipeline_config()
    image = photo.read_bytes()
    batch = Preprocessor(config)([image])
    feeds = {name: batch[name] for name in config.feeds}
    with tempfile.TemporaryDirectory(prefix="detseg-") as tmp:
        runners = {}
        if "onnxruntime" in backends:
            runners["ONNX Runtime"] = OnnxRuntimeRunner(paddle_to_onnx(spec, Path(tmp) / "m.onnx", validate=False).path)
        if "paddle" in backends:
            runners["Paddle Inference"] = PaddleInferenceRunner(spec.model_file, spec.params_file, threads=1,
                                                                enable_mkldnn=True)
        names = list(runners)
        if len(names) == 1:  # interleave with itself: the same timing code path
            names = names * 2
        a, b = runners[names[0]], runners[names[1]]
        log(f"  timing {spec.name} FP32 ({' vs '.join(dict.fromkeys(names))}): runtime, {runs} interleaved runs")
        rt = interleaved(lambda: a.run(feeds), lambda: b.run(feeds), runs, warmup)
        log(f"  timing {spec.name} FP32: end-to-end on {photo.name}")
        e2e = interleaved(end_to_end(spec, a, image), end_to_end(spec, b, image), runs, warmup)
    rows = []
    for latency, (ta, tb) in (("runtime", rt), ("end2end", e2e)):
        for backend, ms in dict(zip(names, (ta, tb))).items():
            rows.append(Row(spec.name, spec.family, backend, latency, ms))
    return rows


def onnx_validates(export: Path) -> str | None:
    """None when tritongen's paddle2onnx conversion (with its check against Paddle) passes, else the error."""
    from tritongen.convert.onnx import paddle_to_onnx
    from tritongen.errors import TritongenError
    from tritongen.intake import load_model

    with tempfile.TemporaryDirectory(prefix="detseg-") as tmp:
        try:
            paddle_to_onnx(load_model(export), Path(tmp) / "m.onnx")
        except TritongenError as exc:
            return str(exc).splitlines()[0]
        except Exception as exc:  # noqa: BLE001  (onnxruntime cannot even load it)
            return f"{type(exc).__name__}: {str(exc).splitlines()[-1]}"
    return None


def bench_model(name: str, export: Path, photos: Path, runs: int, warmup: int, int8: bool) -> list[Row]:
    from tritongen.errors import TritongenError
    from tritongen.intake import load_model
    from tritongen.quantize.calibration import load_calibration

    photo = load_calibration(load_model(export), photos).holdout.paths[0]  # run_benchmark's end-to-end image
    backends = ("onnxruntime", "paddle")
    problem = onnx_validates(export)
    rows: list[Row] = []
    if problem:
        log(f"  tritongen's ONNX conversion fails ({problem}): ONNX Runtime FP32 timed on the unvalidated ONNX")
        rows += fp32_rows(export, photo, runs, warmup, ("onnxruntime",))
        backends = ("paddle",)
    if int8 and EXPORTS[name][1] == "int8":
        try:
            return rows + int8_rows(export, photos, runs, warmup, backends)
        except TritongenError as exc:
            log(f"  INT8 not measured: {exc}")
    return rows + fp32_rows(export, photo, runs, warmup, backends)


def fastdeploy_cpu_row(model: str, backend: str, latency: str):
    """FastDeploy's published CPU row facing our ``model`` (tritongen.bench.reference), or None."""
    from tritongen.bench.reference import match_model

    entry = match_model(model)
    return next((row for row in (entry.rows() if entry else ()) if row.hardware == "CPU" and row.backend == backend
                 and row.latency == latency), None)


def print_rows(rows: list[Row], runs: int) -> None:
    from tritongen.bench.reference import match_model

    print(f"\nlatency, 1 thread, batch 1, median of {runs} interleaved runs")
    head = (f"{'model':18} {'backend':17} {'latency':8} {'FP32 ms':>9} {'INT8 ms':>9} {'speedup':>8}  {'INT8 vs FP32':28} "
            "FastDeploy FP32/INT8 ms (ours/theirs)")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        int8 = f"{r.int8_ms:9.1f}" if r.int8_ms else f"{'-':>9}"
        speed = f"{r.fp32_ms / r.int8_ms:7.2f}x" if r.int8_ms else f"{'-':>8}"
        ref = fastdeploy_cpu_row(r.model, r.backend, r.latency)
        cmp = f"{ref.fp32_ms:.0f}/{ref.int8_ms:.0f} ({r.fp32_ms / ref.fp32_ms:.2f})" if ref and ref.fp32_ms and ref.int8_ms else ""
        agreement = "" if r.agreement is None else f"{r.metric} {r.agreement:.4f}"
        print(f"{r.model:18} {r.backend:17} {r.latency:8} {r.fp32_ms:9.1f} {int8} {speed}  {agreement:28} {cmp}")
    for note in dict.fromkeys(entry.note for r in rows if (entry := match_model(r.model)) and entry.note):
        print(f"FastDeploy: {note}")


# -------------------------------------------------------------------------------- checks


def build_check(export: Path, name: str, backend: str, repo: Path) -> str:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tritongen.cli", "build", str(export), "--name", name, "--backend",
                           backend, "--output", str(repo), "--force"], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    text = (proc.stdout + proc.stderr).strip().splitlines()
    if proc.returncode == 0:
        return f"ok ({wall:.0f} s)"
    last = next((l for l in reversed(text) if l.startswith("error:") or "Error" in l), text[-1] if text else "")
    return f"FAILED exit {proc.returncode} ({wall:.0f} s): {last.strip()[:300]}"


def _ppdet_rows(export: Path, photo: Path, spec_nms: dict) -> np.ndarray:
    """PaddleDetection deploy semantics for one photo: ppdet's own Resize/NormalizeImage/Permute
    (tests/ppdet_oracle.py), Paddle Inference, and Paddle's multiclass_nms3 op for raw exports.
    Rows (class, score, x1, y1, x2, y2), all NMS rows."""
    import cv2

    from tests import ppdet_oracle
    from tritongen.processing.runners import PaddleInferenceRunner

    ops = ppdet_oracle.load()
    cfg = yaml.safe_load((export / "infer_cfg.yml").read_text())
    im = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    sample = {"image": im, "im_shape": np.array(im.shape[:2], np.float32), "scale_factor": np.ones(2, np.float32)}
    for entry in cfg["Preprocess"]:
        sample = getattr(ops, entry["type"])(**{k: v for k, v in entry.items() if k != "type"})(sample)
    runner = PaddleInferenceRunner(export / "model.pdmodel", export / "model.pdiparams")
    feeds = {"image": np.asarray(sample["image"], np.float32)[None],
             "scale_factor": np.asarray(sample["scale_factor"], np.float32)[None]}
    first, second = (runner.run(feeds)[n] for n in runner.output_names)
    if first.ndim == 2:
        return first.reshape(-1, 6)
    rows, _ = ppdet_oracle.paddle_nms(first, second, cfg["NMS"])
    return rows.reshape(-1, 6)


def _match(got, rows: np.ndarray) -> tuple[int, int, float]:
    """(matched, expected, worst IoU): each expected row matched to an unused result of the same
    class with |score diff| <= 1e-3, best IoU."""
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
        return iw * ih / union if union > 0 else 1.0

    unused, matched, worst = set(range(len(got))), 0, 1.0
    for row in rows:
        best = max((j for j in unused if got.label_ids[j] == int(row[0]) and abs(got.scores[j] - row[1]) <= 1e-3),
                   key=lambda j: iou(got.boxes[j], row[2:6]), default=None)
        if best is not None and iou(got.boxes[best], row[2:6]) >= 0.99:
            matched += 1
            worst = min(worst, iou(got.boxes[best], row[2:6]))
            unused.discard(best)
    return matched, len(rows), worst


def detection_check(export: Path, photos: list[Path], onnx: Path | None) -> list[str]:
    from tritongen.intake import load_model
    from tritongen.predict import LocalPredictor

    lines = []
    nms = yaml.safe_load((export / "infer_cfg.yml").read_text()).get("NMS")
    refs = {p: _ppdet_rows(export, p, nms) for p in photos}
    for threshold in (0.5, 0.0):
        spec = load_model(export, score_threshold=threshold, max_detections=100)
        runtimes = [("paddle", None)] + ([("onnxruntime", onnx)] if onnx else [])
        for runtime, path in runtimes:
            predictor = LocalPredictor(spec, runtime, onnx_path=path)
            total = [0, 0, 1.0, 0]
            for p in photos:
                rows = refs[p][refs[p][:, 1] >= threshold]
                rows = rows[np.argsort(-rows[:, 1], kind="stable")][:100]
                (got,) = predictor.predict([p])  # one image per call: ORT's NonMaxSuppression is batch 1
                m, n, worst = _match(got, rows)
                total = [total[0] + m, total[1] + n, min(total[2], worst), total[3] + len(got)]
            lines.append(f"{runtime:11} score >= {threshold:<4}: {total[0]}/{total[1]} reference detections matched "
                         f"(IoU >= 0.99, |score diff| <= 1e-3, worst IoU {total[2]:.4f}), {total[3]} returned")
    return lines


def _paddleseg_label_map(export: Path, photo: Path) -> np.ndarray:
    import paddle

    from tritongen.processing.runners import PaddleInferenceRunner

    from tests import paddleseg_oracle

    T, infer = paddleseg_oracle.load()
    deploy = yaml.safe_load((export / "deploy.yaml").read_text())["Deploy"]
    ops = [getattr(T, t.pop("type"))(**t) for t in copy.deepcopy(deploy["transforms"])]
    data = T.Compose(ops)({"img": str(photo)})
    runner = PaddleInferenceRunner(export / deploy["model"], export / deploy["params"])
    (out,) = runner.run({runner.input_names[0]: data["img"][None]}).values()
    label = np.argmax(out, axis=1) if out.ndim == 4 else out
    pred = paddle.to_tensor(label[:, None].astype(np.int32))
    return infer.reverse_transform(pred, data["trans_info"], mode="nearest").numpy()[0, 0]


def segmentation_check(export: Path, photos: list[Path], onnx: Path | None) -> list[str]:
    from tritongen.intake import load_model
    from tritongen.predict import LocalPredictor

    spec = load_model(export)
    refs = {p: _paddleseg_label_map(export, p) for p in photos}
    lines = []
    for runtime, path in [("paddle", None)] + ([("onnxruntime", onnx)] if onnx else []):
        predictor = LocalPredictor(spec, runtime, onnx_path=path)
        same = total = 0
        exact = 0
        for p in photos:
            (got,) = predictor.predict([p])
            ref = refs[p]
            if got.label_map.shape != ref.shape:
                lines.append(f"{runtime}: {p.name}: label map {got.label_map.shape} vs PaddleSeg {ref.shape}")
                continue
            same += int((got.label_map == ref).sum())
            total += ref.size
            exact += int(np.array_equal(got.label_map, ref))
        lines.append(f"{runtime:11}: {exact}/{len(photos)} photos identical to PaddleSeg's deploy result, "
                     f"{same / max(total, 1):.6%} of {total} pixels equal")
    return lines


def run_checks(exports: dict[str, Path], photos: Path, repo: Path) -> None:
    from tritongen.convert.onnx import paddle_to_onnx
    from tritongen.intake import load_model

    sample = [photos / n for n in ("astronaut.png", "camera.png", "coffee.png", "horse.png", "motorcycle_left.png",
                                   "rocket.jpg", "hubble_deep_field.jpg")]
    for name, export in exports.items():
        print(f"\n== {name} ({export})", flush=True)
        for backend in ("python-onnxruntime", "onnxruntime"):
            print(f"tritongen build --backend {backend}: {build_check(export, name, backend, repo)}", flush=True)
        spec = load_model(export)
        with tempfile.TemporaryDirectory(prefix="detseg-") as tmp:
            onnx = Path(tmp) / "model.onnx"
            try:
                paddle_to_onnx(spec, onnx, validate=False)
                import onnxruntime

                onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001  (report and go on with Paddle Inference only)
                print(f"ONNX (paddle2onnx, unvalidated): {type(exc).__name__}: {str(exc).splitlines()[-1][:300]}")
                onnx = None
            check = detection_check if spec.task == "detection" else segmentation_check
            for line in check(export, sample, onnx):
                print(f"LocalPredictor {line}", flush=True)


# ---------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=default_cache(), help="where the exports and photos go")
    parser.add_argument("--models", nargs="+", choices=sorted(EXPORTS), help="exports to make/check/time (default: all)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per variant (interleaved)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="FP32 rows only (skip quantization)")
    parser.add_argument("--check", action="store_true", help="tritongen build + LocalPredictor vs the suites' deploy code")
    parser.add_argument("--no-bench", dest="bench", action="store_false", help="skip the latency rows")
    parser.add_argument("--csv", type=Path, help="write the rows in FastDeploy's benchmarks.csv columns")
    args = parser.parse_args()

    from tritongen.measure import cpu_info

    names = args.models or list(EXPORTS)
    t_start = time.perf_counter()
    exports = make_exports(args.cache, names)
    photos = photo_dir(args.cache)
    cpu = cpu_info()
    print(f"CPU: {cpu} — {cpu.int8_expectation()}")
    if args.check:
        run_checks(exports, photos, args.cache / "model_repository")
    rows: list[Row] = []
    if args.bench:
        for name in [n for n in names if EXPORTS[n][1]]:
            log(f"benchmarking {name}")
            t0 = time.perf_counter()
            rows += bench_model(name, exports[name], photos, args.runs, args.warmup, args.int8)
            log(f"  {name}: {time.perf_counter() - t0:.0f} s")
        print_rows(rows, args.runs)
    if args.csv and rows:
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(r.csv_row() for r in rows)
        print(f"wrote {args.csv}")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
