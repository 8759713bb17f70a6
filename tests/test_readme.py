"""The README's commands, run as a user runs them."""
from __future__ import annotations

import os
import re
import subprocess

from .conftest import REPO_ROOT, free_port, pid_children_alive

README = (REPO_ROOT / "README.md").read_text()


def test_ci_runs_exactly_the_readme_commands():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    setup, test = blocks[0].strip(), blocks[2].strip()
    ci = (REPO_ROOT / ".ci/run").read_text()
    assert setup == "bash scripts/setup.sh" and setup in ci
    assert test in ci.splitlines()


def test_demo_script_runs_offline_end_to_end(tmp_path):
    env = {**os.environ, "DEMO_DIR": str(tmp_path / "demo"), "GRPC_PORT": str(free_port()),
           "HTTP_PORT": str(free_port()), "METRICS_PORT": str(free_port()), "COLUMNS": "200"}
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts/demo.sh")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The colour classifier's answers on real photos: coffee is brown, the astronaut's suit gray.
    assert re.search(r"coffee\.png.*?\n.*?1 │\s+10 │ [\d.]+ │ brown", proc.stdout, re.S), proc.stdout
    assert re.search(r"astronaut\.png\n\s+8\s+[\d.]+\s+gray", proc.stdout), proc.stdout
    assert not pid_children_alive(str(tmp_path / "demo" / "repo")), "demo left server processes behind"
