"""The ``tritongen`` command: a thin Typer layer over the library."""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

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


@app.command()
def build(
    source: str = typer.Argument(..., help="Exported Paddle inference directory, or a zoo name (see `tritongen zoo`)."),
    output: Path = typer.Option(Path("model_repository"), "--output", "-o", help="Model repository to write into."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Ensemble name (default: the directory name)."),
    backend: str = typer.Option("python-onnxruntime", "--backend", "-b", help="onnxruntime | python-onnxruntime | python-paddle"),
    force: bool = typer.Option(False, "--force", help="Replace models of the same name already in OUTPUT."),
    max_batch_size: int = typer.Option(8, "--max-batch-size", min=1, help="max_batch_size of every model."),
    instances: int = typer.Option(1, "--instances", min=1, help="Instances of the preprocess and runtime models."),
    threads: int = typer.Option(1, "--threads", min=1, help="CPU threads per runtime instance."),
    opset: int = typer.Option(13, "--opset", min=7, help="ONNX opset (raised automatically where an op needs more)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Label file '<id> <name>' per line (overrides the yaml's)."),
    min_image_side: Optional[int] = typer.Option(None, "--min-image-side", min=1, help="Reject smaller images (default 8)."),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="Expected sha256 of a zoo archive."),
) -> None:
    """Build a Triton model repository: ensemble NAME = preprocess -> runtime -> postprocess."""
    from .build import build as run_build

    with console.status("building") as status:
        result = run_build(
            source, output, backend=backend, name=name, force=force, opset=opset, max_batch_size=max_batch_size,
            instances=instances, threads=threads, labels=labels, min_image_side=min_image_side, sha256=sha256,
            step=lambda msg: (status.update(msg), console.print(f"[dim]-[/] {msg}", highlight=False)),
        )
    repo = result.repository
    for note in result.spec.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    out.print(f"[green]built[/] {repo.ensemble} ({repo.backend}) in {repo.path}: {', '.join(repo.models)}")
    if result.onnx:
        worst = max(result.onnx.validation.values(), default=0.0)
        out.print(f"ONNX opset {result.onnx.opset}; max |ONNX - Paddle| on random inputs: {worst:.2e}")
    if not repo.served_locally:
        out.print(f"note: {repo.backend} runs in the official tritonserver container (see docker/), not `tritongen serve`")


@app.command()
def serve(
    repository: Path = typer.Argument(Path("model_repository"), help="Model repository to serve."),
    grpc_port: int = typer.Option(8001, "--grpc-port"),
    http_port: int = typer.Option(8000, "--http-port"),
    metrics_port: int = typer.Option(8002, "--metrics-port"),
    log_file: Optional[Path] = typer.Option(None, "--log-file", help="Server log (default: a temp file)."),
    verbose: int = typer.Option(0, "--log-verbose", help="tritonserver --log-verbose level."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for the server to become ready."),
) -> None:
    """Run the real tritonserver on 127.0.0.1 until Ctrl-C / SIGTERM."""
    from .serve import TritonServer

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = TritonServer(repository, grpc_port, http_port, metrics_port, log_file=log_file, verbose=verbose)
    with console.status(f"starting tritonserver on {repository}"):
        server.start(timeout=timeout)
    try:
        models = sorted(server.model_states())
        out.print(f"[green]tritonserver ready[/] serving {', '.join(models)} from {server.repository}")
        out.print(f"  gRPC     {server.grpc_url}")
        out.print(f"  HTTP     http://{server.http_url}")
        out.print(f"  metrics  {server.metrics_url}")
        out.print(f"  log      {server.log_file}")
        out.print("Ctrl-C to stop.", highlight=False)
        sys.stdout.flush()
        while not stop.wait(0.5):
            if not server.is_running():
                raise TritongenError(f"tritonserver exited unexpectedly:\n{server.failure_summary()}")
    finally:
        code = server.stop()
        out.print(f"tritonserver stopped (exit code {code})")


@app.command()
def infer(
    model: str = typer.Argument(..., help="Ensemble name."),
    images: List[Path] = typer.Argument(..., help="Image files, sent as one batch."),
    url: str = typer.Option("127.0.0.1:8001", "--url", "-u", help="Triton gRPC endpoint HOST:PORT."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds to wait for the answer."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Classify images with a served ensemble and print the top-k."""
    import json
    from dataclasses import asdict

    from .client import ClassificationClient

    with ClassificationClient(model, url=url, timeout=timeout) as client:
        results = client.classify(images)
    if as_json:
        out.print_json(json.dumps([{"image": str(p), **asdict(r)} for p, r in zip(images, results)]))
        return
    for path, result in zip(images, results):
        table = Table(title=str(path), title_justify="left")
        table.add_column("rank", justify="right")
        table.add_column("class id", justify="right")
        table.add_column("score", justify="right")
        table.add_column("label")
        for rank, (cid, score, label) in enumerate(result.rows(), 1):
            table.add_row(str(rank), str(cid), f"{score:.4f}", label)
        out.print(table)


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
    """List the model names `tritongen build` can download."""
    from .intake.zoo import ZOO, cache_dir

    table = Table(title=f"zoo (cache: {cache_dir()})", title_justify="left")
    for col in ("name", "family", "url"):
        table.add_column(col)
    for entry in ZOO.values():
        table.add_row(entry.name, entry.family, entry.url)
    out.print(table)


def main() -> None:
    try:
        app()
    except TritongenError as exc:
        from rich.markup import escape

        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
