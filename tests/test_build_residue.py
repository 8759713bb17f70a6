"""A build that fails, is stopped or is killed leaves nothing behind and never a half model:
early checks refuse bad paths and names before any work, killed builds' staging and temporary
directories are removed by the next build, children die with the build, a repository is
consistent whenever a build is SIGKILLed (between any two renames too)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tritongen.emit import plan_models, remove_residue, write_repository
from tritongen.emit.pbtxt import read_configs
from tritongen.emit.repository import STAGING_PREFIX, SWAP_FILE
from tritongen.intake import load_model
from tritongen.residue import Owner, current_owner, last_error_line

TRITONGEN = Path(sys.executable).parent / "tritongen"  # the installed console script, as a user runs it


def start_build(*args, tmpdir: Path) -> subprocess.Popen:
    """`tritongen build` with its own TMPDIR: every temporary directory and every child's command
    line (paddle2onnx writes into the build's temp dir) names ``tmpdir``."""
    tmpdir.mkdir(exist_ok=True)
    return subprocess.Popen([str(TRITONGEN), "build", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmpdir)})


def processes_naming(text: str) -> list[str]:
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines()[1:] if text in line and " Z" not in line and "ps -ww" not in line]


def build_temp_dirs(tmpdir: Path) -> list[str]:
    return sorted(p.name for p in tmpdir.glob("tritongen-*"))


