"""A stage run by DVC refuses an input none of its deps covers: DVC would skip it after an edit of that input."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evalstack.cache.tracked import Input, UntrackedInputError, check_tracked, code_files, running_stage
from evalstack.sources.catalog import SourceConfig

PIPELINE = {"stages": {"preprocess": {"foreach": {"thumb64": {}, "gray64": {}}, "do": {
    "cmd": "python stages/preprocess.py --pipeline ${key}",
    "deps": ["stages/preprocess.py", "src/evalstack/core", "src/evalstack/preprocess", "data/raw"]}},
    "fetch": {"cmd": "python stages/fetch.py", "deps": ["stages/fetch.py", "data/source"]}}}


def _project(root: Path) -> Path:
    (root / "src/lab").mkdir(parents=True)
    (root / "src/lab/__init__.py").write_text("")
    (root / "src/lab/graypipe.py").write_text("GAIN = 1.0\n")
    (root / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE))
    return root


def _source(kind: str, **fields) -> list:
    return SourceConfig(kind=kind, **fields).local_files()


def test_outside_dvc_nothing_is_checked(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert running_stage() is None
    check_tracked([("code", tmp_path / "anything.py")])


def test_a_users_module_no_dep_covers_is_refused_until_a_dep_covers_it(tmp_path: Path, monkeypatch):
    root = _project(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.setenv("DVC_STAGE", "preprocess@gray64")
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root / "src"))
    code = {"lab.graypipe": "y", "installed:numpy": "2.4 z"}
    assert [(item.what, item.path) for item in code_files(code)] == [("code", root / "src/lab/graypipe.py")]
    stage = running_stage()
    assert stage.name == "preprocess@gray64" and root.resolve() / "data/raw" in stage.deps
    with pytest.raises(UntrackedInputError, match=r"preprocess@gray64 reads code src/lab/graypipe.py, which none of "
                                                  r"its deps in dvc.yaml covers.*Add `- src/lab` to the stage's deps"):
        check_tracked(code_files(code))
    PIPELINE["stages"]["preprocess"]["do"]["deps"].append("src/lab")
    try:
        (root / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE))
        from evalstack.cache import tracked
        tracked._find_stage.cache_clear()
        check_tracked(code_files(code))
    finally:
        PIPELINE["stages"]["preprocess"]["do"]["deps"].remove("src/lab")
        tracked._find_stage.cache_clear()


def test_the_stage_is_found_from_where_it_runs_not_from_where_dvc_was_started(tmp_path: Path, monkeypatch):
    """DVC_STAGE's file part is relative to where `dvc` started (`cd stages && dvc repro ../dvc.yaml` gives
    ../dvc.yaml:fetch); a stage that cannot be found is refused, never taken as checked."""
    from evalstack.cache import tracked

    root = _project(tmp_path)
    (root / ".dvc").mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("DVC_STAGE", "../dvc.yaml:fetch")
    tracked._find_stage.cache_clear()
    with pytest.raises(UntrackedInputError, match="fetch reads the folder source cards"):
        check_tracked([("the folder source", root / "cards")])
    monkeypatch.setenv("DVC_STAGE", "elsewhere")
    with pytest.raises(UntrackedInputError, match="cannot tell which dvc.yaml stage 'elsewhere'"):
        check_tracked([("the folder source", root / "cards")])
    tracked._find_stage.cache_clear()


def test_a_local_source_is_tracked_and_a_server_is_not_asked_for(tmp_path: Path, monkeypatch):
    from evalstack.cache import tracked

    root = _project(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.setenv("DVC_STAGE", "fetch")
    monkeypatch.chdir(root)
    tracked._find_stage.cache_clear()
    assert _source("pad_api", url="https://pad.example/api") == []
    assert _source("registry", registries={"dev": "https://pad.example/dev.csv"}) == []
    assert _source("registry", registries={"dev": "file:///data/my%20cards/dev.csv"}) == [
        ("the dev registry", Path("/data/my cards/dev.csv"))]  # the file fetch reads, not a path with %20 in it
    check_tracked(_source("registry", registries={"dev": "data/source/metadata_dev.csv"}))
    with pytest.raises(UntrackedInputError, match="fetch reads the folder source cards"):
        check_tracked(_source("folder", folder="cards"))
    with pytest.raises(UntrackedInputError, match=r"fetch reads the dev registry registry/dev.csv, the test registry "
                                                  r"/elsewhere/test.csv.*Add `- registry/dev.csv`, `- /elsewhere/test.csv`"):
        check_tracked(_source("registry", registries={"dev": f"file://{root}/registry/dev.csv",
                                                      "test": "/elsewhere/test.csv"}))
    tracked._find_stage.cache_clear()


GRAY = """from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from evalstack.preprocess.pipelines import CropResizePipeline

