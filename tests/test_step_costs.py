"""Ensemble instance defaults split by measured step costs (issue 11): the arithmetic, the
measurement on a tiny model, and what `build --layout ensemble` writes. No test asserts a speed."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import tritongen.measure
from tritongen.build import build
from tritongen.emit.repository import InstanceCounts, Layout, split_cores
from tritongen.intake import load_model
from tritongen.measure import StepCosts, measure_step_costs
from tritongen.processing.runners import PaddleInferenceRunner


def costs(pre: float, runtime: float, post: float) -> StepCosts:
    return StepCosts(pre, runtime, post, images="test")


def counts_and_threads(cores: int, step_costs: StepCosts, value=None) -> tuple[dict[str, int], int]:
    counts = InstanceCounts.parse(value, "ensemble", cores=cores, costs=step_costs)
    return counts.counts, counts.default_threads(cores)


# ------------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("cores, step_costs, counts, threads", [
    (2, costs(12, 2, 1), {"preprocess": 2, "runtime": 1, "postprocess": 1}, 1),
    (8, costs(1.4, 3.5, 0.1), {"preprocess": 2, "runtime": 1, "postprocess": 1}, 6),
    (1, costs(1.4, 3.5, 0.1), {"preprocess": 1, "runtime": 1, "postprocess": 1}, 1),
    (1, costs(100, 0.1, 100), {"preprocess": 1, "runtime": 1, "postprocess": 1}, 1),
    (8, costs(1, 1, 2), {"preprocess": 2, "runtime": 1, "postprocess": 4}, 2),  # a costly postprocess keeps its cores
    (16, costs(12, 2, 1), {"preprocess": 13, "runtime": 1, "postprocess": 1}, 2),
    (4, costs(0, 1, 0), {"preprocess": 1, "runtime": 1, "postprocess": 1}, 3),  # free steps still get an instance
])
def test_cores_split_by_step_costs(cores, step_costs, counts, threads):
    assert split_cores(cores, step_costs) == counts
    assert counts_and_threads(cores, step_costs) == (counts, threads)
    assert InstanceCounts.default("ensemble", cores=cores, costs=step_costs).counts == counts


def test_explicit_counts_and_no_costs():
    eight = costs(1.4, 3.5, 0.1)
    # Steps named keep their count; the others are split by the costs, the threads by what is left.
    assert counts_and_threads(8, eight, "preprocess=4") == ({"preprocess": 4, "runtime": 1, "postprocess": 1}, 4)
    assert counts_and_threads(8, eight, "runtime=2") == ({"preprocess": 2, "runtime": 2, "postprocess": 1}, 3)
    assert counts_and_threads(8, eight, 3)[0] == {"preprocess": 3, "runtime": 3, "postprocess": 3}
    # Without costs: the cores-only defaults, exactly as before.
    assert counts_and_threads(8, None) == ({"preprocess": 4, "runtime": 1, "postprocess": 1}, 4)
    assert counts_and_threads(2, None) == ({"preprocess": 1, "runtime": 1, "postprocess": 1}, 1)
    # The fused model runs every step: costs do not split it.
    fused = InstanceCounts.parse(None, Layout.FUSED, cores=4, costs=eight)
    assert fused.counts == {"fused": 4} and fused.default_threads(4) == 1


def test_step_costs_are_checked():
    assert costs(1.4, 3.5, 0.1).share("runtime") == pytest.approx(0.7)
    assert str(costs(1.4, 3.5, 0.1)) == "preprocess 1.4 ms, runtime 3.5 ms, postprocess 0.1 ms"
    for bad in [(0, 0, 0), (-1, 2, 1), (float("nan"), 1, 1), (float("inf"), 1, 1)]:
        with pytest.raises(ValueError, match="step costs"):
            costs(*bad)


def test_measure_imports_nothing_above_processing():
    """tritongen.measure sits below every stage but processing (which it measures)."""
    package = Path(tritongen.measure.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                assert (node.module or "").split(".")[0] == "processing", f"{path.name} imports ..{node.module}"
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith("tritongen"), f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("tritongen") for a in node.names), path.name


# ------------------------------------------------------------------------------ measurement


class CountingRunner:
    def __init__(self, runner):
        self.runner, self.calls = runner, 0

    def run(self, feeds):
        self.calls += 1
        return self.runner.run(feeds)


def test_measure_on_a_tiny_model(clas_export, photos):
    spec = load_model(clas_export)
    runner = CountingRunner(PaddleInferenceRunner(spec.model_file, spec.params_file, threads=1))
    images = [p.read_bytes() for p in photos[:3]]
    step_costs = measure_step_costs(spec.pipeline_config(), runner, images, kind="photos", warmup=2, rounds=3)
    assert runner.calls == (2 + 3) * len(images)  # every image, one request each, in every round
    assert all(ms > 0 for ms in step_costs.by_step.values())
    assert step_costs.images == "3 photos of 451x300, 512x512, 600x400"  # the sizes measured on (costs depend on them)
    # Once the budget is spent no new round starts, but one always runs.
    runner.calls = 0
    measure_step_costs(spec.pipeline_config(), runner, images[:1], warmup=1, rounds=50, budget_s=0)
    assert runner.calls == 2
    with pytest.raises(ValueError, match="at least one image"):
        measure_step_costs(spec.pipeline_config(), runner, [])


# ------------------------------------------------------------------------------------ build


def instance_counts(repo: Path) -> dict[str, int]:
    out = {}
    for path in repo.glob("*/config.pbtxt"):
        config = model_config_pb2.ModelConfig()
        text_format.Parse(path.read_text(), config)
        if config.instance_group:
            out[config.name] = config.instance_group[0].count
    return out


@pytest.mark.parametrize("backend", ["python-onnxruntime", "python-paddle"])
def test_ensemble_build_records_step_costs(clas_export, tmp_path, backend):
    repo, messages = tmp_path / "repo", []
    build(clas_export, repo, backend=backend, name="e", layout="ensemble", step=messages.append)
    info = json.loads((repo / "e/tritongen_build.json").read_text())
    recorded = info["step_costs"]
    assert recorded["instances"] == info["instances"]
    runtime_json = json.loads((repo / "e_runtime/1/runtime.json").read_text())
    assert recorded["threads"] == info["threads"] == runtime_json["threads"]
    assert instance_counts(repo) == {f"e_{step}": n for step, n in info["instances"].items()}
    step_costs = StepCosts(recorded["preprocess_ms"], recorded["runtime_ms"], recorded["postprocess_ms"],
                           recorded["images"])
    assert step_costs.images == "3 JPEG photos of 640x480"
    expected = InstanceCounts.parse(None, "ensemble", cores=recorded["cores"], costs=step_costs)
    assert info["instances"] == expected.counts and info["threads"] == expected.default_threads(recorded["cores"])
    said = [m for m in messages
            if m.startswith("ensemble instances from step costs measured on 3 JPEG photos of 640x480 (")]
    assert len(said) == 1 and f"runtime=1 x {info['threads']} thread" in said[0], messages


def test_threads_given_override_the_measured_split(clas_export, tmp_path):
    build(clas_export, tmp_path / "repo", name="e", layout="ensemble", threads=3)
    info = json.loads((tmp_path / "repo/e/tritongen_build.json").read_text())
    assert info["threads"] == info["step_costs"]["threads"] == 3 and "preprocess_ms" in info["step_costs"]


@pytest.mark.parametrize("options", [
    {"layout": "ensemble", "instances": "preprocess=2"},  # counts given: nothing to measure for
    {"layout": "ensemble", "instances": 1},
    {"layout": "ensemble", "backend": "tensorrt"},  # the runtime is on the GPU
    {"layout": "fused"},  # one model: nothing to split
])
def test_builds_that_do_not_measure(clas_export, tmp_path, monkeypatch, options):
    def refuse(*args, **kwargs):
        raise AssertionError("measured")

    monkeypatch.setattr(tritongen.measure, "measure_step_costs", refuse)
    messages = []
    build(clas_export, tmp_path / "repo", name="e", step=messages.append, **options)
    info = json.loads((tmp_path / "repo/e/tritongen_build.json").read_text())
    assert "step_costs" not in info and not any("step costs" in m for m in messages), messages
    if options.get("instances") == "preprocess=2":  # the others keep the cores-only defaults
        assert info["instances"] == InstanceCounts.parse("preprocess=2", "ensemble").counts


def test_a_failed_measurement_keeps_the_cores_defaults(clas_export, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("no runtime here\nsecond line")

    monkeypatch.setattr(tritongen.measure, "measure_step_costs", fail)
    messages = []
    build(clas_export, tmp_path / "repo", name="e", layout="ensemble", step=messages.append)
    info = json.loads((tmp_path / "repo/e/tritongen_build.json").read_text())
    defaults = InstanceCounts.default("ensemble")
    assert info["step_costs"] == {"not_measured": "no runtime here"}
    assert info["instances"] == defaults.counts and info["threads"] == defaults.default_threads()
    assert any("could not be measured (no runtime here)" in m for m in messages), messages
