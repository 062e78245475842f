"""The README's first screen is what a fresh build of the default params prints (issue 24, item 14).

The figures in the README are written by `tools/readme_first_screen.py` from `evalstack summary` of a
real run; this test builds the default project from nothing (400 cards, every stage: ~4 minutes on
2 cores) and fails when the README's block differs. The light install (`make repro`, torch 2.13.0 CPU)
and the detection install this test runs in (torch 2.14.1) gave the same figures (2026-12-04).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e import REPO, env, make_project, run

pytestmark = pytest.mark.slow


def test_the_readme_first_screen_equals_a_fresh_build_of_the_default(tmp_path: Path):
    project = make_project(tmp_path / "project", tiny=False)
    run(project, "dvc", "repro")
    run(project, sys.executable, "-m", "evalstack.cli", "report", "--project", str(project))  # as `make repro` does
    check = subprocess.run([sys.executable, str(REPO / "tools/readme_first_screen.py"), "--project", str(project),
                            "--check"], cwd=project, env=env(project), capture_output=True, text=True)
    assert check.returncode == 0, (
        f"{check.stdout}{check.stderr}\nregenerate it: make repro && python tools/readme_first_screen.py")