GAIN = 1.0


@dataclass(frozen=True)
class GrayPipeline(CropResizePipeline):
    kind: ClassVar[str] = "gray"

    def process_image(self, image):
        return (super().process_image(image) * GAIN).astype(np.uint8)
"""


@pytest.mark.slow
def test_dvc_repro_refuses_a_pipeline_of_yours_until_a_dep_covers_it_then_reruns_it_after_an_edit(tmp_path: Path):
    """Your pipeline kind in src/lab, registered as the README says: DVC would skip preprocess after an edit of
    it (was: "Data and pipelines are up to date", the old tensors). The stage refuses until dvc.yaml lists it."""
    from tests.e2e import make_project, run, stages_run

    root = make_project(tmp_path / "project")
    (root / "src/lab").mkdir()
    (root / "src/lab/__init__.py").write_text("")
    (root / "src/lab/graypipe.py").write_text(GRAY)
    kinds = root / "src/evalstack/preprocess/pipelines.py"
    kinds.write_text(kinds.read_text().replace('PIPELINE_KINDS: dict[str, tuple[str, str]] = {\n',
                                               'PIPELINE_KINDS: dict[str, tuple[str, str]] = {\n'
                                               '    "gray": ("lab.graypipe", "GrayPipeline"),\n', 1))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["preprocess"]["pipelines"]["gray64"] = {"kind": "gray", "resize": 64}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    refused = run(root, "dvc", "repro", "preprocess@gray64", check=False)
    assert refused.returncode != 0
    assert ("preprocess@gray64 reads code src/lab/__init__.py, code src/lab/graypipe.py, which none of its deps in "
            "dvc.yaml covers") in refused.stderr and "Add `- src/lab` to the stage's deps" in refused.stderr
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    pipeline["stages"]["preprocess"]["do"]["deps"].append("src/lab")
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run(root, "dvc", "repro", "preprocess@gray64")
    index = root / "data/preprocessed/gray64/index.json"
    before = index.read_text()
    (root / "src/lab/graypipe.py").write_text(GRAY.replace("GAIN = 1.0", "GAIN = 0.5"))
    assert "preprocess@gray64" in stages_run(run(root, "dvc", "repro", "preprocess@gray64").stdout)
    assert index.read_text() != before  # computed with the edited pipeline
    # A temp experiment runs in a copy (.dvc/tmp/exps/…): the copy's src/lab is imported and covered there
    # (was: the workspace's, refused as untracked although the same dep covered it).
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "gray64")
    run(root, "dvc", "exp", "run", "--temp", "preprocess@gray64", "-S", "preprocess.pipelines.gray64.resize=48")


def test_copier_puts_a_local_source_in_fetchs_deps_and_a_server_nowhere(tmp_path: Path):
    """`.copier/configure.py` after `copier copy`: what fetch reads on this disk becomes its dep (a file:// URL
    as the path fetch reads), a server none; both profiles."""
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    for name in ("dvc.yaml", "params.yaml", "detection/dvc.yaml", "detection/params.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / name, tmp_path / name)
    answers = {"classification_source": "registry", "registry_dev": "file:///data/pad%20cards/metadata_dev.csv",
               "registry_test": "https://pad.example.org/metadata_test.csv", "detection_source": "coco",
               "coco_annotations": "/data/coco/instances_val.json", "coco_images": "/data/coco/val2017",
               "keep_demo_models": True}
    (tmp_path / ".copier-answers.yml").write_text(yaml.safe_dump(answers))
    subprocess.run([sys.executable, str(repo / ".copier/configure.py")], cwd=tmp_path, check=True)
    fetch = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]["fetch"]["deps"]
    assert "/data/pad cards/metadata_dev.csv" in fetch and not any("pad.example" in dep for dep in fetch)
    assert "data/source" not in fetch
    detection = yaml.safe_load((tmp_path / "detection/dvc.yaml").read_text())["stages"]
    assert "synth" not in detection
    assert {"/data/coco/instances_val.json", "/data/coco/val2017"} <= set(detection["fetch"]["deps"])
    assert "data/source" not in detection["fetch"]["deps"]


def test_a_package_of_yours_installed_from_a_folder_without_e_must_be_tracked_by_its_folder(tmp_path: Path,
                                                                                               monkeypatch):
    """`pip install ./lab` reinstalled after an edit changes the key (installed:lab) but no dep DVC sees: the
    folder it was installed from is what the stage must track. An editable install's files are followed."""
    import json

    def install(name: str, url: str, editable: bool) -> None:
        info = tmp_path / f"{name}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (info / "direct_url.json").write_text(json.dumps({"url": url, "dir_info": {"editable": editable}}))

    install("lab_pinned", "file:///data/lab%20code", editable=False)
    install("lab_dev", "file:///data/lab_dev", editable=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = code_files({"installed:lab_pinned": "1.0 x", "installed:lab_dev": "1.0 y", "installed:numpy": "z"})
    assert [(item.what, item.path) for item in found] == [
        ("the package lab_pinned installed from", Path("/data/lab code"))]


def test_a_stage_of_a_dvc_yaml_below_its_wdir_is_checked_against_its_own_deps(tmp_path: Path, monkeypatch):
    """pipelines/dvc.yaml with `wdir: ..` beside a root dvc.yaml holding a stage of the same name: the running
    stage's own deps decide (was: the root's, which covered what the running one does not)."""
    from evalstack.cache import tracked

    (tmp_path / ".dvc").mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"plain": {"cmd": "true", "deps": ["lib"]}}}))
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines/dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"plain": {"cmd": "true", "wdir": "..", "deps": ["stages"]}}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_STAGE", "pipelines/dvc.yaml:plain")
    tracked._find_stage.cache_clear()
    with pytest.raises(UntrackedInputError, match="plain reads code lib/mod.py.*Add `- lib`"):
        check_tracked([Input("code", tmp_path / "lib/mod.py", folder_dep=True)])
    monkeypatch.setenv("DVC_STAGE", "plain")
    check_tracked([Input("code", tmp_path / "lib/mod.py", folder_dep=True)])
    tracked._find_stage.cache_clear()


def test_a_module_of_a_package_installed_from_a_folder_without_e_asks_for_that_folder(tmp_path: Path, monkeypatch):
    """The pipeline module params name is followed by its file even when installed (`pip install ./lab`): the
    folder it was installed from is what DVC must see change."""
    import json

    site = tmp_path / "site"
    (site / "labx").mkdir(parents=True)
    (site / "labx/__init__.py").write_text("")
    (site / "labx/pipe.py").write_text("GAIN = 1\n")
    info = site / "labx-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: labx\nVersion: 1.0\n")
    (info / "RECORD").write_text("labx/__init__.py,,\nlabx/pipe.py,,\nlabx-1.0.dist-info/METADATA,,\n")
    (info / "direct_url.json").write_text(json.dumps({"url": f"file://{tmp_path}/lab", "dir_info": {}}))
    monkeypatch.syspath_prepend(str(site))
    assert [(item.what, item.path) for item in code_files({"labx.pipe": "d", "labx": "e"})] == [
        ("the package labx installed from", tmp_path / "lab")]
