"""Model runtimes behind one interface: ``run({input name: array}) -> {output name: array}``.

Runtimes are imported lazily so a model that needs only one of them imports only that one.
:class:`Network` is what a built repository runs: the runner its ``runtime.json`` names, with
batch-major outputs — shared by the generated runtime and fused models and by in-process
measurement of a repository.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from typing import Any, Iterator

import numpy as np

# A run whose inputs exceed this many bytes (a 3-channel float32 image of ~5.6 MP) gives the
# memory it grew by back afterwards: ONNX Runtime's arena and Paddle's allocator otherwise keep
# every block a 6000x6000 image needed (measured: 5.2 GB per model instance, for good). Smaller
# runs keep their memory for the next run, which is what makes them fast.
LARGE_RUN_BYTES = 64 << 20


def is_large_run(feeds: dict[str, np.ndarray]) -> bool:
    return sum(int(np.asarray(v).nbytes) for v in feeds.values()) > LARGE_RUN_BYTES


class OnnxRuntimeRunner:
    def __init__(self, model_path: str | os.PathLike, threads: int = 1, providers: list[str] | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_path), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._release_arena = ort.RunOptions()
        self._release_arena.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        options = self._release_arena if is_large_run(feeds) else None
        outputs = self.session.run(self.output_names, feeds, options)
        return dict(zip(self.output_names, outputs))


class PaddleInferenceRunner:
    def __init__(
        self,
        model_file: str | os.PathLike,
        params_file: str | os.PathLike,
        threads: int = 1,
        enable_mkldnn: bool = False,
        int8: bool = False,
    ):
        import zlib  # noqa: F401  paddle 2.6 shadows zlib; load the real one first

        from paddle import inference

        config = inference.Config(str(model_file), str(params_file))
        config.disable_gpu()
        config.disable_glog_info()
        config.set_cpu_math_library_num_threads(threads)
        if enable_mkldnn or int8:
            config.enable_mkldnn()
        if int8:  # a PaddleSlim QDQ program: oneDNN fuses it into INT8 kernels
            config.enable_mkldnn_int8()
        config.switch_ir_optim(True)
        with _native_output_captured() as captured:
            try:
                self.predictor = inference.create_predictor(config)
            except Exception as exc:
                raise RuntimeError(f"Paddle Inference cannot load {model_file}: {exc}\n{captured()[-2000:]}") from None
        self.input_names = list(self.predictor.get_input_names())
        self.output_names = list(self.predictor.get_output_names())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name in self.input_names:
            handle = self.predictor.get_input_handle(name)
            handle.reshape(feeds[name].shape)
            handle.copy_from_cpu(np.ascontiguousarray(feeds[name]))
        self.predictor.run()
        outputs = {name: self.predictor.get_output_handle(name).copy_to_cpu() for name in self.output_names}
        if is_large_run(feeds):
            self.predictor.try_shrink_memory()
        return outputs


@contextlib.contextmanager
def _native_output_captured() -> Iterator[Any]:
    """Send what C++ code prints to fds 1/2 into a temp file (Paddle's oneDNN passes print
    dozens of lines per predictor); yields a function returning the captured text."""
    with tempfile.TemporaryFile(mode="w+b") as sink:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)

        def captured() -> str:
            sink.seek(0)
            return sink.read().decode("utf-8", "replace")

        try:
            yield captured
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


RUNNERS: dict[str, Any] = {"onnxruntime": OnnxRuntimeRunner, "paddle": PaddleInferenceRunner}

RUNTIME_FILE = "runtime.json"


class Network:
    """The network of a built Python model from its version directory's ``runtime.json``:
    ``run({feed: batch}) -> {output: batch}`` with every output batch-major (row i = image i)."""

    def __init__(self, directory: str | os.PathLike):
        with open(os.path.join(directory, RUNTIME_FILE), encoding="utf-8") as f:
            settings = json.load(f)
        # Detectors with multiclass_nms3 in the graph: rows + counts -> batch-major (see detection.run_nms_graph).
        self.nms = settings.pop("nms_outputs", None)
        runner_cls = RUNNERS[settings.pop("runtime")]
        files = [os.path.join(directory, name) for name in settings.pop("files")]
        self.runner = runner_cls(*files, **settings)

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.nms:
            return self.runner.run(batch)
        from .detection import run_nms_graph

        return run_nms_graph(self.runner, batch, self.nms)
