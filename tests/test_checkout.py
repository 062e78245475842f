"""The code that runs is the checkout's own: two clones sharing one environment (issue 24, item 1).

The environment's editable install points at one clone's `src/`; a stage script or the `evalstack`
command run in another clone must run that clone's `src/` (what DVC records as the stage's deps).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import evalstack
from tests.conftest import REPO


def second_clone(root: Path) -> Path:
    """The library and stage scripts of this checkout, copied to another path: a clone without its own venv."""
    for name in ("src", "stages"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / ".dvc").mkdir()
    return root


def run_without_pythonpath(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(args, cwd=cwd, env=environment, capture_output=True, text=True)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path} no longer contains {old!r}: update this test's edit"
    path.write_text(text.replace(old, new))


def test_a_stage_of_a_second_clone_runs_that_clones_code(tmp_path: Path):
    clone = second_clone(tmp_path / "clone2")
    assert Path(evalstack.__file__).resolve().parent != clone / "src/evalstack"
    edit(clone / "src/evalstack/core/names.py", "outside the project", "outside THIS CLONE's project")
    result = run_without_pythonpath(clone, sys.executable, "stages/export_onnx.py", "--out", "../x.onnx",
                                    "--source", "m.pt2", "--name", "m")
    assert result.returncode == 2
    assert "outside THIS CLONE's project" in result.stderr, result.stderr


def test_the_evalstack_command_in_a_second_clone_runs_that_clones_code(tmp_path: Path):
    clone = second_clone(tmp_path / "clone2")
    edit(clone / "src/evalstack/cli/doctor.py", '"doctor: no problems found"', '"doctor: THIS CLONE found nothing"')
    (clone / "params.yaml").write_text("{}\n")
    command = shutil.which("evalstack", path=str(Path(sys.executable).parent))
    result = run_without_pythonpath(clone, command, "doctor", "--min-free", "1")
    assert result.stdout.splitlines()[-1] == "doctor: THIS CLONE found nothing", result.stdout


def test_code_outside_a_checkout_keeps_the_package_it_imported(tmp_path: Path):
    result = run_without_pythonpath(tmp_path, sys.executable, "-c", "import evalstack; print(evalstack.__file__)")
    assert result.stdout.strip() == str(Path(evalstack.__file__))
