"""Does `tritongen perf` drive the server as hard as a plain multi-process client does?

    .venv/bin/python benchmarks/perf_client.py [--seconds 4] [--concurrency 1,2,4,8,16]

Starts a real tritonserver with (a) a trivial identity Python model and (b) the demo
classification ensemble (python-onnxruntime), then, interleaved level by level in one run:

* ``tritongen perf`` (perf_analyzer's method; its own worker processes, asyncio gRPC) at
  concurrency C, one stable measurement;
* a plain loop: C processes, each sending synchronous ``tritonclient.grpc`` requests
  back to back for the same time — the way people load Triton from Python by hand.

It prints throughput side by side, the best each reaches (what the server sustains is the
larger), `tritongen perf`'s share of it (goal >= 90 %) and its client overhead (CPU % of a
core per load process). Everything shares this machine's cores, server included.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tritongen  # noqa: F401  (first: it loads zlib before paddle)
from tritongen.build import build
from tritongen.demo import make_classifier
from tritongen.perf import PerfSettings, run_perf
from tritongen.serve.server import TritonServer, free_port
from tritongen.testing.identity import write_identity_model

# One process of the plain loop: send back to back for `seconds`, print how many came back.
PLAIN_LOOP = r"""
import json, sys, time, zlib
import numpy as np
import tritonclient.grpc as g
args = json.loads(sys.argv[1])
client = g.InferenceServerClient(args["url"])
if args["image"]:
    data = np.array([[open(args["image"], "rb").read()]], dtype=np.object_)
    inputs = [g.InferInput("IMAGE", [1, 1], "BYTES")]
else:
    data = np.random.rand(1, 16).astype(np.float32)
    inputs = [g.InferInput("INPUT0", [1, 16], "FP32")]
inputs[0].set_data_from_numpy(data)
for _ in range(5):
    client.infer(args["model"], inputs)
start_at = args["start_at"]
while time.time() < start_at:
    time.sleep(0.001)
end = time.time() + args["seconds"]
n = 0
cpu0 = time.process_time()
while time.time() < end:
    client.infer(args["model"], inputs)
    n += 1
print(json.dumps({"count": n, "cpu_s": time.process_time() - cpu0}))
"""


def plain_loop(url: str, model: str, concurrency: int, seconds: float, image: str | None) -> tuple[float, float]:
    """(requests/s, mean CPU % of a core per process) of ``concurrency`` synchronous client processes."""
    args = {"url": url, "model": model, "seconds": seconds, "image": image, "start_at": time.time() + 2.0}
    procs = [subprocess.Popen([sys.executable, "-c", PLAIN_LOOP, json.dumps(args)], stdout=subprocess.PIPE, text=True)
             for _ in range(concurrency)]
    results = [json.loads(p.communicate(timeout=seconds + 120)[0].strip().splitlines()[-1]) for p in procs]
    return sum(r["count"] for r in results) / seconds, 100 * sum(r["cpu_s"] for r in results) / seconds / concurrency


def tritongen_perf(url: str, model: str, concurrency: int, seconds: float, images: str | None):
    settings = PerfSettings(levels=[concurrency], measurement_interval_ms=int(seconds * 1000 / 2),
                            stability_percentage=25, max_trials=8, warmup_request_count=20)
    run = run_perf(model, url, settings, images=images)
    (status,) = run.results
    return status.infer_per_sec, status.client_cpu_pct, status.stable, run.workers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measurement time per level and client")
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="tritongen-perf-bench-") as tmp:
        tmp = Path(tmp)
        repo = tmp / "repo"
        write_identity_model(repo, "identity", max_batch_size=8)
        export = make_classifier(tmp / "clas", input_hw=(224, 224))
        build(export, repo, backend="python-onnxruntime", name="clas")
        import skimage.data

        photos = tmp / "photos"
        photos.mkdir()
        image = Path(skimage.data.__file__).parent / "chelsea.png"
        (photos / image.name).write_bytes(image.read_bytes())
        server = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                              log_file=tmp / "triton.log").start()
        try:
            url = server.grpc_url
            print(f"server {url}; {args.seconds:g} s per measurement; cores: {__import__('os').cpu_count()}")
            for model, imgs in (("identity", None), ("clas", str(photos))):
                print(f"\n== {model} ==")
                print(f"{'concurrency':>11} {'tritongen perf':>15} {'plain loop':>11} {'perf/plain':>10} "
                      f"{'perf CPU%/proc':>15} {'plain CPU%/proc':>16} {'stable':>6}")
                best_perf = best_plain = 0.0
                for c in levels:
                    ours, cpu, stable, workers = tritongen_perf(url, model, c, args.seconds, imgs)
                    plain, plain_cpu = plain_loop(url, model, c, args.seconds, str(photos / image.name) if imgs else None)
                    best_perf, best_plain = max(best_perf, ours), max(best_plain, plain)
                    print(f"{c:>11} {ours:>13.1f}/s {plain:>9.1f}/s {ours / plain:>10.2f} "
                          f"{'/'.join(f'{x:.0f}' for x in cpu):>15} {plain_cpu:>16.0f} {str(stable):>6}  ({workers} proc)")
                sustained = max(best_perf, best_plain)
                print(f"best: tritongen perf {best_perf:.1f}/s, plain loop {best_plain:.1f}/s -> tritongen perf reaches "
                      f"{100 * best_perf / sustained:.0f} % of what the server sustained")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
