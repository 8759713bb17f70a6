"""`tritongen tune` on the real tritonserver in explicit model-control mode, with the demo classifier.

The served repository's runtime model starts with max_queue_delay 200 µs, so the search has
four neighbours from the start (one more instance, delay 400 / 100 µs, a preferred batch size)
and `max_trials=4` always loads three configurations through the model-control API. Timings
are measured but never asserted (two shared cores)."""
from __future__ import annotations

import dataclasses
import inspect
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from tritongen.emit.pbtxt import parse_config
from tritongen.serve import TritonServer
from tritongen.tune import ModelControl, TuneError, TuneSettings, plot_trials, trials_table, tune, write_configs
from tritongen.tune.candidate import settings_from_json

from .conftest import TRITONGEN, free_port, run_cli

NAME = "tuned"
COMPOSING = [f"{NAME}_preprocess", f"{NAME}_runtime", f"{NAME}_postprocess"]
QUICK = dict(max_trials=4, measurement_interval_ms=500, max_windows=4, concurrency=4)


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory) -> Path:
    """The demo classifier (64×64 input) built for python-onnxruntime; the runtime waits 200 µs."""
    from tritongen.build import build
    from tritongen.demo import default_transform_ops, make_classifier

    root = tmp_path_factory.mktemp("tune")
    export = make_classifier(root / "export", transform_ops=default_transform_ops(72, 64), input_hw=(64, 64), seed=3)
    repo = root / "repo"
    layout = {"layout": "ensemble"} if "layout" in inspect.signature(build).parameters else {}
    build(export, repo, backend="python-onnxruntime", name=NAME, max_batch_size=8, **layout)
    runtime = repo / f"{NAME}_runtime" / "config.pbtxt"
    text, count = re.subn(r"max_queue_delay_microseconds: \d+", "max_queue_delay_microseconds: 200", runtime.read_text())
    assert count == 1, runtime.read_text()
    runtime.write_text(text)
    return repo


