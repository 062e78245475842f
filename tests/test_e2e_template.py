"""Start a project from the template with `copier copy`, then bring a later template change with `copier update`.

One generated project is shared by the steps (slow: one tiny `dvc repro` before and one after
the update). The template is this repository's files (tracked and modified ones, so uncommitted
work is tested too) committed into a temp git repo; a second commit there is the "later change".
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e import REPO, run, stages_run

pytestmark = pytest.mark.slow

copier = pytest.importorskip("copier")

# The user's own edits after generation: a small dataset and short training (also keeps this test fast).
USER_PARAMS = {
    "fetch": {"shard_size": 16},
    "train": {"tflite_cnn": {"epochs": 2}, "torch_cnn": {"epochs": 2}, "conc_keras": {"epochs": 2}},
    "robustness": {"types": ["gaussian_noise"], "severities": [1]},
    "compare": {"bootstrap_resamples": 500},
}


def template_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [name for name in listed if (REPO / name).exists() or (REPO / name).is_symlink()]


def make_template(root: Path) -> Path:
    for name in template_files():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        source = REPO / name
        if source.is_symlink():
            target.symlink_to(source.readlink())
        else:
            shutil.copy2(source, target)
    run(root, "git", "init", "-q", "-b", "main")
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "template v1")
    run(root, "git", "tag", "v1")
    return root


def copier_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run(cwd, sys.executable, "-m", "copier", *args)


def deep_update(target: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_update(target[key], value)
        else:
            target[key] = value


def edit_params(project: Path, changes: dict) -> None:
    """As a person would: the file keeps its comments (text edits via ruamel round-trip)."""
    from ruamel.yaml import YAML

    yaml_rt = YAML()
    path = project / "params.yaml"
    data = yaml_rt.load(path.read_text())
    deep_update(data, changes)
    with path.open("w") as handle:
        yaml_rt.dump(data, handle)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("template")
    template = make_template(base / "template")
    from evalstack.demo.cards import write_dataset

    cards = base / "cards"
    write_dataset(cards, n_cards=48, seed=1, workers=1)
    remote = base / "remote"
    project = base / "my-eval"
    copier_cli(base, "copy", "--trust", "--defaults", "--vcs-ref", "v1",
               "--data", "project_name=my-eval", "--data", "profiles=classification",
               "--data", "classification_source=registry",
               "--data", f"registry_dev={cards / 'metadata_dev.csv'}",
               "--data", f"registry_test={cards / 'metadata_test.csv'}",
               "--data", "remote=local", "--data", f"remote_url={remote}",
               str(template), str(project))
    run(project, "git", "init", "-q", "-b", "main")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "generated from evalstack v1")
    edit_params(project, USER_PARAMS)
    run(project, "git", "commit", "-qam", "my params")
    run(project, "dvc", "repro")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "first results")
    return {"base": base, "template": template, "project": project, "remote": remote, "cards": cards,
            }


def test_copy_applies_the_answers(generated: dict[str, Path]):
    project = generated["project"]
    assert not (project / "detection").exists() and not (project / "stages/detection").exists()
    assert not (project / "bench").exists() and not (project / "tests/test_e2e_repro.py").exists()
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["fetch"]["source"] == {"kind": "registry", "registries": {
        "dev": str(generated["cards"] / "metadata_dev.csv"), "test": str(generated["cards"] / "metadata_test.csv")}}
    assert "# where cards come from" in (project / "params.yaml").read_text()  # comments kept
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert "synth" not in stages and "data/source" not in str(stages["fetch"]["deps"])
    assert f"url = {generated['remote']}" in (project / ".dvc/config").read_text()
    answers = yaml.safe_load((project / ".copier/answers.yml").read_text())
    assert answers["_commit"] == "v1" and answers["classification_source"] == "registry"
    assert (project / "README.md").read_text().startswith("# my-eval\n")


def test_generated_project_runs_pushes_and_its_own_tests_pass(generated: dict[str, Path]):
    project = generated["project"]
    assert run(project, "dvc", "status").stdout.strip() == "Data and pipelines are up to date."
    assert run(project, "git", "status", "--porcelain").stdout == ""  # nothing left uncommitted or untracked
    run(project, "dvc", "push")
    assert any(generated["remote"].rglob("*"))
    smoke = run(project, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests")
    assert " passed" in smoke.stdout and "failed" not in smoke.stdout


def test_update_brings_a_template_change_and_keeps_the_users_edits(generated: dict[str, Path]):
    template, project = generated["template"], generated["project"]
    # A later template commit: a new comparison option in params.yaml (its stage reads it) and a
    # comment in the compare stage script.
    params = (template / "params.yaml").read_text()
    assert "compare:                    # every model on the same test items" in params
    params = params.replace("  level: 0.95\n", "  level: 0.95\n  report_top: 3              # (template v2)\n")
    (template / "params.yaml").write_text(params)
    script = template / "stages/compare.py"
    script.write_text(script.read_text().replace('"""Stage compare:', '"""Stage compare (v2):', 1))
    run(template, "git", "commit", "-qam", "template v2")
    run(template, "git", "tag", "v2")

    copier_cli(project, "update", "--trust", "--defaults", "--vcs-ref", "v2")
    status = run(project, "git", "status", "--porcelain").stdout
    assert ".rej" not in status and "<<<<<<<" not in (project / "params.yaml").read_text()
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["compare"]["report_top"] == 3  # the change arrived …
    assert params["compare"]["bootstrap_resamples"] == 500  # … and the user's edits stayed
    assert params["train"]["tflite_cnn"]["epochs"] == 2 and params["fetch"]["source"]["kind"] == "registry"
    assert "(v2)" in (project / "stages/compare.py").read_text()
    assert yaml.safe_load((project / ".copier/answers.yml").read_text())["_commit"] == "v2"
    ran = stages_run(run(project, "dvc", "repro").stdout)
    assert ran == {"compare"}  # only what the change affects (its script and its params)
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "update to template v2")
    assert len(run(project, "git", "log", "--oneline").stdout.splitlines()) == 4  # history kept
