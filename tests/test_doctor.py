"""`evalstack doctor`: a broken dvc.lock, an unreachable or relative remote, the store, the profiles, space.

Issue 15, findings 13 (a SIGKILL while DVC prints "Updating lock file" leaves dvc.lock empty, and
nothing says how to recover) and 14 (a relative local remote breaks in a clone at another depth
with only DVC's generic missing-files message).
"""
from __future__ import annotations

import json
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest
import yaml

from evalstack.cli.commands import main
from tests.e2e import REPO, run
from tests.layers import Project, store_at
from tests.test_atomic import fill_disk


def project_at(root: Path) -> Path:
    """The template's pipeline files in a DVC repository (no git, no data): what doctor reads."""
    root.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    (root / "detection").mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / "detection" / name, root / "detection" / name)
    (root / ".dvc").mkdir()
    (root / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    return root


def set_remote(root: Path, url: str, name: str = "storage", extra: str = "") -> None:
    (root / ".dvc" / "config").write_text(f"[core]\n    remote = {name}\n['remote \"{name}\"']\n    url = {url}\n{extra}")


def doctor(root: Path, capsys, *args: str) -> tuple[int, str]:
    code = main(["--params", str(root / "params.yaml"), "doctor", "--min-free", "1", *args])
    return code, capsys.readouterr().out


# -- finding 13: an empty dvc.lock ------------------------------------------------------------------
def test_an_empty_dvc_lock_is_found_and_the_recovery_named(tmp_path: Path, capsys):
    root = project_at(tmp_path / "project")
    set_remote(root, str(tmp_path))
    (root / "dvc.lock").write_text("")
    code, out = doctor(root, capsys)
    assert code == 1
    assert ('FAIL  dvc.lock is empty: DVC was stopped while it printed "Updating lock file" (it rewrites the file in '
            "place), so every dvc command now fails with a schema error") in out
    assert "fix: `git checkout dvc.lock` restores the last committed lock file" in out
    assert "delete it and run `dvc commit -f` in . to record the outputs in the workspace" in out
    assert "ok    detection/dvc.lock: none yet" in out
    assert "FAIL  dvc.yaml: state unknown until its dvc.lock is fixed" in out


def test_a_damaged_dvc_lock_in_the_detection_profile_is_named(tmp_path: Path, capsys):
    root = project_at(tmp_path / "project")
    set_remote(root, str(tmp_path))
    (root / "detection" / "dvc.lock").write_text("schema: '2.0'\nstages: [unclosed\n")
    code, out = doctor(root, capsys)
    assert code == 1 and "FAIL  " in out and "detection/dvc.lock is not valid YAML" in out
    assert "`git checkout detection/dvc.lock`" in out and "run `dvc commit -f` in detection" in out


def test_evalstack_refuses_an_empty_dvc_lock_and_points_to_doctor(tmp_path: Path, capsys):
    """gc must not read an empty lock as "nothing recorded" (it would drop shards the real one needs)."""
    project = Project(tmp_path)
    store = store_at(tmp_path / ".evalstack/store")
    project.build(6, store)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"store": {"dir": ".evalstack/store", "max_bytes": 0}}))
    (tmp_path / "dvc.lock").write_text("")
    entries = len(list(store.entries()))
    assert main(["--params", str(tmp_path / "params.yaml"), "gc"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'dvc.lock'} is empty (0 bytes)" in err and "`evalstack doctor` explains" in err
    assert len(list(store.entries())) == entries  # nothing removed
    from evalstack.cache.dvcfiles import LockFileError

    with pytest.raises(LockFileError, match="`git checkout dvc.lock` restores the committed one"):
        project.preprocess(store)  # a stage run outside DVC says the same


# -- finding 14: remotes ---------------------------------------------------------------------------
def test_a_relative_local_remote_is_resolved_against_dot_dvc_and_named(tmp_path: Path, capsys):
    root = project_at(tmp_path / "work" / "project")
    storage = tmp_path / "work" / "storage"
    storage.mkdir()
    set_remote(root, "../../storage")  # `dvc remote add -d storage ../storage`, as DVC records it
    code, out = doctor(root, capsys)
    assert code == 0 and f"WARN  remote storage (default): {storage} is reachable (relative: DVC resolves " \
                          f"../../storage against {root / '.dvc'})" in out
    assert f"fix: `dvc remote modify storage url {storage}`" in out
    # A colleague's clone one folder deeper: the same relative path now points nowhere.
    clone = tmp_path / "work" / "team" / "project"
    shutil.copytree(root, clone)
    code, out = doctor(clone, capsys)
    assert code == 1
    assert (f"FAIL  remote storage (default): {tmp_path / 'work' / 'team' / 'storage'} does not exist (relative: "
            f"DVC resolves ../../storage against {clone / '.dvc'})") in out
    assert "a relative remote path only works in clones at the same place relative to it" in out


def test_a_network_remote_is_checked_by_connecting(tmp_path: Path, capsys):
    root = project_at(tmp_path / "project")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        set_remote(root, "s3://bucket/prefix", extra=f"    endpointurl = http://127.0.0.1:{port}\n")
        code, out = doctor(root, capsys)
        assert code == 0 and f"ok    remote storage (default): s3://bucket/prefix: 127.0.0.1:{port} accepts connections" in out
    code, out = doctor(root, capsys)  # the listener is gone
    assert code == 1 and f"FAIL  remote storage (default): s3://bucket/prefix: cannot connect to 127.0.0.1:{port}" in out


def test_no_remote_is_a_warning(tmp_path: Path, capsys):
    root = project_at(tmp_path / "project")
    code, out = doctor(root, capsys)
    assert code == 0 and "WARN  no DVC remote is configured" in out


# -- the store, the profiles, free space ----------------------------------------------------------------
def test_store_profiles_and_space(tmp_path: Path, capsys, monkeypatch):
    root = project_at(tmp_path / "project")
    set_remote(root, str(tmp_path))
    project = Project(root)
    store = store_at(root / ".evalstack/store")
    project.build(6, store)
    lock = {"schema": "2.0", "stages": {"fetch": {"cmd": "x", "outs": [
        {"path": "data/raw", "md5": "0" * 32 + ".dir"}, {"path": "data/missing", "md5": "1" * 32 + ".dir"}]}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    code, out = doctor(root, capsys, "--deep")
    assert code == 0, out
    assert f"ok    shard store {store.directory}: {len(list(store.entries()))} entries" in out
    assert f"ok    shard store {store.directory}: every entry matches its sha256" in out
    assert "WARN  dvc.yaml: 2 outputs recorded; 1 in the workspace, 0 only in DVC's cache, 1 nowhere here" in out
    assert "`dvc pull` (or `dvc repro`) gets 1 that this clone lacks: data/missing" in out
    assert f"ok    project outputs (data/, models/, …) {root}: " in out
    code, out = doctor(root, capsys, "--min-free", str(1 << 62))  # as if every disk were nearly full
    assert code == 1 and f"FAIL  shard store {store.directory}: only " in out and "`evalstack gc`" in out
    fill_disk(monkeypatch, store.directory)
    code, out = doctor(root, capsys)
    assert code == 1 and f"FAIL  shard store {store.directory}: cannot write (its disk is full)" in out


def test_a_layer_computed_with_another_library_version_is_named_with_its_stage(tmp_path: Path, capsys):
    """DVC tracks no library versions: after an upgrade `dvc repro` reruns nothing, so doctor compares the versions
    each layer's key records with the installed ones."""
    root = project_at(tmp_path / "project")
    set_remote(root, str(tmp_path))
    project = Project(root)
    project.build(6, store_at(root / ".evalstack/store"))
    outs = {"fetch": "data/raw", "preprocess@tiny": "data/preprocessed/tiny", "infer@m": "data/predictions/m"}
    lock = {"schema": "2.0", "stages": {stage: {"cmd": "x", "outs": [{"path": path, "md5": "0" * 32 + ".dir"}]}
                                        for stage, path in outs.items()}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    code, out = doctor(root, capsys)
    assert code == 0 and re.search(r"ok    dvc.yaml: [1-9]\d* layers here, each computed with the installed library versions", out), out

    index = root / "data/predictions/m/index.json"
    record = json.loads(index.read_text())
    installed = record["key"]["parts"]["model"]["runtime"]["numpy"]
    record["key"]["parts"]["model"]["runtime"]["numpy"] = "1.0.0"  # as if numpy had been upgraded since infer ran
    index.write_text(json.dumps(record))
    code, out = doctor(root, capsys)
    assert code == 0, out  # a warning: the outputs are there and consistent with each other
    assert (f"WARN  dvc.yaml: infer@m's outputs were computed with other library versions than installed (numpy 1.0.0 → "
            f"{installed}); DVC tracks no library versions, so `dvc repro` will not rerun it") in out
    assert "fix: `dvc repro -f infer@m`, then `dvc repro`" in out
    assert "preprocess@tiny's outputs" not in out and "fetch's outputs" not in out


# -- the real thing: DVC fails, doctor says why, the fix works --------------------------------------
PIPELINE = {"stages": {"make": {"cmd": "echo hello > out.txt", "outs": ["out.txt"]}}}


@pytest.mark.slow
def test_dvc_fails_on_an_empty_lock_and_a_relative_remote_and_doctors_fixes_work(tmp_path: Path):
    work = tmp_path / "work"
    root = work / "project"
    root.mkdir(parents=True)
    (root / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE))
    (root / "params.yaml").write_text(yaml.safe_dump({"store": {"dir": ""}}))
    evalstack = [sys.executable, "-m", "evalstack.cli", "doctor", "--min-free", "1"]
    run(root, "git", "init", "-q", "-b", "main")
    run(root, "dvc", "init", "-q")
    run(root, "dvc", "remote", "add", "-d", "storage", "../storage")
    (work / "storage").mkdir()
    run(root, "dvc", "repro", "-q")
    run(root, "dvc", "push", "-q")
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "pipeline")
    # Finding 13: what a SIGKILL at "Updating lock file" leaves.
    (root / "dvc.lock").write_text("")
    broken = run(root, "dvc", "status", check=False)
    assert broken.returncode != 0 and "dvc.lock' validation failed" in broken.stderr
    said = run(root, *evalstack, check=False)
    assert said.returncode == 1 and "`git checkout dvc.lock`" in said.stdout
    run(root, "git", "checkout", "dvc.lock")
    assert "up to date" in run(root, "dvc", "status").stdout
    # Finding 14: a clone one folder deeper cannot find the relative remote.
    deeper = work / "team" / "project"
    deeper.parent.mkdir()
    run(work, "git", "clone", "-q", str(root), str(deeper))
    pulled = run(deeper, "dvc", "pull", check=False)
    assert pulled.returncode != 0
    said = run(deeper, *evalstack, check=False)
    assert said.returncode == 1 and f"{work / 'team' / 'storage'} does not exist" in said.stdout
    run(deeper, "dvc", "remote", "modify", "--local", "storage", "url", str(work / "storage"))
    run(deeper, "dvc", "pull", "-q")
    assert (deeper / "out.txt").read_text() == "hello\n"
    assert run(deeper, *evalstack, check=False).returncode == 0


def test_doctor_names_an_alias_bomb_in_params_that_dvc_would_choke_on(tmp_path: Path, capsys):
    from tests.test_config import alias_bomb

    root = project_at(tmp_path / "project")
    set_remote(root, str(tmp_path))
    (root / "detection" / "params.yaml").write_text(alias_bomb())
    code, out = doctor(root, capsys)
    assert code == 1
    assert re.search(r"FAIL  detection/params.yaml: its YAML aliases expand to 44,567,901,248 nodes .*alias bomb", out)
    assert "ok    params.yaml: parses, no alias bomb" in out