@pytest.fixture(scope="module")
def image_dir(photos, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tune-images")
    for photo in photos[:3]:
        shutil.copy(photo, d / photo.name)
    return d


@pytest.fixture(scope="module")
def explicit_server(demo_repo, tmp_path_factory):
    """`tritongen serve --model-control explicit` on a copy of the repository."""
    served = tmp_path_factory.mktemp("served") / "repo"
    shutil.copytree(demo_repo, served)
    grpc, http, metrics = free_port(), free_port(), free_port()
    log = served.parent / "serve.out"
    with open(log, "w") as out:
        proc = subprocess.Popen([*TRITONGEN, "serve", str(served), "--grpc-port", str(grpc), "--http-port", str(http),
                                 "--metrics-port", str(metrics), "--model-control", "explicit"],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 300
    while "Ctrl-C to stop" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"tritongen serve --model-control explicit did not start:\n{log.read_text()}")
        time.sleep(0.3)
    assert "model control  explicit" in log.read_text()
    yield f"127.0.0.1:{grpc}", served
    proc.terminate()
    assert proc.wait(60) == 0, log.read_text()


def served_settings(url: str) -> dict:
    with grpcclient.InferenceServerClient(url) as client:
        return {name: settings_from_json(client.get_model_config(name, as_json=True)["config"]) for name in COMPOSING}


def same(served, wanted) -> bool:
    """Served settings equal the wanted ones (Triton fills in preferred [max_batch_size] when none is given)."""
    preferred_ok = served.preferred_batch_sizes == wanted.preferred_batch_sizes or (
        not wanted.preferred_batch_sizes and served.preferred_batch_sizes == (served.max_batch_size,))
    return preferred_ok and (served.instances, served.max_batch_size, served.max_queue_delay_us) == (
        wanted.instances, wanted.max_batch_size, wanted.max_queue_delay_us)


def test_tune_loads_configs_through_model_control_and_ends_serving_the_chosen(explicit_server, image_dir, tmp_path):
    url, served_repo = explicit_server
    seen = []  # (trial index, candidate, what the server served while it was measured)

    def on_event(event):
        if event["event"] == "measuring":
            seen.append((event["index"], event["candidate"], served_settings(url)))

    budget_ms = 30_000.0
    result = tune(NAME, url, TuneSettings(latency_budget_ms=budget_ms, **QUICK), images=image_dir, on_event=on_event)

    assert result.target.tuned == COMPOSING and result.target.floor_batch_size == 8
    assert result.baseline[f"{NAME}_runtime"].max_queue_delay_us == 200
    assert len(result.trials) == 4 and result.trials[0].change == "served config"
    loaded = [t for t in result.trials if t.parent is not None]
    assert len(loaded) >= 3 and all(t.ok for t in result.trials), [t.error for t in result.trials]
    assert len({t.candidate for t in result.trials}) == len(result.trials)  # every trial a different config
    # while each trial was measured, the server served exactly its configuration (the override took effect)
    assert [index for index, _, _ in seen] == [1, 2, 3, 4]
    for index, candidate, served in seen:
        for name in COMPOSING:
            assert same(served[name], candidate[name]), (index, name, served[name], candidate[name])
    for t in result.trials:  # measured through the ensemble: every composing model ran
        assert t.throughput > 0 and 0 < t.p50_ms <= t.p99_ms
        assert set(t.queue_us) == set(COMPOSING) and all(t.batch[name] >= 1 for name in COMPOSING)
    # the chosen one respects the budget and is the fastest that does; the server now serves it
    chosen = result.chosen
    assert chosen is not None and chosen.feasible and chosen.p99_ms <= budget_ms
    assert chosen.throughput == max(t.throughput for t in result.trials if t.p99_ms <= budget_ms)
    now = served_settings(url)
    assert all(same(now[name], chosen.candidate[name]) for name in COMPOSING)
    assert result.served == chosen.candidate

    table = trials_table(result)
    assert table.row_count == 4
    png = plot_trials(result, tmp_path / "tune.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --write with a configuration that changes models (whichever was chosen): the configs parse and
    # a fresh server loads them (poll mode: the one mode whose model-control API is closed; `serve`'s
    # default runs Triton's explicit mode under the hood to reload crashed models)
    changed = max(result.trials, key=lambda t: len(t.candidate.changed_models(result.baseline)))
    assert changed.candidate.changed_models(result.baseline)
    forced = dataclasses.replace(result, chosen=changed)
    repo = tmp_path / "repo"
    shutil.copytree(served_repo, repo)
    before = {p: p.read_text() for p in repo.glob("*/config.pbtxt")}
    written = write_configs(repo, forced)
    assert sorted(w.model for w in written) == sorted(changed.candidate.changed_models(result.baseline))
    for path in repo.glob("*/config.pbtxt"):
        config = parse_config(path.read_text(), path.parent.name)
        if path.parent.name not in {w.model for w in written}:
            assert path.read_text() == before[path]
        else:
            assert path.read_text().startswith("# tritongen tune")
            assert config.name == path.parent.name
    assert not list(repo.glob("*/.config.pbtxt.*"))  # no staged files left behind
    with TritonServer(repo, free_port(), free_port(), free_port(), log_file=tmp_path / "fresh.log",
                      model_control="poll") as fresh:
        got = served_settings(fresh.grpc_url)
        for name in COMPOSING:
            assert same(got[name], changed.candidate[name]), (name, got[name], changed.candidate[name])
        # a server without model control: one clear error, nothing loaded
        proc = run_cli("tune", NAME, "--url", fresh.grpc_url, "--latency-budget", "50", "--images", image_dir, check=False)
        assert proc.returncode == 1
        assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error:")
        assert "--model-control explicit" in proc.stderr

    # back to the configuration the server started with (the next test tunes from there)
    with ModelControl(url) as control:
        target = control.inspect(NAME)
        control.load(target, result.baseline)
    assert all(same(served_settings(url)[n], result.baseline[n]) for n in COMPOSING)


def test_tune_cli_prints_table_plots_and_writes(explicit_server, image_dir, tmp_path):
    url, served_repo = explicit_server
    repo = tmp_path / "repo"
    shutil.copytree(served_repo, repo)
    proc = run_cli("tune", NAME, "--url", url, "--latency-budget", "30000", "--images", image_dir,
                   "--max-trials", "3", "--measurement-interval", "500", "--concurrency", "4",
                   "--write", repo, "--plot", tmp_path / "chart.png", env={**os.environ, "COLUMNS": "250"})
    print(proc.stdout)
    assert "served config" in proc.stdout and "CHOSEN" in proc.stdout and "now serves it" in proc.stdout
    assert f"wrote {tmp_path / 'chart.png'}" in proc.stdout and (tmp_path / "chart.png").stat().st_size > 0
    assert proc.stderr.count("#") >= 3  # one progress line per trial
    for path in repo.glob("*/config.pbtxt"):
        parse_config(path.read_text(), path.parent.name)
    if "nothing to change" not in proc.stdout:
        assert "wrote " + str(repo) in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--latency-budget", "0"], "--latency-budget must be a positive number"),
    (["--latency-budget", "-5"], "--latency-budget must be a positive number"),
    (["--min-throughput", "0"], "--min-throughput must be a positive number"),
    (["--latency-budget", "50", "--min-throughput", "10"], "exactly one objective"),
    ([], "exactly one objective"),
], ids=["zero", "negative", "zero-throughput", "both", "neither"])
def test_bad_budgets_are_one_error_line(args, message):
    proc = run_cli("tune", NAME, "--url", "127.0.0.1:1", *args, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error:") and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert message in proc.stderr
    with pytest.raises(TuneError, match="positive|exactly one"):
        TuneSettings(latency_budget_ms=-1.0).validate()


def test_unknown_model_is_one_error_line(explicit_server):
    url, _ = explicit_server
    proc = run_cli("tune", "no_such_model", "--url", url, "--latency-budget", "50", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error:") and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "no_such_model" in proc.stderr and f"{NAME}_runtime" in proc.stderr


def test_objective_and_neighbours_without_a_server():
    from tritongen.tune import Candidate, ModelSettings, Objective, Trial, neighbours

    base = Candidate.of({"m_pre": ModelSettings(1, 8), "m_run": ModelSettings(1, 8, (8,), 0)})
    fast_slow = Trial(1, base, "a", None, throughput=100.0, p99_ms=80.0)
    slow_fast = Trial(2, base, "b", 1, throughput=60.0, p99_ms=20.0)
    refused = Trial(3, base, "c", 1, error="Triton refused it")
    budget = Objective(latency_budget_ms=50)
    assert not budget.feasible(fast_slow) and budget.feasible(slow_fast) and not budget.feasible(refused)
    assert budget.better(slow_fast, fast_slow) and not budget.better(refused, fast_slow)
    floor = Objective(min_throughput=70)
    assert floor.feasible(fast_slow) and not floor.feasible(slow_fast) and floor.better(fast_slow, slow_fast)
    assert not Objective(min_throughput=50).better(Trial(4, base, "d", 1, throughput=60.0, p99_ms=19.8), slow_fast, 0.02)

    trial = Trial(1, base, "served config", None, throughput=50.0, p99_ms=30.0,
                  queue_us={"m_pre": 5000.0, "m_run": 10.0}, batch={"m_pre": 1.0, "m_run": 7.5})
    options = neighbours(base, trial, TuneSettings(latency_budget_ms=50, concurrency=4), floor=8, prefix="m_")
    changes = [change for change, _ in options]
    assert changes[0].startswith("+1 pre instance") and options[0][1]["m_pre"].instances == 2
    assert any("run delay 0→100" in c for c in changes)
    grown = [c for change, c in options if "max_batch_size 8→16" in change]  # batches ran full
    assert grown and grown[0]["m_run"].preferred_batch_sizes == (16,)
    assert all(not c.problems(8) for _, c in options)
    assert not any("8→4" in c for c in changes)  # never below the ensemble's max_batch_size
    delayed = base.with_model("m_run", max_queue_delay_us=200)
    more = [change for change, _ in neighbours(delayed, trial, TuneSettings(latency_budget_ms=50, concurrency=4), 8, "m_")]
    assert any("delay 200→400" in c for c in more) and any("delay 200→100" in c for c in more)
    assert any("preferred batch [8]→[4]" in c for c in more)


def test_encoded_image_model_without_images_is_one_error_line(explicit_server):
    url, _ = explicit_server
    proc = run_cli("tune", NAME, "--url", url, "--latency-budget", "50", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error:") and proc.stderr.strip().count("\n") == 0
    assert "--images DIR" in proc.stderr
