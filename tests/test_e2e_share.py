"""Share and compare end to end: a clone A pushes to each remote kind, fresh clones pull.

One `dvc repro` in clone A serves every test here (module fixture). Git goes through a
bare repository in tmp (the team's git remote); data through a local-directory remote
(the default), S3 (moto on loopback) and SSH (Debian sshd on loopback).
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.e2e import FirstBuild, clone, commit_and_push, copy_build, output_digests, run, set_param, stages_run
from tests.servers import moto_s3, openssh_server, require_program

pytestmark = pytest.mark.slow

EVALUATE_STAGES = {"evaluate"}
UP_TO_DATE = "Data and pipelines are up to date."


@dataclass(frozen=True)
class Team:
    base: Path
    origin: Path  # the bare git repository everyone pushes to
    a: Path  # clone A, where the pipeline ran


@dataclass(frozen=True)
class Remote:
    name: str
    url: str  # committed in .dvc/config
    local: dict[str, str] = field(default_factory=dict)  # per machine, in .dvc/config.local


@pytest.fixture(scope="module")
def team(tiny_first_build: FirstBuild, tmp_path_factory) -> Team:
    base = tmp_path_factory.mktemp("share")
    origin = base / "origin.git"
    run(base, "git", "init", "-q", "--bare", "-b", "main", str(origin))
    # The session's first `dvc repro` of the tiny default (test_e2e_repro checks it), copied; remotes after.
    assert {"synth", *EVALUATE_STAGES} <= tiny_first_build.stages_run
    a = copy_build(tiny_first_build, base / "a")
    run(a, "git", "remote", "add", "origin", str(origin))
    run(a, "dvc", "remote", "add", "-d", "storage", str(base / "storage"))  # the README's default
    commit_and_push(a, "the team's remotes")
    return Team(base, origin, a)


@pytest.fixture(params=["local", "s3", "ssh"])
def remote(request, team: Team, tmp_path: Path) -> Iterator[Remote]:
    if request.param == "local":
        yield Remote("storage", str(team.base / "storage"))
    elif request.param == "s3":
        with moto_s3() as s3:
            yield Remote("s3", f"s3://{s3.bucket}/cache", {
                "endpointurl": s3.url, "access_key_id": s3.key_id, "secret_access_key": s3.secret,
            })
    else:
        with openssh_server(tmp_path / "sshd") as ssh:
            yield Remote("ssh", f"ssh://127.0.0.1{ssh.root}", {
                "user": ssh.user, "port": str(ssh.port), "keyfile": str(ssh.keyfile),
            })


def configure_credentials(root: Path, remote: Remote) -> None:
    for option, value in remote.local.items():
        run(root, "dvc", "remote", "modify", "--local", remote.name, option, value)


def metrics_of(root: Path) -> dict[str, dict]:
    metrics = {path.stem: json.loads(path.read_text()) for path in sorted((root / "metrics").glob("*.json"))}
    assert metrics, f"no metrics in {root}"
    return metrics


def files_pushed(output: str) -> int:
    found = re.search(r"(\d+) files? pushed", output)
    return int(found.group(1)) if found else 0


def test_a_fresh_clone_pulls_everything_and_recomputes_nothing(team: Team, remote: Remote):
    a = team.a
    if remote.name != "storage":  # the team commits where the data lives; secrets stay per machine
        run(a, "dvc", "remote", "add", "-f", remote.name, remote.url)
        commit_and_push(a, f"remote {remote.name}")
    configure_credentials(a, remote)
    assert files_pushed(run(a, "dvc", "push", "--run-cache", "-r", remote.name).stdout) > 0
    assert "in sync" in run(a, "dvc", "status", "--cloud", "-r", remote.name).stdout
    assert "secret" not in run(a, "git", "show", "HEAD:.dvc/config").stdout

    b = clone(team.origin, team.base / f"b-{remote.name}")
    configure_credentials(b, remote)
    run(b, "dvc", "pull", "-r", remote.name)  # exits 0: nothing of the detection project is asked for
    assert run(b, "dvc", "status").stdout.strip() == UP_TO_DATE
    assert run(b, "git", "status", "--porcelain").stdout == ""  # a pull changes nothing a user commits
    shown = run(b, "dvc", "metrics", "show", env_columns=160)
    assert "failed to load" not in shown.stdout + shown.stderr and "…" not in shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()) <= 160
    assert stages_run(run(b, "dvc", "repro").stdout) == set()
    assert output_digests(b) == output_digests(a)  # every layer, model, plot and the report, byte for byte
    assert metrics_of(b) == metrics_of(a)


def test_an_experiment_reaches_a_clone_with_its_run_cache_and_recomputes_nothing(team: Team):
    a = team.a
    ran = run(a, "dvc", "exp", "run", "-S", "evaluate.split=dev", "-n", "on-dev")
    assert EVALUATE_STAGES <= stages_run(ran.stdout)
    assert stages_run(ran.stdout) == {"evaluate", "compare"}
    on_dev = metrics_of(a)
    run(a, "dvc", "exp", "push", "--run-cache", "origin", "on-dev")
    # The run records' own outputs (metrics JSON lives in git, not in any pushed commit of main).
    shared = run(a, "python", "-m", "evalstack.cli", "push-run-cache").stdout
    assert re.search(r"[1-9]\d* output objects pushed", shared), shared
    reset_workspace(a)

    # Route 1: fetch the experiment itself.
    b = clone(team.origin, team.base / "b-exp")
    run(b, "dvc", "exp", "pull", "origin", "on-dev")
    run(b, "dvc", "exp", "apply", "on-dev")
    assert run(b, "dvc", "status").stdout.strip() == UP_TO_DATE
    assert stages_run(run(b, "dvc", "repro").stdout) == set()
    assert metrics_of(b) == on_dev

    # Route 2: same param on main; the run-cache restores the results, fetching only what they need.
    c = clone(team.origin, team.base / "c-run-cache")
    set_param(c, "evaluate.split", "dev")
    # evaluate and compare read data/predictions, a folder of several stages' outputs, which DVC's
    # `repro --pull` cannot pull as one (treeverse/dvc#10203): the README pulls the infer group first
    run(c, "dvc", "pull", "infer")
    restored = run(c, "dvc", "repro", "--pull", "--allow-missing").stdout
    assert stages_run(restored) == set(), restored
    for stage in (*EVALUATE_STAGES, "compare"):
        assert f"Stage '{stage}' is cached - skipping run" in restored
    assert metrics_of(c) == on_dev
    assert not (c / "data/preprocessed").exists()  # bulky intermediates were not needed, so not fetched


def test_a_queued_sweep_of_three_values_shows_up_with_metrics(team: Team):
    a = team.a
    queued = run(a, "dvc", "exp", "run", "--queue", "-S", "evaluate.split=dev,test,all").stdout
    names = re.findall(r"Queued experiment '([^']+)'", queued)
    assert len(names) == 3, queued
    try:
        run(a, "dvc", "queue", "start", "-j", "2")
        wait_for_queue(a, timeout=240)
    finally:
        run(a, "dvc", "queue", "stop", "--kill", check=False)
    experiments = experiments_by_name(a)
    by_split = {experiments[name]["split"]: experiments[name] for name in names}
    assert set(by_split) == {"dev", "test", "all"}
    # the documented comparison table: one column per model's headline, no "…" at 160 columns. DVC writes
    # a row made before today with its date ("Dec 05, 2026") where it writes today's as a time ("12:14 AM"):
    # 4 columns more, as when this test runs across midnight (README: "Experiments side by side").
    table = run(a, "dvc", "exp", "show", "--only-changed", "--no-pager", env_columns=200).stdout
    width = 160 + (4 if re.search(r"\b[A-Z][a-z]{2} \d{2}, \d{4}\b", table) else 0)
    table = run(a, "dvc", "exp", "show", "--only-changed", "--no-pager", env_columns=width).stdout
    print(table)  # whole, in the report of a failure
    assert all(name in table for name in names) and "tflite_cnn.accuracy" in table and "…" not in table
    assert max(len(line) for line in table.splitlines()) <= width
    assert all("tflite_cnn" in by_split[split]["metrics"]["metrics/tflite_cnn.json"] for split in by_split)
    dev, every = by_split["dev"]["name"], by_split["all"]["name"]
    diff = json.loads(run(a, "dvc", "metrics", "diff", "--json", "--all", dev, every).stdout)
    assert "tflite_cnn.accuracy" in diff["metrics/tflite_cnn.json"]


def test_headless_chromium_draws_the_plots_offline(team: Team, tmp_path: Path):
    chromium = require_program("chromium", "chromium")
    a = team.a
    run(a, "dvc", "plots", "show", "-o", str(tmp_path / "stock"))  # dvc-render's page: vega from a CDN
    assert count_charts(chromium, tmp_path / "stock/index.html", tmp_path) == 0  # no internet here
    run(a, "python", "-m", "evalstack.cli", "plots-template")
    run(a, "dvc", "plots", "show", "-o", str(tmp_path / "offline"))
    page = tmp_path / "offline/index.html"
    assert "cdn.jsdelivr" not in page.read_text()
    # 2 confusion matrices + 2 per-class bar charts + the model comparison
    assert count_charts(chromium, page, tmp_path) >= 5
    screenshot = tmp_path / "plots.png"
    headless(chromium, tmp_path, "--window-size=1280,1600", f"--screenshot={screenshot}", page.as_uri())
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float32)
    assert pixels.std() > 20  # a blank or near-blank page is far below this
    diffed = run(a, "dvc", "plots", "diff", "-o", str(tmp_path / "diff"), "HEAD").stdout
    assert count_charts(chromium, tmp_path / "diff/index.html", tmp_path) >= 5, diffed


# --- helpers ---------------------------------------------------------------------------------------


def reset_workspace(root: Path) -> None:
    """Back to the committed state after `dvc exp run` left its results in the workspace."""
    run(root, "git", "checkout", "--", ".")
    run(root, "dvc", "checkout", "--force")
    assert run(root, "dvc", "status").stdout.strip() == UP_TO_DATE


def wait_for_queue(root: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run(root, "dvc", "queue", "status").stdout
        if re.search(r"\b(Queued|Running)\b", status) is None:
            failed = re.findall(r"^\w+\s+(\S+)\s.*\bFailed\b", status, flags=re.M)
            logs = "\n".join(run(root, "dvc", "queue", "logs", name, check=False).stdout[-4000:] for name in failed)
            assert not failed, f"{status}\n{logs}"
            return
        time.sleep(5)  # each poll is a dvc process competing with the workers for 2 cores
    raise AssertionError(f"queue still busy after {timeout:.0f} s:\n{status}")


def experiments_by_name(root: Path) -> dict[str, dict]:
    """experiment name → {name, split, metrics}, from `dvc exp show --json`."""
    found: dict[str, dict] = {}
    for baseline in json.loads(run(root, "dvc", "exp", "show", "--json").stdout):
        for experiment in baseline.get("experiments") or []:
            rev = experiment["revs"][0]
            data = rev.get("data") or {}
            found[rev["name"]] = {
                "name": rev["name"],
                "split": data["params"]["params.yaml"]["data"]["evaluate"]["split"],
                "metrics": {path: value["data"] for path, value in data.get("metrics", {}).items()},
            }
    return found


def headless(chromium: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    command = [
        str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def count_charts(chromium: Path, page: Path, tmp_path: Path) -> int:
    """Charts vega-embed drew: each leaves one <svg class="marks"> in the DOM after the scripts ran."""
    dom = headless(chromium, tmp_path, "--dump-dom", page.as_uri()).stdout
    return len(re.findall(r'<svg[^>]*class="marks"', dom))
