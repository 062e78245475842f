"""The shard store under the real dvc CLI: param toggles, 5% more cards in a fresh clone, pushes, scratch rebuilds."""
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from tests.e2e import build_record, make_project, output_digests, run, set_param, stages_run, tree_size, use_own_models

pytestmark = pytest.mark.slow

N_CARDS, SHARD_BYTES = 32, 8 * 1_370_000  # raw shards of about 8 cards
DERIVED = ("data/preprocessed/pad_nn", "data/predictions/tflite_cnn")
MEASUREMENTS = "data/latency/"  # infer's timings: a fresh measurement each run, never compared


def raw_shards(root: Path) -> int:
    return len(json.loads((root / "data/raw/index.json").read_text())["shards"])


def locked_layer_hashes(root: Path, revision: str | None = None) -> dict[str, str]:
    """md5 of every data/ output in dvc.lock (the workspace's, or at a git revision)."""
    text = run(root, "git", "show", f"{revision}:dvc.lock").stdout if revision else (root / "dvc.lock").read_text()
    stages = yaml.safe_load(text)["stages"]
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", [])
            if out["path"].startswith("data/") and not out["path"].startswith(MEASUREMENTS)}


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Path:
    root = make_project(
        tmp_path_factory.mktemp("incremental") / "origin",
        {"synth": {"n_cards": N_CARDS}, "fetch": {"shard_bytes": SHARD_BYTES}},
    )
    use_own_models(root, models=("tflite_cnn",))  # one model keeps the run short; torch takes the same path
    run(root, "dvc", "repro")
    run(root, "dvc", "remote", "add", "-d", "local", str(root.parent / "remote"))
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "cold build")
    run(root, "dvc", "push")
    return root


def test_toggling_a_pipeline_param_back_recomputes_nothing(origin: Path):
    set_param(origin, "preprocess.pipelines.pad_nn.resample", "bilinear")
    ran = stages_run(run(origin, "dvc", "repro").stdout)
    # the reports rerun only when what they summarise changed (an untrained model may predict the same)
    assert ran - {"robustness_report", "report"} == {
        "preprocess@pad_nn", "infer@tflite_cnn", "evaluate", "robustness@tflite_cnn", "compare",
    }
    n_shards = raw_shards(origin)
    assert build_record(origin, "data/preprocessed/pad_nn")["counts"]["shards_computed"] == n_shards
    run(origin, "git", "checkout", "params.yaml")
    # DVC's run-cache would restore A without running anything; without it, the stages run and the store answers.
    assert {"preprocess@pad_nn", "infer@tflite_cnn"} <= stages_run(run(origin, "dvc", "repro", "--no-run-cache").stdout)
    preprocessed = build_record(origin, "data/preprocessed/pad_nn")
    counts = preprocessed["counts"]
    assert (counts["shards_computed"], counts["items_preprocessed"], counts["shards_reused"]) == (0, 0, n_shards)
    assert preprocessed["key_changes"] == ["pipeline pad_nn: params.resample: bilinear → bicubic"]
    assert build_record(origin, "data/predictions/tflite_cnn")["counts"]["forward_passes"] == 0
    # Same bytes: every layer's hash in dvc.lock is the committed one (latency metrics are measurements).
    assert locked_layer_hashes(origin) == locked_layer_hashes(origin, "HEAD")


def test_gc_keeps_every_shard_dvc_lock_needs_even_when_not_checked_out(origin: Path):
    from evalstack.cache.dvcfiles import locked_shard_sha256s
    from evalstack.cache.shardstore import ShardStore, StoreConfig

    store = ShardStore(StoreConfig(origin / ".evalstack/store", 0))
    needed = locked_shard_sha256s(origin)
    assert {entry.sha256 for entry in store.entries()} > needed  # the toggled-away variant is stored too
    run(origin, "rm", "-rf", "data/predictions/tflite_cnn")  # dvc.lock still needs it (read from DVC's cache)
    out = run(origin, "evalstack", "gc", "--max-bytes", "0").stdout
    n = raw_shards(origin)  # the bilinear preprocessed, predictions and robustness-cell shards
    # and the evaluate stage's two entries (tflite_cnn's figures under each resample value): DVC keeps the
    # outputs they were written to, so dvc.lock needs none of them and the stage recomputes them in ms
    assert f"removed {3 * n + 2} shards" in out
    assert {entry.sha256 for entry in store.entries()} == needed
    run(origin, "dvc", "checkout", "data/predictions/tflite_cnn")
    assert run(origin, "evalstack", "verify").returncode == 0


@pytest.fixture(scope="module")
def grown(origin: Path, tmp_path_factory) -> dict:
    """A fresh clone pulls the outputs (its store is empty), then gets 6% more cards and pushes."""
    clone = tmp_path_factory.mktemp("clone") / "project"
    run(origin.parent, "git", "clone", "-q", str(origin), str(clone))
    run(clone, "dvc", "pull")
    remote = origin.parent / "remote"
    cold_bytes, cold_files = tree_size(remote)
    before = {s["name"]: s["sha256"] for s in json.loads((clone / "data/raw/index.json").read_text())["shards"]}
    set_param(clone, "synth.n_cards", N_CARDS + 2)  # higher ids: the last shard changes, or a new one starts
    ran = stages_run(run(clone, "dvc", "repro").stdout)
    run(clone, "dvc", "push")
    after_bytes, after_files = tree_size(remote)
    after = json.loads((clone / "data/raw/index.json").read_text())["shards"]
    changed = {s["name"] for s in after if before.get(s["name"]) != s["sha256"]}
    return {"clone": clone, "ran": ran, "cold_bytes": cold_bytes, "pushed_bytes": after_bytes - cold_bytes,
            "pushed": after_files - cold_files, "changed": changed, "n_shards": len(after),
            "kept": len(before) - len(changed & set(before))}


