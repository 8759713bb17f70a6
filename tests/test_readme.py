"""The README's commands, run as a user runs them."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from .conftest import REPO_ROOT, free_port, pid_children_alive

README = (REPO_ROOT / "README.md").read_text()


def setup_section() -> str:
    start = README.index("## Setup, demo, tests\n")
    end = README.index("\n## ", start + 1)
    return README[start:end]


def commands(path) -> list[str]:
    """A bash script's commands: its lines without the shebang, comments, `set` and the `cd` to the repo."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "set -", 'cd "$(dirname'))]


def test_readme_has_two_commands_demo_then_tests():
    blocks = [b.strip() for b in re.findall(r"```bash\n(.*?)```", setup_section(), re.S)]
    assert blocks == ["bash scripts/demo.sh", "bash scripts/test.sh"]


def test_ci_runs_exactly_the_readme_test_command():
    test = re.findall(r"```bash\n(.*?)```", setup_section(), re.S)[1].strip()
    assert commands(REPO_ROOT / ".ci/run") == [test]


def test_demo_and_tests_set_up_when_needed_then_run():
    assert commands(REPO_ROOT / "scripts/test.sh") == [
        "bash scripts/setup.sh --if-needed", 'exec .venv/bin/python -m pytest -q "$@"']
    assert commands(REPO_ROOT / "scripts/demo.sh")[0] == "bash scripts/setup.sh --if-needed"


@pytest.fixture
def checkout(tmp_path):
    """A copy of what setup reads, with a fake `.venv` whose python runs: never the real one."""
    (tmp_path / "scripts").mkdir()
    for name in ("pyproject.toml", "scripts/setup.sh"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    for venv in (".venv", ".venv-kserve"):
        python = tmp_path / venv / "bin/python"
        python.parent.mkdir(parents=True)
        python.write_text("#!/bin/sh\nexit 0\n")
        python.chmod(0o755)
    return tmp_path


def setup_sh(checkout, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(checkout / "scripts/setup.sh"), *args], capture_output=True, text=True,
                          timeout=60)


def test_setup_check_says_stale_unless_the_stamp_matches(checkout):
    stamp = checkout / ".venv/.tritongen-setup"
    check = setup_sh(checkout, "--check")
    assert check.returncode == 1 and "stale: .venv has no setup stamp" in check.stdout

    stamp.write_text(setup_sh(checkout, "--digest").stdout)
    assert setup_sh(checkout, "--check").returncode == 0
    assert setup_sh(checkout, "--if-needed").returncode == 0  # current: sets nothing up

    stamp.write_text("0" * 64 + "\n")
    check = setup_sh(checkout, "--check")
    assert check.returncode == 1 and "changed since the last setup" in check.stdout

    # Anything that defines the environment changing makes it stale.
    stamp.write_text(setup_sh(checkout, "--digest").stdout)
    with open(checkout / "pyproject.toml", "a") as f:
        f.write("\n# a new pin\n")
    assert setup_sh(checkout, "--check").returncode == 1

    stamp.write_text(setup_sh(checkout, "--digest").stdout)
    (checkout / ".venv/bin/python").write_text("#!/bin/sh\nexit 1\n")
    check = setup_sh(checkout, "--check")
    assert check.returncode == 1 and "python does not run" in check.stdout

    (checkout / ".venv/bin/python").write_text("#!/bin/sh\nexit 0\n")
    shutil.rmtree(checkout / ".venv-kserve")
    check = setup_sh(checkout, "--check")
    assert check.returncode == 1 and ".venv-kserve" in check.stdout

    shutil.rmtree(checkout / ".venv")
    check = setup_sh(checkout, "--check")
    assert check.returncode == 1 and "no .venv" in check.stdout


def test_the_real_environment_is_set_up_and_current():
    """The suite runs through scripts/test.sh, which set up first: the stamp matches."""
    check = subprocess.run(["bash", str(REPO_ROOT / "scripts/setup.sh"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, f"{check.stdout.strip()}: run bash scripts/test.sh (it sets up first)"


def test_demo_script_runs_offline_end_to_end(tmp_path):
    env = {**os.environ, "DEMO_DIR": str(tmp_path / "demo"), "GRPC_PORT": str(free_port()),
           "HTTP_PORT": str(free_port()), "METRICS_PORT": str(free_port()), "COLUMNS": "200"}
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts/demo.sh")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The colour classifier's answers on real photos: coffee is brown, the astronaut's suit gray.
    assert re.search(r"coffee\.png.*?\n.*?1 │\s+10 │ [\d.]+ │ brown", proc.stdout, re.S), proc.stdout
    assert re.search(r"astronaut\.png\n\s+8\s+[\d.]+\s+gray", proc.stdout), proc.stdout
    assert not pid_children_alive(str(tmp_path / "demo" / "repo")), "demo left server processes behind"
