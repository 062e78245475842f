"""Expected failures end a stage with one line and the fix, no traceback (issue 24, item 9)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evalstack.core.atomic import DiskFullError
from evalstack.core.failures import run_stage
from tests.conftest import REPO


def test_a_full_disk_in_a_stage_is_one_line_with_the_fix(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVALSTACK_DEBUG", raising=False)

    def main():
        raise DiskFullError(tmp_path / "data/preprocessed/pad_nn/00000.h5", 1200)

    with pytest.raises(SystemExit) as ended:
        run_stage(main)
    assert ended.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.match(r"\S+: DiskFullError: \[Errno 28\] no space left on the disk holding ", err.splitlines()[0])
    assert "`evalstack doctor`" in err.splitlines()[0] and err.splitlines()[1] == "(traceback: EVALSTACK_DEBUG=1)"


def test_a_bug_keeps_its_traceback_and_debug_keeps_every_traceback(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ZeroDivisionError):
        run_stage(lambda: 1 / 0)
    monkeypatch.setenv("EVALSTACK_DEBUG", "1")
    with pytest.raises(DiskFullError):
        run_stage(lambda: (_ for _ in ()).throw(DiskFullError(tmp_path / "x.h5", 10)))


def stage(cwd: Path, script: str, *args: str, **environment: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "EVALSTACK_DEBUG"} | environment
    env["PYTHONPATH"] = str(REPO / "src")
    return subprocess.run([sys.executable, str(REPO / "stages" / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_a_real_stage_with_a_missing_input_says_one_line(tmp_path: Path):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    result = stage(tmp_path, "preprocess.py", "--pipeline", "pad_nn", "--raw", "data/raw",
                   "--out", "data/preprocessed/pad_nn")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("preprocess: StoreError: data/raw is not a finished layer (no index.json); "
                                    "run the stage that produces it"), result.stderr
    debug = stage(tmp_path, "preprocess.py", "--pipeline", "pad_nn", "--raw", "data/raw",
                  "--out", "data/preprocessed/pad_nn", EVALSTACK_DEBUG="1")
    assert "Traceback" in debug.stderr


def test_a_stage_run_by_hand_names_an_empty_dvc_lock(tmp_path: Path):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "dvc.lock").write_text("")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    result = stage(tmp_path, "preprocess.py", "--pipeline", "pad_nn", "--raw", "data/raw",
                   "--out", "data/preprocessed/pad_nn")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "preprocess: EmptyLockError: " in result.stderr and "dvc.lock is empty: DVC was stopped" in result.stderr
    assert "`git checkout dvc.lock`" in result.stderr and "`evalstack doctor`" in result.stderr
