"""Smoke tests of this project's wiring, quick enough for every `make test` of a project made from the template.

A project made with `copier copy` keeps these and tests/test_layout.py (the template's own suite,
end to end included, runs in the template's CI): its params load, every stage resolves, and
every stage script imports.
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILES = [path for path in (REPO, REPO / "detection") if (path / "dvc.yaml").exists()]


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name or "root")
def test_params_load_and_every_stage_resolves(profile: Path):
    from evalstack.config import load_params

    load_params(profile / "params.yaml")  # refuses names DVC cannot see, bad model entries, …
    listed = subprocess.run([sys.executable, "-m", "dvc", "stage", "list"], cwd=profile, capture_output=True,
                            text=True)
    assert listed.returncode == 0, listed.stderr
    declared = yaml.safe_load((profile / "dvc.yaml").read_text())["stages"]
    assert all(any(line.split()[0].split("@")[0] == name for line in listed.stdout.splitlines()) for name in declared
               if "foreach" not in declared[name]), listed.stdout


@pytest.mark.parametrize("script", sorted((REPO / "stages").rglob("*.py")), ids=lambda p: p.stem)
def test_every_stage_script_imports(script: Path):
    spec = importlib.util.spec_from_file_location(f"stage_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports only: main() runs under __main__
    assert callable(module.main)