def test_added_cards_recompute_only_the_shards_they_touch(grown: dict):
    clone, changed = grown["clone"], grown["changed"]
    # Content-defined shard ends: appended cards touch only the last shard (and a new one).
    assert 1 <= len(changed) <= 2 and grown["kept"] >= grown["n_shards"] - 2
    assert "preprocess@pad_nn" in grown["ran"] and "infer@tflite_cnn" in grown["ran"]
    for layer in DERIVED:
        record = build_record(clone, layer)
        counts = record["counts"]
        # The store started empty: the old shards came from DVC's cache via dvc.lock.
        assert counts["shards_seeded"] >= grown["kept"], layer
        assert {s["name"] for s in record["shards"] if s["computed"]} == changed, layer
        assert counts["shards_reused"] == grown["n_shards"] - len(changed), layer
    predictions = build_record(clone, "data/predictions/tflite_cnn")["counts"]
    assert predictions["forward_passes"] == predictions["items_computed"] <= 2 + SHARD_BYTES * 4 // 1_000_000


def test_push_uploads_only_changed_shards_indexes_and_source_files(grown: dict):
    clone, changed = grown["clone"], grown["changed"]
    by_md5 = {
        hashlib.md5(path.read_bytes()).hexdigest(): str(path.relative_to(clone))
        for top in ("data", "plots", "reports", "comparison", "robustness")
        for path in (clone / top).rglob("*")
        if path.is_file()
    }
    uploaded = {by_md5.get("".join(Path(name).parts[-2:]), name) for name in grown["pushed"] if not name.endswith(".dir")}
    layers = {p for p in uploaded if p.startswith("data/") and not p.startswith("data/source/")}
    # Of the layers only the changed shards and the indexes; besides them fetch's small report (it
    # lists every card), infer's fresh latency measurement, the new source cards and the evaluation
    # outputs (details, plots, report, comparison, robustness summary), which depend on every item.
    assert {p for p in layers if not p.endswith(("/index.json", *(f"/{name}" for name in changed)))} == \
        {"data/fetch_report.json", "data/latency/tflite_cnn.json", "data/evaluation/tflite_cnn.json"}
    evaluation_outputs = ("data/source/", "plots/", "reports/", "comparison/", "robustness/")
    assert {p for p in uploaded - layers if not p.startswith(evaluation_outputs)} == set()
    assert grown["pushed_bytes"] / grown["cold_bytes"] < 0.4  # 2 of 34 cards, the shards they touch, indexes, CSVs


def test_scratch_rebuild_is_byte_identical_and_dvc_sees_no_layer_change(grown: dict):
    clone = grown["clone"]
    run(clone, "git", "add", "-A")
    run(clone, "git", "commit", "-qm", "grown")
    before, locked = output_digests(clone), locked_layer_hashes(clone)
    set_param(clone, "store.dir", "")  # no store: nothing reused, nothing seeded
    run(clone, "dvc", "repro", "-f", "-s", "preprocess@pad_nn")
    run(clone, "dvc", "repro", "-f", "-s", "infer@tflite_cnn")
    run(clone, "git", "checkout", "params.yaml")
    def layers(digests: dict[str, str]) -> dict[str, str]:
        return {name: digest for name, digest in digests.items()
                if name.startswith("data/") and not name.startswith(MEASUREMENTS)}

    assert layers(output_digests(clone)) == layers(before)
    assert locked_layer_hashes(clone) == locked
    # Nothing about the layers is out of date; infer's latency metric is a fresh measurement,
    # so the stages that read it (report, compare) may show it as changed.
    assert "data/" not in run(clone, "dvc", "status").stdout


def test_a_clone_at_another_path_sharing_the_store_fetches_and_computes_only_new_cards(origin: Path, tmp_path: Path):
    """Issue 26 point 3 with a local store: no `dvc pull`, 10 % more cards, the store shared by absolute path.
    Fetch reads only the new cards from the source; every derived layer computes only the shards they touch."""
    import re

    from evalstack.cache.shardstore import ShardStore, StoreConfig

    clone = tmp_path / "elsewhere" / "project"
    run(origin.parent, "git", "clone", "-q", str(origin), str(clone))
    store = origin / ".evalstack/store"
    set_param(clone, "store.dir", str(store))
    models = yaml.safe_load((clone / "params.yaml").read_text())["models"]
    run(clone, "dvc", "pull", "-q", *(entry["file"] for entry in models.values()))  # the model file, no layer
    grown = N_CARDS + N_CARDS // 10
    set_param(clone, "synth.n_cards", grown)
    out = run(clone, "dvc", "repro").stdout
    activity = re.search(r"raw layer: (\d+) items in \d+ shards \((.*)\)", out)
    assert activity is not None, out
    counts = {name: int(value) for name, value in (part.rsplit(" ", 1) for part in activity.group(2).split(", "))}
    assert int(activity.group(1)) == grown
    # a local source's new card is read when it is checked ("downloaded") and again when its shard is written
    assert counts["downloaded"] == counts["read_from_source"] == grown - N_CARDS, counts
    records = ShardStore(StoreConfig(store, 0))
    raw = json.loads((clone / "data/raw/index.json").read_text())["shards"]
    before = {s["sha256"] for s in json.loads((origin / "data/raw/index.json").read_text())["shards"]}
    changed = {s["name"] for s in raw if s["sha256"] not in before}
    assert 1 <= len(changed) <= 2
    for layer in DERIVED:
        record = records.load_build(clone / layer)
        assert record is not None, layer
        assert {s["name"] for s in record["shards"] if s["computed"]} == changed, layer
        assert record["counts"]["items_computed"] == sum(s["n_items"] for s in raw if s["name"] in changed), layer
