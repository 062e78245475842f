"""Incremental growth: cold build vs rerun after adding 5% cards, in one run on one generated dataset.

Measures, on a temp copy of the template driven by the real dvc CLI:
  * wall time of fetch + preprocess + infer (each stage via `dvc repro -s`, in DAG order),
    cold (empty shard store) vs after `synth.n_cards` grows by --growth;
  * bytes `dvc push` adds to a local remote, cold vs rerun (remote directory size delta);
  * a floor: the same stages forced with every shard reused (process start-up, DVC hashing,
    fetch re-reading every source file), which no amount of reuse removes.
Generating the dataset (synth) is the "source" and is not timed; the demo models are
fitted once on random data and added with `dvc add`, so growth changes no model.

    PYTHONPATH=src python bench/incremental.py --cards 600 --shard-size 16
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e import build_record, make_project, run, set_param, tree_size, use_own_models  # noqa: E402

STAGES = ("fetch", "preprocess@pad_nn", "preprocess@thumb64", "infer@tflite_cnn", "infer@torch_cnn")
LAYERS = {
    "preprocess@pad_nn": "data/preprocessed/pad_nn",
    "preprocess@thumb64": "data/preprocessed/thumb64",
    "infer@tflite_cnn": "data/predictions/tflite_cnn",
    "infer@torch_cnn": "data/predictions/torch_cnn",
}


def timed_stages(root: Path, force: bool = False) -> dict[str, float]:
    seconds = {}
    for stage in STAGES:
        started = time.monotonic()
        run(root, "dvc", "repro", "-s", *(["-f"] if force else []), stage)
        seconds[stage] = time.monotonic() - started
    return seconds


def pushed_bytes(root: Path, remote: Path) -> int:
    before, _ = tree_size(remote) if remote.exists() else (0, set())
    run(root, "dvc", "push")
    return tree_size(remote)[0] - before


def counts_line(root: Path) -> str:
    parts = []
    for stage, layer in LAYERS.items():
        counts = build_record(root, layer)["counts"]
        parts.append(f"{stage} {counts['shards_computed']}/{counts['shards']} shards ({counts['items_computed']} items)")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=600)
    parser.add_argument("--growth", type=float, default=0.05)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=REPO / "bench/out/incremental")
    args = parser.parse_args()
    grown = round(args.cards * (1 + args.growth))
    shutil.rmtree(args.out, ignore_errors=True)
    root = make_project(args.out / "project", {"synth": {"n_cards": args.cards}, "fetch": {"shard_size": args.shard_size}})
    remote = args.out / "remote"
    run(root, "dvc", "remote", "add", "-d", "local", str(remote))
    use_own_models(root)
    print(f"dataset: {args.cards} → {grown} cards, fetch.shard_size {args.shard_size}; {root}", flush=True)

    run(root, "dvc", "repro", "synth")
    cold = timed_stages(root)
    cold_bytes = pushed_bytes(root, remote)
    print(f"cold:  {sum(cold.values()):7.1f} s  " + "  ".join(f"{s} {t:.1f}" for s, t in cold.items()), flush=True)

    set_param(root, "synth.n_cards", grown)
    run(root, "dvc", "repro", "synth")
    rerun = timed_stages(root)
    rerun_bytes = pushed_bytes(root, remote)
    print(f"rerun: {sum(rerun.values()):7.1f} s  " + "  ".join(f"{s} {t:.1f}" for s, t in rerun.items()))
    print(f"       recomputed: {counts_line(root)}")

    floor = timed_stages(root, force=True)
    print(f"floor: {sum(floor.values()):7.1f} s  (forced, every shard reused) "
          + "  ".join(f"{s} {t:.1f}" for s, t in floor.items()))
    print(f"time  rerun / cold = {sum(rerun.values()) / sum(cold.values()):.3f}  (goal ≤ 0.08)")
    print(f"push  rerun / cold = {rerun_bytes / cold_bytes:.3f}  ({rerun_bytes / 1e6:.1f} MB of {cold_bytes / 1e6:.1f} MB; goal ≤ 0.08)")
    work = sum(rerun.values()) - sum(floor.values())
    print(f"rerun minus floor = {work:.1f} s of new work ({work / sum(cold.values()):.3f} of cold)")


if __name__ == "__main__":
    main()
