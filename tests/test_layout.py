"""The library's layout: what DVC watches is what each stage imports, and data flows one way."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evalstack.core.fingerprint import import_closure

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
# a project made from the template may hold one profile only
PROFILES = tuple(path for path in (REPO / "dvc.yaml", REPO / "detection/dvc.yaml") if path.exists())
# Data flows down this list: a subpackage may import an earlier one (or config), never a later one.
FLOW = ("core", "cache", "sources", "fetch", "preprocess", "models", "evaluation", "reporting", "detection", "demo")


def _is_empty(path: Path) -> bool:
    """A module with nothing but a docstring runs no code: it cannot change a result."""
    body = ast.parse(path.read_text()).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return not body


def _stage_definitions(dvc_yaml: Path) -> dict[str, dict]:
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def _resolved(path: str) -> str:
    full = (REPO / path).resolve()
    return full.relative_to(REPO).as_posix() if full.is_relative_to(REPO) else os.path.normpath(path)


def uncovered_modules(dvc_yaml: Path, profile_dir: str = "") -> dict[str, list[str]]:
    """Per stage: modules its script imports (transitively, inside evalstack) that no dep of it covers.

    Dep paths are relative to the dvc.yaml, which sits in `profile_dir` of the project."""
    missing: dict[str, list[str]] = {}
    for name, stage in _stage_definitions(dvc_yaml).items():
        # resolved: the detection project reaches the library through its `src` symlink
        deps = [_resolved(os.path.join(profile_dir, dep)) for dep in stage["deps"]]
        script = next(dep for dep in deps if dep.startswith("stages/") and dep.endswith(".py"))
        for module in import_closure([REPO / script], follow_strings=True).values():
            if _is_empty(module.path):
                continue
            relative = module.path.resolve().relative_to(REPO).as_posix()
            if not any(relative == dep or relative.startswith(dep + "/") for dep in deps):
                missing.setdefault(name, []).append(relative)
    return missing


@pytest.mark.parametrize("dvc_yaml", PROFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_module_a_stage_imports_is_a_dvc_dependency(dvc_yaml: Path):
    missing = uncovered_modules(dvc_yaml, str(dvc_yaml.parent.relative_to(REPO)).replace(".", ""))
    assert not missing, f"{dvc_yaml.name}: add these to the stages' deps (folders):\n" + "\n".join(
        f"  {stage}: {', '.join(modules)}" for stage, modules in missing.items())


@pytest.mark.parametrize("dvc_yaml", PROFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_stage_that_runs_a_model_in_batches_tracks_the_batch_size(dvc_yaml: Path):
    # infer.batch_size is in the predictions and candidates keys (models/predictions.py): a stage that runs the
    # model in batches of it and does not track it would keep a layer computed at the old size.
    scripts_reading_it = {script.relative_to(REPO).as_posix() for script in (REPO / "stages").rglob("*.py")
                          if "infer_batch_size(" in script.read_text()}
    stages = _stage_definitions(dvc_yaml)
    running = {name for name, stage in stages.items()
               if any(_resolved(os.path.join(str(dvc_yaml.parent.relative_to(REPO)).replace(".", ""), dep))
                      in scripts_reading_it for dep in stage["deps"])}
    assert running, "no stage reads infer.batch_size"
    untracked = sorted(name for name in running if "infer.batch_size" not in (stages[name].get("params") or [])
                       and "infer" not in (stages[name].get("params") or []))
    exempt = {"evaluate"}  # detection evaluate reads it only to name the key its input layers carry (they rerun)
    assert set(untracked) <= exempt, f"{dvc_yaml.name}: add infer.batch_size to the params of {untracked}"


def test_every_detection_stage_that_loads_a_detector_tracks_the_pm_configs_folder():
    # A torchvision detector's `pm_config` JSON is read from detection/pm_configs/ (torchvision_adapter.py): a
    # stage that loads detectors and does not track the folder would keep results checked against an old config.
    dvc_yaml = REPO / "detection/dvc.yaml"
    if not dvc_yaml.exists():
        pytest.skip("no detection profile in this project")
    loading = {name for name, stage in _stage_definitions(dvc_yaml).items()
               if any(dep.startswith("../stages/") and dep.endswith(".py")
                      and any(module in import_closure([REPO / "detection" / dep], follow_strings=True)
                              for module in ("evalstack.detection.adapter", "evalstack.detection.signatures"))
                      for dep in stage["deps"])}
    assert loading >= {"infer", "grid", "evaluate"}
    untracked = sorted(name for name in loading if "pm_configs" not in [str(dep).split()[0]
                                                                        for dep in _stage_definitions(dvc_yaml)[name]["deps"]])
    assert untracked == [], f"detection/dvc.yaml: add pm_configs to the deps of {untracked}"
    assert (REPO / "detection/pm_configs").is_dir()  # a dependency DVC must find in every project


@pytest.mark.skipif(not PROFILES, reason="no dvc.yaml")
def test_removing_a_folder_from_a_stages_deps_is_caught(tmp_path: Path):
    dvc_yaml = PROFILES[0]  # the root profile, or detection/ in a project made with that profile only
    scratch = tmp_path / "dvc.yaml"
    stages = yaml.safe_load(dvc_yaml.read_text())
    deps = stages["stages"]["preprocess"]["do"]["deps"]
    deps.remove("src/evalstack/preprocess")
    scratch.write_text(yaml.safe_dump(stages))
    missing = uncovered_modules(scratch, str(dvc_yaml.parent.relative_to(REPO)).replace(".", ""))
    assert set(missing) == {"preprocess"}
    assert "src/evalstack/preprocess/pipelines.py" in missing["preprocess"]
    assert "src/evalstack/preprocess/regions.py" in missing["preprocess"]  # imported by pipelines.py only


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in FLOW else None


def test_data_flows_one_way_between_subpackages():
    backwards = []
    for path in sorted((SRC / "evalstack").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        own = _package_of(module)
        if own is None:
            continue
        for imported in import_closure([module]):
            theirs = _package_of(imported)
            if theirs is not None and FLOW.index(theirs) > FLOW.index(own):
                backwards.append(f"{module} → {imported}")
                break
    assert not backwards, "imports against the data flow:\n" + "\n".join(backwards)


def test_config_and_core_import_no_later_package():
    for root in ("evalstack.config", "evalstack.core.layers", "evalstack.core.kinds"):
        later = [m for m in import_closure([root]) if _package_of(m) not in (None, "core")]
        assert not later, f"{root} pulls in {later}"


def test_evaluation_never_imports_a_framework_adapter():
    modules = [".".join(p.relative_to(SRC).with_suffix("").parts)
               for p in sorted((SRC / "evalstack/evaluation").glob("*.py"))]
    for module in modules:
        adapters = [m for m in import_closure([module]) if m.startswith("evalstack.models.adapters")]
        assert not adapters, f"{module} imports {adapters}"


def test_a_kind_constant_or_config_costs_no_heavy_import():
    probe = ("import sys, evalstack.core.kinds, evalstack.config; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & "
             "{'PIL', 'requests', 'torch', 'tensorflow', 'h5py', 'numpy', 'scipy', 'pandas', 'onnxruntime'}))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_few_top_level_modules():
    top = sorted(p.name for p in (SRC / "evalstack").glob("*.py"))
    assert len(top) <= 8, top
