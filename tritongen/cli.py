"""The ``tritongen`` command: a thin Typer layer over the library."""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.table import Table

import tritongen  # noqa: F401  (zlib before paddle)

from .errors import TritongenError

app = typer.Typer(
    help="Paddle vision models -> NVIDIA Triton model repositories: build, serve, infer.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
out = Console()


def _print_table(table: Table) -> None:
    """Tables whole when stdout is a file or pipe (rich would squeeze them into 80 columns)."""
    (out if out.is_terminal else Console(width=max(out.width, 220))).print(table)


# INT8 options, declared once and shared by build, quantize and bench (typer reads Annotated metadata).
CalibDir = Annotated[Optional[Path], typer.Option("--calib-dir", help="Images to calibrate on (a share is held out).")]
Method = Annotated[str, typer.Option("--method", help="ptq (post-training) | qat (ACT quant-aware distillation).")]
Algo = Annotated[str, typer.Option("--algo", help="PTQ calibration: avg | abs_max | hist | KL | mse.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Calibration / training batch size.")]
BatchNums = Annotated[Optional[int], typer.Option("--batch-nums", min=1, help="Calibration batches (default: all).")]
SkipTensors = Annotated[List[str], typer.Option("--skip-tensors", help="Paddle tensors to keep in FP32 (repeatable).")]
ActConfig = Annotated[Optional[Path], typer.Option("--config", help="ACT yaml for --method qat "
                                                   "(Global/QuantAware/QuantPost/Distillation/TrainConfig).")]
TrainIters = Annotated[Optional[int], typer.Option("--train-iters", min=1, help="QAT iterations (default from the config).")]
MaxDrop = Annotated[Optional[float], typer.Option("--max-drop", min=0.0, max=1.0,
                                                  help="Fail when INT8 agreement (top-1 / detections / pixels) or "
                                                       "cosine with FP32 drops more.")]


def _quantize_config(calib_dir: Optional[Path], method: str, algo: str, batch_size: int, batch_nums: Optional[int],
                     skip_tensors: List[str], act_config: Optional[Path], train_iters: Optional[int],
                     max_drop: Optional[float]):
    from .quantize.config import QuantizeConfig

    if calib_dir is None:
        raise TritongenError("INT8 needs --calib-dir DIR (images to calibrate on)")
    return QuantizeConfig(calib_dir, method=method, algo=algo, batch_size=batch_size, batch_nums=batch_nums,
                          skip_tensors=tuple(skip_tensors), act_config=act_config, train_iters=train_iters,
                          max_drop=max_drop)


@app.command()
def build(
    source: str = typer.Argument(..., help="Exported Paddle inference directory, or a zoo name (see `tritongen zoo`)."),
    output: Path = typer.Option(Path("model_repository"), "--output", "-o", help="Model repository to write into."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Name of the model clients call (default: the directory name)."),
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="python-onnxruntime (default) | python-paddle | "
                                          "onnxruntime | tensorrt (default with --fp16)"),
    force: bool = typer.Option(False, "--force", help="Replace models of the same name already in OUTPUT."),
    max_batch_size: int = typer.Option(8, "--max-batch-size", min=1, help="max_batch_size of every model."),
    layout: Optional[str] = typer.Option(None, "--layout", help="ensemble: NAME = NAME_preprocess -> NAME_runtime -> "
                                         "NAME_postprocess | fused: one Python model NAME (python-* backends); same "
                                         "inputs and outputs. Default: fused for the python-* backends, else ensemble."),
    instances: Optional[str] = typer.Option(None, "--instances", help="Model instances: N for every step, or STEP=N,... "
                                            "(preprocess, runtime, postprocess; fused). Default: from this machine's cores "
                                            "and, for the ensemble, each step's cost measured here."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads per network instance "
                                          "(default: from the cores and instances)."),
    opset: int = typer.Option(13, "--opset", min=7, help="ONNX opset (raised automatically where an op needs more)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Label file '<id> <name>' per line (overrides the yaml's)."),
    min_image_side: Optional[int] = typer.Option(None, "--min-image-side", min=1, help="Reject smaller images (default 8)."),
    max_image_pixels: Optional[int] = typer.Option(None, "--max-image-pixels", min=1,
                                                   help="Reject larger images from their header, before decoding "
                                                        "(default 100000000)."),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="Expected sha256 of a zoo archive."),
    score_threshold: Optional[float] = typer.Option(None, "--score-threshold", min=0.0, max=1.0,
                                                    help="Detection: drop boxes below this score (default: the export's draw_threshold)."),
    max_detections: Optional[int] = typer.Option(None, "--max-detections", min=1,
                                                 help="Detection: boxes returned per image (default 100)."),
    int8: bool = typer.Option(False, "--int8", help="Serve INT8: with --calib-dir quantize (PaddleSlim); without, a zoo "
                                                      "name takes the INT8 model FastDeploy publishes for it."),
    fp16: bool = typer.Option(False, "--fp16", help="TensorRT: run the non-INT8 part in FP16 (selects --backend tensorrt)."),
    trt_accelerator: Optional[str] = typer.Option(None, "--trt-accelerator",
                                                  help="onnxruntime backend: TensorRT execution accelerator, FP16 or INT8."),
    calib_dir: CalibDir = None,
    method: Method = "ptq",
    algo: Algo = "hist",
    batch_size: BatchSize = 4,
    batch_nums: BatchNums = None,
    skip_tensors: SkipTensors = [],  # noqa: B006  (typer's default for a repeatable option)
    act_config: ActConfig = None,
    train_iters: TrainIters = None,
    max_drop: MaxDrop = None,
) -> None:
    """Build a Triton model repository: ensemble NAME = preprocess -> runtime -> postprocess, or one fused model NAME."""
    from .build import build as run_build

    quantize = int8 and calib_dir is not None
    config = _quantize_config(calib_dir, method, algo, batch_size, batch_nums, skip_tensors, act_config, train_iters,
                              max_drop) if quantize else None
    with _UnwindOnTermination() as termination, console.status("building") as status:
        printer = _step_printer(status)

        def step(message: str) -> None:
            termination.rearm()
            printer(message)

        result = run_build(
            source, output, backend=backend, name=name, force=force, opset=opset, max_batch_size=max_batch_size,
            instances=instances, threads=threads, labels=labels, min_image_side=min_image_side,
            max_image_pixels=max_image_pixels, sha256=sha256,
            int8=config, published_int8=int8 and not quantize, fp16=fp16, trt_accelerator=trt_accelerator,
            score_threshold=score_threshold, max_detections=max_detections, step=step, layout=layout,
        )
    repo = result.repository
    for note in (result.int8.notes if result.int8 else []) + result.spec.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    out.print(f"[green]built[/] {repo.ensemble} ({repo.backend}, {repo.layout.value} layout) in {repo.path}: "
              f"{', '.join(repo.models)}")
    if result.onnx:
        worst = max(result.onnx.validation.values(), default=0.0)
        out.print(f"ONNX opset {result.onnx.opset}; max |ONNX - Paddle| on random inputs: {worst:.2e}")
    if result.int8 and result.int8.conversion:
        from .convert.quantized import conversion_summary

        out.print(f"conversion check: {conversion_summary(result.int8.conversion)}", highlight=False, soft_wrap=True)
    if result.int8 and result.int8.fidelity:
        out.print(f"INT8 ({result.int8.target}) vs FP32: {result.int8.fidelity.summary()}", highlight=False, soft_wrap=True)
    if not repo.served_locally:
        out.print(f"note: {repo.backend} runs in the official tritonserver container (see docker/), not `tritongen serve`")
    if result.next_command:
        out.print(f"next: {result.next_command}", highlight=False, soft_wrap=True)


