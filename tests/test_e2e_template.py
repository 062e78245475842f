"""Start a project from the template with `copier copy`, then bring a later template change with `copier update`.

One generated project is shared by the steps (slow: one tiny `dvc repro` before and one after
the update). The template is this repository's files (tracked and modified ones, so uncommitted
work is tested too) committed into a temp git repo; a second commit there is the "later change".
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e import REPO, run, stages_run

UP_TO_DATE = "Data and pipelines are up to date."

pytestmark = pytest.mark.slow

copier = pytest.importorskip("copier")

# The user's own edits after generation: a small dataset and short training (also keeps this test fast).
USER_PARAMS = {
    "fetch": {"shard_bytes": 16 * 1_370_000},  # ~16 cards per raw shard
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
               "--data", "project_name=my-eval", "--data", "profiles=both",
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
    assert (project / "detection/dvc.yaml").is_file() and (project / "stages/detection/evaluate.py").is_file()
    assert (project / "detection/src").is_symlink() and (project / "src/evalstack/detection").is_dir()
    assert not (project / "bench").exists() and not (project / "tests/test_e2e_repro.py").exists()
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["fetch"]["source"] == {"kind": "registry", "registries": {
        "dev": str(generated["cards"] / "metadata_dev.csv"), "test": str(generated["cards"] / "metadata_test.csv")}}
    assert "# where cards come from" in (project / "params.yaml").read_text()  # comments kept
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert "synth" not in stages and "data/source" not in str(stages["fetch"]["deps"])
    # a local registry is what fetch reads: DVC reruns fetch when it changes (and fetch refuses an untracked one)
    assert {str(generated["cards"] / "metadata_dev.csv"), str(generated["cards"] / "metadata_test.csv")} <= set(
        stages["fetch"]["deps"])
    assert f"url = {generated['remote']}\n" in (project / ".dvc/config").read_text()
    assert f"url = {generated['remote']}/detection\n" in (project / "detection/.dvc/config").read_text()
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["_commit"] == "v1" and answers["classification_source"] == "registry"
    assert (project / "README.md").read_text().startswith("# my-eval\n")


def test_generated_project_runs_pushes_and_a_clone_pulls_with_one_profile_run(generated: dict[str, Path]):
    project = generated["project"]
    assert run(project, "dvc", "status").stdout.strip() == UP_TO_DATE  # the detection project is not listed
    assert run(project, "git", "status", "--porcelain").stdout == ""  # nothing left uncommitted or untracked
    run(project, "dvc", "push")
    assert any(generated["remote"].rglob("*"))
    colleague = generated["base"] / "colleague"
    run(generated["base"], "git", "clone", "-q", str(project), str(colleague))
    run(colleague, "dvc", "pull")  # exits 0 although detection/ never ran: it is a project of its own
    assert run(colleague, "dvc", "status").stdout.strip() == UP_TO_DATE
    assert stages_run(run(colleague, "dvc", "repro").stdout) == set()
    assert run(colleague, "git", "status", "--porcelain").stdout == ""
    shown = run(colleague, "dvc", "metrics", "show", env_columns=160)
    assert "failed to load" not in shown.stdout + shown.stderr and "…" not in shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()) <= 160 and "tflite_cnn" in shown.stdout


def test_generated_projects_make_test_passes(generated: dict[str, Path]):
    project, venv = generated["project"], Path(sys.executable).parent.parent
    # The project's own `make test` on this venv: not rebuilt (-o …/.installed), and no apt-get (-o system-deps).
    made = run(project, "make", "-o", f"{venv}/.installed", "-o", "system-deps", "test", f"VENV={venv}")
    assert re.search(r"\d+ passed", made.stdout) and "failed" not in made.stdout, made.stdout
    assert run(project, "git", "status", "--porcelain").stdout == ""


def test_update_brings_a_template_change_and_keeps_the_users_edits(generated: dict[str, Path]):
    template, project = generated["template"], generated["project"]
    # A later template commit: a new comparison option in params.yaml (its stage reads it, and the params
    # schema knows it) and a comment in the compare stage script.
    params = (template / "params.yaml").read_text()
    assert "compare:                    # every model on the same test items" in params
    params = params.replace("  level: 0.95\n", "  level: 0.95\n  report_top: 3              # (template v2)\n")
    (template / "params.yaml").write_text(params)
    schema = template / "src/evalstack/params_schema.py"
    field = "    level: Annotated[Number, Field(gt=0, lt=1)] = 0.95\n"
    assert field in schema.read_text()
    schema.write_text(schema.read_text().replace(field, field + "    report_top: Count = 10\n", 1))
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
    assert yaml.safe_load((project / ".copier-answers.yml").read_text())["_commit"] == "v2"
    ran = stages_run(run(project, "dvc", "repro").stdout)
    assert ran == {"compare"}  # only what the change affects (its script and its params)
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "update to template v2")
    assert len(run(project, "git", "log", "--oneline").stdout.splitlines()) == 4  # history kept


def _uncomment_model_stages(text: str) -> str:
    """What the note in dvc.yaml asks for: drop the `# ` of the blocks below each note (a user's editor toggle)."""
    lines, inside = [], False
    for line in text.splitlines(keepends=True):
        if line.strip().startswith("# uncomment once `models:`"):
            inside = True
            continue
        inside = inside and line.startswith("  # ")
        lines.append("  " + line[4:] if inside else line)
    return "".join(lines)


def test_without_the_demo_models_the_project_runs_then_takes_its_first_model(generated: dict[str, Path]):
    base, cards = generated["base"], generated["cards"]
    project = base / "own-models"
    copier_cli(base, "copy", "--trust", "--defaults", "--vcs-ref", "v1", "--data", "keep_demo_models=false",
               "--data", "profiles=classification", "--data", "classification_source=registry",
               "--data", f"registry_dev={cards / 'metadata_dev.csv'}",
               "--data", f"registry_test={cards / 'metadata_test.csv'}",
               str(generated["template"]), str(project))
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["models"] == {} and not {"train", "fit_pls", "export"} & set(params)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert not {"train", "fit_pls", "export_onnx", "compare", "robustness_report"} & set(stages)
    run(project, "git", "init", "-q", "-b", "main")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "generated from evalstack v1, no demo models")

    ran = stages_run(run(project, "dvc", "repro").stdout)
    assert ran == {"fetch", "preprocess@pad_nn", "preprocess@thumb64", "preprocess@pad_regions"}
    assert run(project, "git", "status", "--porcelain").stdout == "?? dvc.lock\n"
    assert run(project, sys.executable, "-m", "evalstack.cli", "summary").stdout.startswith("No models declared yet")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "data")

    # The first model: a PLS coefficient CSV in PAD's layout (one row per drug: name, intercept, 360 weights).
    drugs = params["labels"]["fhi2020"]
    (project / "models/my_pls.csv").write_text("".join(f"{drug},50.0{',0.0' * 360}\n" for drug in drugs))
    run(project, "dvc", "add", "models/my_pls.csv")
    edit_params(project, {"models": {"my_pls": {"file": "models/my_pls.csv", "adapter": "pls",
                                                "pipeline": "pad_regions", "labels": "fhi2020",
                                                "task": "concentration"}}})
    pipeline = project / "dvc.yaml"
    pipeline.write_text(_uncomment_model_stages(pipeline.read_text()))
    assert {"evaluate", "compare", "robustness_report"} <= set(yaml.safe_load(pipeline.read_text())["stages"])
    ran = stages_run(run(project, "dvc", "repro").stdout)
    assert ran == {"infer@my_pls", "evaluate", "robustness@my_pls", "compare", "robustness_report"}
    summary = run(project, sys.executable, "-m", "evalstack.cli", "summary").stdout
    assert "my_pls" in summary and "Concentration" in summary
    assert run(project, "dvc", "status").stdout.strip() == "Data and pipelines are up to date."