def error_lines(stderr: str) -> list[str]:
    """stderr without the progress lines ('- reading ...')."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("- ")]


def assert_consistent(repo: Path) -> dict:
    """Every model directory has a config.pbtxt that parses; the parsed configs."""
    dirs = sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    configs = read_configs(repo)
    assert sorted(configs) == dirs, f"model dirs without a config: {set(dirs) - set(configs)}"
    return configs


def missing_steps(configs: dict) -> list[str]:
    """Models an ensemble in ``configs`` runs that the repository lacks."""
    return [step.model_name for config in configs.values() for step in config.ensemble_scheduling.step
            if step.model_name not in configs]


def snapshot(repo: Path) -> dict[str, str]:
    """What a repository serves: every config.pbtxt and build record, by path."""
    return {str(p.relative_to(repo)): p.read_text() for p in sorted(repo.glob("*/*"))
            if p.name in ("config.pbtxt", "tritongen_build.json")}


def dead_owner() -> Owner:
    """An owner on this machine whose process has exited (and was reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    me = current_owner()
    return Owner(me.host, me.boot, proc.pid, 12345)


# ------------------------------------------------------------------------------ early checks


@pytest.mark.parametrize("case", ["proc", "sys", "file", "under_file", "long_name", "bad_name"])
def test_bad_output_or_name_fails_at_once_with_one_error_line(clas_export, tmp_path, case):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    output, name = {
        "proc": ("/proc/x", None), "sys": ("/sys/x", None), "file": (afile, None), "under_file": (afile / "repo", None),
        "long_name": (tmp_path / "repo", "a" * 300), "bad_name": (tmp_path / "repo", "no spaces"),
    }[case]
    tmpdir = tmp_path / "tmp"
    proc = start_build(clas_export, "-o", output, *(["--name", name] if name else []), tmpdir=tmpdir)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert {"long_name": "300 characters", "bad_name": "model name"}.get(case, "cannot write the repository") in lines[0]
    # Nothing of the build ran: the model was not even read, no temp dir was made.
    assert "- reading" not in stderr and build_temp_dirs(tmpdir) == []
    assert not (tmp_path / "repo").exists() and afile.read_text() == "not a directory"


def test_existing_model_without_force_fails_before_the_conversion(clas_export, tmp_path):
    repo = tmp_path / "repo"
    (repo / "clf").mkdir(parents=True)
    (repo / "clf" / "config.pbtxt").write_text('name: "clf"\n')
    tmpdir = tmp_path / "tmp"
    proc = start_build(clas_export, "-o", repo, "--name", "clf", tmpdir=tmpdir)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and error_lines(stderr) == [f"error: {repo} already holds clf; pass --force to replace it"], stderr
    assert build_temp_dirs(tmpdir) == [] and (repo / "clf" / "config.pbtxt").read_text() == 'name: "clf"\n'


# ------------------------------------------------------------- what killed builds left behind


def test_next_build_removes_dead_builds_staging_and_temp_dirs(clas_export, tmp_path):
    repo, tmpdir = tmp_path / "repo", tmp_path / "tmp"
    repo.mkdir()
    tmpdir.mkdir()
    dead, me = dead_owner(), current_owner()
    elsewhere = Owner("ffffffff", me.boot, dead.pid, dead.start)  # another machine's (shared filesystem)
    stale = [repo / f"{STAGING_PREFIX}{dead.tag}abc", tmpdir / f"tritongen-build-{dead.tag}abc",
             repo / f"{STAGING_PREFIX}0123abcd"]  # unnamed (older tritongen), not touched for 2 hours
    kept = [repo / f"{STAGING_PREFIX}{me.tag}abc", repo / f"{STAGING_PREFIX}{elsewhere.tag}abc",
            tmpdir / f"tritongen-build-{me.tag}abc", repo / f"{STAGING_PREFIX}4567cdef"]  # a fresh unnamed one
    for path in stale + kept:
        (path / "m" / "1").mkdir(parents=True)
        (path / "m" / "config.pbtxt").write_text("half written")
    os.utime(stale[2], (time.time() - 7200,) * 2)

    proc = start_build(clas_export, "-o", repo, "--backend", "python-paddle", tmpdir=tmpdir)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert [p.name for p in stale if p.exists()] == []
    assert [p.name for p in kept if not p.exists()] == []
    assert build_temp_dirs(tmpdir) == [f"tritongen-build-{me.tag}abc"]  # the build's own is gone too


# ------------------------------------------------------- SIGKILL between any two renames


def _plan(export: Path, layout: str):
    spec = load_model(export, name="m")
    return plan_models(spec, "python-paddle", "m", None, layout=layout, instances=1)


def _write_killed_at(models, repo: Path, kill_at: int) -> int:
    """write_repository(models, repo, force=True) in a forked child SIGKILLed just before the
    ``kill_at``-th of its renames, its removal of swap.json and of the staging directory; its exit status."""
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery, only the write
        try:
            calls = iter(range(1, 1000))

            def deadly(original, counts=lambda path: True):
                def call(path, *args, **kwargs):
                    if counts(Path(path)) and next(calls) == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return original(path, *args, **kwargs)
                return call

            Path.rename = deadly(Path.rename)
            Path.unlink = deadly(Path.unlink, lambda path: path.name == SWAP_FILE)
            shutil.rmtree = deadly(shutil.rmtree, lambda path: path.name.startswith(STAGING_PREFIX))
            write_repository(models, repo, force=True)
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


@pytest.mark.parametrize("old_layout,new_layout", [("ensemble", "ensemble"), ("ensemble", "fused"),
                                                   ("fused", "ensemble")])
def test_build_killed_between_any_two_renames_is_undone_by_the_next(clas_export, tmp_path, old_layout, new_layout):
    old_models, new_models = _plan(clas_export, old_layout), _plan(clas_export, new_layout)
    write_repository(old_models, tmp_path / "old")
    old = snapshot(tmp_path / "old")
    kill_at, outcomes = 1, []
    while True:
        repo = tmp_path / f"repo{kill_at}"
        shutil.copytree(tmp_path / "old", repo)
        status = _write_killed_at(new_models, repo, kill_at)
        if not os.WIFSIGNALED(status):  # the write ran to its end: every moment was tried
            assert os.WEXITSTATUS(status) == 0
            break
        configs = assert_consistent(repo)  # at the moment of the kill: every model dir present is whole,
        assert len(missing_steps(configs)) <= 1  # at most one in transit (moved aside, new one not yet in)
        staging = list(repo.glob(f"{STAGING_PREFIX}*"))
        assert len(staging) == 1
        swapping = (staging[0] / SWAP_FILE).exists()
        remove_residue(repo)  # what the next build does first
        assert not list(repo.glob(".tritongen-*"))
        assert_consistent(repo)
        after = snapshot(repo)
        if swapping:  # killed mid-swap: undone
            assert after == old, f"kill at {kill_at}"
        else:  # killed after the swap (removing the replaced models): the new build is complete
            assert set(after) == {f"{m.name}/config.pbtxt" for m in new_models} | {"m/tritongen_build.json"}
        outcomes.append("old" if swapping else "new")
        kill_at += 1
    # Killed before each rename and before removing swap.json: undone; before removing the staging: done.
    assert outcomes == ["old"] * (len(outcomes) - 1) + ["new"] and len(outcomes) >= len(new_models) + 2


def test_exception_during_swap_restores_the_repository(clas_export, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    write_repository(_plan(clas_export, "ensemble"), repo)
    old = snapshot(repo)
    original, calls = Path.rename, []

    def failing(self, target):
        calls.append(self)
        if len(calls) == 4:  # the old ensemble moved aside, the fused model in, one composing model out
            raise KeyboardInterrupt
        return original(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(KeyboardInterrupt):
        write_repository(_plan(clas_export, "fused"), repo, force=True)
    monkeypatch.undo()
    assert snapshot(repo) == old and not list(repo.glob(".tritongen-*"))


# --------------------------------------------------------------- killed and stopped builds


def test_sigkilled_builds_leave_no_children_and_a_consistent_repository(clas_export, tmp_path):
    repo, tmpdir = tmp_path / "repo", tmp_path / "tmp"
    args = (clas_export, "-o", repo, "--name", "m", "--layout", "ensemble", "--instances", "1", "--force")
    first = start_build(*args, tmpdir=tmpdir)
    assert first.wait(300) == 0, first.stderr.read()
    old = snapshot(repo)
    seen = {}
    for moment in (0.5, 1.5, "child", "staging"):
        proc = start_build(*args, tmpdir=tmpdir)
        started = time.monotonic()
        while proc.poll() is None and time.monotonic() < started + 120:
            if isinstance(moment, float):
                if time.monotonic() - started >= moment:
                    break
            elif moment == "child" and processes_naming(f"{tmpdir}/tritongen-build-"):
                break  # paddle2onnx runs (its command line names the build's temp dir)
            elif moment == "staging" and any(p.name.startswith(STAGING_PREFIX) for p in os.scandir(repo)):
                break
            time.sleep(0.001 if moment == "staging" else 0.02)
        seen[moment] = proc.poll() is None
        proc.kill()
        proc.wait()
        for _ in range(10):  # the kernel SIGKILLs the children as their parent dies (an orphan would live on for
            if not processes_naming(str(tmpdir)):  # seconds: paddle2onnx takes that long to import and convert)
                break
            time.sleep(0.05)
        assert processes_naming(str(tmpdir)) == [], f"orphans after a kill at {moment}"
        configs = assert_consistent(repo)
        assert sorted(configs) == ["m", "m_postprocess", "m_preprocess", "m_runtime"]
        assert snapshot(repo) == old, f"a kill at {moment} changed the repository"
    assert seen == {0.5: True, 1.5: True, "child": True, "staging": True}, seen  # each moment came while it ran
    final = start_build(*args, tmpdir=tmpdir)
    assert final.wait(300) == 0, final.stderr.read()
    assert not list(repo.glob(".tritongen-*")) and build_temp_dirs(tmpdir) == []
    assert_consistent(repo)


def test_sigterm_unwinds_the_build(clas_export, tmp_path):
    repo, tmpdir = tmp_path / "repo", tmp_path / "tmp"
    proc = start_build(clas_export, "-o", repo, tmpdir=tmpdir)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not processes_naming(f"{tmpdir}/tritongen-build-") and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # while paddle2onnx runs
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert error_lines(stderr) == ["error: stopped by SIGTERM"]
    assert build_temp_dirs(tmpdir) == [] and processes_naming(str(tmpdir)) == []
    assert not repo.exists() or not list(repo.iterdir())


# ----------------------------------------------------------------------- a child's error


def test_truncated_params_is_one_error_line_without_paddle2onnx_traceback(clas_export, tmp_path):
    export = tmp_path / "truncated"
    shutil.copytree(clas_export, export)
    params = export / "inference.pdiparams"
    params.write_bytes(params.read_bytes()[:100])
    proc = start_build(export, "-o", tmp_path / "repo", tmpdir=tmp_path / "tmp")
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in stderr and 'File "' not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: paddle2onnx failed"), stderr
    assert "inference.pdiparams" in lines[0]
    assert build_temp_dirs(tmp_path / "tmp") == []


def test_last_error_line_of_a_traceback():
    text = ('Traceback (most recent call last):\n  File "<string>", line 5, in <module>\n'
            '    onnx_model_str = c_p2o.export(\n                     ^^^^^^\nIndexError: Input fc_0.w_0 is undefined!\n')
    assert last_error_line(text) == "IndexError: Input fc_0.w_0 is undefined!"
    assert last_error_line("loading\nsomething odd happened\n") == "something odd happened"
    assert last_error_line("") == "no output"
    assert len(last_error_line("x" * 900)) == 503
