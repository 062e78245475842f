"""A stage run by DVC refuses an input none of its deps covers: DVC would skip it after an edit of that input."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evalstack.cache.tracked import UntrackedInputError, check_tracked, local_source_files, stage_deps, users_code

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


def test_outside_dvc_nothing_is_checked(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert stage_deps() is None
    check_tracked([("code", tmp_path / "anything.py")])


def test_a_users_module_no_dep_covers_is_refused_until_a_dep_covers_it(tmp_path: Path, monkeypatch):
    root = _project(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.setenv("DVC_STAGE", "preprocess@gray64")
    monkeypatch.syspath_prepend(str(root / "src"))
    code = {"evalstack.preprocess.pipelines": "x", "lab.graypipe": "y", "installed:numpy": "2.4 z"}
    assert users_code(code) == [("code", root / "src/lab/graypipe.py")]
    name, deps = stage_deps()
    assert name == "preprocess@gray64" and root.resolve() / "data/raw" in deps
    with pytest.raises(UntrackedInputError, match=r"preprocess@gray64 reads code src/lab/graypipe.py, which none of "
                                                  r"its deps in dvc.yaml covers.*Add `- src/lab/graypipe.py` to the stage's deps"):
        check_tracked(users_code(code))
    PIPELINE["stages"]["preprocess"]["do"]["deps"].append("src/lab")
    try:
        (root / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE))
        check_tracked(users_code(code))
    finally:
        PIPELINE["stages"]["preprocess"]["do"]["deps"].remove("src/lab")


def test_a_local_source_is_tracked_and_a_server_is_not_asked_for(tmp_path: Path, monkeypatch):
    root = _project(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.setenv("DVC_STAGE", "fetch")
    monkeypatch.chdir(root)
    assert local_source_files("pad_api", {}, "", "") == []
    assert local_source_files("registry", {"dev": "https://pad.example/dev.csv"}, "", "") == []
    assert local_source_files("registry", {"dev": "file:///data/my%20cards/dev.csv"}, "", "") == [
        ("the dev registry", Path("/data/my cards/dev.csv"))]  # the file fetch reads, not a path with %20 in it
    check_tracked(local_source_files("registry", {"dev": "data/source/metadata_dev.csv"}, "", ""))
    with pytest.raises(UntrackedInputError, match="fetch reads the folder source cards"):
        check_tracked(local_source_files("folder", {}, "cards", ""))
    with pytest.raises(UntrackedInputError, match="fetch reads the dev registry registry/dev.csv"):
        check_tracked(local_source_files("registry", {"dev": f"file://{root}/registry/dev.csv"}, "", ""))


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
