"""A served classifier against the plain in-process script a user would write — issue 11's yardstick.

The script: cv2 decode, PaddleClas's own deploy preprocessing (``paddleclas/deploy/python/
preprocess.py``, the wheel installed with --no-deps), ONNX Runtime on the repository's ONNX
(``--threads``, 1 by default like the served runtime), top-k. The served side: the same images
over gRPC (tritonclient, one image per call) to the model NAME of REPO on a tritonserver this
script starts. Runs are interleaved image by image (script, served, script, ...), medians and
p90 printed with the CPU's ISA; with perf_analyzer installed, its throughput at concurrency 1
and 4 as well.

    .venv/bin/python benchmarks/served_vs_script.py EXPORT_DIR REPO NAME --images PHOTOS
"""
from __future__ import annotations

import zlib  # noqa: F401  (before paddle)

import argparse
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np
import yaml


def paddleclas_preprocess(config_file: Path):
    """PaddleClas's deploy operators for the export's ``PreProcess.transform_ops``."""
    spec = importlib.util.find_spec("paddleclas")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("paddleclas is not installed (scripts/setup.sh installs it with --no-deps)")
    root = list(spec.submodule_search_locations)[0]
    for name, sub in [("paddleclas", ""), ("paddleclas.deploy", "/deploy"), ("paddleclas.deploy.python", "/deploy/python"),
                      ("paddleclas.deploy.utils", "/deploy/utils")]:
        if name not in sys.modules:  # the package __init__ imports the training stack: load deploy/ only
            module = types.ModuleType(name)
            module.__path__ = [root + sub]
            sys.modules[name] = module
    from paddleclas.deploy.python.preprocess import create_operators

    return create_operators(yaml.safe_load(config_file.read_text())["PreProcess"]["transform_ops"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path, help="the PaddleClas export (its inference_cls.yaml)")
    parser.add_argument("repo", type=Path, help="the repository `tritongen build` wrote")
    parser.add_argument("name", help="the model clients call")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=8, help="passes over the images")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the script")
    args = parser.parse_args()

    import onnxruntime as ort
    import tritonclient.grpc as grpcclient

    from tritongen.measure import cpu_info
    from tritongen.perf.perf_analyzer import find_perf_analyzer, run_perf_analyzer
    from tritongen.serve import TritonServer
    from tritongen.serve.server import free_port

    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    data = [p.read_bytes() for p in images]
    ops = paddleclas_preprocess(args.export / "inference_cls.yaml")
    onnx_path = next(args.repo.glob(f"{args.name}*/1/model.onnx"))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name

    def script(encoded: bytes) -> int:
        img = cv2.cvtColor(cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        for op in ops:
            img = op(img)
        probs = session.run(None, {feed: img[None]})[0]
        return int(np.argsort(-probs, axis=1)[0, 0])

    with TritonServer(args.repo, free_port(), free_port(), free_port()) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)

        def served(encoded: bytes) -> int:
            tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[encoded]], dtype=np.object_))
            return int(client.infer(args.name, [tensor]).as_numpy("LABEL_IDS")[0, 0])

        for encoded in data[:3]:
            script(encoded), served(encoded)
        local_s, served_s, agree = [], [], 0
        for _ in range(args.rounds):
            for encoded in data:
                start = time.perf_counter()
                a = script(encoded)
                local_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                b = served(encoded)
                served_s.append(time.perf_counter() - start)
                agree += a == b
        print(f"CPU: {cpu_info()}")
        for label, times in (("plain script", local_s), ("served c=1", served_s)):
            ms = sorted(t * 1e3 for t in times)
            print(f"{label:>13}: median {statistics.median(ms):.2f} ms, p90 {ms[int(0.9 * (len(ms) - 1))]:.2f} ms")
        print(f"served / script: {statistics.median(served_s) / statistics.median(local_s):.3f}x median; "
              f"top-1 equal on {agree}/{len(local_s)}")
        if find_perf_analyzer() is not None:
            result = run_perf_analyzer(args.name, server.grpc_url, [1, 4], images=data, measurement_interval_ms=3000,
                                       stability_percentage=20)
            rates = {level.concurrency: level.throughput for level in result.levels}
            print("perf_analyzer infer/s: " + ", ".join(f"c={c} {r:.1f}" for c, r in sorted(rates.items()))
                  + (f"; c=4 / c=1 {rates[4] / rates[1]:.2f}x" if {1, 4} <= set(rates) else ""))


if __name__ == "__main__":
    main()
