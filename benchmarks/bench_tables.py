"""FastDeploy's published tables regenerated for real architectures, ours beside theirs.

    .venv/bin/python benchmarks/bench_tables.py                                        # all models, 30 runs
    .venv/bin/python benchmarks/bench_tables.py --cache CACHE --models mobilenetv1 --runs 3 --warmup 1

Exports are made once into ``--cache`` (default ``$TRITONGEN_CACHE/benchmarks``, else
``~/.cache/tritongen/benchmarks``) and reused: ``resnet50_vd`` / ``mobilenetv1`` by
``paddleclas_exports.py``, the detection and segmentation ones by ``run_detseg.make_exports``
(real architectures, random weights with BatchNorm statistics from real photos: latency is
meaningful, INT8 fidelity is measured against FP32, not accuracy on a labelled set); skimage's
photos are copied to ``CACHE/photos`` and used as calibration images. Then
``tritongen.bench.tables.tables_command`` measures every model (ONNX Runtime and Paddle
Inference, CPU, 1 thread; FP32 vs INT8, runtime and end-to-end) and writes
``bench_tables.csv``, ``bench_tables_vs_fastdeploy.csv`` and ``bench_tables.png`` into
``--output`` (default ``CACHE/tables``). The same as ``tritongen bench tables DIR... --calib-dir
CACHE/photos --output OUT``.

========================  ===================================================  ===============================
ours                      export                                               FastDeploy's row
========================  ===================================================  ===============================
``resnet50_vd``           PaddleClas ResNet50_vd                               ResNet50_vd
``mobilenetv1``           PaddleClas MobileNetV1                               MobileNetV1_ssld
``ppyoloe_s``             ppyoloe_crn_s_300e_coco, NMS in the graph            ppyoloe_crn_l_300e_coco (-l!)
``ppyoloe_s_nonms``       the same, ``exclude_nms``                            ppyoloe_crn_l_300e_coco (-l!)
``pp_liteseg_t_raw``      PP-LiteSeg-T STDC1 without argmax, 512x1024          PP-LiteSeg-T(STDC1)-cityscapes
``bisenetv2``             BiSeNetV2 cityscapes                                 none (ours only)
========================  ===================================================  ===============================
"""
from __future__ import annotations

import zlib  # noqa: F401  (before paddle)

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import tritongen  # noqa: E402,F401  (zlib before paddle)
from run_detseg import default_cache, log, make_exports, photo_dir  # noqa: E402

CLASSIFIERS = ("resnet50_vd", "mobilenetv1")
DETSEG = ("ppyoloe_s", "ppyoloe_s_nonms", "pp_liteseg_t_raw", "bisenetv2")
MODELS = CLASSIFIERS + DETSEG


def classifier_export(cache: Path, arch: str) -> Path:
    """``paddleclas_exports.export`` in a child process (dygraph export, then static quantization here)."""
    target = cache / arch
    if not (target / "inference.pdmodel").is_file():
        log(f"exporting {arch}: paddleclas_exports.py {arch} {target}")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(HERE / "paddleclas_exports.py"), arch, str(target)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"export of {arch} failed:\n{proc.stderr[-3000:]}")
        log(f"  done in {time.perf_counter() - t0:.0f} s")
    return target


def exports(cache: Path, names: list[str]) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    made = {name: classifier_export(cache, name) for name in names if name in CLASSIFIERS}
    made.update(make_exports(cache, [name for name in names if name in DETSEG]))
    return [made[name] for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=default_cache(), help="where the exports and photos are (or go)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models to measure (default: all)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per variant (interleaved)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--output", type=Path, help="where the CSVs and the chart go (default CACHE/tables)")
    args = parser.parse_args()

    from rich.console import Console

    from tritongen.bench.tables import tables_command
    from tritongen.errors import TritongenError

    t_start = time.perf_counter()
    sources = exports(args.cache, args.models)
    photos = photo_dir(args.cache)
    output = args.output or args.cache / "tables"
    try:
        report = tables_command(sources, photos, output, runs=args.runs, warmup=args.warmup, step=lambda m: log(f"  {m}"))
    except TritongenError as exc:
        raise SystemExit(f"error: {exc}") from None
    console = Console(width=max(Console().width, 200))
    console.print(report.rich_table())
    for line in report.messages():
        console.print(line, highlight=False, soft_wrap=True)
    print(f"CPU: {report.cpu.model}; ISA: {report.cpu.isa}; VNNI: {'yes' if report.cpu.vnni else 'no'}")
    for path in report.files:
        print(f"wrote {path}")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
