"""Fetch end to end: a killed fetch resumes; growth re-fetches and pushes only new shards (real dvc CLI)."""
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from evalstack.cli.verify import verify_layer
from evalstack.core.layers import Layer
from tests.e2e import REPO, env, make_project, run, set_param, stages_run
from tests.loopback import PadServer

pytestmark = pytest.mark.slow


def write_params(path: Path, server: PadServer, store: Path) -> None:
    registries = {split: f"{server.url}metadata_{split}.csv" for split in ("dev", "test")}
    params = {
        "fetch": {"source": {"kind": "registry", "registries": registries}, "shard_bytes": 4 * 1_370_000, "max_pixels": 16777216,
                  "workers": 2, "on_error": "fail", "http": {"retries": 2, "backoff": 0.01}},
        "store": {"dir": str(store)},
    }
    path.write_text(yaml.safe_dump(params))


def test_killed_fetch_resumes_and_the_layer_verifies(pad_dataset: Path, tmp_path: Path):
    with PadServer(pad_dataset, delay=0.15) as server:  # slow enough to be killed mid-run
        write_params(tmp_path / "params.yaml", server, tmp_path / "store")
        command = [sys.executable, str(REPO / "stages/fetch.py"), "--out", str(tmp_path / "raw"),
                   "--params", str(tmp_path / "params.yaml")]
        process = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        downloads = tmp_path / "store/fetch/downloads"
        deadline = time.monotonic() + 60
        while len(list(downloads.glob("*.img"))) < 6 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL
        kept = len(list(downloads.glob("*.img")))
        assert 6 <= kept < 20 and not (tmp_path / "raw/index.json").exists()
        gets = server.image_gets()
        rerun = subprocess.run(command, env=env(), capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        assert server.image_gets() - gets == 20 - kept  # nothing that had arrived was downloaded again
    layer = Layer.open(tmp_path / "raw", kind="raw")
    assert verify_layer(tmp_path / "raw") == [] and len(layer) == 20
    assert not list(downloads.glob("*")), "downloads leave the download area once they are in a shard"
    result = run(tmp_path, sys.executable, "-m", "evalstack.cli", "verify", str(tmp_path / "raw"))
    assert result.stdout.strip().endswith("ok")


def remote_files(remote: Path) -> dict[str, int]:
    return {str(p.relative_to(remote)): p.stat().st_size for p in remote.rglob("*") if p.is_file()}


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_growth_refetches_only_new_cards_and_pushes_only_new_shards(tmp_path: Path):
    root = tmp_path / "project"
    with PadServer(root / "data/source") as server:  # the server publishes what `synth` writes
        registries = {split: f"{server.url}metadata_{split}.csv" for split in ("dev", "test")}
        make_project(root, {"synth": {"n_cards": 40}, "fetch": {"shard_bytes": 8 * 1_370_000, "source": {"registries": registries}}})
        first = run(root, "dvc", "repro", "fetch")
        assert stages_run(first.stdout) == {"synth", "fetch"} and server.image_gets() == 40
        run(root, "dvc", "remote", "add", "-d", "local", str(tmp_path / "remote"))
        run(root, "dvc", "push", "fetch")
        pushed_before = remote_files(tmp_path / "remote")
        old_shards = {p.name: md5_of(p) for p in (root / "data/raw").glob("*.h5")}

        set_param(root, "synth.n_cards", 42)  # the server adds 5% more cards
        second = run(root, "dvc", "repro", "fetch")
        assert stages_run(second.stdout) == {"synth", "fetch"}
        assert server.image_gets() == 42  # exactly the two new images were downloaded
    raw = root / "data/raw"
    now = {p.name: md5_of(p) for p in raw.glob("*.h5")}
    changed = sorted(name for name, md5 in now.items() if old_shards.get(name) != md5)
    # Content-defined shard ends: the two appended cards touch the last shard (and maybe start one).
    assert 1 <= len(changed) <= 2 and all(name >= max(old_shards) for name in changed)
    run(root, "dvc", "push", "fetch")
    uploaded = {name: size for name, size in remote_files(tmp_path / "remote").items() if name not in pushed_before}
    uploaded_md5s = {name.replace("/", "")[-32:] for name in uploaded if not name.endswith(".dir")}
    report = root / "data/fetch_report.json"  # a cached out too: it counts the cards fetched
    assert uploaded_md5s == {*(now[name] for name in changed), md5_of(raw / "index.json"), md5_of(report)}
    assert sum(1 for name in uploaded if name.endswith(".dir")) == 1
    changed_bytes = sum((raw / name).stat().st_size for name in changed)
    assert sum(uploaded.values()) < changed_bytes + report.stat().st_size + 20_000
    assert verify_layer(raw) == [] and len(Layer.open(raw)) == 42
