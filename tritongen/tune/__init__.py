"""``tritongen tune``: Model Analyzer's idea, for ensembles, against a running server.

    result = tune("resnet50", url="127.0.0.1:8001", settings=TuneSettings(latency_budget_ms=50), images="photos/")
    print(result.chosen.candidate.describe())      # the server now serves it
    write_configs("model_repository", result)      # and the repository says so

The server must run in explicit model-control mode (``tritongen serve --model-control
explicit``, or any tritonserver with ``--model-control-mode=explicit``): each configuration is
loaded through Triton's model-control API with a config override (composing models first, then
the ensemble; control.py), measured with ``tritongen perf`` at a concurrency that loads the
server, and the search hill-climbs from the served configuration (search.py). report.py prints
the table and draws the chart; write.py updates config.pbtxt files atomically.
"""
from .candidate import Candidate, ModelSettings, TuneError
from .control import ModelControl, TuneTarget
from .report import plot_trials, trials_table
from .search import Objective, Trial, TuneResult, TuneSettings, default_concurrency, neighbours, tune
from .write import WrittenConfig, write_configs

__all__ = [
    "Candidate", "ModelSettings", "TuneError", "ModelControl", "TuneTarget", "Objective", "Trial", "TuneResult",
    "TuneSettings", "default_concurrency", "neighbours", "tune", "trials_table", "plot_trials", "write_configs",
    "WrittenConfig",
]