class Terminated(SystemExit):
    """Raised in the main thread when the process is asked to stop (SIGTERM, SIGHUP), so that every
    ``with`` and ``finally`` on the way out runs: temporary and staging directories are removed, a
    half-done swap of models is undone, child processes are killed. Exit status 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signal = signal.Signals(signum)


class _UnwindOnTermination:
    """While the block runs, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread (once:
    a second signal ends the process at once; the next build removes what that leaves, see
    tritongen.residue). Importing Paddle replaces the SIGTERM handler with glog's, which dies
    without unwinding: :meth:`rearm` (at every build step) puts this one back."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.previous: dict[int, object] = {}
        self.stopped = False

    def __enter__(self) -> "_UnwindOnTermination":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self.previous = {sig: signal.getsignal(sig) for sig in self.SIGNALS
                             if signal.getsignal(sig) is signal.SIG_DFL}  # (not under nohup)
        self.rearm()
        return self

    def rearm(self) -> None:
        if not self.stopped and threading.current_thread() is threading.main_thread():
            for sig in self.previous:
                signal.signal(sig, self._stop)

    def _stop(self, signum, frame):
        self.stopped = True
        for sig in self.previous:
            signal.signal(sig, signal.SIG_DFL)
        raise Terminated(signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _step_printer(status):
    def step(message: str) -> None:
        status.update(message)
        console.print(f"[dim]-[/] {message}", highlight=False, soft_wrap=True)

    return step


@app.command()
def quantize(
    source: str = typer.Argument(..., help="Exported Paddle inference directory, or a zoo name."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the INT8 export."),
    calib_dir: CalibDir = None,
    method: Method = "ptq",
    algo: Algo = "hist",
    batch_size: BatchSize = 4,
    batch_nums: BatchNums = None,
    skip_tensors: SkipTensors = [],  # noqa: B006
    act_config: ActConfig = None,
    train_iters: TrainIters = None,
    max_drop: MaxDrop = None,
    force: bool = typer.Option(False, "--force", help="Replace OUTPUT."),
) -> None:
    """Quantize a Paddle export to INT8 (PaddleSlim), calibrating through its own preprocessing."""
    from .quantize import quantize as run_quantize

    config = _quantize_config(calib_dir, method, algo, batch_size, batch_nums, skip_tensors, act_config, train_iters,
                              max_drop)
    with console.status("quantizing") as status:
        result = run_quantize(source, config, output, force=force, step=_step_printer(status))
    for note in result.record.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    out.print(f"[green]quantized[/] {result.fp32.name} -> {result.directory} ({result.config.method.value})",
              highlight=False)
    out.print(f"FP32 vs INT8 (Paddle Inference, oneDNN): {result.fidelity.summary()}", highlight=False)
    out.print(f"report: {result.directory / 'fidelity.json'}", highlight=False)


bench_app = typer.Typer(help="Benchmarks, measured side by side in one run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("runtime")
def bench_runtime(
    source: str = typer.Argument(..., help="Exported Paddle inference directory, or a zoo name."),
    int8: bool = typer.Option(True, "--int8/--no-int8", help="Compare FP32 with INT8 (the only mode for now)."),
    calib_dir: CalibDir = None,
    method: Method = "ptq",
    algo: Algo = "hist",
    batch_size: BatchSize = 4,
    batch_nums: BatchNums = None,
    skip_tensors: SkipTensors = [],  # noqa: B006
    act_config: ActConfig = None,
    train_iters: TrainIters = None,
    runs: int = typer.Option(30, "--runs", min=3, help="Timed runs per variant (interleaved)."),
    warmup: int = typer.Option(5, "--warmup", min=0),
    backend: List[str] = typer.Option(["onnxruntime", "paddle"], "--backend", help="onnxruntime and/or paddle."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Write rows in FastDeploy's published tables' columns."),
) -> None:
    """FP32 vs INT8 latency on this CPU (1 thread), runtime and end-to-end, like FastDeploy's published tables."""
    from .bench.runtime import RUNTIMES, run_benchmark

    if not int8:
        raise TritongenError("bench runtime compares FP32 with INT8; drop --no-int8")
    unknown = set(backend) - set(RUNTIMES)
    if unknown:
        raise TritongenError(f"unknown --backend {sorted(unknown)}; use {' and/or '.join(RUNTIMES)}")
    config = _quantize_config(calib_dir, method, algo, batch_size, batch_nums, skip_tensors, act_config, train_iters,
                              None)
    with console.status("benchmarking") as status:
        report = run_benchmark(source, config, runs=runs, warmup=warmup, runtimes=tuple(backend),
                               step=_step_printer(status))
    if report.rows:
        table = Table(title=f"{report.rows[0].model}: FP32 vs INT8, 1 thread, median of {runs} interleaved runs",
                      title_justify="left")
        for col in ("model", "backend", "hardware", "latency", "FP32 ms", "INT8 ms", "max speedup", "INT8 vs FP32", "method"):
            table.add_column(col)
        for row in report.rows:
            table.add_row(row.model, row.backend, row.hardware, row.latency, f"{row.fp32_ms:.2f}", f"{row.int8_ms:.2f}",
                          f"{row.speedup:.2f}x", "" if row.agreement is None else f"{row.metric} {row.agreement:.4f}",
                          row.method)
        _print_table(table)
    for note in report.notes:
        out.print(f"note: {note}", highlight=False, soft_wrap=True)
    if csv_path:
        from .bench.reference import COLUMNS
        from .bench.tables import table_rows, write_csv

        write_csv(csv_path, COLUMNS, [row.csv_row() for row in table_rows(report)])
        out.print(f"wrote {csv_path}")


@bench_app.command("tables")
def bench_tables(
    sources: List[str] = typer.Argument(..., help="Export directories or zoo names (resnet50_vd, mobilenetv1_ssld, ...)."),
    calib_dir: CalibDir = None,
    output: Path = typer.Option(Path("bench_tables"), "--output", "-o",
                                help="Directory for bench_tables.csv, bench_tables_vs_fastdeploy.csv, bench_tables.png."),
    runs: int = typer.Option(30, "--runs", min=3, help="Timed runs per variant (interleaved)."),
    warmup: int = typer.Option(5, "--warmup", min=0),
    as_name: Optional[str] = typer.Option(None, "--as", help="Set one SOURCE beside FastDeploy's rows of this model "
                                                           "(e.g. mobilenetv1, ppyoloe_s); default: its directory or zoo name."),
) -> None:
    """FastDeploy's published tables regenerated on this CPU: FP32 vs INT8 per model, beside FastDeploy's rows."""
    from .bench.tables import tables_command

    if calib_dir is None:
        raise TritongenError("bench tables needs --calib-dir DIR (images to calibrate on)")
    with console.status("benchmarking") as status:
        report = tables_command(sources, calib_dir, output, runs=runs, warmup=warmup, as_name=as_name,
                                step=_step_printer(status))
    _print_table(report.rich_table())
    for line in report.messages():
        out.print(line, highlight=False, soft_wrap=True)
    for path in report.files:
        out.print(f"wrote {path}", highlight=False)


@bench_app.command("serving")
def bench_serving(
    source: str = typer.Argument(..., help="Export directory or zoo name (built first), or a model repository."),
    name: List[str] = typer.Option([], "--name", "-n", help="Ensemble name of the build; with a repository, the "
                                   "model(s) to measure (repeatable; default: every image model)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Directory of encoded images (default: generated photos)."),
    runs: int = typer.Option(30, "--runs", min=3, help="In-process / served runs at concurrency 1 (interleaved)."),
    warmup: int = typer.Option(3, "--warmup", min=0),
    concurrency: Optional[str] = typer.Option(None, "--concurrency", help="Load levels: 1,2,4 or start:end:step "
                                              "(default: 1, 2, 4, ... up to 2 x cores)."),
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="Build for python-onnxruntime (default) or "
                                          "python-paddle."),
    layout: List[str] = typer.Option([], "--layout", help="Build with this layout; repeat to compare layouts "
                                     "(models NAME_<layout>, one line each in the plot)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Build into this repository and keep it "
                                          "(default: a temporary one)."),
    force: bool = typer.Option(False, "--force", help="Replace models of the same name in --output."),
    measurement_interval: int = typer.Option(2000, "--measurement-interval", "-p", min=100, help="Load window, ms."),
    stability_percentage: float = typer.Option(20.0, "--stability-percentage", "-s", min=1.0,
                                               help="Last 3 load windows agree within this %."),
    max_trials: int = typer.Option(10, "--max-trials", "-r", min=3, help="Load windows per level at most."),
    perf_analyzer: bool = typer.Option(True, "--perf-analyzer/--no-perf-analyzer",
                                       help="Also load with NVIDIA's perf_analyzer when it is installed."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Write every number as CSV rows."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG: latency and throughput vs concurrency."),
) -> None:
    """In-process vs served on the same images, Triton's per-step times, throughput vs concurrency."""
    from .bench.serving import bench_serving as run_bench
    from .perf import parse_range

    levels = None
    if concurrency:
        try:
            levels = (parse_range(concurrency, int) if ":" in concurrency
                      else [int(c) for c in concurrency.split(",") if c.strip()])
        except ValueError:
            raise TritongenError(f"--concurrency {concurrency!r}: expected 1,2,4 or start:end:step") from None
    with console.status("benchmarking") as status:
        report = run_bench(source, name, images=images, runs=runs, warmup=warmup, concurrency=levels, backend=backend,
                           layouts=layout, output=output, force=force, measurement_interval_ms=measurement_interval,
                           stability_percentage=stability_percentage, max_trials=max_trials,
                           use_perf_analyzer=perf_analyzer, csv_path=csv_path, plot_path=plot,
                           step=_step_printer(status))
    for line in report.lines():
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    for path in report.files:
        out.print(f"wrote {path}", highlight=False)


@app.command()
def serve(
    repository: str = typer.Argument("model_repository", help="Model repository to serve: a directory, or what "
                                     "`tritongen publish` wrote (s3://bucket/prefix, s3://host:port/bucket/prefix, gs://..., as://...)."),
    grpc_port: int = typer.Option(8001, "--grpc-port"),
    http_port: int = typer.Option(8000, "--http-port"),
    metrics_port: int = typer.Option(8002, "--metrics-port"),
    log_file: Optional[Path] = typer.Option(None, "--log-file", help="Server log (default: a temp file)."),
    verbose: int = typer.Option(0, "--log-verbose", help="tritonserver --log-verbose level."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for the server to become ready."),
    model_control: str = typer.Option("none", "--model-control",
                                      help="none (default: load once) | poll (pick up changes on disk; a model whose "
                                           "backend process dies is not reloaded) | explicit (load/unload through the "
                                           "API, e.g. for `tritongen tune`)."),
    drain_timeout: float = typer.Option(30.0, "--drain-timeout", min=0.0,
                                        help="On Ctrl-C / SIGTERM: seconds to let requests in flight finish (0: stop at once)."),
    replicas: int = typer.Option(1, "--replicas", min=1,
                                 help="tritonservers to run on the same repository; replica i has every port shifted "
                                      "by i x (the span of the three ports + 1): with the defaults 8000-8002, 8003-8005, ..."),
) -> None:
    """Run the real tritonserver on 127.0.0.1 until Ctrl-C / SIGTERM.

    A model whose backend process dies (killed, out of memory) is reloaded within seconds; on
    Ctrl-C / SIGTERM the models clients call are unloaded first, so requests in flight finish.
    A storage URI serves the version its CURRENT pointer names (credentials from the AWS_* /
    GOOGLE_APPLICATION_CREDENTIALS / AZURE_STORAGE_* environment)."""
    from .serve import TritonServer

    stop = threading.Event()
    server = TritonServer(repository, grpc_port, http_port, metrics_port, log_file=log_file, verbose=verbose,
                          model_control=model_control,
                          on_fault=lambda line: console.print(f"[yellow]{line}[/]", highlight=False))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if replicas > 1:
        _serve_replicas(server, replicas, stop, timeout, drain_timeout)
        return
    with console.status(f"starting tritonserver on {repository}"):
        server.start(timeout=timeout)
    try:
        models = sorted(server.model_states())
        out.print(f"[green]tritonserver ready[/] serving {', '.join(models)} from {server.source.describe()}")
        out.print(f"  gRPC     {server.grpc_url}")
        out.print(f"  HTTP     http://{server.http_url}")
        out.print(f"  metrics  {server.metrics_url}")
        out.print(f"  log      {server.log_file}")
        _print_serving_mode(server, model_control)
        out.print("Ctrl-C to stop.", highlight=False)
        sys.stdout.flush()
        while not stop.wait(0.5):
            if not server.is_running():
                raise TritongenError(f"tritonserver exited unexpectedly (code {server.process.returncode}):\n"
                                     f"{server.failure_summary()}")
    finally:
        if stop.is_set() and server.is_running() and drain_timeout > 0 and server.recovers:
            out.print(f"stopping: letting requests in flight finish (up to {drain_timeout:g} s)", highlight=False)
            sys.stdout.flush()
        code = server.stop(drain_timeout=drain_timeout if stop.is_set() else 0)
        out.print(f"tritonserver stopped (exit code {code}{_crash_note(server, code)})", highlight=False)


def _print_serving_mode(server, model_control: str) -> None:
    if model_control != "none":
        out.print(f"  model control  {model_control}", highlight=False)
    if server.recovers:
        out.print("  recovery a model whose backend process dies is reloaded", highlight=False)
    else:
        out.print("  recovery none with --model-control poll: a model whose backend process dies fails "
                  "until the server restarts", highlight=False)


def _crash_note(server, code: int | None) -> str:
    crashes = server.crashes
    recovered = sum(c.recovered_at is not None for c in crashes)
    note = f"; {len(crashes)} backend crash(es), {recovered} recovered" if crashes else ""
    if crashes and code == -signal.SIGKILL:
        note += ": killed, a model version that lost a backend process never finishes unloading"
    return note


def _serve_replicas(template, replicas: int, stop: threading.Event, timeout: float, drain_timeout: float) -> None:
    """`serve --replicas N`: N servers, one line each, one gRPC target for all; a replica that
    exits is reported and the others keep serving (the command fails once none is left)."""
    from .serve import ReplicaSet

    group = ReplicaSet(template, replicas)
    with console.status(f"starting {replicas} tritonservers on {group.source.describe()}"):
        group.start(timeout=timeout)
    try:
        models = sorted(group.servers[0].model_states())
        out.print(f"[green]{replicas} tritonservers ready[/] serving {', '.join(models)} from {group.source.describe()}")
        for i, s in enumerate(group.servers):
            out.print(f"  replica {i}  gRPC {s.grpc_url}  HTTP http://{s.http_url}  metrics {s.metrics_url}  "
                      f"log {s.log_file}", highlight=False, soft_wrap=True)
        out.print(f"  gRPC target (round_robin)  {group.grpc_target}", highlight=False, soft_wrap=True)
        _print_serving_mode(template, template.model_control)
        out.print("Ctrl-C to stop.", highlight=False)
        sys.stdout.flush()
        while not stop.wait(0.5):
            for i, s in group.newly_exited():
                console.print(f"[yellow]replica {i} (gRPC {s.grpc_url}) is gone: {s.exit_reason()}; "
                              f"{len(group.running())} of {replicas} serving[/]", highlight=False, soft_wrap=True)
            if not group.running():
                raise TritongenError(f"every tritonserver replica exited; last log: {group.servers[-1].log_file}")
    finally:
        if stop.is_set() and group.running() and drain_timeout > 0 and template.recovers:
            out.print(f"stopping: letting requests in flight finish (up to {drain_timeout:g} s)", highlight=False)
            sys.stdout.flush()
        codes = group.stop(drain_timeout=drain_timeout if stop.is_set() else 0)
        for i, (s, code) in enumerate(zip(group.servers, codes)):
            out.print(f"replica {i} stopped (exit code {code}{_crash_note(s, code)})", highlight=False)


@app.command()
def publish(
    repository: Path = typer.Argument(..., help="A built model repository (a directory)."),
    uri: str = typer.Argument(..., help="s3://bucket/prefix (AWS), s3://host:port/bucket/prefix (another S3 endpoint), gs://bucket/prefix or as://account/container/prefix."),
) -> None:
    """Upload a model repository to object storage, atomically: every file under
    <prefix>/versions/<id>/, then the pointer <prefix>/CURRENT last, so servers never see a half
    upload. Credentials from the environment only (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from .storage import prepare, upload

    plan = prepare(repository, uri)  # bad input fails here, before the progress bar
    with Progress(TextColumn("uploading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TextColumn("{task.description}"), console=console, transient=True) as progress:
        task = progress.add_task("", total=plan.total_bytes)
        result = upload(plan, on_upload=lambda name, size: progress.update(task, advance=size, description=name))
    what = "unchanged content: reused" if result.reused else f"uploaded {result.files} files ({result.bytes / 1e6:.1f} MB) as"
    out.print(f"[green]published[/] {repository} to {uri}: {what} version {result.version}", highlight=False)
    out.print(f"  CURRENT -> {result.triton_uri}", highlight=False, soft_wrap=True)
    out.print(f"next: tritongen serve {uri}", highlight=False, soft_wrap=True)


@app.command()
def infer(
    model: str = typer.Argument(..., help="Ensemble name."),
    images: List[Path] = typer.Argument(..., help="Image files, sent in batches of at most the model's max_batch_size."),
    protocol: str = typer.Option("grpc", "--protocol", "-i", help="grpc | http (KServe v2 REST with binary tensors); "
                                                               "same answers."),
    url: Optional[str] = typer.Option(None, "--url", "-u", help="Triton endpoint HOST:PORT of that protocol "
                                                                "(default 127.0.0.1:8001 for grpc, 127.0.0.1:8000 for http); "
                                                                "with grpc also several replicas, balanced round-robin: "
                                                                "ipv4:HOST:PORT,HOST:PORT or dns:///NAME:PORT."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.001, help="Seconds to wait for each answer."),
    retries: int = typer.Option(3, "--retries", min=0, help="Retries while the server is unavailable or the model "
                                                          "is being reloaded after a crash (exponential backoff)."),
    retry_delay: float = typer.Option(0.5, "--retry-delay", min=0.0, help="Seconds before the first retry (doubled after each)."),
    shared_memory: str = typer.Option("none", "--shared-memory", help="system: images and fixed-size outputs through "
                                                                      "POSIX shared memory (server on this host) | none."),
    compression: str = typer.Option("none", "--compression", help="Request compression: none | gzip."),
    ssl: bool = typer.Option(False, "--ssl", help="TLS to the server (implied by the certificate options)."),
    root_certificates: Optional[Path] = typer.Option(None, "--root-certificates", help="PEM file of the CAs to trust."),
    private_key: Optional[Path] = typer.Option(None, "--private-key", help="PEM file of the client's private key (mutual TLS)."),
    certificate_chain: Optional[Path] = typer.Option(None, "--certificate-chain",
                                                     help="PEM file of the client's certificate chain (mutual TLS)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    draw: Optional[Path] = typer.Option(None, "--draw", help="Write the image with boxes / mask / label drawn (OUT.png; "
                                                            "several images: OUT_0.png, OUT_1.png, ...)."),
) -> None:
    """Run a served ensemble (classification, detection or segmentation) on images and print the results."""
    import json

    _quiet_grpc()
    from .client import client_for
    from .client.base import read_image_bytes

    if shared_memory not in ("none", "system"):
        raise TritongenError(f"--shared-memory must be system or none, not {shared_memory!r}")
    if compression not in ("none", "gzip"):
        raise TritongenError(f"--compression must be none or gzip, not {compression!r}")
    options = dict(protocol=protocol.lower(), retries=retries, retry_delay=retry_delay, shared_memory=shared_memory,
                   compression=compression, ssl=ssl,
                   root_certificates=root_certificates, private_key=private_key, certificate_chain=certificate_chain)
    with client_for(model, url=url, timeout=timeout, **options) as client:
        results = client.run(images)
    if draw is not None:
        from .processing.image import decode_image

        for i, (path, result) in enumerate(zip(images, results)):
            target = draw if len(images) == 1 else draw.with_name(f"{draw.stem}_{i}{draw.suffix or '.png'}")
            _write_image(target, result.render(decode_image(read_image_bytes(path), min_side=1)))
            console.print(f"wrote {target}", highlight=False)
    if as_json:
        out.print_json(json.dumps([{"image": str(p), **r.summary()} for p, r in zip(images, results)]))
        return
    for path, result in zip(images, results):
        out.print(result.table(str(path)))


def _write_image(path: Path, image) -> None:
    import cv2

    if not cv2.imwrite(str(path), image):
        raise TritongenError(f"cannot write {path} (use a .png or .jpg name in an existing directory)")


def _quiet_grpc() -> None:
    """gRPC's own INFO lines (e.g. a failed TLS handshake) are noise next to one error line."""
    import os

    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _request_intervals(path: Path) -> list[float]:
    """perf_analyzer's ``--request-intervals`` file: one gap in µs per line."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        gaps = [float(line) for line in lines]
    except OSError as exc:
        raise TritongenError(f"--request-intervals {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise TritongenError(f"--request-intervals {path}: expected one number (µs) per line") from None
    if not gaps:
        raise TritongenError(f"--request-intervals {path}: no intervals in it")
    return gaps


DEFAULT_PERF_URLS = {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}  # Triton's default ports, per protocol


@app.command()
def perf(
    model: str = typer.Argument(..., help="Model (or ensemble) to measure."),
    protocol: str = typer.Option("http", "--protocol", "-i", help="http (KServe v2 REST with binary tensors; "
                                 "perf_analyzer's default too) | grpc."),
    url: Optional[str] = typer.Option(None, "--url", "-u", help="Triton endpoint HOST:PORT of that protocol "
                                      "(default 127.0.0.1:8000 for http, 127.0.0.1:8001 for grpc); with grpc also "
                                      "several replicas, the load balanced round-robin: ipv4:HOST:PORT,HOST:PORT or "
                                      "dns:///NAME:PORT (server statistics then come from one replica)."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Batch items per request."),
    concurrency_range: Optional[str] = typer.Option(None, "--concurrency-range",
                                                    help="Closed loop: start:end:step outstanding requests (default 1)."),
    request_rate_range: Optional[str] = typer.Option(None, "--request-rate-range",
                                                     help="Open loop: start:end:step requests per second."),
    request_distribution: str = typer.Option("constant", "--request-distribution", help="constant | poisson (open loop)."),
    measurement_mode: str = typer.Option("time_windows", "--measurement-mode", help="time_windows | count_windows."),
    measurement_interval: int = typer.Option(5000, "--measurement-interval", "-p", min=1, help="Window length, ms."),
    measurement_request_count: int = typer.Option(50, "--measurement-request-count", min=1,
                                                  help="Requests per window (count_windows)."),
    stability_percentage: float = typer.Option(10.0, "--stability-percentage", "-s",
                                               help="Allowed spread (%) of the last 3 windows."),
    max_trials: int = typer.Option(10, "--max-trials", "-r", min=3, help="Windows per level before giving up."),
    percentile: Optional[int] = typer.Option(None, "--percentile", min=1, max=99,
                                             help="Stabilise on this latency percentile instead of the average."),
    warmup_request_count: int = typer.Option(0, "--warmup-request-count", min=0, help="Requests sent before measuring."),
    latency_threshold: Optional[float] = typer.Option(None, "--latency-threshold", "-l", min=0.0,
                                                      help="Stop the sweep when latency reaches this many ms."),
    binary_search: bool = typer.Option(False, "--binary-search", help="Search the range for the highest level whose "
                                                                      "latency stays within --latency-threshold."),
    collect_metrics: bool = typer.Option(False, "--collect-metrics", help="Poll Triton's metrics endpoint during each "
                                                                          "level: GPU (and CPU) utilisation, power, memory."),
    metrics_url: Optional[str] = typer.Option(None, "--metrics-url", help="Default: port 8002 of the --url host, /metrics."),
    metrics_interval: int = typer.Option(1000, "--metrics-interval", min=1, help="Milliseconds between metrics polls."),
    request_intervals: Optional[Path] = typer.Option(None, "--request-intervals",
                                                     help="Open loop on a schedule: a file of gaps between sends, µs, "
                                                          "one per line (repeated when exhausted)."),
    input_data: str = typer.Option("random", "--input-data", help="random | zero | FILE.json (perf_analyzer's format)."),
    shape: List[str] = typer.Option([], "--shape", help="NAME:d1,d2,... for inputs with variable dims (repeatable)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of images for encoded-image (BYTES) inputs."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Load-generating processes (default: enough)."),
    compression: str = typer.Option("none", "--compression", help="none | gzip | deflate (requests)."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, help="Seconds one request may take."),
    csv_file: Optional[Path] = typer.Option(None, "--latency-report-file", "-f", help="perf_analyzer's CSV (µs)."),
    verbose_csv: bool = typer.Option(False, "--verbose-csv", help="Add perf_analyzer's verbose CSV columns."),
    profile_export_file: Optional[Path] = typer.Option(None, "--profile-export-file", help="Every request, as JSON."),
    model_version: str = typer.Option("", "--model-version", "-x", help="Model version (default: the server's choice)."),
    header: List[str] = typer.Option([], "--header", "-H", help="NAME:VALUE added to every inference request (repeatable)."),
    ssl_grpc_use_ssl: bool = typer.Option(False, "--ssl-grpc-use-ssl", help="TLS on the gRPC channel."),
    ssl_grpc_root_certifications_file: Optional[Path] = typer.Option(None, "--ssl-grpc-root-certifications-file",
                                                                      help="PEM file of the CAs to trust."),
    ssl_grpc_private_key_file: Optional[Path] = typer.Option(None, "--ssl-grpc-private-key-file",
                                                              help="PEM file of the client's key (mutual TLS)."),
    ssl_grpc_certificate_chain_file: Optional[Path] = typer.Option(None, "--ssl-grpc-certificate-chain-file",
                                                                    help="PEM file of the client's certificate chain."),
    compare_perf_analyzer: bool = typer.Option(False, "--compare-perf-analyzer",
                                               help="Also run the real perf_analyzer with the same flags, level by "
                                                    "level interleaved, and print both."),
    sync: bool = typer.Option(False, "--sync/--async", " /-a",
                              help="sync: blocking calls, a thread per request in flight (perf_analyzer's default); "
                                   "async: completion-driven (the default here: fewer threads, the same concurrency)."),
    shared_memory: str = typer.Option("none", "--shared-memory", help="none | system: request data written once into "
                                      "POSIX shared memory and registered with Triton (server on this host) | cuda."),
    output_shared_memory_size: int = typer.Option(102400, "--output-shared-memory-size", min=1,
                                                  help="With --shared-memory: bytes per batch item of each output "
                                                       "whose size the model does not fix (BYTES, variable dims)."),
) -> None:
    """Measure throughput and latency the way perf_analyzer does (windows, stability, server breakdown)."""
    from .perf import GrpcTls, PerfSettings, parse_range, parse_shapes, report, run_perf

    _quiet_grpc()

    if sum(map(bool, (concurrency_range, request_rate_range, request_intervals))) > 1:
        raise TritongenError("give one of --concurrency-range, --request-rate-range, --request-intervals, not both")
    gaps = _request_intervals(request_intervals) if request_intervals is not None else None
    if gaps:
        mode, levels, request_distribution = "request_rate", [round(1e6 / (sum(gaps) / len(gaps)), 3)], "custom"
    elif request_rate_range:
        mode, levels = "request_rate", parse_range(request_rate_range, float)
    else:
        mode, levels = "concurrency", parse_range(concurrency_range or "1", int)
    settings = PerfSettings(
        mode=mode, levels=levels, batch_size=batch_size, distribution=request_distribution,
        measurement_mode=measurement_mode, measurement_interval_ms=measurement_interval,
        measurement_request_count=measurement_request_count, stability_percentage=stability_percentage,
        max_trials=max_trials, percentile=percentile, warmup_request_count=warmup_request_count,
        latency_threshold_ms=latency_threshold, timeout_s=timeout, binary_search=binary_search,
        request_intervals_us=gaps, metrics_interval_ms=metrics_interval, sync=sync, shared_memory=shared_memory.lower(),
        output_shared_memory_size=output_shared_memory_size,
    )
    settings.validate()
    headers = {}
    for item in header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise TritongenError(f"-H {item!r}: expected NAME:VALUE")
        headers[name.strip()] = value.strip()
    tls_files = (ssl_grpc_root_certifications_file, ssl_grpc_private_key_file, ssl_grpc_certificate_chain_file)
    tls = (GrpcTls(*(None if f is None else str(f) for f in tls_files))
           if ssl_grpc_use_ssl or any(f is not None for f in tls_files) else None)
    protocol = protocol.lower()
    url = url or DEFAULT_PERF_URLS.get(protocol, "")
    if collect_metrics or metrics_url:
        if metrics_url is None:  # port 8002 of the (first) server the load goes to
            from .client.options import Target

            first = Target.parse(url).addresses[0] if protocol == "grpc" else url
            metrics_url = f"http://{first.rpartition(':')[0] or '127.0.0.1'}:8002/metrics"
        settings.metrics_url = metrics_url
    if compare_perf_analyzer:
        from .perf.compare import compare_with_perf_analyzer, comparison_text

        with _UnwindOnTermination(), console.status(f"tritongen perf and perf_analyzer on {model}, level by level"):
            rows = compare_with_perf_analyzer(model, url, settings, protocol=protocol, input_data=input_data,
                                              images=images, version=model_version, headers=headers)
        print(comparison_text(rows, protocol))
        return
    with _UnwindOnTermination(), console.status("connecting") as status:  # SIGTERM unwinds: shared memory is released
        def on_window(event: dict) -> None:
            label = "concurrency" if event["mode"] == "concurrency" else "request rate"
            status.update(f"{label} {event['value']:g} · window {event['trial']}/{event['max_trials']} · "
                          f"{event['throughput']:.1f} infer/s · {event['latency_us'] / 1000:.2f} ms · "
                          f"client CPU {event['cpu_pct']:.0f}%" + (" · stable" if event["stable"] else ""))

        run = run_perf(model, url, settings, input_data=input_data, shapes=parse_shapes(shape), images=images,
                       workers=workers, compression=None if compression == "none" else compression, on_window=on_window,
                       protocol=protocol, version=model_version, headers=headers, tls=tls)
    print(report.settings_text(settings, run.workers, protocol))
    for result in run.results:
        print(report.level_text(result))
        for warning in result.warnings:
            console.print(warning, highlight=False, markup=False, soft_wrap=True)
    print(report.summary_text(run.results))
    if csv_file is not None:
        for path in report.write_csv(csv_file, run.results, run.info, verbose=verbose_csv):
            console.print(f"wrote {path}", highlight=False)
    if profile_export_file is not None:
        report.write_profile_export(profile_export_file, run.timeline, run.info, url)
        console.print(f"wrote {profile_export_file}", highlight=False)
    if not run.stable:
        raise typer.Exit(2)  # perf_analyzer's exit code when a measurement does not stabilise


@app.command()
def tune(
    model: str = typer.Argument(..., help="Ensemble (or model) to tune."),
    url: str = typer.Option("127.0.0.1:8001", "--url", "-u",
                            help="gRPC endpoint of a Triton in explicit model-control mode (`serve --model-control explicit`)."),
    latency_budget: Optional[float] = typer.Option(None, "--latency-budget", metavar="MS",
                                                   help="Choose the highest throughput whose p99 stays within MS."),
    min_throughput: Optional[float] = typer.Option(None, "--min-throughput", metavar="N",
                                                   help="Choose the lowest p99 at N infer/s or more."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of images for encoded-image (BYTES) inputs."),
    max_trials: int = typer.Option(8, "--max-trials", help="Configurations to measure, the served one included."),
    measurement_interval: int = typer.Option(2000, "--measurement-interval", "-p", help="perf window length, ms."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency",
                                              help="Outstanding requests while measuring (default: 2 x CPU cores)."),
    write: Optional[Path] = typer.Option(None, "--write", metavar="REPO",
                                         help="Write the chosen config into REPO's config.pbtxt files (atomically)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Throughput-vs-p99 chart (default: tune_NAME.png)."),
    input_data: str = typer.Option("random", "--input-data", help="random | zero | FILE.json, for non-image inputs."),
    shape: List[str] = typer.Option([], "--shape", help="NAME:d1,d2,... for inputs with variable dims (repeatable)."),
) -> None:
    """Find the best instances / batching of each composing model by loading and measuring configs."""
    from .perf import parse_shapes
    from .tune import TuneError, TuneSettings, plot_trials, trials_table, write_configs
    from .tune import tune as run_tune

    settings = TuneSettings(latency_budget_ms=latency_budget, min_throughput=min_throughput, concurrency=concurrency,
                            max_trials=max_trials, measurement_interval_ms=measurement_interval)
    settings.validate()
    if write is not None and not write.is_dir():
        raise TuneError(f"--write {write}: no such model repository")
    with console.status(f"connecting to {url}") as status:
        def on_event(event: dict) -> None:
            if event["event"] == "trial":
                t = event["trial"]
                result = t.error or f"{t.throughput:.1f} infer/s, p99 {t.p99_ms:.2f} ms"
                console.print(f"#{t.index} {t.change}: {result}", highlight=False, markup=False, soft_wrap=True)
            else:
                step = f"#{event['index']}/{event['max_trials']} " if event["index"] else ""
                status.update(f"{step}{event['event']}: {event['change']}")

        result = run_tune(model, url, settings, images=images, input_data=input_data, shapes=parse_shapes(shape),
                          on_event=on_event)
    _print_table(trials_table(result))
    plot_path = plot_trials(result, plot or Path(f"tune_{model}.png"))
    out.print(f"wrote {plot_path}", highlight=False, markup=False)
    if result.chosen is None:
        raise TuneError(f"no configuration met the objective ({result.objective.describe()}); "
                        f"{model} serves its original configuration again")
    chosen = result.chosen
    out.print(f"chosen #{chosen.index}: {chosen.throughput:.1f} infer/s, p50 {chosen.p50_ms:.2f} ms, "
              f"p99 {chosen.p99_ms:.2f} ms — {url} now serves it", highlight=False, markup=False, soft_wrap=True)
    for name, (before, after) in result.changes().items():
        out.print(f"  {name}: {before.short()} -> {after.short()}", highlight=False, markup=False)
    if not result.changes():
        out.print("  (the served configuration is the best one tried)", highlight=False)
    if write is not None:
        written = write_configs(write, result)
        for item in written:
            out.print(f"wrote {item.path} ({'; '.join(item.changes)})", highlight=False, markup=False)
        if not written:
            out.print(f"{write}: nothing to change", highlight=False, markup=False)


@app.command()
def demo(
    output: Path = typer.Argument(Path("demo/colour_classifier"), help="Where to write the export."),
) -> None:
    """Write a small PaddleClas-style export (a colour classifier) to try tritongen offline."""
    from .demo import make_classifier

    make_classifier(output)
    out.print(f"wrote a PaddleClas-style export to {output} (inference.pdmodel, inference.pdiparams, inference_cls.yaml)")


@app.command()
def zoo() -> None:
    """List the model names `tritongen build` can download (and which INT8 model FastDeploy publishes for each)."""
    from .intake.zoo import ZOO, cache_dir

    table = Table(title=f"zoo (cache: {cache_dir()})", title_justify="left")
    for col in ("name", "family", "INT8 / FP32", "url"):
        table.add_column(col)
    for entry in ZOO.values():
        pair = f"INT8: {entry.int8}" if entry.int8 else f"FP32: {entry.fp32}" if entry.fp32 else ""
        table.add_row(entry.name, entry.family, pair, entry.url)
    out.print(table)



@app.command()
def deploy(
    repo_uri: str = typer.Argument(..., help="The model repository: a local directory, or s3://[host:port/]bucket/prefix "
                                             "where `tritongen publish` put it (the version CURRENT names is served)."),
    target: str = typer.Option(..., "--target", help="compose, kubernetes or kserve."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory to write the manifests to."),
    repository_dir: Optional[Path] = typer.Option(None, help="A local copy of an s3:// repository whose config.pbtxt files "
                                                             "are read [default: the published version's, from the store]; "
                                                             "REPO_URI is then served as given."),
    name: str = typer.Option("triton", help="Name of the service and its objects (a DNS label)."),
    image: Optional[str] = typer.Option(None, help="Server image [default: nvcr.io/nvidia/tritonserver:24.10-py3, "
                                                   "or tritongen-serving:24.10 (docker/Dockerfile) when a model uses the python backend]."),
    namespace: str = typer.Option("default", help="Kubernetes namespace."),
    model_control_mode: str = typer.Option("none", help="tritonserver --model-control-mode: none, poll or explicit."),
    pvc: Optional[str] = typer.Option(None, help="Kubernetes/KServe: a PersistentVolumeClaim holding the repository."),
    pvc_path: str = typer.Option("", help="The repository's path inside --pvc."),
    credentials_secret: str = typer.Option("tritongen-s3", help="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (s3://)."),
    region: Optional[str] = typer.Option(None, help="AWS_DEFAULT_REGION for an s3:// repository."),
    service_account: Optional[str] = typer.Option(None, help="KServe: ServiceAccount that carries the storage credentials."),
    replicas: Optional[int] = typer.Option(None, help="Replicas (HPA minReplicas) [default: 1]; or size them with --target-rps."),
    max_replicas: Optional[int] = typer.Option(None, help="HPA maxReplicas [default: 4 x replicas]."),
    queue_target_us: int = typer.Option(10_000, help="HPA target: average queue time per request (µs)."),
    target_rps: Optional[float] = typer.Option(None, help="Capacity planning: requests/s to sustain."),
    latency_budget: Optional[float] = typer.Option(None, help="Capacity planning: latency budget (ms) the capacity was measured at."),
    replica_capacity: Optional[float] = typer.Option(None, help="Capacity planning: requests/s one replica sustains (e.g. from tritongen perf)."),
    capacity_model: Optional[str] = typer.Option(None, help="Capacity planning: measure --replica-capacity instead, with "
                                                            "tritongen perf on this model of one served replica."),
    capacity_url: str = typer.Option("127.0.0.1:8000", help="That replica's HTTP endpoint HOST:PORT."),
    capacity_images: Optional[Path] = typer.Option(None, help="Images to measure with (encoded-image inputs)."),
    capacity_max_concurrency: int = typer.Option(16, min=1, help="Highest concurrency the measurement tries."),
    capacity_interval: int = typer.Option(2000, min=100, help="Measurement window, ms (tritongen perf -p)."),
    utilisation: float = typer.Option(0.7, help="Capacity planning: share of a replica's capacity to plan for."),
    cpu: str = typer.Option("2", help="CPU request and limit per replica."),
    memory: str = typer.Option("8Gi", help="Memory request and limit per replica."),
    shm_size: str = typer.Option("1Gi", help="Shared memory (/dev/shm) per replica."),
    http_port: int = typer.Option(8000),
    grpc_port: int = typer.Option(8001),
    metrics_port: int = typer.Option(8002),
    prometheus_url: str = typer.Option("http://prometheus-operated.monitoring.svc", help="prometheus-adapter's Prometheus."),
    kubernetes_version: Optional[str] = typer.Option(None, help="Kubernetes release to validate against [default: 1.33.0]."),
) -> None:
    """Write and validate manifests that serve REPO_URI in the official Triton container (compose, kubernetes, kserve)."""
    from .deploy import (KUBERNETES_VERSION, TARGETS, CapacityPlan, DeployError, DeploySpec, RepositoryLocation, Scaling,
                         default_image, deploy as write_manifests, measure_replica_capacity, read_profile,
                         read_published_profile)
    from .storage import is_store_uri

    TARGETS.lookup(target, DeployError)
    served = repo_uri
    if is_store_uri(repo_uri):
        if not repo_uri.startswith("s3://"):
            raise DeployError(f"{repo_uri}: deploy wires S3 credentials (a Secret) into the manifests; for gs:// or "
                              "as:// give the repository on a --pvc")
        if repository_dir is None:  # a published prefix: serve the version CURRENT names now
            with console.status(f"reading {repo_uri}"):
                profile, served = read_published_profile(repo_uri)
        else:
            profile = read_profile(repository_dir)
    else:
        profile = read_profile(Path(repo_uri) if repository_dir is None else repository_dir)
    source = RepositoryLocation(served, pvc=pvc, pvc_path=pvc_path, credentials_secret=credentials_secret, region=region)
    if capacity_model is not None:
        if replica_capacity is not None or latency_budget is None:
            raise DeployError("--capacity-model measures the capacity within --latency-budget: give the budget, "
                              "not --replica-capacity")
        with console.status(f"measuring {capacity_model} at {capacity_url} (tritongen perf, p99 within {latency_budget:g} ms)"):
            measured = measure_replica_capacity(capacity_model, capacity_url, latency_budget, images=capacity_images,
                                                max_concurrency=capacity_max_concurrency, interval_ms=capacity_interval)
        out.print(measured.explain(), highlight=False, soft_wrap=True)
        replica_capacity = round(measured.rps, 1)  # as printed: the arithmetic below can be followed
    planning = [target_rps, latency_budget, replica_capacity]
    if any(v is not None for v in planning):
        if any(v is None for v in planning):
            raise DeployError("capacity planning needs all of --target-rps, --latency-budget and --replica-capacity")
        if replicas is not None or max_replicas is not None:
            raise DeployError("give --replicas/--max-replicas or --target-rps (capacity planning), not both")
        plan = CapacityPlan(target_rps, replica_capacity, latency_budget, utilisation)
        scaling = Scaling.from_plan(plan)
        out.print(plan.explain(), highlight=False, soft_wrap=True)
    else:
        scaling = Scaling(replicas or 1, max_replicas or 4 * (replicas or 1), queue_target_us)
    spec = DeploySpec(name, source, profile, image or default_image(profile), scaling, namespace, model_control_mode,
                      http_port, grpc_port, metrics_port, cpu, memory, shm_size,
                      prometheus_url=prometheus_url, service_account=service_account)
    result = write_manifests(spec, target, output, kubernetes_version or KUBERNETES_VERSION)
    gpu = f"{profile.gpus} GPU ({', '.join(profile.gpu_reasons())})" if profile.needs_gpu else "no GPU"
    out.print(f"{len(profile.models)} model(s): {gpu}; startup budget {profile.startup_seconds} s", highlight=False, soft_wrap=True)
    for path, validator in result.validated:
        out.print(f"wrote {path} (valid: {validator})", highlight=False, soft_wrap=True)

def main() -> None:
    try:
        app()
    except TritongenError as exc:
        from rich.markup import escape

        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except Terminated as exc:
        console.print(f"[red]error:[/] stopped by {exc.signal.name}", highlight=False)
        sys.exit(exc.code)


if __name__ == "__main__":
    main()
